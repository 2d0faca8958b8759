"""Hand-built replies for tests of the server's reply checks: a well-formed client description
and a reply to a message of a given type, with everything else left to the test."""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.runs.inprocess import ensure_task_identity


def client_description(modality: str = "image", architecture: str = "cnn", **changes) -> ConfigRecord:
    """The `client` record an honest node of `architecture` sends (docs/protocol.md), with `changes`."""
    record = {P.MODALITY: modality, P.ARCHITECTURE: architecture, P.PARTITION: 0, P.NUM_PARTITIONS: 1}
    return ConfigRecord({**record, P.PARTITION_ID: 0, **changes})


def reply_to(message_type: str, content: RecordDict, node: int = 7, message_id: str = "q") -> Message:
    """A reply carrying `content` to a message of `message_type` sent to `node`."""
    ensure_task_identity()
    query = Message(RecordDict(), dst_node_id=node, message_type=message_type)
    query.metadata.__dict__["_message_id"] = message_id
    return Message(content, reply_to=query)
