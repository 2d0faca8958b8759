"""Secure aggregation (``secure-aggregation = true``): the masking is exact, the vote and the
fusion are the plain round's up to quantisation, the server never holds one client's upload,
and a client that drops out mid-protocol does not stop the round."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

import client_app.app as client_module
from client_app.secagg_client import SecAggAbort, step
from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.config import ConfigError, RunConfig
from fedmmkt_strategy.federation.secure_round import check_stage_reply
from fedmmkt_strategy.runs.inprocess import InProcessGrid, load_client_app
from fedmmkt_strategy.runs.runner import run_federation
from fedmmkt_strategy.steps.fusion import aggregate, contrastive_terms, contrastive_weights
from fedmmkt_strategy.steps.labvote import (
    labvote,
    own_class_weights,
    plain_average,
    prompt_class_weights,
    vote_from_terms,
    vote_terms,
)
from fedmmkt_strategy.steps.secagg import SCALE, dequantize, masked_vector, reconstruction_threshold, unmask_sum
from tests.messages import client_description, reply_to

SESSION = "r1-test"


def _config(stage: str, **values) -> ConfigRecord:
    return ConfigRecord({P.SECAGG_STAGE: stage, P.SECAGG_SESSION: SESSION, **values})


def run_session(values: dict[int, np.ndarray], groups: dict[int, int], drop: frozenset[int] = frozenset()):
    """The four stages between nodes in memory, as the server relays them; `drop` sends no vector.
    Returns (group -> unmasked sum, node -> masked vector, node -> state)."""
    nodes = sorted(values)
    threshold = reconstruction_threshold(len(nodes), 0.5)
    states = {n: ConfigRecord() for n in nodes}
    keys = {n: step(states[n], _config("setup", **{P.SECAGG_THRESHOLD: threshold}), n)[0] for n in nodes}
    share = _config(
        "share-keys",
        **{
            P.SECAGG_NODES: nodes,
            P.SECAGG_PK1: [keys[n][P.SECAGG_PK1] for n in nodes],
            P.SECAGG_PK2: [keys[n][P.SECAGG_PK2] for n in nodes],
            P.SECAGG_GROUPS: [groups[n] for n in nodes],
        },
    )
    relay: dict[int, list] = {n: [] for n in nodes}
    for n in nodes:
        reply, _ = step(states[n], share, n)
        for dst, ciphertext in zip(reply[P.SECAGG_DESTINATIONS], reply[P.SECAGG_CIPHERTEXTS]):
            relay[dst].append((n, ciphertext))
    masked = {}
    for n in nodes:
        if n in drop:
            continue
        collect = _config(
            "collect", **{P.SECAGG_SOURCES: [s for s, _ in relay[n]], P.SECAGG_CIPHERTEXTS: [c for _, c in relay[n]]}
        )
        masked[n] = step(states[n], collect, n, lambda n=n: values[n])[1]
    active, dead = sorted(masked), sorted(drop)
    shares: dict[int, list[bytes]] = {n: [] for n in nodes}
    for n in active:
        reply, _ = step(states[n], _config("unmask", **{P.SECAGG_ACTIVE: active, P.SECAGG_DEAD: dead}), n)
        for owner, blob in zip(reply[P.SECAGG_NODES], reply[P.SECAGG_SHARES]):
            shares[owner].append(blob)
    secrets = {n: combine_shares(s[:threshold]) for n, s in shares.items() if len(s) >= threshold}
    pk1 = {n: keys[n][P.SECAGG_PK1] for n in nodes}
    sums = {}
    for g in sorted(set(groups.values())):
        members = [n for n in active if groups[n] == g]
        if all(n in secrets for n in members) and len(members) >= 2:
            dropped = {n: secrets[n] for n in dead if groups[n] == g}
            sums[g] = unmask_sum(
                {n: masked[n] for n in members}, SESSION, {n: secrets[n] for n in members}, dropped, pk1
            )
    return sums, masked, states


def test_masked_sums_are_exact_per_group_and_survive_a_dropout():
    rng = np.random.default_rng(0)
    groups = {11: 0, 22: 0, 33: 1, 44: 1, 55: 1}
    values = {n: rng.normal(size=9) for n in groups}
    sums, masked, _ = run_session(values, groups, drop=frozenset({44}))
    assert np.abs(sums[0] - values[11] - values[22]).max() <= 2 / SCALE
    assert np.abs(sums[1] - values[33] - values[55]).max() <= 2 / SCALE  # node 44's pairwise masks removed
    for n, vector in masked.items():  # alone, a masked vector says nothing about its values
        assert np.abs(dequantize(vector) - values[n]).max() > 1e3


def test_a_lone_survivor_of_a_group_is_never_unmasked_and_stages_come_in_order():
    groups = {1: 0, 2: 0, 3: 1, 4: 1}
    values = {n: np.full(3, float(n)) for n in groups}
    sums, _, states = run_session(values, groups, drop=frozenset({4}))
    assert set(sums) == {0}  # node 3, alone in group 1, keeps its seed: its vector stays masked
    with pytest.raises(SecAggAbort, match="expected it after"):
        step(states[1], _config("collect", **{P.SECAGG_SOURCES: [], P.SECAGG_CIPHERTEXTS: []}), 1, lambda: np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        masked_vector(np.array([np.nan]), SESSION, 1, b"0" * 32, b"", {})


def test_the_vote_and_the_aggregate_are_sums_over_clients():
    rng = np.random.default_rng(1)
    k, n, c, d = 4, 30, 6, 8
    probs = rng.dirichlet(np.full(c, 0.3), size=(k, n)).astype(np.float32)
    entropy = -(probs * np.log(probs + 1e-12)).sum(-1)
    counts = rng.integers(0, 5, size=(k, c))
    classes = rng.integers(0, c, size=n)
    for class_aware in (False, True):
        sample = prompt_class_weights(counts, classes) if class_aware else None
        plain = labvote(probs, entropy, 0.5, None, sample)
        totals = counts.sum(0)
        terms = [
            vote_terms(
                probs[i],
                entropy[i],
                0.5,
                "labvote",
                own_class_weights(counts[i], classes, totals) if class_aware else None,
            )
            for i in range(k)
        ]
        secure = vote_from_terms(np.sum(terms, 0), n, c)
        assert (secure.kept == plain.kept).all() and (secure.labels == plain.labels).all()
        np.testing.assert_allclose(secure.soft_labels, plain.soft_labels, atol=1e-6)
    average = vote_from_terms(np.sum([vote_terms(probs[i], entropy[i], rule="average") for i in range(k)], 0), n, c)
    np.testing.assert_allclose(average.soft_labels, plain_average(probs).soft_labels, atol=1e-6)
    reps = F.normalize(torch.randn(k, n, d), dim=-1)
    anchors = F.normalize(torch.randn(n, d), dim=-1)
    plain_tokens = F.normalize(aggregate(reps, contrastive_weights(reps, anchors, 0.1, 7)), dim=-1)
    summed = np.sum([contrastive_terms(reps[i], anchors, 0.1, 7) for i in range(k)], 0)
    secure_tokens = F.normalize(torch.as_tensor(summed.reshape(n, d), dtype=torch.float32), dim=-1)
    torch.testing.assert_close(secure_tokens, plain_tokens, atol=1e-5, rtol=0)


def test_secure_aggregation_refuses_what_it_cannot_hide():
    with pytest.raises(ConfigError, match="secure-aggregation"):
        RunConfig.from_run_config({"secure-aggregation": True, "strategy": "fedavg"})
    with pytest.raises(ConfigError, match="labvote-robust"):
        RunConfig.from_run_config({"secure-aggregation": True, "labvote-robust": "reliability"})


# ---------------------------------------------------------------- whole rounds, in-process
class WireClient:
    """The ClientApp behind a protobuf round trip of every message (as the SuperLink serialises
    them), recording each reply and the plain vector each node masked."""

    def __init__(self, drop_collect_of: int | None = None):
        self.app = load_client_app()
        self.replies: list[Message] = []
        self.drop_collect_of = drop_collect_of

    def __call__(self, msg: Message, context) -> Message:
        msg.content = recorddict_from_proto(recorddict_to_proto(msg.content))
        config = msg.content.config_records.get(P.SECAGG, {})
        if config.get(P.SECAGG_STAGE) == "collect" and msg.metadata.dst_node_id == self.drop_collect_of:
            raise ConnectionError("the device went offline")
        reply = self.app(msg, context)
        reply = Message(recorddict_from_proto(recorddict_to_proto(reply.content)), reply_to=msg)
        self.replies.append(reply)
        return reply


@pytest.fixture
def contributions(monkeypatch):
    """(node, session) -> the plain vector the node masked."""
    seen: dict[tuple[int, str], np.ndarray] = {}
    original = client_module._secure_contribution

    def recording(node, msg, context):
        vector = original(node, msg, context)
        seen[(msg.metadata.dst_node_id, str(msg.content[P.SECAGG][P.SECAGG_SESSION]))] = vector
        return vector

    monkeypatch.setattr(client_module, "_secure_contribution", recording)
    return seen


def _targets(grid: InProcessGrid, server_round: int) -> dict[int, dict[str, np.ndarray]]:
    return {
        m.metadata.dst_node_id: {k: v.numpy() for k, v in m.content[P.TARGETS].items()}
        for m in grid.sent
        if m.metadata.message_type == P.TRAIN_DISTILL
        and m.metadata.group_id == str(server_round)
        and P.TARGETS in m.content.array_records
    }


def _run(micro_run_config, tmp_path, name: str, client, **overrides):
    # micro clients are barely trained: beta 1 lets every vote count, so there is something to send
    rc = {**micro_run_config, "results-dir": str(tmp_path), "run-name": name, "num-server-rounds": 1}
    rc |= {"labvote-beta": 1.0, **overrides}
    grid = InProcessGrid(client, rc, 4)
    run_dir = run_federation(grid, rc)
    return grid, run_dir


def test_secure_rounds_equal_plain_ones_and_the_server_sees_only_sums(micro_run_config, tmp_path, contributions):
    plain_grid, _ = _run(micro_run_config, tmp_path, "plain", load_client_app())
    client = WireClient()
    secure_grid, run_dir = _run(micro_run_config, tmp_path, "secure", client, **{"secure-aggregation": True})
    plain, secure = _targets(plain_grid, 1), _targets(secure_grid, 1)
    assert set(secure) == set(plain) == {100, 101, 102, 103}
    for node in plain:
        assert set(secure[node]) == set(plain[node])
        np.testing.assert_array_equal(secure[node][P.INDICES], plain[node][P.INDICES])
        for key in (P.SOFT_LABELS, P.WEIGHTS, P.FUSED):
            np.testing.assert_allclose(secure[node][key], plain[node][key], atol=1e-5)
    # (a) nothing a client sent is its own upload: no inference record, every vector masked
    assert not any(P.INFERENCE in r.content.array_records for r in client.replies)
    for reply in client.replies:
        if P.SECAGG_MASKED in reply.content.array_records:
            vector = reply.content[P.SECAGG_MASKED][P.VECTOR].numpy()
            mine = [
                v for (n, _), v in contributions.items() if n == reply.metadata.src_node_id and v.size == vector.size
            ]
            assert mine and all(np.abs(dequantize(vector) - v).max() > 1e3 for v in mine)
    # the strategy's checkpoint holds the counts as sums per modality, never one node's
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)["strategy"]
    assert saved["label_counts"] == {}
    counts = {n: v for (n, s), v in contributions.items() if s == "r1-label-counts"}
    for modality, members in (("image", (100, 102)), ("text", (101, 103))):
        total = saved["class_totals"][modality].numpy()
        np.testing.assert_array_equal(total, counts[members[0]] + counts[members[1]])
        assert not any(np.array_equal(total, counts[m]) for m in members)


def test_a_client_that_drops_out_mid_protocol_does_not_stop_the_round(micro_run_config, tmp_path, contributions):
    client = WireClient(drop_collect_of=102)
    grid, run_dir = _run(micro_run_config, tmp_path, "dropout", client, **{"secure-aggregation": True})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    phases = {(f["phase"], f["node_id"]) for f in metrics["failures"]}
    assert (f"{P.QUERY_SECAGG}.vote.collect", 102) in phases
    targets = _targets(grid, 1)
    assert 102 not in targets and set(targets) == {100, 101, 103}
    # the vote is the survivors' sum, node 102's masks removed
    terms = [contributions[(n, "r1-vote")] for n in (100, 101, 103)]
    c = targets[100][P.SOFT_LABELS].shape[1]
    expected = vote_from_terms(np.sum(terms, 0), len(terms[0]) // (c + 2), c)
    kept = targets[100][P.INDICES]
    np.testing.assert_array_equal(kept, expected.kept_indices)
    np.testing.assert_allclose(targets[100][P.SOFT_LABELS], expected.soft_labels[kept], atol=1e-5)
    assert metrics["rounds"][-1]["round"] == 1  # the run completed its round


# ---------------------------------------------------------------- malformed stage replies
def _stage_reply(values: dict, client: bool = False, vector: np.ndarray | None = None) -> Message:
    content = RecordDict({P.SECAGG: ConfigRecord(values)})
    if client:
        content[P.CLIENT] = client_description()
    if vector is not None:
        content[P.SECAGG_MASKED] = ArrayRecord({P.VECTOR: Array(vector)})
    return reply_to(P.QUERY_SECAGG, content)


@pytest.mark.parametrize(
    ("stage", "reply", "expected", "reason"),
    [
        ("setup", _stage_reply({P.SECAGG_PK1: b"a", P.SECAGG_PK2: b"a"}, client=True), {}, "distinct"),
        ("setup", _stage_reply({P.SECAGG_PK1: b"a", P.SECAGG_PK2: b"b"}), {}, "missing ConfigRecord 'client'"),
        ("setup", _stage_reply({P.SECAGG_PK1: b"a" * 5000, P.SECAGG_PK2: b"b"}, client=True), {}, "distinct"),
        (
            "share-keys",
            _stage_reply({P.SECAGG_DESTINATIONS: [1, 2], P.SECAGG_CIPHERTEXTS: [b"x"]}),
            {"others": [1, 2]},
            "equal length",
        ),
        (
            "share-keys",
            _stage_reply({P.SECAGG_DESTINATIONS: [1, 1], P.SECAGG_CIPHERTEXTS: [b"x", b"y"]}),
            {"others": [1, 2]},
            "exactly once",
        ),
        ("collect", _stage_reply({}), {"length": 3}, "missing ArrayRecord"),
        ("collect", _stage_reply({}, vector=np.zeros(3, np.float64)), {"length": 3}, "expected uint64"),
        ("collect", _stage_reply({}, vector=np.zeros(4, np.uint64)), {"length": 3}, "expected uint64 (3,)"),
        (
            "unmask",
            _stage_reply({P.SECAGG_NODES: [1, 9], P.SECAGG_SHARES: [b"s", b"t"]}),
            {"asked": {1, 2}},
            "did not ask",
        ),
        ("unmask", _stage_reply({P.SECAGG_NODES: [1, 1], P.SECAGG_SHARES: [b"s", b"t"]}), {"asked": {1}}, "once"),
    ],
)
def test_malformed_stage_replies_are_refused_with_a_reason(stage, reply, expected, reason):
    assert reason in (check_stage_reply(reply, stage, **expected) or "")


def test_a_well_formed_collect_reply_passes():
    assert check_stage_reply(_stage_reply({}, vector=np.zeros(3, np.uint64)), "collect", length=3) is None
