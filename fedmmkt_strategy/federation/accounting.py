"""Bytes on the wire, counted from the records of a message.

Arrays are counted by their serialised payload (`Array.data`), scalars and strings by their
encoded size. This is what a device pays to send or receive, minus the constant gRPC framing.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, RecordDict


def _scalar_bytes(value: object) -> int:
    if isinstance(value, (bytes, str)):
        return len(value.encode() if isinstance(value, str) else value)
    if isinstance(value, list):
        return sum(_scalar_bytes(v) for v in value)
    return 8


def payload_bytes(content: RecordDict) -> int:
    """Size of a message's content in bytes."""
    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(array.data) for array in record.values())
        else:
            total += sum(len(key) + _scalar_bytes(value) for key, value in record.items())
    return total
