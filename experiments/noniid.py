"""Experiment 4: extreme non-IID. Dirichlet alpha 5.0, 0.5, 0.05: fedmmkt versus local training.

Per alpha: each client's gain (fedmmkt minus local global-test accuracy, same partition), the
LabVote discard rate per round, and the alignment between modalities (class-level image->text
top-1 retrieval of the fused vectors, and of single clients' projections before fusion).

    python -m experiments.noniid               # 3 x (fedmmkt ~3.7 min + local ~1.5 min), about 16 min
    python -m experiments.noniid --quick
"""

from __future__ import annotations

import numpy as np

from experiments.common import (
    Recorder,
    alignment,
    base_config,
    final_accuracy,
    parser,
    run_variant,
    server_series,
    write_outputs,
)
from fedmmkt_strategy.reporting.progress import track

ALPHAS = (5.0, 0.5, 0.05)
#: --quick runs the two extremes only: every code path, a third fewer runs than the full list.
QUICK_ALPHAS = (5.0, 0.05)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    base = base_config(args, {"num-server-rounds": args.rounds})
    alphas = QUICK_ALPHAS if args.quick else ALPHAS
    results: dict = {"alphas": list(alphas), "runs": {}}
    for alpha in track(alphas, "noniid", "alpha", every=0):
        local = run_variant(args, "noniid", f"local+dirichlet-alpha={alpha}", base, 8)
        with Recorder().recording() as rec:
            fed = run_variant(args, "noniid", f"fedmmkt+dirichlet-alpha={alpha}", base, 8)
        acc_local, acc_fed = final_accuracy(local.metrics), final_accuracy(fed.metrics)
        gains = {f"{m}:{a}@{n}": acc_fed[n][2] - acc_local[n][2] for n, (m, a, _) in acc_fed.items() if n in acc_local}
        aligned = [alignment(r) for r in rec.fusion]
        results["runs"][str(alpha)] = {
            "run_dirs": [str(local.run_dir), str(fed.run_dir)],
            "client_gain": gains,
            "mean_gain": {
                m: float(np.mean([g for k, g in gains.items() if k.startswith(m + ":")])) for m in ("image", "text")
            },
            "discard_rate": [v for _, v in server_series(fed.metrics, "discard_rate")],
            "vote_depicted_agreement": [v for _, v in server_series(fed.metrics, "vote_depicted_agreement")],
            "alignment_after": [a["after"].get("class_top1", float("nan")) for a in aligned],
            "alignment_before": [a["before_mean"]["class_top1"] for a in aligned],
        }

    def plot(fig):
        runs = results["runs"]
        ax = fig.add_subplot(1, 3, 1)
        for i, run in enumerate(runs.values()):
            gains = list(run["client_gain"].values())
            ax.scatter([i] * len(gains), gains, alpha=0.6)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(runs)), [f"alpha {a}" for a in runs])
        ax.set_title("client gain: fedmmkt - local (global test acc)", fontsize=9)
        ax.grid(alpha=0.3)
        for j, (key, title) in enumerate((("discard_rate", "LabVote discard rate"), ("alignment_after", "alignment"))):
            ax = fig.add_subplot(1, 3, j + 2)
            for alpha, run in runs.items():
                (line,) = ax.plot(range(1, len(run[key]) + 1), run[key], marker="o", label=f"alpha {alpha}")
                if key == "alignment_after":
                    ax.plot(range(1, len(run[key]) + 1), run["alignment_before"], ls=":", color=line.get_color())
            ax.set_title(title + (" (image->text class top-1; dotted: before fusion)" if j else ""), fontsize=9)
            ax.set_xlabel("round")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)

    write_outputs(args, "noniid", results, plot)
    print("finding:")
    for alpha, run in results["runs"].items():
        g = run["mean_gain"]
        print(
            f"  alpha {alpha}: mean gain image {g['image']:+.3f} text {g['text']:+.3f}; discard "
            f"{np.mean(run['discard_rate']):.2f}; alignment after fusion {run['alignment_after'][-1]:.3f} "
            f"(before {run['alignment_before'][-1]:.3f})"
        )
    return results


if __name__ == "__main__":
    main()
