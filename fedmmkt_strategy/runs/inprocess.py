"""Federated runs in one process, without Ray: a Grid that hands each message straight to
`client_app(message, context)`.

Used by `fedmmkt compare` (many runs, fast) and the tests. Each node keeps its own Context, so
`context.state` persists across rounds as on a SuperNode. A ClientApp exception becomes an error
reply (code 2, as Flower's runtime produces), so strategies see the same failure shapes as in a
real run. Messages are not serialised, so byte counts come from the same record accounting.

Failures a deployment shows are reproducible here: a ClientApp that raises; one that hangs (each
message runs in a worker thread and a reply later than `timeout` is dropped, as Flower's Grid does;
nodes are called one after another but each gets the whole timeout, as parallel nodes would); and
a node that goes away (`disconnect`: it leaves the node list and later messages to it get the
SuperLink's NODE_UNAVAILABLE error reply).
"""

from __future__ import annotations

import importlib
import threading
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedmmkt_strategy.runs.runner import run_federation

CLIENT_APP_RAISED_EXCEPTION = 2
NODE_UNAVAILABLE = 5  # flwr.common.constant.ErrorCode: what the SuperLink answers for a node that left


def ensure_task_identity() -> None:
    # Building Messages outside a Flower runtime needs a task identity (private API).
    for name in ("_run_id", "_node_id", "_task_id"):
        if getattr(TaskIdentity, name, None) is None:
            setattr(TaskIdentity, name, 1)


class InProcessGrid(Grid):
    """A Grid over in-process nodes: node id -> Context (state persists across messages)."""

    def __init__(
        self,
        client_app: Callable[[Message, Context], Message],
        run_config: dict,
        num_nodes: int,
        node_configs: list[dict] | None = None,
    ):
        ensure_task_identity()
        self.client_app = client_app
        self.contexts = {
            100 + i: Context(
                run_id=1,
                node_id=100 + i,
                node_config=(node_configs or [{}] * num_nodes)[i] | {"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i in range(num_nodes)
        }
        self.silent: set[int] = set()  # connected node ids that never answer
        self.gone: set[int] = set()  # node ids that disconnected
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.gone]

    def disconnect(self, node_id: int) -> None:
        """The node leaves: it is no longer listed, and messages to it get NODE_UNAVAILABLE."""
        self.gone.add(node_id)

    def _call(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        if node in self.gone:
            return Message(Error(NODE_UNAVAILABLE, f"node {node} is offline"), reply_to=msg)
        try:
            return self.client_app(msg, self.contexts[node])
        except Exception:  # noqa: BLE001 - mirrors Flower's runtime turning exceptions into error replies
            return Message(Error(CLIENT_APP_RAISED_EXCEPTION, traceback.format_exc()), reply_to=msg)

    def _deliver(self, msg: Message, timeout: float | None) -> Message | None:
        """The node's reply, or None when it did not answer within `timeout` seconds."""
        if timeout is None:
            return self._call(msg)
        box: list[Message] = []
        worker = threading.Thread(target=lambda: box.append(self._call(msg)), daemon=True)
        worker.start()
        worker.join(timeout)
        return box[0] if box else None

    def push_messages(self, messages: Iterable[Message], timeout: float | None = None) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = str(uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            self.sent.append(msg)
            ids.append(mid)
            if msg.metadata.dst_node_id in self.silent:
                continue
            reply = self._deliver(msg, timeout)
            if reply is not None:
                self._replies[mid] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(list(messages), timeout))

    def create_message(self, *args, **kwargs):  # pragma: no cover - part of the abstract API
        raise NotImplementedError

    def set_run(self, run_id: int) -> None:  # pragma: no cover
        pass

    @property
    def run(self):  # pragma: no cover
        return None


def load_client_app(reference: str = "client_app.app:app") -> Callable[[Message, Context], Message]:
    """Import a ClientApp from a ``module:attribute`` reference, as Flower does from pyproject.toml.

    Loaded by reference so this package never imports an app module statically. In-process,
    clients run one after another on the process's threads (``client-threads`` pins them)."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def run_inprocess(run_config: dict, num_nodes: int, models=None, client_app_ref: str = "client_app.app:app") -> Path:
    """One whole federated run in this process; returns its results folder."""
    grid = InProcessGrid(load_client_app(client_app_ref), run_config, num_nodes)
    return run_federation(grid, run_config, models)
