"""The deployment kit: credentials, commands, and one short `fedmmkt` round across real
SuperLink/SuperNode processes in secure mode (TLS + SuperNode authentication), where a SuperNode
with an unregistered key is refused. Every process started is stopped by its pid."""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedmmkt_strategy.cli.deploy import (
    CONNECTION,
    DeploySettings,
    load_state,
    online_nodes,
    recorded_pids,
    start_deployment,
    start_supernode,
    stop_deployment,
    supernode_command,
)
from fedmmkt_strategy.cli.flower_processes import flower_env, free_port, is_running, submit_run, wait_for_run
from fedmmkt_strategy.cli.pki import make_node_key, make_server_credentials
from tests.conftest import MICRO_SERVER

ROOT = Path(__file__).resolve().parents[1]
#: One node per modality, the cheapest models: neither is the runs' own client-layout ("image:cnn"
#: in the secure run), so every node's role has to come from its --node-config.
LAYOUT = "image:cnn-small,text:bow"
NUM_NODES = 2


def test_server_certificate_is_signed_by_the_ca_for_loopback(tmp_path: Path):
    creds = make_server_credentials(tmp_path)
    cert = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises unless the CA signed it
    ctx = ssl.create_default_context(cafile=str(creds.ca_cert))  # the CA file is what clients trust
    ctx.load_cert_chain(creds.server_cert, creds.server_key)  # and the key matches the certificate
    assert creds.server_key.stat().st_mode & 0o077 == 0


def test_node_key_is_an_openssh_ec_key_pair(tmp_path: Path):
    public = make_node_key(tmp_path / "sn0", "sn0")
    private = serialization.load_ssh_private_key((tmp_path / "sn0").read_bytes(), password=None)
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ") and public.read_text().strip().endswith(" sn0")
    loaded = serialization.load_ssh_public_key(public.read_bytes().rsplit(b" ", 1)[0])
    assert loaded.public_numbers() == private.public_key().public_numbers()
    assert (tmp_path / "sn0").stat().st_mode & 0o077 == 0


def test_supernode_command_is_secure_only_with_a_ca():
    secure = supernode_command("127.0.0.1:1", 2, "partition-id=0", Path("ca.crt"), Path("k"))
    assert "--insecure" not in secure and secure[secure.index("--auth-supernode-private-key") + 1] == "k"
    assert "--insecure" in supernode_command("127.0.0.1:1", 2, "partition-id=0")


def test_settings_name_the_bad_option(tmp_path: Path):
    with pytest.raises(ValueError, match="layout"):
        DeploySettings(folder=tmp_path, layout="image:nope")
    with pytest.raises(ValueError, match="num_nodes"):
        DeploySettings(folder=tmp_path, layout=LAYOUT, num_nodes=0)


def _wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_running(pid):
        time.sleep(0.5)
    return not is_running(pid)


def _submit(env: dict[str, str], run_config: str) -> int:
    return submit_run(env, ROOT, CONNECTION, run_config)


@pytest.fixture()
def deploy(tmp_path: Path):
    """Starts deployments under tmp_path; stops every recorded process by pid at teardown."""
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


def _run_config(results: Path, cache: str, **extra) -> str:
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


def _wait_for_run(state: dict, run_id: int, timeout: float) -> tuple[str, str]:
    """`wait_for_run` on the deployment's connection, watching its SuperLink's log."""
    env = flower_env(Path(state["flwr-home"]))
    return wait_for_run(CONNECTION, run_id, env, timeout, superlink_log=Path(state["superlink"]["log"]))


def test_secure_deployment_runs_fedmmkt_and_refuses_an_unregistered_node(deploy, tmp_path: Path, micro_cache: str):
    state = deploy("secure", num_nodes=NUM_NODES, layout=LAYOUT, secure=True)
    env = flower_env(Path(state["flwr-home"]))
    registered = {n["node-id"] for n in state["supernodes"]}
    assert len(registered) == NUM_NODES and set(online_nodes(env)) == registered

    key = tmp_path / "intruder"
    make_node_key(key)
    intruder_config = {"partition-id": 0, "num-partitions": NUM_NODES}
    intruder = start_supernode(state, "intruder", intruder_config, key, register=False)
    assert _wait_for_exit(intruder["pid"], 60), "a SuperNode with an unregistered key kept running"
    log = Path(intruder["log"]).read_text()
    assert "Failed to activate SuperNode" in log and "Exit Code: 305" in log
    assert set(online_nodes(env)) == registered

    results = tmp_path / "results"
    run_config = _run_config(results, micro_cache, **{"min-nodes": NUM_NODES, "client-layout": '"image:cnn"'})
    run_id = _submit(env, run_config)
    status, details = _wait_for_run(state, run_id, timeout=300)
    assert status == "finished:completed", details
    metrics = json.loads((results / "deploy" / "metrics.json").read_text())
    clients = {c["node_id"]: c for c in metrics["rounds"][-1]["clients"]}
    assert set(clients) == registered and metrics["failures"] == []
    # Roles come from each node's --node-config, not from the run's (all-cnn) client-layout.
    by_id = {n["node-id"]: n["node-config"] for n in state["supernodes"] if "node-id" in n}
    for node_id, client in clients.items():
        expected = by_id[node_id]
        assert (client["modality"], client["architecture"]) == (expected["modality"], expected["architecture"])


def _wait_for_line(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{text!r} not in {path} after {timeout} s")


#: The survivor's whole train phase (a fresh `flwr-clientapp` process, one epoch on 240 samples)
#: took 6.5 s on a 2-core machine also busy with two training jobs; CI machines may be slower, and
#: a survivor that misses it would turn the expected "1 of 2 replied" into "0 of 2".
KILL_TRAIN_TIMEOUT_S = 30.0


def test_a_supernode_killed_mid_round_fails_the_run_below_quorum(deploy, tmp_path: Path, micro_cache: str):
    state = deploy("insecure", num_nodes=NUM_NODES, layout=LAYOUT, secure=False)
    env = flower_env(Path(state["flwr-home"]))
    # The first message of a node is slow (app install, data, warm-up), so it dies in the train phase.
    # No T2I update: it is not what fails here, and would only delay the train phase.
    quorum = {"min-reply-fraction": 1.0, "train-timeout": KILL_TRAIN_TIMEOUT_S, "t2i-steps-per-round": 0}
    run_id = _submit(env, _run_config(tmp_path / "results", micro_cache, **quorum))
    victim = state["supernodes"][1]
    _wait_for_line(Path(victim["log"]), "Receiving: train.distill", timeout=240)
    os.killpg(victim["pid"], signal.SIGKILL)  # the device dies with the message in flight: no reply ever
    started = time.monotonic()
    status, details = _wait_for_run(state, run_id, timeout=120)
    assert status == "finished:failed"
    assert "train.distill: only 1 of 2 nodes replied, 2 needed" in details, details
    assert f"node {victim['node-id']}: no reply before the timeout" in details
    assert time.monotonic() - started < 100  # the train-timeout, plus polling: it did not hang


def _wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not path.exists():
        time.sleep(0.5)
    if not path.exists():
        raise TimeoutError(f"{path} not written after {timeout} s")


def test_killed_server_and_supernode_resume_with_trained_clients(deploy, tmp_path: Path, micro_cache: str):
    """Server crash + SuperNode crash mid-run, both restarted, run resumed: the clients continue
    from the models they saved on their node's disk instead of training a fresh model again."""
    keys = {"num-server-rounds": 2, "t2i-steps-per-round": 0}  # no T2I update: not what is tested
    results = tmp_path / "results"
    first = deploy("crash", num_nodes=NUM_NODES, layout=LAYOUT, secure=False)
    _submit(flower_env(Path(first["flwr-home"])), _run_config(results, micro_cache, **keys))
    _wait_for_file(results / "deploy" / "checkpoint.pt", timeout=300)  # round 1 is complete
    os.killpg(first["superlink"]["pid"], signal.SIGKILL)  # the server dies in round 2
    os.killpg(first["supernodes"][1]["pid"], signal.SIGKILL)  # and so does one device
    stop_deployment(Path(first["folder"]))  # the other device is restarted as well
    crashed = json.loads((results / "deploy" / "metrics.json").read_text())
    assert crashed["rounds"][-1]["round"] == 1  # it died mid-run, before round 2 was complete
    # Restart: a new SuperLink (new database, so a new Flower run) and SuperNodes with the same roles
    # and the same disk; the run resumes from round 1's checkpoint under the same run key.
    second = deploy("crash-restarted", num_nodes=NUM_NODES, layout=LAYOUT, secure=False)
    run_id = _submit(
        flower_env(Path(second["flwr-home"])), _run_config(results, micro_cache, resume='"deploy"', **keys)
    )
    status, details = _wait_for_run(second, run_id, timeout=300)
    assert status == "finished:completed", details
    metrics = json.loads((results / "deploy" / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]  # round 0: the pre-trained T2I model
    logs = [Path(n["log"]).read_text(errors="replace") for n in second["supernodes"]]
    for log in logs:  # every restarted client found its saved model, none trained a new one
        assert "restored model and pool from" in log, log[-2000:]
        assert "warm-up stopped after" not in log
    first_logs = "".join(Path(n["log"]).read_text(errors="replace") for n in first["supernodes"])
    assert "warm-up stopped after" in first_logs  # the log lines looked for do appear in these logs
