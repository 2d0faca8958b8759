"""Privacy: what leaves a client in a whole run (recorded message by message), and the
differential privacy of uploads (clipping, noise, simplex projection, RDP accounting)."""

import json
import math

import numpy as np
import pytest

from client_app.app import app as client_app
from client_app.node import ClientNode
from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.runs.inprocess import InProcessGrid
from fedmmkt_strategy.runs.runner import run_federation
from fedmmkt_strategy.steps import privacy

# -- pure functions


def test_project_to_simplex_by_hand():
    rows = np.array([[0.5, 0.5, 0.5], [2.0, 0.0, 0.0], [0.6, 0.3, -0.2]])
    # third row: theta = (0.6 + 0.3 - 1) / 2 = -0.05 -> [0.65, 0.35, 0]
    expected = [[1 / 3, 1 / 3, 1 / 3], [1, 0, 0], [0.65, 0.35, 0]]
    assert privacy.project_to_simplex(rows) == pytest.approx(np.array(expected))


def test_projection_is_the_closest_distribution():
    rng = np.random.default_rng(0)
    noisy = rng.normal(0.1, 0.5, size=(50, 6))
    projected = privacy.project_to_simplex(noisy)
    assert (projected >= 0).all() and projected.sum(1) == pytest.approx(np.ones(50))
    others = rng.dirichlet(np.ones(6), size=(200, 50))  # no random distribution is closer
    assert (np.linalg.norm(others - noisy, axis=-1) >= np.linalg.norm(projected - noisy, axis=-1) - 1e-9).all()


def test_clip_rows_scales_only_long_rows():
    assert privacy.clip_rows(np.array([[3.0, 4.0], [0.3, 0.4]]), 1.0) == pytest.approx(
        np.array([[0.6, 0.8], [0.3, 0.4]])
    )


def test_privatized_outputs_keep_the_protocol_and_move_with_the_noise():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(24), size=40).astype(np.float32)
    emb = rng.normal(size=(40, 8))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    p0, h0, e0 = privacy.privatize(probs, emb, clip=10.0, noise_multiplier=0.0, rng=rng)
    assert p0 == pytest.approx(probs, abs=1e-6) and e0 == pytest.approx(emb, abs=1e-6)
    assert h0 == pytest.approx(privacy.entropy(probs), abs=1e-5)
    p, h, e = privacy.privatize(probs, emb, clip=1.0, noise_multiplier=1.0, rng=rng)
    assert p.dtype == h.dtype == e.dtype == np.float32 and p.shape == probs.shape and e.shape == emb.shape
    assert p.sum(1) == pytest.approx(np.ones(40), abs=1e-5) and (p >= 0).all()
    assert (h >= 0).all() and (h <= math.log(24) + 1e-5).all() and h == pytest.approx(privacy.entropy(p), abs=1e-5)
    assert np.linalg.norm(e, axis=1) == pytest.approx(np.ones(40), abs=1e-5)
    assert np.abs(p - probs).max() > 0.1  # noise of std 1 per coordinate is visible


def test_epsilon_comes_from_opacus_with_the_upload_sensitivity():
    from opacus.accountants import RDPAccountant

    assert privacy.effective_noise_multiplier(8.0, 16) == 1.0  # 8 / (2 * sqrt(16))
    reference = RDPAccountant()
    reference.history = [(1.0, 1.0, 3)]
    assert privacy.epsilon(3, 8.0, 16, 1e-5) == pytest.approx(reference.get_epsilon(1e-5))
    assert privacy.epsilon(0, 8.0, 16, 1e-5) == 0.0
    assert privacy.epsilon(3, 8.0, 16, 1e-5) > privacy.epsilon(2, 8.0, 16, 1e-5) > privacy.epsilon(2, 16.0, 16, 1e-5)


def test_ledger_counts_uploads_per_node_and_round_trips():
    ledger = privacy.PrivacyLedger(noise_multiplier=20.0, delta=1e-5)
    first, second = ledger.record(7, 48), ledger.record(7, 48)
    assert 0 < first < second == ledger.epsilon(7) and ledger.epsilon(8) == 0.0
    copy = privacy.PrivacyLedger(20.0, 1e-5)
    copy.load_state_dict(ledger.state_dict())
    assert copy.epsilon(7) == second


# -- every message of a run


class RecordingGrid(InProcessGrid):
    """The in-process grid, keeping every reply (uplink) besides every message sent (downlink)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received = []

    def pull_messages(self, message_ids):
        replies = list(super().pull_messages(message_ids))
        self.received.extend(replies)
        return replies


#: Everything a client may send, per message type: records, and keys inside them.
UPLINK = {
    P.QUERY_INFER: {P.INFERENCE, P.CLIENT},
    P.TRAIN_DISTILL: {P.METRICS, P.CLIENT},
    P.EVALUATE: {P.METRICS, P.CLIENT},
}
METRIC_KEYS = {
    P.NUM_EXAMPLES, P.TRAIN_LOSS, "ce", "kl", "rep", "synthetic-rows", "synthetic-visits",
    P.ACC_LOCAL, P.LOSS_LOCAL, P.ACC_GLOBAL, P.LOSS_GLOBAL,
}  # fmt: skip
CLIENT_KEYS = {P.MODALITY, P.ARCHITECTURE, P.PARTITION, P.NUM_PARTITIONS, P.PARTITION_ID}


def check_uplink(reply, pool_size: int, dim: int, private: dict) -> None:
    """One reply: documented records and keys only; arrays only model outputs on the N
    synthetic inputs; nothing equal to or containing private samples, labels or indices."""
    kind = reply.metadata.message_type
    assert set(reply.content.keys()) == UPLINK[kind], kind
    client = dict(reply.content[P.CLIENT])
    # the documented exception (docs/protocol.md): per-class counts, once, in a query reply
    counts = client.pop(P.LABEL_COUNTS, None)
    if counts is not None:
        assert kind == P.QUERY_INFER and all(isinstance(c, int) for c in counts)
    assert set(client.keys()) == CLIENT_KEYS
    assert all(isinstance(v, (int, str)) for v in client.values())
    if kind != P.QUERY_INFER:
        metrics = reply.content[P.METRICS]
        assert set(metrics.keys()) <= METRIC_KEYS and all(isinstance(v, (int, float)) for v in metrics.values())
        return
    arrays = {k: v.numpy() for k, v in reply.content[P.INFERENCE].items()}
    shapes = {P.PROBS: (pool_size, 24), P.ENTROPY: (pool_size,), P.EMBEDDING: (pool_size, dim)}
    assert {k: a.shape for k, a in arrays.items()} == shapes
    for array in arrays.values():
        assert array.dtype == np.float32  # no labels, indices or raw pixels (integers) go up
        assert not set(array.shape) & private["sizes"]  # nothing shaped like the private splits
        raw = array.tobytes()
        assert not any(sample in raw for sample in private["samples"])


def private_data(grid: InProcessGrid) -> dict:
    """Per run: the sizes of every client's private splits, and raw bytes of private samples."""
    sizes, samples = set(), []
    for context in grid.contexts.values():
        node = ClientNode.from_context(context)
        for split in ("train", "test"):
            part = getattr(node.data, split)
            sizes.add(len(part.labels))
            inputs = part.inputs
            if isinstance(inputs, np.ndarray) and inputs.dtype != object and inputs.dtype.kind != "U":
                samples += [inputs[i].tobytes() for i in range(3)]
            samples.append(np.asarray(part.labels[:8]).astype(np.float32).tobytes())
    return {"sizes": sizes, "samples": samples}


@pytest.mark.parametrize("strategy", ["fedmmkt", "fedmd", "creamfl"])
def test_nothing_private_leaves_a_client(tmp_path, micro_run_config, strategy):
    rc = {**micro_run_config, "strategy": strategy, "num-server-rounds": 1, "results-dir": str(tmp_path)}
    grid = RecordingGrid(client_app, rc, 4)
    run_federation(grid, rc)
    private = private_data(grid)
    assert 48 not in private["sizes"]  # the shape check below must be able to tell them apart
    replies = [r for r in grid.received if not r.has_error()]
    assert {r.metadata.message_type for r in replies} == set(UPLINK) and len(replies) == 3 * 4
    for reply in replies:
        check_uplink(reply, pool_size=48, dim=128, private=private)


def test_differentially_private_uploads_are_accepted_and_accounted(tmp_path, micro_run_config):
    rc = {**micro_run_config, "num-server-rounds": 2, "dp-noise-multiplier": 30.0, "results-dir": str(tmp_path)}
    grid = RecordingGrid(client_app, rc, 4)
    metrics = json.loads((run_federation(grid, rc) / "metrics.json").read_text())
    assert not metrics["failures"]  # noisy replies still pass every check
    probs = [r.content[P.INFERENCE][P.PROBS].numpy() for r in grid.received if r.metadata.message_type == P.QUERY_INFER]
    assert all((p == 0).any() for p in probs)  # projected onto the simplex: a softmax is never exactly 0
    expected = [privacy.epsilon(r, 30.0, 48, 1e-5) for r in (1, 2)]
    assert [metrics["rounds"][r]["server"]["dp_epsilon_max"] for r in (1, 2)] == pytest.approx(expected)
    assert all(c["dp_epsilon"] == pytest.approx(expected[1]) for c in metrics["rounds"][2]["clients"])


def test_privatized_outputs_cast_to_float16_pass_the_float16_checks():
    """DP in float32 first, then the cast (client_app.app.query_infer): the noisy, projected
    rows survive float16 rounding within the server's float16 tolerances."""
    from flwr.app import Array, ArrayRecord, RecordDict

    from fedmmkt_strategy.federation.validation import check_inference_reply
    from tests.messages import client_description, reply_to

    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(102), size=64).astype(np.float32)
    emb = rng.normal(size=(64, 16)).astype(np.float32)
    p, h, e = privacy.privatize(probs, emb, clip=1.0, noise_multiplier=2.0, rng=rng)
    assert p.dtype == np.float32  # noise and projection happen before any cast
    arrays = {P.PROBS: p, P.ENTROPY: h, P.EMBEDDING: e}
    content = RecordDict(
        {
            P.INFERENCE: ArrayRecord({k: Array(v.astype(np.float16)) for k, v in arrays.items()}),
            P.CLIENT: client_description(),
        }
    )
    assert check_inference_reply(reply_to(P.QUERY_INFER, content), 64, 102, 16, "float16") is None
