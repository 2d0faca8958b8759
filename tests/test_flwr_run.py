"""End to end: a real `flwr run . --federation-config simulation.toml` against a SuperLink this
module owns, at tiny sizes. Fails unless the run ends `finished:completed` and wrote its results.

Both tests submit to one SuperLink (each run has its own id and results), so the module pays the
SuperLink's start-up once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedmmkt_strategy.cli.flower_processes import SuperLink, own_superlink
from tests.conftest import MICRO_SERVER

ROOT = Path(__file__).resolve().parents[1]
#: simulation.toml's 8 SuperNodes cycle over this layout: both modalities, only the cheapest models
#: (the default layout's full-size resnet, vit and transformer are the task-model tests' business).
TINY_LAYOUT = "image:cnn-small,text:bow"
TINY = (
    f'client-layout="{TINY_LAYOUT}" num-server-rounds=2 pool-size=480 test-per-class=3 local-epochs=1 '
    "node-settle=1.0 labvote-beta=1.0 " + " ".join(f"{key}={value}" for key, value in MICRO_SERVER.items())
)


@pytest.fixture(scope="module")
def superlink(tmp_path_factory) -> Iterator[SuperLink]:
    """A simulation SuperLink on a free loopback port, and a FLWR_HOME whose connection 'ci' points at it."""
    with own_superlink(tmp_path_factory.mktemp("superlink"), connection="ci") as link:
        yield link


def test_flwr_run_of_fedmmkt_completes_and_writes_results(superlink: SuperLink, tmp_path: Path, micro_cache: str):
    results = tmp_path / "results"
    run_id = superlink.submit(ROOT, f'{TINY} cache-dir="{micro_cache}" results-dir="{results}" run-name="smoke"')
    status, details = superlink.wait_for_run(run_id, timeout=480)
    assert status == "finished:completed", details
    metrics = json.loads((results / "smoke" / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]  # round 0: the pre-trained T2I model
    assert {c["modality"] for c in metrics["rounds"][-1]["clients"]} == {"image", "text"}
    assert (results / "smoke" / "accuracy.png").stat().st_size > 0
    assert metrics["strategy"] == "fedmmkt" and "gen_acc" in metrics["rounds"][-1]["server"]
    assert (results / "smoke" / "samples" / "round_002.png").exists()


def test_bad_run_config_fails_the_run(superlink: SuperLink, tmp_path: Path):
    run_id = superlink.submit(ROOT, f'dirichlet-alpha=-1.0 results-dir="{tmp_path}"')
    status, details = superlink.wait_for_run(run_id, timeout=120)
    assert status == "finished:failed"
    assert "dirichlet-alpha" in details
