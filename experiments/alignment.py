"""Experiment 1: do the projection heads and cross-attention align heterogeneous clients?

Image clients of different widths (cnn d=128, vit d=96, resnet d=256, cnn-small d=64) and text
clients project into one fusion space. Per round we measure image->text top-1 retrieval over the
kept synthetic pool: between every pair of single clients' projected embeddings (before fusion)
and between the fused image and text vectors (after cross-attention). Chance: 1/M per instance,
about 1/24 per class.

    python -m experiments.alignment            # default: 5 rounds, 8 clients, about 5 min
    python -m experiments.alignment --quick
"""

from __future__ import annotations

import numpy as np

from experiments.common import Recorder, alignment, base_config, parser, run_variant, write_outputs

LAYOUT = "image:cnn,image:vit,image:resnet,image:cnn-small,text:gru,text:transformer,text:gru,text:bow"


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    base = base_config(args, {"num-server-rounds": args.rounds})
    layout = "image:cnn,image:vit,text:bow,text:gru" if args.quick else LAYOUT
    with Recorder().recording() as rec:
        run = run_variant(args, "alignment", "fedmmkt", base, 8, **{"client-layout": layout})
    per_round = [alignment(r) for r in rec.fusion]
    archs = sorted({a.split("->")[0] for r in per_round for a in r["before"]})
    by_arch = {
        a: [
            float(np.mean([v["class_top1"] for k, v in r["before"].items() if k.startswith(a + "->")]))
            for r in per_round
        ]
        for a in archs
    }
    results = {"layout": layout, "run_dir": str(run.run_dir), "rounds": per_round, "class_top1_by_image_arch": by_arch}

    def plot(fig):
        rounds = [r["round"] for r in per_round]
        for i, metric in enumerate(("class_top1", "instance_top1")):
            ax = fig.add_subplot(1, 2, i + 1)
            if metric == "class_top1":
                for arch, ys in by_arch.items():
                    ax.plot(rounds, ys, marker=".", alpha=0.6, label=f"before: {arch} -> text clients")
            ax.plot(rounds, [r["before_mean"][metric] for r in per_round], "k--", marker="o", label="before (mean)")
            ax.plot(rounds, [r["after"].get(metric, np.nan) for r in per_round], "r-", marker="o", label="after fusion")
            ax.set_xlabel("round")
            ax.set_ylabel(f"image->text {metric.replace('_', ' ')}")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)

    write_outputs(args, "alignment", results, plot)
    for r in (per_round[0], per_round[-1]):
        after = r["after"].get("class_top1", float("nan"))
        print(f"  round {r['round']}: before fusion {r['before_mean']['class_top1']:.3f}, after {after:.3f}")
    for arch, ys in by_arch.items():
        print(f"  {arch:10s} -> text clients: {ys[0]:.3f} -> {ys[-1]:.3f}")
    return results


if __name__ == "__main__":
    main()
