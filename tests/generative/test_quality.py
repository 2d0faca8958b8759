from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fedmmkt_strategy.generative import quality
from fedmmkt_strategy.generative.judge import JudgeCNN
from worlds import domain


def _colour_judge() -> nn.Module:
    """A real torch module whose answer we know: the class is the brightest channel (R=0, G=1, B=2)."""
    linear = nn.Linear(3, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(3))
        linear.bias.zero_()
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)


def _solid(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (8, 8, 3))


def test_gen_acc_counts_agreement_with_the_prompted_class():
    images = np.stack([_solid((255, 0, 0)), _solid((0, 255, 0)), _solid((0, 0, 255)), _solid((0, 0, 255))])
    assert quality.gen_acc(_colour_judge(), images, np.array([0, 1, 2, 0])) == pytest.approx(0.75)


def test_domain_fid_is_zero_for_identical_sets_and_grows_with_a_mean_shift():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    assert quality.domain_fid(real, real) == pytest.approx(0.0, abs=1e-6)
    shifts = [quality.domain_fid(real, real + d) for d in (0.5, 1.0, 2.0)]
    assert shifts == pytest.approx([6 * 0.25, 6 * 1.0, 6 * 4.0], rel=1e-6)  # |shift|^2, covariances equal


def test_domain_fid_cross_term_on_a_scaled_copy():
    # gen = 2 * real: |mu|^2 + tr(S) + tr(4 S) - 2 tr(2 S) = |mu|^2 + tr(S), exactly, from sample statistics.
    rng = np.random.default_rng(1)
    real = rng.normal(1.0, 1.0, size=(300, 5)) @ rng.normal(size=(5, 5))
    expected = np.sum(real.mean(0) ** 2) + np.trace(np.cov(real, rowvar=False))
    assert quality.domain_fid(real, 2 * real) == pytest.approx(expected, rel=1e-6)


def test_sample_grid_has_one_row_per_class(tmp_path):
    labels = np.array([2, 0, 2, 1, 0])
    images = np.stack([_solid((40 * i, 0, 0)) for i in range(5)])
    path = quality.save_sample_grid(images, labels, tmp_path / "grid.png", pad=1)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (3 * 9 + 1, 2 * 9 + 1, 3)
    assert grid[1 + 2 * 9, 1 + 9, 0] == 80  # class 2 row, second image of class 2 (index 2)


def test_caption_attribute_accuracy_ignores_centre_colours():
    red_three_round = domain.class_index("red", 3, "round")
    captions = [
        "a scarlet bloom with three rounded petals and a yellow centre on grass",
        "a red flower with 3 spiky petals",
        "a photo of a flower on grass",
    ]
    acc = quality.caption_attribute_accuracy(captions, np.full(3, red_three_round))
    assert acc == pytest.approx({"colour": 2 / 3, "count": 2 / 3, "shape": 1 / 3, "all": 1 / 3})


def test_evaluate_t2i_reports_consistent_metrics(pipe, reference, tmp_path):
    images, _ = reference
    judge = JudgeCNN(domain.NUM_CLASSES, width=8).eval()
    from fedmmkt_strategy.generative.judge import judge_features

    result = quality.evaluate_t2i(
        pipe, judge, judge_features(judge, images), per_class=1, steps=2, grid_path=tmp_path / "g.png"
    )
    assert result["num_images"] == domain.NUM_CLASSES
    assert len(result["per_class_acc"]) == domain.NUM_CLASSES
    assert result["gen_acc"] == pytest.approx(np.mean(result["per_class_acc"]))
    assert result["fid"] > 0 and (tmp_path / "g.png").exists()
