"""Starting, watching and stopping real Flower processes: the one place `fedmmkt deploy`, the
tests and the benchmarks get a SuperLink, SuperNodes and `flwr run` from.

Every process is started in its own session and stopped by its process group id (SIGTERM, then
SIGKILL), so its app subprocesses go with it and nothing outlives its owner. Every port is a free
one and every FLWR_HOME its owner's, so these processes can run next to other Flower runs on the
machine (README, "Concurrent runs"): the SuperLink's one HTTP API (`--host`/`--port`: Fleet,
Control and ServerAppIo alike in Flower 1.42), the CLI's connection to it (an explicit address in
its own FLWR_HOME, never ":local:"), and, as a guard, the ports `:local:` would use.
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
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
#: The Flower programs started here; `stop_process` refuses to signal a recycled pid running anything else.
FLOWER_PROGRAMS = ("flower-superlink", "flower-supernode")
#: Variables that would make these processes share something with another run: the legacy gRPC
#: Control/Fleet APIs on the fixed ports 9093/9092 (started only when these are "1"), and an
#: existing Ray cluster that the simulation's `ray.init()` would join.
SHARED_STATE_VARIABLES = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API", "RAY_ADDRESS")
#: With a SuperLink log to watch, `flwr ls` still runs this often, should the log line never come.
FALLBACK_POLL_S = 15.0


class FlowerProcessError(RuntimeError):
    """A Flower process did not start, listen or answer as expected; the message says which."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_free_port(start: int, taken: Collection[int] = (), tries: int = 200) -> int:
    """The first port from `start` up that is not in `taken` and binds on loopback now: a port of
    a planned range may be held by another program (or an outgoing connection's ephemeral port)."""
    for port in range(start, min(start + tries, 65536)):
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free loopback port in {start}-{start + tries - 1}")


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment of a Flower process or CLI: its own FLWR_HOME, the venv's binaries first on PATH,
    no runtime dependency installation (it would build a fresh environment with a CUDA torch per
    run), nothing shared with other runs (a `:local:` connection, should one be used, gets free
    ports too)."""
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


def write_connection(flwr_home: Path, connection: str, address: str, ca_cert: Path | None = None) -> Path:
    """A FLWR_HOME config.toml whose default connection `connection` dials `address` (TLS with
    `ca_cert`, else insecure)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = f'root-certificates = "{ca_cert.resolve()}"' if ca_cert else "insecure = true"
    path = flwr_home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{connection}"\n\n[superlink.{connection}]\naddress = "{address}"\n{security}\n'
    )
    return path


def simulation_superlink_command(port: int, database: Path) -> list[str]:
    """An insecure `flower-superlink` with the simulation runtime, on loopback `port`."""
    return [
        str(BIN / "flower-superlink"),
        "--insecure",
        "--simulation",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(database),
    ]


def launch(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a detached process in its own session (so `stop_process` can signal its children
    too), appending its output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    return state != "Z"


def _is_flower_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return is_running(pid)  # no /proc (macOS): trust the recorded pid
    return any(program in cmdline for program in FLOWER_PROGRAMS)


def stop_process(pid: int, grace: float = 10.0) -> bool:
    """SIGTERM the process group led by `pid` (the process and its app subprocesses), SIGKILL
    after `grace` seconds. Returns False when there was nothing of ours to stop."""
    if not is_running(pid) or not _is_flower_process(pid):
        _reap(pid)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and is_running(pid):
        time.sleep(0.2)
    if is_running(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and is_running(pid):
            time.sleep(0.1)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status when `pid` is our child (started in this process), so no zombie stays."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_for_port(port: int, timeout: float = 30.0, pid: int | None = None) -> None:
    """Wait until something listens on 127.0.0.1:`port`; fail early if `pid` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not is_running(pid):
            raise FlowerProcessError(f"process {pid} exited before listening on port {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise FlowerProcessError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def submit_run(
    env: dict[str, str],
    app: Path,
    connection: str,
    run_config: str,
    federation_config: str | None = None,
    timeout: float = 120,
) -> int:
    """`flwr run <app> <connection> --run-config ... [--federation-config ...]`: submit and return
    the run id at once (the run goes on in the SuperLink; see `wait_for_run`). A simulation
    SuperLink needs `federation_config` (e.g. "simulation.toml"); a deployment has its SuperNodes."""
    cmd = [str(BIN / "flwr"), "run", ".", connection, "--run-config", run_config, "--format", "json"]
    if federation_config is not None:
        cmd += ["--federation-config", federation_config]
    out = subprocess.run(cmd, cwd=app, env=env, capture_output=True, text=True, check=True, timeout=timeout)
    return int(json.loads(out.stdout)["run-id"])


def run_status(connection: str, run_id: int, env: dict[str, str]) -> tuple[str, str]:
    """(status, status-details) of a run, from `flwr ls --format json`. `flwr run` exits 0 even
    when the run fails, so this is what says whether it completed."""
    out = subprocess.run(
        [str(BIN / "flwr"), "ls", connection, "--run-id", str(run_id), "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    run = json.loads(out)["runs"][0]
    return run["status"], run.get("status-details", "")


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


@dataclass(frozen=True)
class SuperLink:
    """A SuperLink started by `own_superlink`: the environment of Flower CLIs whose FLWR_HOME's
    default connection `connection` points at it, and its log."""

    env: dict[str, str]
    log: Path
    port: int
    connection: str

    def submit(self, app: Path, run_config: str, federation_config: str = "simulation.toml") -> int:
        return submit_run(self.env, app, self.connection, run_config, federation_config)

    def wait_for_run(self, run_id: int, timeout: float) -> tuple[str, str]:
        return wait_for_run(self.connection, run_id, self.env, timeout, superlink_log=self.log)


@contextmanager
def own_superlink(folder: Path, connection: str = "local-sim") -> Iterator[SuperLink]:
    """A simulation SuperLink on a free loopback port, with its database, log and a FLWR_HOME in
    `folder`; stopped by its process group id on exit."""
    port = free_port()
    home = folder / "flwr-home"
    write_connection(home, connection, f"127.0.0.1:{port}")
    env = flower_env(home)
    log = folder / "superlink.log"
    proc = launch(simulation_superlink_command(port, folder / "state.db"), env, log)
    try:
        wait_for_port(port, pid=proc.pid)
        yield SuperLink(env, log, port, connection)
    finally:
        stop_process(proc.pid)
