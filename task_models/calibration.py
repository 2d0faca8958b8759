"""Temperature scaling (Guo et al., 2017) of a client's predictions on its own validation split.

Clients trained to convergence on a few classes are confident on everything, including the
synthetic images of classes they never saw: their entropies fall below LabVote's threshold on
almost every sample, so the entropy weight ``1 - h`` cannot tell an informed vote from a guess.
One scalar temperature fitted to minimise the negative log-likelihood on the client's own
validation split (never on a global test set) makes a client's confidence match its accuracy
there; the argmax, and so the client's own accuracy, is unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: The fitted temperature stays in this range (a split of a few dozen rows must not give 1e-6).
T_MIN, T_MAX = 0.05, 20.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """The temperature T minimising ``NLL(softmax(logits / T), labels)``; 1.0 for an empty split.

    A 1-D convex-in-log(T) problem: golden-section search on log T over [T_MIN, T_MAX], so it is
    deterministic and needs no learning rate.
    """
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.detach().double(), labels.detach().long()  # float64: flat tails

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(steps):
        if hi - lo < 1e-4:
            break
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)
