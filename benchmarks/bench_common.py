"""Helpers shared by the benchmark scripts: the project's default run config, overrides, the
machine description, log-log fits and the JSON result files under ``benchmarks/results/``.

Kept in one place so every script states its machine and writes its results the same way;
the lead compares figures across scripts and commits, which only works if they agree on format.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from fedmmkt_strategy.config import load_preset
from lab.portable_paths import portable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def project_defaults() -> dict[str, Any]:
    """The run config of ``pyproject.toml`` (``[tool.flwr.app.config]``), what `flwr run` starts from."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(data["tool"]["flwr"]["app"]["config"])


def preset_config(name: str) -> dict[str, Any]:
    """The defaults overlaid with ``presets/<name>.toml``, as ``flwr run --run-config presets/<name>.toml``."""
    return {**project_defaults(), **load_preset(name)}


def parse_overrides(text: str) -> dict[str, Any]:
    """``"key=value other=value"`` in `flwr run --run-config` syntax (Flower's own parser)."""
    from flwr.common.config import parse_config_args

    return dict(parse_config_args([text])) if text.strip() else {}


def machine() -> dict[str, Any]:
    """What the figures were measured on: the numbers mean nothing without it."""
    import diffusers
    import flwr
    import torch
    import transformers

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "flwr": flwr.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv,
    }


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def loglog_exponent(x: list[float], y: list[float]) -> float:
    """Least-squares slope of log(y) against log(x): y ~ x**slope. NaN with < 2 usable points."""
    pairs = [(a, b) for a, b in zip(x, y) if a > 0 and b > 0]
    if len(pairs) < 2:
        return float("nan")
    lx, ly = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(lx, ly, 1)[0])


def write_result(name: str, result: dict[str, Any], quick: bool) -> Path:
    """Write ``benchmarks/results/<name>[-quick].json`` (quick runs never overwrite full ones)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'-quick' if quick else ''}.json"
    text = json.dumps({"benchmark": name, "quick": quick, "machine": machine(), **result}, indent=2) + "\n"
    path.write_text(portable(text))
    print(f"results written to {path}")
    return path
