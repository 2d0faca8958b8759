"""Modalities and how raw inputs of each become model tensors.

Raw inputs are what travels in messages and lives in datasets: uint8 images [N, H, W, 3],
caption strings and float32 sensor readings [N, D] (NaN where a field is missing). Every task
model of a modality takes the same tensor, so the server can send one synthetic set to all
clients of a modality, whatever their architecture.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from worlds import tokenizer as toy_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Modality = Literal["image", "text", "sensor"]
MODALITIES: tuple[Modality, ...] = ("image", "text", "sensor")
TEXT_MAX_LENGTH = 32


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def texts_to_tensor(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase | None = None) -> torch.Tensor:
    """Captions -> int64 token ids [N, TEXT_MAX_LENGTH], padded with 0.

    `tokenizer` defaults to the toy world's (encoded with `tokenizers` alone: no `transformers` on a
    toy text node); the paper world passes its hub tokenizer (e.g. BERT's).
    """
    if tokenizer is None:
        return toy_tokenizer.encode_texts(texts, TEXT_MAX_LENGTH)
    encoded = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH, return_tensors="pt"
    )
    return encoded["input_ids"]


def sensors_to_tensor(readings: np.ndarray) -> torch.Tensor:
    """float32 readings [N, D] with NaN for missing fields -> [N, 2D]: values (missing as 0) and the
    missing mask, so a model can tell "measured 0" from "not measured"."""
    x = torch.from_numpy(np.ascontiguousarray(readings, dtype=np.float32))
    missing = torch.isnan(x)
    return torch.cat([torch.nan_to_num(x, nan=0.0), missing.float()], dim=-1)


def to_model_input(
    modality: Modality, raw: np.ndarray | Sequence[str], tokenizer: PreTrainedTokenizerBase | None = None
) -> torch.Tensor:
    """Encode raw inputs of a modality for its task models (`tokenizer`: see `texts_to_tensor`)."""
    if modality == "image":
        return images_to_tensor(np.asarray(raw))
    if modality == "text":
        return texts_to_tensor([str(t) for t in raw], tokenizer)
    if modality == "sensor":
        return sensors_to_tensor(np.asarray(raw))
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")


def vocab_size() -> int:
    """Size of the text vocabulary (embedding tables of text models)."""
    return toy_tokenizer.vocab_size()
