"""Running real Flower processes from tests: an owned SuperLink, `flwr run`, status checks.

Every process started here is stopped by its process group id, so nothing outlives a test.
Every port is a free one, so tests can run next to other Flower runs on the machine (README,
"Concurrent runs"): the SuperLink's one HTTP API (`--host`/`--port`, Fleet, Control and
ServerAppIo alike in Flower 1.42), the CLI's connection to it (an explicit address in this
test's own FLWR_HOME, never ":local:"), and, as a guard, the port `:local:` would use.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Variables that would make a test's Flower processes share something with another run: the
#: legacy gRPC Control/Fleet APIs on the fixed ports 9093/9092 (started only when these are "1"),
#: and an existing Ray cluster that the simulation's `ray.init()` would join.
SHARED_STATE_VARIABLES = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API", "RAY_ADDRESS")


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower CLIs: own FLWR_HOME, no runtime dependency installation, nothing
    shared with other runs (a `:local:` connection, should one be used, gets free ports too)."""
    env = {k: v for k, v in os.environ.items() if k not in SHARED_STATE_VARIABLES}
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


@dataclass(frozen=True)
class SuperLink:
    """A SuperLink started by `own_superlink`: the environment of Flower CLIs whose FLWR_HOME's
    default connection `connection` points at it, and its log."""

    env: dict[str, str]
    log: Path
    port: int
    connection: str = "ci"

    def wait_for_run(self, run_id: int, timeout: float) -> tuple[str, str]:
        return wait_for_run(self.connection, run_id, self.env, timeout, superlink_log=self.log)


@contextmanager
def own_superlink(folder: Path, connection: str = "ci") -> Iterator[SuperLink]:
    """A simulation SuperLink on a free loopback port, with its database, log and a FLWR_HOME in
    `folder`; stopped by its process group id on exit."""
    port = free_port()
    home = folder / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{connection}"\n\n'
        f'[superlink.{connection}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = flower_env(home)
    cmd = [
        str(BIN / "flower-superlink"),
        "--insecure",
        "--simulation",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(folder / "state.db"),
    ]
    proc = start(cmd, env, folder / "superlink.log")
    try:
        wait_for_port(port)
        yield SuperLink(env, folder / "superlink.log", port, connection)
    finally:
        stop(proc)


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a process in its own session (so its children can be stopped together)."""
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started by `start` and all its children, by process group id."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def run_status(connection: str, run_id: int, env: dict[str, str]) -> tuple[str, str]:
    """(status, status-details) of a run, from `flwr ls --format json`."""
    out = subprocess.run(
        [str(BIN / "flwr"), "ls", connection, "--run-id", str(run_id), "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    run = json.loads(out)["runs"][0]
    return run["status"], run.get("status-details", "")


#: With a SuperLink log to watch, `flwr ls` still runs this often, should the log line never come.
FALLBACK_POLL_S = 15.0


def wait_for_run(
    connection: str, run_id: int, env: dict[str, str], timeout: float, superlink_log: Path | None = None
) -> tuple[str, str]:
    """Poll until the run has finished; return (status, details), e.g. ('finished:completed', 'N/A').

    Each `flwr ls` is a Python process of its own, about a second of CPU taken from the run it
    watches on a 2-core machine. With `superlink_log`, it is asked once at the start, then only
    once the SuperLink has logged that the run's ServerApp finished (or every FALLBACK_POLL_S).
    """
    deadline = time.monotonic() + timeout
    status, asked = "unknown", -FALLBACK_POLL_S
    while time.monotonic() < deadline:
        if (
            superlink_log is None
            or time.monotonic() - asked >= FALLBACK_POLL_S
            or serverapp_finished(superlink_log, run_id)
        ):
            status, details = run_status(connection, run_id, env)
            asked = time.monotonic()
            if status.startswith("finished"):
                return status, details
        time.sleep(2 if superlink_log is None else 0.5)
    raise TimeoutError(f"run {run_id} still {status!r} after {timeout} s")


def serverapp_finished(superlink_log: Path, run_id: int) -> bool:
    """True once the SuperLink logged 'Finished task <id> of run <run_id>': the run's ServerApp
    pushed its output, whether the run completed or failed."""
    if not superlink_log.exists():
        return False
    return re.search(rf"Finished task \d+ of run {run_id}\b", superlink_log.read_text(errors="replace")) is not None
