from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from fedmmkt_strategy.generative import t2i
from fedmmkt_strategy.generative.finetune import finetune_denoiser
from worlds.domain import class_prompt

PROMPTS = [class_prompt(0), class_prompt(7), class_prompt(13), class_prompt(23)]


def _generate(pipe, seed=1, guidance=3.0, batch_size=64, prompts=PROMPTS):
    return t2i.generate_images(
        pipe, prompts, seed=seed, num_inference_steps=3, guidance_scale=guidance, batch_size=batch_size
    )


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_pipeline_is_a_stock_sd_pipeline_with_ddim(pipe):
    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.safety_checker is None
    assert t2i.default_size(pipe) == 32
    assert pipe.text_encoder.config.max_position_embeddings == pipe.tokenizer.model_max_length


def test_generation_is_uint8_and_deterministic_for_a_seed(pipe):
    first = _generate(pipe, seed=1)
    assert first.dtype == np.uint8 and first.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(first, _generate(pipe, seed=1))
    np.testing.assert_array_equal(first, _generate(pipe, seed=1, batch_size=3))  # batching is invisible
    assert np.abs(first.astype(int) - _generate(pipe, seed=2)).mean() > 1.0


def test_guidance_changes_the_output(pipe):
    with_cfg, without = _generate(pipe, guidance=3.0), _generate(pipe, guidance=1.0)
    assert np.abs(with_cfg.astype(int) - without).mean() > 0.5


def test_save_and_load_round_trip_through_the_paper_loader(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = t2i.load_pipeline(str(tmp_path))
    assert isinstance(loaded, StableDiffusionPipeline) and isinstance(loaded.scheduler, DDIMScheduler)
    np.testing.assert_array_equal(_generate(pipe), _generate(loaded))


def test_finetune_weights_scale_the_loss(pipe, public):
    images, _, captions = public
    kwargs = dict(steps=2, lr=0.0, batch_size=8, seed=3)
    pairs = images[:16], [c[0] for c in captions[:16]]
    plain = finetune_denoiser(pipe, *pairs, **kwargs)
    doubled = finetune_denoiser(pipe, *pairs, weights=np.full(16, 2.0), **kwargs)
    assert doubled == pytest.approx(2 * plain, rel=1e-5)


def test_finetune_learns_and_touches_only_the_denoiser(pipe, public):
    images, _, captions = public
    pairs = images[:32], [c[0] for c in captions[:32]]
    vae, text_encoder, unet = _state(pipe.vae), _state(pipe.text_encoder), _state(pipe.unet)

    def probe() -> float:  # lr 0: the loss on fixed noise draws, without changing anything
        return finetune_denoiser(pipe, *pairs, steps=4, lr=0.0, batch_size=32, seed=9)

    before = probe()
    finetune_denoiser(pipe, *pairs, steps=25, lr=2e-3, batch_size=16, seed=0)
    assert probe() < 0.8 * before
    assert _same(vae, _state(pipe.vae)) and _same(text_encoder, _state(pipe.text_encoder))
    assert not _same(unet, _state(pipe.unet))
    assert not pipe.unet.training and not pipe.text_encoder.training


def test_lora_trains_adapters_only_and_merges_for_saving(pipe, public, tmp_path):
    images, _, captions = public
    base = _state(pipe.unet)
    before = _generate(pipe)
    finetune_denoiser(
        pipe,
        images[:16],
        [c[0] for c in captions[:16]],
        steps=5,
        lr=5e-2,
        batch_size=8,
        seed=0,
        use_lora=True,
        lora_rank=4,
    )
    lora_names = [n for n, _ in pipe.unet.named_parameters() if "lora_" in n]
    assert lora_names
    assert all(torch.equal(v, base[k]) for k, v in _state(pipe.unet).items() if k in base)
    adapted = _generate(pipe)
    assert np.abs(adapted.astype(int) - before).mean() > 0.5

    t2i.merge_lora(pipe)
    assert not any("lora_" in n for n, _ in pipe.unet.named_parameters())
    merged = _generate(pipe)
    assert np.abs(merged.astype(int) - adapted).max() <= 1
    pipe.save_pretrained(tmp_path)
    np.testing.assert_array_equal(merged, _generate(t2i.load_pipeline(str(tmp_path))))


def test_vae_training_sets_unit_latent_scale(pipe, public):
    images = public[0]
    t2i.train_vae(pipe.vae, images, steps=3, batch_size=16, seed=0)
    mean, std = t2i.encode_latent_stats(pipe.vae, images)
    latents = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    assert float((latents * pipe.vae.config.scaling_factor).std()) == pytest.approx(1.0, abs=0.05)


def test_pretrain_denoiser_trains_text_encoder_too(pipe, public):
    images, _, captions = public
    text_encoder = _state(pipe.text_encoder)
    loss = t2i.pretrain_denoiser(pipe, images, captions, steps=4, batch_size=8, warmup_steps=2, seed=0)
    assert np.isfinite(loss)
    assert not _same(text_encoder, _state(pipe.text_encoder))
    assert not pipe.unet.training


def test_text_embeddings_are_pooled_per_text(pipe):
    emb = t2i.text_embeddings(pipe, PROMPTS + [PROMPTS[0]], batch_size=2)
    assert emb.shape == (5, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(emb[0], emb[4], atol=1e-6)
    assert not np.allclose(emb[0], emb[1])
