"""Do more faithful or more realistic synthetic images teach clients the classes they lack? (issue #16)

`experiments.transfer` found that on the development world an image client learns little about a
class it lacks from the toy T2I model's images of it (0.149 global-test accuracy on those classes),
and that perfect labels add only 1.9 points: the images, not the votes, limit the image gain. This
measures the sampler's one knob that trades class fidelity against realism, the classifier-free
guidance scale: for each scale, the pre-trained server model's synthetic pool at the run's size and
seed is scored by the held-out judge (agreement with the prompt overall and on the misdrawn
classes; domain FID against real reference images), and every image client, converged on its
private data once, trains `--rounds` rounds with that pool under the prompt's labels, as in
`experiments.transfer`. Reported per scale: the pool's quality and the clients' global-test accuracy
on the classes they hold and lack. A control replaces the generated pool by as many *real* images
(the server's held-out reference split, class-balanced, true labels): what a perfect generator would
give under the same client recipe, so that the recipe's own limit and the generator's are told apart.
Development world (default seed 100), never a reported seed.

    python -m experiments.fidelity --guidance-scales 1.5,3,5,8 --out docs/experiments
    python -m experiments.fidelity --quick
"""

from __future__ import annotations

import numpy as np

from experiments.common import base_config, hard_label_targets, parser, pretrained_pool, write_outputs
from experiments.transfer import after_synthetic, converged_image_clients, scored
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.generative.judge import judge_predict
from fedmmkt_strategy.generative.quality import score_t2i
from fedmmkt_strategy.generative.server_models import load_server_models, misdrawn_prompt_classes, pretrain_spec
from fedmmkt_strategy.reporting.progress import say
from worlds import splits
from worlds.modality import to_model_input


def prompt_agreement_by_group(judged: np.ndarray, prompted: np.ndarray, misdrawn: np.ndarray) -> dict[str, float]:
    """Share of images the judge assigns to their prompt's class: on the classes the pre-trained
    model draws wrongly (`misdrawn`), on the others, and overall (NaN for an empty group)."""
    judged, prompted = np.asarray(judged), np.asarray(prompted)
    agree, in_misdrawn = judged == prompted, np.isin(prompted, misdrawn)

    def share(mask: np.ndarray) -> float:
        return float(agree[mask].mean()) if mask.any() else float("nan")

    return {"all": share(np.ones_like(agree)), "misdrawn": share(in_misdrawn), "clean": share(~in_misdrawn)}


def balanced_real_images(config: RunConfig, per_class: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` images of every class in the server's held-out reference split (real
    images the T2I model never trained on) and their true labels: a pool a perfect generator could give."""
    columns = splits.split_columns(splits.REFERENCE, pretrain_spec(config).domain)
    labels = np.asarray(columns["label"])
    available = int(np.bincount(labels, minlength=num_classes).min())
    if per_class > available:
        raise ValueError(
            f"--synthetic-size: the real control needs {per_class} reference images per class, "
            f"the reference split holds {available}; use at most {available * num_classes}"
        )
    rows = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)])
    return np.asarray(columns["image"])[rows], labels[rows]


def client_means(per_client: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean accuracy over the clients on the classes they hold and on those they lack."""
    return {f"mean_{group}": float(np.nanmean([r[group] for r in per_client.values()])) for group in ("held", "lacked")}


def parse_scales(text: str) -> list[float]:
    """``"1.5,3,5"`` -> [1.5, 3.0, 5.0]; each scale must be >= 1 (1 is unguided sampling)."""
    scales = [float(part) for part in text.split(",") if part.strip()]
    if not scales or min(scales) < 1:
        raise ValueError(f"--guidance-scales: give comma-separated scales >= 1, got {text!r}")
    return scales


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(seed=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--guidance-scales", default="1.5,3,5,8", help="comma-separated classifier-free guidance scales")
    p.add_argument("--synthetic-size", type=int, default=0, help="pool size (default: the run config's)")
    args = p.parse_args(argv)
    scales = parse_scales(args.guidance_scales)
    base = base_config(args, {"synthetic-size": args.synthetic_size} if args.synthetic_size else None)
    config = RunConfig.from_run_config(base)
    world, models = config.world(), load_server_models(config)
    misdrawn = misdrawn_prompt_classes(config)
    clients = converged_image_clients(config, world)
    results: dict = {
        "seed": config.seed,
        "converged": {c.name: scored(c.model, c.test_x, c.test_y, c.held) for c in clients},
        "scales": {},
    }
    for scale in scales:
        scaled = RunConfig.from_run_config({**base, "guidance-scale": scale})
        pool = pretrained_pool(scaled, models, world.num_classes)
        prompted = np.asarray(pool.classes)
        quality = score_t2i(models.judge, models.reference_features, pool.images, prompted)
        agreement = prompt_agreement_by_group(judge_predict(models.judge, pool.images), prompted, misdrawn)
        targets = hard_label_targets(to_model_input("image", pool.images), prompted, scaled, world.num_classes)
        per_client = {c.name: after_synthetic(c, targets, args.rounds, scaled) for c in clients}
        entry = {
            "prompt_agreement": agreement,
            "domain_fid": quality["fid"],
            "clients": per_client,
            **client_means(per_client),
        }
        results["scales"][str(scale)] = entry
        say(
            f"guidance {scale}: agreement {agreement['all']:.3f} (misdrawn {agreement['misdrawn']:.3f}), "
            f"FID {quality['fid']:.1f}, held {entry['mean_held']:.3f}, lacked {entry['mean_lacked']:.3f}"
        )
    images, labels = balanced_real_images(config, config.synthetic_size // world.num_classes, world.num_classes)
    targets = hard_label_targets(to_model_input("image", images), labels, config, world.num_classes)
    per_client = {c.name: after_synthetic(c, targets, args.rounds, config) for c in clients}
    results["real_control"] = {
        "images": len(labels),
        "clients": per_client,
        **client_means(per_client),
    }
    real = results["real_control"]
    say(f"real images instead: held {real['mean_held']:.3f}, lacked {real['mean_lacked']:.3f}")
    results["mean_held_converged"] = float(np.nanmean([r["held"] for r in results["converged"].values()]))

    def plot(fig):
        rows = results["scales"]
        xs = [float(s) for s in rows]
        ax = fig.add_subplot(1, 2, 1)
        ax.plot(xs, [r["prompt_agreement"]["all"] for r in rows.values()], "o-", label="judge = prompt, all")
        ax.plot(xs, [r["prompt_agreement"]["misdrawn"] for r in rows.values()], "o--", label="judge = prompt, misdrawn")
        ax.plot(xs, [r["mean_lacked"] for r in rows.values()], "s-", label="client acc, lacked classes")
        ax.plot(xs, [r["mean_held"] for r in rows.values()], "s--", label="client acc, held classes")
        ax.axhline(results["mean_held_converged"], color="grey", lw=0.8, label="held, before synthetic")
        ax.axhline(results["real_control"]["mean_lacked"], color="black", ls=":", label="lacked, real images instead")
        ax.set_xlabel("guidance scale")
        ax.set_ylim(0, 1)
        ax.set_title("class fidelity of the pool and what clients learn from it")
        ax.legend(fontsize=8)
        ax = fig.add_subplot(1, 2, 2)
        ax.plot(xs, [r["domain_fid"] for r in rows.values()], "o-")
        ax.set_xlabel("guidance scale")
        ax.set_ylabel("domain FID of the pool (judge features)")
        ax.set_title("realism of the pool (lower is closer to real)")

    write_outputs(args, "fidelity", results, plot)
    return results


if __name__ == "__main__":
    main()
