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

    def weights(self, nodes: list[int], probs: np.ndarray) -> np.ndarray:
        """Score this round's votes [K, N, C] of `nodes`, update the history, return r [K]."""
        prior = reliability_weights(np.array([self.history.get(n, np.nan) for n in nodes]))
        update_history(self.history, nodes, leave_one_out_agreement(probs, prior), self.decay)
        return reliability_weights(np.array([self.history.get(n, np.nan) for n in nodes]))

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "history": dict(self.history)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.decay = float(state["decay"])
        self.history = {int(k): float(v) for k, v in dict(state["history"]).items()}
