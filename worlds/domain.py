"""The toy multimodal domain: procedurally generated "flowers" with paired captions.

Each class is a combination of three visual attributes (petal colour, petal count, petal
shape); everything else in an image (centre colour, background, size, position, rotation,
sharpness jitter, pixel noise) is a nuisance factor that never decides the class. Captions
describe the same image in varied words. A configurable share of them is *partial*: it names
only some class attributes, or only nuisance attributes, so text is genuinely ambiguous.

Generation is seeded and vectorised numpy, rendered in chunks (one huge float64 batch is
several times slower), so ten thousand samples take about a second.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 38, 38),
    "yellow": (236, 204, 36),
    "blue": (46, 88, 222),
    "purple": (142, 58, 190),
}
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "yellow": ("yellow", "golden"),
    "blue": ("blue", "azure"),
    "purple": ("purple", "violet"),
}
COUNTS: tuple[int, ...] = (3, 5, 8)
COUNT_WORDS: dict[int, tuple[str, ...]] = {3: ("three", "3"), 5: ("five", "5"), 8: ("eight", "8")}
#: Petal-edge exponent: small is broad and rounded, large is thin and spiky.
SHAPES: dict[str, float] = {"round": 0.45, "pointed": 3.5}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "round": ("round", "rounded", "broad"),
    "pointed": ("pointed", "spiky", "narrow"),
}
CENTRES: dict[str, tuple[int, int, int]] = {
    "yellow": (240, 220, 60),
    "brown": (110, 70, 30),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grass": (70, 140, 60),
    "sky": (150, 195, 240),
    "soil": (95, 70, 50),
    "sand": (215, 195, 150),
}
SIZES: dict[str, float] = {"small": 0.30, "large": 0.42}
NOUNS: tuple[str, ...] = ("flower", "blossom", "bloom")


@dataclass(frozen=True)
class FlowerClass:
    """One class of the domain: the three attributes that define it, and its public name."""

    index: int
    colour: str
    count: int
    shape: str

    @property
    def name(self) -> str:
        return f"{self.shape} {self.colour} {self.count}-petal flower"


CLASSES: tuple[FlowerClass, ...] = tuple(
    FlowerClass(i, colour, count, shape)
    for i, (colour, count, shape) in enumerate(itertools.product(COLOURS, COUNTS, SHAPES))
)
NUM_CLASSES = len(CLASSES)


def class_names() -> list[str]:
    """Public class names, indexed by label."""
    return [c.name for c in CLASSES]


def class_index(colour: str, count: int, shape: str) -> int:
    """The label of the class with these attributes."""
    for c in CLASSES:
        if (c.colour, c.count, c.shape) == (colour, count, shape):
            return c.index
    raise KeyError(f"no class with colour={colour!r}, count={count}, shape={shape!r}")


def confusable_neighbour(label: int) -> int:
    """The class a fine-grained model most plausibly mixes up with `label`: same colour and
    shape, the next petal count (3 <-> 5 <-> 8, 8 falls back to 5)."""
    c = CLASSES[label]
    i = COUNTS.index(c.count)
    j = i + 1 if i + 1 < len(COUNTS) else i - 1
    return class_index(c.colour, COUNTS[j], c.shape)


def class_prompt(label: int) -> str:
    """The canonical text prompt for a class, as the server's T2I model is asked."""
    c = CLASSES[label]
    return f"a {c.colour} flower with {COUNT_WORDS[c.count][0]} {c.shape} petals"


# ----------------------------------------------------------------------------- captions

_TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {noun} with {petals} and a {centre} centre on {background}",
    "{petals} around a {centre} center",
    "{size} {noun} , {petals} , {colour} , {centre} centre , on {background}",
    "a photo of a {colour} {noun} on {background} , it has {petals}",
    "this {noun} has {petals} and a {centre} centre",
    "a {colour} {noun} with {petals} growing on {background}",
)
_NUISANCE_TEMPLATES: tuple[str, ...] = (
    "a {size} {noun} with a {centre} centre on {background}",
    "a photo of a {noun} on {background}",
    "a {noun} with a {centre} center",
)


def _petal_phrase(count: str | None, shape: str | None, colour: str | None) -> str:
    """E.g. "five pointed red petals"; `colour` is given only when the template has no colour slot."""
    return " ".join([w for w in (count, shape, colour) if w] + ["petals"])


def _fill(template: str, slots: dict[str, str | None]) -> str:
    """Fill a template, dropping every slot whose value is None together with its word."""
    text = template
    for key, value in slots.items():
        text = text.replace("{" + key + "}", value if value is not None else "")
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"(, )+,", ",", text)
    text = re.sub(r"^, |, ,", "", text)
    return text.replace(" , ", ", ").replace(" ,", ",").strip(" ,")


def make_caption(
    rng: np.random.Generator,
    label: int,
    nuisance: dict[str, str],
    partial_rate: float,
) -> str:
    """One caption of an image of class `label` with the given nuisance attributes.

    With probability ``1 - partial_rate`` the caption names all three class attributes; otherwise
    it names a random strict subset of them (80 %) or only nuisance attributes (20 %).
    """
    c = CLASSES[label]
    named = {"colour", "count", "shape"}
    nuisance_only = False
    if rng.random() < partial_rate:
        if rng.random() < 0.2:
            named, nuisance_only = set(), True
        else:
            keep = int(rng.integers(1, 3))
            named = set(rng.choice(sorted(named), size=keep, replace=False).tolist())
    colour = str(rng.choice(COLOUR_WORDS[c.colour])) if "colour" in named else None
    count = str(rng.choice(COUNT_WORDS[c.count], p=(0.8, 0.2))) if "count" in named else None
    shape = str(rng.choice(SHAPE_WORDS[c.shape])) if "shape" in named else None
    slots: dict[str, str | None] = {
        "noun": str(rng.choice(NOUNS)),
        "size": nuisance["size"] if rng.random() < 0.5 else None,
        "centre": nuisance["centre"],
        "background": nuisance["background"],
    }
    if nuisance_only:
        template = _NUISANCE_TEMPLATES[int(rng.integers(len(_NUISANCE_TEMPLATES)))]
        return _fill(template, slots)
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    slots["petals"] = _petal_phrase(count, shape, colour if "{colour}" not in template else None)
    slots["colour"] = colour
    return _fill(template, slots)


def vocabulary() -> list[str]:
    """Every word any caption or prompt of the domain can contain, sorted.

    Built from the lexicon and the templates (not from sampled captions), so a tokenizer made
    from it never meets an unknown word in this domain.
    """
    words: set[str] = {"petals", ","}
    for table in (COLOUR_WORDS, COUNT_WORDS, SHAPE_WORDS):
        for synonyms in table.values():
            words.update(synonyms)
    words.update(CENTRES, BACKGROUNDS, SIZES, NOUNS, COLOURS)
    for template in (*_TEMPLATES, *_NUISANCE_TEMPLATES):
        words.update(w for w in re.sub(r"\{\w+\}", " ", template).split() if w)
    for label in range(NUM_CLASSES):
        words.update(class_prompt(label).split())
    return sorted(words)


# ----------------------------------------------------------------------------- images


def _render_chunk(rng: np.random.Generator, labels: np.ndarray, size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render one chunk of flowers; returns uint8 images [n, size, size, 3] and nuisance names."""
    n = len(labels)
    attrs = [CLASSES[int(y)] for y in labels]
    petal_rgb = np.array([COLOURS[a.colour] for a in attrs], dtype=np.float32)
    petal_rgb = np.clip(petal_rgb + rng.normal(0, 12, (n, 3)), 0, 255)
    k = np.array([a.count for a in attrs], dtype=np.float32)
    sharp = np.array([SHAPES[a.shape] for a in attrs], dtype=np.float32)
    sharp *= rng.uniform(0.8, 1.25, n).astype(np.float32)

    centre_names = rng.choice(list(CENTRES), n)
    background_names = rng.choice(list(BACKGROUNDS), n)
    size_names = rng.choice(list(SIZES), n)
    centre_rgb = np.array([CENTRES[c] for c in centre_names], dtype=np.float32)
    bg_rgb = np.array([BACKGROUNDS[b] for b in background_names], dtype=np.float32)
    bg_rgb = np.clip(bg_rgb + rng.normal(0, 10, (n, 3)), 0, 255)
    radius = np.array([SIZES[s] for s in size_names], dtype=np.float32) * size
    radius *= rng.uniform(0.92, 1.08, n).astype(np.float32)
    shift = size / 32 * 3
    cx = size / 2 + rng.uniform(-shift, shift, n).astype(np.float32)
    cy = size / 2 + rng.uniform(-shift, shift, n).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)

    grid = np.arange(size, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - cx[:, None, None]
    dy = grid[None, :, None] - cy[:, None, None]
    r = np.sqrt(dx**2 + dy**2)
    theta = np.arctan2(dy, dx)
    rr = radius[:, None, None]
    lobe = np.abs(np.cos(k[:, None, None] * (theta - phase[:, None, None]) / 2))
    edge = rr * (0.18 + 0.82 * lobe ** sharp[:, None, None])
    petal = np.clip(edge - r + 0.5, 0, 1)[..., None]
    centre = np.clip(0.22 * rr - r + 0.5, 0, 1)[..., None]
    shade = (0.7 + 0.3 * (1 - np.clip(r / rr, 0, 1)))[..., None]

    gradient = np.linspace(1.1, 0.85, size, dtype=np.float32)[None, :, None, None]
    image = bg_rgb[:, None, None, :] * gradient
    image = image * (1 - petal) + petal_rgb[:, None, None, :] * shade * petal
    image = image * (1 - centre) + centre_rgb[:, None, None, :] * centre
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    nuisance = {"centre": centre_names, "background": background_names, "size": size_names}
    return np.clip(image, 0, 255).astype(np.uint8), nuisance


@dataclass(frozen=True)
class FlowerSamples:
    """A generated batch: images, labels and captions (several per image)."""

    images: np.ndarray  # uint8 [n, size, size, 3]
    labels: np.ndarray  # int64 [n]
    captions: list[list[str]]  # n lists of captions_per_image strings


def generate(
    labels: np.ndarray,
    seed: int,
    *,
    image_size: int = 32,
    captions_per_image: int = 3,
    partial_rate: float = 0.4,
    caption_labels: np.ndarray | None = None,
    chunk: int = 1024,
) -> FlowerSamples:
    """Render an image and captions for each requested label, deterministically from `seed`.

    `caption_labels`, when given, is the class each sample's captions describe: equal to
    `labels` except where a caption deliberately names another class (the public split's
    confusions, see `splits.py`).
    """
    labels = np.asarray(labels, dtype=np.int64)
    caption_labels = labels if caption_labels is None else np.asarray(caption_labels)
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for start in range(0, len(labels), chunk):
        part = labels[start : start + chunk]
        img, nuisance = _render_chunk(rng, part, image_size)
        images.append(img)
        for j in range(len(part)):
            named = {key: str(values[j]) for key, values in nuisance.items()}
            cap_label = int(caption_labels[start + j])
            captions.append([make_caption(rng, cap_label, named, partial_rate) for _ in range(captions_per_image)])
    if images:
        stacked = np.concatenate(images)
    else:
        stacked = np.zeros((0, image_size, image_size, 3), np.uint8)
    return FlowerSamples(stacked, labels, captions)


def balanced_labels(per_class: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """`per_class` copies of every label, in class order."""
    return np.repeat(np.arange(num_classes), per_class)


def caption_attributes(text: str) -> dict[str, str | int]:
    """The class attributes a caption names: any of ``colour``, ``count``, ``shape``.

    The petal colour is the first colour word that is not the centre's (``... a yellow centre``).
    Used to check that captions carry their class and to score a captioner.
    """
    words = re.findall(r"[\w-]+", text.lower())
    found: dict[str, str | int] = {}
    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if "colour" not in found and nxt not in ("centre", "center"):
            for colour, synonyms in COLOUR_WORDS.items():
                if word in synonyms:
                    found["colour"] = colour
        for count, synonyms in COUNT_WORDS.items():
            if word in synonyms:
                found.setdefault("count", count)
        for shape, synonyms in SHAPE_WORDS.items():
            if word in synonyms:
                found.setdefault("shape", shape)
    return found
