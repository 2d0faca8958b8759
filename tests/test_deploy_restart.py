"""Server and SuperNode killed mid-run across real processes, both restarted on the same disks,
the run resumed: the clients continue from the models they saved (issue #14)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from fedmmkt_strategy.cli.deploy import stop_deployment
from fedmmkt_strategy.cli.flower_processes import flower_env
from tests.deployment import LAYOUT, NUM_NODES, deploy_run_config, submit_deployed, wait_for_deployed_run, wait_for_file


def test_killed_server_and_supernode_resume_with_trained_clients(deploy, tmp_path: Path, micro_cache: str):
    """Server crash + SuperNode crash mid-run, both restarted, run resumed: the clients continue
    from the models they saved on their node's disk instead of training a fresh model again."""
    keys = {"num-server-rounds": 2, "t2i-steps-per-round": 0}  # no T2I update: not what is tested
    results = tmp_path / "results"
    first = deploy("crash", num_nodes=NUM_NODES, layout=LAYOUT, secure=False)
    submit_deployed(flower_env(Path(first["flwr-home"])), deploy_run_config(results, micro_cache, **keys))
    wait_for_file(results / "deploy" / "checkpoint.pt", timeout=300)  # round 1 is complete
    os.killpg(first["superlink"]["pid"], signal.SIGKILL)  # the server dies in round 2
    os.killpg(first["supernodes"][1]["pid"], signal.SIGKILL)  # and so does one device
    stop_deployment(Path(first["folder"]))  # the other device is restarted as well
    crashed = json.loads((results / "deploy" / "metrics.json").read_text())
    assert crashed["rounds"][-1]["round"] == 1  # it died mid-run, before round 2 was complete
    # Restart: a new SuperLink (new database, so a new Flower run) and SuperNodes with the same roles
    # and the same disk; the run resumes from round 1's checkpoint under the same run key.
    second = deploy("crash-restarted", num_nodes=NUM_NODES, layout=LAYOUT, secure=False)
    run_id = submit_deployed(
        flower_env(Path(second["flwr-home"])), deploy_run_config(results, micro_cache, resume='"deploy"', **keys)
    )
    status, details = wait_for_deployed_run(second, run_id, timeout=300)
    assert status == "finished:completed", details
    metrics = json.loads((results / "deploy" / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]  # round 0: the pre-trained T2I model
    logs = [Path(n["log"]).read_text(errors="replace") for n in second["supernodes"]]
    for log in logs:  # every restarted client found its saved model, none trained a new one
        assert "restored model and pool from" in log, log[-2000:]
        assert "warm-up stopped after" not in log
    first_logs = "".join(Path(n["log"]).read_text(errors="replace") for n in first["supernodes"])
    assert "warm-up stopped after" in first_logs  # the log lines looked for do appear in these logs
