"""Experiment 6: a domain the server's T2I model does not know. Hold classes out of the server's
public split entirely (``pretrain-holdout-classes``: the T2I model, VAE and captioner never see them,
not even in a wrong caption) and follow the per-class GenAcc of those classes over rounds, under
fedmmkt (client knowledge reaches the T2I update through voted labels) and self-ft (the server
fine-tunes on its own generations: no client knowledge), with the T2I model scored every round.

Cost: a new pre-training for the hold-out (its own cache key; the judge is copied from the default
cache): about 16 min once, then 2 runs x 5 rounds (~4.5 min each). About 25 min the first time.

    python -m experiments.unknown_classes                       # holds out classes 1,10,19
    python -m experiments.unknown_classes --holdout 1,10,19 --variants fedmmkt
    python -m experiments.unknown_classes --quick
"""

from __future__ import annotations

import numpy as np

from experiments.common import base_config, parser, reuse_pretrain_phases, run_variant, server_series, write_outputs
from fedmmkt_strategy.config import parse_class_list
from fedmmkt_strategy.generative.pretrain import JUDGE
from fedmmkt_strategy.reporting.progress import track
from worlds.domain import class_names


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--holdout", default="1,10,19", help="classes absent from the public split")
    p.add_argument("--variants", default="fedmmkt,self-ft")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    held = list(parse_class_list(args.holdout))
    default = base_config(args, {"num-server-rounds": args.rounds, "t2i-eval-every": 1})
    base = {**default, "pretrain-holdout-classes": args.holdout}
    reuse_pretrain_phases(default, base, phases=(JUDGE,))
    results: dict = {"holdout": held, "holdout_names": [class_names()[c] for c in held], "runs": {}}
    for variant in track(args.variants.split(","), "unknown_classes", "run", every=0):
        run = run_variant(args, "unknown_classes", variant, base, 8)
        per_class = server_series(run.metrics, "per_class_gen_acc")
        rounds = [r for r, _ in per_class]
        results["runs"][variant] = {
            "run_dir": str(run.run_dir),
            "rounds": rounds,
            "holdout_gen_acc": [float(np.mean([pc[c] for c in held])) for _, pc in per_class],
            "seen_gen_acc": [float(np.mean([a for c, a in enumerate(pc) if c not in held])) for _, pc in per_class],
            "holdout_per_class": {str(c): [pc[c] for _, pc in per_class] for c in held},
            "discard_rate": [v for _, v in server_series(run.metrics, "discard_rate")],
        }

    def plot(fig):
        ax = fig.add_subplot(1, 2, 1)
        for variant, run in results["runs"].items():
            (line,) = ax.plot(run["rounds"], run["holdout_gen_acc"], marker="o", label=f"{variant}: held-out classes")
            ax.plot(
                run["rounds"], run["seen_gen_acc"], ls=":", color=line.get_color(), label=f"{variant}: seen classes"
            )
        ax.set_xlabel("round (0 = pre-trained)")
        ax.set_ylabel("GenAcc (judge)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax = fig.add_subplot(1, 2, 2)
        for variant, run in results["runs"].items():
            for c, ys in run["holdout_per_class"].items():
                ax.plot(run["rounds"], ys, marker=".", label=f"{variant}: class {c}")
        ax.set_title("per held-out class", fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    write_outputs(args, "unknown_classes", results, plot)
    print(f"finding (held-out classes {held}: mean GenAcc per round; chance 1/24):")
    for variant, run in results["runs"].items():
        trace = " -> ".join(f"{v:.2f}" for v in run["holdout_gen_acc"])
        print(f"  {variant}: {trace} (seen classes {run['seen_gen_acc'][0]:.2f} -> {run['seen_gen_acc'][-1]:.2f})")
    return results


if __name__ == "__main__":
    main()
