"""End to end wall time: the default ``flwr run`` and ``fedmmkt compare --preset smoke`` (issue 7, item 6).

    python benchmarks/e2e.py            # default run (about 4 min) + smoke comparison (a few minutes), 2 CPU cores
    python benchmarks/e2e.py --quick    # the same commands at micro sizes (smoke check of this script)
    python benchmarks/e2e.py --skip-compare | --skip-flwr-run

``flwr run . --federation-config simulation.toml --stream``, as the README runs it, against a
simulation SuperLink this script starts on a free loopback port and stops afterwards (by process
group id), with FLWR_HOME in a temporary folder whose default connection points at it. The wall
time is from submission to the end of the streamed logs; the run must end ``finished:completed``
(`flwr ls`), which the script checks and records. Its results folder (a temporary one, so nothing
is left in ~/fedmmkt-results) gives the per-round breakdown (`round_breakdown.breakdown`).
``fedmmkt compare --preset smoke`` then runs in a subprocess with its output in the same
temporary folder; its comparison.json gives every variant's wall time.

``--quick`` overrides the run config with the test suite's micro sizes (2 rounds, 8 tiny clients,
micro server models pre-trained into ``--cache-dir``, which costs about 45 s the first time) and
runs only ``local`` and ``fedmmkt`` in the comparison: it checks the script, not the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import ROOT, write_result
from round_breakdown import breakdown

sys.path.insert(0, str(ROOT))
from fedmmkt_strategy.cli.flower_processes import BIN, flower_env, own_superlink  # noqa: E402
from fedmmkt_strategy.config import load_preset  # noqa: E402

#: The test suite's micro server models (presets/micro-server.toml) and a tiny federation, as overrides.
MICRO = " ".join(
    f"{key}={value!r}" if isinstance(value, str) else f"{key}={str(value).lower()}"
    for key, value in {
        **load_preset("micro-server"),
        "client-warmup-epochs": 1,
        "num-server-rounds": 2,
        "pool-size": 480,
        "test-per-class": 2,
        "local-epochs": 1,
        "node-settle": 0.5,
        "client-layout": "image:cnn-small,text:bow",
    }.items()
)
QUICK_COMPARE = "local,fedmmkt"


def time_flwr_run(tmp: Path, run_config: str, timeout: float) -> dict[str, Any]:
    """Wall time of `flwr run . --federation-config simulation.toml --stream` and its final status."""
    with own_superlink(tmp, connection="e2e") as link:
        env = link.env
        cmd = [str(BIN / "flwr"), "run", ".", "--federation-config", "simulation.toml", "--stream"]
        cmd += ["--run-config", run_config]
        print("$ " + " ".join(cmd), flush=True)
        log = tmp / "flwr-run.log"
        start_time = time.perf_counter()
        with log.open("w") as out:
            done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        wall = time.perf_counter() - start_time
        listing = subprocess.run(
            [str(BIN / "flwr"), "ls", "--format", "json"], env=env, capture_output=True, text=True, check=True
        )
        run_id = int(json.loads(listing.stdout)["runs"][-1]["run-id"])
        status, details = link.wait_for_run(run_id, timeout=60)
    return {
        "command": " ".join(cmd),
        "exit_code": done.returncode,
        "wall_s": wall,
        "run_id": run_id,
        "status": status,
        "status_details": details,
        "completed": status == "finished:completed",
        "log_tail": log.read_text().splitlines()[-5:],
    }


def time_compare(tmp: Path, extra: list[str], timeout: float) -> dict[str, Any]:
    """Wall time of `fedmmkt compare --preset smoke` and each variant's own wall time."""
    out = tmp / "comparison"
    cmd = [str(BIN / "fedmmkt"), "compare", "--preset", "smoke", "--out", str(out), *extra]
    print("$ " + " ".join(cmd), flush=True)
    env = flower_env(tmp / "flwr-home-compare")
    start_time = time.perf_counter()
    with (tmp / "compare.log").open("w") as log:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    wall = time.perf_counter() - start_time
    comparison = json.loads((out / "comparison.json").read_text()) if (out / "comparison.json").exists() else {}
    return {
        "command": " ".join(cmd),
        "exit_code": done.returncode,
        "wall_s": wall,
        "variant_wall_s": {v: [r["wall_s"] for r in runs] for v, runs in comparison.items()},
        "completed": done.returncode == 0 and bool(comparison),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="micro sizes, tiny clients, 2 compare variants")
    parser.add_argument("--cache-dir", default="", help="server-model cache (quick default: a fresh temporary one)")
    parser.add_argument("--skip-flwr-run", action="store_true")
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds each command may take")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fedmmkt-e2e-") as name:
        tmp = Path(name)
        results = tmp / "results"
        cache = args.cache_dir or (str(tmp / "cache") if args.quick else "")
        common = f'results-dir="{results}"' + (f' cache-dir="{cache}"' if cache else "")
        if not args.skip_flwr_run:
            run_config = f'{MICRO} {common} run-name="e2e"' if args.quick else f'{common} run-name="e2e"'
            flwr_run = time_flwr_run(tmp, run_config, args.timeout)
            metrics_path = results / "e2e" / "metrics.json"
            if metrics_path.exists():
                metrics = json.loads(metrics_path.read_text())
                flwr_run["round_breakdown_s"] = {step: mean for step, mean, _ in breakdown(metrics)}
                flwr_run["run_internal_wall_s"] = metrics.get("wall_time_s")
            result["flwr_run"] = flwr_run
            state = "completed" if flwr_run["completed"] else f"NOT completed: {flwr_run['status']}"
            print(f"flwr run: {flwr_run['wall_s']:.1f} s wall, {state}")
        if not args.skip_compare:
            extra = []
            if args.quick:
                extra = ["--variants", QUICK_COMPARE, "--run-config", f'{MICRO} cache-dir="{cache}"']
            compare = time_compare(tmp, extra, args.timeout)
            result["compare_smoke"] = compare
            state = "completed" if compare["completed"] else f"NOT completed (exit {compare['exit_code']})"
            print(f"fedmmkt compare --preset smoke: {compare['wall_s']:.1f} s wall, {state}")
            for variant, walls in compare["variant_wall_s"].items():
                print(f"  {variant:12s} {', '.join(f'{w:.1f}' for w in walls)} s")
    result["cpus"] = os.cpu_count()
    write_result("e2e", result, args.quick)
    return result


if __name__ == "__main__":
    main()
