"""Plain PyTorch train / evaluate / infer loops for task models, testable without Flower.

Local training is private cross-entropy, optionally plus knowledge distillation on the
server's synthetic set (ALGORITHM.md step 6), one loss per sample over one concatenated batch:
``CE(private) + w_i * (lambda_kl * T^2 * KL(q_i^(T) || softmax(z_i / T)) + lambda_rep * (1 - cos(r_i, F_i)))``
where ``q^(T) ∝ q^(1/T)`` is the voted label softened by the student's temperature and ``w_i`` is
the row's vote confidence. Each synthetic row is seen a bounded number of times per call
(`DistillTargets.passes`), spread evenly over the private batches.

The loops run where the model's weights are (`task_models.device`): batches are cut and augmented
on the CPU and moved to the model's device; with `amp` the forward passes run under bfloat16
autocast on CUDA, while losses and softmaxes are computed in float32.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from task_models.device import autocast, model_device
from task_models.models import TaskModel


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and loop settings of one local training call."""

    epochs: int = 1
    lr: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    #: Applied to every training batch (private and synthetic rows together), e.g. `augment.augment`.
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    #: bfloat16 autocast of the forward passes when the model is on CUDA (`client-amp`).
    amp: bool = False


@dataclass(frozen=True)
class DistillTargets:
    """Server targets on the synthetic set: model inputs, and voted soft labels and/or the fused
    representation of this client's modality (either may be absent, e.g. CreamFL sends no labels).

    `weights` scales each row's distillation loss (the vote confidence; all ones when absent), and
    `passes` is how many times each row is visited in one `train_model` call: the synthetic budget
    is explicit, not "one synthetic batch per private batch", so a few voted rows are never replayed
    tens of times at full weight.
    """

    inputs: torch.Tensor
    soft_labels: torch.Tensor | None = None  # [M, C], rows sum to one
    fused: torch.Tensor | None = None  # [M, d]
    weights: torch.Tensor | None = None  # [M], >= 0
    temperature: float = 2.0
    lambda_kl: float = 1.0
    lambda_rep: float = 0.5
    passes: float = 2.0


@dataclass(frozen=True)
class Inference:
    """What a client returns on synthetic inputs."""

    probs: np.ndarray  # float32 [N, C]
    entropy: np.ndarray  # float32 [N], natural log
    embedding: np.ndarray  # float32 [N, d], projected and L2-normalised


def soften(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``q^(1/T)`` renormalised: the teacher at the student's temperature.

    The student is trained on ``softmax(z / T)``; matching that to a T = 1 distribution `q` would
    make ``softmax(z)`` converge to ``q^T / Z`` (sharper than the vote for T > 1). Softening the
    teacher by the same T makes ``softmax(z)`` converge to `q` itself.
    """
    return torch.softmax(probs.clamp_min(1e-12).log() / temperature, dim=-1)


def distillation_loss(
    logits: torch.Tensor,
    projected: torch.Tensor,
    targets: DistillTargets,
    index: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-row distillation loss [k] of synthetic rows `index` (weighted), and the unweighted means
    of its parts ("kl" with the T^2 factor, "rep") for logging."""
    rows = logits.new_zeros(len(index))
    parts: dict[str, float] = {}
    if targets.soft_labels is not None:
        t = targets.temperature
        teacher = soften(targets.soft_labels[index], t).to(logits.device)
        kl = F.kl_div(F.log_softmax(logits / t, dim=-1), teacher, reduction="none").sum(-1) * t * t
        rows = rows + targets.lambda_kl * kl
        parts["kl"] = kl.mean().item()
    if targets.fused is not None and targets.lambda_rep > 0:
        rep = 1 - F.cosine_similarity(projected, targets.fused[index].to(projected.device), dim=-1)
        rows = rows + targets.lambda_rep * rep
        parts["rep"] = rep.mean().item()
    if targets.weights is not None:
        rows = rows * targets.weights[index].to(rows.device)
    return rows, parts


def synthetic_schedule(num_rows: int, passes: float, num_steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Which synthetic rows each of `num_steps` optimiser steps visits: ``round(passes * num_rows)``
    visits in all, whole shuffled passes first, split as evenly as possible over the steps."""
    if num_rows == 0 or num_steps == 0 or passes <= 0:
        return [torch.zeros(0, dtype=torch.long) for _ in range(num_steps)]
    visits = int(round(passes * num_rows))
    order = torch.cat([torch.randperm(num_rows, generator=generator) for _ in range(math.ceil(passes))])[:visits]
    return list(torch.tensor_split(order, num_steps))


def _train_epochs(
    model: TaskModel,
    optimiser: torch.optim.Optimizer,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    epochs: int,
    generator: torch.Generator,
    distill: DistillTargets | None = None,
) -> dict[str, float]:
    """`epochs` passes over the private data; with `distill`, each step's synthetic rows join the
    private batch in one forward, so BatchNorm sees one mixed batch (mostly private rows) and its
    running statistics are not half made of generated images."""
    model.train()
    device = model_device(model)
    batch_size = settings.batch_size
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    n_syn = 0 if distill is None else len(distill.inputs)
    passes = 0.0 if distill is None else distill.passes
    schedule = synthetic_schedule(n_syn, passes, epochs * steps_per_epoch, generator)
    totals = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "rep": 0.0}
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            take = schedule[step]
            batch = inputs[idx] if len(take) == 0 else torch.cat([inputs[idx], distill.inputs[take]])
            if settings.augment is not None:
                batch = settings.augment(batch, generator)
            with autocast(device, settings.amp):
                logits, embedding = model(batch.to(device, non_blocking=True))
            logits, embedding = logits.float(), embedding.float()
            ce = F.cross_entropy(logits[: len(idx)], labels[idx].to(device), reduction="none")
            total = ce.sum()
            if len(take):
                kd, parts = distillation_loss(logits[len(idx) :], model.project(embedding[len(idx) :]), distill, take)
                total = total + kd.sum()
                for key, value in parts.items():
                    totals[key] += value
            loss = total / (len(idx) + len(take))  # every row, private or synthetic, one sample
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimiser.step()
            totals["loss"] += loss.item()
            totals["ce"] += ce.mean().item()
            step += 1
    means = {key: value / max(step, 1) for key, value in totals.items()}
    visits = float(sum(len(t) for t in schedule))
    return {**means, "num-examples": float(len(labels)), "steps": float(step), "synthetic-visits": visits}


@contextmanager
def seeded_global_rng(seed: int, model: TaskModel) -> Iterator[None]:
    """Seed torch's global generators for one training call and restore them afterwards.

    Batches and augmentation draw from the loop's own generator, but dropout (the `transformer`
    client's BERT) draws from the global one. Under `flwr run` one Ray worker serves many
    simulated nodes, in an order that changes from run to run, so without this a client's dropout
    masks, and with them every figure of a run, depended on what its process had run before: two
    runs of one seed did not agree."""
    device = model_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _optimiser(model: TaskModel, settings: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def train_model(
    model: TaskModel,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    seed: int,
    distill: DistillTargets | None = None,
) -> dict[str, float]:
    """Train in place for `settings.epochs` epochs; return mean losses and the example count.

    With `distill`, each synthetic row is visited ``distill.passes`` times over the whole call,
    spread over the private batches (`synthetic_schedule`).
    """
    generator = torch.Generator().manual_seed(seed)
    with seeded_global_rng(seed, model):
        stats = _train_epochs(
            model, _optimiser(model, settings), inputs, labels, settings, settings.epochs, generator, distill
        )
    return {**stats, "synthetic-rows": float(0 if distill is None else len(distill.inputs))}


def fit_to_convergence(
    model: TaskModel,
    train: tuple[torch.Tensor, torch.Tensor],
    validation: tuple[torch.Tensor, torch.Tensor],
    settings: TrainSettings,
    seed: int,
    max_epochs: int,
    patience: int,
) -> dict[str, float]:
    """Train on private data until the accuracy on the client's own validation split stops
    improving for `patience` epochs (at most `max_epochs`), then restore the best epoch's weights.

    A client joins the federation with a model trained as far as its data allows: a weak `local`
    baseline makes every gain meaningless, and an under-trained model's entropy measures how long
    it trained rather than whether it is right. Ties in accuracy go to the lower validation loss.
    With an empty validation split it trains exactly `max_epochs` epochs.
    """
    with seeded_global_rng(seed, model):
        generator = torch.Generator().manual_seed(seed)
        optimiser = _optimiser(model, settings)
        x, y = train
        if len(validation[1]) == 0:
            _train_epochs(model, optimiser, x, y, settings, max_epochs, generator)
            return {"epochs": float(max_epochs), "best-epoch": float(max_epochs), "val-accuracy": float("nan")}
        best = (-1.0, float("inf"))
        best_state, best_epoch, epoch = None, 0, 0
        for epoch in range(1, max_epochs + 1):
            _train_epochs(model, optimiser, x, y, settings, 1, generator)
            val = evaluate_model(model, *validation)
            if (val["accuracy"], -val["loss"]) > (best[0], -best[1]):
                best, best_epoch = (val["accuracy"], val["loss"]), epoch
                best_state = copy.deepcopy(model.state_dict())
            elif epoch - best_epoch >= patience:
                break
        model.load_state_dict(best_state)
        return {"epochs": float(epoch), "best-epoch": float(best_epoch), "val-accuracy": best[0]}


@torch.no_grad()
def evaluate_model(
    model: TaskModel, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 256, amp: bool = False
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy."""
    model.eval()
    device = model_device(model)
    correct, loss = 0, 0.0
    for start in range(0, len(labels), batch_size):
        with autocast(device, amp):
            logits, _ = model(inputs[start : start + batch_size].to(device))
        logits = logits.float()
        y = labels[start : start + batch_size].to(device)
        correct += int((logits.argmax(-1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    n = max(len(labels), 1)
    return {"accuracy": correct / n, "loss": loss / n, "num-examples": float(len(labels))}


@torch.no_grad()
def predict_logits(model: TaskModel, inputs: torch.Tensor, batch_size: int = 256, amp: bool = False) -> torch.Tensor:
    """Float32 logits [N, C] on the CPU, in eval mode (e.g. of a validation split, for calibration)."""
    model.eval()
    device = model_device(model)
    out = [torch.zeros(0, model.classifier.out_features)]
    for start in range(0, len(inputs), batch_size):
        with autocast(device, amp):
            logits, _ = model(inputs[start : start + batch_size].to(device))
        out.append(logits.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def infer(
    model: TaskModel, inputs: torch.Tensor, batch_size: int = 256, amp: bool = False, temperature: float = 1.0
) -> Inference:
    """Probabilities ``softmax(logits / temperature)`` (1: the model's own; see `calibration`),
    entropies and projected embeddings on (synthetic) inputs, as CPU arrays."""
    model.eval()
    device = model_device(model)
    probs, embeddings = [], []
    for start in range(0, len(inputs), batch_size):
        with autocast(device, amp):
            logits, emb = model(inputs[start : start + batch_size].to(device))
        probs.append((logits.float() / temperature).softmax(-1).cpu())
        embeddings.append(model.project(emb.float()).float().cpu())
    p = torch.cat(probs) if probs else torch.zeros(0, model.classifier.out_features)
    e = torch.cat(embeddings) if embeddings else torch.zeros(0, model.projection[-1].out_features)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
    return Inference(p.numpy(), entropy.numpy(), e.numpy())


def max_entropy(num_classes: int) -> float:
    """log C: the entropy of a uniform prediction, used to normalise entropies to [0, 1]."""
    return math.log(num_classes)
