"""The server's text-to-image model `G`: build, load, sample and train a `StableDiffusionPipeline`.

The toy world's tiny latent model and real Stable Diffusion are the same class, loaded and
trained by the same functions; only the folder or hub id differs (ALGORITHM.md, "Two worlds").
Training is the standard diffusers text-to-image loop (VAE posterior sample times the scaling
factor, DDPM noise, epsilon or v MSE); its loss and trainable-parameter selection are shared by
pre-training from scratch (here) and by the per-round fine-tuning of step 5 (`finetune.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import EMAModel, cast_training_params
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase

from fedmmkt_strategy.generative.loading import from_pretrained_or_explain
from fedmmkt_strategy.generative.memory import cuda_batch_size
from fedmmkt_strategy.reporting.progress import track

#: SD-1.x noise schedule; ``steps_offset``/``clip_sample`` silence diffusers deprecation warnings.
SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    steps_offset=1,
    clip_sample=False,
)
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
LORA_ADAPTER = "fedmmkt"
#: Above this many UNet parameters step 5 (`finetune.py`) trains LoRA adapters by default.
LORA_AUTO_THRESHOLD = 50_000_000


def build_tiny_pipeline(
    tokenizer: PreTrainedTokenizerBase, image_size: int = 32, seed: int = 0
) -> StableDiffusionPipeline:
    """A randomly initialised tiny latent Stable Diffusion for the toy world (no hub).

    Components as measured in ``notes/tiny-models-cpu.md`` section 2: a 0.41 M CLIP text
    encoder over the closed-vocabulary tokenizer, a 0.62 M AutoencoderKL (x2 downsampling, 4
    latent channels) and a 1.53 M UNet with cross-attention at latent resolution. Sampling uses
    DDIM. The initialisation is seeded without touching the global torch RNG.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=128,
                intermediate_size=256,
                num_hidden_layers=3,
                num_attention_heads=4,
                max_position_embeddings=tokenizer.model_max_length,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                projection_dim=128,
            )
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=16,
            sample_size=image_size,
            mid_block_add_attention=False,
        )
        unet = UNet2DConditionModel(
            sample_size=image_size // 2,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            cross_attention_dim=128,
            attention_head_dim=4,
            norm_num_groups=8,
        )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULE, set_alpha_to_one=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _ready_for_inference(pipe)


def load_pipeline(path_or_id: str, dtype: torch.dtype | None = None, device: str = "cpu") -> StableDiffusionPipeline:
    """Load `G` from a local folder or a hub id (e.g. ``"stable-diffusion-v1-5/stable-diffusion-v1-5"``).

    The sampler is switched to DDIM (the algorithm's sampler, whatever the checkpoint ships)
    and the safety checker is left out, as for research use.

    Raises
    ------
    ModelUnavailableError
        When the id is neither a folder nor cached and the hub is unreachable.
    """
    pipe = from_pretrained_or_explain(
        lambda source: StableDiffusionPipeline.from_pretrained(
            source, dtype=dtype, safety_checker=None, requires_safety_checker=False
        ),
        path_or_id,
        "text-to-image pipeline",
    )
    if not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return _ready_for_inference(pipe.to(device))


def _ready_for_inference(pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.eval()
    return pipe


def default_size(pipe: StableDiffusionPipeline) -> int:
    """The pixel size the pipeline was trained at (32 for the tiny model, 512 for SD 1.5)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def generate_images(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    *,
    seed: int,
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    batch_size: int = 64,
    height: int | None = None,
    width: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Generate one image per prompt; uint8 array [N, H, W, 3].

    All initial latents are drawn at once from a generator seeded with `seed`, so the output
    for a prompt depends on the seed and its position only, not on `batch_size`. With DDIM
    (eta 0) the sampler is deterministic from there. ``guidance_scale <= 1`` disables CFG.
    On CUDA, `batch_size` is lowered to what fits in free memory (`memory.cuda_batch_size`).
    """
    height = height or default_size(pipe)
    width = width or default_size(pipe)
    if len(prompts):
        batch_size = cuda_batch_size(
            min(batch_size, len(prompts)),
            pipe.device,
            lambda: pipe(
                [prompts[0]],
                height=height,
                width=width,
                num_inference_steps=1,
                guidance_scale=guidance_scale,
                output_type="np",
            ),
        )
    shape = (
        len(prompts),
        pipe.unet.config.in_channels,
        height // pipe.vae_scale_factor,
        width // pipe.vae_scale_factor,
    )
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn(shape, generator=generator).to(pipe.device, pipe.unet.dtype)
    images = np.zeros((len(prompts), height, width, 3), np.uint8)
    starts = range(0, len(prompts), batch_size)
    for start in track(starts, "generate", "batch", enabled=progress):
        stop = min(start + batch_size, len(prompts))
        out = pipe(
            list(prompts[start:stop]),
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            latents=latents[start:stop],
            output_type="np",
        ).images
        images[start:stop] = np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
    return images


@torch.no_grad()
def text_embeddings(pipe: StableDiffusionPipeline, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Pooled text-encoder embeddings [N, hidden] (float32) of `texts`, as `G` reads them.

    Round 1 of MultiRepFusion uses these as the text-side anchor before any fused vector
    exists (ALGORITHM.md, step 4a).
    """
    out = []
    for start in range(0, len(texts), batch_size):
        ids = _tokenize(pipe.tokenizer, list(texts[start : start + batch_size])).to(pipe.device)
        out.append(pipe.text_encoder(ids).pooler_output.float().cpu())
    hidden = pipe.text_encoder.config.hidden_size
    return torch.cat(out).numpy() if out else np.zeros((0, hidden), np.float32)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] to float [N, 3, H, W] in [-1, 1], the VAE's input range."""
    return torch.from_numpy(np.asarray(images, np.uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode_latent_stats(
    vae: AutoencoderKL, images: np.ndarray, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior of each image, unscaled.

    Encoding once and drawing ``mean + std * eps`` per step is the same as calling
    ``latent_dist.sample()`` every step, without re-running the encoder.
    """
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        x = images_to_tensor(images[start : start + batch_size]).to(vae.device, vae.dtype)
        dist = vae.encode(x).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def train_vae(
    vae: AutoencoderKL,
    images: np.ndarray,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    kl_weight: float = 1e-6,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Train the autoencoder (MSE + tiny KL, cosine lr), then set its latent scaling factor.

    Returns the mean reconstruction MSE of the last tenth of the steps. The scaling factor is
    ``1 / std(latents)`` (SD's 0.18215 was found the same way); without it the UNet sees
    mis-scaled latents (pitfall 2 of the notes).
    """
    generator = torch.Generator().manual_seed(seed)
    data = images_to_tensor(images)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(steps))
    vae.train()
    losses = []
    for _ in track(range(steps), "vae", "step", enabled=progress):
        x = data[torch.randint(len(data), (batch_size,), generator=generator)].to(vae.device)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator).to(x.device)
        mse = F.mse_loss(vae.decode(z).sample, x)
        loss = mse + kl_weight * dist.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(mse.item())
    vae.eval()
    mean, std = encode_latent_stats(vae, images)
    z = mean + std * torch.randn(mean.shape, generator=generator)
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return float(np.mean(losses[-max(1, steps // 10) :]))


def pretrain_denoiser(
    pipe: StableDiffusionPipeline,
    images: np.ndarray,
    captions: Sequence[Sequence[str]],
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    warmup_steps: int = 100,
    ema_decay: float = 0.995,
    caption_dropout: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Train UNet and text encoder from scratch on images with several captions each.

    The VAE must already be trained (`train_vae`). Each step draws images and, per image, one
    of its captions; 10 % of captions become ``""`` so classifier-free guidance works. The lr is
    constant after a linear warm-up: on the toy domain a cosine decay of the same peak reached
    26 % GenAcc after 1200 steps where the constant lr reached 42 %. Weights follow an EMA
    (decay 0.995 with the ``(1+s)/(10+s)`` warm-up), copied into the pipeline at the end.
    Returns the mean loss of the last tenth of the steps.
    """
    per_image = len(captions[0])
    flat = [c for image_captions in captions for c in image_captions]
    image_index = np.repeat(np.arange(len(images)), per_image)
    losses = _train_denoiser(
        pipe,
        images,
        image_index,
        flat,
        weights=None,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        warmup_steps=warmup_steps,
        ema_decay=ema_decay,
        caption_dropout=caption_dropout,
        train_text_encoder=True,
        use_lora=False,
        lora_rank=0,
        seed=seed,
        progress=progress,
    )
    return float(np.mean(losses[-max(1, steps // 10) :]))


def merge_lora(pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """Fold trained LoRA adapters into the UNet weights, so `save_pretrained` writes a plain UNet."""
    if LORA_ADAPTER in (getattr(pipe.unet, "peft_config", None) or {}):
        pipe.unet.fuse_lora()
        pipe.unet.unload_lora()
    return pipe


def _train_denoiser(
    pipe: StableDiffusionPipeline,
    images: np.ndarray,
    image_index: np.ndarray,
    captions: list[str],
    *,
    weights: np.ndarray | None,
    steps: int,
    lr: float,
    batch_size: int,
    warmup_steps: int,
    ema_decay: float | None,
    caption_dropout: float,
    train_text_encoder: bool,
    use_lora: bool,
    lora_rank: int,
    seed: int,
    progress: bool,
) -> list[float]:
    """The one training loop behind pre-training and fine-tuning; pairs are (image_index[j], captions[j]).

    Returns the loss of every step.
    """
    unet, text_encoder, vae = pipe.unet, pipe.text_encoder, pipe.vae
    device = unet.device
    generator = torch.Generator().manual_seed(seed)
    latent_mean, latent_std = encode_latent_stats(vae, images)
    input_ids = _tokenize(pipe.tokenizer, captions)
    empty_ids = _tokenize(pipe.tokenizer, [""])[0]
    pair_weights = torch.ones(len(captions)) if weights is None else torch.as_tensor(weights).float()
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    grad_flags = {m: {n: p.requires_grad for n, p in m.named_parameters()} for m in (unet, text_encoder)}
    trainable = _set_trainable(pipe, train_text_encoder, use_lora, lora_rank)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_constant(warmup_steps))
    ema = EMAModel(trainable, decay=ema_decay) if ema_decay is not None else None
    unet.train()
    text_encoder.train(train_text_encoder)
    batch_size = _fit_training_batch(pipe, noise_scheduler, latent_mean, input_ids, trainable, batch_size, generator)
    losses = []
    for _ in track(range(steps), "denoiser", "step", enabled=progress):
        pick = torch.randint(len(captions), (batch_size,), generator=generator)
        rows = torch.as_tensor(image_index)[pick]
        ids = input_ids[pick].clone()
        ids[torch.rand(len(pick), generator=generator) < caption_dropout] = empty_ids
        eps = torch.randn(latent_mean[rows].shape, generator=generator)
        latents = (latent_mean[rows] + latent_std[rows] * eps) * vae.config.scaling_factor
        loss = _denoising_loss(
            unet,
            text_encoder,
            noise_scheduler,
            latents.to(device, unet.dtype),
            ids.to(device),
            pair_weights[pick].to(device),
            generator,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        if ema is not None:
            ema.step(trainable)
        losses.append(loss.item())
    if ema is not None:
        ema.copy_to(trainable)
    for module, flags in grad_flags.items():
        for name, p in module.named_parameters():
            p.requires_grad_(flags.get(name, False))
    _ready_for_inference(pipe)
    return losses


def _fit_training_batch(
    pipe: StableDiffusionPipeline,
    noise_scheduler: DDPMScheduler,
    latent_mean: torch.Tensor,
    input_ids: torch.Tensor,
    trainable: list[torch.nn.Parameter],
    batch_size: int,
    generator: torch.Generator,
) -> int:
    """On CUDA, the training batch that fits: a forward/backward probe on one pair, gradients then dropped."""
    unet, device = pipe.unet, pipe.unet.device

    def probe() -> None:
        latents = latent_mean[:1].to(device, unet.dtype) * pipe.vae.config.scaling_factor
        weights = torch.ones(1, device=device)
        _denoising_loss(
            unet, pipe.text_encoder, noise_scheduler, latents, input_ids[:1].to(device), weights, generator
        ).backward()
        for p in trainable:
            p.grad = None

    return cuda_batch_size(batch_size, device, probe)


def _denoising_loss(
    unet: UNet2DConditionModel,
    text_encoder: torch.nn.Module,
    noise_scheduler: DDPMScheduler,
    latents: torch.Tensor,
    input_ids: torch.Tensor,
    weights: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """The standard diffusers text-to-image step: noise, predict, per-sample weighted MSE."""
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    timesteps = torch.randint(noise_scheduler.config.num_train_timesteps, (len(latents),), generator=generator).to(
        latents.device
    )
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    text_states = text_encoder(input_ids, return_dict=False)[0]
    prediction = unet(noisy, timesteps, text_states, return_dict=False)[0]
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (weights * per_sample).mean()


def _set_trainable(
    pipe: StableDiffusionPipeline, train_text_encoder: bool, use_lora: bool, lora_rank: int
) -> list[torch.nn.Parameter]:
    """Choose what learns: UNet weights or its LoRA adapter, plus optionally the text encoder."""
    unet = pipe.unet
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(train_text_encoder)
    if use_lora:
        if LORA_ADAPTER not in (getattr(unet, "peft_config", None) or {}):
            unet.add_adapter(
                LoraConfig(
                    r=lora_rank,
                    lora_alpha=lora_rank,
                    init_lora_weights="gaussian",
                    target_modules=list(LORA_TARGETS),
                ),
                adapter_name=LORA_ADAPTER,
            )
        unet.requires_grad_(False)
        for name, p in unet.named_parameters():
            p.requires_grad_("lora_" in name)
        cast_training_params(unet, torch.float32)  # fp16 checkpoints: adapters still learn in fp32
    else:
        unet.requires_grad_(True)
    params = [p for p in unet.parameters() if p.requires_grad]
    if train_text_encoder:
        params += list(pipe.text_encoder.parameters())
    return params


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> torch.Tensor:
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def _warmup_constant(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0


def _cosine(total: int):
    return lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))


def denoiser_state(pipe: StableDiffusionPipeline) -> dict[str, object]:
    """What fine-tuning changed in `G`, for a checkpoint: the LoRA adapter when one is attached
    (small; the base weights are the loaded ones), else the denoiser's full weights."""
    unet = pipe.unet
    config = (getattr(unet, "peft_config", None) or {}).get(LORA_ADAPTER)
    if config is None:
        return {"kind": "full", "weights": {k: v.detach().clone() for k, v in unet.state_dict().items()}}
    weights = get_peft_model_state_dict(unet, adapter_name=LORA_ADAPTER)
    return {"kind": "lora", "rank": int(config.r), "weights": {k: v.detach().clone() for k, v in weights.items()}}


def load_denoiser_state(pipe: StableDiffusionPipeline, state: dict[str, object]) -> None:
    """Put a `denoiser_state` back into a freshly loaded pipeline (adding the adapter if needed)."""
    unet = pipe.unet
    if state["kind"] == "full":
        unet.load_state_dict(state["weights"])
    else:
        if LORA_ADAPTER not in (getattr(unet, "peft_config", None) or {}):
            rank = int(state["rank"])
            unet.add_adapter(
                LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS)),
                adapter_name=LORA_ADAPTER,
            )
        result = set_peft_model_state_dict(unet, state["weights"], adapter_name=LORA_ADAPTER)
        if result.unexpected_keys:
            raise ValueError(f"LoRA checkpoint has unexpected keys: {result.unexpected_keys[:5]}")
    _ready_for_inference(pipe)
