"""Real sshd hosts for tests and benches: Debian's openssh-server, started per test run.

Two ways to make a pool of hosts:
- `loopback`: several sshd on 127.0.0.1, each on its own high port (works without root);
- `netns` (root only): each sshd in its own network namespace behind a veth pair, so every
  host has an address of its own, as real machines do.

Every host accepts one generated user key (authorized_keys); host keys are generated too.
As root (as in CI), hosts are logged into as a dedicated test user with a clean home
(`login_user`), never as root: root's dotfiles (pyenv, cargo, ...) would run on every SSH
command and could be left locked by a session cut off mid-start-up. Files a job must read
or write belong in a `user_dir`, which that user can reach (pytest's tmp_path cannot).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
# The user SSH test hosts log in as when the tests run as root; its home stays empty.
TEST_USER = "skyloom-test"
# Where per-test directories reachable by that user are made (root's tmp_path is 0700).
SHARED_BASE = Path(tempfile.gettempdir()) / f"skyloom-tests-{os.geteuid()}"


def login_user() -> str:
    """Who SSH test hosts log in as: as root, the dedicated TEST_USER (created on first
    use, with an empty home: no rc files, so a login runs no pyenv/conda/modules init);
    otherwise the current user, who cannot create users."""
    if os.geteuid() != 0:
        return getpass.getuser()
    with contextlib.suppress(KeyError):
        pwd.getpwnam(TEST_USER)
        # Made locked ("!", useradd's default) by someone else: sshd would refuse it.
        shadow = Path("/etc/shadow").read_text().splitlines()
        if any(line.startswith(f"{TEST_USER}:!") for line in shadow):
            subprocess.run(["usermod", "--password", "*", TEST_USER], check=True)
        return TEST_USER
    empty = tempfile.mkdtemp(prefix="skyloom-skel-")
    try:
        # --password '*': no password can log in, yet the account is not locked (sshd
        # without PAM refuses locked accounts, keys included).
        add = ["useradd", "--create-home", "--skel", empty, "--shell", "/bin/bash"]
        p = subprocess.run([*add, "--password", "*", TEST_USER], capture_output=True, text=True)
    finally:
        os.rmdir(empty)
    if p.returncode != 0:
        # Another test run may have created it at the same time.
        try:
            pwd.getpwnam(TEST_USER)
        except KeyError:
            raise RuntimeError(f"cannot create the SSH test user {TEST_USER}: {p.stderr}") from None
    return TEST_USER


def user_home(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir)


def _shared_base() -> Path:
    """A directory every user can traverse (not list), made by us: per-use dirs go under it."""
    SHARED_BASE.mkdir(mode=0o711, exist_ok=True)
    st = SHARED_BASE.lstat()
    if st.st_uid != os.geteuid() or not SHARED_BASE.is_dir() or SHARED_BASE.is_symlink():
        raise RuntimeError(f"{SHARED_BASE} exists and is not ours; remove it")
    SHARED_BASE.chmod(0o711)
    return SHARED_BASE


def user_dir(user: str, prefix: str = "t-") -> Path:
    """A fresh directory `user` owns and can write, readable by everyone (root asserts on
    its contents; the tests' own tmp_path is out of the SSH test user's reach)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=_shared_base()))
    pw = pwd.getpwnam(user)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    d.chmod(0o755)
    return d


def give_to(user: str, *paths: Path) -> None:
    """Hand files root made for a host (node dirs, markers) to the SSH user, recursively."""
    pw = pwd.getpwnam(user)
    for top in paths:
        os.lchown(top, pw.pw_uid, pw.pw_gid)
        for parent, dirs, files in os.walk(top):  # symlinks are not followed
            for name in dirs + files:
                os.lchown(os.path.join(parent, name), pw.pw_uid, pw.pw_gid)


def sshd_missing_reason() -> str | None:
    """Why sshd hosts cannot exist here, or None when they can."""
    if not Path(SSHD).exists():
        return f"{SSHD} not found (apt-get install openssh-server; .ci/run does it as root)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen not found (openssh-client)"
    return None


# Marks tests (or, as pytestmark, modules) that need real sshd hosts; CI makes them run
# (SKYLOOM_REQUIRE_SSHD=1 in tests/conftest.py turns a missing sshd into an error).
needs_sshd = pytest.mark.skipif(
    sshd_missing_reason() is not None, reason=str(sshd_missing_reason())
)


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
        Jobs that detached from their session live on, as on a machine cut off.

        Only sshd processes are killed: a session's shell, cut off, ends by itself. Killing
        it mid-start-up can leave its rc files' locks behind (a login shell that runs
        `pyenv init` leaves ~/.pyenv/shims/.pyenv-shim, and every later SSH command of
        the user then hangs 60 s on it)."""
        for pid in [*_descendants(self.process.pid), self.process.pid]:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                    os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def entry(self) -> dict[str, object]:
        return {"ip": self.ip, "port": self.port}


@dataclass
class SSHHosts:
    """A set of sshd hosts sharing one user key; `pool_yaml` describes them as a pool."""

    root: Path
    user: str = field(default_factory=login_user)
    hosts: list[Host] = field(default_factory=list)
    _n: int = 0
    _dirs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.user_key = self.root / "user_key"
        self.host_key = self.root / "host_key"
        for key in (self.user_key, self.host_key):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
                )
        # sshd reads authorized keys as the user logging in: the file lives where that
        # user can read it (a public key is no secret).
        self.authorized = self.user_dir("sshd-") / "authorized_keys"
        self.authorized.write_text(Path(f"{self.user_key}.pub").read_text())
        self.authorized.chmod(0o644)
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
            "PermitRootLogin no",  # test logins never run root's dotfiles
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

    def add_every_loopback(self) -> Host:
        """One sshd answering on every 127.x address (it listens on all of them): it plays
        every instance of a fake cloud that hands out loopback addresses."""
        self._n += 1
        port = free_port()
        name = f"any{self._n}"
        cfg = self._config(name, "0.0.0.0", port, None)
        host = Host("127.0.0.1", port, self._spawn(cfg, name, None), cfg)
        self.hosts.append(host)
        _wait_port(host.ip, port, None)
        return host

    def authorize(self, public_key: str) -> None:
        """Let another key log in too (a provider's own key)."""
        with self.authorized.open("a") as f:
            f.write(public_key.strip() + "\n")

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

    @property
    def home(self) -> Path:
        """The SSH user's home: where hosts keep their node directories."""
        return user_home(self.user)

    def user_dir(self, prefix: str = "t-") -> Path:
        """A directory the SSH user can write (removed by close)."""
        d = user_dir(self.user, prefix)
        self._dirs.append(d)
        return d

    def give(self, *paths: Path) -> None:
        give_to(self.user, *paths)

    def node_root(self, ip: str, port: int) -> Path:
        """Where the host at ip:port keeps its node directory (`~/.skyloom_node/<ip>_<port>`
        of the SSH user). Its parent is made here, as the SSH user's, so that files a test
        puts there as root never leave the user unable to make node directories."""
        parent = self.home / ".skyloom_node"
        if not parent.exists():
            parent.mkdir(mode=0o755, exist_ok=True)
            give_to(self.user, parent)
        return parent / f"{ip}_{port}"

    def logins(self, host: Host) -> int:
        """Logins this host's sshd has accepted so far (its -E log)."""
        log = host.config.with_suffix(".log")
        return log.read_text().count("Accepted publickey") if log.exists() else 0

    def close(self) -> None:
        """Stop every host and remove what they leave: node directories, shared dirs."""
        for h in self.hosts:
            h.stop()
            shutil.rmtree(self.node_root(h.ip, h.port), ignore_errors=True)
            if h.netns:
                subprocess.run(["ip", "netns", "del", h.netns], capture_output=True)
                if h.veth:
                    subprocess.run(["ip", "link", "del", h.veth], capture_output=True)
        self.hosts.clear()
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._dirs.clear()
