"""The synthetic pool's wire encoding, both halves: what the server sends of its pool to one node,
and how that node keeps its copy in `context.state`.

The server sends the whole pool once and afterwards only the rows it regenerated, so a device
downloads each synthetic image once. A client that lost its copy (e.g. a restarted SuperNode)
answers a partial update with an error; the server then sends it the whole pool again.
Only numpy, Flower's records and the wire names: the client side imports this without the
server's generative stack (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fedmmkt_strategy import protocol as P

#: The `context.state` array record holding a node's copy of the pool.
CACHE = "synthetic"
#: The pool array each modality reads.
MODALITY_KEYS = {"image": P.IMAGES, "text": P.CAPTIONS, "sensor": P.SENSORS}


class MissingSyntheticPool(RuntimeError):
    """A partial pool update arrived but this node holds no matching pool."""


# -- the server's half --------------------------------------------------------------------------


def rows_to_send(generation_round: np.ndarray, known_round: int | None) -> np.ndarray:
    """The pool rows a node lacks: every row when it holds no pool (`known_round` None), else the
    rows regenerated after the round it last received."""
    if known_round is None:
        return np.arange(len(generation_round))
    return np.flatnonzero(generation_round > known_round)


def parts_for(modality: str | None, has_sensor_clients: bool) -> set[str]:
    """Which modalities' arrays a node gets: its own, or, while its modality is unknown (before its
    first reply), every one the layout uses."""
    if modality is not None:
        return {modality}
    return {"image", "text"} | ({"sensor"} if has_sensor_clients else set())


def encode_pool_update(
    rows: np.ndarray,
    pool_size: int,
    images: np.ndarray | None = None,
    captions: Sequence[str] | None = None,
    sensors: np.ndarray | None = None,
) -> ArrayRecord:
    """The record of a pool update: row indices, pool size and the given arrays of those rows."""
    record = ArrayRecord(
        {P.ROWS: Array(np.asarray(rows, np.int64)), P.POOL_SIZE: Array(np.array([pool_size], np.int64))}
    )
    if images is not None:
        record[P.IMAGES] = Array(np.ascontiguousarray(images))
    if captions is not None:
        record[P.CAPTIONS] = Array(np.array(list(captions)))
    if sensors is not None:
        record[P.SENSORS] = Array(np.ascontiguousarray(sensors))
    return record


# -- the client's half --------------------------------------------------------------------------


def apply_pool_update(state: RecordDict, update: ArrayRecord) -> None:
    """Apply the rows of `update` (images, captions and/or sensor readings) to the cached pool."""
    rows = update[P.ROWS].numpy().astype(np.int64)
    size = int(update[P.POOL_SIZE].numpy().reshape(-1)[0])
    cache = state[CACHE] if CACHE in state.array_records else ArrayRecord()
    for key in (P.IMAGES, P.CAPTIONS, P.SENSORS):
        if key not in update:
            continue
        values = update[key].numpy()
        if len(rows) == size:
            full = values[np.argsort(rows)]
        elif key in cache and len(cache[key].numpy()) == size:
            full = cache[key].numpy().copy()
            if full.dtype.kind == "U":  # widen so longer captions are not truncated
                full = full.astype(np.result_type(full.dtype, values.dtype))
            full[rows] = values
        else:
            raise MissingSyntheticPool(f"got {len(rows)} of {size} synthetic rows but hold no pool of that size")
        cache[key] = Array(np.ascontiguousarray(full))
    state[CACHE] = cache


def cached_synthetic(state: RecordDict, modality: str) -> np.ndarray:
    """The cached pool of a modality: images [N, H, W, 3], captions [N] or sensor readings [N, D]."""
    key = MODALITY_KEYS[modality]
    if CACHE not in state.array_records or key not in state[CACHE]:
        raise MissingSyntheticPool(f"no synthetic {key} cached on this node")
    return state[CACHE][key].numpy()
