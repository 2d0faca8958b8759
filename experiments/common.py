"""Shared plumbing of the issue #8 experiments: run variants in-process, record what the strategy
sees inside a round, measure cross-modal retrieval, write JSON + PNG into docs/experiments/.

Every script takes ``--quick`` (micro server models, 4 clients, 2 rounds: a plumbing check that
runs in well under a minute once the micro pre-training is cached) and ``--out`` (default
``docs/experiments``); run folders go to ``--runs-dir`` (default ``~/fedmmkt-results/experiments``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

from lab.portable_paths import portable

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedmmkt_strategy import protocol as P  # noqa: E402
from fedmmkt_strategy.cli.compare import variant_config  # noqa: E402
from fedmmkt_strategy.config import RunConfig, load_preset, project_defaults  # noqa: E402
from fedmmkt_strategy.generative.judge import judge_predict  # noqa: E402
from fedmmkt_strategy.generative.pretrain import CAPTIONER, JUDGE, VAE, default_cache_root  # noqa: E402
from fedmmkt_strategy.generative.server_models import pretrain_spec  # noqa: E402
from fedmmkt_strategy.reporting.progress import say  # noqa: E402
from fedmmkt_strategy.runs.inprocess import run_inprocess  # noqa: E402
from fedmmkt_strategy.strategies.fedmmkt import FedMMKT  # noqa: E402

#: Micro sizes for --quick: the tests' (presets/micro-server.toml, presets/micro-federation.toml),
#: one warm-up epoch, and every vote kept (micro models are near-uniform: later steps need rows).
QUICK: dict[str, Any] = {
    **load_preset("micro-server"),
    **load_preset("micro-federation"),
    "client-warmup-epochs": 1,
    "labvote-beta": 1.0,
}
QUICK_NODES = 4


def parser(description: str) -> argparse.ArgumentParser:
    """The options every experiment script shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="micro sizes: a plumbing check (< 1 min once cached)")
    p.add_argument("--out", type=Path, default=Path("docs/experiments"), help="where <name>.json/.png go")
    p.add_argument("--runs-dir", type=Path, default=Path("~/fedmmkt-results/experiments").expanduser())
    p.add_argument("--cache-dir", default="", help="server-model cache root (default: the usual one)")
    p.add_argument("--seed", type=int, default=0)
    return p


def base_config(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """pyproject.toml's run config, the experiment's overrides, then --quick's micro sizes on top."""
    config = {**project_defaults(), **(overrides or {}), "seed": args.seed}
    if args.quick:
        config.update(QUICK)
        if "client-layout" in (overrides or {}):  # keep the experiment's modalities, tiny models
            config["client-layout"] = overrides["client-layout"]
    if args.cache_dir:
        config["cache-dir"] = args.cache_dir
    return config


@dataclass
class Run:
    """One finished run: its variant name, results folder and metrics.json."""

    variant: str
    run_dir: Path
    metrics: dict[str, Any]


def run_variant(
    args: argparse.Namespace, experiment: str, variant: str, base: dict[str, Any], num_nodes: int, **extra: Any
) -> Run:
    """Run ``variant`` (``strategy[+key=value...]``, see `compare.variant_config`) on `base`, plus `extra`
    run-config keys (for values a variant name cannot carry, such as a layout with commas)."""
    run_config = {**base, **variant_config(variant), **extra}
    run_config["results-dir"] = str(args.runs_dir / experiment)
    run_config["run-name"] = f"{variant}-seed{args.seed}".replace("'", "").replace("=", "")
    nodes = len(run_config["client-layout"].split(",")) if args.quick else num_nodes
    RunConfig.from_run_config(run_config)  # fail before any work
    start = time.time()
    run_dir = run_inprocess(run_config, nodes)
    say(f"[{experiment}] {variant}: {time.time() - start:.0f} s -> {run_dir}")
    return Run(variant, run_dir, json.loads((run_dir / "metrics.json").read_text()))


def reuse_pretrain_phases(
    source_config: dict[str, Any], target_config: dict[str, Any], phases: tuple[str, ...] = (JUDGE, VAE, CAPTIONER)
) -> None:
    """Copy pre-training phases that do not depend on what differs between the two run configs
    (the judge, VAE and captioner when only ``pretrain-t2i-steps`` differs; only the judge when the
    public split changes) from the source spec's cache folder into the target's, so a new T2I
    quality level costs only its T2I steps (about 0.53 s each on 2 cores) and its evaluation."""
    source_cfg, target_cfg = RunConfig.from_run_config(source_config), RunConfig.from_run_config(target_config)
    root = Path(target_cfg.cache_dir).expanduser() if target_cfg.cache_dir else default_cache_root()
    source, target = root / pretrain_spec(source_cfg).key(), root / pretrain_spec(target_cfg).key()
    if source == target:
        return
    for phase in phases:
        if (source / phase).is_dir() and not (target / phase).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source / phase, target / phase)
            say(f"reused pre-training phase {phase} from {source.name} for {target.name}")


# ------------------------------------------------------------------ recording inside a round
@dataclass
class FusionRecord:
    """What step 4 saw and produced in one round, on the rows LabVote kept."""

    round: int
    classes: np.ndarray  # prompt class of each kept row
    clients: dict[int, tuple[str, str, np.ndarray]]  # node -> (modality, architecture, projected [M, d])
    fused: dict[str, np.ndarray]  # modality -> fused [M, d] (after cross-attention)
    discard_rate: float


@dataclass
class VoteRecord:
    """What LabVote saw in one round (as experiments/dump_votes.py writes)."""

    round: int
    probs: np.ndarray  # [K, N, C]
    entropy: np.ndarray  # [K, N]
    modality: np.ndarray  # [K]
    prompt: np.ndarray  # [N]
    depicted: np.ndarray  # [N], the judge's reading of the image
    result: Any = None  # the VoteResult the strategy settled on (what the clients are sent)
    images: np.ndarray | None = None  # [N, S, S, 3] uint8, the pool the vote was taken on


@dataclass
class Recorder:
    """Collects `FusionRecord`s and `VoteRecord`s while `recording()` patches FedMMKT."""

    fusion: list[FusionRecord] = field(default_factory=list)
    votes: list[VoteRecord] = field(default_factory=list)

    @contextmanager
    def recording(self) -> Iterator[Recorder]:
        """Patch `FedMMKT.vote` and `FedMMKT.fuse` (like dump_votes.py) for the duration."""
        original_vote, original_fuse = FedMMKT.vote, FedMMKT.fuse
        recorder = self

        def vote(strategy: FedMMKT, server_round: int, outcome) -> Any:
            nodes = sorted(outcome.ok)
            judge = strategy.models.judge
            result, diagnostics = original_vote(strategy, server_round, outcome)
            recorder.votes.append(
                VoteRecord(
                    server_round,
                    strategy._stack(outcome, P.PROBS, nodes),
                    strategy._stack(outcome, P.ENTROPY, nodes),
                    np.array([strategy.clients[n][P.MODALITY] for n in nodes]),
                    strategy.pool.classes.copy(),
                    judge_predict(judge, strategy.pool.images) if judge is not None else strategy.pool.classes.copy(),
                    result,
                    strategy.pool.images.copy(),
                )
            )
            return result, diagnostics

        def fuse(strategy: FedMMKT, server_round: int, outcome, vote) -> tuple[dict[str, np.ndarray], Any]:
            fused, diagnostics = original_fuse(strategy, server_round, outcome, vote)
            kept = vote.kept_indices
            clients = {
                n: (
                    strategy.clients[n][P.MODALITY],
                    strategy.clients[n][P.ARCHITECTURE],
                    outcome.ok[n].content[P.INFERENCE][P.EMBEDDING].numpy()[kept].astype(np.float32),
                )
                for n in sorted(outcome.ok)
            }
            discard = float(1 - len(kept) / len(strategy.pool))
            recorder.fusion.append(
                FusionRecord(server_round, strategy.pool.classes[kept], clients, dict(fused), discard)
            )
            return fused, diagnostics

        FedMMKT.vote, FedMMKT.fuse = vote, fuse
        try:
            yield self
        finally:
            FedMMKT.vote, FedMMKT.fuse = original_vote, original_fuse


def retrieval(queries: np.ndarray, keys: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """Top-1 cross-modal retrieval by cosine similarity: query i should retrieve key i (instance)
    or at least a key of i's class (class-level; the pool has several samples per class).
    Chance is 1/M and about 1/C respectively."""
    if len(queries) < 2:
        return {"instance_top1": float("nan"), "class_top1": float("nan")}
    sims = queries @ keys.T
    top = sims.argmax(1)
    rows = np.arange(len(queries))
    return {"instance_top1": float((top == rows).mean()), "class_top1": float((classes[top] == classes).mean())}


def alignment(record: FusionRecord, query: str = "image", key: str = "text") -> dict[str, Any]:
    """Retrieval query -> key modality before fusion (every pair of single clients' projected embeddings,
    labelled by architecture) and after (the fused vectors of the two modalities)."""
    pairs = {}
    for _, (mq, aq, eq) in record.clients.items():
        for _, (mk, ak, ek) in record.clients.items():
            if mq == query and mk == key:
                pairs.setdefault(f"{aq}->{ak}", []).append(retrieval(eq, ek, record.classes))
    before = {name: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for name, rs in pairs.items()}
    after = retrieval(record.fused[query], record.fused[key], record.classes) if key in record.fused else {}
    before_mean = {k: float(np.mean([v[k] for v in before.values()])) for k in ("instance_top1", "class_top1")}
    return {"round": record.round, "before": before, "before_mean": before_mean, "after": after}


# ------------------------------------------------------------------ outputs
def server_series(metrics: dict[str, Any], key: str) -> list[tuple[int, float]]:
    """(round, value) of a server diagnostic over the rounds that have it."""
    return [(r["round"], r["server"][key]) for r in metrics["rounds"] if key in r["server"]]


def final_accuracy(metrics: dict[str, Any]) -> dict[int, tuple[str, str, float]]:
    """node -> (modality, architecture, global-test accuracy) in the last round."""
    last = [r for r in metrics["rounds"] if r["round"] > 0][-1]
    return {
        c["node_id"]: (c.get("modality", "?"), c.get("architecture", "?"), c["acc_global"])
        for c in last["clients"]
        if "acc_global" in c
    }


def write_outputs(args: argparse.Namespace, name: str, results: dict[str, Any], plot: Callable[[Any], None]) -> Path:
    """``<out>/<name>.json`` (with the command's arguments) and ``<out>/<name>.png`` drawn by `plot(fig)`."""
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) for k, v in vars(args).items()}
    text = json.dumps({"args": settings, **results}, indent=2, default=float)
    (args.out / f"{name}.json").write_text(portable(text))
    fig = plt.figure(figsize=(13, 4.5))
    plot(fig)
    fig.tight_layout()
    png = args.out / f"{name}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out / f'{name}.json'} and {png}")
    return png


def pretrained_pool(config: RunConfig, models: Any, num_classes: int) -> Any:
    """The pre-trained server models' synthetic pool at the run config's size, sampler and seed:
    what a first round would send, for experiments that train clients on it directly."""
    from fedmmkt_strategy.generative.synthesis import synthesize

    return synthesize(
        models.pipe,
        models.captioner,
        models.processor,
        config.synthetic_size,
        seed=config.seed,
        steps=config.sampling_steps,
        guidance=config.guidance_scale,
        num_classes=num_classes,
    )


def label_targets(inputs: Any, soft_labels: Any, config: RunConfig, weights: Any = None) -> Any:
    """Distillation targets of `soft_labels` [M, C] on `inputs` (each row's loss scaled by `weights`
    when given), with the run config's temperature, weight and passes and no representation term."""
    import torch

    from task_models.training import DistillTargets

    return DistillTargets(
        inputs=inputs,
        soft_labels=torch.as_tensor(soft_labels).float(),
        weights=None if weights is None else torch.as_tensor(weights).float(),
        temperature=config.distill_temperature,
        lambda_kl=config.lambda_kl,
        lambda_rep=0.0,
        passes=config.distill_passes,
    )


def hard_label_targets(inputs: Any, classes: np.ndarray, config: RunConfig, num_classes: int) -> Any:
    """`label_targets` of one-hot labels: a client trained as if every vote were `classes`."""
    return label_targets(inputs, np.eye(num_classes, dtype=np.float32)[np.asarray(classes)], config)


def grouped_bars(ax: Any, names: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    """One group of bars per name, one bar per series (its label in the legend)."""
    width = 0.8 / len(series)
    for j, (label, values) in enumerate(series.items()):
        ax.bar(np.arange(len(names)) + width * j, values, width, label=label)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    ax.set_ylabel(ylabel)
    ax.legend()
