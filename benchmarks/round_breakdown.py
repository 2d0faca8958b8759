"""Where a round's time goes, from a run's metrics.json (every fedmmkt run records step timings).

    python benchmarks/round_breakdown.py ~/fedmmkt-results/<run>/

Server steps (synthesis incl. captioning, client query, LabVote, fusion, T2I update, T2I
evaluation) are timed around their calls; the distill and evaluate phases are the wall time of
Flower's send-and-receive (client work plus Flower overhead); the rest of a round is Flower's
own overhead (sampling, message building, result writing).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STEPS = [
    ("synthesis + captioning", "time_synthesis_s"),
    ("client query (query.infer)", "time_query_s"),
    ("LabVote", "time_labvote_s"),
    ("MultiRepFusion", "time_fusion_s"),
    ("T2I update", "time_t2i_update_s"),
    ("client distillation phase", "time_distill_phase_s"),
    ("client evaluation phase", "time_evaluate_phase_s"),
    ("T2I evaluation (GenAcc, FID)", "time_t2i_eval_s"),
]


def breakdown(metrics: dict) -> list[tuple[str, float, float]]:
    """(step, mean seconds per round, share of the round) over rounds >= 1."""
    rounds = [r["server"] for r in metrics["rounds"] if r["round"] >= 1 and "time_round_s" in r["server"]]
    total = sum(r["time_round_s"] for r in rounds) / len(rounds)
    rows = []
    for name, key in STEPS:
        mean = sum(r.get(key, 0.0) for r in rounds) / len(rounds)
        rows.append((name, mean, mean / total))
    rest = total - sum(mean for _, mean, _ in rows)
    rows.append(("other (sampling, messages, results)", rest, rest / total))
    rows.append(("round total", total, 1.0))
    return rows


def main() -> None:
    metrics = json.loads((Path(sys.argv[1]) / "metrics.json").read_text())
    rows = breakdown(metrics)
    print(f"{'step':40s} {'s/round':>9s} {'share':>7s}")
    for name, mean, share in rows:
        print(f"{name:40s} {mean:9.2f} {100 * share:6.1f}%")
    vote_fusion = sum(share for name, _, share in rows if name in ("LabVote", "MultiRepFusion"))
    print(f"LabVote + fusion: {100 * vote_fusion:.2f} % of a round (target <= 5 %)")


if __name__ == "__main__":
    main()
