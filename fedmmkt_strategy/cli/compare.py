"""`fedmmkt compare`: the same seeds and partitions under several strategies, one table.

Runs each (strategy, seed) in-process (no Ray; the same strategy and ClientApp code as
`flwr run`, with results folders identical in kind), then writes into one folder:
``table.md`` (mean +- std over seeds), ``comparison.png`` and ``comparison.json``.
"""

from __future__ import annotations

import json
import numbers
import time
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from typing import Any

import click
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from flwr.common.config import parse_config_args  # noqa: E402
from flwr.common.logger import log  # noqa: E402

from fedmmkt_strategy.config import RunConfig, load_preset  # noqa: E402
from fedmmkt_strategy.generative.server_models import load_server_models  # noqa: E402
from fedmmkt_strategy.reporting.progress import Progress  # noqa: E402
from fedmmkt_strategy.runs.inprocess import run_inprocess  # noqa: E402

#: Named variants beyond the strategies (presets/variants.toml): the paper's exact LabVote
#: (`fedmmkt-paper`), the homogeneous-layout references and the ablations of `fedmmkt`.
VARIANTS: dict[str, dict[str, Any]] = load_preset("variants")
ABLATIONS = [name for name in VARIANTS if name.startswith("fedmmkt-no-")]


@dataclass(frozen=True)
class Preset:
    """A named comparison: which variants, which seeds, and run-config overrides for all of them."""

    variants: list[str]
    seeds: list[int]
    overrides: dict[str, Any] = field(default_factory=dict)
    num_nodes: int = 8


def load_comparisons() -> dict[str, Preset]:
    """The comparisons of presets/comparisons.toml (`smoke`, `full`, `full-world2`, ...)."""
    return {
        name: Preset(
            variants=list(table["variants"]),
            seeds=[int(s) for s in table["seeds"]],
            overrides=dict(table.get("run-config", {})),
            num_nodes=int(table.get("num-nodes", 8)),
        )
        for name, table in load_preset("comparisons").items()
    }


PRESETS: dict[str, Preset] = load_comparisons()


def variant_config(variant: str) -> dict[str, Any]:
    """Run-config overrides of a variant name: a strategy or a named variant, optionally followed by
    ``+key=value`` overrides, e.g. ``fedmmkt+labvote-beta=0.3+client-calibration=temperature``
    (a string value needs no quotes here: a value Flower's parser refuses is taken as a string)."""
    name, *overrides = variant.split("+")
    config = dict(VARIANTS.get(name, {"strategy": name}))
    for override in overrides:
        key, sep, value = override.partition("=")
        try:
            config.update(parse_config_args([override]))
        except click.ClickException:
            if not sep or not key or '"' in value:
                raise
            config.update(parse_config_args([f'{key}="{value}"']))
    return config


def _series(metrics: dict[str, Any], where: str, key: str) -> list[list[float]]:
    """[round, value] pairs of one summary or server figure over the rounds that have it."""
    return [[r["round"], r[where][key]] for r in metrics["rounds"] if key in r[where]]


#: Per-round server diagnostics kept in comparison.json (the co-enhancement mechanism, by group).
ROUND_DIAGNOSTICS = (
    "discard_rate",
    "vote_depicted_agreement",
    "prompt_depicted_agreement_kept",
    "confused_vote_depicted_agreement",
    "confused_prompt_depicted_agreement_kept",
    "confused_discard_rate",
    "clean_vote_depicted_agreement",
    "clean_prompt_depicted_agreement_kept",
    "clean_discard_rate",
    "gen_acc_confused",
    "gen_acc_clean",
)


def summarise_run(metrics: dict[str, Any]) -> dict[str, Any]:
    """Final-round figures of one run (accuracies per modality, GenAcc, FID, uplink, time), the
    round-0 T2I scores, and per-round series of the accuracies, GenAcc and vote diagnostics."""
    rounds = [r for r in metrics["rounds"] if r["round"] > 0]
    last = rounds[-1]["summary"] if rounds else {}
    gen = [r["server"] for r in metrics["rounds"] if r["round"] > 0 and "gen_acc" in r["server"]]
    start = [r["server"] for r in metrics["rounds"] if r["round"] == 0 and "gen_acc" in r["server"]]
    uplink = [c.get("bytes_up", 0) for r in rounds for c in r["clients"]]
    nan = float("nan")
    summary: dict[str, Any] = {
        "gen_acc_round0": start[0]["gen_acc"] if start else nan,
        "fid_round0": start[0]["fid"] if start else nan,
        "gen_acc_confused_round0": start[0].get("gen_acc_confused", nan) if start else nan,
        "gen_acc_clean_round0": start[0].get("gen_acc_clean", nan) if start else nan,
        "image_acc": last.get("image_acc_global_mean", nan),
        "text_acc": last.get("text_acc_global_mean", nan),
        "sensor_acc": last.get("sensor_acc_global_mean", nan),
        "gen_acc": gen[-1]["gen_acc"] if gen else nan,
        "fid": gen[-1]["fid"] if gen else nan,
        "gen_acc_confused": gen[-1].get("gen_acc_confused", nan) if gen else nan,
        "gen_acc_clean": gen[-1].get("gen_acc_clean", nan) if gen else nan,
        "uplink_mb_per_client_round": float(np.mean(uplink)) / 1e6 if uplink else nan,
        "wall_s": metrics["wall_time_s"],
    }
    rounds_series = {
        f"{m}_acc": _series(metrics, "summary", f"{m}_acc_global_mean") for m in ("image", "text", "sensor")
    }
    rounds_series |= {key: _series(metrics, "server", key) for key in ("gen_acc", "fid", *ROUND_DIAGNOSTICS)}
    summary["rounds"] = {k: v for k, v in rounds_series.items() if v}
    return summary


def _mean_std(values: list[float], digits: int = 3) -> str:
    arr = np.asarray(values, dtype=float)
    if np.isnan(arr).all():
        return "n/a"
    if len(arr) == 1:
        return f"{arr[0]:.{digits}f}"
    return f"{np.nanmean(arr):.{digits}f} ± {np.nanstd(arr):.{digits}f}"


TABLE_COLUMNS = [
    ("image_acc", "image acc"),
    ("text_acc", "text acc"),
    ("gen_acc", "GenAcc"),
    ("gen_acc_confused", "GenAcc confused"),
    ("gen_acc_clean", "GenAcc clean"),
    ("fid", "domain FID"),
    ("uplink_mb_per_client_round", "uplink MB/client/round"),
    ("wall_s", "wall s"),
]


def paired_deltas(results: dict[str, list[dict[str, Any]]], variant: str, key: str, reference: str) -> list[float]:
    """Per-seed differences ``variant - reference`` of one figure (runs of a seed share its partitions,
    pre-trained models and evaluation prompts and noise, so the difference has the seed's noise removed)."""
    ours, theirs = results.get(variant, []), results.get(reference, [])
    return [a[key] - b[key] for a, b in zip(ours, theirs)]


def write_table(results: dict[str, list[dict[str, Any]]], path: Path, header: str) -> None:
    """Markdown: one row per variant (mean ± std over seeds), then the paired per-seed deltas
    against `local` (client accuracy) and against the pre-trained T2I model and `self-ft` (GenAcc)."""
    lines = [header, "", "| variant | " + " | ".join(name for _, name in TABLE_COLUMNS) + " |"]
    lines.append("|---" * (len(TABLE_COLUMNS) + 1) + "|")
    for variant, runs in results.items():
        cells = [_mean_std([r[key] for r in runs], 1 if key in ("fid", "wall_s") else 3) for key, _ in TABLE_COLUMNS]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired differences (per seed, then mean ± std over seeds):",
        "",
        "| variant | image acc - local | text acc - local | GenAcc - pre-trained | GenAcc / self-ft |",
        "|---|---|---|---|---|",
    ]
    for variant, runs in results.items():
        image = paired_deltas(results, variant, "image_acc", "local")
        text = paired_deltas(results, variant, "text_acc", "local")
        gen = [r["gen_acc"] - r["gen_acc_round0"] for r in runs]
        ratio = [a["gen_acc"] / b["gen_acc"] for a, b in zip(runs, results.get("self-ft", []))]
        cells = [_mean_std(v) if v else "n/a" for v in (image, text, gen, ratio)]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot_comparison(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
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


def _mean_series(runs: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[float]]:
    """Rounds, mean and std over seeds of a per-round series (rounds every seed has)."""
    per_seed = [dict(map(tuple, r["rounds"].get(key, []))) for r in runs]
    common = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
    values = np.array([[d[x] for x in common] for d in per_seed], dtype=float)
    if not common:
        return [], [], []
    return common, list(np.nanmean(values, 0)), list(np.nanstd(values, 0))


def plot_rounds(results: dict[str, list[dict[str, Any]]], path: Path, keys: list[tuple[str, str]]) -> None:
    """One panel per per-round series (e.g. image and text accuracy, GenAcc): a line per variant,
    the mean over seeds with a band of one std."""
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5))
    axes = np.atleast_1d(axes)
    for ax, (key, title) in zip(axes, keys):
        for variant, runs in results.items():
            xs, mean, std = _mean_series(runs, key)
            if not xs:
                continue
            ax.plot(xs, mean, marker="o", label=variant, linewidth=2 if variant.startswith("fedmmkt") else 1)
            ax.fill_between(xs, np.subtract(mean, std), np.add(mean, std), alpha=0.1)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: The figures of a run's line in the log of `compare`: summary key, label, decimals.
HEADLINE = (
    ("image_acc", "image acc", 3),
    ("text_acc", "text acc", 3),
    ("gen_acc", "GenAcc", 3),
    ("fid", "FID", 1),
    ("wall_s", "wall s", 0),
)


def headline(variant: str, seed: int, summary: dict[str, Any]) -> str:
    """One line per finished run, so a long comparison can be read while it goes: e.g.
    ``fedmmkt, seed 0: image acc 0.412, text acc 0.388, GenAcc 0.533, FID 12.3, wall s 312``.
    A figure the run does not have (absent, or NaN: no T2I model, no text clients) reads ``-``."""
    cells = []
    for key, label, digits in HEADLINE:
        value = summary.get(key)
        known = isinstance(value, numbers.Real) and not np.isnan(value)
        cells.append(f"{label} {value:.{digits}f}" if known else f"{label} -")
    return f"{variant}, seed {seed}: " + ", ".join(cells)


def compare(
    preset: Preset, out_dir: Path, base_config: dict[str, Any] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Run every variant of `preset` on every seed and write table, plots and JSON to `out_dir`.

    The pre-trained T2I model is scored once per seed (by the first variant that uses it) and that
    round-0 score is given to every run of the seed: it is the same model, prompts and noise.
    One bar runs over all the runs (its estimate of what is left goes by variant, whose runs cost
    about the same on every seed), and each finished run logs its `headline`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    base = {**(base_config or {}), **preset.overrides}
    results: dict[str, list[dict[str, Any]]] = {}
    started = time.time()
    kinds = [variant for _ in preset.seeds for variant in preset.variants]
    with Progress("compare", len(kinds), "run", every=0, kinds=kinds) as bar:
        for seed in preset.seeds:
            _compare_seed(preset, out_dir, base, seed, results, bar)
    header = (
        f"Comparison over seeds {preset.seeds}, {len(preset.variants)} variants, "
        f"{preset.num_nodes} clients; final-round global-test accuracy; total {time.time() - started:.0f} s."
    )
    write_outputs(results, out_dir, header)
    return results


def _compare_seed(
    preset: Preset,
    out_dir: Path,
    base: dict[str, Any],
    seed: int,
    results: dict[str, list[dict[str, Any]]],
    bar: Progress,
) -> None:
    """Every variant of `preset` on one seed, into `results`; comparison.json rewritten after the seed."""
    of_seed: list[dict[str, Any]] = []
    initial_scored = False
    for variant in preset.variants:
        run_config = {
            **base,
            **variant_config(variant),
            "seed": seed,
            "results-dir": str(out_dir / "runs"),
            "run-name": f"{variant}-seed{seed}",
        }
        config = RunConfig.from_run_config(run_config)
        uses_t2i = config.strategy not in ("local", "fedavg")
        if uses_t2i and initial_scored:
            run_config["t2i-eval-initial"] = False
        initial_scored |= uses_t2i
        # fresh server weights for every run: one run's T2I update must not leak into the next
        models = load_server_models(config) if uses_t2i else None
        log(INFO, "compare: %s, seed %d", variant, seed)
        run_dir = run_inprocess(run_config, preset.num_nodes, models)
        summary = {"seed": seed, **summarise_run(json.loads((run_dir / "metrics.json").read_text()))}
        results.setdefault(variant, []).append(summary)
        of_seed.append(summary)
        log(INFO, "compare: %s", headline(variant, seed, summary))
        bar.advance()
    _share_initial_t2i_scores(of_seed)
    (out_dir / "comparison.json").write_text(json.dumps(results, indent=2))


def merge_results(parts: list[dict[str, list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """One comparison from several partial ones (e.g. seeds run in parallel lanes or on several
    machines): every variant's runs, ordered by seed so that paired deltas pair the same seed.
    A seed that a variant ran twice across the parts is rejected: its deltas would not pair."""
    merged: dict[str, list[dict[str, Any]]] = {}
    for part in parts:
        for variant, runs in part.items():
            merged.setdefault(variant, []).extend(runs)
    for variant, runs in merged.items():
        if any("seed" not in r for r in runs):
            raise ValueError(f"{variant}: runs without a 'seed' cannot be merged")
        runs.sort(key=lambda r: r["seed"])
        seeds = [r["seed"] for r in runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{variant}: seed run twice across the parts ({seeds})")
    # a part may hold only strategies that never measure the T2I model (e.g. fedmd, creamfl run
    # in their own lane): they take the pre-trained scores of the same seed from the other parts
    for seed in {r["seed"] for runs in merged.values() for r in runs}:
        _share_initial_t2i_scores([r for runs in merged.values() for r in runs if r["seed"] == seed])
    return merged


def write_outputs(results: dict[str, list[dict[str, Any]]], out_dir: Path, header: str) -> None:
    """comparison.json, table.md, comparison.png and the per-round plots of one comparison."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(results, indent=2))
    write_table(results, out_dir / "table.md", header)
    plot_comparison(results, out_dir / "comparison.png")
    plot_rounds(
        results, out_dir / "accuracy_rounds.png", [("image_acc", "image clients"), ("text_acc", "text clients")]
    )
    plot_rounds(
        results,
        out_dir / "gen_acc_rounds.png",
        [
            ("gen_acc", "T2I GenAcc"),
            ("gen_acc_confused", "GenAcc, confused classes"),
            ("gen_acc_clean", "GenAcc, clean"),
        ],
    )


_INITIAL_KEYS = {
    "gen_acc_round0": "gen_acc",
    "fid_round0": "fid",
    "gen_acc_confused_round0": "gen_acc_confused",
    "gen_acc_clean_round0": "gen_acc_clean",
}


def _share_initial_t2i_scores(summaries: list[dict[str, Any]]) -> None:
    """Give every run of a seed the pre-trained model's scores, measured once by the same protocol
    and seed in a sibling run; strategies that never change the T2I model (local, fedavg, fedmd,
    creamfl) also keep them as their final scores."""
    start = next((s for s in summaries if not np.isnan(s.get("gen_acc_round0", np.nan))), None)
    if start is None:
        return
    for summary in summaries:
        for initial, final in _INITIAL_KEYS.items():
            summary[initial] = start[initial]
            if np.isnan(summary[final]):
                summary[final] = start[initial]
            series = summary["rounds"].setdefault(final, [])
            if not series or series[0][0] != 0:
                series.insert(0, [0, start[initial]])
