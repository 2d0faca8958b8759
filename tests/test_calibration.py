"""Temperature scaling of client votes: the fit recovers the temperature that generated the
labels, leaves the argmax alone, and the ClientApp sends calibrated probabilities when asked."""

import pytest
import torch

from task_models.calibration import T_MAX, T_MIN, fit_temperature
from task_models.registry import ModelSpec, build_task_model
from task_models.training import infer, predict_logits


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_the_fit_recovers_the_temperature_the_labels_were_drawn_at(true_t):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 6, generator=gen) * 3
    labels = torch.multinomial((logits / true_t).softmax(-1), 1, generator=gen).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_edge_cases_stay_in_range():
    assert fit_temperature(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) == 1.0
    # moderate logits, so the likelihood still changes near the bounds and the optimum is at them
    logits = torch.eye(4) * 2
    always_right = fit_temperature(logits, torch.arange(4))  # sharpen as far as allowed
    always_wrong = fit_temperature(logits, (torch.arange(4) + 1) % 4)  # flatten as far as allowed
    assert T_MIN <= always_right <= 0.1
    assert 10.0 <= always_wrong <= T_MAX


def test_infer_scales_probabilities_and_keeps_the_argmax():
    model = build_task_model("cnn-small", ModelSpec(num_classes=5, fusion_dim=8, vocab_size=10, image_size=32), 0)
    x = torch.randn(7, 3, 32, 32)
    logits = predict_logits(model, x)
    plain, hot = infer(model, x), infer(model, x, temperature=4.0)
    assert torch.allclose(torch.as_tensor(hot.probs), (logits / 4.0).softmax(-1), atol=1e-6)
    assert (hot.probs.argmax(-1) == plain.probs.argmax(-1)).all()
    assert (hot.entropy > plain.entropy).all()


@pytest.mark.parametrize("calibration", ["none", "temperature"])
def test_a_node_votes_at_the_temperature_fitted_on_its_own_validation_split(calibration):
    from client_app.node import ClientNode
    from fedmmkt_strategy.runs.inprocess import InProcessGrid
    from tests.conftest import TINY_FEDERATION

    grid = InProcessGrid(lambda m, c: m, {**TINY_FEDERATION, "client-calibration": calibration}, num_nodes=2)
    node = ClientNode.from_context(grid.contexts[100])
    x, y = node.tensors("val")
    assert len(y) > 0
    expected = fit_temperature(predict_logits(node.model, x), y) if calibration == "temperature" else 1.0
    assert node.vote_temperature() == pytest.approx(expected)
    assert T_MIN <= node.vote_temperature() <= T_MAX
