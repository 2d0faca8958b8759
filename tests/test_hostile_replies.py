"""Hostile and careless replies, through the real strategy code path: each is rejected with a
logged reason that names the node and the field, the round goes on, nothing invalid reaches
`metrics.json`, and nothing non-finite is sent to a client or stored as a node's model.

Every case tampers with one honest reply of the real ClientApp (one node, one message type, one
round) inside a whole in-process run; up to four of the eight nodes of a phase are hostile at once
(the quorum, 4 of 8, still holds). The checks themselves are unit-tested in test_validation.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client_app.app import app as client_app
from client_app.node import MODEL_STATE
from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.runs.inprocess import InProcessGrid
from fedmmkt_strategy.runs.runner import run_federation

NODES = 8  # TINY_FEDERATION's four roles twice: every architecture has two clients
ROUNDS = 3
#: Up to four hostile nodes per phase (the quorum, 4 of 8, still holds), one of each architecture,
#: so that every FedAvg group keeps an honest member and a global model to check uploads against.
HOSTILE = (100, 101, 102, 103)


@dataclass(frozen=True)
class Case:
    """One tampered reply: `mutate` edits the honest reply's content in place; the server's
    logged reason must contain `expected`. `from_round` > 1 for an upload that is only wrong next
    to a global model (round 1 has none)."""

    name: str
    message_type: str
    expected: str
    mutate: Callable[[RecordDict], None]
    from_round: int = 1


class TamperingClientApp:
    """The honest ClientApp, except that `plan` maps (node, message type, round) to a Case."""

    def __init__(self, plan: dict[tuple[int, str, int], Case]):
        self.plan = plan

    def __call__(self, msg: Message, context: Context) -> Message:
        reply = client_app(msg, context)
        key = (context.node_id, msg.metadata.message_type, int(msg.content[P.CONFIG][P.SERVER_ROUND]))
        if key in self.plan and not reply.has_error():
            self.plan[key].mutate(reply.content)
        return reply


def schedule(cases: list[Case], nodes: tuple[int, ...]) -> dict[tuple[int, str, int], Case]:
    """Give every case its own (node, message type, round) slot among the hostile `nodes`."""
    plan: dict[tuple[int, str, int], Case] = {}
    for case in cases:
        free = [
            (node, case.message_type, r)
            for r in range(case.from_round, ROUNDS + 1)
            for node in nodes
            if (node, case.message_type, r) not in plan
        ]
        assert free, f"no slot left for {case.name}: split the corpus"
        plan[free[0]] = case
    return plan


# ---------------------------------------------------------------- mutations
def _inference(content: RecordDict, **arrays: np.ndarray) -> None:
    record = content[P.INFERENCE]
    current = {k: record[k].numpy() for k in (P.PROBS, P.ENTROPY, P.EMBEDDING)}
    content[P.INFERENCE] = ArrayRecord({k: Array(np.array(v)) for k, v in {**current, **arrays}.items()})


def _probs(content: RecordDict) -> np.ndarray:
    return content[P.INFERENCE][P.PROBS].numpy().copy()


def slightly_negative(content: RecordDict) -> None:
    """-9e-4 on one entry, balanced by the row's largest: the sum check alone lets it through."""
    p = _probs(content)
    low, high = p[0].argmin(), p[0].argmax()
    p[0, high] += p[0, low] + 9e-4
    p[0, low] = -9e-4
    _inference(content, probs=p)


def zero_entropy_on_uniform(content: RecordDict) -> None:
    p = np.full_like(_probs(content), 1.0 / _probs(content).shape[1])
    _inference(content, probs=p, entropy=np.zeros(len(p), np.float32))


def max_entropy_on_one_hot(content: RecordDict) -> None:
    p = _probs(content)
    one_hot = np.eye(p.shape[1], dtype=np.float32)[p.argmax(1)]
    _inference(content, probs=one_hot, entropy=np.full(len(p), math.log(p.shape[1]), np.float32))


def scaled_embeddings(factor: float) -> Callable[[RecordDict], None]:
    def mutate(content: RecordDict) -> None:
        e = content[P.INFERENCE][P.EMBEDDING].numpy()
        _inference(content, embedding=(e * np.float32(factor)).astype(np.float32))

    return mutate


def huge_embedding_row(content: RecordDict) -> None:
    e = content[P.INFERENCE][P.EMBEDDING].numpy().copy()
    e[0] = 3e38
    _inference(content, embedding=e)


def client_key(key: str, value: object) -> Callable[[RecordDict], None]:
    """Set (or, with value None, remove) one key of the reply's client description."""

    def mutate(content: RecordDict) -> None:
        client = dict(content[P.CLIENT])
        if value is None:
            client.pop(key)
        else:
            client[key] = value
        content[P.CLIENT] = ConfigRecord(client)

    return mutate


def extra_record(content: RecordDict) -> None:
    """Raw private-looking images next to the protocol's records."""
    content["private-images"] = ArrayRecord({"x": Array(np.zeros((4, 8, 8, 3), np.uint8))})


def metric(key: str, value: object) -> Callable[[RecordDict], None]:
    def mutate(content: RecordDict) -> None:
        content[P.METRICS][key] = value

    return mutate


def without_metrics(content: RecordDict) -> None:
    del content[P.METRICS]


def weights(edit: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> Callable[[RecordDict], None]:
    """Edit the uploaded state dict (FedAvg)."""

    def mutate(content: RecordDict) -> None:
        state = {k: v.numpy().copy() for k, v in content[P.ARRAYS].items()}
        content[P.ARRAYS] = ArrayRecord({k: Array(np.array(v)) for k, v in edit(state).items()})

    return mutate


def _first_float(state: dict[str, np.ndarray]) -> str:
    return next(k for k, v in state.items() if v.dtype == np.float32)


def _set_first(value: float) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    def edit(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state[_first_float(state)].flat[0] = value
        return state

    return edit


def _broadcastable(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    key = _first_float(state)
    state[key] = state[key][None]  # (1, ...): numpy would broadcast it into the mean
    return state


def _drop_key(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    state.pop(_first_float(state))
    return state


def _extra_key(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**state, "backdoor.weight": np.ones(3, np.float32)}


def _float64(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in state.items()}


Q, T, E = P.QUERY_INFER, P.TRAIN_DISTILL, P.EVALUATE
FEDMMKT_CASES = [
    Case("slightly negative probabilities", Q, "negative", slightly_negative),
    Case("entropy 0 claimed on uniform probabilities", Q, "not the probabilities'", zero_entropy_on_uniform),
    Case("entropy log C claimed on a one-hot vote", Q, "not the probabilities'", max_entropy_on_one_hot),
    Case("a finite 3e38 embedding", Q, "L2-normalised", huge_embedding_row),
    Case("all-zero embeddings", Q, "L2-normalised", scaled_embeddings(0.0)),
    Case("embeddings x1e30", Q, "L2-normalised", scaled_embeddings(1e30)),
    Case("client record without modality", Q, "lacks keys ['modality']", client_key(P.MODALITY, None)),
    Case("modality that is an int", Q, "modality 3", client_key(P.MODALITY, 3)),
    Case("unknown modality", Q, "modality 'audio'", client_key(P.MODALITY, "audio")),
    Case("an extra top-level record", Q, "records the protocol does not define", extra_record),
    Case("negative label counts", Q, "label-counts", client_key(P.LABEL_COUNTS, [-1] * 24)),
    Case("label counts in a train reply", T, "label-counts", client_key(P.LABEL_COUNTS, [1] * 24)),
    Case("a train loss below zero", T, "'train-loss' = -1.0", metric(P.TRAIN_LOSS, -1.0)),
    Case("a NaN train loss", T, "'train-loss' is missing or not a finite number", metric(P.TRAIN_LOSS, math.nan)),
    Case("negative num-examples", T, "'num-examples' = -5", metric(P.NUM_EXAMPLES, -5)),
    Case("num-examples 2^63-1", T, "'num-examples'", metric(P.NUM_EXAMPLES, 2**63 - 1)),
    Case("fractional num-examples", T, "'num-examples' = 3.5", metric(P.NUM_EXAMPLES, 3.5)),
    Case("an optional metric that is a list", T, "'kl'", metric("kl", [1.0, 2.0])),
    Case("an infinite optional metric", T, "'synthetic-visits'", metric("synthetic-visits", math.inf)),
    Case("an extra record in a train reply", T, "records the protocol does not define", extra_record),
    Case("accuracy above one", E, "'acc-global' = 1.5", metric(P.ACC_GLOBAL, 1.5)),
    Case("negative accuracy", E, "'acc-local' = -0.1", metric(P.ACC_LOCAL, -0.1)),
    Case("NaN optional loss", E, "'loss-global'", metric(P.LOSS_GLOBAL, math.nan)),
    Case("modality that is a list", E, "modality ['image']", client_key(P.MODALITY, ["image"])),
    Case("partition-id that is bytes", E, "partition-id b'", client_key(P.PARTITION_ID, b"\x00")),
    Case("an unregistered architecture", E, "is not a registered task model", client_key(P.ARCHITECTURE, "x")),
    Case("no metrics record", E, "missing MetricRecord 'metrics'", without_metrics),
]
FEDAVG_CASES = [  # round 1 (no global model yet): value checks; then the checks against the global model
    Case("a NaN weight", T, "NaN, Inf", weights(_set_first(math.nan))),
    Case("a weight of 3e38", T, "beyond", weights(_set_first(3e38))),
    Case("a tensor of shape (1, ...)", T, "expected float32", weights(_broadcastable), from_round=2),
    Case("a missing state-dict key", T, "other keys: missing", weights(_drop_key), from_round=2),
    Case("num-examples 0", T, "trained on nothing", metric(P.NUM_EXAMPLES, 0), from_round=2),
    Case("an extra state-dict key", T, "unexpected ['backdoor.weight']", weights(_extra_key), from_round=2),
    Case("float64 weights", T, "are float64", weights(_float64), from_round=2),
    Case("num-examples 1e300", T, "'num-examples' = 1e+300", metric(P.NUM_EXAMPLES, 1e300), from_round=2),
]


def run_hostile(
    tmp_path, micro_run_config, strategy: str, cases: list[Case], nodes: tuple[int, ...]
) -> tuple[InProcessGrid, dict, dict]:
    plan = schedule(cases, nodes)
    rc = {
        **micro_run_config,
        "strategy": strategy,
        "num-server-rounds": ROUNDS,
        "min-nodes": 4,
        "labvote-beta": 1.0,  # the micro models are too uncertain for 0.5: every vote counts
        "results-dir": str(tmp_path),
        "run-name": strategy,
    }
    grid = InProcessGrid(TamperingClientApp(plan), rc, NODES)
    metrics = json.loads((run_federation(grid, rc) / "metrics.json").read_text())
    return grid, metrics, plan


def assert_each_case_rejected(metrics: dict, plan: dict[tuple[int, str, int], Case]) -> None:
    failures = {(f["node_id"], f["phase"], f["round"]): f["reason"] for f in metrics["failures"]}
    for slot, case in plan.items():
        assert slot in failures, f"{case.name}: accepted"
        assert case.expected in failures[slot], f"{case.name}: {failures[slot]}"
    honest = set(failures) - set(plan)
    assert not honest, f"honest replies rejected: {[(s, failures[s]) for s in honest]}"


def assert_metrics_valid(metrics: dict, plan: dict[tuple[int, str, int], Case]) -> None:
    """Every recorded client figure is a number in its range; a rejected evaluation left none."""
    for entry in metrics["rounds"]:
        for client in entry["clients"]:
            for key in ("acc_global", "acc_local"):
                if key in client:
                    assert 0.0 <= client[key] <= 1.0, (entry["round"], client)
            for key in ("train_loss", "loss_local", "loss_global"):
                value = client.get(key)
                assert value is None or (isinstance(value, float) and (math.isnan(value) or value >= 0)), client
            assert isinstance(client.get("modality", "image"), str)
            evaluated = "acc_global" in client
            if (client["node_id"], E, entry["round"]) in plan:
                assert not evaluated, f"{plan[(client['node_id'], E, entry['round'])].name} was recorded"
            if "num_examples" in client:
                assert isinstance(client["num_examples"], int) and client["num_examples"] >= 0


def test_hostile_fedmmkt_replies_are_rejected_and_the_run_goes_on(tmp_path, micro_run_config):
    grid, metrics, plan = run_hostile(tmp_path, micro_run_config, "fedmmkt", FEDMMKT_CASES, HOSTILE)
    assert [r["round"] for r in metrics["rounds"]] == list(range(ROUNDS + 1))
    assert_each_case_rejected(metrics, plan)
    assert_metrics_valid(metrics, plan)
    sent_targets = [m.content[P.TARGETS] for m in grid.sent if P.TARGETS in m.content.array_records]
    assert sent_targets, "no client got distillation targets"
    for targets in sent_targets:  # nothing non-finite, no negative probability, ever sent
        soft = targets[P.SOFT_LABELS].numpy()
        assert np.isfinite(soft).all() and (soft >= 0).all()
        assert np.allclose(soft.sum(1), 1.0, atol=1e-3)
        assert np.isfinite(targets[P.FUSED].numpy()).all()


def test_hostile_fedavg_uploads_are_left_out_of_the_mean(tmp_path, micro_run_config):
    grid, metrics, plan = run_hostile(tmp_path, micro_run_config, "fedavg", FEDAVG_CASES, HOSTILE)
    assert len(metrics["rounds"]) == ROUNDS
    assert_each_case_rejected(metrics, plan)
    assert_metrics_valid(metrics, plan)
    sent_models = [m.content[P.ARRAYS] for m in grid.sent if P.ARRAYS in m.content.array_records]
    assert sent_models, "no global model was sent"
    for model in sent_models:  # every global model sent is finite float32 of the architecture's shapes
        for key, array in model.items():
            values = array.numpy()
            assert key != "backdoor.weight" and values.dtype != np.float64
            assert not np.issubdtype(values.dtype, np.floating) or np.isfinite(values).all()
    for ctx in grid.contexts.values():  # and every node's stored model too
        stored = ctx.state[MODEL_STATE]
        assert all(np.isfinite(a.numpy()).all() for a in stored.values() if a.dtype.startswith("float"))


@pytest.mark.parametrize("count", [2, 3])
def test_a_node_that_answers_one_message_twice_fails_the_phase(count):
    from fedmmkt_strategy.federation.replies import collect_replies
    from tests.messages import reply_to

    replies = [reply_to(E, RecordDict(), node=7, message_id="m") for _ in range(count)]
    sent = Message(RecordDict(), dst_node_id=7, message_type=E)
    sent.metadata.__dict__["_message_id"] = "m"
    outcome = collect_replies(E, [sent], replies)
    assert not outcome.ok and outcome.failed[7] == f"{count} replies to one message"
