"""A client's model and synthetic pool on its node's disk, so it survives a restart.

`context.state` belongs to one Flower run: after a server crash and `resume` (a new run), or a
SuperNode restart, it is empty, and the client would start over from its warm-up. Every time a
node saves its model (and after each pool update) it also writes them to
``<state dir>/<run key>/<node key>.npz``; a node whose `context.state` is empty loads that file
instead of warming up. The run key comes from the server (`run-key` in every message: the run's
results folder name, which a resumed run keeps), the node key from the node's own role
(``p<partition-id>-<modality>-<architecture>``; node ids change when a SuperNode re-registers).

The file is written to a temporary name and renamed into place (a crash mid-write leaves the
previous file), and holds only this node's own model weights and the server's synthetic pool:
nothing that is not already on the node.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from fedmmkt_strategy.memo import default_cache_root

MODEL_PREFIX, SYNTHETIC_PREFIX = "model/", "synthetic/"
#: Run folders not written for this long are removed when a node starts keeping a new run: a
#: finished run's client state is only worth keeping for a resume, and every run writes some MB.
STALE_AFTER_DAYS = 7


def default_state_root(cache_dir: str) -> Path:
    """``<cache-dir>/client-state``; the cache dir defaults to ``$XDG_CACHE_HOME/fedmmkt`` or
    ``~/.cache/fedmmkt``, as for the server models."""
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_root()) / "client-state"


def state_root(setting: str, node_setting: str | None, cache_dir: str, checkpoint: bool) -> Path | None:
    """Where this node keeps its state, or None (not kept).

    The node config's `state-dir` wins (a SuperNode's own disk); else the run config's
    `client-state-dir`: "off", a path, or "auto", which is `default_state_root` when the server
    checkpoints (`checkpoint = true`: without a server checkpoint there is nothing to resume)."""
    if node_setting:
        return Path(node_setting).expanduser()
    if setting == "off" or (setting == "auto" and not checkpoint):
        return None
    return default_state_root(cache_dir) if setting == "auto" else Path(setting).expanduser()


def state_file(root: Path, run_key: str, node_key: str) -> Path:
    """``root/run_key/node_key.npz``; both keys are checked to be plain names (no path tricks)."""
    for name, value in (("run key", run_key), ("node key", node_key)):
        if not value or Path(value).name != value or value in (".", ".."):
            raise ValueError(f"{name} {value!r} is not a plain file name")
    return root / run_key / f"{node_key}.npz"


def prune_stale(root: Path, keep: Path, days: float = STALE_AFTER_DAYS) -> list[Path]:
    """Remove the run folders under `root` other than `keep` last written `days` or more ago."""
    removed = []
    cutoff = time.time() - days * 86400
    for folder in root.iterdir() if root.is_dir() else []:
        if folder.is_dir() and folder != keep and folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def write_state(path: Path, model: dict[str, torch.Tensor], synthetic: dict[str, np.ndarray]) -> None:
    """Model weights (float32 on the CPU) and synthetic pool arrays, atomically; a node's first
    write of a run also prunes the state of runs untouched for `STALE_AFTER_DAYS`."""
    if not path.parent.exists():
        prune_stale(path.parent.parent, path.parent)
    arrays = {MODEL_PREFIX + k: v.detach().cpu().float().numpy() for k, v in model.items()}
    arrays.update({SYNTHETIC_PREFIX + k: np.asarray(v) for k, v in synthetic.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """What `write_state` wrote: (model state dict, synthetic arrays); no pickles are loaded."""
    with np.load(path, allow_pickle=False) as data:
        model = {
            k[len(MODEL_PREFIX) :]: torch.from_numpy(data[k].copy()) for k in data.files if k.startswith(MODEL_PREFIX)
        }
        synthetic = {k[len(SYNTHETIC_PREFIX) :]: data[k] for k in data.files if k.startswith(SYNTHETIC_PREFIX)}
    return model, synthetic


def synthetic_arrays(state: RecordDict, cache_key: str) -> dict[str, np.ndarray]:
    """The cached pool's arrays in `state` (none when nothing is cached)."""
    if cache_key not in state.array_records:
        return {}
    record = state[cache_key]
    return {key: record[key].numpy() for key in record}


def restore_synthetic(state: RecordDict, cache_key: str, arrays: dict[str, np.ndarray]) -> None:
    if arrays:
        state[cache_key] = ArrayRecord({key: Array(np.ascontiguousarray(v)) for key, v in arrays.items()})
