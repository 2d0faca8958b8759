"""How good is the T2I model (and the captioner)? ALGORITHM.md, "Measuring the T2I model".

GenAcc is the share of class-prompted generations the judge assigns to the prompted class;
domain FID compares judge features of generated and held-out real images. Both are taken on
a fixed, seeded set of canonical class prompts, so numbers from different rounds compare.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from diffusers import StableDiffusionPipeline
from PIL import Image
from torch import nn

from fedmmkt_strategy.generative.judge import JudgeCNN, judge_features, judge_predict
from fedmmkt_strategy.generative.t2i import generate_images
from worlds import domain


def gen_acc(judge: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of images the judge classifies as their label (the prompted class)."""
    return float(np.mean(judge_predict(judge, images) == np.asarray(labels)))


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float]:
    """Accuracy within each class; NaN for a class with no sample."""
    out = []
    for c in range(num_classes):
        mask = labels == c
        out.append(float(np.mean(predictions[mask] == c)) if mask.any() else float("nan"))
    return out


def domain_fid(real_features: np.ndarray, gen_features: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets.

    ``|mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r^1/2 S_g S_r^1/2)^1/2)``: the symmetric form of
    the usual ``sqrtm(S_r S_g)`` trace, computed with two symmetric eigendecompositions, so it
    needs no scipy and stays real and stable for rank-deficient covariances (few samples).
    """
    real, gen = np.asarray(real_features, np.float64), np.asarray(gen_features, np.float64)
    mu_r, mu_g = real.mean(0), gen.mean(0)
    cov_r, cov_g = np.atleast_2d(np.cov(real, rowvar=False)), np.atleast_2d(np.cov(gen, rowvar=False))
    sqrt_r = _psd_sqrt(cov_r)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(sqrt_r @ cov_g @ sqrt_r), 0, None)).sum()
    value = np.sum((mu_r - mu_g) ** 2) + np.trace(cov_r) + np.trace(cov_g) - 2 * cross
    return float(max(value, 0.0))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def class_prompt_set(
    per_class: int, num_classes: int = domain.NUM_CLASSES, class_prompt: Callable[[int], str] = domain.class_prompt
) -> tuple[list[str], np.ndarray]:
    """The fixed evaluation prompts: each class's canonical prompt `per_class` times (toy world by default)."""
    labels = domain.balanced_labels(per_class, num_classes)
    return [class_prompt(int(c)) for c in labels], labels


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, W, 3] resized (bicubic) to [N, size, size, 3]; unchanged when already that size.

    Real Stable Diffusion renders at 512 px while clients and the judge read the world's
    ``image-size``, so generated images are brought to it before they are judged or sent.
    """
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BICUBIC)) for x in images])


def evaluate_t2i(
    pipe: StableDiffusionPipeline,
    judge: JudgeCNN,
    reference_features: np.ndarray,
    *,
    per_class: int = 8,
    seed: int = 0,
    steps: int = 25,
    guidance: float = 3.0,
    batch_size: int = 64,
    grid_path: str | Path | None = None,
    progress: bool = False,
    prompt_set: tuple[list[str], np.ndarray] | None = None,
    image_size: int | None = None,
    keep_images: bool = False,
) -> dict[str, float | list[float]]:
    """GenAcc, domain FID and per-class accuracy of `pipe` on the canonical class prompts.

    `prompt_set` (prompts, labels) defaults to the toy world's; with `image_size`, generations
    are resized to the judge's input size first. Returns ``{"gen_acc", "fid", "per_class_acc",
    "num_images"}``, plus ``"images"`` (as generated) and ``"prompts"`` with `keep_images` (for
    CLIP score and standard FID); with `grid_path`, also writes a sample grid (one row per class).
    """
    prompts, labels = prompt_set or class_prompt_set(per_class)
    images = generate_images(
        pipe,
        prompts,
        seed=seed,
        num_inference_steps=steps,
        guidance_scale=guidance,
        batch_size=batch_size,
        progress=progress,
    )
    metrics = score_t2i(judge, reference_features, images, labels, grid_path=grid_path, image_size=image_size)
    return {**metrics, "images": images, "prompts": prompts} if keep_images else metrics


def score_t2i(
    judge: JudgeCNN,
    reference_features: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    grid_path: str | Path | None = None,
    image_size: int | None = None,
) -> dict[str, float | list[float]]:
    """GenAcc, domain FID and per-class accuracy of generated `images` of class `labels` (resized to
    `image_size` for the judge first, when given), and their sample grid at `grid_path`."""
    judged = resize_images(images, image_size) if image_size else images
    predictions = judge_predict(judge, judged)
    if grid_path is not None:
        save_sample_grid(judged, labels, grid_path)
    return {
        "gen_acc": float(np.mean(predictions == labels)),
        "fid": domain_fid(reference_features, judge_features(judge, judged)),
        "per_class_acc": per_class_accuracy(predictions, labels, judge.num_classes),
        "num_images": len(images),
    }


def save_sample_grid(
    images: np.ndarray, labels: np.ndarray, path: str | Path, max_per_row: int = 12, pad: int = 2
) -> Path:
    """Write a PNG grid with one row per class (rows in label order), for eyeballing samples."""
    classes = np.unique(labels)
    h, w = images.shape[1:3]
    columns = min(max_per_row, max(int(np.sum(labels == c)) for c in classes))
    canvas = np.full((len(classes) * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for row, c in enumerate(classes):
        for col, image in enumerate(images[labels == c][:columns]):
            y, x = pad + row * (h + pad), pad + col * (w + pad)
            canvas[y : y + h, x : x + w] = image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path


def caption_attribute_accuracy(captions: Sequence[str], labels: np.ndarray) -> dict[str, float]:
    """How often captions name each class attribute of their image correctly.

    A caption counts as right for an attribute when it names the true value (any synonym) and
    no other value (a colour word before "centre" describes the centre, not the petals); a
    caption that omits the attribute counts as wrong. ``"all"`` needs colour,
    count and shape right together.
    """
    tables = {"colour": domain.COLOUR_WORDS, "count": domain.COUNT_WORDS, "shape": domain.SHAPE_WORDS}
    hits = {name: [] for name in (*tables, "all")}
    for caption, label in zip(captions, labels, strict=True):
        tokens = caption.lower().replace(",", " ").split()
        # "a yellow centre" names the (nuisance) centre colour, not the petals'.
        words = {t for t, nxt in zip(tokens, [*tokens[1:], ""], strict=True) if nxt not in ("centre", "center")}
        cls = domain.CLASSES[int(label)]
        truth = {"colour": cls.colour, "count": cls.count, "shape": cls.shape}
        row = []
        for name, table in tables.items():
            named = {value for value, synonyms in table.items() if words & set(synonyms)}
            row.append(named == {truth[name]})
            hits[name].append(row[-1])
        hits["all"].append(all(row))
    return {name: float(np.mean(v)) if v else float("nan") for name, v in hits.items()}
