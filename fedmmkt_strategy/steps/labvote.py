"""LabVote: entropy-weighted voting over client predictions on the synthetic set (step 3).

For client k and sample i the normalised entropy is ``h = H / log C`` in [0, 1]. A vote counts
when ``h <= beta`` and weighs ``w = 1 - h``. The voted soft label is the weighted mean of the
counted probability vectors, the voted label its argmax, which may differ from the prompt class
(the label correction). Samples without a single counted vote are discarded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VoteResult:
    """Outcome of a vote over N synthetic samples by K clients."""

    soft_labels: np.ndarray  # float32 [N, C]; zero rows where discarded
    labels: np.ndarray  # int64 [N]; -1 where discarded
    kept: np.ndarray  # bool [N]
    confidence: np.ndarray  # float32 [N]; max of the soft label, 0 where discarded
    counted: np.ndarray  # bool [K, N]; which votes counted

    @property
    def kept_indices(self) -> np.ndarray:
        return np.flatnonzero(self.kept)


def normalised_entropy(entropy: np.ndarray, num_classes: int) -> np.ndarray:
    """H / log C, clipped to [0, 1] (clients may round slightly outside)."""
    return np.clip(entropy / math.log(num_classes), 0.0, 1.0)


def prompt_class_weights(label_counts: np.ndarray, prompt_classes: np.ndarray) -> np.ndarray:
    """Each client's say on each sample from what it has seen (FedFTG-style class-aware weights).

    A sample was rendered *for* class ``c_i``; client k's say on it is its share of the
    federation's private examples of that class, ``n_{k,c_i} / sum_k n_{k,c_i}``, and 0 when it never
    saw the class. Entropy alone cannot tell "confident and right" from "confident because I only
    know a few classes": a client shown an image of a class it never saw is confidently wrong.

    Parameters
    ----------
    label_counts : np.ndarray
        Private training examples per class of every client [K, C] (sent once, on request).
    prompt_classes : np.ndarray
        The prompted class of every sample [N].

    Returns
    -------
    np.ndarray
        Weights [K, N] in [0, 1]; a column sums to one unless no client saw that class (all zero).
    """
    counts = np.asarray(label_counts, dtype=np.float64)[:, np.asarray(prompt_classes)]  # [K, N]
    total = counts.sum(0, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def labvote(
    probs: np.ndarray,
    entropy: np.ndarray,
    beta: float = 0.5,
    client_weights: np.ndarray | None = None,
    sample_weights: np.ndarray | None = None,
) -> VoteResult:
    """Entropy-weighted vote.

    Parameters
    ----------
    probs : np.ndarray
        Client probabilities [K, N, C].
    entropy : np.ndarray
        Client prediction entropies [K, N] (natural log).
    beta : float
        Threshold on the normalised entropy: a vote counts when ``h <= beta`` (default 0.5).
    client_weights : np.ndarray, optional
        Per-client factors r [K] in [0, 1] (the Byzantine defence's reliabilities, `robust.py`)
        that discount confidence: the weight becomes ``r * (1 - h)`` and the vote counts when
        that is at least ``1 - beta`` (the same threshold, so r = 1 changes nothing); a sample
        only unreliable clients vote on is discarded rather than labelled by them.
    sample_weights : np.ndarray, optional
        Per-client, per-sample factors [K, N] >= 0 (`prompt_class_weights`) that multiply the vote
        weights; a vote with factor 0 does not count, and the threshold stays on the entropy.
    """
    k, n, c = probs.shape
    if entropy.shape != (k, n):
        raise ValueError(f"entropy has shape {entropy.shape}, expected {(k, n)}")
    h = normalised_entropy(entropy, c)
    counted = h <= beta
    weights = np.where(counted, 1.0 - h, 0.0)  # [K, N]
    if client_weights is not None:
        weights = weights * np.asarray(client_weights, dtype=float)[:, None]
        counted = counted & (weights >= 1.0 - beta) & (weights > 0)
    if sample_weights is not None:
        weights = weights * np.asarray(sample_weights, dtype=float)
        counted = counted & (weights > 0)
    total = weights.sum(0)  # [N]
    kept = counted.any(0) & (total > 0)
    weighted = np.einsum("kn,knc->nc", weights, probs)
    soft = np.zeros((n, c), dtype=np.float32)
    soft[kept] = weighted[kept] / total[kept, None]
    labels = np.where(kept, soft.argmax(1), -1)
    return VoteResult(soft, labels.astype(np.int64), kept, soft.max(1).astype(np.float32), counted)


def mix_prompt(result: VoteResult, prompt_classes: np.ndarray, mix: float) -> VoteResult:
    """Let the server's own claim vote too: ``q = (1 - mix) * q_vote + mix * onehot(prompt)``.

    The T2I model rendered sample i *for* class ``c_i``; that is evidence as well, and on a domain
    where the clients see only a few classes each (strong non-IID) it is often better evidence than
    their confident votes (docs/results: measured vote accuracy against the judge). ``mix = 0`` is
    the paper's LabVote; discarded samples stay discarded (no client knowledge reached them).
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    if mix == 0.0:
        return result
    kept = result.kept
    soft = result.soft_labels.copy()
    onehot = np.eye(soft.shape[1], dtype=np.float32)[prompt_classes[kept]]
    soft[kept] = (1.0 - mix) * soft[kept] + mix * onehot
    labels = np.where(kept, soft.argmax(1), -1).astype(np.int64)
    return VoteResult(soft, labels, kept, np.where(kept, soft.max(1), 0.0).astype(np.float32), result.counted)


def hardened(result: VoteResult) -> VoteResult:
    """The vote's decisions as targets: each kept sample's soft label replaced by the one-hot of its
    voted class, at confidence 1 (``labvote-targets = "hard"``); discarded samples stay discarded.

    Soft votes teach a client little about a class it lacks: their mass on that class is shared,
    the teacher is softened again at the distillation temperature, and the row is weighted by the
    vote's confidence (docs/results/README.md, `experiments.transfer --with-votes`).
    """
    kept = result.kept
    soft = np.zeros_like(result.soft_labels)
    soft[np.flatnonzero(kept), result.labels[kept]] = 1.0
    return VoteResult(soft, result.labels.copy(), kept.copy(), kept.astype(np.float32), result.counted)


def most_confident(result: VoteResult, fraction: float) -> np.ndarray:
    """Indices of the kept samples whose voted label is most confident: the top `fraction` of them
    (at least one when any is kept), most confident first. Used to choose the T2I update's pairs."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    kept = result.kept_indices
    if len(kept) == 0:
        return kept
    count = max(1, int(round(fraction * len(kept))))
    order = np.argsort(-result.confidence[kept], kind="stable")
    return kept[order[:count]]


def confirmed(result: VoteResult, prompt_classes: np.ndarray) -> np.ndarray:
    """Indices of the kept samples whose voted label is their prompt class: generations the clients
    confirm. Fine-tuning the T2I model on these alone is rejection sampling with the clients as the
    verifier; a relabelled sample may be the model's error or the clients'."""
    return np.flatnonzero(result.kept & (result.labels == np.asarray(prompt_classes)))


def plain_average(probs: np.ndarray) -> VoteResult:
    """FedMD's consensus: the unweighted mean of all clients' probabilities, nothing discarded."""
    k, n, _ = probs.shape
    soft = probs.mean(0).astype(np.float32)
    return VoteResult(soft, soft.argmax(1).astype(np.int64), np.ones(n, bool), soft.max(1), np.ones((k, n), bool))


def _agreement(a: np.ndarray, b: np.ndarray, rows: np.ndarray) -> float:
    return float((a[rows] == b[rows]).mean()) if rows.any() else float("nan")


def vote_diagnostics(
    result: VoteResult,
    prompt_classes: np.ndarray,
    depicted_classes: np.ndarray | None = None,
    groups: dict[str, np.ndarray] | None = None,
) -> dict[str, float | list[float]]:
    """Discard rate, agreement of voted labels with prompt classes (label corrections are the
    disagreements), and each client's counted-vote share.

    With `depicted_classes` (what the images show, as a reference classifier judges them; known
    in the toy world) it also reports how often the prompt and the vote are right: a vote helps
    when `vote_depicted_agreement` beats `prompt_depicted_agreement_kept` on the kept rows.
    `groups` (name -> bool [N] over the samples, e.g. the prompt classes the T2I model draws
    wrongly and the rest) repeats those figures and the discard rate per group, as
    ``<name>_vote_depicted_agreement`` etc.
    """
    kept = result.kept
    agreement = _agreement(result.labels, prompt_classes, kept)
    extra: dict[str, float] = {}
    if depicted_classes is not None:
        for prefix, rows in {"": np.ones(len(kept), bool), **(groups or {})}.items():
            name = f"{prefix}_" if prefix else ""
            extra |= {
                f"{name}vote_depicted_agreement": _agreement(result.labels, depicted_classes, kept & rows),
                f"{name}prompt_depicted_agreement_kept": _agreement(prompt_classes, depicted_classes, kept & rows),
                f"{name}prompt_depicted_agreement": _agreement(prompt_classes, depicted_classes, rows),
            }
            if prefix:
                extra[f"{name}discard_rate"] = float(1.0 - kept[rows].mean()) if rows.any() else float("nan")
    if depicted_classes is not None:
        confirmed = kept & (result.labels == prompt_classes)
        extra["confirmed_share"] = float(confirmed.sum() / max(kept.sum(), 1))
        extra["confirmed_depicted_agreement"] = _agreement(prompt_classes, depicted_classes, confirmed)
    return {
        **extra,
        "discard_rate": float(1.0 - kept.mean()) if len(kept) else float("nan"),
        "kept": int(kept.sum()),
        "vote_prompt_agreement": agreement,
        "mean_confidence": float(result.confidence[kept].mean()) if kept.any() else float("nan"),
        "counted_vote_share": result.counted.mean(1).astype(float).tolist(),
    }


# ---------------------------------------------------------------- the vote as a sum (secure aggregation)
def vote_terms(
    probs: np.ndarray,
    entropy: np.ndarray,
    beta: float = 0.5,
    rule: str = "labvote",
    class_weight: np.ndarray | None = None,
) -> np.ndarray:
    """One client's share of the vote, flattened: ``[w * p (N x C), w (N), counted (N)]``.

    LabVote's soft label is ``sum_k w_k p_k / sum_k w_k`` and a sample is kept when any vote
    counted, so the server needs only these three sums over clients (`vote_from_terms`), never
    one client's probabilities: this is what a client masks under ``secure-aggregation``. Same
    weights as `labvote` (``w = 1 - h`` for ``h <= beta``, times the optional `class_weight`
    [N], the client's `prompt_class_weights` row); ``rule = "average"`` is FedMD's plain mean
    (w = 1, every vote counts).
    """
    n, c = probs.shape
    if rule == "average":
        weights, counted = np.ones(n), np.ones(n, bool)
    elif rule == "labvote":
        h = normalised_entropy(np.asarray(entropy, np.float64), c)
        counted = h <= beta
        weights = np.where(counted, 1.0 - h, 0.0)
        if class_weight is not None:
            weights = weights * np.asarray(class_weight, np.float64)
            counted = counted & (weights > 0)
    else:
        raise ValueError(f"rule must be 'labvote' or 'average', got {rule!r}")
    weighted = weights[:, None] * np.asarray(probs, np.float64)
    return np.concatenate([weighted.ravel(), weights, counted.astype(np.float64)])


def vote_from_terms(sums: np.ndarray, num_samples: int, num_classes: int) -> VoteResult:
    """The vote from the sum of every client's `vote_terms` (exact up to the sum's quantisation).

    Without per-client terms the result cannot say which votes counted: `counted` is one row,
    "at least one vote counted". Rounding can leave a soft label a few 2^-32 below zero or off
    a unit sum, so rows are clipped and renormalised."""
    n, c = num_samples, num_classes
    sums = np.asarray(sums, np.float64)
    if sums.shape != (n * c + 2 * n,):
        raise ValueError(f"vote sums have shape {sums.shape}, expected {(n * c + 2 * n,)}")
    weighted, total, counts = sums[: n * c].reshape(n, c), sums[n * c : n * c + n], sums[n * c + n :]
    kept = (counts > 0.5) & (total > 0)
    soft = np.zeros((n, c), dtype=np.float32)
    rows = np.clip(weighted[kept], 0.0, None)
    soft[kept] = rows / np.maximum(rows.sum(1, keepdims=True), np.finfo(np.float64).tiny)
    labels = np.where(kept, soft.argmax(1), -1).astype(np.int64)
    return VoteResult(soft, labels, kept, np.where(kept, soft.max(1), 0.0).astype(np.float32), kept[None, :])


def own_class_weights(
    label_counts: np.ndarray, prompt_classes: np.ndarray, class_totals: np.ndarray | None
) -> np.ndarray:
    """A client's own row of `prompt_class_weights`: ``n_{c_i} / T_{c_i}`` with the modality's
    totals T (a secure sum of every member's counts); alone in its modality, T is its own counts."""
    counts = np.asarray(label_counts, np.float64)[np.asarray(prompt_classes)]
    totals = counts if class_totals is None else np.asarray(class_totals, np.float64)[np.asarray(prompt_classes)]
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0).clip(0.0, 1.0)
