"""The client's copy of the server's synthetic pool, kept in `context.state`.

The server sends the whole pool once and afterwards only the rows it regenerated, so a device
downloads each synthetic image once. A client that lost its copy (e.g. a restarted SuperNode)
answers a partial update with an error; the server then sends it the whole pool again.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fedmmkt_strategy import protocol as P

CACHE = "synthetic"


class MissingSyntheticPool(RuntimeError):
    """A partial pool update arrived but this node holds no matching pool."""


def update_synthetic_cache(state: RecordDict, update: ArrayRecord) -> None:
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
    key = {"image": P.IMAGES, "text": P.CAPTIONS, "sensor": P.SENSORS}[modality]
    if CACHE not in state.array_records or key not in state[CACHE]:
        raise MissingSyntheticPool(f"no synthetic {key} cached on this node")
    return state[CACHE][key].numpy()
