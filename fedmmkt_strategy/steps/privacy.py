"""Differential privacy of the uploads: clipping and Gaussian noise on what a client sends,
and the accounting of the epsilon it costs (`dp-noise-multiplier`, `dp-clip`, `dp-delta`).

What a client uploads in a `query.infer` reply is its model's output on the server's synthetic
inputs: per row i, probabilities ``p_i`` [C] and a projected embedding ``r_i`` [d]. The client
(`privatize`) clips each row ``u_i = [p_i, r_i]`` to L2 norm `dp-clip` and adds Gaussian noise of
standard deviation ``dp-noise-multiplier * dp-clip`` to every coordinate; the server only ever
sees the noisy rows. Probabilities are then projected back onto the simplex, entropies
recomputed from them, embeddings re-normalised: post-processing, free of privacy cost. With
`uplink-dtype = "float16"` the ClientApp casts only the result (clipping and noise are computed
in float64, returned as float32): rounding is post-processing too, and noise added in float16
would be quantised to its coarse grid near 1.

The guarantee, stated honestly. The unit protected is the client's *whole private dataset*
(so every single sample a fortiori), against any replacement of it: the model is trained on
all of it, so one private sample may move every row. Each clipped row moves by at most
``2 * clip``, so the whole upload of N rows moves by at most ``2 * clip * sqrt(N)`` in L2, and
one round is a Gaussian mechanism with effective noise multiplier
``sigma_eff = dp-noise-multiplier / (2 * sqrt(N))``. Rounds compose adaptively; opacus' RDP
accountant turns the number of rounds a client answered into (epsilon, `dp-delta`). Meaningful
epsilons therefore need large multipliers (about ``2 * sqrt(N)`` for sigma_eff = 1). The
scalar metrics of `train.distill` and `evaluate` replies (losses, accuracies, example counts)
are not noised and not covered by this epsilon.

The noise comes from the operating system's entropy, never from the run seed, which the server
knows.
"""

from __future__ import annotations

import math

import numpy as np


def clip_rows(rows: np.ndarray, clip: float) -> np.ndarray:
    """Scale every row whose L2 norm exceeds `clip` down to norm `clip`; others are unchanged."""
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows * np.minimum(1.0, clip / np.maximum(norms, 1e-12))


def project_to_simplex(rows: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row onto the probability simplex (Duchi et al., 2008).

    Unlike clipping negatives and renormalising, this is the closest distribution to the noisy
    vector, so the noise does not bias the ranking of classes.
    """
    n, c = rows.shape
    ordered = -np.sort(-rows, axis=1)
    cumulative = np.cumsum(ordered, axis=1) - 1.0
    index = np.arange(1, c + 1)
    support = ordered - cumulative / index > 0
    rho = c - 1 - np.argmax(support[:, ::-1], axis=1)  # last index where the condition holds
    theta = cumulative[np.arange(n), rho] / (rho + 1)
    return np.maximum(rows - theta[:, None], 0.0)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Prediction entropy in nats, 0 * log 0 taken as 0."""
    return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(-1)


def privatize(
    probs: np.ndarray, embedding: np.ndarray, clip: float, noise_multiplier: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip each row [p_i, r_i] to `clip`, add N(0, (noise_multiplier * clip)^2) noise, post-process.

    Returns float32 (probabilities on the simplex, their entropies, L2-normalised embeddings),
    the shapes of the inputs, so the reply passes the server's checks like a clean one.
    """
    num_classes = probs.shape[1]
    rows = clip_rows(np.concatenate([probs, embedding], axis=1).astype(np.float64), clip)
    noisy = rows + rng.normal(0.0, noise_multiplier * clip, size=rows.shape)
    p = project_to_simplex(noisy[:, :num_classes])
    e = noisy[:, num_classes:]
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return p.astype(np.float32), entropy(p).astype(np.float32), e.astype(np.float32)


def effective_noise_multiplier(noise_multiplier: float, num_rows: int) -> float:
    """sigma_eff of one upload of `num_rows` clipped rows (module docstring: L2 sensitivity
    ``2 * clip * sqrt(num_rows)``, noise std ``noise_multiplier * clip``)."""
    return noise_multiplier / (2.0 * math.sqrt(num_rows))


def epsilon(rounds: int, noise_multiplier: float, num_rows: int, delta: float) -> float:
    """Epsilon at `delta` after a client answered `rounds` queries of `num_rows` rows each,
    by opacus' RDP accountant (every round counted: no amplification by sampling is claimed)."""
    if rounds == 0:
        return 0.0
    accountant = _rdp_accountant()
    accountant.history = [(effective_noise_multiplier(noise_multiplier, num_rows), 1.0, rounds)]
    return float(accountant.get_epsilon(delta))


def _rdp_accountant():
    try:
        from opacus.accountants import RDPAccountant
    except ImportError as err:  # the accountant is an optional extra
        raise ImportError(
            "dp-noise-multiplier > 0 needs opacus' RDP accountant: pip install 'fedmmkt[dp]' (or opacus)"
        ) from err
    return RDPAccountant()


class PrivacyLedger:
    """Counts the noisy uploads of every node and reports the epsilon each has spent.

    Parameters
    ----------
    noise_multiplier, delta : float
        `dp-noise-multiplier` and `dp-delta` of the run.
    """

    def __init__(self, noise_multiplier: float, delta: float):
        _rdp_accountant()  # fail at start, not after the first round, when opacus is missing
        self.noise_multiplier, self.delta = noise_multiplier, delta
        self.uploads: dict[int, list[int]] = {}  # node -> rows of each accepted upload

    def record(self, node: int, num_rows: int) -> float:
        """Count one upload of `num_rows` rows by `node`; return its epsilon so far."""
        self.uploads.setdefault(node, []).append(num_rows)
        return self.epsilon(node)

    def epsilon(self, node: int) -> float:
        """Epsilon of `node` after all its uploads (the largest row count bounds every round)."""
        uploads = self.uploads.get(node, [])
        if not uploads:
            return 0.0
        return epsilon(len(uploads), self.noise_multiplier, max(uploads), self.delta)

    def state_dict(self) -> dict[str, object]:
        return {"uploads": {node: list(rows) for node, rows in self.uploads.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.uploads = {int(node): [int(r) for r in rows] for node, rows in dict(state["uploads"]).items()}
