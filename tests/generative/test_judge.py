from __future__ import annotations

import numpy as np
import torch

from fedmmkt_strategy.generative import judge as jdg
from task_models.augment import augment, gaussian_blur
from worlds import domain


def test_augmentation_blurs_is_seeded_and_keeps_shape(reference):
    images, _ = reference
    x = jdg.to_judge_input(images[:32])
    a = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(0)))
    blurred = gaussian_blur(x, torch.full((32,), 1.3))
    high_freq = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()  # noqa: E731
    assert high_freq(blurred) < 0.6 * high_freq(x)


def test_judge_learns_the_reference_split_and_round_trips(reference, tmp_path):
    images, labels = reference
    judge = jdg.train_judge(images, labels, domain.NUM_CLASSES, epochs=12, batch_size=32, width=16, seed=0)
    assert np.mean(jdg.judge_predict(judge, images) == labels) > 4 / domain.NUM_CLASSES
    features = jdg.judge_features(judge, images)
    assert features.shape == (len(images), 64)
    jdg.save_judge(judge, tmp_path / "judge.pt")
    loaded = jdg.load_judge(tmp_path / "judge.pt")
    np.testing.assert_allclose(jdg.judge_logits(loaded, images), jdg.judge_logits(judge, images), atol=1e-6)
