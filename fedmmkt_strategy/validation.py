"""Checks of `query.infer` replies before anything they carry reaches the vote or the fusion.

A reply is accepted only if every array is present with the expected shape and exactly the
run's `uplink-dtype` (float32 or float16), finite, probabilities are non-negative and sum to one
per row, entropies lie in [0, log C], embeddings have the fusion width, and nothing else is
attached. Anything else is rejected with a reason (logged with the node id), and the round goes
on without that client.

The dtype is exact, not "any float": a client configured differently from the server (or one
sending float64, twice the agreed bytes) is a protocol mismatch, better reported than silently
accepted. The tolerances follow the dtype: float16 has a unit roundoff of 2^-11 (about 4.9e-4),
so a row of correctly rounded probabilities may miss one by about that much and an entropy
near log C may round above it by up to about 2e-3; float32's 1e-3 would reject honest float16
replies.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Message

from fedmmkt_strategy import protocol as P

INFERENCE_KEYS = {P.PROBS, P.ENTROPY, P.EMBEDDING}
#: `uplink-dtype` -> the numpy dtype every inference array must have.
UPLINK_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
#: `uplink-dtype` -> tolerance of the probability-sum, negativity and entropy-range checks.
TOLERANCES: dict[str, float] = {"float32": 1e-3, "float16": 1e-2}


def _finite_float(name: str, array: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    if array.dtype != dtype:
        return f"{name} has dtype {array.dtype}, expected {dtype} (uplink-dtype)"
    if array.shape != shape:
        return f"{name} has shape {array.shape}, expected {shape}"
    if not np.isfinite(array).all():
        return f"{name} contains NaN or Inf"
    return None


def _valid_counts(counts: object, num_classes: int) -> bool:
    return (
        isinstance(counts, list)
        and len(counts) == num_classes
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts)
    )


def check_inference_reply(
    reply: Message,
    num_samples: int,
    num_classes: int,
    dim: int,
    dtype: str = "float32",
    tolerance: float | None = None,
) -> str | None:
    """None if the reply is a valid inference on `num_samples` synthetic inputs, else the reason.

    `dtype` is the run's `uplink-dtype`; `tolerance` defaults to the one that dtype's rounding
    needs (`TOLERANCES`). Sums and ranges are computed in float32, so a float16 reply is judged
    by its values, not by float16 accumulation error.
    """
    expected = UPLINK_DTYPES[dtype]
    tolerance = TOLERANCES[dtype] if tolerance is None else tolerance
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
        reason = _finite_float(name, array, shape, expected)
        if reason:
            return reason
    counts = reply.content.config_records[P.CLIENT].get(P.LABEL_COUNTS)
    if counts is not None and not _valid_counts(counts, num_classes):
        return f"{P.LABEL_COUNTS!r} must be a list of {num_classes} non-negative integers"
    probs, entropy = probs.astype(np.float32), entropy.astype(np.float32)
    if (probs < -tolerance).any() or not np.allclose(probs.sum(1), 1.0, atol=tolerance):
        return f"probabilities are negative or do not sum to one (tolerance {tolerance:g})"
    if (entropy < -tolerance).any() or (entropy > math.log(num_classes) + tolerance).any():
        return f"entropies outside [0, log {num_classes}]"
    return None
