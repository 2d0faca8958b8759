"""A SuperLink and N SuperNodes as real processes on this machine, over loopback only.

This is Flower's deployment runtime (not the simulation engine) in miniature: each SuperNode is
a `flower-supernode` process told its modality, architecture and data partition through
`--node-config`, and runs every message in a fresh `flwr-clientapp` subprocess, as it would on a
device. In secure mode the SuperLink serves TLS with a locally generated CA and requires SuperNode
authentication: each node's public key is registered (`flwr supernode register`) before the node
starts, so a node with any other key is refused.

Everything lives in one folder: `deployment.json` (pids, ports, node ids), `logs/`, `certs/`,
`keys/` and `flwr-home/` (a FLWR_HOME whose connection `fedmmkt-deploy` points at the SuperLink).
`stop_deployment` kills exactly the processes recorded there, by pid.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedmmkt_strategy.cli.flower_processes import (
    BIN,
    FlowerProcessError,
    first_free_port,
    flower_env,
    is_running,
    launch,
    stop_process,
    wait_for_port,
    write_connection,
)
from fedmmkt_strategy.cli.pki import LOOPBACK_NAMES, make_node_key, make_server_credentials
from task_models.layout import parse_layout
from task_models.node_config import deployment_node_configs, format_node_config

CONNECTION = "fedmmkt-deploy"
STATE_FILE = "deployment.json"


class DeployError(FlowerProcessError):
    """The deployment could not start or stop; the message says what to look at. (A process that
    does not come up raises its parent, `FlowerProcessError`, which `fedmmkt deploy` reports alike.)"""


class DeploySettings(BaseModel):
    """What `fedmmkt deploy start` builds; errors name the option."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: Path
    num_nodes: int = Field(4, ge=1, le=64)
    layout: str = Field(min_length=1)
    secure: bool = True
    port: int = Field(18000, ge=1024, le=65535)
    node_port_base: int = Field(19100, ge=1024, le=65535)
    names: tuple[str, ...] = LOOPBACK_NAMES
    startup_timeout: float = Field(60.0, gt=0)

    @field_validator("layout")
    @classmethod
    def _layout_is_valid(cls, value: str) -> str:
        parse_layout(value)
        return value


def superlink_command(settings: DeploySettings, certs: Path | None) -> list[str]:
    """`flower-superlink` on loopback; with `certs`, TLS and SuperNode authentication on."""
    cmd = [
        str(BIN / "flower-superlink"),
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.port),
        "--database",
        str(settings.folder / "state.db"),
    ]
    if certs is None:
        return [*cmd, "--insecure"]
    return [
        *cmd,
        "--ssl-ca-certfile",
        str(certs / "ca.crt"),
        "--ssl-certfile",
        str(certs / "server.pem"),
        "--ssl-keyfile",
        str(certs / "server.key"),
        "--enable-supernode-auth",
    ]


def supernode_command(
    superlink: str, port: int, node_config: str, ca_cert: Path | None = None, key: Path | None = None
) -> list[str]:
    """`flower-supernode` dialling `superlink`; its local runtime API on `port` (one per node)."""
    cmd = [str(BIN / "flower-supernode"), "--superlink", superlink, "--port", str(port), "--node-config", node_config]
    cmd += ["--root-certificates", str(ca_cert)] if ca_cert else ["--insecure"]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key)]
    return cmd


def register_node(public_key: Path, env: dict[str, str]) -> int:
    """Register a SuperNode public key with the SuperLink; return the node id it assigns."""
    done = subprocess.run(
        [str(BIN / "flwr"), "supernode", "register", str(public_key), CONNECTION, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        return int(json.loads(done.stdout)["node-id"])
    except (ValueError, KeyError) as err:
        raise DeployError(f"registering {public_key} failed: {done.stdout.strip()} {done.stderr.strip()}") from err


def online_nodes(env: dict[str, str]) -> list[int]:
    """Ids of the SuperNodes the SuperLink currently sees online (`flwr supernode ls`)."""
    done = subprocess.run(
        [str(BIN / "flwr"), "supernode", "ls", CONNECTION, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        nodes = json.loads(done.stdout)["nodes"]
    except (ValueError, KeyError):
        return []
    return [int(n["node-id"]) for n in nodes if n["status"] == "online"]


def load_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    if not path.exists():
        raise DeployError(f"no deployment in {folder} ({STATE_FILE} is missing)")
    return json.loads(path.read_text())


def _save_state(folder: Path, state: dict[str, Any]) -> None:
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(folder / STATE_FILE)


def start_supernode(
    state: dict[str, Any], name: str, node_config: dict[str, str | int], key: Path | None, register: bool
) -> dict[str, Any]:
    """Start one SuperNode of a running deployment (registering its key first when asked) and
    record it in the state file. Used for the planned nodes and for extra ones, e.g. a test's
    node with an unregistered key."""
    folder = Path(state["folder"])
    env = flower_env(folder / "flwr-home")
    node: dict[str, Any] = {"name": name, "node-config": node_config, "log": str(folder / "logs" / f"{name}.log")}
    if key is not None:
        node["public-key"] = str(key.with_name(key.name + ".pub"))
        if register:
            node["node-id"] = register_node(Path(node["public-key"]), env)
    taken = {n["port"] for n in state["supernodes"]}
    node["port"] = first_free_port(state["node-port-base"] + len(state["supernodes"]), taken)
    ca = Path(state["ca-cert"]) if state["ca-cert"] else None
    cmd = supernode_command(state["address"], node["port"], format_node_config(node_config), ca, key)
    # Each node gets its own FLWR_HOME: nodes unpack the app bundle there, and must not race.
    node["pid"] = launch(cmd, flower_env(folder / "nodes" / name), Path(node["log"])).pid
    state["supernodes"].append(node)
    _save_state(folder, state)
    return node


def start_deployment(settings: DeploySettings) -> dict[str, Any]:
    """Start the SuperLink and the SuperNodes; return the recorded state. On any failure every
    process started so far is stopped before the error propagates."""
    folder = settings.folder.resolve()
    if (folder / STATE_FILE).exists() and any(is_running(p) for p in recorded_pids(load_state(folder))):
        raise DeployError(f"a deployment is already running from {folder}; run `fedmmkt deploy stop --dir {folder}`")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("state.db*"):  # a stopped deployment's runs and node registrations
        stale.unlink()
    address = f"127.0.0.1:{settings.port}"
    creds = make_server_credentials(folder / "certs", settings.names) if settings.secure else None
    state: dict[str, Any] = {
        "folder": str(folder),
        "secure": settings.secure,
        "address": address,
        "ca-cert": str(creds.ca_cert) if creds else "",
        "flwr-home": str(folder / "flwr-home"),
        "node-port-base": settings.node_port_base,
        "superlink": {},
        "supernodes": [],
    }
    env = flower_env(folder / "flwr-home")
    write_connection(folder / "flwr-home", CONNECTION, address, creds.ca_cert if creds else None)
    try:
        log = folder / "logs" / "superlink.log"
        pid = launch(superlink_command(settings, creds.ca_cert.parent if creds else None), env, log).pid
        state["superlink"] = {"pid": pid, "log": str(log), "port": settings.port}
        _save_state(folder, state)
        wait_for_port(settings.port, settings.startup_timeout, pid)
        configs = deployment_node_configs(parse_layout(settings.layout), settings.num_nodes)
        for i, node_config in enumerate(configs):
            name, key = f"supernode-{i}", None
            if settings.secure:
                key = folder / "keys" / name
                make_node_key(key, name)
            start_supernode(state, name, node_config, key, register=True)
        wait_for_nodes(state, settings.num_nodes, settings.startup_timeout)
    except BaseException:
        stop_deployment(folder)
        raise
    return state


def node_id_from_log(log: Path) -> int | None:
    """The id a SuperNode logged at start-up (without authentication, it is only known there)."""
    found = re.search(r"SuperNode ID: (\d+)", log.read_text(errors="replace")) if log.exists() else None
    return int(found.group(1)) if found else None


def wait_for_nodes(state: dict[str, Any], count: int, timeout: float) -> list[int]:
    """Wait until `count` SuperNodes are online and record their ids; fail naming the logs of
    nodes that exited."""
    env = flower_env(Path(state["flwr-home"]))
    deadline = time.monotonic() + timeout
    online: list[int] = []
    while time.monotonic() < deadline:
        online = online_nodes(env)
        if len(online) >= count:
            for node in state["supernodes"]:
                node.setdefault("node-id", node_id_from_log(Path(node["log"])))
            _save_state(Path(state["folder"]), state)
            return online
        dead = [n["log"] for n in state["supernodes"] if not is_running(n["pid"])]
        if dead:
            raise DeployError(f"SuperNodes exited during start-up; see {', '.join(dead)}")
        time.sleep(1.0)
    raise DeployError(
        f"only {len(online)} of {count} SuperNodes online after {timeout:.0f} s; see {state['folder']}/logs"
    )


def recorded_pids(state: dict[str, Any]) -> list[int]:
    """Every pid the deployment started: SuperNodes first, then the SuperLink."""
    pids = [n["pid"] for n in state.get("supernodes", [])]
    if state.get("superlink", {}).get("pid"):
        pids.append(state["superlink"]["pid"])
    return pids


def stop_deployment(folder: Path) -> list[int]:
    """Stop every process recorded for the deployment in `folder`, by pid; return those stopped."""
    state = load_state(folder.resolve())
    return [pid for pid in recorded_pids(state) if stop_process(pid)]


def submit_instructions(state: dict[str, Any], project: str = ".") -> str:
    """How to submit a run to this deployment, for the user to copy."""
    security = f'root-certificates = "{state["ca-cert"]}"' if state["secure"] else "insecure = true"
    return (
        f"SuperLink {state['address']} ({'TLS + SuperNode auth' if state['secure'] else 'insecure'}), "
        f"{len(state['supernodes'])} SuperNodes; pids and logs in {state['folder']}\n"
        f"submit a run:\n"
        f"  FLWR_HOME={state['flwr-home']} FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 "
        f"flwr run {project} {CONNECTION} --stream\n"
        f"or add this connection to your own $FLWR_HOME/config.toml:\n"
        f'  [superlink.{CONNECTION}]\n  address = "{state["address"]}"\n  {security}\n'
        f"stop everything:\n  fedmmkt deploy stop --dir {state['folder']}"
    )
