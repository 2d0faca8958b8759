"""What the real-process deployment tests share: starting deployments (the `deploy` fixture lives
in tests/conftest.py), the runs' config, and waiting for processes, log lines, files and runs.

The tests are split over several files (test_deploy*.py) so that pytest-xdist runs these
minute-long scenarios side by side; each one mostly waits on Flower's 3-second polls."""

from __future__ import annotations

import time
from pathlib import Path

from fedmmkt_strategy.cli.deploy import CONNECTION
from fedmmkt_strategy.cli.flower_processes import flower_env, is_running, submit_run, wait_for_run
from tests.conftest import MICRO_SERVER

ROOT = Path(__file__).resolve().parents[1]
#: One node per modality, the cheapest models: neither is the runs' own client-layout ("image:cnn"
#: in the secure run), so every node's role has to come from its --node-config.
LAYOUT = "image:cnn-small,text:bow"
NUM_NODES = 2


def wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_running(pid):
        time.sleep(0.5)
    return not is_running(pid)


def submit_deployed(env: dict[str, str], run_config: str) -> int:
    return submit_run(env, ROOT, CONNECTION, run_config)


def deploy_run_config(results: Path, cache: str, **extra) -> str:
    keys = {
        "num-server-rounds": 1,
        "pool-size": 480,
        "test-per-class": 3,
        "local-epochs": 1,
        "node-settle": 1.0,
        **MICRO_SERVER,
        **extra,
    }
    quoted = {"cache-dir": cache, "results-dir": str(results), "run-name": "deploy"}
    return " ".join([f"{k}={v}" for k, v in keys.items()] + [f'{k}="{v}"' for k, v in quoted.items()])


def wait_for_deployed_run(state: dict, run_id: int, timeout: float) -> tuple[str, str]:
    """Flower's `wait_for_run` on the deployment's connection, watching its SuperLink's log."""
    env = flower_env(Path(state["flwr-home"]))
    return wait_for_run(CONNECTION, run_id, env, timeout, superlink_log=Path(state["superlink"]["log"]))


def wait_for_line(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{text!r} not in {path} after {timeout} s")


def wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not path.exists():
        time.sleep(0.5)
    if not path.exists():
        raise TimeoutError(f"{path} not written after {timeout} s")
