"""The paper world's data: a Hugging Face image-text dataset mapped to the toy world's schema.

Oxford 102 Flowers with captions and UPMC Food-101 (image + recipe text) are loaded with
`datasets.load_dataset` by hub id, or offline from a local parquet file, a folder of parquet
files or a `save_to_disk` folder. Every row becomes what the toy splits hold (`splits.py`):
``image`` uint8 [S, S, 3] at `image_size`, ``label`` int64, ``captions`` a list of strings and
``caption_label`` (= label: real captions are not deliberately wrong). The rows are then cut,
by a seeded permutation, into the same six disjoint splits, so the Dirichlet partitioner,
clients and server code see no difference between the worlds (ALGORITHM.md, "Two worlds").

`datasets` and PIL are imported by the functions that load and map the data, so a toy-world
node (which needs only `PaperDataSpec`, through the run config) never loads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from worlds import splits

if TYPE_CHECKING:
    from datasets import Dataset
    from PIL import Image

#: Share of the rows each split gets; the two client pools share what is left, half each.
SPLIT_FRACTIONS = {
    splits.PUBLIC: 0.2,
    splits.REFERENCE: 0.1,
    splits.IMAGE_TEST: 0.1,
    splits.TEXT_TEST: 0.1,
}


class DatasetUnavailableError(OSError):
    """The configured dataset is neither a local file/folder nor loadable from the hub."""


@dataclass(frozen=True)
class PaperDataSpec:
    """Where the paper world's data comes from and how its columns map; every field is a run-config key.

    Attributes
    ----------
    source
        ``hf-dataset``: a hub id (e.g. ``"nelorth/oxford-flowers"``), a ``.parquet`` file, a folder of
        parquet files or a ``Dataset.save_to_disk`` folder.
    split
        ``hf-split``: which split of the source to read (all six world splits are cut from it).
    image_column, text_column, label_column
        ``hf-image-column`` / ``hf-text-column`` / ``hf-label-column``. The text column may hold
        a string or a list of strings per row; the label column a ClassLabel, int or string.
    image_size
        ``image-size``: every image is resized (bicubic, after a centre square crop) to this.
    max_samples
        ``hf-max-samples``: use only the first this many rows of a seeded shuffle (0: all).
    seed
        ``seed``: the permutation that assigns rows to splits.
    """

    source: str
    split: str = "train"
    image_column: str = "image"
    text_column: str = "text"
    label_column: str = "label"
    image_size: int = 64
    max_samples: int = 0
    seed: int = 0


def _unavailable(spec: PaperDataSpec, err: Exception) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"hf-dataset = {spec.source!r}: cannot load it ({type(err).__name__}: {err}). It is not a local "
        f"parquet file or folder, and the Hugging Face hub could not provide it (the hub is unreachable: "
        f"offline, HF_HUB_OFFLINE=1, or an unknown id or split {spec.split!r}). Run once with internet access "
        f"so the datasets cache holds it, or set hf-dataset to a local parquet file or folder."
    )


def load_source(spec: PaperDataSpec) -> Dataset:
    """Read the raw dataset named by ``spec.source`` (local path first, else hub id)."""
    from datasets import load_dataset, load_from_disk  # paper-world nodes only

    path = Path(spec.source).expanduser()
    try:
        if path.is_file():
            return load_dataset("parquet", data_files=str(path), split="train")
        if path.is_dir() and (path / "dataset_info.json").exists():
            loaded = load_from_disk(str(path))
            return loaded[spec.split] if hasattr(loaded, "keys") else loaded
        if path.is_dir():
            return load_dataset("parquet", data_dir=str(path), split="train")
        return load_dataset(spec.source, split=spec.split)
    except (OSError, ValueError, ConnectionError) as err:  # datasets' offline/unknown-id errors derive from these
        raise _unavailable(spec, err) from err


def class_names(dataset: Dataset, label_column: str) -> tuple[Dataset, list[str]]:
    """The label column as int ids plus the class names, from a ClassLabel or by encoding strings/ints."""
    from datasets import ClassLabel  # paper-world nodes only

    if label_column not in dataset.column_names:
        raise KeyError(f"hf-label-column = {label_column!r} is not a column; columns: {dataset.column_names}")
    feature = dataset.features[label_column]
    if not isinstance(feature, ClassLabel):
        dataset = dataset.class_encode_column(label_column)
        feature = dataset.features[label_column]
    return dataset, [str(n).replace("_", " ") for n in feature.names]


def square_resize(image: Image.Image, size: int) -> np.ndarray:
    """Centre square crop, then bicubic resize to ``size``: uint8 [size, size, 3]."""
    from PIL import Image  # paper-world nodes only (the toy world draws its images with numpy)

    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, np.uint8)


def as_captions(value: str | list | None) -> list[str]:
    """A text cell as a non-empty caption list (a missing text becomes one empty caption)."""
    if value is None:
        return [""]
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] or [""]


def to_world_schema(dataset: Dataset, spec: PaperDataSpec) -> Dataset:
    """Map raw rows to the toy schema: image uint8 [S, S, 3], label, captions, caption_label."""
    from datasets import Array3D, Features, Sequence, Value  # paper-world nodes only

    for key, column in (("hf-image-column", spec.image_column), ("hf-text-column", spec.text_column)):
        if column not in dataset.column_names:
            raise KeyError(f"{key} = {column!r} is not a column of {spec.source!r}; columns: {dataset.column_names}")
    size = spec.image_size
    features = Features(
        {
            "image": Array3D((size, size, 3), "uint8"),
            "label": Value("int64"),
            "captions": Sequence(Value("string")),
            "caption_label": Value("int64"),
        }
    )

    def convert(batch: dict) -> dict:
        return {
            "image": [square_resize(img, size) for img in batch[spec.image_column]],
            "label": batch[spec.label_column],
            "captions": [as_captions(t) for t in batch[spec.text_column]],
            "caption_label": batch[spec.label_column],
        }

    return dataset.map(convert, batched=True, batch_size=64, remove_columns=dataset.column_names, features=features)


def assign_rows(num_rows: int, seed: int) -> dict[str, np.ndarray]:
    """Disjoint row indices of the six world splits from a seeded permutation."""
    order = np.random.default_rng(seed).permutation(num_rows)
    out, start = {}, 0
    for name, fraction in SPLIT_FRACTIONS.items():
        stop = start + max(1, int(round(fraction * num_rows)))
        out[name], start = np.sort(order[start:stop]), stop
    rest = order[start:]
    half = len(rest) // 2
    out[splits.IMAGE_POOL], out[splits.TEXT_POOL] = np.sort(rest[:half]), np.sort(rest[half:])
    if any(len(rows) == 0 for rows in out.values()):
        raise ValueError(f"hf-dataset {num_rows} rows are too few for six non-empty splits; use at least 12")
    return out


@dataclass(frozen=True)
class PaperWorld:
    """The mapped dataset, its class names and the rows of each split."""

    data: Dataset
    class_names: tuple[str, ...]
    rows: dict[str, np.ndarray]


@lru_cache(maxsize=2)
def load_paper_world(spec: PaperDataSpec) -> PaperWorld:
    """Load, label-encode, subsample and map the dataset once per process."""
    raw = load_source(spec)
    raw, names = class_names(raw, spec.label_column)
    if spec.max_samples and spec.max_samples < len(raw):
        raw = raw.shuffle(seed=spec.seed).select(range(spec.max_samples))
    data = to_world_schema(raw, spec)
    return PaperWorld(data, tuple(names), assign_rows(len(data), spec.seed))


def load_paper_split(split: str, spec: PaperDataSpec) -> Dataset:
    """One of the six world splits (names as in `splits`) of the paper dataset."""
    world = load_paper_world(spec)
    if split not in world.rows:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(world.rows)}")
    return world.data.select(world.rows[split])
