"""Checks of `query.infer` replies before anything they carry reaches the vote or the fusion.

A reply is accepted only if every array is present with the expected shape and dtype, finite,
probabilities are non-negative and sum to one per row, entropies lie in [0, log C], embeddings
have the fusion width, and nothing else is attached. Anything else is rejected with a reason
(logged with the node id), and the round goes on without that client.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Message

from fedmmkt_strategy import protocol as P

INFERENCE_KEYS = {P.PROBS, P.ENTROPY, P.EMBEDDING}


def _finite_float(name: str, array: np.ndarray, shape: tuple[int, ...]) -> str | None:
    if array.dtype.kind != "f":
        return f"{name} has dtype {array.dtype}, expected a float array"
    if array.shape != shape:
        return f"{name} has shape {array.shape}, expected {shape}"
    if not np.isfinite(array).all():
        return f"{name} contains NaN or Inf"
    return None


def check_inference_reply(
    reply: Message, num_samples: int, num_classes: int, dim: int, tolerance: float = 1e-3
) -> str | None:
    """None if the reply is a valid inference on `num_samples` synthetic inputs, else the reason."""
    records = reply.content.array_records
    if P.INFERENCE not in records:
        return f"missing ArrayRecord {P.INFERENCE!r}"
    if P.CLIENT not in reply.content.config_records:
        return f"missing ConfigRecord {P.CLIENT!r}"
    record = records[P.INFERENCE]
    keys = set(record.keys())
    if keys != INFERENCE_KEYS:
        missing, extra = sorted(INFERENCE_KEYS - keys), sorted(keys - INFERENCE_KEYS)
        return f"inference keys differ: missing {missing}, unexpected {extra}"
    try:
        probs, entropy, embedding = (record[k].numpy() for k in (P.PROBS, P.ENTROPY, P.EMBEDDING))
    except Exception as err:  # noqa: BLE001 - any undecodable payload is a rejected reply
        return f"undecodable array: {err}"
    for name, array, shape in (
        (P.PROBS, probs, (num_samples, num_classes)),
        (P.ENTROPY, entropy, (num_samples,)),
        (P.EMBEDDING, embedding, (num_samples, dim)),
    ):
        reason = _finite_float(name, array, shape)
        if reason:
            return reason
    if (probs < -tolerance).any() or not np.allclose(probs.sum(1), 1.0, atol=tolerance):
        return "probabilities are negative or do not sum to one"
    if (entropy < -tolerance).any() or (entropy > math.log(num_classes) + tolerance).any():
        return f"entropies outside [0, log {num_classes}]"
    return None
