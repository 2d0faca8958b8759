"""Shared tiny fixtures: real models at toy sizes, trained for a few steps at most."""

from __future__ import annotations

import numpy as np
import pytest

from fedmmkt_strategy.generative.captioner import build_tiny_captioner, train_captioner
from fedmmkt_strategy.generative.t2i import build_tiny_pipeline
from worlds import splits
from worlds.tokenizer import build_tokenizer

TINY_DOMAIN = splits.DomainSpec(public_size=96, reference_per_class=10, test_per_class=2)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(24)


@pytest.fixture(scope="session")
def public() -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """A small slice of the PUBLIC split: uint8 images, labels, three captions per image."""
    data = splits.load_split(splits.PUBLIC, TINY_DOMAIN).with_format("numpy")[:]
    captions = [[str(c) for c in row] for row in data["captions"]]
    return data["image"].astype(np.uint8), data["label"].astype(np.int64), captions


@pytest.fixture(scope="session")
def reference() -> tuple[np.ndarray, np.ndarray]:
    """The REFERENCE split at 10 images per class: uint8 images and labels."""
    data = splits.load_split(splits.REFERENCE, TINY_DOMAIN).with_format("numpy")[:]
    return data["image"].astype(np.uint8), data["label"].astype(np.int64)


@pytest.fixture
def pipe(tokenizer):
    """A fresh, randomly initialised tiny pipeline (tests may train it)."""
    return build_tiny_pipeline(tokenizer, seed=0)


@pytest.fixture(scope="session")
def trained_captioner(tokenizer, public):
    """A tiny BLIP trained for 30 steps: enough to emit domain sentences, not to be right."""
    model, processor = build_tiny_captioner(tokenizer, seed=0)
    images, _, captions = public
    train_captioner(model, processor, images, captions, steps=30, batch_size=32, lr=2e-3, seed=0)
    return model, processor
