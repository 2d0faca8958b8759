"""BatchNorm and synthetic rows: one forward over the concatenated private + synthetic batch (what
clients do) against the separate train-mode forwards clients used to run (issue #16, item 3).

On a development world (default seed 100, never a reported seed), each BatchNorm image client
converges on its private data, then trains 5 rounds of `local-epochs` with the server's synthetic
images (prompt labels, `distill-passes` visits per row) under both schemes. Reported per client and
scheme: global-test accuracy of that development world, and how far BatchNorm's running mean of the
first layer sits from the private data's batch statistics (in units of the distance between private
and synthetic statistics: 0 = private, 1 = synthetic).

    python -m experiments.batchnorm --out docs/experiments
    python -m experiments.batchnorm --quick
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from experiments.common import base_config, grouped_bars, hard_label_targets, parser, pretrained_pool, write_outputs
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.generative.server_models import load_server_models
from fedmmkt_strategy.reporting.progress import say, track
from task_models.registry import ModelSpec, build_task_model
from task_models.training import (
    DistillTargets,
    TrainSettings,
    distillation_loss,
    evaluate_model,
    fit_to_convergence,
    synthetic_schedule,
    train_model,
)
from worlds.client_data import load_client_data
from worlds.modality import to_model_input

BATCHNORM_ARCHITECTURES = ("cnn", "resnet", "cnn-small")


def train_separately(model, x, y, settings: TrainSettings, seed: int, distill: DistillTargets) -> None:
    """The former client loop: the private batch and its synthetic rows in two train-mode forwards,
    so every step updates BatchNorm's running statistics once with private and once with synthetic
    statistics."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    model.train()
    steps = settings.epochs * -(-len(y) // settings.batch_size)
    schedule = iter(synthetic_schedule(len(distill.inputs), distill.passes, steps, generator))
    for _ in range(settings.epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            idx, take = order[start : start + settings.batch_size], next(schedule)
            loss = F.cross_entropy(model(x[idx])[0], y[idx])
            if len(take):
                logits, embedding = model(distill.inputs[take])
                loss = loss + distillation_loss(logits, model.project(embedding), distill, take)[0].mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()


@torch.no_grad()
def running_mean_position(model, private: torch.Tensor, synthetic: torch.Tensor) -> float:
    """Where the first BatchNorm's running mean lies between the private (0) and synthetic (1) means."""
    layer = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    inputs = {}
    hook = layer.register_forward_pre_hook(lambda _, args: inputs.__setitem__("x", args[0]))
    model.eval()
    model(private)
    private_mean = inputs["x"].mean((0, 2, 3))
    model(synthetic)
    synthetic_mean = inputs["x"].mean((0, 2, 3))
    hook.remove()
    gap = synthetic_mean - private_mean
    return float(((layer.running_mean - private_mean) @ gap) / (gap @ gap))


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(seed=100)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    config = RunConfig.from_run_config(base_config(args))
    world, models = config.world(), load_server_models(config)
    pool = pretrained_pool(config, models, world.num_classes)
    synthetic = to_model_input("image", pool.images)
    targets = hard_label_targets(synthetic, pool.classes, config, world.num_classes)
    spec = ModelSpec(world.num_classes, config.fusion_dim, len(world.tokenizer()), config.image_size)
    settings = TrainSettings(epochs=config.local_epochs, lr=config.lr, batch_size=config.batch_size)
    images = [e for e in config.layout if e.modality == "image"]
    results: dict = {"seed": config.seed, "clients": {}}
    for partition, entry in track(enumerate(images), "batchnorm", "client", total=len(images), every=0):
        if entry.architecture not in BATCHNORM_ARCHITECTURES:
            continue
        data = load_client_data(
            world, "image", partition, len(images), config.dirichlet_alpha, config.local_test_fraction,
            config.local_val_fraction,
        )  # fmt: skip
        x, y = to_model_input("image", data.train.inputs), torch.as_tensor(data.train.labels)
        val = (to_model_input("image", data.val.inputs), torch.as_tensor(data.val.labels))
        test = (to_model_input("image", data.global_test.inputs), torch.as_tensor(data.global_test.labels))
        row = {}
        for scheme in ("joint", "separate"):
            model = build_task_model(entry.architecture, spec, seed=config.seed)
            fit_to_convergence(model, (x, y), val, settings, config.seed, config.client_warmup_epochs, 10)
            for r in range(1, args.rounds + 1):
                if scheme == "joint":
                    train_model(model, x, y, settings, seed=r, distill=targets)
                else:
                    train_separately(model, x, y, settings, r, targets)
            row[scheme] = {
                "acc_global": evaluate_model(model, *test)["accuracy"],
                "running_mean_position": running_mean_position(model, x[:256], synthetic),
            }
        results["clients"][f"{entry.architecture}@{partition}"] = row
        say(f"{entry.architecture} {partition} {row}")
    clients = results["clients"]
    for scheme in ("joint", "separate"):
        results[f"mean_acc_{scheme}"] = float(np.mean([c[scheme]["acc_global"] for c in clients.values()]))

    def plot(fig):
        names, schemes = list(clients), ("joint", "separate")
        series = {scheme: [clients[n][scheme]["acc_global"] for n in names] for scheme in schemes}
        grouped_bars(fig.add_subplot(1, 2, 1), names, series, "global-test accuracy (development world)")
        series = {scheme: [clients[n][scheme]["running_mean_position"] for n in names] for scheme in schemes}
        grouped_bars(fig.add_subplot(1, 2, 2), names, series, "BatchNorm running mean: 0 private, 1 synthetic")

    write_outputs(args, "batchnorm", results, plot)
    return results


if __name__ == "__main__":
    main()
