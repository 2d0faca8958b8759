"""Experiment trackers: TensorBoard event files (and the optional offline W&B run) hold exactly
the numbers of metrics.json, read back with the trackers' own readers."""

import importlib.util
import json
import time

import numpy as np
import pytest
from PIL import Image

from fedmmkt_strategy.config import ConfigError, RunConfig, project_defaults
from fedmmkt_strategy.reporting.results import RunRecorder
from fedmmkt_strategy.reporting.trackers import (
    TrackerFeed,
    build_trackers,
    client_tag,
    parse_trackers,
    read_tensorboard,
    round_scalars,
    unsent,
)


def assert_tensorboard_matches_metrics(run_dir) -> None:
    """The event files of a results folder show every number of its metrics.json, last value
    per step equal, nothing else, and the sample grid of every round that has one."""
    scalars, images = read_tensorboard(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected = {(tag, r["round"]): v for r in metrics["rounds"] for tag, v in round_scalars(r).items()}
    assert {(tag, step) for tag, steps in scalars.items() for step in steps} == set(expected)
    for (tag, step), value in expected.items():
        assert scalars[tag][step][-1] == pytest.approx(value, rel=1e-6), (tag, step)
    grids = sorted(int(p.stem.split("_")[1]) for p in (run_dir / "samples").glob("round_*.png"))
    assert images.get("samples", []) == grids


def _recorder(tmp_path, names=("tensorboard",)) -> RunRecorder:
    recorder = RunRecorder(tmp_path, {"strategy": "fedmmkt", "seed": 0}, "fedmmkt")
    recorder.feed = TrackerFeed(build_trackers(names, tmp_path, recorder.config), tmp_path)
    return recorder


def _two_rounds(recorder: RunRecorder) -> None:
    """Round 0 (the pre-trained T2I score), round 1 (two clients, server diagnostics, a grid)."""
    recorder.server(0, gen_acc=0.5, fid=14.0, per_class_gen_acc=[0.5, 0.5])
    for node, (pid, modality, arch, acc) in {11: (0, "image", "cnn", 0.25), 12: (1, "text", "gru", 0.5)}.items():
        recorder.client(1, node, partition_id=pid, modality=modality, architecture=arch, acc_global=acc, bytes_up=7)
    recorder.server(1, discard_rate=0.125, time_round_s=3.0)
    (recorder.run_dir / "samples").mkdir()
    Image.fromarray(np.full((8, 16, 3), 200, np.uint8)).save(recorder.run_dir / "samples" / "round_001.png")


def test_round_scalars_tag_every_finite_number_and_nothing_else():
    entry = {
        "round": 1,
        "summary": {"image_acc_global_mean": 0.25},
        "server": {"gen_acc": 0.5, "per_class_gen_acc": [0.1], "fid": float("nan"), "flag": True},
        "clients": [{"node_id": 9, "partition_id": 3, "modality": "image", "architecture": "cnn", "acc_global": 0.2}],
    }
    assert round_scalars(entry) == {
        "summary/image_acc_global_mean": 0.25,
        "server/gen_acc": 0.5,
        "client/p3-image-cnn/acc_global": 0.2,
    }
    assert client_tag({"node_id": 5}) == "client/n5-?-?"
    assert unsent({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 3.0}) == {"b": 2.0}


def test_trackers_key_is_checked_before_any_work():
    assert parse_trackers("none") == () and parse_trackers(" tensorboard, tensorboard ") == ("tensorboard",)
    with pytest.raises(ConfigError, match="trackers = 'mlflow'.*unknown tracker 'mlflow'"):
        RunConfig.from_run_config({"trackers": "mlflow"})
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match=r"trackers .*pip install 'fedmmkt\[wandb\]'"):
            RunConfig.from_run_config({"trackers": "wandb"}).check_server_packages()


def test_a_client_without_tensorboard_accepts_the_default_run_config(monkeypatch):
    """An edge SuperNode installs no tracker (README "Edge SuperNodes") but receives the server's
    run config, `trackers = "tensorboard"` included: only the server may insist on the package."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a)
    )
    config = RunConfig.from_run_config(project_defaults())
    assert config.trackers == "tensorboard"
    with pytest.raises(ConfigError, match=r"trackers = 'tensorboard'.*pip install 'fedmmkt\[tensorboard\]'"):
        config.check_server_packages()


def test_tensorboard_holds_exactly_the_values_of_metrics_json(tmp_path):
    recorder = _recorder(tmp_path)
    _two_rounds(recorder)
    recorder.write()
    recorder.server(1, gen_acc=0.75)  # a value recorded after its round was first written
    recorder.client(1, 11, bytes_up=3)  # bytes accumulate: 10 now
    recorder.close()

    assert_tensorboard_matches_metrics(tmp_path)
    scalars, images = read_tensorboard(tmp_path)
    assert scalars["server/gen_acc"] == {0: [0.5], 1: [0.75]}
    assert scalars["client/p0-image-cnn/bytes_up"][1][-1] == 10  # the final value is the last logged
    assert scalars["summary/text_acc_global_mean"] == {1: [0.5]}
    assert images == {"samples": [1]}


def test_a_resumed_run_replaces_what_its_first_life_logged_after_the_checkpoint(tmp_path):
    first = _recorder(tmp_path)
    _two_rounds(first)
    first.server(2, discard_rate=0.9)  # round 2 was cut short by a crash ...
    first.close()

    second = RunRecorder(tmp_path, first.config, "fedmmkt")  # ... and resumed after round 1
    second.load_state_dict({**first.state_dict(), "rounds": {r: v for r, v in first.rounds.items() if r < 2}})
    second.feed = TrackerFeed(build_trackers(["tensorboard"], tmp_path, second.config, resumed_after=1), tmp_path)
    second.feed.mark_sent(second.as_dict())
    second.server(2, discard_rate=0.25)
    second.close()

    scalars, images = read_tensorboard(tmp_path)
    assert scalars["server/discard_rate"] == {1: [0.125], 2: [0.25]}
    assert scalars["server/gen_acc"] == {0: [0.5]}  # not sent twice
    assert images == {"samples": [1]}


class _Broken:
    def scalars(self, step, values):
        raise OSError("disk full")

    def image(self, tag, step, path):
        raise AssertionError("dropped after its first failure")

    def close(self):
        raise AssertionError("dropped after its first failure")


def test_a_failing_tracker_is_dropped_and_the_others_go_on(tmp_path, caplog):
    recorder = _recorder(tmp_path)
    recorder.feed.trackers.insert(0, _Broken())
    _two_rounds(recorder)
    recorder.close()
    assert "tracker _Broken failed (OSError: disk full)" in caplog.text
    assert read_tensorboard(tmp_path)[0]["server/gen_acc"] == {0: [0.5]}


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="the optional extra fedmmkt[wandb]")
def test_wandb_writes_an_offline_run_holding_the_values(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    recorder = _recorder(tmp_path, names=("wandb",))
    _two_rounds(recorder)
    recorder.close()
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    keys = [b"server/gen_acc", b"server/discard_rate", b"client/p1-text-gru/acc_global", b"samples", b"0.125"]
    deadline = time.monotonic() + 60  # W&B's own service process may still be writing on a busy machine
    while True:
        records = run_file.read_bytes()  # protobuf records: history keys and JSON values as plain text
        if all(key in records for key in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for key in keys:
        assert key in records, key
