"""Clients that survive a restart: their model and synthetic pool on the node's disk, keyed by the
run key the server sends, loaded when `context.state` is empty (client_app/persistence.py)."""

import json
import os
import time

import numpy as np
import pytest
import torch

from client_app.app import app as client_app
from client_app.persistence import STALE_AFTER_DAYS, read_state, state_file, state_root, write_state
from fedmmkt_strategy.runs.inprocess import InProcessGrid
from fedmmkt_strategy.runs.runner import run_federation
from tests.conftest import INPROCESS_FEDERATION
from tests.test_checkpoint import CrashingGrid, SimulatedCrash, comparable

TINY = {**INPROCESS_FEDERATION, "num-server-rounds": 3, "strategy": "local"}


def test_where_a_node_keeps_its_state():
    assert state_root("auto", None, "/c", checkpoint=True).as_posix() == "/c/client-state"
    assert state_root("auto", None, "/c", checkpoint=False) is None  # nothing to resume
    assert state_root("off", None, "/c", checkpoint=True) is None
    assert state_root("/s", None, "/c", checkpoint=False).as_posix() == "/s"
    assert state_root("off", "/node", "/c", checkpoint=True).as_posix() == "/node"  # node config wins
    for bad in ("../x", "a/b", "", ".."):
        with pytest.raises(ValueError, match="plain file name"):
            state_file(state_root("/s", None, "", True), bad, "p0-image-cnn")


def test_state_files_round_trip_atomically(tmp_path):
    path = tmp_path / "run" / "p0-text-gru.npz"
    weights = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    pool = {"captions": np.array(["a red flower", "blue"]), "images": np.zeros((2, 4, 4, 3), np.uint8)}
    write_state(path, weights, pool)
    write_state(path, {k: v + 1 for k, v in weights.items()}, pool)  # replaced, not appended
    model, synthetic = read_state(path)
    assert torch.equal(model["w"], weights["w"] + 1) and list(synthetic["captions"]) == ["a red flower", "blue"]
    assert synthetic["images"].dtype == np.uint8
    assert sorted(p.name for p in path.parent.iterdir()) == ["p0-text-gru.npz"]  # no temporary left
    # a new run's first write removes the state of runs untouched for a week, and nothing else
    old, recent = tmp_path / "old-run", tmp_path / "recent-run"
    for folder in (old, recent):
        write_state(folder / "p1-image-cnn.npz", weights, {})
    week = time.time() - STALE_AFTER_DAYS * 86400 - 60
    os.utime(old, (week, week))
    write_state(tmp_path / "new-run" / "p1-image-cnn.npz", weights, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new-run", "recent-run", "run"]


def _crash_and_resume_on_new_nodes(tmp_path, state_dir: str):
    rc = {**TINY, "results-dir": str(tmp_path), "cache-dir": str(tmp_path / "cache"), "client-state-dir": state_dir}
    grid = CrashingGrid(client_app, rc, 4)
    grid.crash_round = 3
    with pytest.raises(SimulatedCrash):
        run_federation(grid, {**rc, "run-name": f"crashed-{state_dir}"})
    # the SuperNodes restart too: new contexts, empty state, as a new Flower run would give them
    return run_federation(InProcessGrid(client_app, rc, 4), {**rc, "resume": f"crashed-{state_dir}"})


def test_clients_restarted_with_the_server_continue_where_they_were(tmp_path):
    rc = {**TINY, "results-dir": str(tmp_path), "cache-dir": str(tmp_path / "cache")}
    whole = json.loads((run_federation(InProcessGrid(client_app, rc, 4), rc) / "metrics.json").read_text())
    kept = json.loads((_crash_and_resume_on_new_nodes(tmp_path, "auto") / "metrics.json").read_text())
    lost = json.loads((_crash_and_resume_on_new_nodes(tmp_path, "off") / "metrics.json").read_text())
    assert comparable(kept) == comparable(whole)  # every figure of every round, round 3 included
    # without the state files the restarted clients start over from their warm-up: round 3 differs
    assert comparable(lost)[:2] == comparable(whole)[:2] and comparable(lost)[2] != comparable(whole)[2]
    files = list((tmp_path / "cache" / "client-state").glob("*/p*.npz"))
    assert len({f.parent for f in files}) == 2 and len(files) == 8  # one folder per run, one file per node
