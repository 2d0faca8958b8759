"""End to end: a real `flwr run . --federation-config simulation.toml` against a SuperLink this
test owns, at tiny sizes. Fails unless the run ends `finished:completed` and wrote its results."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MICRO_SERVER
from tests.flower_cli import BIN, flower_env, free_port, start, stop, wait_for_port, wait_for_run

ROOT = Path(__file__).resolve().parents[1]
TINY = "num-server-rounds=2 pool-size=480 test-per-class=3 local-epochs=1 node-settle=1.0 labvote-beta=1.0 " + " ".join(
    f"{key}={value}" for key, value in MICRO_SERVER.items()
)


@pytest.fixture()
def superlink(tmp_path: Path):
    """A simulation SuperLink on a free loopback port, and a FLWR_HOME whose connection 'ci' points at it."""
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
        yield env
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


def test_flwr_run_of_fedmmkt_completes_and_writes_results(superlink, tmp_path: Path, micro_cache: str):
    results = tmp_path / "results"
    run_id = _submit(superlink, f'{TINY} cache-dir="{micro_cache}" results-dir="{results}" run-name="smoke"')
    status, details = wait_for_run("ci", run_id, superlink, timeout=480)
    assert status == "finished:completed", details
    metrics = json.loads((results / "smoke" / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]  # round 0: the pre-trained T2I model
    assert {c["modality"] for c in metrics["rounds"][-1]["clients"]} == {"image", "text"}
    assert (results / "smoke" / "accuracy.png").stat().st_size > 0
    assert metrics["strategy"] == "fedmmkt" and "gen_acc" in metrics["rounds"][-1]["server"]
    assert (results / "smoke" / "samples" / "round_002.png").exists()


def test_bad_run_config_fails_the_run(superlink, tmp_path: Path):
    run_id = _submit(superlink, f'dirichlet-alpha=-1.0 results-dir="{tmp_path}"')
    status, details = wait_for_run("ci", run_id, superlink, timeout=120)
    assert status == "finished:failed"
    assert "dirichlet-alpha" in details
