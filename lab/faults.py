"""Fault injection for robustness tests and experiments: Byzantine clients in an in-process run.

Never used by a real run. `ByzantineClientApp` wraps the honest ClientApp: chosen nodes answer
`query.infer` with a forged reply of one `ATTACKS` kind. Everything else they do honestly
(training, evaluation), so the attack targets what the server aggregates (votes, embeddings) and
the honest clients' accuracy measures what that did to them. Every forged reply passes the
server's reply checks (shapes, dtype, simplex, entropies the probabilities imply, unit
embeddings): these are well-formed lies, not malformed replies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from fedmmkt_strategy import protocol as P

ClientAppFn = Callable[[Message, Context], Message]

#: The attacker kinds, what each sends in place of its honest `query.infer` outputs:
#: - confident-liar: one-hot votes (entropy 0) for a random class other than its own prediction;
#: - colluding-liars: one-hot votes, every colluder the same random class per sample and round;
#: - embedding-poisoner: honest votes, sign-flipped embeddings (unit, anti-aligned);
#: - label-flipper: its probabilities with classes shifted by one (c -> c + 1), so plausible
#:   confidences on the wrong class, as a client trained on flipped labels would send;
#: - free-rider: no model of its own: the soft labels and fused vectors the server sent it last
#:   round where it has them (an echo of the average), uniform votes and a fixed vector elsewhere;
#: - prompt-class: one-hot votes for the prompted class, i.e. it only agrees with the server and
#:   undoes LabVote's corrections (needs the pool's prompt classes, given by the experiment).
ATTACKS = (
    "confident-liar",
    "colluding-liars",
    "embedding-poisoner",
    "label-flipper",
    "free-rider",
    "prompt-class",
)


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), num_classes), np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def implied_entropy(probs: np.ndarray) -> np.ndarray:
    """``-sum p log p`` per row in nats, float32 (what the server recomputes and compares)."""
    p = np.asarray(probs, np.float64)
    return (-(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)).astype(np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def confident_wrong_votes(probs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-hot votes [N, C] on a class != the honest argmax (a uniform random other class),
    entropies 0 [N], and the labels voted [N]."""
    n, c = probs.shape
    labels = (probs.argmax(1) + rng.integers(1, c, size=n)) % c
    return one_hot(labels, c), np.zeros(n, np.float32), labels.astype(np.int64)


class ByzantineClientApp:
    """A ClientApp callable whose `byzantine` nodes forge their `query.infer` replies.

    Parameters
    ----------
    app : callable
        The honest ClientApp, ``app(message, context) -> reply``.
    byzantine : iterable of int
        Node ids that attack.
    seed : int
        Seeds the forged classes (per node and round; per round alone for colluders).
    attack : str
        One of `ATTACKS` (default "confident-liar").
    prompt_classes : np.ndarray, optional
        The pool's prompted class per row, for the "prompt-class" attacker.

    Attributes
    ----------
    injected : dict
        ``(round, node) -> labels`` an attacker voted (its argmax), for measuring how much of the
        vote it took.
    """

    def __init__(
        self,
        app: ClientAppFn,
        byzantine: Iterable[int],
        seed: int = 0,
        attack: str = "confident-liar",
        prompt_classes: np.ndarray | None = None,
    ):
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
        if attack == "prompt-class" and prompt_classes is None:
            raise ValueError("the prompt-class attacker needs the pool's prompt_classes")
        self.app, self.byzantine, self.seed, self.attack = app, set(byzantine), seed, attack
        self.prompt_classes = prompt_classes
        self.injected: dict[tuple[int, int], np.ndarray] = {}
        self._echo: dict[int, dict[str, np.ndarray]] = {}  # free riders: node -> last targets received

    def __call__(self, msg: Message, context: Context) -> Message:
        node = context.node_id
        if node in self.byzantine and msg.metadata.message_type == P.TRAIN_DISTILL:
            self._remember_targets(node, msg)
        reply = self.app(msg, context)
        if node not in self.byzantine or msg.metadata.message_type != P.QUERY_INFER or reply.has_error():
            return reply
        server_round = int(msg.content[P.CONFIG][P.SERVER_ROUND])
        honest = reply.content[P.INFERENCE]
        dtype = honest[P.PROBS].numpy().dtype  # the run's uplink-dtype: the lie must pass the checks
        probs, entropy, embedding = self.forge(node, server_round, honest)
        reply.content[P.INFERENCE] = ArrayRecord(
            {
                P.PROBS: Array(np.ascontiguousarray(probs, dtype)),
                P.ENTROPY: Array(np.ascontiguousarray(entropy, dtype)),
                P.EMBEDDING: Array(np.ascontiguousarray(embedding, dtype)),
            }
        )
        self.injected[(server_round, node)] = probs.argmax(1).astype(np.int64)
        return reply

    def forge(self, node: int, server_round: int, honest: ArrayRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The attacker's (probs, entropy, embedding) in float32, from its honest outputs."""
        probs = honest[P.PROBS].numpy().astype(np.float32)
        entropy = honest[P.ENTROPY].numpy().astype(np.float32)
        embedding = honest[P.EMBEDDING].numpy().astype(np.float32)
        n, c = probs.shape
        if self.attack == "confident-liar":
            probs, entropy, _ = confident_wrong_votes(probs, np.random.default_rng([self.seed, node, server_round]))
        elif self.attack == "colluding-liars":  # no node in the seed: every colluder names the same class
            labels = np.random.default_rng([self.seed, server_round]).integers(c, size=n)
            probs, entropy = one_hot(labels, c), np.zeros(n, np.float32)
        elif self.attack == "embedding-poisoner":
            embedding = -embedding
        elif self.attack == "label-flipper":
            probs = np.roll(probs, 1, axis=1)
        elif self.attack == "free-rider":
            probs, embedding = self._echo_average(node, n, c, embedding.shape[1])
            entropy = implied_entropy(probs)
        elif self.attack == "prompt-class":
            probs, entropy = one_hot(np.asarray(self.prompt_classes)[:n], c), np.zeros(n, np.float32)
        return probs, entropy, embedding

    def _remember_targets(self, node: int, msg: Message) -> None:
        if P.TARGETS not in msg.content.array_records:
            return
        targets = msg.content[P.TARGETS]
        self._echo[node] = {key: targets[key].numpy() for key in (P.INDICES, P.SOFT_LABELS, P.FUSED) if key in targets}

    def _echo_average(self, node: int, n: int, c: int, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Uniform votes and one fixed unit vector everywhere, overwritten by the last soft labels
        and fused vectors the server sent this node, on the rows they refer to."""
        probs = np.full((n, c), 1.0 / c, np.float32)
        embedding = np.tile(unit_rows(np.random.default_rng([self.seed, node]).normal(size=(1, d))), (n, 1))
        echo = self._echo.get(node, {})
        rows = echo.get(P.INDICES)
        if rows is not None:
            rows = np.asarray(rows, np.int64)
            inside = rows < n
            if P.SOFT_LABELS in echo:
                soft = np.asarray(echo[P.SOFT_LABELS], np.float32)[inside]
                probs[rows[inside]] = soft / soft.sum(-1, keepdims=True)
            if P.FUSED in echo:
                embedding[rows[inside]] = unit_rows(np.asarray(echo[P.FUSED])[inside])
        return probs, embedding
