"""`fedmmkt compare`: the same seeds and partitions under several strategies, one table.

Runs each (strategy, seed) in-process (no Ray; the same strategy and ClientApp code as
`flwr run`, with results folders identical in kind), then writes into one folder:
``table.md`` (mean +- std over seeds), ``comparison.png`` and ``comparison.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from flwr.common.config import parse_config_args  # noqa: E402
from flwr.common.logger import log  # noqa: E402

from fedmmkt_strategy.config import RunConfig  # noqa: E402
from fedmmkt_strategy.inprocess import run_inprocess  # noqa: E402
from fedmmkt_strategy.server_models import load_server_models  # noqa: E402

ABLATIONS: dict[str, dict[str, Any]] = {
    "fedmmkt-no-labvote": {"strategy": "fedmmkt", "use-labvote": False},
    "fedmmkt-no-contrastive": {"strategy": "fedmmkt", "use-contrastive-aggregation": False},
    "fedmmkt-no-cross-attention": {"strategy": "fedmmkt", "use-cross-attention": False},
    "fedmmkt-no-t2i-update": {"strategy": "fedmmkt", "use-t2i-update": False},
}
#: FedMMKT with the settings that worked best on the toy world in a one-seed search
#: (docs/results/README.md): votes count up to normalised entropy 0.8 instead of 0.5, the prompt
#: class takes half of the voted label, the T2I model is fine-tuned on the most confident third
#: of the kept samples at a lower learning rate, and the KL term is halved.
TUNED = {
    "fedmmkt-tuned": {
        "strategy": "fedmmkt",
        "labvote-beta": 0.8,
        "labvote-prompt-mix": 0.5,
        "t2i-update-fraction": 0.33,
        "lambda-kl": 0.5,
        "t2i-lr": 3e-5,
    }
}
BASELINES = ["local", "fedavg", "fedmd", "creamfl", "self-ft", "fedmmkt"]


@dataclass(frozen=True)
class Preset:
    """A named comparison: which variants, which seeds, and run-config overrides for all of them."""

    variants: list[str]
    seeds: list[int]
    overrides: dict[str, Any] = field(default_factory=dict)
    num_nodes: int = 8


PRESETS: dict[str, Preset] = {
    # a few minutes: every strategy once, small synthetic set, two rounds
    "smoke": Preset(
        BASELINES,
        [0],
        {"num-server-rounds": 2, "synthetic-size": 96, "t2i-eval-per-class": 2, "pool-size": 2000},
    ),
    # the committed comparison (docs/results): every strategy, the tuned FedMMKT, three seeds,
    # smoke sizes but GenAcc on 4 images per class; about 30 minutes on 2 cores
    "table": Preset(
        BASELINES + list(TUNED),
        [0, 1, 2],
        {
            "num-server-rounds": 2,
            "synthetic-size": 96,
            "t2i-eval-per-class": 4,
            "pool-size": 2000,
            "checkpoint": False,
        },
    ),
    # the real comparison: every strategy and ablation, three seeds, default sizes
    "full": Preset(BASELINES + list(TUNED) + list(ABLATIONS), [0, 1, 2]),
}


def variant_config(variant: str) -> dict[str, Any]:
    """Run-config overrides of a variant name: a strategy or an ablation, optionally followed by
    ``+key=value`` overrides, e.g. ``fedmmkt+labvote-beta=0.3+t2i-update-fraction=0.5``."""
    name, *overrides = variant.split("+")
    config = dict({**ABLATIONS, **TUNED}.get(name, {"strategy": name}))
    for override in overrides:
        config.update(parse_config_args([override]))
    return config


def summarise_run(metrics: dict[str, Any]) -> dict[str, float]:
    """Final-round figures of one run: accuracies per modality, GenAcc, FID, uplink, time."""
    rounds = [r for r in metrics["rounds"] if r["round"] > 0]
    last = rounds[-1]["summary"] if rounds else {}
    gen = [r["server"] for r in metrics["rounds"] if "gen_acc" in r["server"]]
    start = [r["server"] for r in metrics["rounds"] if r["round"] == 0 and "gen_acc" in r["server"]]
    uplink = [c.get("bytes_up", 0) for r in rounds for c in r["clients"]]
    return {
        "gen_acc_round0": start[0]["gen_acc"] if start else float("nan"),
        "fid_round0": start[0]["fid"] if start else float("nan"),
        "image_acc": last.get("image_acc_global_mean", float("nan")),
        "text_acc": last.get("text_acc_global_mean", float("nan")),
        "sensor_acc": last.get("sensor_acc_global_mean", float("nan")),
        "gen_acc": gen[-1]["gen_acc"] if gen else float("nan"),
        "fid": gen[-1]["fid"] if gen else float("nan"),
        "uplink_mb_per_client_round": float(np.mean(uplink)) / 1e6 if uplink else float("nan"),
        "wall_s": metrics["wall_time_s"],
    }


def _mean_std(values: list[float]) -> str:
    arr = np.asarray(values, dtype=float)
    if np.isnan(arr).all():
        return "n/a"
    if len(arr) == 1:
        return f"{arr[0]:.3f}"
    return f"{np.nanmean(arr):.3f} ± {np.nanstd(arr):.3f}"


def write_table(results: dict[str, list[dict[str, float]]], path: Path, header: str) -> None:
    """A Markdown table, one row per variant, mean ± std over seeds."""
    columns = [
        ("image_acc", "image acc"),
        ("text_acc", "text acc"),
        ("gen_acc", "GenAcc"),
        ("fid", "domain FID"),
        ("uplink_mb_per_client_round", "uplink MB/client/round"),
        ("wall_s", "wall s"),
    ]
    lines = [header, "", "| variant | " + " | ".join(name for _, name in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for variant, runs in results.items():
        cells = [_mean_std([r[key] for r in runs]) for key, _ in columns]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot_comparison(results: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Bar charts of image accuracy, text accuracy and GenAcc per variant (error bars: std over seeds)."""
    variants = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, (key, title) in zip(
        axes, [("image_acc", "image clients"), ("text_acc", "text clients"), ("gen_acc", "T2I GenAcc")]
    ):
        means = [np.nanmean([r[key] for r in results[v]]) for v in variants]
        stds = [np.nanstd([r[key] for r in results[v]]) for v in variants]
        ax.bar(range(len(variants)), means, yerr=stds, color="tab:blue", alpha=0.8, capsize=3)
        ax.set_xticks(range(len(variants)), variants, rotation=60, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy (global test set / judge)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(
    preset: Preset, out_dir: Path, base_config: dict[str, Any] | None = None
) -> dict[str, list[dict[str, float]]]:
    """Run every variant of `preset` on every seed and write table, plot and JSON to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = {**(base_config or {}), **preset.overrides}
    results: dict[str, list[dict[str, float]]] = {}
    started = time.time()
    for seed in preset.seeds:
        of_seed: list[dict[str, float]] = []
        for variant in preset.variants:
            run_config = {
                **base,
                **variant_config(variant),
                "seed": seed,
                "results-dir": str(out_dir / "runs"),
                "run-name": f"{variant}-seed{seed}",
            }
            config = RunConfig.from_run_config(run_config)
            # fresh server weights for every run: one run's T2I update must not leak into the next
            models = None if config.strategy in ("local", "fedavg") else load_server_models(config)
            log(INFO, "compare: %s, seed %d", variant, seed)
            run_dir = run_inprocess(run_config, preset.num_nodes, models)
            summary = summarise_run(json.loads((run_dir / "metrics.json").read_text()))
            results.setdefault(variant, []).append(summary)
            of_seed.append(summary)
        _fill_untouched_t2i_scores(of_seed)
        (out_dir / "comparison.json").write_text(json.dumps(results, indent=2))
    header = (
        f"Comparison over seeds {preset.seeds}, {len(preset.variants)} variants, "
        f"{preset.num_nodes} clients; final-round global-test accuracy; total {time.time() - started:.0f} s."
    )
    write_table(results, out_dir / "table.md", header)
    plot_comparison(results, out_dir / "comparison.png")
    return results


def _fill_untouched_t2i_scores(summaries: list[dict[str, float]]) -> None:
    """Strategies that never change the T2I model (local, fedavg, fedmd, creamfl) score what it
    scored before round 1, measured by the same protocol and seed in a sibling run."""
    start = next((s for s in summaries if not np.isnan(s["gen_acc_round0"])), None)
    for summary in summaries:
        if np.isnan(summary["gen_acc"]) and start is not None:
            summary["gen_acc"], summary["fid"] = start["gen_acc_round0"], start["fid_round0"]
