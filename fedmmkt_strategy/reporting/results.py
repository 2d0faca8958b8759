"""Results on disk: one folder per run with metrics.json, metrics.csv and accuracy.png.

The recorder rewrites all files at the end of every round, so an interrupted run still
leaves its history behind, and a person can open the folder while the run goes on. The same
history feeds the run's experiment trackers (TensorBoard event files, `trackers.py`).
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

if TYPE_CHECKING:
    from fedmmkt_strategy.reporting.trackers import TrackerFeed

CLIENT_FIELDS = (
    "round",
    "node_id",
    "partition_id",
    "modality",
    "architecture",
    "train_loss",
    "acc_local",
    "acc_global",
    "loss_local",
    "loss_global",
    "num_examples",
    "bytes_down",
    "bytes_up",
)


def make_run_dir(root: Path, strategy: str, run_name: str = "") -> Path:
    """A fresh folder ``<root>/<name or timestamp-strategy>`` (suffixed if it exists)."""
    base = run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{strategy}"
    path, i = root / base, 1
    while path.exists():
        i += 1
        path = root / f"{base}-{i}"
    path.mkdir(parents=True)
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Diagnostics:
    """What one step of a round measured: server-level figures and per-client ones.

    The steps return these instead of writing to the recorder, so each step stays a function of
    its inputs and the strategy records a phase's outcome in one place (`RunRecorder.record`)."""

    server: dict[str, Any] = field(default_factory=dict)
    clients: dict[int, dict[str, Any]] = field(default_factory=dict)

    def client(self, node_id: int, **fields: Any) -> Diagnostics:
        self.clients.setdefault(node_id, {}).update(fields)
        return self

    def merge(self, *others: Diagnostics) -> Diagnostics:
        """These figures followed by `others`' (a later value of the same key wins)."""
        for other in others:
            self.server.update(other.server)
            for node, fields in other.clients.items():
                self.client(node, **fields)
        return self


class RunRecorder:
    """Collects per-round, per-client and server metrics and writes them as files."""

    def __init__(self, run_dir: Path, config: dict[str, Any], strategy: str):
        self.run_dir = run_dir
        self.config, self.strategy = config, strategy
        self.clients: dict[tuple[int, int], dict[str, Any]] = defaultdict(dict)
        self.rounds: dict[int, dict[str, Any]] = defaultdict(dict)
        self.failures: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []  # one entry per resume: after which round, when
        self.started = time.time()
        self.feed: TrackerFeed | None = None  # the run's trackers, fed on every write

    def client(self, server_round: int, node_id: int, **fields: Any) -> None:
        """Merge fields into the row of one client in one round; byte counts accumulate."""
        row = self.clients[(server_round, node_id)]
        row.update(round=server_round, node_id=node_id)
        for key, value in fields.items():
            row[key] = row.get(key, 0) + value if key.startswith("bytes_") else value

    def server(self, server_round: int, **fields: Any) -> None:
        """Merge server-side diagnostics into a round."""
        self.rounds[server_round].update(fields)

    def record(self, server_round: int, *diagnostics: Diagnostics) -> None:
        """Merge steps' `Diagnostics` into a round: each one's clients, then its server figures."""
        for diag in diagnostics:
            for node, fields in diag.clients.items():
                self.client(server_round, node, **fields)
            self.server(server_round, **diag.server)

    def failure(self, server_round: int, phase: str, node_id: int, reason: str) -> None:
        self.failures.append({"round": server_round, "phase": phase, "node_id": node_id, "reason": reason})

    def round_summary(self, server_round: int) -> dict[str, float]:
        """Mean accuracies per modality and mean bytes per client in one round."""
        rows = [r for (rnd, _), r in self.clients.items() if rnd == server_round]
        summary: dict[str, float] = {}
        for modality in sorted({r.get("modality", "?") for r in rows}):
            mine = [r for r in rows if r.get("modality") == modality]
            for key in ("acc_global", "acc_local"):
                values = [r[key] for r in mine if key in r]
                if values:
                    summary[f"{modality}_{key}_mean"] = sum(values) / len(values)
        for key in ("bytes_up", "bytes_down"):
            values = [r.get(key, 0) for r in rows]
            if values:
                summary[f"{key}_per_client_mean"] = sum(values) / len(values)
        return summary

    def as_dict(self) -> dict[str, Any]:
        rounds = []
        for rnd in sorted({r for r, _ in self.clients} | set(self.rounds)):
            rows = [self.clients[k] for k in sorted(self.clients) if k[0] == rnd]
            rounds.append(
                {"round": rnd, "summary": self.round_summary(rnd), "server": self.rounds.get(rnd, {}), "clients": rows}
            )
        return {
            "strategy": self.strategy,
            "config": self.config,
            "wall_time_s": time.time() - self.started,
            "rounds": rounds,
            "failures": self.failures,
            "resumes": self.resumes,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything recorded so far, for a checkpoint (see `checkpoint.py`)."""
        return {
            "clients": [dict(row) for _, row in sorted(self.clients.items())],
            "rounds": {rnd: dict(fields) for rnd, fields in self.rounds.items()},
            "failures": list(self.failures),
            "resumes": list(self.resumes),
            "elapsed_s": time.time() - self.started,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: the history so far, and the wall clock where it stopped."""
        self.clients = defaultdict(dict, {(int(r["round"]), int(r["node_id"])): dict(r) for r in state["clients"]})
        self.rounds = defaultdict(dict, {int(rnd): dict(fields) for rnd, fields in state["rounds"].items()})
        self.failures = list(state["failures"])
        self.resumes = list(state["resumes"])
        self.started = time.time() - float(state["elapsed_s"])

    def write(self) -> None:
        """(Re)write metrics.json, metrics.csv and accuracy.png; send the trackers what is new."""
        data = self.as_dict()
        _write_atomic(self.run_dir / "metrics.json", json.dumps(data, indent=2))
        self._write_csv()
        if data["rounds"]:
            plot_accuracy(data, self.run_dir / "accuracy.png")
        if self.feed is not None:
            self.feed.update(data)

    def close(self) -> None:
        """The final write, then the trackers' files are closed."""
        self.write()
        if self.feed is not None:
            self.feed.close()
            self.feed = None

    def _write_csv(self) -> None:
        tmp = self.run_dir / "metrics.csv.tmp"
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CLIENT_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for key in sorted(self.clients):
                writer.writerow(self.clients[key])
        os.replace(tmp, self.run_dir / "metrics.csv")


def plot_accuracy(data: dict[str, Any], path: Path) -> None:
    """Global-test accuracy per round: one thick line per modality (mean), thin lines per client."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"image": "tab:blue", "text": "tab:orange", "sensor": "tab:green"}
    per_client: dict[tuple[int, str, str], list[tuple[int, float]]] = defaultdict(list)
    for rnd in data["rounds"]:
        for row in rnd["clients"]:
            if "acc_global" in row:
                key = (row["node_id"], row.get("modality", "?"), row.get("architecture", "?"))
                per_client[key].append((rnd["round"], row["acc_global"]))
    for (_, modality, _), points in per_client.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, color=colours.get(modality, "grey"), alpha=0.25, linewidth=1)
    for modality, colour in colours.items():
        points = [
            (r["round"], r["summary"][f"{modality}_acc_global_mean"])
            for r in data["rounds"]
            if f"{modality}_acc_global_mean" in r["summary"]
        ]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, color=colour, linewidth=2.5, marker="o", label=f"{modality} clients (mean)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("top-1 accuracy on the global test set")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{data['strategy']}: client accuracy per round (thin lines: single clients)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
