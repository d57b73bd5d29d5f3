"""Real sshd hosts for tests and benches: Debian's openssh-server, started per test run.

Two ways to make a pool of hosts:
- `loopback`: several sshd on 127.0.0.1, each on its own high port (works without root);
- `netns` (root only): each sshd in its own network namespace behind a veth pair, so every
  host has an address of its own, as real machines do.

Every host accepts one generated user key (authorized_keys); host keys are generated too.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def sshd_missing_reason() -> str | None:
    """Why sshd hosts cannot exist here, or None when they can."""
    if not Path(SSHD).exists():
        return f"{SSHD} not found (apt-get install openssh-server; .ci/run does it as root)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen not found (openssh-client)"
    return None


def netns_missing_reason() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) not found"
    probe = f"sklprobe{uuid.uuid4().hex[:6]}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"cannot create a network namespace: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(ip: str, port: int, netns: str | None, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((ip, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd on {ip}:{port} (netns {netns}) did not come up")


def _spawn(cfg: Path, netns: str | None) -> subprocess.Popen[bytes]:
    cmd = [SSHD, "-D", "-f", str(cfg), "-E", str(cfg.with_suffix(".log"))]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    # No output pipes shared with the test runner; stop() ends the sessions too.
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class Host:
    ip: str
    port: int
    process: subprocess.Popen[bytes]
    config: Path
    netns: str | None = None
    veth: str | None = None

    def restart(self) -> None:
        """Bring a stopped host back, same address, port and keys."""
        if self.process.poll() is None:
            return
        self.process = _spawn(self.config, self.netns)
        _wait_port(self.ip, self.port, self.netns)

    def stop(self) -> None:
        """Stop this host's sshd and every open session (the host becomes unreachable).
        Jobs that detached from their session live on, as on a machine cut off."""
        for pid in [*_descendants(self.process.pid), self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def entry(self) -> dict[str, object]:
        return {"ip": self.ip, "port": self.port}


@dataclass
class SSHHosts:
    """A set of sshd hosts sharing one user key; `pool_yaml` describes them as a pool."""

    root: Path
    user: str = field(default_factory=getpass.getuser)
    hosts: list[Host] = field(default_factory=list)
    _n: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.user_key = self.root / "user_key"
        self.host_key = self.root / "host_key"
        for key in (self.user_key, self.host_key):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
                )
        self.authorized = self.root / "authorized_keys"
        self.authorized.write_text(Path(f"{self.user_key}.pub").read_text())
        self.authorized.chmod(0o600)
        if os.geteuid() == 0:
            # sshd refuses to start without its privilege separation directory.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    def _config(self, name: str, listen: str, port: int, path_env: str | None) -> Path:
        cfg = self.root / f"sshd_{name}.conf"
        lines = [
            f"Port {port}",
            f"ListenAddress {listen}",
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.authorized}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            f"PidFile {self.root}/sshd_{name}.pid",
            "MaxSessions 64",
            "MaxStartups 64:30:128",
        ]
        if path_env:
            lines.append(f"SetEnv PATH={path_env}")
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def _spawn(self, cfg: Path, name: str, netns: str | None) -> subprocess.Popen[bytes]:
        return _spawn(cfg, netns)

    def add_loopback(self, path_env: str | None = None) -> Host:
        self._n += 1
        port = free_port()
        name = f"lo{self._n}"
        cfg = self._config(name, "127.0.0.1", port, path_env)
        host = Host("127.0.0.1", port, self._spawn(cfg, name, None), cfg)
        self.hosts.append(host)
        _wait_port(host.ip, port, None)
        return host

    def add_netns(self, path_env: str | None = None) -> Host:
        """A host with its own network namespace and address (root only)."""
        self._n += 1
        tag = uuid.uuid4().hex[:5]
        ns, outer, inner = f"skl{tag}", f"skv{tag}", f"skp{tag}"
        # A /30 per host out of 10.213.0.0/16, chosen by the tag to avoid collisions.
        block = int(tag, 16) % 16000 * 4
        net = f"10.213.{block // 256}.{block % 256}"
        base = net.rsplit(".", 1)[0]
        last = block % 256
        outer_ip, inner_ip = f"{base}.{last + 1}", f"{base}.{last + 2}"
        for cmd in (
            ["ip", "netns", "add", ns],
            ["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
            ["ip", "link", "set", inner, "netns", ns],
            ["ip", "addr", "add", f"{outer_ip}/30", "dev", outer],
            ["ip", "link", "set", outer, "up"],
            ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{inner_ip}/30", "dev", inner],
            ["ip", "netns", "exec", ns, "ip", "link", "set", inner, "up"],
            ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True)
        name = f"ns{self._n}"
        cfg = self._config(name, inner_ip, 22, path_env)
        host = Host(inner_ip, 22, self._spawn(cfg, name, ns), cfg, netns=ns, veth=outer)
        self.hosts.append(host)
        _wait_port(inner_ip, 22, ns)
        return host

    def pool(self, hosts: list[Host] | None = None) -> dict[str, object]:
        return {
            "user": self.user,
            "identity_file": str(self.user_key),
            "hosts": [h.entry() for h in (hosts if hosts is not None else self.hosts)],
        }

    def close(self) -> None:
        for h in self.hosts:
            h.stop()
            if h.netns:
                subprocess.run(["ip", "netns", "del", h.netns], capture_output=True)
                if h.veth:
                    subprocess.run(["ip", "link", "del", h.veth], capture_output=True)
        self.hosts.clear()
