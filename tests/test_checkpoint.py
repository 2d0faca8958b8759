"""Checkpoint and resume: atomic writes, random states, config checks, and a crashed run that,
resumed, ends exactly where an uninterrupted run of the same seed ends."""

import json
import random

import numpy as np
import pytest
import torch

from client_app.app import app as client_app
from fedmmkt_strategy.config import ConfigError, RunConfig
from fedmmkt_strategy.federation import checkpoint as ckpt
from fedmmkt_strategy.generative.finetune import finetune_denoiser
from fedmmkt_strategy.generative.server_models import load_server_models
from fedmmkt_strategy.generative.t2i import denoiser_state, load_denoiser_state
from fedmmkt_strategy.runs.inprocess import InProcessGrid
from fedmmkt_strategy.runs.runner import run_federation
from tests.test_trackers import assert_tensorboard_matches_metrics


def test_rng_state_round_trips():
    saved = ckpt.to_tensors(ckpt.rng_state())
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.restore_rng(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


#: The keys every checkpoint has (`FederatedStrategy.save_checkpoint`), empty.
SKELETON = {"round": 1, "config": {}, "rng": {}, "recorder": {}, "strategy": {}}


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    pool = {"images": np.zeros((2, 3), np.uint8), "captions": ["a"]}
    ckpt.save_checkpoint(tmp_path, {**SKELETON, "pool": pool})

    def dies_halfway(obj, fh):
        fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, {**SKELETON, "round": 2})
    state = ckpt.load_checkpoint(tmp_path / ckpt.CHECKPOINT_FILE)
    assert state["round"] == 1 and state["pool"]["captions"] == ["a"]
    assert state["pool"]["images"].dtype == torch.uint8


def test_resume_refuses_a_config_that_changes_results(tmp_path):
    saved = RunConfig().as_run_config()
    ckpt.check_resumable(saved, RunConfig(resume="x", num_server_rounds=9, round_timeout=5.0), 3)
    with pytest.raises(ConfigError, match="labvote-beta: checkpoint 0.5, now 0.7"):
        ckpt.check_resumable(saved, RunConfig(labvote_beta=0.7), 3)
    with pytest.raises(ConfigError, match="beyond num-server-rounds"):
        ckpt.check_resumable(saved, RunConfig(num_server_rounds=2), 3)
    with pytest.raises(ConfigError, match="no checkpoint found"):
        ckpt.resolve_resume(RunConfig(resume="nowhere", results_dir=str(tmp_path)))


def test_lora_adapters_round_trip_into_a_fresh_pipeline(tmp_path, micro_run_config):
    config = RunConfig.from_run_config(micro_run_config)
    tuned, fresh = load_server_models(config).pipe, load_server_models(config).pipe
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    finetune_denoiser(tuned, images, ["a red flower"] * 4, steps=1, lr=1e-2, batch_size=2, seed=0, use_lora=True)
    state = ckpt.load_checkpoint(ckpt.save_checkpoint(tmp_path, {**SKELETON, "d": denoiser_state(tuned)}))
    assert state["d"]["kind"] == "lora" and all("lora" in k for k in state["d"]["weights"])
    load_denoiser_state(fresh, state["d"])
    latents, text = torch.randn(1, 4, 16, 16), torch.randn(1, 24, 128)
    with torch.no_grad():
        expected = tuned.unet(latents, 10, text).sample
        assert torch.equal(fresh.unet(latents, 10, text).sample, expected)


class SimulatedCrash(RuntimeError):
    """The ServerApp dies: raised as round `crash_round` is about to send its first message."""


class CrashingGrid(InProcessGrid):
    crash_round: int | None = None

    def push_messages(self, messages, timeout=None):
        messages = list(messages)
        if self.crash_round and any(m.metadata.group_id == str(self.crash_round) for m in messages):
            raise SimulatedCrash(f"server killed at the start of round {self.crash_round}")
        return super().push_messages(messages, timeout)


def comparable(metrics: dict) -> list:
    """Every figure of every round except wall-clock times and round-2 downlink bytes (a resumed
    server sends each node the whole pool once)."""
    rounds = []
    for rnd in metrics["rounds"]:
        server = {k: v for k, v in rnd["server"].items() if not k.startswith("time_")}
        clients = [{k: v for k, v in c.items() if k != "bytes_down"} for c in rnd["clients"]]
        rounds.append((rnd["round"], server, clients))
    return rounds


def test_a_crashed_and_resumed_run_matches_an_uninterrupted_one(tmp_path, micro_run_config):
    rc = {**micro_run_config, "results-dir": str(tmp_path), "labvote-beta": 1.0, "labvote-robust": "reliability"}
    rc["train-timeout"] = 321.0
    whole = run_federation(InProcessGrid(client_app, rc, 4), {**rc, "run-name": "whole"})

    grid = CrashingGrid(client_app, rc, 4)  # the SuperNodes outlive the server: same client state
    grid.crash_round = 2
    with pytest.raises(SimulatedCrash):
        run_federation(grid, {**rc, "run-name": "crashed"})
    crashed = tmp_path / "crashed"
    assert ckpt.load_checkpoint(crashed / ckpt.CHECKPOINT_FILE)["round"] == 1
    grid.crash_round = None
    waits: list[tuple[str, float | None]] = []
    deliver = grid.send_and_receive

    def recording(messages, *, timeout=None):
        messages = list(messages)
        waits.extend((m.metadata.message_type, timeout) for m in messages[:1])
        return deliver(messages, timeout=timeout)

    grid.send_and_receive = recording
    resumed = run_federation(grid, {**rc, "resume": "crashed"})
    assert ("train.distill", 321.0) in waits  # a resumed run keeps the per-phase timeouts

    assert resumed == crashed
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, resumed))
    assert [r["round"] for r in b["rounds"]] == [0, 1, 2]
    assert comparable(b) == comparable(a)
    assert b["resumes"][0]["after_round"] == 1
    assert "gen_acc" in b["rounds"][-1]["server"] and "reliability" in b["rounds"][-1]["clients"][0]
    # TensorBoard shows each run as metrics.json has it: the crashed life's partial round 2 is purged
    assert_tensorboard_matches_metrics(whole)
    assert_tensorboard_matches_metrics(resumed)


def _write(path, kind: str) -> None:
    import pickle

    good = {"version": ckpt.FORMAT_VERSION, **SKELETON}
    if kind == "truncated":
        torch.save(good, path)
        path.write_bytes(path.read_bytes()[:40])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "foreign pickle":  # an arbitrary object: weights_only refuses to unpickle it
        path.write_bytes(pickle.dumps(ConfigError("not a checkpoint")))
    elif kind == "wrong structure":
        torch.save([1, 2, 3], path)
    elif kind == "key-less":
        torch.save({"version": ckpt.FORMAT_VERSION}, path)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("truncated", "is not a readable checkpoint"),
        ("empty", "is not a readable checkpoint"),
        ("random", "is not a readable checkpoint"),
        ("foreign pickle", "is not a readable checkpoint"),
        ("wrong structure", "holds a list, not a checkpoint"),
        ("key-less", "lacks ['round', 'config', 'rng', 'recorder', 'strategy']"),
    ],
)
def test_a_damaged_checkpoint_fails_with_one_line_naming_resume_and_the_file(tmp_path, kind, expected):
    path = tmp_path / ckpt.CHECKPOINT_FILE
    _write(path, kind)
    with pytest.raises(ConfigError) as err:
        ckpt.load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"resume: {path}") and expected in message and "start a new run" in message
    assert "\n" not in message


def test_a_checkpoint_of_the_wrong_state_changes_nothing_in_the_folder(tmp_path):
    from fedmmkt_strategy.runs.runner import start_resumed

    config = RunConfig(strategy="local", resume=str(tmp_path), results_dir=str(tmp_path))
    state = {"round": 1, "config": config.as_run_config(), "rng": {}, "recorder": {"rounds": 3}, "strategy": {}}
    ckpt.save_checkpoint(tmp_path, state)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match="does not hold the state of a local run"):
        start_resumed(config, None)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
