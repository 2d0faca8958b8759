"""Byzantine-robust LabVote: per-client reliability weights from agreement history.

LabVote weighs a vote by ``1 - h``, so a client that sends one-hot probabilities (entropy 0)
gets the largest weight there is, whatever class it names: a Byzantine client that lies
confidently outvotes every honest, calibrated client. Confidence is exactly what such a
client fakes, so the defence scores clients by something confidence cannot buy:

1. *Leave-one-out agreement.* On sample i, the other clients each cast one vote for their top-1
   class (scaled by their current reliability, never by their confidence); client k's
   agreement is the support its own top-1 class gets, relative to the best-supported class,
   averaged over samples (1: it always names the others' favourite; 0: a class none of them
   names). A client cannot vouch for itself.
2. *History.* An exponential moving average of each client's agreement across rounds
   (`labvote-reliability-decay`), so one bad round does not banish an honest client and a
   liar cannot wash its record in a single round.
3. *Weight.* ``r_k = min(1, a_k / median(a))**2`` in [0, 1]: the median client (honest while
   fewer than half lie) keeps full weight; a client at half the median agreement counts a
   quarter. ``r_k`` multiplies client k's LabVote weights ``1 - h``.

The current round's agreement enters the history before the vote, so the defence already
acts in round 1.

The fusion is defended the same way (`FedMMKT.fuse`): a client's contrastive weights are
multiplied by its vote reliability and by an *embedding reliability*, the same median rule over
its leave-one-out cosine agreement with the other clients of its modality
(`leave_one_out_cosine`). Client projections start unaligned (every client's head is its own
random map until the representation loss pulls them together), so an embedding round only
counts once the median client agrees with the rest by `EMBEDDING_EVIDENCE` or more; before that
nobody can be told apart and the embedding weights stay one.
"""

from __future__ import annotations

import numpy as np


def leave_one_out_agreement(probs: np.ndarray, reliability: np.ndarray | None = None) -> np.ndarray:
    """a [K]: mean over samples of ``support_{-k}(top_k) / max_c support_{-k}(c)``.

    Parameters
    ----------
    probs : np.ndarray
        Client probabilities [K, N, C].
    reliability : np.ndarray, optional
        Current weight of each client's vote in the others' support [K]; 1 when omitted.

    ``support_{-k}(c)`` is the reliability-weighted count of the other clients whose top-1
    class is c. Samples where the others give no support at all are skipped; a client with no
    such sample (a single client, or all others at reliability 0) gets NaN: nothing to compare with.
    """
    k, n, c = probs.shape
    weights = np.ones(k) if reliability is None else np.asarray(reliability, dtype=float)
    top = probs.argmax(-1)  # [K, N]
    votes = np.zeros((k, n, c))
    votes[np.arange(k)[:, None], np.arange(n)[None, :], top] = weights[:, None]
    total = votes.sum(0)  # [N, C]
    agreement = np.full(k, np.nan)
    for client in range(k):
        others = total - votes[client]
        best = others.max(-1)
        valid = best > 0
        if valid.any():
            agreement[client] = (others[np.arange(n), top[client]][valid] / best[valid]).mean()
    return agreement


#: The median leave-one-out cosine below which a round's embeddings carry no evidence (unaligned heads).
EMBEDDING_EVIDENCE = 0.1


def leave_one_out_cosine(reps: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """c [K]: the mean over samples of ``cos(reps[k, i], sum_{j != k} w_j reps[j, i])``, clipped at 0.

    reps: [K, N, d] (unit rows); weights: each client's current weight in the others' mean [K]
    (1 when omitted). NaN for a client with nothing to compare with (alone in its modality, or
    every other client at weight 0). The mean is clipped, not each cosine (unrelated vectors then
    score about 0 in any width); clipping makes an anti-aligned client (sign-flipped embeddings)
    and an unrelated one equally uninformative, and keeps the median rule positive.
    """
    k = reps.shape[0]
    w = np.ones(k) if weights is None else np.asarray(weights, dtype=float)
    reps = np.asarray(reps, dtype=np.float64)
    total = np.einsum("k,knd->nd", w, reps)
    agreement = np.full(k, np.nan)
    for client in range(k):
        others = total - w[client] * reps[client]
        norm = np.linalg.norm(others, axis=-1)
        valid = norm > 1e-9
        if valid.any():
            own = np.linalg.norm(reps[client], axis=-1).clip(1e-12)
            cos = (reps[client] * others).sum(-1)[valid] / (norm[valid] * own[valid])
            agreement[client] = float(np.clip(cos.mean(), 0.0, 1.0))
    return agreement


def update_history(history: dict[int, float], nodes: list[int], agreement: np.ndarray, decay: float) -> None:
    """EMA of agreement per node: ``new = decay * old + (1 - decay) * a``; a first score is taken
    as is, a NaN score leaves the history unchanged."""
    for node, score in zip(nodes, agreement):
        if np.isnan(score):
            continue
        history[node] = float(score) if node not in history else decay * history[node] + (1 - decay) * float(score)


def reliability_weights(scores: np.ndarray, sharpness: float = 2.0) -> np.ndarray:
    """r [K] = min(1, score / median(score)) ** sharpness; all ones when the median is 0 or NaN
    (no client agrees with anyone: there is no evidence to tell liars from the rest)."""
    scores = np.asarray(scores, dtype=float)
    median = np.nanmedian(scores) if np.isfinite(scores).any() else np.nan
    if not median > 0:
        return np.ones(len(scores))
    ratio = np.where(np.isnan(scores), 1.0, scores / median)
    return np.clip(ratio, 0.0, 1.0) ** sharpness


class ReliabilityTracker:
    """Holds the agreement history of every node across rounds and turns it into vote weights.

    Parameters
    ----------
    decay : float
        Weight of the past in the moving average of agreement (`labvote-reliability-decay`).
    """

    def __init__(self, decay: float = 0.5):
        self.decay = decay
        self.history: dict[int, float] = {}
        self.embedding_history: dict[int, float] = {}

    def weights(self, nodes: list[int], probs: np.ndarray) -> np.ndarray:
        """Score this round's votes [K, N, C] of `nodes`, update the history, return r [K]."""
        prior = reliability_weights(np.array([self.history.get(n, np.nan) for n in nodes]))
        update_history(self.history, nodes, leave_one_out_agreement(probs, prior), self.decay)
        return reliability_weights(np.array([self.history.get(n, np.nan) for n in nodes]))

    def embedding_weights(self, nodes: list[int], reps: np.ndarray) -> np.ndarray:
        """Score this round's embeddings [K, N, d] of one modality's `nodes` (when they carry
        evidence: median agreement >= `EMBEDDING_EVIDENCE`), update the history, return e [K]."""
        prior = reliability_weights(np.array([self.embedding_history.get(n, np.nan) for n in nodes]))
        agreement = leave_one_out_cosine(reps, prior)
        if np.isfinite(agreement).any() and np.nanmedian(agreement) >= EMBEDDING_EVIDENCE:
            update_history(self.embedding_history, nodes, agreement, self.decay)
        return reliability_weights(np.array([self.embedding_history.get(n, np.nan) for n in nodes]))

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "history": dict(self.history), "embedding_history": dict(self.embedding_history)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.decay = float(state["decay"])
        self.history = {int(k): float(v) for k, v in dict(state["history"]).items()}
        # checkpoints written before the fusion was defended hold no embedding history
        self.embedding_history = {int(k): float(v) for k, v in dict(state.get("embedding_history", {})).items()}
