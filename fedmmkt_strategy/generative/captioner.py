"""The server's image captioner `B` (BLIP): build, load, caption and train.

The toy world's tiny BLIP and ``Salesforce/blip-image-captioning-base`` are the same classes
(`BlipForConditionalGeneration` + a `BlipProcessor`), saved and loaded together from one folder,
so captioning code never knows which one it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoProcessor,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    PreTrainedTokenizerBase,
)

from fedmmkt_strategy.generative.loading import from_pretrained_or_explain, no_loading_bars
from fedmmkt_strategy.reporting.progress import track


def build_tiny_captioner(
    tokenizer: PreTrainedTokenizerBase, image_size: int = 32, seed: int = 0
) -> tuple[BlipForConditionalGeneration, BlipProcessor]:
    """A randomly initialised 0.7 M-parameter BLIP and its processor (notes section 4).

    ``sep_token_id`` is the tokenizer's eos: BLIP's `generate` stops on it. The processor maps
    images to [-1, 1] (mean/std 0.5) at `image_size`, like the T2I model's VAE sees them.
    """
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        encoder_hidden_size=128,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        sep_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=4,
    )
    config = BlipConfig(vision_config=vision_config, text_config=text_config, projection_dim=128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config)
    image_processor = BlipImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return model.eval(), BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_captioner(model: BlipForConditionalGeneration, processor: BlipProcessor, path: str | Path) -> None:
    """Write model and processor into one folder, the layout of the hub's BLIP checkpoints."""
    with no_loading_bars():
        model.save_pretrained(path)
        processor.save_pretrained(path)


def load_captioner(
    path_or_id: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[BlipForConditionalGeneration, BlipProcessor]:
    """Load `B` from a folder or a hub id (e.g. ``"Salesforce/blip-image-captioning-base"``),
    on `device` in `dtype` (the checkpoint's own when None).

    Raises
    ------
    ModelUnavailableError
        When the id is neither a folder nor cached and the hub is unreachable.
    """
    processor = from_pretrained_or_explain(AutoProcessor.from_pretrained, path_or_id, "captioner")
    model = from_pretrained_or_explain(
        lambda source: BlipForConditionalGeneration.from_pretrained(source, dtype=dtype), path_or_id, "captioner"
    )
    return model.to(device).eval(), processor


def pixel_values(processor: BlipProcessor, images: np.ndarray) -> torch.Tensor:
    """The processor's model input for uint8 images [N, H, W, 3] (resize and normalise)."""
    return processor(images=list(np.asarray(images, np.uint8)), return_tensors="pt").pixel_values


@torch.no_grad()
def caption_images(
    model: BlipForConditionalGeneration,
    processor: BlipProcessor,
    images_uint8: np.ndarray,
    batch_size: int = 128,
    max_new_tokens: int = 24,
    progress: bool = False,
) -> list[str]:
    """One greedy caption per image, special tokens stripped."""
    captions: list[str] = []
    starts = range(0, len(images_uint8), batch_size)
    for start in track(starts, "caption", "batch", enabled=progress):
        pixels = pixel_values(processor, images_uint8[start : start + batch_size])
        ids = model.generate(
            pixel_values=pixels.to(model.device, model.dtype),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
        )
        captions += [c.strip() for c in processor.batch_decode(ids, skip_special_tokens=True)]
    return captions


def train_captioner(
    model: BlipForConditionalGeneration,
    processor: BlipProcessor,
    images_uint8: np.ndarray,
    captions: Sequence[Sequence[str]],
    *,
    steps: int,
    lr: float = 5e-4,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Teacher-forced captioning loss (BLIP's, label smoothing 0.1) on images with several captions each.

    Each step draws images and one of each image's captions. The first token is set to BLIP's
    decoder start (``bos_token_id``), as `generate` does, and padding is ignored in the loss.
    Returns the mean loss of the last tenth of the steps; the model is left in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    tokenizer = processor.tokenizer
    per_image = len(captions[0])
    flat = [c for image_captions in captions for c in image_captions]
    tokens = tokenizer(
        flat,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    pixels = pixel_values(processor, images_uint8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    losses = []
    for _ in track(range(steps), "captioner", "step", enabled=progress):
        pick = torch.randint(len(flat), (batch_size,), generator=generator)
        input_ids = tokens.input_ids[pick].clone()
        input_ids[:, 0] = model.config.text_config.bos_token_id
        labels = input_ids.masked_fill(tokens.attention_mask[pick] == 0, -100)
        loss = model(
            pixel_values=pixels[pick // per_image].to(model.device),
            input_ids=input_ids.to(model.device),
            attention_mask=tokens.attention_mask[pick].to(model.device),
            labels=labels.to(model.device),
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return float(np.mean(losses[-max(1, steps // 10) :]))
