"""Client device plumbing (client-device, client-amp), checked on the CPU: the fallback of
"auto" with its reason, the error of "cuda" without a GPU, and training, evaluation and inference
that follow the model's device and hand CPU arrays back."""

import pytest
import torch

from fedmmkt_strategy.config import ConfigError, RunConfig
from task_models import device as D
from task_models.registry import ModelSpec, build_task_model
from task_models.training import DistillTargets, TrainSettings, evaluate_model, infer, train_model


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "_SAID", set())


def test_auto_falls_back_to_the_cpu_once_with_the_reason(caplog):
    caplog.set_level("INFO")
    assert D.resolve_client_device("auto") == torch.device("cpu")
    assert D.resolve_client_device("auto") == torch.device("cpu")
    lines = [r.getMessage() for r in caplog.records if "client-device = 'auto'" in r.getMessage()]
    assert len(lines) == 1 and ("client-resources-num-gpus" in lines[0] or "CPU build" in lines[0])


def test_cuda_without_a_gpu_is_an_error_naming_the_key():
    with pytest.raises(RuntimeError, match="client-device = 'cuda' but .*use client-device = 'auto' or 'cpu'"):
        D.resolve_client_device("cuda")
    assert D.resolve_client_device("cpu") == torch.device("cpu")


def test_auto_takes_a_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert D.resolve_client_device("auto") == torch.device("cuda")


def test_autocast_only_on_cuda_and_only_when_asked():
    assert isinstance(D.autocast(torch.device("cuda"), True), torch.autocast)
    assert not isinstance(D.autocast(torch.device("cuda"), False), torch.autocast)
    assert not isinstance(D.autocast(torch.device("cpu"), True), torch.autocast)


def test_client_device_is_validated_before_any_work():
    with pytest.raises(ConfigError, match="client-device = 'tpu'"):
        RunConfig.from_run_config({"client-device": "tpu"})


def test_the_loops_run_where_the_model_is_and_return_cpu_arrays():
    """With amp on and the model on the CPU, nothing changes (autocast is CUDA-only): the same
    seeds give the same weights as amp off, and inference hands back CPU numpy arrays."""
    spec = ModelSpec(num_classes=4, fusion_dim=8, vocab_size=50, image_size=32)
    x, y = torch.randn(24, 3, 32, 32), torch.arange(24) % 4
    distill = DistillTargets(
        inputs=torch.randn(6, 3, 32, 32),
        soft_labels=torch.full((6, 4), 0.25),
        fused=torch.randn(6, 8),
        weights=torch.ones(6),
    )
    states = []
    for amp in (False, True):
        model = build_task_model("cnn-small", spec, seed=0)
        assert D.model_device(model) == torch.device("cpu")
        train_model(model, x, y, TrainSettings(batch_size=8, amp=amp), seed=1, distill=distill)
        states.append(model.state_dict())
        out = infer(model, x[:5], amp=amp)
        assert out.probs.shape == (5, 4) and out.embedding.shape == (5, 8)
        assert evaluate_model(model, x, y, amp=amp)["num-examples"] == 24
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
