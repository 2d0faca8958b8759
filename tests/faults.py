"""Fault injection for in-process runs: ClientApps that raise, hang or vanish at a chosen message.

Wraps the real ClientApp of an `InProcessGrid`; nodes without a fault run it unchanged. A hung or
vanished node blocks until `release()` (tests call it in teardown), so it never answers within a
phase's timeout, as a stalled device or a killed SuperNode would not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from flwr.app import Context, Message

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.runs.inprocess import InProcessGrid

#: Longest a hung node blocks if a test forgets to release it.
MAX_HANG_S = 120.0


@dataclass(frozen=True)
class Fault:
    """What goes wrong on one node, and at which message (type and round) it happens."""

    kind: Literal["raise", "hang", "vanish"]
    message_type: str
    server_round: int = 1


class FaultInjector:
    """Installs itself as `grid.client_app`; `faults` maps node id -> Fault."""

    def __init__(self, grid: InProcessGrid, faults: dict[int, Fault]):
        self.grid, self.faults = grid, faults
        self.inner: Callable[[Message, Context], Message] = grid.client_app
        self._released = threading.Event()
        grid.client_app = self

    def release(self) -> None:
        """Let hung and vanished nodes' blocked calls return (their replies are long dropped)."""
        self._released.set()

    def _hits(self, msg: Message, context: Context) -> Fault | None:
        fault = self.faults.get(context.node_id)
        if fault is None or msg.metadata.message_type != fault.message_type:
            return None
        return fault if int(msg.content[P.CONFIG][P.SERVER_ROUND]) == fault.server_round else None

    def __call__(self, msg: Message, context: Context) -> Message:
        fault = self._hits(msg, context)
        if fault is None:
            return self.inner(msg, context)
        if fault.kind == "raise":
            raise RuntimeError(f"injected fault: node {context.node_id} raises on {fault.message_type}")
        if fault.kind == "vanish":
            self.grid.disconnect(context.node_id)
        self._released.wait(MAX_HANG_S)
        raise RuntimeError(f"injected fault: node {context.node_id} was released after hanging")
