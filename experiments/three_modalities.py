"""Experiment 5: more than two modalities. fedmmkt with image, text and sensor clients, set-attention
over the other modalities versus averaging them into one token, versus image and text alone.

Variants (same image/text clients and partitions in all; sensor clients added in the 3-modality runs):
``2 modalities`` (image:cnn,image:cnn-small,text:gru,text:bow), ``3 modalities attention`` and
``3 modalities mean`` (+ sensor:mlp,sensor:mlp), and ``local`` on the 3-modality layout (the gains'
reference). Reports final global-test accuracy per modality, GenAcc and image->sensor alignment.

    python -m experiments.three_modalities     # 4 runs x 5 rounds, about 12 min
    python -m experiments.three_modalities --quick
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

TWO = "image:cnn,image:cnn-small,text:gru,text:bow"
THREE = TWO + ",sensor:mlp,sensor:mlp"
QUICK_TWO, QUICK_THREE = "image:cnn-small,text:bow", "image:cnn-small,text:bow,sensor:mlp-small"
VARIANTS = {
    "local, 3 modalities": ("local", THREE, "attention"),
    "2 modalities": ("fedmmkt", TWO, "attention"),
    "3 modalities, attention": ("fedmmkt", THREE, "attention"),
    "3 modalities, mean": ("fedmmkt", THREE, "mean"),
}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    base = base_config(args, {"num-server-rounds": args.rounds})
    results: dict = {"runs": {}}
    for name, (strategy, layout, others) in track(VARIANTS.items(), "three_modalities", "run", every=0):
        if args.quick:
            layout = QUICK_THREE if layout == THREE else QUICK_TWO
        extra = {"client-layout": layout, "fusion-other-modalities": others}
        with Recorder().recording() as rec:
            run = run_variant(
                args,
                "three_modalities",
                f"{strategy}+fusion-other-modalities='{others}'",
                base,
                len(layout.split(",")),
                **extra,
            )
        acc = final_accuracy(run.metrics)
        gen = server_series(run.metrics, "gen_acc")
        results["runs"][name] = {
            "layout": layout,
            "run_dir": str(run.run_dir),
            "acc": {
                m: float(np.mean([a for mm, _, a in acc.values() if mm == m]))
                for m in ("image", "text", "sensor")
                if any(mm == m for mm, _, _ in acc.values())
            },
            "gen_acc_final": gen[-1][1] if gen else float("nan"),
            "image_sensor_alignment": [
                alignment(r, "image", "sensor")["after"].get("class_top1", float("nan")) for r in rec.fusion
            ],
            "image_text_alignment": [alignment(r)["after"].get("class_top1", float("nan")) for r in rec.fusion],
        }

    def plot(fig):
        ax = fig.add_subplot(1, 2, 1)
        names = list(results["runs"])
        for j, m in enumerate(("image", "text", "sensor")):
            ys = [results["runs"][n]["acc"].get(m, np.nan) for n in names]
            ax.bar(np.arange(len(names)) + 0.27 * (j - 1), ys, width=0.27, label=m)
        ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
        ax.set_ylabel("final global-test accuracy (mean over clients)")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        ax = fig.add_subplot(1, 2, 2)
        for n, run in results["runs"].items():
            if run["image_sensor_alignment"]:
                ax.plot(
                    range(1, len(run["image_sensor_alignment"]) + 1),
                    run["image_sensor_alignment"],
                    marker="o",
                    label=f"{n}: image->sensor",
                )
            if run["image_text_alignment"]:
                ax.plot(
                    range(1, len(run["image_text_alignment"]) + 1),
                    run["image_text_alignment"],
                    ls=":",
                    marker=".",
                    label=f"{n}: image->text",
                )
        ax.set_xlabel("round")
        ax.set_ylabel("fused class-level top-1 retrieval")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    write_outputs(args, "three_modalities", results, plot)
    print("finding (final global-test accuracy per modality, GenAcc):")
    for name, run in results["runs"].items():
        accs = ", ".join(f"{m} {a:.3f}" for m, a in run["acc"].items())
        print(f"  {name:26s} {accs}; GenAcc {run['gen_acc_final']:.3f}")
    return results


if __name__ == "__main__":
    main()
