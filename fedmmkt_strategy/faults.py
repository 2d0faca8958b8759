"""Fault injection for robustness tests and experiments: Byzantine clients in an in-process run.

Never used by a real run. `ByzantineClientApp` wraps the honest ClientApp: chosen nodes answer
`query.infer` with confident wrong votes, one-hot probabilities (entropy 0, the largest LabVote
weight there is) on a class other than their own model's prediction. Everything else they do
honestly (embeddings, training, evaluation), so the attack targets the vote alone and the
honest clients' accuracy measures what the vote did to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from fedmmkt_strategy import protocol as P

ClientAppFn = Callable[[Message, Context], Message]


def confident_wrong_votes(probs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-hot votes [N, C] on a class != the honest argmax (a uniform random other class),
    entropies 0 [N], and the labels voted [N]."""
    n, c = probs.shape
    labels = (probs.argmax(1) + rng.integers(1, c, size=n)) % c
    one_hot = np.zeros((n, c), np.float32)
    one_hot[np.arange(n), labels] = 1.0
    return one_hot, np.zeros(n, np.float32), labels.astype(np.int64)


class ByzantineClientApp:
    """A ClientApp callable whose `byzantine` nodes lie confidently in `query.infer`.

    Parameters
    ----------
    app : callable
        The honest ClientApp, ``app(message, context) -> reply``.
    byzantine : iterable of int
        Node ids that lie.
    seed : int
        Seeds the wrong classes (per node and round).

    Attributes
    ----------
    injected : dict
        ``(round, node) -> labels`` the liar voted, for measuring how much of the vote it took.
    """

    def __init__(self, app: ClientAppFn, byzantine: Iterable[int], seed: int = 0):
        self.app, self.byzantine, self.seed = app, set(byzantine), seed
        self.injected: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, msg: Message, context: Context) -> Message:
        reply = self.app(msg, context)
        node = context.node_id
        if node not in self.byzantine or msg.metadata.message_type != P.QUERY_INFER or reply.has_error():
            return reply
        server_round = int(msg.content[P.CONFIG][P.SERVER_ROUND])
        honest = reply.content[P.INFERENCE]
        rng = np.random.default_rng([self.seed, node, server_round])
        honest_probs = honest[P.PROBS].numpy()
        probs, entropy, labels = confident_wrong_votes(honest_probs, rng)
        dtype = honest_probs.dtype  # the run's uplink-dtype: the lie must pass the server's checks
        reply.content[P.INFERENCE] = ArrayRecord(
            {
                P.PROBS: Array(probs.astype(dtype)),
                P.ENTROPY: Array(entropy.astype(dtype)),
                P.EMBEDDING: honest[P.EMBEDDING],
            }
        )
        self.injected[(server_round, node)] = labels
        return reply
