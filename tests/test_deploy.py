"""The deployment kit: credentials, commands, and one short `fedmmkt` round across real
SuperLink/SuperNode processes in secure mode (TLS + SuperNode authentication), where a SuperNode
with an unregistered key is refused. Every process started is stopped by its pid."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedmmkt_strategy.cli.deploy import DeploySettings, online_nodes, start_supernode, supernode_command
from fedmmkt_strategy.cli.flower_processes import first_free_port, flower_env
from fedmmkt_strategy.cli.pki import make_node_key, make_server_credentials
from tests.deployment import LAYOUT, NUM_NODES, deploy_run_config, submit_deployed, wait_for_deployed_run, wait_for_exit


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


def test_a_taken_port_of_the_planned_range_is_skipped():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        assert first_free_port(port) > port
        assert first_free_port(port, taken={port + 1}) > port + 1


def test_settings_name_the_bad_option(tmp_path: Path):
    with pytest.raises(ValueError, match="layout"):
        DeploySettings(folder=tmp_path, layout="image:nope")
    with pytest.raises(ValueError, match="num_nodes"):
        DeploySettings(folder=tmp_path, layout=LAYOUT, num_nodes=0)


def test_secure_deployment_runs_fedmmkt_and_refuses_an_unregistered_node(deploy, tmp_path: Path, micro_cache: str):
    state = deploy("secure", num_nodes=NUM_NODES, layout=LAYOUT, secure=True)
    env = flower_env(Path(state["flwr-home"]))
    registered = {n["node-id"] for n in state["supernodes"]}
    assert len(registered) == NUM_NODES and set(online_nodes(env)) == registered

    key = tmp_path / "intruder"
    make_node_key(key)
    intruder_config = {"partition-id": 0, "num-partitions": NUM_NODES}
    intruder = start_supernode(state, "intruder", intruder_config, key, register=False)
    assert wait_for_exit(intruder["pid"], 60), "a SuperNode with an unregistered key kept running"
    log = Path(intruder["log"]).read_text()
    assert "Failed to activate SuperNode" in log and "Exit Code: 305" in log
    assert set(online_nodes(env)) == registered

    results = tmp_path / "results"
    run_config = deploy_run_config(results, micro_cache, **{"min-nodes": NUM_NODES, "client-layout": '"image:cnn"'})
    run_id = submit_deployed(env, run_config)
    status, details = wait_for_deployed_run(state, run_id, timeout=300)
    assert status == "finished:completed", details
    metrics = json.loads((results / "deploy" / "metrics.json").read_text())
    clients = {c["node_id"]: c for c in metrics["rounds"][-1]["clients"]}
    assert set(clients) == registered and metrics["failures"] == []
    # Roles come from each node's --node-config, not from the run's (all-cnn) client-layout.
    by_id = {n["node-id"]: n["node-config"] for n in state["supernodes"] if "node-id" in n}
    for node_id, client in clients.items():
        expected = by_id[node_id]
        assert (client["modality"], client["architecture"]) == (expected["modality"], expected["architecture"])
