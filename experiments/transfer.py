"""Do generated images of a class a client never saw teach it that class? (issue #16)

FedMMKT's image gain plateaus at +8 to +10 points over `local` on the development world, while the
same architectures reach 0.97-0.99 once every class is seen (docs/results/README.md). This measures
where the gain lands. On a development world (default seed 100, never a reported seed), each image
client converges on its private data, then trains `--rounds` rounds of `local-epochs` with the
pre-trained server model's synthetic images (`distill-passes` visits per row, one forward with the
private batch, with the clients' augmentation, warm-up seed and patience: `client_train_settings`)
under two labellings:

- `prompt`: the class the server asked for (what a vote that agrees with the prompt gives);
- `judge`: the class the held-out judge sees in the image (an oracle for perfect votes).

With `--with-votes` the pool is instead the one a real first FedMMKT round (in-process, every
client of the layout converged, the run config's vote) generated and voted on, and two more
labellings train on the rows the vote kept: `vote` (its soft labels weighted by its confidence,
as the strategy sends them) and `vote-argmax` (its decision as a one-hot label at weight 1).

Reported per client: global-test accuracy on the classes it holds (any private training row) and
on the classes it lacks, after convergence and after each labelling.

    python -m experiments.transfer --out docs/experiments
    python -m experiments.transfer --with-votes --synthetic-size 1152 --out docs/experiments/transfer-votes
    python -m experiments.transfer --quick
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from client_app.node import client_train_settings
from experiments.common import (
    Recorder,
    VoteRecord,
    base_config,
    grouped_bars,
    hard_label_targets,
    label_targets,
    parser,
    pretrained_pool,
    run_variant,
    write_outputs,
)
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.generative.judge import judge_predict
from fedmmkt_strategy.generative.quality import resize_images
from fedmmkt_strategy.generative.server_models import load_server_models
from fedmmkt_strategy.reporting.progress import say, track
from fedmmkt_strategy.steps.labvote import VoteResult, hardened
from task_models.registry import ModelSpec, build_task_model
from task_models.training import DistillTargets, fit_to_convergence, predict_logits, train_model
from worlds.client_data import load_client_data
from worlds.modality import to_model_input


def held_and_lacked_accuracy(predictions: np.ndarray, labels: np.ndarray, held: np.ndarray) -> dict[str, float]:
    """Accuracy on the test rows whose class is in `held` and on the others (NaN where there are
    none), with how many rows each holds: a client's accuracy split by what its data covered."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    in_held = np.isin(labels, held)
    correct = predictions == labels

    def accuracy(mask: np.ndarray) -> float:
        return float(correct[mask].mean()) if mask.any() else float("nan")

    return {
        "held": accuracy(in_held),
        "lacked": accuracy(~in_held),
        "held_rows": int(in_held.sum()),
        "lacked_rows": int((~in_held).sum()),
    }


def scored(model, inputs: torch.Tensor, labels: np.ndarray, held: np.ndarray) -> dict[str, float]:
    """`held_and_lacked_accuracy` of the model's top-1 predictions on a test split."""
    return held_and_lacked_accuracy(predict_logits(model, inputs).argmax(-1).numpy(), labels, held)


@dataclass
class ImageClient:
    """One image client of the layout, converged on its private data: what the experiments train on."""

    name: str
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    test_x: torch.Tensor
    test_y: np.ndarray
    held: np.ndarray  # the classes with any private training row


def converged_image_clients(config: RunConfig, world) -> list[ImageClient]:
    """Every image client of the layout, trained to convergence on its private split (early stopping
    on its own validation split), as a client joins round 1."""
    spec = ModelSpec(world.num_classes, config.fusion_dim, len(world.tokenizer()), config.image_size)
    entries = [e for e in config.layout if e.modality == "image"]
    clients = []
    for partition, entry in track(enumerate(entries), "converge", "client", total=len(entries), every=0):
        data = load_client_data(
            world, "image", partition, len(entries), config.dirichlet_alpha, config.local_test_fraction,
            config.local_val_fraction,
        )  # fmt: skip
        x, y = to_model_input("image", data.train.inputs), torch.as_tensor(data.train.labels)
        val = (to_model_input("image", data.val.inputs), torch.as_tensor(data.val.labels))
        model = build_task_model(entry.architecture, spec, seed=config.seed)
        fit_to_convergence(
            model, (x, y), val, client_train_settings(config, "image"), config.seed * 1000,
            config.client_warmup_epochs, config.client_warmup_patience,
        )  # fmt: skip
        clients.append(
            ImageClient(
                f"{entry.architecture}@{partition}", model, x, y,
                to_model_input("image", data.global_test.inputs), np.asarray(data.global_test.labels),
                np.unique(data.train.labels),
            )
        )  # fmt: skip
    return clients


def after_synthetic(client: ImageClient, targets, rounds: int, config: RunConfig) -> dict[str, float]:
    """`scored` on the global test split after `rounds` rounds of private training with `targets`
    distilled, starting from a copy of the converged model (the client itself is left as it is)."""
    model = copy.deepcopy(client.model)
    settings = client_train_settings(config, "image", config.local_epochs)
    for r in range(1, rounds + 1):
        train_model(model, client.x, client.y, settings, seed=config.seed * 1000 + r, distill=targets)
    return scored(model, client.test_x, client.test_y, client.held)


def vote_targets(inputs: torch.Tensor, vote: VoteResult, config: RunConfig, *, argmax: bool) -> DistillTargets:
    """What a client is sent after a vote: the kept rows' soft labels weighted by the vote's
    confidence (as `FedMMKT` sends them), or with `argmax` its decisions as one-hot labels at weight 1
    (`hardened`, what ``labvote-targets = "hard"`` sends); no representation term."""
    sent = hardened(vote) if argmax else vote
    kept = sent.kept_indices
    weights = None if argmax else sent.confidence[kept]
    return label_targets(inputs[torch.as_tensor(kept).long()], sent.soft_labels[kept], config, weights)


def federation_round_one(args, base: dict) -> VoteRecord:
    """The pool and vote of a real first FedMMKT round on this world (in-process, every client of
    the layout converged first, the run config's vote settings): what `vote` labellings train on."""
    with Recorder().recording() as rec:
        nodes = len(RunConfig.from_run_config(base).layout)
        run_variant(args, "transfer", "fedmmkt", base, nodes, **{"num-server-rounds": 1})
    return rec.votes[0]


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(seed=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--synthetic-size", type=int, default=0, help="pool size (default: the run config's)")
    p.add_argument(
        "--with-votes",
        action="store_true",
        help="take the pool from a real first FedMMKT round and add its vote as two more labellings",
    )
    args = p.parse_args(argv)
    base = base_config(args, {"synthetic-size": args.synthetic_size} if args.synthetic_size else None)
    config = RunConfig.from_run_config(base)
    world, models = config.world(), load_server_models(config)
    if args.with_votes:
        record = federation_round_one(args, base)
        images, prompted = resize_images(record.images, config.image_size), np.asarray(record.prompt)
    else:
        record, pool = None, pretrained_pool(config, models, world.num_classes)
        images, prompted = pool.images, np.asarray(pool.classes)
    labels = {"prompt": prompted, "judge": judge_predict(models.judge, images)}
    synthetic = to_model_input("image", images)
    targets = {
        name: hard_label_targets(synthetic, classes, config, world.num_classes) for name, classes in labels.items()
    }
    if record is not None:
        targets["vote"] = vote_targets(synthetic, record.result, config, argmax=False)
        targets["vote-argmax"] = vote_targets(synthetic, record.result, config, argmax=True)
    labellings = tuple(targets)
    results: dict = {
        "seed": config.seed,
        "synthetic_size": len(prompted),
        "judge_prompt_agreement": float((labels["judge"] == labels["prompt"]).mean()),
        "clients": {},
    }
    if record is not None:
        voted = record.result.labels[record.result.kept]
        results["vote"] = {
            "kept": int(record.result.kept.sum()),
            "judge_agreement": float((voted == labels["judge"][record.result.kept]).mean()),
            "prompt_agreement": float((voted == prompted[record.result.kept]).mean()),
            "mean_confidence": float(record.result.confidence[record.result.kept].mean()),
        }
        say(f"round-1 vote: {results['vote']}")
    for client in converged_image_clients(config, world):
        row: dict = {"held_classes": len(client.held)}
        row["converged"] = scored(client.model, client.test_x, client.test_y, client.held)
        for labelling in labellings:
            row[labelling] = after_synthetic(client, targets[labelling], args.rounds, config)
        results["clients"][client.name] = row
        say(f"{client.name}: {row}")
    clients = results["clients"]
    for stage in ("converged", *labellings):
        for group in ("held", "lacked"):
            results[f"mean_{group}_{stage}"] = float(np.nanmean([c[stage][group] for c in clients.values()]))

    def plot(fig):
        names = list(clients)
        for k, group in enumerate(("held", "lacked")):
            ax = fig.add_subplot(1, 2, k + 1)
            stages = ("converged", *labellings)
            series = {stage: [clients[n][stage][group] for n in names] for stage in stages}
            grouped_bars(ax, names, series, "global-test accuracy (development world)")
            ax.set_ylim(0, 1)
            ax.set_title(f"classes the client {group}")

    write_outputs(args, "transfer", results, plot)
    return results


if __name__ == "__main__":
    main()
