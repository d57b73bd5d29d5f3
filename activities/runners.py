"""Commands on nodes: one runner interface, one implementation per way of reaching a node.

Job control itself is `nodelet.sh`, piped to bash on the node, so every runner (local
subprocess, SSH, Kubernetes exec) starts, watches and kills jobs the same way.
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from skyloom.activities.models import NodeInfo

NODELET = resources.files("skyloom.activities").joinpath("nodelet.sh").read_text()

# How often a waiting read looks at the file again (a stat: cheap).
_WAIT_POLL_SECONDS = 0.05

# SkyPilot leaves these out of workdir syncs: git's ignores and its own.
IGNORE_FILES = (".gitignore", ".skyignore")


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    def check(self, what: str) -> CommandResult:
        if self.returncode != 0:
            raise RuntimeError(f"{what} failed ({self.returncode}): {self.stderr.strip()[-500:]}")
        return self


class Runner(ABC):
    """Reaches one node. Every method may be called again after a crash (idempotent)."""

    @abstractmethod
    def run(self, command: str, *, stdin: str | None = None, timeout: float = 60) -> CommandResult:
        """Run a shell command on the node and wait for it (bounded by timeout)."""

    @abstractmethod
    def put_file(self, path: str, content: str, mode: int = 0o644) -> None:
        """Write a whole file on the node (parents created), atomically."""

    @abstractmethod
    def read_file(
        self, path: str, offset: int = 0, *, wait_seconds: float = 0, limit: int | None = None
    ) -> bytes:
        """Bytes of a file from offset (at most `limit`); empty when it does not exist
        (yet). With wait_seconds, waits (on the node, in one command) up to that long for
        the file to grow past offset: a log follower's long poll."""

    @abstractmethod
    def sync_dir(self, source: str, target: str) -> None:
        """Copy a local directory's contents (leaving out ignored files), or one local
        file, to target on the node."""

    def nodelet(
        self, verb: str, directory: str, files: Mapping[str, tuple[str, int]] | None = None
    ) -> str:
        """Run a nodelet verb on the node, first writing `files` (path → content, mode)
        atomically, all in one command: on SSH every command costs the user's login shell
        start-up, so one round trip per step matters."""
        prelude = "".join(
            _write_file_script(path, content, mode)
            for path, (content, mode) in (files or {}).items()
        )
        res = self.run(
            f"bash -s -- {verb} {shlex.quote(directory)}", stdin=prelude + NODELET, timeout=30
        )
        res.check(f"nodelet {verb} {directory}")
        return res.stdout.strip()


def _write_file_script(path: str, content: str, mode: int) -> str:
    """Shell that writes one file atomically (temp + rename), content carried as base64."""
    data = base64.b64encode(content.encode()).decode()
    tmp = shlex.quote(f"{path}.tmp")
    return (
        f"mkdir -p {shlex.quote(os.path.dirname(path))} && "
        f"printf %s {data} | base64 -d > {tmp} && chmod {mode:o} {tmp} && "
        f"mv -f {tmp} {shlex.quote(path)} || exit 70\n"
    )


def write_env_file(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))


def rsync_filters(source: str) -> list[str]:
    """rsync options honouring .gitignore (per directory) and .skyignore (at the top)."""
    opts = ["--filter=:- .gitignore"]
    if (Path(source) / ".skyignore").exists():
        opts.append(f"--exclude-from={Path(source) / '.skyignore'}")
    opts += ["--exclude=.git/"]
    return opts


class LocalRunner(Runner):
    """A node that is a directory on this machine."""

    def __init__(self, node: NodeInfo) -> None:
        self.node = node

    def run(self, command: str, *, stdin: str | None = None, timeout: float = 60) -> CommandResult:
        p = subprocess.run(
            ["bash", "-c", command],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            # The job must not inherit the worker's session: killing the worker's group
            # must not kill jobs, and the nodelet detaches with setsid anyway.
            start_new_session=True,
        )
        return CommandResult(p.returncode, p.stdout, p.stderr)

    def put_file(self, path: str, content: str, mode: int = 0o644) -> None:
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(content)
        os.replace(tmp, target)

    def nodelet(
        self, verb: str, directory: str, files: Mapping[str, tuple[str, int]] | None = None
    ) -> str:
        # Files are written from here: no shell, base64 and mv per file on this machine.
        for path, (content, mode) in (files or {}).items():
            self.put_file(path, content, mode)
        return super().nodelet(verb, directory)

    def read_file(
        self, path: str, offset: int = 0, *, wait_seconds: float = 0, limit: int | None = None
    ) -> bytes:
        target = Path(path).expanduser()
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                with open(target, "rb") as f:
                    f.seek(offset)
                    data = f.read(-1 if limit is None else limit)
            except FileNotFoundError:
                data = b""
            if data or time.monotonic() >= deadline:
                return data
            time.sleep(min(_WAIT_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def sync_dir(self, source: str, target: str) -> None:
        src = Path(source).expanduser()
        dst = Path(target).expanduser()
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            return
        if not src.is_dir():
            raise FileNotFoundError(f"{source} does not exist")
        dst.mkdir(parents=True, exist_ok=True)
        if shutil.which("rsync"):
            cmd = ["rsync", "-a", *rsync_filters(str(src)), f"{src}/", f"{dst}/"]
            CommandResult(*_run(cmd)).check(f"rsync {src} → {dst}")
        else:
            _copy_with_ignores(src, dst)


def _run(cmd: list[str]) -> tuple[int, str, str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    return p.returncode, p.stdout, p.stderr


def _copy_with_ignores(src: Path, dst: Path) -> None:
    """Fallback without rsync: honours top-level .skyignore/.gitignore name patterns."""
    import fnmatch

    patterns = [".git"]
    for name in IGNORE_FILES:
        f = src / name
        if f.exists():
            patterns += [
                ln.strip().strip("/")
                for ln in f.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")
            ]

    def ignore(_dir: str, names: list[str]) -> set[str]:
        return {n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)}

    shutil.copytree(src, dst, ignore=ignore, dirs_exist_ok=True)
