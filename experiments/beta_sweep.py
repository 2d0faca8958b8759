"""Experiment 2: LabVote's discard rate and voted-label accuracy versus beta and the initial T2I quality.

For each T2I quality level (``pretrain-t2i-steps``; README: 600 steps GenAcc 0.25, 1100 0.35,
1500 0.52) one fedmmkt run records what LabVote sees each round (as dump_votes.py); the vote is then
replayed offline for beta = 0.2 ... 0.8: discard rate, and accuracy of the voted labels against
the judge's reading of each image (what it depicts; prompt accuracy is the baseline to beat).

Cost: a new level pre-trains only its T2I denoiser (judge, VAE and captioner are copied from the
default 1100-step cache): about 0.53 s per step on 2 cores, so 600 steps ~6 min and 1500 ~14 min,
once (cached afterwards). Each level's run (3 rounds, 8 clients) takes ~3 min.

    python -m experiments.beta_sweep                              # levels 600,1100: ~6 + 2 x 3 min
    python -m experiments.beta_sweep --t2i-steps 600,1100,1500    # + ~14 min pre-training, +3 min
    python -m experiments.beta_sweep --quick
"""

from __future__ import annotations

import numpy as np

from experiments.common import (
    Recorder,
    base_config,
    final_accuracy,
    parser,
    reuse_pretrain_phases,
    run_variant,
    server_series,
    write_outputs,
)
from fedmmkt_strategy.reporting.progress import track
from fedmmkt_strategy.steps.labvote import labvote

BETAS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def sweep(votes) -> dict[str, list[float]]:
    """Mean over recorded rounds of discard rate and voted accuracy (vs the judge) per beta."""
    out = {"discard_rate": [], "voted_acc": [], "prompt_acc": []}
    for beta in BETAS:
        discard, acc, prompt = [], [], []
        for v in votes:
            result = labvote(v.probs, v.entropy, beta)
            discard.append(1 - result.kept.mean())
            kept = result.kept
            acc.append(float((result.labels[kept] == v.depicted[kept]).mean()) if kept.any() else np.nan)
            prompt.append(float((v.prompt[kept] == v.depicted[kept]).mean()) if kept.any() else np.nan)
        out["discard_rate"].append(float(np.mean(discard)))
        out["voted_acc"].append(float(np.nanmean(acc)) if not np.isnan(acc).all() else float("nan"))
        out["prompt_acc"].append(float(np.nanmean(prompt)) if not np.isnan(prompt).all() else float("nan"))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--t2i-steps", default="600,1100", help="comma-separated pretrain-t2i-steps levels")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    base = base_config(args, {"num-server-rounds": args.rounds})
    levels = [10, 12] if args.quick else [int(s) for s in args.t2i_steps.split(",")]
    results: dict = {"betas": list(BETAS), "levels": {}}
    for steps in track(levels, "beta_sweep", "level", every=0):
        config = {**base, "pretrain-t2i-steps": steps}
        reuse_pretrain_phases(base, config)
        with Recorder().recording() as rec:
            run = run_variant(args, "beta_sweep", f"fedmmkt+pretrain-t2i-steps={steps}", config, 8)
        gen = server_series(run.metrics, "gen_acc")
        accs = final_accuracy(run.metrics)
        results["levels"][str(steps)] = {
            "run_dir": str(run.run_dir),
            "gen_acc_initial": gen[0][1] if gen else float("nan"),
            "gen_acc_final": gen[-1][1] if gen else float("nan"),
            "client_acc_final_mean": float(np.mean([a for _, _, a in accs.values()])),
            "discard_rate_per_round": [v for _, v in server_series(run.metrics, "discard_rate")],
            "sweep": sweep(rec.votes),
        }

    def plot(fig):
        axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
        for steps, level in results["levels"].items():
            label = f"{steps} steps (GenAcc0 {level['gen_acc_initial']:.2f})"
            axes[0].plot(BETAS, level["sweep"]["discard_rate"], marker="o", label=label)
            (line,) = axes[1].plot(BETAS, level["sweep"]["voted_acc"], marker="o", label=label)
            axes[1].plot(BETAS, level["sweep"]["prompt_acc"], ls=":", color=line.get_color())
        for ax, title in zip(axes[:2], ("discard rate", "voted-label accuracy vs judge (dotted: prompt)")):
            ax.set_xlabel("beta")
            ax.set_title(title, fontsize=9)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        xs = [lv["gen_acc_initial"] for lv in results["levels"].values()]
        i = BETAS.index(0.5)
        axes[2].plot(xs, [lv["sweep"]["discard_rate"][i] for lv in results["levels"].values()], "o-", label="discard")
        axes[2].plot(xs, [lv["sweep"]["voted_acc"][i] for lv in results["levels"].values()], "s-", label="voted acc")
        axes[2].plot(
            xs,
            [lv["gen_acc_final"] - lv["gen_acc_initial"] for lv in results["levels"].values()],
            "^-",
            label="GenAcc gain",
        )
        axes[2].set_xlabel("initial GenAcc")
        axes[2].set_title("beta = 0.5 versus initial T2I quality", fontsize=9)
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize=7)

    write_outputs(args, "beta_sweep", results, plot)
    print("finding (beta = 0.5):")
    i = BETAS.index(0.5)
    for steps, lv in results["levels"].items():
        s = lv["sweep"]
        print(
            f"  {steps} steps: GenAcc {lv['gen_acc_initial']:.3f} -> {lv['gen_acc_final']:.3f}, discard "
            f"{s['discard_rate'][i]:.2f}, voted acc {s['voted_acc'][i]:.3f} (prompt {s['prompt_acc'][i]:.3f})"
        )
    return results


if __name__ == "__main__":
    main()
