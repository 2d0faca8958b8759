"""The synthetic pool's two halves agree: what the server encodes is what the client's copy holds,
whole or after a partial update, and a partial update without a pool is refused."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict

from fedmmkt_strategy import protocol as P
from fedmmkt_strategy.pool_sync import (
    MissingSyntheticPool,
    apply_pool_update,
    cached_synthetic,
    encode_pool_update,
    parts_for,
    rows_to_send,
)


def _pool(n: int, tag: str):
    images = np.random.default_rng(n).integers(0, 255, (n, 4, 4, 3), dtype=np.uint8)
    return images, [f"{tag} caption {i}" for i in range(n)]


def test_rows_to_send_is_everything_first_then_what_was_regenerated():
    generation = np.array([0, 0, 2, 1, 2])
    assert rows_to_send(generation, None).tolist() == [0, 1, 2, 3, 4]
    assert rows_to_send(generation, 1).tolist() == [2, 4]
    assert rows_to_send(generation, 2).tolist() == []


def test_parts_follow_the_modality_or_the_layout_while_unknown():
    assert parts_for("text", has_sensor_clients=True) == {"text"}
    assert parts_for(None, has_sensor_clients=False) == {"image", "text"}
    assert parts_for(None, has_sensor_clients=True) == {"image", "text", "sensor"}


def test_a_whole_pool_then_a_partial_update_round_trip():
    state = RecordDict()
    images, captions = _pool(5, "old")
    order = np.array([3, 0, 4, 1, 2])  # rows may arrive in any order
    update = encode_pool_update(order, 5, images=images[order], captions=[captions[i] for i in order])
    apply_pool_update(state, update)
    assert np.array_equal(cached_synthetic(state, "image"), images)
    assert cached_synthetic(state, "text").tolist() == captions

    new_images, _ = _pool(2, "new")
    longer = ["a regenerated caption much longer than before", "another"]
    apply_pool_update(state, encode_pool_update(np.array([1, 3]), 5, images=new_images, captions=longer))
    expected = images.copy()
    expected[[1, 3]] = new_images
    assert np.array_equal(cached_synthetic(state, "image"), expected)
    assert cached_synthetic(state, "text")[[1, 3]].tolist() == longer  # widened, not truncated


def test_a_partial_update_without_a_pool_is_refused():
    images, _ = _pool(2, "x")
    with pytest.raises(MissingSyntheticPool, match="2 of 5"):
        apply_pool_update(RecordDict(), encode_pool_update(np.array([0, 1]), 5, images=images))
    with pytest.raises(MissingSyntheticPool, match=P.SENSORS):
        cached_synthetic(RecordDict(), "sensor")
