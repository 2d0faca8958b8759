"""End to end: a real `flwr run . --federation-config simulation.toml` against a SuperLink this
module owns, at tiny sizes. Fails unless the run ends `finished:completed` and wrote its results.

Both tests submit to one SuperLink (each run has its own id and results), so the module pays the
SuperLink's start-up once."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import MICRO_SERVER
from tests.flower_cli import BIN, flower_env, free_port, start, stop, wait_for_port, wait_for_run

ROOT = Path(__file__).resolve().parents[1]
#: simulation.toml's 8 SuperNodes cycle over this layout: both modalities, only the cheapest models
#: (the default layout's full-size resnet, vit and transformer are the task-model tests' business).
TINY_LAYOUT = "image:cnn-small,text:bow"
TINY = (
    f'client-layout="{TINY_LAYOUT}" num-server-rounds=2 pool-size=480 test-per-class=3 local-epochs=1 '
    "node-settle=1.0 labvote-beta=1.0 " + " ".join(f"{key}={value}" for key, value in MICRO_SERVER.items())
)


@dataclass(frozen=True)
class SuperLink:
    """The environment of Flower CLIs whose connection 'ci' points at the SuperLink, and its log."""

    env: dict[str, str]
    log: Path

    def wait_for_run(self, run_id: int, timeout: float) -> tuple[str, str]:
        return wait_for_run("ci", run_id, self.env, timeout, superlink_log=self.log)


@pytest.fixture(scope="module")
def superlink(tmp_path_factory) -> SuperLink:
    """A simulation SuperLink on a free loopback port, and a FLWR_HOME whose connection 'ci' points at it."""
    tmp_path = tmp_path_factory.mktemp("superlink")
    port = free_port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "ci"\n\n[superlink.ci]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = flower_env(home)
    proc = start(
        [
            str(BIN / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--database",
            str(tmp_path / "state.db"),
        ],
        env,
        tmp_path / "superlink.log",
    )
    try:
        wait_for_port(port)
        yield SuperLink(env, tmp_path / "superlink.log")
    finally:
        stop(proc)


def _submit(env: dict[str, str], run_config: str) -> int:
    out = subprocess.run(
        [
            str(BIN / "flwr"),
            "run",
            ".",
            "ci",
            "--federation-config",
            "simulation.toml",
            "--run-config",
            run_config,
            "--format",
            "json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return int(json.loads(out.stdout)["run-id"])


def test_flwr_run_of_fedmmkt_completes_and_writes_results(superlink: SuperLink, tmp_path: Path, micro_cache: str):
    results = tmp_path / "results"
    run_id = _submit(superlink.env, f'{TINY} cache-dir="{micro_cache}" results-dir="{results}" run-name="smoke"')
    status, details = superlink.wait_for_run(run_id, timeout=480)
    assert status == "finished:completed", details
    metrics = json.loads((results / "smoke" / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]  # round 0: the pre-trained T2I model
    assert {c["modality"] for c in metrics["rounds"][-1]["clients"]} == {"image", "text"}
    assert (results / "smoke" / "accuracy.png").stat().st_size > 0
    assert metrics["strategy"] == "fedmmkt" and "gen_acc" in metrics["rounds"][-1]["server"]
    assert (results / "smoke" / "samples" / "round_002.png").exists()


def test_bad_run_config_fails_the_run(superlink: SuperLink, tmp_path: Path):
    run_id = _submit(superlink.env, f'dirichlet-alpha=-1.0 results-dir="{tmp_path}"')
    status, details = superlink.wait_for_run(run_id, timeout=120)
    assert status == "finished:failed"
    assert "dirichlet-alpha" in details
