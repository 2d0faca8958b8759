"""The one round loop of fresh and resumed runs (`runner.run_rounds`): Flower's order of phases,
from any first round, with Flower's log lines."""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, MetricRecord

from fedmmkt_strategy.runs.runner import run_rounds


class RecordingStrategy:
    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def summary(self):
        self.calls.append(("summary", 0))

    def configure_train(self, server_round, arrays, config, grid):
        self.calls.append(("configure_train", server_round))
        return [f"train-{server_round}"]

    def aggregate_train(self, server_round, replies):
        assert replies == [f"train-{server_round}"]
        self.calls.append(("aggregate_train", server_round))
        return ArrayRecord(), MetricRecord({"train-loss-mean": 1.0})

    def configure_evaluate(self, server_round, arrays, config, grid):
        self.calls.append(("configure_evaluate", server_round))
        return [f"evaluate-{server_round}"]

    def aggregate_evaluate(self, server_round, replies):
        assert replies == [f"evaluate-{server_round}"]
        self.calls.append(("aggregate_evaluate", server_round))
        return None


class EchoGrid:
    def __init__(self):
        self.timeouts: list[float] = []

    def send_and_receive(self, messages, timeout):
        self.timeouts.append(timeout)
        return list(messages)


def test_a_resumed_loop_runs_the_remaining_rounds_in_flowers_order(caplog):
    strategy, grid = RecordingStrategy(), EchoGrid()
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addHandler(caplog.handler)
    try:
        run_rounds(strategy, grid, first=3, last=4, timeout=12.0)
    finally:
        flwr_logger.removeHandler(caplog.handler)
    phases = ["configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate"]
    assert strategy.calls == [("summary", 0)] + [(p, r) for r in (3, 4) for p in phases]
    assert grid.timeouts == [12.0] * 4
    text = caplog.text
    assert "[ROUND 3/4]" in text and "[ROUND 4/4]" in text and "[ROUND 1/4]" not in text
    assert "Aggregated MetricRecord" in text and "Strategy execution finished in" in text
