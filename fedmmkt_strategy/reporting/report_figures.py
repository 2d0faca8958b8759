"""The figures of a run's report (`report.py`): pure functions from the rounds of metrics.json
to a PNG data URI, so the page carries its pictures inside it and needs no other file.

Each figure returns None when the run recorded none of what it draws (a baseline has no server
diagnostics), so the report can say so instead of showing empty axes. Figures use matplotlib's
object API (no pyplot state), which keeps drawing safe from the in-process runner's threads.
"""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

Rounds = list[dict[str, Any]]
MODALITY_COLOURS = {"image": "tab:blue", "text": "tab:orange", "sensor": "tab:green"}
#: LabVote's row groups (`labvote.vote_diagnostics`): all samples, the classes the T2I model
#: draws wrongly, and the rest.
GROUPS = {"": "all", "confused_": "confused classes", "clean_": "clean classes"}
DPI = 100


def is_number(value: Any) -> bool:
    """A finite int or float (NaN marks "not measured" in metrics.json; bools are not figures)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def series(rounds: Rounds, where: str, key: str) -> tuple[list[int], list[float]]:
    """Rounds and values of one summary or server figure, over the rounds that measured it."""
    points = [(r["round"], r.get(where, {}).get(key)) for r in rounds]
    points = [(x, float(y)) for x, y in points if is_number(y)]
    return [x for x, _ in points], [y for _, y in points]


def modalities(rounds: Rounds) -> list[str]:
    """The clients' modalities, in the order of MODALITY_COLOURS, then any others."""
    found = {c.get("modality", "?") for r in rounds for c in r.get("clients", [])}
    return [m for m in MODALITY_COLOURS if m in found] + sorted(found - set(MODALITY_COLOURS))


def client_label(client: dict[str, Any]) -> str:
    """A client as a person reads it: partition and architecture (node ids are long and random)."""
    return f"p{client.get('partition_id', '?')} {client.get('architecture', '?')}"


def client_series(rounds: Rounds, key: str) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """Per client (modality, label): rounds and values of one client figure."""
    points: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in rounds:
        for client in r.get("clients", []):
            if is_number(client.get(key)):
                points[(client.get("modality", "?"), client_label(client))].append((r["round"], client[key]))
    return {k: ([x for x, _ in v], [y for _, y in v]) for k, v in sorted(points.items())}


def to_data_uri(fig: Figure) -> str:
    """The figure as an inline PNG (``data:image/png;base64,...``)."""
    for ax in fig.axes:
        _widen_single_round(ax)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _widen_single_round(ax) -> None:
    """A panel whose points all sit on one round (FID measured only before the run) gets the rounds
    either side, so its axis reads "round 0", not matplotlib's -0.05 .. 0.05 around it."""
    x0, x1 = ax.dataLim.intervalx
    if ax.has_data() and x0 == x1 and ax.get_xlabel() == "round":
        ax.set_xlim(x0 - 1, x1 + 1)


def file_data_uri(path: Path) -> str:
    """A PNG file (sample grid, comparison plot) as an inline image."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _axes(n: int, height: float = 3.6) -> tuple[Figure, list]:
    fig = Figure(figsize=(min(5.5 * n, 16), height))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
    return fig, list(axes)


def _legend(ax, **options: Any) -> None:
    """A legend where the panel drew something labelled (a run may lack a panel's series)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**options)


def accuracy_figure(rounds: Rounds) -> str | None:
    """Global-test accuracy per round: one panel per modality, its mean thick, each client thin."""
    present = [m for m in modalities(rounds) if series(rounds, "summary", f"{m}_acc_global_mean")[0]]
    if not present:
        return None
    fig, axes = _axes(len(present))
    curves = client_series(rounds, "acc_global")
    for ax, modality in zip(axes, present):
        for (m, label), (xs, ys) in curves.items():
            if m == modality:
                ax.plot(xs, ys, linewidth=1.2, alpha=0.8, label=label)
        mean = series(rounds, "summary", f"{modality}_acc_global_mean")
        ax.plot(*mean, color="black", linewidth=2.5, marker="o", label="mean")
        ax.set_title(f"{modality} clients")
        ax.set_ylim(0, 1)
        _legend(ax, fontsize=7, loc="lower right")
    axes[0].set_ylabel("accuracy, global test set")
    return to_data_uri(fig)


def t2i_figure(rounds: Rounds) -> str | None:
    """The server T2I model's GenAcc (all, confused and clean classes) and domain FID per round."""
    if not series(rounds, "server", "gen_acc")[0]:
        return None
    fig, (acc, fid) = _axes(2)
    for key, label, style in (
        ("gen_acc", "all classes", "-"),
        ("gen_acc_confused", "confused classes", "--"),
        ("gen_acc_clean", "clean classes", ":"),
    ):
        xs, ys = series(rounds, "server", key)
        if xs:
            acc.plot(xs, ys, style, marker="o", label=label)
    acc.set_title("GenAcc (judge accuracy on generated images)")
    acc.set_ylim(0, 1)
    _legend(acc, fontsize=8)
    fid.plot(*series(rounds, "server", "fid"), marker="o", color="tab:red")
    fid.set_title("domain FID (lower is better)")
    return to_data_uri(fig)


def per_class_figure(rounds: Rounds) -> str | None:
    """GenAcc of every class at every evaluated round, as a heat map (which classes it fails)."""
    evaluated = [r for r in rounds if isinstance(r.get("server", {}).get("per_class_gen_acc"), list)]
    if not evaluated:
        return None
    table = [[v if is_number(v) else math.nan for v in r["server"]["per_class_gen_acc"]] for r in evaluated]
    width = max(len(row) for row in table)
    table = [row + [math.nan] * (width - len(row)) for row in table]
    fig = Figure(figsize=(min(0.32 * width + 2, 16), 0.35 * len(table) + 1.4))
    ax = fig.subplots()
    image = ax.imshow(table, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(table)), [f"round {r['round']}" for r in evaluated])
    ax.set_xticks(range(width), [str(c) for c in range(width)], fontsize=7)
    ax.set_xlabel("class")
    ax.set_title("GenAcc per class")
    fig.colorbar(image, ax=ax, fraction=0.03)
    return to_data_uri(fig)


def labvote_figure(rounds: Rounds) -> str | None:
    """LabVote per round: discard rate per group, and how often the vote and the prompt name what
    the image shows (a vote helps where its line lies above the prompt's), per group."""
    if not series(rounds, "server", "discard_rate")[0]:
        return None
    fig, axes = _axes(3)
    for prefix, name in GROUPS.items():
        xs, ys = series(rounds, "server", f"{prefix}discard_rate")
        if xs:
            axes[0].plot(xs, ys, marker="o", label=name)
    axes[0].set_title("discard rate")
    _legend(axes[0], fontsize=8)
    for ax, prefix in zip(axes[1:], ("confused_", "clean_")):
        for key, label, style in (
            (f"{prefix}vote_depicted_agreement", "vote", "-"),
            (f"{prefix}prompt_depicted_agreement_kept", "prompt (kept rows)", "--"),
        ):
            xs, ys = series(rounds, "server", key)
            if xs:
                ax.plot(xs, ys, style, marker="o", label=label)
        ax.set_title(f"label accuracy, {GROUPS[prefix]}")
        ax.set_ylim(0, 1)
        _legend(ax, fontsize=8)
    return to_data_uri(fig)


def weights_figure(rounds: Rounds) -> str | None:
    """Contrastive aggregation weights: every client's mean weight per round, per modality (the
    dotted line is the uniform 1/K), and the weights' normalised entropy and maximum."""
    weights = client_series(rounds, "alpha_mean")
    if not weights:
        return None
    present = [m for m in modalities(rounds) if any(k[0] == m for k in weights)]
    fig, axes = _axes(len(present) + 1)
    for ax, modality in zip(axes, present):
        mine = {label: xy for (m, label), xy in weights.items() if m == modality}
        for label, (xs, ys) in mine.items():
            ax.plot(xs, ys, marker="o", linewidth=1, label=label)
        ax.axhline(1 / len(mine), color="grey", linestyle=":")
        ax.set_title(f"{modality}: mean weight per client")
        _legend(ax, fontsize=7)
    for modality in present:
        colour = MODALITY_COLOURS.get(modality, "grey")
        axes[-1].plot(*series(rounds, "server", f"{modality}_alpha_entropy"), color=colour, label=f"{modality} entropy")
        xs, ys = series(rounds, "server", f"{modality}_alpha_max")
        axes[-1].plot(xs, ys, "--", color=colour, label=f"{modality} max weight")
    axes[-1].set_title("collapse watch (entropy 1 = uniform)")
    axes[-1].set_ylim(0, 1.05)
    _legend(axes[-1], fontsize=7)
    return to_data_uri(fig)


def time_keys(rounds: Rounds) -> list[str]:
    """The timed steps of the run (``time_<step>_s`` server figures), the round's total excluded."""
    keys = {k for r in rounds for k in r.get("server", {}) if k.startswith("time_") and k.endswith("_s")}
    return sorted(keys - {"time_round_s"})


def cost_figure(rounds: Rounds) -> str | None:
    """Seconds per round, stacked by step (a black dash: the whole round, untimed work included),
    and the bytes each client sent and received per round."""
    steps = time_keys(rounds)
    up = series(rounds, "summary", "bytes_up_per_client_mean")
    if not steps and not up[0]:
        return None
    fig, (time_ax, bytes_ax) = _axes(2)
    bottom: dict[int, float] = defaultdict(float)
    for key in steps:
        xs, ys = series(rounds, "server", key)
        time_ax.bar(xs, ys, bottom=[bottom[x] for x in xs], label=key[5:-2].replace("_", " "))
        for x, y in zip(xs, ys):
            bottom[x] += y
    total = series(rounds, "server", "time_round_s")
    if total[0]:
        time_ax.plot(*total, "k_", markersize=30, markeredgewidth=2, label="whole round")
    time_ax.set_title("seconds per round, by step")
    _legend(time_ax, fontsize=7, markerscale=0.4)
    for key, label in (("bytes_up_per_client_mean", "up"), ("bytes_down_per_client_mean", "down")):
        xs, ys = series(rounds, "summary", key)
        if xs:
            bytes_ax.plot(xs, [y / 1e6 for y in ys], marker="o", label=label)
    bytes_ax.set_title("MB per client per round")
    _legend(bytes_ax, fontsize=8)
    return to_data_uri(fig)
