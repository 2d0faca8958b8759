"""The literature's T2I metrics next to GenAcc: standard (Inception) FID and CLIP score.

Both need weights from outside: FID the Inception network of torchmetrics/torch-fidelity
(downloaded from GitHub on first use), CLIP score a CLIP checkpoint (a hub id or a folder).
Where they cannot be had (offline, or torch-fidelity missing because it would pull a CUDA
torch and torchvision into a CPU install), the metric is skipped with a logged reason instead
of failing the run: GenAcc and domain FID (ALGORITHM.md) are always there.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import WARNING

import numpy as np
import torch
import torch.nn.functional as F
from flwr.common.logger import log
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel


@dataclass(frozen=True)
class MetricOutcome:
    """A metric's value, or None with the reason it could not be computed."""

    value: float | None
    reason: str = ""


def _skipped(name: str, reason: str) -> MetricOutcome:
    log(WARNING, "%s skipped: %s", name, reason)
    return MetricOutcome(None, reason)


def standard_fid(real: np.ndarray, generated: np.ndarray, device: str | torch.device = "cpu") -> MetricOutcome:
    """Inception FID (torchmetrics ``FrechetInceptionDistance``, 2048-d pool features) of uint8 images.

    Needs ``torchmetrics`` with ``torch-fidelity`` and the Inception weights (fetched from GitHub
    once); otherwise returns no value and the reason, and logs it.
    """
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        fid = FrechetInceptionDistance(feature=2048, normalize=False).to(device)
    except (ImportError, ModuleNotFoundError, RuntimeError, OSError) as err:
        return _skipped("standard FID", f"Inception FID unavailable ({type(err).__name__}: {err})")
    for images, real_flag in ((real, True), (generated, False)):
        for start in range(0, len(images), 64):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + 64])).permute(0, 3, 1, 2)
            fid.update(batch.to(device), real=real_flag)
    return MetricOutcome(float(fid.compute()))


@torch.no_grad()
def clip_score(
    images: np.ndarray, prompts: list[str], model_path: str, device: str | torch.device = "cpu", batch_size: int = 64
) -> MetricOutcome:
    """CLIP score ``100 * mean(max(cos(image, prompt), 0))`` (Hessel et al. 2021, as torchmetrics).

    `model_path` is a CLIP checkpoint folder or hub id (e.g. ``openai/clip-vit-base-patch32``) holding a
    `CLIPModel`, its image processor and tokenizer; if it cannot be loaded, no value and the reason.
    """
    try:
        model = CLIPModel.from_pretrained(model_path).to(device).eval()
        processor = AutoImageProcessor.from_pretrained(model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as err:
        return _skipped("CLIP score", f"clip-model = {model_path!r} cannot be loaded (offline or unknown): {err}")
    scores = []
    max_length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
    for start in range(0, len(images), batch_size):
        pixels = processor(images=list(images[start : start + batch_size]), return_tensors="pt").pixel_values
        tokens = tokenizer(
            prompts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        image_emb = model.get_image_features(pixel_values=pixels.to(device))
        text_emb = model.get_text_features(**{k: v.to(device) for k, v in tokens.items()})
        image_emb = getattr(image_emb, "pooler_output", image_emb)
        text_emb = getattr(text_emb, "pooler_output", text_emb)
        cos = F.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
        scores.append(100 * cos.clamp_min(0).cpu())
    return MetricOutcome(float(torch.cat(scores).mean()))
