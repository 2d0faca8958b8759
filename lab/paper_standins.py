"""Offline stand-ins for the paper profile: data and models of the real classes, built from config.

Neither the tests nor the GPU check can reach the Hugging Face hub, so they exercise the paper
code path (parquet loading, `from_pretrained` by folder, LoRA, BLIP, CLIP score) on:

- a parquet file in the Oxford-Flowers-with-captions schema (``image``, ``text``, ``label`` as a
  ClassLabel) with small procedurally coloured images, written at run time;
- a WordLevel tokenizer over the fixture's words, saved with ``save_pretrained``;
- Stable Diffusion (`StableDiffusionPipeline` with `UNet2DConditionModel`, `AutoencoderKL`,
  `CLIPTextModel`), BLIP (`BlipForConditionalGeneration`) and CLIP (`CLIPModel`) with random
  weights, either tiny or at the real models' widths (``scale="sd"``), saved to folders.

They are the same classes the real checkpoints load into, so only the folder differs.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image as PILImage
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedTokenizerFast,
)

from fedmmkt_strategy.generative.captioner import build_tiny_captioner, save_captioner
from fedmmkt_strategy.generative.t2i import SCHEDULE

Scale = Literal["tiny", "sd"]
#: A few real Oxford-102 class names; the fixture draws each in its own colour.
FLOWER_NAMES = ("pink primrose", "sweet pea", "tiger lily", "moon orchid", "globe thistle", "yellow iris")
_COLOURS = ((230, 120, 170), (200, 90, 220), (240, 120, 30), (235, 235, 250), (90, 90, 220), (240, 220, 40))


def write_flowers_parquet(path: str | Path, num_classes: int = 4, per_class: int = 12, size: int = 48, seed: int = 0):
    """A parquet file in the flowers-with-captions schema: a coloured disc per class on noise, two captions."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"image": [], "text": [], "label": []}
    yy, xx = np.mgrid[:size, :size]
    for label in range(num_classes):
        for _ in range(per_class):
            (cy, cx), r = rng.uniform(0.35, 0.65, 2) * size, rng.uniform(0.2, 0.35) * size
            image = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = _COLOURS[label % len(_COLOURS)]
            rows["image"].append({"bytes": _png(image), "path": None})
            name = FLOWER_NAMES[label % len(FLOWER_NAMES)]
            rows["text"].append([f"a photo of a {name}", f"this flower is a {name} with round petals"])
            rows["label"].append(label)
    features = Features(
        {
            "image": Image(),
            "text": [Value("string")],
            "label": ClassLabel(names=list(FLOWER_NAMES[:num_classes])),
        }
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def save_word_tokenizer(path: str | Path, texts: list[str], max_length: int) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over the words of `texts` (pad 0, CLIP-style bos/eos), saved to `path`."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "<|startoftext|>": 2, "<|endoftext|>": 3}
    words = sorted({w for t in texts for w in t.lower().replace(",", " , ").split()} | {"a", "photo", "of"})
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 2), ("<|endoftext|>", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(path)
    return tokenizer


def _text_config(tokenizer: PreTrainedTokenizerFast, scale: Scale) -> CLIPTextConfig:
    width = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    if scale == "tiny":
        width = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        projection_dim=width["hidden_size"],
        **width,
    )


def build_sd_pipeline(tokenizer: PreTrainedTokenizerFast, scale: Scale, image_size: int) -> StableDiffusionPipeline:
    """Stable Diffusion 1.x's architecture (``scale="sd"``: SD-1.5 widths, 4 levels, x8 VAE) or a tiny one."""
    if scale == "sd":
        unet_width, vae_width, heads, layers = (320, 640, 1280, 1280), (128, 256, 512, 512), 8, 2
    else:
        unet_width, vae_width, heads, layers = (32, 32, 64, 64), (16, 16, 32, 32), 4, 1
    text_config = _text_config(tokenizer, scale)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=vae_width,
        layers_per_block=layers,
        latent_channels=4,
        norm_num_groups=min(32, vae_width[0]),
        sample_size=image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=unet_width,
        layers_per_block=layers,
        cross_attention_dim=text_config.hidden_size,
        attention_head_dim=heads,
        norm_num_groups=min(32, unet_width[0]),
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULE, set_alpha_to_one=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_blip(tokenizer: PreTrainedTokenizerFast, scale: Scale, image_size: int):
    """BLIP captioning: blip-image-captioning-base's widths (``"sd"``, 384 px) or the toy-size one."""
    if scale == "tiny":
        return build_tiny_captioner(tokenizer, image_size=image_size)
    text = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=max(tokenizer.model_max_length, 40),
        bos_token_id=2,
        eos_token_id=3,
        sep_token_id=3,
        pad_token_id=0,
    )
    model = BlipForConditionalGeneration(BlipConfig(vision_config=dict(image_size=384), text_config=text))
    processor = BlipImageProcessor(size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return model.eval(), BlipProcessor(image_processor=processor, tokenizer=tokenizer)


def save_clip(path: str | Path, tokenizer: PreTrainedTokenizerFast, image_size: int = 32) -> Path:
    """A tiny random `CLIPModel` with its image processor and tokenizer, for CLIP-score plumbing."""
    config = CLIPConfig(
        text_config=_text_config(tokenizer, "tiny").to_dict(),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=8,
        ),
        projection_dim=32,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=image_size).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def build_standins(root: str | Path, scale: Scale, t2i_size: int, data_size: int, per_class: int = 12) -> dict:
    """Write data, tokenizer, SD, BLIP and CLIP folders under `root`; return the run-config keys naming them."""
    root = Path(root)
    data = write_flowers_parquet(root / "flowers.parquet", num_classes=4, per_class=per_class, size=data_size)
    texts = [f"a photo of a {n}" for n in FLOWER_NAMES] + [
        f"this flower is a {n} with round petals , a type of flower" for n in FLOWER_NAMES
    ]
    tokenizer = save_word_tokenizer(root / "tokenizer", texts, 77 if scale == "sd" else 24)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe = build_sd_pipeline(tokenizer, scale, t2i_size)
        if scale == "sd":  # 860 M UNet parameters: write half the bytes; the GPU loads bfloat16 anyway
            pipe.to(dtype=torch.bfloat16)
        pipe.save_pretrained(root / "t2i")
        save_captioner(*build_blip(tokenizer, scale, data_size), root / "blip")
        save_clip(root / "clip", tokenizer)
    return {
        "dataset": "hf",
        "hf-dataset": str(data),
        "hf-text-column": "text",
        "hf-prompt-template": "a photo of a {}",
        "text-tokenizer": str(root / "tokenizer"),
        "t2i-model": str(root / "t2i"),
        "captioner-model": str(root / "blip"),
        "clip-model": str(root / "clip"),
        "image-size": data_size,
    }
