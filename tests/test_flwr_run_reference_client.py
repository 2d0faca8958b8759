"""End to end: a real `flwr run` of the reference ClientApp (examples/reference_client) against a
SuperLink this module owns, at tiny sizes. A copy of the app whose `clientapp` component is the
reference client is built into a FAB and run on 4 simulated SuperNodes; the run must end
`finished:completed` with no reply rejected by the server (`failures` in metrics.json empty).

Like tests/test_flwr_run.py, these start real processes (a SuperLink, Ray, the ServerApp) and
take a minute or more each; every port is a free one (fedmmkt_strategy/cli/flower_processes.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedmmkt_strategy.cli.flower_processes import SuperLink, own_superlink
from tests.conftest import MICRO_SERVER

ROOT = Path(__file__).resolve().parents[1]
OURS = 'clientapp = "client_app.app:app"'
REFERENCE = 'clientapp = "examples.reference_client.app:app"'
#: What the copy of the app holds: the apps' code, the config and the reference client.
APP_FILES = ("pyproject.toml", "README.md", ".gitignore", "simulation.toml")
APP_PACKAGES = ("server_app", "client_app", "fedmmkt_strategy", "task_models", "worlds", "examples")
FEDERATION = (
    'num-supernodes=4 client-resources-num-cpus=1 init-args-logging-level="ERROR" init-args-log-to-driver=false'
)
TINY = (
    'client-layout="image:cnn-small,text:bow" num-server-rounds=2 pool-size=480 test-per-class=3 local-epochs=1 '
    "min-nodes=4 node-settle=1.0 labvote-beta=1.0 " + " ".join(f"{key}={value}" for key, value in MICRO_SERVER.items())
)


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    with own_superlink(tmp_path_factory.mktemp("superlink")) as link:
        yield link


@pytest.fixture(scope="module")
def reference_app(tmp_path_factory) -> Path:
    """A copy of this app whose ClientApp is the reference client. The folder name is the FAB's
    app name for Flower: letters, digits and hyphens only."""
    app = tmp_path_factory.mktemp("apps") / "fedmmkt-reference-client"
    app.mkdir()
    for name in APP_FILES:
        shutil.copy2(ROOT / name, app / name)
    for package in APP_PACKAGES:
        shutil.copytree(ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = (app / "pyproject.toml").read_text()
    assert pyproject.count(OURS) == 1, "pyproject.toml's clientapp component moved"
    (app / "pyproject.toml").write_text(pyproject.replace(OURS, REFERENCE))
    return app


# fedmmkt only: its messages are the whole protocol (queries, targets, evaluation); fedavg's weight
# exchange runs in-process in tests/test_reference_client.py, and every real run costs CI minutes
@pytest.mark.parametrize("strategy", ["fedmmkt"])
def test_flwr_run_of_the_reference_client_completes_with_every_reply_accepted(
    superlink: SuperLink, reference_app: Path, tmp_path: Path, micro_cache: str, strategy: str
):
    results = tmp_path / "results"
    run_config = f'{TINY} strategy="{strategy}" cache-dir="{micro_cache}" results-dir="{results}" run-name="ref"'
    run_id = superlink.submit(reference_app, run_config, federation_config=FEDERATION)
    status, details = superlink.wait_for_run(run_id, timeout=480)
    assert status == "finished:completed", details
    metrics = json.loads((results / "ref" / "metrics.json").read_text())
    assert metrics["strategy"] == strategy
    assert metrics["failures"] == []
    clients = metrics["rounds"][-1]["clients"]
    assert len([c for c in clients if "acc_global" in c]) == 4
    assert {c["modality"] for c in clients} == {"image", "text"}
