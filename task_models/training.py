"""Plain PyTorch train / evaluate / infer loops for task models, testable without Flower.

Local training is private cross-entropy, optionally plus knowledge distillation on the
server's synthetic set (ALGORITHM.md step 6):
``CE(private) + lambda_kl * T^2 * KL(q || softmax(logits / T)) + lambda_rep * (1 - cos(r, F))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from task_models.models import TaskModel


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and loop settings of one local training call."""

    epochs: int = 1
    lr: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class DistillTargets:
    """Server targets on the synthetic set: model inputs, and voted soft labels and/or the fused
    representation of this client's modality (either may be absent, e.g. CreamFL sends no labels)."""

    inputs: torch.Tensor
    soft_labels: torch.Tensor | None = None  # [M, C], rows sum to one
    fused: torch.Tensor | None = None  # [M, d]
    temperature: float = 2.0
    lambda_kl: float = 1.0
    lambda_rep: float = 0.5


@dataclass(frozen=True)
class Inference:
    """What a client returns on synthetic inputs."""

    probs: np.ndarray  # float32 [N, C]
    entropy: np.ndarray  # float32 [N], natural log
    embedding: np.ndarray  # float32 [N, d], projected and L2-normalised


def distillation_loss(
    logits: torch.Tensor,
    projected: torch.Tensor,
    targets: DistillTargets,
    index: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL towards the voted soft labels plus the representation loss, for synthetic rows `index`."""
    loss = logits.new_zeros(())
    parts: dict[str, float] = {}
    if targets.soft_labels is not None:
        t = targets.temperature
        log_student = F.log_softmax(logits / t, dim=-1)
        kl = F.kl_div(log_student, targets.soft_labels[index], reduction="batchmean") * t * t
        loss = loss + targets.lambda_kl * kl
        parts["kl"] = kl.item()
    if targets.fused is not None and targets.lambda_rep > 0:
        rep = (1 - F.cosine_similarity(projected, targets.fused[index], dim=-1)).mean()
        loss = loss + targets.lambda_rep * rep
        parts["rep"] = rep.item()
    return loss, parts


def train_model(
    model: TaskModel,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    seed: int,
    distill: DistillTargets | None = None,
) -> dict[str, float]:
    """Train in place for `settings.epochs` epochs; return mean losses and the example count.

    With `distill`, every private batch is paired with a batch of synthetic rows (cycled),
    so distillation strength does not depend on how large the private set is.
    """
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    model.train()
    totals: dict[str, float] = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "rep": 0.0}
    steps = 0
    n_syn = 0 if distill is None else len(distill.inputs)
    syn_order = torch.randperm(n_syn, generator=generator) if n_syn else None
    syn_pos = 0
    for _ in range(settings.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            logits, _ = model(inputs[idx])
            ce = F.cross_entropy(logits, labels[idx])
            loss = ce
            if distill is not None and syn_order is not None:
                take = syn_order[torch.arange(syn_pos, syn_pos + settings.batch_size) % n_syn]
                syn_pos = (syn_pos + settings.batch_size) % n_syn
                syn_logits, syn_emb = model(distill.inputs[take])
                kd, parts = distillation_loss(syn_logits, model.project(syn_emb), distill, take)
                loss = loss + kd
                for key, value in parts.items():
                    totals[key] += value
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimiser.step()
            totals["loss"] += loss.item()
            totals["ce"] += ce.item()
            steps += 1
    means = {key: value / max(steps, 1) for key, value in totals.items()}
    return {**means, "num-examples": float(len(labels)), "steps": float(steps), "synthetic-rows": float(n_syn)}


@torch.no_grad()
def evaluate_model(
    model: TaskModel, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy."""
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(labels), batch_size):
        logits, _ = model(inputs[start : start + batch_size])
        y = labels[start : start + batch_size]
        correct += int((logits.argmax(-1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    n = max(len(labels), 1)
    return {"accuracy": correct / n, "loss": loss / n, "num-examples": float(len(labels))}


@torch.no_grad()
def infer(model: TaskModel, inputs: torch.Tensor, batch_size: int = 256) -> Inference:
    """Probabilities, entropies and projected embeddings on (synthetic) inputs."""
    model.eval()
    probs, embeddings = [], []
    for start in range(0, len(inputs), batch_size):
        logits, emb = model(inputs[start : start + batch_size])
        probs.append(logits.float().softmax(-1))
        embeddings.append(model.project(emb).float())
    p = torch.cat(probs) if probs else torch.zeros(0, model.classifier.out_features)
    e = torch.cat(embeddings) if embeddings else torch.zeros(0, model.projection[-1].out_features)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
    return Inference(p.numpy(), entropy.numpy(), e.numpy())


def max_entropy(num_classes: int) -> float:
    """log C: the entropy of a uniform prediction, used to normalise entropies to [0, 1]."""
    return math.log(num_classes)
