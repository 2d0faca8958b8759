import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmmkt_strategy.steps.fusion import (
    CrossModalFusion,
    aggregate,
    contrastive_scores,
    contrastive_weights,
    fuse,
    train_fusion,
    weight_diagnostics,
)


def test_contrastive_scores_by_hand_and_chunking_agrees():
    reps = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one client, two samples
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = contrastive_scores(reps, anchors, tau=1.0)
    expected = 1.0 - math.log(math.e + 1.0)  # log softmax([1, 0])[0]
    assert torch.allclose(s, torch.full((1, 2), expected))
    big = F.normalize(torch.randn(3, 50, 8), dim=-1)
    anchors = F.normalize(torch.randn(50, 8), dim=-1)
    assert torch.allclose(contrastive_scores(big, anchors, 0.1, chunk=7), contrastive_scores(big, anchors, 0.1))
    blocks = contrastive_scores(big, anchors, 0.1, batch_size=20, chunk=7)
    assert torch.allclose(blocks[:, 40:], contrastive_scores(big[:, 40:], anchors[40:], 0.1))


def test_weights_sum_to_one_and_the_better_aligned_client_weighs_more():
    torch.manual_seed(0)
    anchors = F.normalize(torch.randn(32, 16), dim=-1)
    aligned = F.normalize(anchors + 0.1 * torch.randn(32, 16), dim=-1)
    noisy = F.normalize(torch.randn(32, 16), dim=-1)
    alpha = contrastive_weights(torch.stack([noisy, aligned]), anchors, tau=0.1)
    assert torch.allclose(alpha.sum(0), torch.ones(32))
    assert (alpha[1] > alpha[0]).float().mean() > 0.9
    diag = weight_diagnostics(alpha)
    assert diag["alpha_client_mean"][1] > 0.8 and 0 <= diag["alpha_entropy"] < 0.5
    fused = aggregate(torch.stack([noisy, aligned]), alpha)
    assert fused.shape == (32, 16)


def test_uniform_weights_have_entropy_one():
    diag = weight_diagnostics(torch.full((4, 10), 0.25))
    assert diag["alpha_entropy"] == pytest.approx(1.0) and diag["alpha_max"] == pytest.approx(0.25)


@pytest.mark.parametrize("modalities", [["image", "text"], ["image", "text", "sensor"]])
def test_cross_attention_shapes(modalities):
    module = CrossModalFusion(modalities, dim=16, num_classes=5)
    tokens = {m: torch.randn(7, 16) for m in modalities}
    out = module(tokens)
    assert set(out) == set(modalities) and all(v.shape == (7, 16) for v in out.values())
    fused = fuse(module, tokens, batch_size=3)
    assert all(v.shape == (7, 16) and abs(float((v**2).sum(-1).mean()) - 1) < 1e-5 for v in fused.values())


def test_with_three_modalities_the_others_form_a_set_not_an_average():
    torch.manual_seed(0)
    module = CrossModalFusion(["a", "b", "c"], dim=8, num_classes=3, heads=2)
    base = {m: torch.randn(4, 8) for m in "abc"}
    swapped = {"a": base["a"], "b": base["c"], "c": base["b"]}
    # modality embeddings differ once trained; with distinct embeddings, swapping b and c changes a's output
    with torch.no_grad():
        module.modality_embedding["b"].fill_(1.0)
        module.modality_embedding["c"].fill_(-1.0)
    assert not torch.allclose(module(base)["a"], module(swapped)["a"])


def test_fusion_training_reduces_its_loss():
    torch.manual_seed(0)
    labels = torch.arange(64) % 4
    centres = F.normalize(torch.randn(4, 16), dim=-1)
    tokens = {m: centres[labels] + 0.3 * torch.randn(64, 16) for m in ("image", "text")}
    module = CrossModalFusion(["image", "text"], dim=16, num_classes=4)
    first = train_fusion(module, tokens, labels, torch.ones(64), steps=1, seed=0)
    last = train_fusion(module, tokens, labels, torch.ones(64), steps=60, lr=3e-3, seed=0)
    assert last["fusion_ce"] < first["fusion_ce"]


def test_the_fusion_works_on_the_modalities_a_round_has():
    """A module built for three modalities fuses, trains on and attends among any two of them."""
    torch.manual_seed(0)
    module = CrossModalFusion(["image", "text", "sensor"], dim=8, num_classes=3, heads=2)
    tokens = {"image": torch.randn(6, 8), "sensor": torch.randn(6, 8)}
    losses = train_fusion(module, tokens, torch.tensor([0, 1, 2, 0, 1, 2]), torch.ones(6), steps=2)
    assert all(np.isfinite(v) for v in losses.values())
    fused = fuse(module, tokens)
    assert set(fused) == {"image", "sensor"} and all(np.isfinite(f).all() for f in fused.values())
    alone = fuse(module, {"text": tokens["image"]})  # nothing to attend to: the token itself, normalised
    assert np.allclose(alone["text"], F.normalize(tokens["image"], dim=-1).numpy(), atol=1e-6)
