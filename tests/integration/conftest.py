"""One embedded engine (real dev server + real worker subprocess) for the integration
tests, in a state dir of its own, driven only through the `skyloom` console script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Sky:
    """Runs the real CLI against this test session's engine."""

    bin: str
    env: dict[str, str]

    def run(
        self, *args: str, cwd: Path | str | None = None, timeout: float = 180, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.bin, *args],
            cwd=cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str, **kw: Any) -> str:
        p = self.run(*args, **kw)
        assert p.returncode == 0, (
            f"skyloom {' '.join(args)} → {p.returncode}\n{p.stdout}\n{p.stderr}"
        )
        return p.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "-o", "json"))

    def engine(self) -> dict[str, Any]:
        return self.json("engine", "status")

    def jobs(self, cluster: str) -> dict[int, dict[str, Any]]:
        return {j["id"]: j for j in self.json("queue", cluster)}

    def clusters(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.json("status")}

    def kill_worker(self) -> int:
        pid = self.engine()["worker_pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 10, f"worker {pid} to die")
        return pid

    def restart_worker(self) -> None:
        self.ok("engine", "start")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill 0; its state in /proc says it is gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def wait_until(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def hermetic_env(state: Path) -> dict[str, str]:
    """This environment without an engine address or any cloud's credentials: the
    worker finds none of the developer's (and asks no instance metadata service)."""
    clouds = (
        "TEMPORAL_", "AWS_", "GOOGLE_", "CLOUDSDK_", "AZURE_", "SKYLOOM_GCP_", "SKYLOOM_AZURE_",
        "SKYLOOM_CLOUD_",
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(clouds)}
    nowhere = state / "no-cloud-config"
    env.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(nowhere / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(nowhere / "aws-credentials"),
        CLOUDSDK_CONFIG=str(nowhere / "gcloud"),
        AZURE_CONFIG_DIR=str(nowhere / "azure"),
    )
    return env


@pytest.fixture(scope="session")
def sky(skyloom_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sky]:
    state = tmp_path_factory.mktemp("skyloom-home")
    env = hermetic_env(state)
    # A node unreachable for 8 s fails its job (60 s by default): the SSH tests kill hosts.
    env.update(
        SKYLOOM_HOME=str(state),
        NO_COLOR="1",
        COLUMNS="200",
        SKYLOOM_UNREACHABLE_GRACE_SECONDS="8",
    )
    s = Sky(skyloom_bin, env)
    s.ok("engine", "start", timeout=120)
    try:
        yield s
    finally:
        s.run("down", "-a", "-y", timeout=120)
        s.run("engine", "stop", timeout=60)


@pytest.fixture
def nodes_root(sky: Sky) -> Path:
    """Where the local infra keeps its node directories."""
    return Path(sky.env["SKYLOOM_HOME"]) / "local"


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A cluster name unique to the test."""
    return request.node.name.removeprefix("test_").replace("_", "-")[:40].rstrip("-")
