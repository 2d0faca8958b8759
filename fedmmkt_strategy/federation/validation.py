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

Beyond the arrays: the entropy the vote uses must be the one the probabilities imply (recomputed
here; a claimed 0 on a uniform row would give a non-vote the largest weight there is), embeddings
must be unit vectors (a finite 3e38 row would turn every node's fused target into NaN), and every
reply carries exactly the records its type defines (`protocol.UPLINK_RECORDS`) and a well-typed
client description. Metrics must be numbers of the right kind and range: an accuracy outside
[0, 1], a negative loss or a fractional example count is a broken or lying client, and would
otherwise land in `metrics.json` and the plots.
"""

from __future__ import annotations

import math
from logging import ERROR

import numpy as np
from flwr.app import Message
from flwr.common.logger import log

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.steps.privacy import entropy as entropy_of
from task_models.registry import available_models, model_modality
from worlds.modality import MODALITIES

INFERENCE_KEYS = {P.PROBS, P.ENTROPY, P.EMBEDDING}
#: `uplink-dtype` -> the numpy dtype every inference array must have.
UPLINK_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
#: `uplink-dtype` -> tolerance of the probability-sum, negativity and entropy-range checks.
TOLERANCES: dict[str, float] = {"float32": 1e-3, "float16": 1e-2}
#: The largest example count a client may report (a device holds far fewer; 2^64-1 is a bug).
MAX_EXAMPLES = 2**31 - 1
#: Metric -> (lowest, highest) allowed value; losses may undershoot 0 by float rounding only.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    P.ACC_LOCAL: (0.0, 1.0),
    P.ACC_GLOBAL: (0.0, 1.0),
    P.TRAIN_LOSS: (-1e-6, math.inf),
    P.LOSS_LOCAL: (-1e-6, math.inf),
    P.LOSS_GLOBAL: (-1e-6, math.inf),
    "ce": (-1e-6, math.inf),
    "kl": (-1e-6, math.inf),
    "rep": (-1e-6, math.inf),
}
#: Metrics that count things: integers in [0, MAX_EXAMPLES].
COUNT_METRICS = (P.NUM_EXAMPLES, "synthetic-rows", "synthetic-visits")
#: Keys of the `client` description every reply carries (docs/protocol.md).
CLIENT_KEYS = (P.MODALITY, P.ARCHITECTURE, P.PARTITION, P.NUM_PARTITIONS, P.PARTITION_ID)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_record_names(reply: Message) -> str | None:
    """The reply carries no record its message type does not define (missing records are each
    reported by the check of that record, with its kind)."""
    required, optional = P.UPLINK_RECORDS.get(reply.metadata.message_type, (frozenset(), frozenset()))
    extra = sorted(set(reply.content.keys()) - required - optional)
    return f"records the protocol does not define: {extra}" if extra else None


def check_client_record(reply: Message, num_classes: int | None = None) -> str | None:
    """The `client` description: every key present with its type and range (docs/protocol.md).
    `label-counts` is allowed only in a `query.infer` reply, as `num_classes` counts."""
    if P.CLIENT not in reply.content.config_records:
        return f"missing ConfigRecord {P.CLIENT!r}"
    client = reply.content.config_records[P.CLIENT]
    missing = [k for k in CLIENT_KEYS if k not in client]
    if missing:
        return f"{P.CLIENT!r} lacks keys {missing}"
    modality, architecture = client[P.MODALITY], client[P.ARCHITECTURE]
    if not isinstance(modality, str) or modality not in MODALITIES:
        return f"{P.CLIENT!r}: modality {modality!r} is not one of {list(MODALITIES)}"
    if not isinstance(architecture, str) or architecture not in available_models():
        return f"{P.CLIENT!r}: architecture {architecture!r} is not a registered task model"
    if model_modality(architecture) != modality:
        return f"{P.CLIENT!r}: architecture {architecture!r} is not a {modality} model"
    partition, parts, node = client[P.PARTITION], client[P.NUM_PARTITIONS], client[P.PARTITION_ID]
    if not (_is_int(parts) and 1 <= parts <= MAX_EXAMPLES):
        return f"{P.CLIENT!r}: {P.NUM_PARTITIONS} {parts!r} is not a positive integer"
    if not (_is_int(partition) and 0 <= partition < parts):
        return f"{P.CLIENT!r}: {P.PARTITION} {partition!r} is not an integer in [0, {parts})"
    if not (_is_int(node) and 0 <= node <= MAX_EXAMPLES):
        return f"{P.CLIENT!r}: {P.PARTITION_ID} {node!r} is not a non-negative integer"
    extra = sorted(set(client.keys()) - {*CLIENT_KEYS, P.LABEL_COUNTS})
    if extra:
        return f"{P.CLIENT!r} has keys the protocol does not define: {extra}"
    counts = client.get(P.LABEL_COUNTS)
    if counts is not None:
        if reply.metadata.message_type != P.QUERY_INFER or num_classes is None:
            return f"{P.LABEL_COUNTS!r} is only sent in a {P.QUERY_INFER} reply"
        if not _valid_counts(counts, num_classes):
            return f"{P.LABEL_COUNTS!r} must be a list of {num_classes} non-negative integers"
    return None


def check_metrics(reply: Message, required: tuple[str, ...]) -> str | None:
    """The `metrics` record: every `required` metric present; every known metric present (required
    or optional) a finite number in its range, counts integers in [0, MAX_EXAMPLES]."""
    if P.METRICS not in reply.content.metric_records:
        return f"missing MetricRecord {P.METRICS!r}"
    metrics = reply.content.metric_records[P.METRICS]
    for key in required:
        if key not in metrics:
            return f"metric {key!r} is missing or not a finite number"
    for key, value in metrics.items():
        if key in COUNT_METRICS:
            if not (_is_int(value) and 0 <= value <= MAX_EXAMPLES):
                return f"metric {key!r} = {value!r} is not an integer in [0, {MAX_EXAMPLES}]"
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return f"metric {key!r} is missing or not a finite number"
        low, high = METRIC_RANGES.get(key, (-math.inf, math.inf))
        if not low <= value <= high:
            return f"metric {key!r} = {value!r} is outside [{low:g}, {high:g}]"
    return None


def check_metrics_reply(reply: Message, required: tuple[str, ...]) -> str | None:
    """A train/evaluate reply: its records, its client description and its metrics."""
    return check_record_names(reply) or check_client_record(reply) or check_metrics(reply, required)


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
    reason = check_record_names(reply) or check_client_record(reply, num_classes)
    if reason:
        return reason
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
    probs, entropy = probs.astype(np.float32), entropy.astype(np.float32)
    # a softmax (or a projection onto the simplex) is never negative, in any dtype
    if (probs < 0).any() or (probs > 1 + tolerance).any() or not np.allclose(probs.sum(1), 1.0, atol=tolerance):
        return f"probabilities are negative or do not sum to one (tolerance {tolerance:g})"
    if (entropy < -tolerance).any() or (entropy > math.log(num_classes) + tolerance).any():
        return f"entropies outside [0, log {num_classes}]"
    implied = entropy_of(probs)
    worst = int(np.argmax(np.abs(entropy - implied))) if len(entropy) else 0
    if len(entropy) and abs(entropy[worst] - implied[worst]) > tolerance:
        return (
            f"entropies are not the probabilities' (row {worst}: {entropy[worst]:.4f} sent, "
            f"{implied[worst]:.4f} implied, tolerance {tolerance:g})"
        )
    norms = np.linalg.norm(embedding.astype(np.float32), axis=1)
    if len(norms) and np.abs(norms - 1).max() > tolerance:
        return f"embeddings are not L2-normalised (norms {norms.min():.3g} to {norms.max():.3g})"
    return None


def sendable(name: str, array: np.ndarray, non_negative: bool = False) -> bool:
    """The last line of defence on the way out: a distillation target must be finite (and, for
    probabilities and weights, non-negative), or no client gets it. Every reply check above should
    make this unreachable; if it is reached, the error names what and the round goes on without it,
    instead of every client's loss turning NaN."""
    bad = ~np.isfinite(array) | ((array < 0) if non_negative else False)
    if bad.any():
        kind = "non-finite or negative" if non_negative else "non-finite"
        log(ERROR, "not sending %s: %d %s values", name, int(bad.sum()), kind)
        return False
    return True
