"""Step 5's fine-tuning of `G` across rounds, with the guards a small-data fine-tune of a model on
its own outputs needs (ALGORITHM.md, step 5).

Fine-tuning a pre-trained denoiser on a few dozen of its own generations per round, with a fresh
optimiser each round and the raw iterate kept, drifts: Adam's first sign-like steps move every
weight by about the learning rate, and a self-consuming loop with no real data loses the prior.
`DenoiserFineTuner` therefore keeps, for the whole run:

- one AdamW whose state persists across rounds, with a linear warm-up over the run's first steps;
- an exponential moving average (fixed decay) of the trained weights: the pipeline always samples
  with the average, the optimiser keeps stepping the raw iterate;
- replay of the server's own public pairs (its real, imperfect pre-training data) in every batch.

Real Stable Diffusion trains LoRA adapters (peft) the same way; the EMA then covers the adapters.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline

from fedmmkt_strategy.generative.t2i import (
    LORA_AUTO_THRESHOLD,
    _denoising_loss,
    _fit_training_batch,
    _ready_for_inference,
    _set_trainable,
    _tokenize,
    encode_latent_stats,
)
from fedmmkt_strategy.reporting.progress import track


@dataclass(frozen=True)
class FineTuneSettings:
    """The fine-tuning recipe (run-config keys ``t2i-*``).

    Attributes
    ----------
    lr, batch_size
        AdamW learning rate (after warm-up) and pairs per step, replayed pairs included.
    warmup_steps
        Steps of linear lr warm-up at the start of the run (not of every round).
    ema_decay
        Decay of the weight average the pipeline samples with; 0 samples with the raw iterate.
    replay_fraction
        Share of every batch drawn from the public pairs (0 when none are given).
    caption_dropout
        Share of captions replaced by ``""`` so classifier-free guidance keeps working.
    use_lora, lora_rank
        LoRA adapters instead of the UNet's weights; ``None`` picks LoRA for large UNets only.
    """

    lr: float = 1e-4
    batch_size: int = 32
    warmup_steps: int = 10
    ema_decay: float = 0.9
    replay_fraction: float = 0.5
    caption_dropout: float = 0.1
    use_lora: bool | None = None
    lora_rank: int = 8


@dataclass(frozen=True)
class PairSet:
    """Training pairs with their VAE posteriors computed once: image j of pair k is ``image_index[k]``."""

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    image_index: torch.Tensor
    input_ids: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def encode(
        cls,
        pipe: StableDiffusionPipeline,
        images: np.ndarray,
        captions: Sequence[str],
        image_index: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> PairSet:
        mean, std = encode_latent_stats(pipe.vae, images)
        index = np.arange(len(images)) if image_index is None else np.asarray(image_index)
        w = torch.ones(len(captions)) if weights is None else torch.as_tensor(np.asarray(weights, np.float32))
        return cls(mean, std, torch.as_tensor(index, dtype=torch.long), _tokenize(pipe.tokenizer, list(captions)), w)

    def __len__(self) -> int:
        return len(self.input_ids)

    def draw(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`count` random pairs: unscaled latents (a fresh posterior sample), token ids, weights."""
        pick = torch.randint(len(self), (count,), generator=generator)
        rows = self.image_index[pick]
        eps = torch.randn(self.latent_mean[rows].shape, generator=generator)
        return self.latent_mean[rows] + self.latent_std[rows] * eps, self.input_ids[pick], self.weights[pick]


class DenoiserFineTuner:
    """Fine-tunes the denoiser of `pipe` round after round (step 5), one optimiser for the run.

    Parameters
    ----------
    pipe
        The server's pipeline; its UNet (or LoRA adapter) always holds the averaged weights.
    settings
        The recipe (`FineTuneSettings`).
    replay
        The server's public pairs, replayed in every batch; ``None`` for no replay.
    """

    def __init__(self, pipe: StableDiffusionPipeline, settings: FineTuneSettings, replay: PairSet | None = None):
        self.pipe, self.settings, self.replay = pipe, settings, replay
        use_lora = settings.use_lora
        if use_lora is None:
            use_lora = sum(p.numel() for p in pipe.unet.parameters()) > LORA_AUTO_THRESHOLD
        self.params = _set_trainable(pipe, train_text_encoder=False, use_lora=use_lora, lora_rank=settings.lora_rank)
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.lr, weight_decay=0.01)
        self.raw = [p.detach().clone() for p in self.params]  # the optimiser's iterate
        self.average = [p.detach().clone() for p in self.params]  # what the pipeline samples with
        self.steps_done = 0
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        _ready_for_inference(pipe)

    def _lr(self) -> float:
        warmup = self.settings.warmup_steps
        return self.settings.lr * (min(1.0, (self.steps_done + 1) / warmup) if warmup else 1.0)

    @staticmethod
    def _copy(source: list[torch.Tensor], target: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for s, t in zip(source, target):
                t.copy_(s)

    def run(self, pairs: PairSet, steps: int, seed: int, progress: bool = False) -> float:
        """`steps` optimiser steps on `pairs` (plus replay); returns the mean weighted loss.

        Each batch holds ``round(batch_size * replay_fraction)`` public pairs (weight 1) and the rest
        from `pairs` (their own weights); the loss is the batch mean of ``w * mse``.
        """
        if steps == 0 or len(pairs) == 0:
            return float("nan")
        s, pipe = self.settings, self.pipe
        generator = torch.Generator().manual_seed(seed)
        unet, device = pipe.unet, pipe.unet.device
        scale = pipe.vae.config.scaling_factor
        batch = _fit_training_batch(
            pipe, self.noise_scheduler, pairs.latent_mean, pairs.input_ids, self.params, s.batch_size, generator
        )
        n_replay = int(round(batch * s.replay_fraction)) if self.replay is not None and len(self.replay) else 0
        empty_ids = _tokenize(pipe.tokenizer, [""])[0]
        self._copy(self.raw, self.params)
        unet.train()
        losses = []
        for _ in track(range(steps), "T2I fine-tune", "step", enabled=progress):
            latents, ids, weights = pairs.draw(batch - n_replay, generator)
            if n_replay:
                more = self.replay.draw(n_replay, generator)
                latents, ids, weights = (torch.cat([a, b]) for a, b in zip((latents, ids, weights), more))
            ids = ids.clone()
            ids[torch.rand(len(ids), generator=generator) < s.caption_dropout] = empty_ids
            loss = _denoising_loss(
                unet,
                pipe.text_encoder,
                self.noise_scheduler,
                (latents * scale).to(device, unet.dtype),
                ids.to(device),
                weights.to(device),
                generator,
            )
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            with torch.no_grad():
                for average, p in zip(self.average, self.params):
                    average.lerp_(p, 1.0 - s.ema_decay)
            self.steps_done += 1
            losses.append(loss.item())
        self._copy(self.params, self.raw)
        self._copy(self.average, self.params)
        _ready_for_inference(pipe)
        return float(np.mean(losses))

    def state_dict(self) -> dict[str, object]:
        """Optimiser state, raw iterate, average and step count, for a checkpoint."""
        return {
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),  # a snapshot, not the live tensors
            "raw": [t.clone() for t in self.raw],
            "average": [t.clone() for t in self.average],
            "steps_done": self.steps_done,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self._copy(state["raw"], self.raw)
        self._copy(state["average"], self.average)
        self._copy(self.average, self.params)
        self.steps_done = int(state["steps_done"])


def finetune_denoiser(
    pipe: StableDiffusionPipeline,
    images_uint8: np.ndarray,
    captions: Sequence[str],
    *,
    weights: np.ndarray | None = None,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    caption_dropout: float = 0.1,
    use_lora: bool | None = None,
    lora_rank: int = 8,
    progress: bool = False,
) -> float:
    """One stand-alone fine-tune of `G` on (image, caption) pairs weighted by `weights`: no warm-up,
    no averaging, no replay. The run's step 5 uses a `DenoiserFineTuner` instead; this is the plain
    diffusers loop for scripts and checks (e.g. that LoRA trains on a GPU).

    Returns the mean weighted loss; the pipeline is left in eval mode.
    """
    settings = FineTuneSettings(
        lr=lr,
        batch_size=batch_size,
        warmup_steps=0,
        ema_decay=0.0,
        replay_fraction=0.0,
        caption_dropout=caption_dropout,
        use_lora=use_lora,
        lora_rank=lora_rank,
    )
    tuner = DenoiserFineTuner(pipe, settings)
    return tuner.run(PairSet.encode(pipe, images_uint8, captions, weights=weights), steps, seed, progress)
