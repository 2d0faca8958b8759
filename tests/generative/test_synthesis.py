from __future__ import annotations

import functools

import numpy as np
import pytest

from fedmmkt_strategy.generative import synthesis
from fedmmkt_strategy.generative.quality import caption_attribute_accuracy
from worlds import domain


@pytest.mark.parametrize("num_samples", [24, 50, 7])
def test_prompts_are_class_balanced_in_vocabulary_and_name_their_class(num_samples):
    prompts, classes = synthesis.class_balanced_prompts(num_samples, seed=3)
    assert len(prompts) == len(classes) == num_samples and classes.dtype == np.int64
    counts = np.bincount(classes, minlength=domain.NUM_CLASSES)
    assert counts.max() - counts.min() <= 1
    assert {w for p in prompts for w in p.split()} <= set(domain.vocabulary())
    assert caption_attribute_accuracy(prompts, classes)["all"] == 1.0


def test_prompts_are_seeded_and_varied():
    first = synthesis.class_balanced_prompts(48, seed=0)
    again = synthesis.class_balanced_prompts(48, seed=0)
    other = synthesis.class_balanced_prompts(48, seed=1)
    assert first[0] == again[0] and np.array_equal(first[1], again[1])
    assert first[0] != other[0]
    assert len(set(first[0])) > 40


def _pool(n: int) -> synthesis.SyntheticPool:
    prompts, classes = synthesis.class_balanced_prompts(n, seed=0)
    images = np.zeros((n, 4, 4, 3), np.uint8)
    return synthesis.SyntheticPool(images, ["old"] * n, prompts, classes, np.ones(n, np.int64))


def _marker_generator(prompts: list[str], seed: int) -> tuple[np.ndarray, list[str]]:
    """A cheap GeneratorFn: white images, captions that repeat the prompt."""
    return np.full((len(prompts), 4, 4, 3), 255, np.uint8), [f"new {p}" for p in prompts]


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_refresh_replaces_the_requested_fraction(fraction):
    pool = _pool(48)
    fresh = synthesis.refresh(pool, fraction, _marker_generator, generation_round=3, seed=7)
    replaced = fresh.images[:, 0, 0, 0] == 255
    assert replaced.sum() == round(48 * fraction)
    assert np.array_equal(fresh.generation_round == 3, replaced)
    assert np.array_equal(fresh.classes, pool.classes)
    assert all(c.startswith("new") == r for c, r in zip(fresh.captions, replaced, strict=True))
    assert all(c == f"new {p}" for c, p, r in zip(fresh.captions, fresh.prompts, replaced, strict=True) if r)
    assert caption_attribute_accuracy(fresh.prompts, fresh.classes)["all"] == 1.0
    assert (pool.images == 0).all() and pool.captions == ["old"] * 48  # the input pool is untouched


def test_refresh_is_seeded_and_rejects_bad_fractions():
    pool = _pool(24)
    a = synthesis.refresh(pool, 0.5, _marker_generator, generation_round=2, seed=1)
    b = synthesis.refresh(pool, 0.5, _marker_generator, generation_round=2, seed=1)
    c = synthesis.refresh(pool, 0.5, _marker_generator, generation_round=2, seed=2)
    assert np.array_equal(a.generation_round, b.generation_round)
    assert not np.array_equal(a.generation_round, c.generation_round)
    with pytest.raises(ValueError, match="fraction"):
        synthesis.refresh(pool, 1.5, _marker_generator, generation_round=2, seed=1)


def test_synthesize_then_refresh_with_the_real_models(pipe, trained_captioner):
    model, processor = trained_captioner
    pool = synthesis.synthesize(pipe, model, processor, 6, seed=0, steps=2)
    assert len(pool) == 6 and pool.images.shape == (6, 32, 32, 3) and pool.images.dtype == np.uint8
    assert len(pool.captions) == 6 and all(isinstance(c, str) for c in pool.captions)
    assert (pool.generation_round == 1).all()
    generator_fn = functools.partial(synthesis.generate_and_caption, pipe, model, processor, steps=2)
    fresh = synthesis.refresh(pool, 0.5, generator_fn, generation_round=2, seed=4)
    changed = (fresh.images != pool.images).any(axis=(1, 2, 3))
    assert np.array_equal(changed, fresh.generation_round == 2) and changed.sum() == 3
