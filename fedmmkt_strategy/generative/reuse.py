"""Generations of the untouched pre-trained T2I model, reused across runs (`fedmmkt_strategy.memo`).

Before its first T2I update every run of a seed renders the same prompts from the same noise:
the round-0 score's 240 images and the round-1 pool (and, for strategies that never update the
T2I model, every refresh). `PretrainedGenerations` renders them once per cache and reads them
back afterwards. The key holds the weights' digest (T2I model and captioner), the sampler, the
prompts, the seed, the batch size, the device and the dtype, so a fine-tuned model, another
sampler or another seed is rendered anew; once the weights differ from those loaded at the start
of the run, nothing is stored at all (those images never recur).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from diffusers import StableDiffusionPipeline

from fedmmkt_strategy.generative import captioner, t2i
from fedmmkt_strategy.generative.captioner import caption_images
from fedmmkt_strategy.generative.t2i import generate_images
from fedmmkt_strategy.memo import code_digest, memo_root, remembered, weights_digest


class PretrainedGenerations:
    """Renders (and captions) prompts with `pipe`, through the memo while `pipe` still holds the
    weights it had when this object was made. ``cache_dir`` None: never remembered."""

    def __init__(self, pipe: StableDiffusionPipeline, model: Any, processor: Any, cache_dir: str | None) -> None:
        self.pipe, self.captioner, self.processor = pipe, model, processor
        self.root = memo_root(cache_dir) if cache_dir is not None else None
        self.pretrained = self._t2i_digest() if self.root is not None else None
        self.hits = 0

    def _t2i_digest(self) -> str:
        return weights_digest(self.pipe.unet, self.pipe.text_encoder, self.pipe.vae)

    def images(
        self, prompts: list[str], seed: int, *, steps: int, guidance: float, batch_size: int, progress: bool = False
    ) -> np.ndarray:
        """`generate_images` of the prompts (uint8 [N, H, W, 3])."""
        key = self._key(prompts, seed, steps, guidance, batch_size)
        render = (prompts, seed, steps, guidance, batch_size, progress)
        return self._remember("generations", key, lambda: {"images": self._render(*render)})["images"]

    def captioned(
        self, prompts: list[str], seed: int, *, steps: int, guidance: float, batch_size: int, progress: bool = False
    ) -> tuple[np.ndarray, list[str]]:
        """`generate_and_caption`: the images and the captioner's caption of each (a `GeneratorFn`
        once the sampler arguments are bound)."""
        key = {**self._key(prompts, seed, steps, guidance, batch_size), "captioner": weights_digest(self.captioner)}

        def compute() -> dict[str, np.ndarray]:
            images = self._render(prompts, seed, steps, guidance, batch_size, progress)
            return {"images": images, "captions": np.array(caption_images(self.captioner, self.processor, images))}

        arrays = self._remember("captioned", key, compute)
        return arrays["images"], [str(c) for c in arrays["captions"]]

    def _render(
        self, prompts: list[str], seed: int, steps: int, guidance: float, batch_size: int, progress: bool
    ) -> np.ndarray:
        return generate_images(
            self.pipe,
            prompts,
            seed=seed,
            num_inference_steps=steps,
            guidance_scale=guidance,
            batch_size=batch_size,
            progress=progress,
        )

    def _key(self, prompts: list[str], seed: int, steps: int, guidance: float, batch_size: int) -> dict[str, Any]:
        unet = self.pipe.unet
        return {
            "t2i": self.pretrained,
            "code": code_digest(t2i, captioner),
            "scheduler": dict(self.pipe.scheduler.config),
            "prompts": prompts,
            "seed": seed,
            "steps": steps,
            "guidance": guidance,
            "batch_size": batch_size,
            "device": unet.device.type,
            "dtype": str(unet.dtype),
        }

    def _remember(self, kind: str, key: dict[str, Any], compute: Any) -> dict[str, np.ndarray]:
        untouched = self.root is not None and self._t2i_digest() == self.pretrained
        arrays, hit = remembered(self.root if untouched else None, kind, key, compute)
        self.hits += hit
        return arrays
