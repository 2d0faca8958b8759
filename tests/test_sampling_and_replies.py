import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.federation.replies import collect_replies, require_quorum
from fedmmkt_strategy.federation.sampling import NodeSampler, QuorumError
from fedmmkt_strategy.federation.validation import check_metrics_reply
from fedmmkt_strategy.runs.inprocess import ensure_task_identity


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


class GrowingGrid:
    """Nodes appear one per second, up to `final`."""

    def __init__(self, clock: FakeClock, final: int):
        self.clock, self.final = clock, final

    def get_node_ids(self):
        return [10 + i for i in range(min(self.final, 1 + int(self.clock())))]


def test_sampler_waits_for_late_nodes_then_settles():
    clock = FakeClock()
    sampler = NodeSampler(min_nodes=2, deadline=60, settle=2.0, clock=clock, sleep=clock.sleep)
    assert sampler.sample(GrowingGrid(clock, 5), 1) == [10, 11, 12, 13, 14]


def test_sampler_fails_with_a_reason_after_the_deadline():
    clock = FakeClock()
    sampler = NodeSampler(min_nodes=4, deadline=10, clock=clock, sleep=clock.sleep)
    with pytest.raises(QuorumError, match="only 2 of the required 4 nodes"):
        sampler.sample(GrowingGrid(clock, 2), 1)
    assert clock() == pytest.approx(10, abs=0.6)


def test_sampler_fraction_is_seeded_and_respects_quorum():
    clock = FakeClock()
    clock.t = 100
    grid = GrowingGrid(clock, 10)
    a = NodeSampler(min_nodes=3, fraction=0.2, settle=0, seed=1, clock=clock, sleep=clock.sleep)
    b = NodeSampler(min_nodes=3, fraction=0.2, settle=0, seed=1, clock=clock, sleep=clock.sleep)
    assert a.sample(grid, 1) == b.sample(grid, 1)
    assert len(a.sample(grid, 2)) == 3


def test_sampler_keeps_uint64_node_ids_exact():
    class BigIds:
        def get_node_ids(self):
            return [18240321234776938496, 806597387947416064]

    clock = FakeClock()
    assert NodeSampler(1, settle=0, clock=clock, sleep=clock.sleep).sample(BigIds(), 1) == [
        806597387947416064,
        18240321234776938496,
    ]


def _sent(nodes):
    ensure_task_identity()
    msgs = []
    for i, n in enumerate(nodes):
        m = Message(RecordDict(), dst_node_id=n, message_type="evaluate")
        m.metadata.__dict__["_message_id"] = f"m{i}"
        msgs.append(m)
    return msgs


def _ok_reply(msg, **metrics):
    content = RecordDict(
        {
            P.METRICS: MetricRecord(metrics),
            P.CLIENT: ConfigRecord(
                {P.MODALITY: "image", P.ARCHITECTURE: "cnn", P.PARTITION: 0, P.NUM_PARTITIONS: 1, P.PARTITION_ID: 0}
            ),
        }
    )
    return Message(content, reply_to=msg)


def test_replies_are_matched_by_message_id_and_failures_explained():
    sent = _sent([5, 6, 7, 8])
    replies = [
        _ok_reply(sent[0], **{P.ACC_LOCAL: 0.5}),
        Message(Error(2, "Traceback ...\nValueError: boom"), reply_to=sent[1]),
        _ok_reply(sent[2], **{P.ACC_LOCAL: float("nan")}),
    ]
    check = lambda r: check_metrics_reply(r, (P.ACC_LOCAL,))  # noqa: E731
    outcome = collect_replies("evaluate", sent, replies, check)
    assert list(outcome.ok) == [5]
    assert outcome.failed[6] == "error code 2: ValueError: boom"
    assert "not a finite number" in outcome.failed[7]
    assert outcome.failed[8] == "no reply before the timeout"


def test_quorum():
    sent = _sent([1, 2, 3, 4])
    outcome = collect_replies("train", sent, [_ok_reply(sent[0]), _ok_reply(sent[1])])
    require_quorum("train", outcome, min_fraction=0.5, min_nodes=2)
    with pytest.raises(QuorumError, match="only 2 of 4 nodes replied, 3 needed"):
        require_quorum("train", outcome, min_fraction=0.75, min_nodes=2)


def test_reply_without_client_description_is_rejected():
    sent = _sent([1])
    bare = Message(RecordDict({P.METRICS: MetricRecord({P.ACC_LOCAL: 1.0})}), reply_to=sent[0])
    assert "missing ConfigRecord 'client'" in check_metrics_reply(bare, (P.ACC_LOCAL,))
