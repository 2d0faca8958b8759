"""Work a run repeats from an earlier run, kept on disk: seeded, deterministic computations whose
inputs are all in their key.

Every run of a seed scores the same pre-trained T2I model on the same prompts and noise before
round 1, synthesises the same round-1 pool from it, and (per client) trains the same model on
the same private data to convergence before its first vote. Recomputing them costs a default
run about three of its eight minutes and a comparison of seven strategies that much per
strategy, for bit-identical results. `remembered` computes once, writes the arrays under
``<cache-dir>/memo/<kind>/<digest>.npz`` (plus the key as JSON, for a person) and later returns
them. The key must name everything the result depends on: weights by their digest
(`weights_digest`), the code that computes it by its source (`code_digest`, so editing a training
loop or a sampler never reads stale results back), seeds, sizes, prompts. Run-config key
``reuse-cache = false`` turns it off.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/fedmmkt``, or ``~/.cache/fedmmkt``: the server models' and clients' cache."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedmmkt"


def memo_root(cache_dir: str) -> Path:
    """``<cache-dir>/memo`` (the cache dir defaults to `default_cache_root`)."""
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_root()) / "memo"


def digest(key: Mapping[str, Any]) -> str:
    """A stable 16-hex digest of a JSON-able key (non-JSON values by their repr)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def weights_digest(*modules: torch.nn.Module) -> str:
    """A digest of every parameter and buffer of `modules` (names, dtypes, shapes, bytes): equal
    only for equal weights, however they were loaded."""
    hasher = hashlib.sha1()
    for module in modules:
        for name, tensor in module.state_dict().items():
            hasher.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            hasher.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def code_digest(*modules: ModuleType) -> str:
    """A digest of the source files of `modules`: what computes a remembered result."""
    hasher = hashlib.sha1()
    for module in modules:
        hasher.update(Path(inspect.getfile(module)).read_bytes())
    return hasher.hexdigest()


def remembered(
    root: Path | None, kind: str, key: Mapping[str, Any], compute: Callable[[], dict[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], bool]:
    """`compute()`'s arrays, from ``root/kind/<digest(key)>.npz`` when an earlier run stored them
    (then the flag is True), else computed now and stored. `root` None: always computed, never
    stored. A file that cannot be read is computed again and replaced."""
    if root is None:
        return compute(), False
    path = root / kind / f"{digest(key)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}, True
        except (OSError, ValueError):
            pass
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(key, indent=2, sort_keys=True, default=repr))
    return arrays, False
