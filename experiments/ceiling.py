"""Centralised ceilings: each architecture of the layout trained on the *pooled* private data of its
modality (all clients' training rows together), early-stopped on the pooled validation rows, and
scored on the modality's global test set. What no federation of these clients can beat.

    python -m experiments.ceiling --seeds 0,1,2 --out docs/results/full
    python -m experiments.ceiling --quick
"""

from __future__ import annotations

import time

import numpy as np
import torch

from experiments.common import base_config, parser, write_outputs
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.reporting.progress import say, track
from task_models.registry import ModelSpec, build_task_model
from task_models.training import TrainSettings, evaluate_model, fit_to_convergence
from worlds.client_data import ClientData, LabelledInputs, load_client_data
from worlds.modality import to_model_input


def client_parts(config: RunConfig, modality: str) -> list[ClientData]:
    """The private data of every client of `modality`, as the federation partitions it."""
    world = config.world()
    count = sum(1 for e in config.layout if e.modality == modality)
    return [
        load_client_data(
            world, modality, i, count, config.dirichlet_alpha, config.local_test_fraction, config.local_val_fraction
        )
        for i in range(count)
    ]


def _tensors(config: RunConfig, modality: str, parts: list[LabelledInputs]) -> tuple[torch.Tensor, torch.Tensor]:
    """Several clients' rows of one split together, as model inputs and labels."""
    if modality == "text":
        inputs = [x for p in parts for x in p.inputs]
    else:
        inputs = np.concatenate([p.inputs for p in parts])
    labels = torch.as_tensor(np.concatenate([p.labels for p in parts]))
    return to_model_input(modality, inputs, config.world().tokenizer()), labels


def ceiling(config: RunConfig, modality: str, architecture: str) -> dict[str, float]:
    """Global-test accuracy of one `architecture` trained on the pooled data of `modality`."""
    world = config.world()
    parts = client_parts(config, modality)
    spec = ModelSpec(world.num_classes, config.fusion_dim, len(world.tokenizer()), config.image_size)
    model = build_task_model(architecture, spec, seed=config.seed)
    start = time.time()
    fit = fit_to_convergence(
        model,
        _tensors(config, modality, [p.train for p in parts]),
        _tensors(config, modality, [p.val for p in parts]),
        TrainSettings(lr=config.lr, batch_size=config.batch_size),
        seed=config.seed,
        max_epochs=config.client_warmup_epochs,
        patience=config.client_warmup_patience,
    )
    test = evaluate_model(model, *_tensors(config, modality, [parts[0].global_test]))
    return {"acc_global": test["accuracy"], "epochs": fit["epochs"], "seconds": time.time() - start}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0", help="comma-separated world seeds")
    p.add_argument("--run-config", default="", help="overrides, 'key=value ...' (e.g. another world)")
    p.add_argument("--name", default="ceiling", help="output file name (without extension)")
    args = p.parse_args(argv)
    from flwr.common.config import parse_config_args

    overrides = parse_config_args([args.run_config]) if args.run_config else {}
    results: dict = {"seeds": {}, "mean": {}}
    for seed in track([int(s) for s in args.seeds.split(",")], "ceiling", "seed", every=0):
        args.seed = seed
        config = RunConfig.from_run_config(base_config(args, overrides))
        architectures = sorted({(e.modality, e.architecture) for e in config.layout})
        results["seeds"][seed] = {f"{m}:{a}": ceiling(config, m, a) for m, a in architectures}
        say(f"seed {seed}: " + ", ".join(f"{k} {v['acc_global']:.3f}" for k, v in results["seeds"][seed].items()))
    names = sorted({k for per_seed in results["seeds"].values() for k in per_seed})
    for name in names:
        values = [per_seed[name]["acc_global"] for per_seed in results["seeds"].values()]
        results["mean"][name] = {"mean": float(np.mean(values)), "std": float(np.std(values))}

    def plot(fig):
        ax = fig.add_subplot(1, 1, 1)
        ax.bar(
            range(len(names)),
            [results["mean"][n]["mean"] for n in names],
            yerr=[results["mean"][n]["std"] for n in names],
        )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel("global-test accuracy (pooled private data)")
        ax.set_ylim(0, 1)

    write_outputs(args, args.name, results, plot)
    return results


if __name__ == "__main__":
    main()
