"""An in-process Flower Grid for tests: messages go straight to `client_app(msg, context)`.

No Ray, no serialisation, seconds per round. A ClientApp exception becomes an error reply
(code 2, as Flower's runtime produces), so strategies see the same failure shapes as in a real run.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

CLIENT_APP_RAISED_EXCEPTION = 2


def _ensure_task_identity() -> None:
    # Building Messages outside a Flower runtime needs a task identity (private API).
    for name in ("_run_id", "_node_id", "_task_id"):
        if getattr(TaskIdentity, name, None) is None:
            setattr(TaskIdentity, name, 1)


class LocalGrid(Grid):
    """A Grid over in-process nodes: node id -> Context (state persists across messages)."""

    def __init__(
        self,
        client_app: Callable[[Message, Context], Message],
        run_config: dict,
        num_nodes: int,
        node_configs: list[dict] | None = None,
    ):
        _ensure_task_identity()
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
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = str(uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            self.sent.append(msg)
            ids.append(mid)
            if msg.metadata.dst_node_id in self.silent:
                continue
            try:
                reply = self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception:  # noqa: BLE001 - mirrors Flower's runtime turning exceptions into error replies
                reply = Message(Error(CLIENT_APP_RAISED_EXCEPTION, traceback.format_exc()), reply_to=msg)
            self._replies[mid] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(list(messages)))

    def create_message(self, *args, **kwargs):  # pragma: no cover - part of the abstract API
        raise NotImplementedError

    def set_run(self, run_id: int) -> None:  # pragma: no cover
        pass

    @property
    def run(self):  # pragma: no cover
        return None
