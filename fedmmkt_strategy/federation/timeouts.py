"""Per-phase timeouts: how long each kind of message exchange waits for replies.

Phases differ by orders of magnitude: `query.infer` is one forward pass on the synthetic set,
`train.distill` is local training, `evaluate` two test passes. One `round-timeout` for all of them
either cuts slow training short or lets a dead node stall the cheap phases for as long as training
may take. Flower's `Strategy.start` passes a single `timeout` to every `send_and_receive`, so the
phase's own limit is applied where messages leave: a Grid wrapper that reads the phase from the
messages' type. A node that has not replied when its phase's time is up counts as failed
(`replies.collect_replies`); late replies are dropped by Flower.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.config import RunConfig


def phase_timeouts(config: RunConfig) -> dict[str, float]:
    """Seconds each phase waits for replies: its own key, or `round-timeout` when that key is 0."""
    return {
        P.QUERY_INFER: config.query_timeout or config.round_timeout,
        P.QUERY_SECAGG: config.query_timeout or config.round_timeout,  # each stage is a short exchange
        P.TRAIN_DISTILL: config.train_timeout or config.round_timeout,
        P.EVALUATE: config.evaluate_timeout or config.round_timeout,
    }


class PhaseTimeoutGrid(Grid):
    """A Grid that waits for each phase's replies as long as `timeouts[message_type]` says.

    Everything else is delegated to `grid`. Messages of a type without an entry keep the timeout
    the caller gave.
    """

    def __init__(self, grid: Grid, timeouts: Mapping[str, float]):
        self.grid = grid
        self.timeouts = dict(timeouts)

    def timeout_for(self, messages: list[Message], default: float | None) -> float | None:
        """The phase's timeout when all messages are of one known type, else `default`."""
        types = {m.metadata.message_type for m in messages}
        if len(types) == 1 and (phase := types.pop()) in self.timeouts:
            return self.timeouts[phase]
        return default

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        return self.grid.send_and_receive(messages, timeout=self.timeout_for(messages, timeout))

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def set_run(self, run_id) -> None:
        self.grid.set_run(run_id)

    @property
    def run(self):
        return self.grid.run
