import numpy as np
import pytest
import torch

from task_models import client_data, domain, layout, registry, sensor, splits
from task_models.modality import to_model_input, vocab_size
from task_models.models import TaskModel
from task_models.training import (
    DistillTargets,
    TrainSettings,
    distillation_loss,
    evaluate_model,
    infer,
    train_model,
)

SPEC = registry.ModelSpec(num_classes=24, fusion_dim=16, vocab_size=vocab_size())


def _inputs(modality: str, n: int = 5) -> torch.Tensor:
    if modality == "image":
        return to_model_input("image", np.random.default_rng(0).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8))
    if modality == "sensor":
        return to_model_input("sensor", sensor.readings(np.arange(n), seed=0))
    return to_model_input("text", ["a red flower with five petals"] * n)


@pytest.mark.parametrize("name", registry.available_models())
def test_every_registered_model_has_the_shared_interface(name):
    model = registry.build_task_model(name, SPEC, seed=0)
    logits, emb = model(_inputs(model.modality))
    assert logits.shape == (5, 24)
    assert emb.shape == (5, model.embed_dim)
    projected = model.project(emb)
    assert projected.shape == (5, 16)
    assert torch.allclose(projected.norm(dim=-1), torch.ones(5), atol=1e-5)


def test_registry_has_three_image_and_two_text_architectures():
    assert len(registry.available_models("image")) >= 3
    assert len(registry.available_models("text")) >= 2


def test_seeded_builds_are_identical():
    a = registry.build_task_model("cnn", SPEC, seed=7).state_dict()
    b = registry.build_task_model("cnn", SPEC, seed=7).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_user_models_can_be_registered_and_duplicates_are_refused():
    @registry.register_task_model("test-linear", modality="image")
    def _build(spec: registry.ModelSpec) -> TaskModel:
        backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 8))
        return TaskModel(backbone, 8, spec.num_classes, spec.fusion_dim, "image")

    assert registry.build_task_model("test-linear", SPEC)(_inputs("image"))[0].shape == (5, 24)
    assert layout.parse_layout("image:test-linear")[0].architecture == "test-linear"
    with pytest.raises(ValueError, match="already registered"):
        registry.register_task_model("test-linear", modality="image")(_build)


def test_layout_parsing_and_node_roles():
    entries = layout.parse_layout("image:cnn, text:gru, image:resnet")
    roles = [layout.assign_node(i, 5, entries) for i in range(5)]
    assert [r.modality for r in roles] == ["image", "text", "image", "image", "text"]
    assert [r.partition for r in roles] == [0, 0, 1, 2, 1]
    assert [r.num_partitions for r in roles] == [3, 2, 3, 3, 2]
    for bad, msg in [
        ("image", "must look like"),
        ("audio:cnn", "modality"),
        ("image:nope", "unknown"),
        ("text:cnn", "is a image model"),
    ]:
        with pytest.raises(ValueError, match=msg):
            layout.parse_layout(bad)


def test_dirichlet_partitions_are_disjoint_skewed_and_split():
    spec = splits.DomainSpec(pool_size=800, test_per_class=2)
    parts = [client_data.load_client_data(spec, "image", i, 3, 0.3) for i in range(3)]
    sizes = [len(p.train) + len(p.test) for p in parts]
    assert sum(sizes) == 800
    hists = [np.bincount(p.train.labels, minlength=24) for p in parts]
    # label skew: each client's class distribution is far from uniform
    assert all(h.max() > 3 * max(h.mean(), 1) for h in hists)
    assert all(0.1 < len(p.test) / (len(p.train) + len(p.test)) < 0.3 for p in parts)
    text = client_data.load_client_data(spec, "text", 0, 2, 0.3)
    assert isinstance(text.train.inputs[0], str) and len(text.train.inputs) == len(text.train.labels)
    assert len(text.global_test) == 48


def test_training_learns_a_separable_problem_and_evaluation_agrees():
    torch.manual_seed(0)
    labels = torch.arange(240) % 24
    s = to_model_input("image", domain.generate(labels.numpy(), 0).images)
    model = registry.build_task_model("cnn-small", SPEC, seed=0)
    before = evaluate_model(model, s, labels)["accuracy"]
    stats = train_model(model, s, labels, TrainSettings(epochs=8, lr=5e-3, batch_size=32), seed=0)
    after = evaluate_model(model, s, labels)["accuracy"]
    assert stats["num-examples"] == 240 and stats["steps"] == 64
    assert after > max(before, 0.3)


def test_inference_outputs_are_valid_distributions():
    model = registry.build_task_model("gru", SPEC, seed=0)
    out = infer(model, _inputs("text", 7))
    assert out.probs.shape == (7, 24) and out.embedding.shape == (7, 16)
    assert np.allclose(out.probs.sum(-1), 1, atol=1e-5)
    assert np.all(out.entropy >= 0) and np.all(out.entropy <= np.log(24) + 1e-5)


def test_distillation_loss_by_hand():
    logits = torch.zeros(2, 2)  # uniform student at any temperature
    q = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    projected = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    fused = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # cos = 1 and 0 -> rep loss mean 0.5
    targets = DistillTargets(
        inputs=torch.zeros(2), soft_labels=q, fused=fused, temperature=2.0, lambda_kl=1.0, lambda_rep=0.5
    )
    loss, parts = distillation_loss(logits, projected, targets, torch.tensor([0, 1]))
    kl = (np.log(2) + 0.0) / 2 * 4  # KL([1,0] || u) = log 2, KL(u || u) = 0; batch mean; times T^2
    assert parts["kl"] == pytest.approx(kl, rel=1e-5)
    assert parts["rep"] == pytest.approx(0.5)
    assert float(loss) == pytest.approx(kl + 0.25, rel=1e-5)


def test_distillation_pulls_predictions_towards_soft_labels():
    model = registry.build_task_model("bow", SPEC, seed=0)
    x_priv = _inputs("text", 16)
    y_priv = torch.zeros(16, dtype=torch.long)
    syn = to_model_input("text", ["a blue flower with eight petals"] * 16)
    q = torch.zeros(16, 24)
    q[:, 5] = 1.0
    targets = DistillTargets(inputs=syn, soft_labels=q, lambda_kl=5.0)
    train_model(model, x_priv, y_priv, TrainSettings(epochs=20, lr=1e-2, batch_size=16), seed=0, distill=targets)
    assert infer(model, syn).probs[:, 5].mean() > 0.5
