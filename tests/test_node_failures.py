"""Node failures in-process: a ClientApp that raises, one that hangs, one whose node disappears
mid-round. Up to 30 % failing, the round completes on the rest and the run names the failed nodes;
below the reply quorum the run fails with the reason, and never waits longer than a phase's timeout."""

from __future__ import annotations

import json
import logging
import time

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from client_app.app import app as client_app
from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.config import RunConfig
from fedmmkt_strategy.federation.sampling import QuorumError
from fedmmkt_strategy.federation.timeouts import PhaseTimeoutGrid, phase_timeouts
from fedmmkt_strategy.generative.server_models import load_server_models
from fedmmkt_strategy.runs.inprocess import InProcessGrid
from fedmmkt_strategy.runs.runner import run_federation
from tests.faults import Fault, FaultInjector

TEN_NODES = {"client-layout": "image:cnn,text:bow", "client-warmup-epochs": 1}


@pytest.fixture(scope="module")
def models(micro_run_config):
    return load_server_models(RunConfig.from_run_config(micro_run_config))


@pytest.fixture()
def faulty_grid(micro_run_config, tmp_path):
    """Builds an InProcessGrid whose nodes fail as told; releases hung nodes at teardown."""
    injectors: list[FaultInjector] = []

    def build(num_nodes: int, faults: dict[int, Fault], **overrides) -> tuple[InProcessGrid, dict]:
        rc = {**micro_run_config, **TEN_NODES, "results-dir": str(tmp_path), "run-name": "faults", **overrides}
        grid = InProcessGrid(client_app, rc, num_nodes)
        injectors.append(FaultInjector(grid, faults))
        return grid, rc

    yield build
    for injector in injectors:
        injector.release()


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture()
def flwr_warnings():
    handler = Records()
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def test_phase_timeouts_fall_back_to_the_round_timeout():
    config = RunConfig.from_run_config({"round-timeout": 50.0, "train-timeout": 7.0})
    assert phase_timeouts(config) == {
        P.QUERY_INFER: 50.0,
        P.QUERY_SECAGG: 50.0,
        P.TRAIN_DISTILL: 7.0,
        P.EVALUATE: 50.0,
    }


def test_a_hung_node_costs_its_phase_timeout_not_the_round_timeout(faulty_grid):
    grid, _ = faulty_grid(2, {101: Fault("hang", P.EVALUATE)})
    wrapped = PhaseTimeoutGrid(grid, {P.EVALUATE: 1.5})

    def evaluate(node: int) -> Message:
        content = RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1})})
        return Message(content, dst_node_id=node, message_type=P.EVALUATE)

    # node 100's first message builds its data and model (seconds on a busy machine): not what is timed
    assert len(list(grid.send_and_receive([evaluate(100)], timeout=300))) == 1
    messages = [evaluate(100), evaluate(101)]
    start = time.monotonic()
    replies = list(wrapped.send_and_receive(messages, timeout=600))
    waited = time.monotonic() - start
    assert [r.metadata.reply_to_message_id for r in replies] == [messages[0].metadata.message_id]
    assert 1.5 <= waited < 30, waited


def test_fedmmkt_completes_with_30_percent_of_nodes_failing_and_names_them(
    faulty_grid, models, flwr_warnings, tmp_path
):
    faults = {
        101: Fault("raise", P.QUERY_INFER),  # a ClientApp that raises
        104: Fault("hang", P.TRAIN_DISTILL),  # one that never answers
        107: Fault("vanish", P.TRAIN_DISTILL),  # a node that disappears mid-round
    }
    grid, rc = faulty_grid(10, faults, **{"num-server-rounds": 2, "train-timeout": 6.0})
    start = time.monotonic()
    run_dir = run_federation(grid, rc, models)
    elapsed = time.monotonic() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    failed = {(f["round"], f["node_id"], f["phase"], f["reason"].split(":")[0]) for f in metrics["failures"]}
    assert failed == {
        (1, 101, P.QUERY_INFER, "error code 2"),
        (1, 104, P.TRAIN_DISTILL, "no reply before the timeout"),
        (1, 107, P.TRAIN_DISTILL, "no reply before the timeout"),
        (1, 107, P.EVALUATE, "error code 5"),  # the SuperLink's NODE_UNAVAILABLE, matched by message id
    }
    evaluated = lambda r: {c["node_id"] for c in metrics["rounds"][r]["clients"] if "acc_global" in c}  # noqa: E731
    assert evaluated(1) == set(range(100, 110)) - {107}
    assert evaluated(2) == set(range(100, 110)) - {107}  # the vanished node is no longer sampled
    assert "round 1: 3 of 10 sampled nodes failed" in "\n".join(flwr_warnings)
    assert any("node 107 (train.distill: no reply" in line for line in flwr_warnings)
    assert elapsed < 120, elapsed  # two hung nodes cost one train-timeout each, not round-timeout


def test_below_the_reply_quorum_fedmmkt_fails_with_the_failed_nodes(faulty_grid, models):
    faults = {n: Fault("raise", P.QUERY_INFER) for n in (100, 101, 102)}
    grid, rc = faulty_grid(5, faults, **{"num-server-rounds": 1, "min-reply-fraction": 0.6})
    with pytest.raises(QuorumError, match=r"query.infer: only 2 of 5 nodes replied, 3 needed") as err:
        run_federation(grid, rc, models)
    assert "node 100: error code 2: RuntimeError: injected fault" in str(err.value)


def test_a_node_gone_before_sampling_fails_the_run_after_the_sample_deadline(faulty_grid):
    grid, rc = faulty_grid(2, {}, **{"strategy": "local", "num-server-rounds": 1, "sample-deadline": 1.0})
    grid.disconnect(101)
    start = time.monotonic()
    with pytest.raises(QuorumError, match="only 1 of the required 2 nodes connected within 1 s"):
        run_federation(grid, rc)
    assert time.monotonic() - start < 30
