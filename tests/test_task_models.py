import numpy as np
import pytest
import torch

from task_models import layout, registry
from task_models.models import TaskModel
from task_models.training import (
    DistillTargets,
    TrainSettings,
    distillation_loss,
    evaluate_model,
    fit_to_convergence,
    infer,
    soften,
    synthetic_schedule,
    train_model,
)
from worlds import client_data, domain, sensor, splits
from worlds.modality import to_model_input, vocab_size

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
    fused = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # cos = 1 and 0 -> rep loss 0 and 1
    targets = DistillTargets(
        inputs=torch.zeros(2), soft_labels=q, fused=fused, temperature=2.0, lambda_kl=1.0, lambda_rep=0.5
    )
    rows, parts = distillation_loss(logits, projected, targets, torch.tensor([0, 1]))
    # softened teacher of [1, 0] is still [1, 0] (1e-12 ** 0.5 = 1e-6, negligible), of [.5, .5] uniform:
    # KL = log 2 and 0, times T^2 = 4
    kl = torch.tensor([4 * np.log(2), 0.0])
    assert parts["kl"] == pytest.approx(float(kl.mean()), rel=1e-4)
    assert parts["rep"] == pytest.approx(0.5)
    np.testing.assert_allclose(rows.numpy(), (kl + 0.5 * torch.tensor([0.0, 1.0])).numpy(), rtol=1e-4)


def test_row_weights_scale_each_rows_distillation_loss():
    logits, projected = torch.zeros(2, 3), torch.nn.functional.normalize(torch.ones(2, 4), dim=-1)
    q = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])
    plain = DistillTargets(inputs=torch.zeros(2), soft_labels=q)
    weighted = DistillTargets(inputs=torch.zeros(2), soft_labels=q, weights=torch.tensor([0.5, 0.0]))
    index = torch.tensor([0, 1])
    np.testing.assert_allclose(
        distillation_loss(logits, projected, weighted, index)[0].numpy(),
        (distillation_loss(logits, projected, plain, index)[0] * torch.tensor([0.5, 0.0])).numpy(),
    )


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_converged_student_equals_the_teacher(temperature):
    """The student's optimum is the vote itself, not a sharpened q^T / Z (the T^2 KL at T != 1 with
    an unsoftened teacher converges to (.658, .237, .105) for q = (.5, .3, .2) at T = 2)."""
    q = torch.tensor([[0.5, 0.3, 0.2], [0.05, 0.9, 0.05]])
    logits = torch.zeros(2, 3, requires_grad=True)
    targets = DistillTargets(inputs=torch.zeros(2), soft_labels=q, temperature=temperature)
    optimiser = torch.optim.Adam([logits], lr=0.05)
    for _ in range(2000):
        optimiser.zero_grad()
        distillation_loss(logits, torch.zeros(2, 1), targets, torch.tensor([0, 1]))[0].sum().backward()
        optimiser.step()
    np.testing.assert_allclose(logits.detach().softmax(-1).numpy(), q.numpy(), atol=2e-3)


def test_soften_is_the_tempered_distribution():
    q = torch.tensor([[0.5, 0.3, 0.2]])
    expected = q**0.5 / (q**0.5).sum()
    np.testing.assert_allclose(soften(q, 2.0).numpy(), expected.numpy(), rtol=1e-6)
    np.testing.assert_allclose(soften(q, 1.0).numpy(), q.numpy(), rtol=1e-6)


def test_each_synthetic_row_is_visited_the_configured_number_of_times():
    generator = torch.Generator().manual_seed(0)
    schedule = synthetic_schedule(30, 2.0, 7, generator)
    assert len(schedule) == 7
    visits = torch.bincount(torch.cat(schedule), minlength=30)
    assert torch.all(visits == 2)
    assert max(len(s) for s in schedule) - min(len(s) for s in schedule) <= 1
    half = torch.cat(synthetic_schedule(30, 0.5, 4, generator))
    assert len(half) == 15 and len(set(half.tolist())) == 15
    assert all(len(s) == 0 for s in synthetic_schedule(30, 0.0, 3, generator))


def test_the_synthetic_budget_does_not_depend_on_the_private_set_size():
    """26 kept rows with a large private set used to be replayed tens of times per round (one
    synthetic batch of 64 per private batch); now each row is visited `passes` times."""
    model = registry.build_task_model("bow", SPEC, seed=0)
    x_priv, y_priv = _inputs("text", 640), torch.zeros(640, dtype=torch.long)
    syn = _inputs("text", 26)
    targets = DistillTargets(inputs=syn, soft_labels=torch.full((26, 24), 1 / 24), passes=2.0)
    stats = train_model(model, x_priv, y_priv, TrainSettings(epochs=3, batch_size=64), seed=0, distill=targets)
    assert stats["steps"] == 30 and stats["synthetic-visits"] == 52


def test_batchnorm_statistics_come_from_one_mostly_private_batch():
    """Private and synthetic rows go through one forward: BatchNorm's running mean ends close to the
    private data's, not halfway to the synthetic set's (separate forwards gave each half a say)."""
    torch.manual_seed(0)
    model = registry.build_task_model("cnn-small", SPEC, seed=0)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.momentum = None  # cumulative average: the mean of every batch's statistics
    x_priv = torch.full((256, 3, 32, 32), -0.5) + 0.01 * torch.randn(256, 3, 32, 32)
    y_priv = torch.zeros(256, dtype=torch.long)
    syn = torch.full((32, 3, 32, 32), 0.9)
    targets = DistillTargets(inputs=syn, soft_labels=torch.full((32, 24), 1 / 24), passes=1.0)
    train_model(model, x_priv, y_priv, TrainSettings(epochs=1, lr=0.0, batch_size=64), seed=0, distill=targets)
    with torch.no_grad():
        conv = model.backbone.features[0]
        private_mean = conv(x_priv[:64]).mean((0, 2, 3))
        synthetic_mean = conv(syn).mean((0, 2, 3))
    share = ((bn.running_mean - private_mean) / (synthetic_mean - private_mean)).median()
    assert share == pytest.approx(32 / (256 + 32), abs=0.03)


def test_fit_to_convergence_stops_early_and_keeps_the_best_epoch():
    labels = torch.arange(96) % 24
    x = to_model_input("image", domain.generate(labels.numpy(), 0).images)
    val_labels = torch.arange(48) % 24
    x_val = to_model_input("image", domain.generate(val_labels.numpy(), 1).images)
    model = registry.build_task_model("cnn-small", SPEC, seed=0)
    stats = fit_to_convergence(
        model, (x, labels), (x_val, val_labels), TrainSettings(lr=5e-3, batch_size=32), 0, max_epochs=60, patience=3
    )
    assert stats["epochs"] < 60 and stats["epochs"] - stats["best-epoch"] == 3
    assert evaluate_model(model, x_val, val_labels)["accuracy"] == pytest.approx(stats["val-accuracy"])


def test_distillation_pulls_predictions_towards_soft_labels():
    model = registry.build_task_model("bow", SPEC, seed=0)
    x_priv = _inputs("text", 16)
    y_priv = torch.zeros(16, dtype=torch.long)
    syn = to_model_input("text", ["a blue flower with eight petals"] * 16)
    q = torch.zeros(16, 24)
    q[:, 5] = 1.0
    targets = DistillTargets(inputs=syn, soft_labels=q, lambda_kl=5.0, passes=20.0)
    train_model(model, x_priv, y_priv, TrainSettings(epochs=20, lr=1e-2, batch_size=16), seed=0, distill=targets)
    assert infer(model, syn).probs[:, 5].mean() > 0.5


def test_augmentation_sees_every_batch_private_and_synthetic_rows_together():
    seen = []

    def spy(batch, generator):
        seen.append(len(batch))
        return batch

    model = registry.build_task_model("cnn-small", SPEC, seed=0)
    x, y = _inputs("image", 40), torch.zeros(40, dtype=torch.long)
    targets = DistillTargets(inputs=_inputs("image", 10), soft_labels=torch.full((10, 24), 1 / 24), passes=1.0)
    train_model(model, x, y, TrainSettings(epochs=1, batch_size=16, augment=spy), seed=0, distill=targets)
    assert seen == [16 + 4, 16 + 3, 8 + 3]


def test_training_with_dropout_does_not_depend_on_what_the_process_ran_before():
    """A Ray worker serves many simulated nodes in an order that varies from run to run: the
    `transformer` client's dropout must not draw from where the global generator happens to be,
    and training must leave that generator as it found it."""
    labels = torch.arange(48) % 24
    x = to_model_input("text", [f"a red flower with {n} petals" for n in range(48)])
    weights = []
    for history in (0, 1):
        model = registry.build_task_model("transformer", SPEC, seed=0)
        torch.manual_seed(history)  # another process history
        before = torch.random.get_rng_state()
        train_model(model, x, labels, TrainSettings(epochs=1, batch_size=16), seed=3)
        fit_to_convergence(model, (x, labels), (x, labels), TrainSettings(batch_size=16), 4, max_epochs=2, patience=1)
        assert torch.equal(torch.random.get_rng_state(), before)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
