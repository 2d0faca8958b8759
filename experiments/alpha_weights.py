"""Experiment 3: the contrastive aggregation weights alpha, per round and client, and the effect of tau.

From each run's metrics.json: every client's mean alpha per round (``alpha_mean``), and per
modality the normalised entropy of the weights (``*_alpha_entropy``: 1 uniform, 0 one client takes
all) and the largest single weight (``*_alpha_max``). Collapse = entropy near 0 / max near 1.
Variants: fedmmkt with contrastive-tau 0.05, 0.1 (default), 0.5.

    python -m experiments.alpha_weights        # 3 runs x 5 rounds x 8 clients, about 12 min
    python -m experiments.alpha_weights --quick
"""

from __future__ import annotations

from experiments.common import base_config, parser, run_variant, server_series, write_outputs
from fedmmkt_strategy.reporting.progress import track

TAUS = (0.05, 0.1, 0.5)


def client_alphas(metrics: dict) -> dict[str, dict[str, list[float]]]:
    """modality -> "arch@node" -> alpha_mean per round."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in metrics["rounds"]:
        for c in r["clients"]:
            if "alpha_mean" in c:
                out.setdefault(c["modality"], {}).setdefault(f"{c['architecture']}@{c['node_id']}", []).append(
                    c["alpha_mean"]
                )
    return out


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    base = base_config(args, {"num-server-rounds": args.rounds})
    results: dict = {"taus": list(TAUS), "runs": {}}
    for tau in track(TAUS, "alpha_weights", "run", every=0):
        run = run_variant(args, "alpha_weights", f"fedmmkt+contrastive-tau={tau}", base, 8)
        results["runs"][str(tau)] = {
            "run_dir": str(run.run_dir),
            "client_alpha_mean": client_alphas(run.metrics),
            **{
                f"{m}_{k}": [v for _, v in server_series(run.metrics, f"{m}_{k}")]
                for m in ("image", "text")
                for k in ("alpha_entropy", "alpha_max", "alpha_max_mean")
            },
        }

    def plot(fig):
        default = results["runs"][str(0.1)]
        for i, modality in enumerate(("image", "text")):
            ax = fig.add_subplot(1, 3, i + 1)
            for client, ys in default["client_alpha_mean"].get(modality, {}).items():
                ax.plot(range(1, len(ys) + 1), ys, marker="o", label=client)
            ax.set_title(f"{modality}: mean alpha per client (tau 0.1)", fontsize=9)
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ax = fig.add_subplot(1, 3, 3)
        for tau, run in results["runs"].items():
            for modality, ls in (("image", "-"), ("text", "--")):
                ys = run[f"{modality}_alpha_entropy"]
                ax.plot(range(1, len(ys) + 1), ys, ls=ls, marker=".", label=f"{modality}, tau {tau}")
        ax.set_title("normalised entropy of alpha (1 uniform, 0 collapse)", fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    write_outputs(args, "alpha_weights", results, plot)
    print("finding (last round):")
    for tau, run in results["runs"].items():
        cells = [
            f"{m}: entropy {run[f'{m}_alpha_entropy'][-1]:.3f}, max {run[f'{m}_alpha_max'][-1]:.3f}"
            for m in ("image", "text")
            if run[f"{m}_alpha_entropy"]
        ]
        print(f"  tau {tau}: " + "; ".join(cells))
        for m, clients in run["client_alpha_mean"].items():
            top = max(clients.items(), key=lambda kv: kv[1][-1])
            print(f"    {m}: largest mean alpha {top[1][-1]:.3f} ({top[0]}), uniform {1 / len(clients):.3f}")
    return results


if __name__ == "__main__":
    main()
