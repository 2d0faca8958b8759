"""Shared fixtures: tiny run configs and one micro pre-trained server-model cache per session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from fedmmkt_strategy.cli.deploy import DeploySettings, load_state, recorded_pids, start_deployment, stop_deployment
from fedmmkt_strategy.cli.flower_processes import free_port, is_running
from fedmmkt_strategy.config import RunConfig, load_preset

#: Run-config keys that make the server's models and rounds tiny: a plumbing check, not quality.
MICRO_SERVER = load_preset("micro-server")
#: Four roles (both modalities, the cheapest models), small pools, two rounds; each test computes
#: its own warm-ups and generations (tests/test_memo.py checks reusing them across runs).
TINY_FEDERATION = {**load_preset("micro-federation"), "reuse-cache": False}
#: The in-process app tests' federation: the same, with two `cnn` image clients (FedAvg averages
#: clients of one architecture) and a two-epoch warm-up.
INPROCESS_FEDERATION = {
    **TINY_FEDERATION,
    "client-layout": "image:cnn,text:bow,image:cnn,text:gru",
    "client-warmup-epochs": 2,
}


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker more than cores. The real-process tests spend most of their minute
    waiting on Flower's 3-second polls, and the extra worker computes meanwhile (measured on 2
    cores: 8.4 min with 3 workers, 9.0 with 2, 13.7 without pytest-xdist)."""
    return (os.cpu_count() or 1) + 1


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (the suite's default: ``-n auto``) every worker and every process a test
    starts gets one torch thread: two workers with two OpenMP threads each on two cores spin on
    each other's cores and run many times slower than one after the other."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def own_cache_home(tmp_path_factory) -> Iterator[None]:
    """Default cache paths (client state, memo) of every test and the processes it starts point
    into the session's temporary folder, never into the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="session")
def micro_cache(tmp_path_factory) -> str:
    """A cache folder with the micro server models, built once for the session: under pytest-xdist
    by the first worker that needs them, while the others wait for it."""
    from fedmmkt_strategy.generative.pretrain import ensure_pretrained  # diffusers: only for tests that need it
    from fedmmkt_strategy.generative.server_models import pretrain_spec

    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "fedmmkt-cache"
    with FileLock(f"{folder}.lock"):
        spec = pretrain_spec(RunConfig.from_run_config({**TINY_FEDERATION, **MICRO_SERVER}))
        ensure_pretrained(spec, folder, progress=False)
    return str(folder)


@pytest.fixture(scope="session")
def micro_run_config(micro_cache) -> dict:
    return {**TINY_FEDERATION, **MICRO_SERVER, "cache-dir": micro_cache}


@pytest.fixture()
def deploy(tmp_path: Path) -> Iterator[Callable[..., dict]]:
    """Starts deployments (`fedmmkt deploy`'s SuperLink and SuperNodes) under tmp_path; stops every
    recorded process by pid at teardown. Used by tests/test_deploy*.py."""
    folders: list[Path] = []

    def start(name: str, **settings) -> dict:
        folder = tmp_path / name
        folders.append(folder)
        return start_deployment(DeploySettings(folder=folder, port=free_port(), node_port_base=free_port(), **settings))

    yield start
    for folder in folders:
        if (folder / "deployment.json").exists():
            stop_deployment(folder)
            assert not [pid for pid in recorded_pids(load_state(folder)) if is_running(pid)]
