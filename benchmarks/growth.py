"""Growth: time per round as clients grow (4 -> 16 -> 64) and as synthetic samples grow
(256 -> 1024 -> 4096), with the fitted log-log exponents, overall and per phase (issue 7, item 5).

    python benchmarks/growth.py            # full sweep: about 10 min on 2 CPU cores (see SIZES below)
    python benchmarks/growth.py --quick    # clients 2 -> 4, samples 24 -> 48, micro sizes: a smoke check

Every point is a whole federated run of `fedmmkt` in this process (`run_inprocess`: the same
strategy and ClientApp code as `flwr run`, without Ray, clients one after another, so client
time adds up as on a single simulation worker). The figure is the time of round 2, the first
round in the steady state (clients warmed up, pool cached on the clients, 25 % of it
regenerated), with the server's per-phase timings from the run's metrics.json (the phases of
`round_breakdown.py`). Exponents: least-squares slope of log(time) on log(size), time ~ size^a.

Sizes of the full run (all other keys: the pyproject.toml defaults):
- both sweeps: ``client-layout = "image:cnn-small,text:bow"`` (repeated over the nodes),
  ``t2i-eval-every = 0`` (no GenAcc/FID in round 2; round 1 still scores the starting model,
  with ``t2i-eval-per-class = 1``), ``test-per-class = 5``, ``node-settle = 0``, 2 rounds,
  ``checkpoint = false``, ``labvote-beta = 1`` (every vote counts, so fusion, T2I update and
  distillation run on the whole pool however little the tiny clients have learned: the cost
  measured is the full-size one, not one that shrinks with the discard rate);
  each client holds 100 private samples (``pool-size`` = 100 x clients of the modality), so
  adding clients adds devices with their own data rather than splitting a fixed pool;
- clients sweep: 4, 16, 64 clients, ``synthetic-size = 96``, ``sampling-steps = 10``;
- samples sweep: 4 clients, ``synthetic-size`` 256, 1024, 4096, ``sampling-steps = 5``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import loglog_exponent, parse_overrides, peak_rss_gb, project_defaults, write_result
from round_breakdown import STEPS

from fedmmkt_strategy.config import load_preset
from fedmmkt_strategy.reporting.progress import say, track
from fedmmkt_strategy.runs.inprocess import run_inprocess

PHASE_KEYS = [key for _, key in STEPS] + ["time_round_s"]
#: The run config every run shares, and the two size sets (full, `--quick`): presets/bench-growth.toml.
SIZES = load_preset("bench-growth")
COMMON, FULL, QUICK = SIZES["common"], SIZES["full"], SIZES["quick"]


def one_run(run_config: dict[str, Any], clients: int, results_dir: Path, name: str) -> dict[str, Any]:
    """One federated run; round 2's phase times (and round 1's round time) from its metrics.json."""
    config = {**run_config, "results-dir": str(results_dir), "run-name": name}
    start = time.perf_counter()
    run_dir = run_inprocess(config, clients)
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rounds = {r["round"]: r["server"] for r in metrics["rounds"]}
    last = rounds[max(rounds)]
    phases = {key: float(last.get(key, 0.0)) for key in PHASE_KEYS}
    phases["time_other_s"] = phases["time_round_s"] - sum(phases[k] for k in PHASE_KEYS if k != "time_round_s")
    return {
        "clients": clients,
        "synthetic_size": config["synthetic-size"],
        "round": max(rounds),
        "phases_s": phases,
        "round1_s": float(rounds.get(1, {}).get("time_round_s", float("nan"))),
        "run_wall_s": wall,
        "peak_rss_gb": peak_rss_gb(),
    }


def sweep(
    points: list[int], axis: str, base: dict[str, Any], per_client: int, clients_fixed: int, tmp: Path
) -> dict[str, Any]:
    """Runs over `points` of `axis` ("clients" or "samples"); per-point figures and exponents."""
    runs = []
    for value in track(points, f"growth {axis}", "run", every=0):
        clients = value if axis == "clients" else clients_fixed
        config = {**base, "pool-size": per_client * ((clients + 1) // 2)}
        if axis == "samples":
            config["synthetic-size"] = value
        say(f"--- {axis} = {value}: {clients} clients, {config['synthetic-size']} synthetic samples")
        runs.append(one_run(config, clients, tmp, f"{axis}-{value}"))
        say(f"    round 2: {runs[-1]['phases_s']['time_round_s']:.2f} s")
    x = [float(r["clients"] if axis == "clients" else r["synthetic_size"]) for r in runs]
    exponents = {key: loglog_exponent(x, [r["phases_s"][key] for r in runs]) for key in runs[0]["phases_s"]}
    return {"axis": axis, "points": points, "runs": runs, "exponents": exponents}


def report(result: dict[str, Any]) -> None:
    """A table per sweep: phase seconds of round 2 at each point, and the exponent."""
    names = dict((key, name) for name, key in STEPS) | {"time_other_s": "other", "time_round_s": "round total"}
    sweeps = [result[k] for k in ("clients_sweep", "samples_sweep") if k in result]
    for sw in sweeps:
        axis = sw["axis"]
        head = "".join(f"{axis[:7]}={p:<6d}"[:14].rjust(14) for p in sw["points"])
        print(f"\ntime per round (round 2) vs {axis}:")
        print(f"{'phase':32s}{head}{'exponent':>10s}")
        for key, name in names.items():
            cells = "".join(f"{r['phases_s'][key]:14.3f}" for r in sw["runs"])
            print(f"{name[:32]:32s}{cells}{sw['exponents'][key]:10.2f}")
    fits = ", ".join(f"time ~ {sw['axis']}^{sw['exponents']['time_round_s']:.2f}" for sw in sweeps)
    print(f"\n{fits} (round 2, whole round)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two micro points per sweep (smoke check)")
    parser.add_argument("--run-config", default="", help="run-config overrides for every run, 'key=value ...'")
    parser.add_argument("--only", choices=["clients", "samples"], help="run one sweep only")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    overrides = parse_overrides(args.run_config)
    base = {**project_defaults(), **COMMON, **sizes.get("extra", {}), **overrides}
    started = time.perf_counter()
    result: dict[str, Any] = {"sizes": {k: v for k, v in sizes.items()}, "common": COMMON, "overrides": overrides}
    with tempfile.TemporaryDirectory(prefix="fedmmkt-growth-") as tmp:
        for axis in ("clients", "samples"):
            if args.only and args.only != axis:
                continue
            sweep_base = {**base, **sizes[f"{axis}_sweep"], **overrides}
            result[f"{axis}_sweep"] = sweep(
                sizes[axis], axis, sweep_base, sizes["per_client"], sizes["samples_clients"], Path(tmp)
            )
    result["total_wall_s"] = time.perf_counter() - started
    report(result)
    print(f"total {result['total_wall_s']:.0f} s")
    write_result("growth", result, args.quick)
    return result


if __name__ == "__main__":
    main()
