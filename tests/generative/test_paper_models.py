"""The paper profile's models offline: stand-ins of the real classes saved to folders and loaded back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmmkt_strategy.generative import standard_metrics
from fedmmkt_strategy.generative.captioner import caption_images, load_captioner, save_captioner
from fedmmkt_strategy.generative.device import resolve_device, resolve_dtype
from fedmmkt_strategy.generative.finetune import finetune_denoiser
from fedmmkt_strategy.generative.memory import fit_batch_size
from fedmmkt_strategy.generative.quality import resize_images
from fedmmkt_strategy.generative.t2i import generate_images, load_pipeline
from lab.paper_standins import build_blip, build_sd_pipeline, save_clip, save_word_tokenizer
from task_models.registry import ModelSpec, build_task_model

TEXTS = ["a photo of a sweet pea", "a photo of a tiger lily"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return save_word_tokenizer(tmp_path_factory.mktemp("tok"), TEXTS, 16)


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_batch_fits_the_free_memory():
    assert fit_batch_size(64, per_sample_bytes=1_000, free_bytes=10_000) == 8  # 0.8 * 10k / 1k
    assert fit_batch_size(4, per_sample_bytes=1_000, free_bytes=10_000) == 4
    assert fit_batch_size(64, per_sample_bytes=10**9, free_bytes=10) == 1


def test_auto_precision_is_float32_on_cpu_and_bfloat16_on_cuda():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="server-device = 'cuda'"):
            resolve_device("cuda")


def test_sd_architecture_loads_from_its_folder_and_lora_trains(tokenizer, tmp_path):
    build_sd_pipeline(tokenizer, "tiny", 32).save_pretrained(tmp_path / "t2i")
    pipe = load_pipeline(str(tmp_path / "t2i"), dtype=torch.float32)
    assert pipe.vae_scale_factor == 8  # SD's four-level x8 autoencoder
    images = generate_images(pipe, TEXTS, seed=0, num_inference_steps=2, batch_size=2)
    assert images.shape == (2, 32, 32, 3)
    finetune_denoiser(pipe, images, TEXTS, steps=2, lr=1e-2, batch_size=2, seed=0, use_lora=True)
    lora_b = [p for n, p in pipe.unet.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)  # B starts at zero: it learned
    assert resize_images(images, 16).shape == (2, 16, 16, 3)


def test_blip_captions_from_its_folder(tokenizer, tmp_path):
    save_captioner(*build_blip(tokenizer, "tiny", 32), tmp_path / "blip")
    model, processor = load_captioner(str(tmp_path / "blip"), dtype=torch.float32)
    captions = caption_images(model, processor, np.zeros((2, 48, 48, 3), np.uint8), max_new_tokens=4)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_clip_score_with_a_local_clip_and_a_reason_when_offline(tokenizer, tmp_path, offline):
    save_clip(tmp_path / "clip", tokenizer)
    images = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    score = standard_metrics.clip_score(images, [*TEXTS, "x"], str(tmp_path / "clip"))
    assert score.value is not None and 0.0 <= score.value <= 100.0
    missing = standard_metrics.clip_score(images, TEXTS, "no-such/clip")
    assert missing.value is None and "clip-model = 'no-such/clip'" in missing.reason


def test_inception_fid_degrades_with_its_reason_without_torch_fidelity():
    try:
        import torch_fidelity  # noqa: F401
        import torchmetrics  # noqa: F401

        pytest.skip("torchmetrics and torch-fidelity are installed: FID may compute")
    except ImportError:
        pass
    images = np.zeros((2, 32, 32, 3), np.uint8)
    outcome = standard_metrics.standard_fid(images, images)
    assert outcome.value is None and "Inception FID unavailable" in outcome.reason


@pytest.mark.parametrize(("name", "modality"), [("resnet18", "image"), ("vit-s", "image"), ("bert", "text")])
def test_paper_clients_at_tiny_width(name, modality):
    model = build_task_model(name, ModelSpec(5, fusion_dim=8, vocab_size=30, image_size=32, width_scale=0.125))
    x = torch.zeros(2, 3, 32, 32) if modality == "image" else torch.tensor([[2, 5, 6, 3, 0, 0]] * 2)
    logits, embedding = model(x)
    assert logits.shape == (2, 5) and model.project(embedding).shape == (2, 8)


def test_resnet18_at_real_width_has_resnet18_size():
    model = build_task_model("resnet18", ModelSpec(102))
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert 11.0e6 < backbone < 11.4e6  # torchvision's resnet18 without its fc: 11.18 M


def test_pretrained_clients_explain_the_switch_offline(offline):
    with pytest.raises(OSError, match="client-pretrained = true"):
        build_task_model("resnet18", ModelSpec(4, pretrained=True))
