"""Experiment trackers: a run's figures where FL researchers follow them (TensorBoard, W&B).

Every tracker is fed from the same place as metrics.json: after each round the recorder hands
its whole history to a `TrackerFeed`, which turns it into scalars (one tag per number in
metrics.json) and sample-grid images, and sends each tracker only what it has not sent yet.
So a tracker shows exactly the values of metrics.json, late additions (a round's T2I score
recorded after its clients) included, and a tracker is one small class with three methods.

Tags: ``summary/<key>`` (per-modality means and bytes), ``server/<key>`` (GenAcc, FID, LabVote
and fusion diagnostics, times), ``client/p<partition>-<modality>-<architecture>/<key>`` (each
client's accuracies, losses, bytes, contrastive weight); the step is the round (0 holds the
pre-trained T2I model's scores). Trackers are chosen with the run-config key `trackers`.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable, Mapping
from logging import WARNING
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.common.logger import log

#: Tracker names the run-config key `trackers` accepts, and the module each needs.
TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb"}
#: Where the trackers write, inside the run's results folder.
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
#: Client-row keys that identify a client rather than measure it.
_CLIENT_IDENTITY = {"round", "node_id", "partition_id", "modality", "architecture"}


class Tracker(Protocol):
    """What a tracker must do; the feed calls these, in step order within one update."""

    def scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def image(self, tag: str, step: int, path: Path) -> None: ...

    def close(self) -> None: ...


def parse_trackers(text: str, require_installed: bool = True) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` -> ("tensorboard", "wandb"); "" or "none" -> (); raises ValueError
    naming an unknown tracker, or (with `require_installed`) one whose package is not installed,
    with the install line. Only the server writes tracker files, so a client validates the names
    alone: an edge SuperNode without tensorboard must accept the run config the server sends."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"))
    for name in names:
        if name not in TRACKER_MODULES:
            raise ValueError(f"unknown tracker {name!r}; choose from {', '.join(TRACKER_MODULES)} or 'none'")
        if require_installed and importlib.util.find_spec(TRACKER_MODULES[name]) is None:
            raise ValueError(f"{name} is not installed: pip install 'fedmmkt[{name}]', or leave it out of trackers")
    return names


def client_tag(row: Mapping[str, Any]) -> str:
    """A client's tag prefix that stays the same across rounds and runs of one layout: its data
    partition, modality and architecture (node ids are random per run)."""
    who = f"p{row['partition_id']}" if "partition_id" in row else f"n{row.get('node_id', '?')}"
    return f"client/{who}-{row.get('modality', '?')}-{row.get('architecture', '?')}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def round_scalars(entry: Mapping[str, Any]) -> dict[str, float]:
    """Every finite number of one metrics.json round, by tag (lists and strings are left out)."""
    values: dict[str, float] = {}
    for key, value in entry.get("summary", {}).items():
        if _is_number(value):
            values[f"summary/{key}"] = float(value)
    for key, value in entry.get("server", {}).items():
        if _is_number(value):
            values[f"server/{key}"] = float(value)
    for row in entry.get("clients", []):
        prefix = client_tag(row)
        for key, value in row.items():
            if key not in _CLIENT_IDENTITY and _is_number(value):
                values[f"{prefix}/{key}"] = float(value)
    return values


def unsent(values: Mapping[str, float], sent: Mapping[str, float]) -> dict[str, float]:
    """The values that are new or changed since they were last sent."""
    return {tag: v for tag, v in values.items() if sent.get(tag) != v}


class TrackerFeed:
    """Sends a run's history to its trackers incrementally; a tracker that fails is logged and
    dropped, never the run."""

    def __init__(self, trackers: Iterable[Tracker], run_dir: Path):
        self.trackers = list(trackers)
        self.run_dir = run_dir
        self.sent: dict[int, dict[str, float]] = {}
        self.images: set[int] = set()

    def mark_sent(self, data: Mapping[str, Any]) -> None:
        """Treat a resumed run's history as already sent (its trackers hold it from before)."""
        for entry in data["rounds"]:
            self.sent[entry["round"]] = round_scalars(entry)
            if self._grid(entry["round"]).exists():
                self.images.add(entry["round"])

    def update(self, data: Mapping[str, Any]) -> None:
        """Send whatever the history `data` (RunRecorder.as_dict) holds that was not sent yet."""
        for entry in data["rounds"]:
            step = entry["round"]
            values = round_scalars(entry)
            new = unsent(values, self.sent.get(step, {}))
            if new:
                self._each("scalars", step, new)
                self.sent[step] = values
            grid = self._grid(step)
            if step not in self.images and grid.exists():
                self._each("image", "samples", step, grid)
                self.images.add(step)

    def close(self) -> None:
        self._each("close")

    def _grid(self, step: int) -> Path:
        return self.run_dir / "samples" / f"round_{step:03d}.png"

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:  # a tracker's failure must never end the run
                log(
                    WARNING,
                    "tracker %s failed (%s: %s); no more values go to it",
                    type(tracker).__name__,
                    type(err).__name__,
                    err,
                )
                self.trackers.remove(tracker)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


class TensorBoardTracker:
    """Event files in ``<run>/tensorboard``: ``tensorboard --logdir <run or comparison folder>``."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops what its first life wrote after the checkpoint's round
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)
        if purge_step is None:
            self.writer.add_text("config", config_markdown(config), 0)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a person follows the run while it goes on; a crash loses nothing

    def image(self, tag: str, step: int, path: Path) -> None:
        self.writer.add_image(tag, _read_png(path), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in offline mode under ``<run>/wandb`` (``wandb sync`` uploads it later); the round
    is its step metric, so values that arrive late for an earlier round are accepted."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], resumed: bool = False):
        import wandb

        self.wandb = wandb
        (run_dir / WANDB_DIR).mkdir(exist_ok=True)
        self.run = wandb.init(
            mode="offline",
            dir=str(run_dir),
            project="fedmmkt",
            name=run_dir.name,
            config=dict(config),
            tags=["resumed"] if resumed else None,
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.run.define_metric("round")
        self.run.define_metric("*", step_metric="round")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log({"round": step, **values})

    def image(self, tag: str, step: int, path: Path) -> None:
        self.run.log({"round": step, tag: self.wandb.Image(str(path))})

    def close(self) -> None:
        self.run.finish()


def config_markdown(config: Mapping[str, Any]) -> str:
    """The run config as a two-column markdown table (TensorBoard's text tab renders it)."""
    rows = "\n".join(f"| {key} | {value} |" for key, value in sorted(config.items()))
    return "| key | value |\n|---|---|\n" + rows


def build_trackers(
    names: Iterable[str], run_dir: Path, config: Mapping[str, Any], resumed_after: int | None = None
) -> list[Tracker]:
    """The trackers a run asked for; one that cannot start is logged and left out."""
    trackers: list[Tracker] = []
    for name in names:
        try:
            if name == "tensorboard":
                purge = None if resumed_after is None else resumed_after + 1
                trackers.append(TensorBoardTracker(run_dir, config, purge_step=purge))
            elif name == "wandb":
                trackers.append(WandbTracker(run_dir, config, resumed=resumed_after is not None))
        except Exception as err:
            log(
                WARNING,
                "tracker %s could not start (%s: %s); the run goes on without it",
                name,
                type(err).__name__,
                err,
            )
    return trackers


def read_tensorboard(run_dir: Path) -> tuple[dict[str, dict[int, list[float]]], dict[str, list[int]]]:
    """A run's TensorBoard event files read back, as TensorBoard shows them (purged steps of a
    resumed run dropped): ({tag: {step: [values]}}, {image tag: [steps]}). More than one value at
    a step means the run logged it twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars: dict[str, dict[int, list[float]]] = {}
    for tag in events.Tags()["scalars"]:
        for event in events.Scalars(tag):
            scalars.setdefault(tag, {}).setdefault(event.step, []).append(event.value)
    images = {tag: [event.step for event in events.Images(tag)] for tag in events.Tags()["images"]}
    return scalars, images
