"""Checkpoint and resume of the server: its whole state after every round, written atomically.

After each complete round the strategy writes ``<results folder>/checkpoint.pt``: the round
number, the run config, the random states (python, numpy, torch), the metrics so far and the
strategy's own state (for `fedmmkt`: T2I denoiser weights or LoRA adapters, fusion module,
synthetic pool, previous fused vectors, Byzantine reliability history, privacy ledger). It is
written to a temporary file in the same folder and moved over the old one with `os.replace`,
so a crash at any moment leaves either the previous or the new checkpoint, never half of one.

The file holds only tensors, strings, numbers and containers of them, so it loads with
``torch.load(weights_only=True)``: resuming never unpickles arbitrary objects.

What resume means for clients is documented in docs/robustness.md: the server's state is
restored exactly; clients keep whatever their SuperNode kept (Flower scopes `context.state`
to a run).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmmkt_strategy.config import ConfigError, RunConfig

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1
#: Keys a resumed run may change: where and how long it runs, not what it computes.
RESUMABLE_KEYS = frozenset(
    {
        "resume",
        "num-server-rounds",
        "round-timeout",
        "sample-deadline",
        "node-settle",
        "results-dir",
        "client-state-dir",  # where clients keep their state, not what they compute
        "run-name",
        "trackers",
        "cache-dir",
        "reuse-cache",  # bit-identical work read back instead of recomputed
        "checkpoint",
        "client-threads",  # how fast, not what: torch threads of clients and server
        "server-threads",
    }
)


def to_tensors(value: Any) -> Any:
    """numpy arrays -> torch tensors, recursively, so the checkpoint loads with weights_only=True.
    String arrays become lists of str."""
    if isinstance(value, np.ndarray):
        return value.tolist() if value.dtype.kind in "US" else torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: to_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_tensors(v) for v in value)
    return value


def rng_state() -> dict[str, Any]:
    """The global random states a round may consume: python, numpy (legacy global), torch CPU."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {**np_state["state"], "key": torch.from_numpy(np_state["state"]["key"])}},
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the global random states saved by `rng_state`."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np_state = dict(state["numpy"])
    np_state["state"] = {**np_state["state"], "key": np_state["state"]["key"].numpy().astype(np.uint32)}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])


def save_checkpoint(run_dir: Path, state: Mapping[str, Any]) -> Path:
    """Write `state` to ``run_dir/checkpoint.pt`` atomically (temp file, fsync, os.replace)."""
    path = run_dir / CHECKPOINT_FILE
    tmp = run_dir / f".{CHECKPOINT_FILE}.tmp"
    with tmp.open("wb") as fh:
        torch.save({"version": FORMAT_VERSION, **to_tensors(dict(state))}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


#: Top-level keys of every checkpoint (`FederatedStrategy.save_checkpoint`).
CHECKPOINT_KEYS = ("version", "round", "config", "rng", "recorder", "strategy")
#: What to do when a checkpoint cannot be resumed (every such error ends with it).
RESUME_ADVICE = (
    "resume another run's folder, or start a new run (leave `resume` empty); nothing in the results folder was changed"
)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors and plain containers only).

    A truncated, empty, random or foreign file (one that is not tensors and containers, which
    `weights_only` refuses to unpickle) fails with one line naming the `resume` key, the file,
    what is wrong and what to do, never a raw `EOFError` or `UnpicklingError`."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - every way a file can fail to load is the same answer
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"resume: {path} is not a readable checkpoint ({reason[:200]}); {RESUME_ADVICE}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"resume: {path} holds a {type(state).__name__}, not a checkpoint; {RESUME_ADVICE}")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ConfigError(f"resume: {path} lacks {missing}, so it is not a complete checkpoint; {RESUME_ADVICE}")
    if state["version"] != FORMAT_VERSION:
        raise ConfigError(f"resume: {path} has checkpoint format {state['version']}, expected {FORMAT_VERSION}")
    if not isinstance(state["round"], int) or not isinstance(state["config"], dict):
        raise ConfigError(f"resume: {path} has a malformed round or config; {RESUME_ADVICE}")
    return state


def resolve_resume(config: RunConfig) -> Path:
    """The results folder named by `resume`: a path, or a run name under `results-dir`."""
    candidates = [Path(config.resume).expanduser(), config.results_path / config.resume]
    for folder in candidates:
        if (folder / CHECKPOINT_FILE).is_file():
            return folder
    tried = ", ".join(str(c / CHECKPOINT_FILE) for c in candidates)
    raise ConfigError(f"resume = {config.resume!r}: no checkpoint found (looked for {tried})")


def check_resumable(saved: Mapping[str, Any], config: RunConfig, completed_round: int) -> None:
    """A resumed run must compute the same thing: every key outside `RESUMABLE_KEYS` must equal
    the checkpoint's, and there must be rounds left to run."""
    current = config.as_run_config()
    changed = sorted(k for k in set(saved) | set(current) if k not in RESUMABLE_KEYS and saved.get(k) != current.get(k))
    if changed:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in changed)
        raise ConfigError(
            f"resume: the run config differs from the checkpoint's in keys that change results: {details}"
        )
    if completed_round > config.num_server_rounds:
        raise ConfigError(
            f"resume: the checkpoint completed round {completed_round}, beyond num-server-rounds = "
            f"{config.num_server_rounds}"
        )
