"""The SSH infra: existing machines of a node pool (`ssh/<pool>`), reached with fabric.

A host belongs to at most one cluster at a time. The claim lives on the host itself, as a
symlink `<node root>/claim → <cluster>.<uid>` (creating a symlink is atomic and carries
its owner; the uid tells a cluster from an older one of the same name), so two workers,
or a worker retrying after a crash, never hand a host out twice, and no database on our
side can disagree with the machines.

Each host's node root is `$HOME/.skyloom_node/<ip>_<port>`: two pool entries that are the
same machine (same home, different ports) still get separate job directories.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skyloom.activities.errors import ErrorKind, Where, provider_error
from skyloom.activities.models import (
    Capability,
    CheckResult,
    ClusterHandle,
    ClusterRef,
    NodeInfo,
    Offer,
    ProvisionInput,
    WatchedObservation,
)
from skyloom.activities.providers.base import KILL_ALL_JOBS, Provider, safe_name
from skyloom.activities.runners import CommandResult, Runner, rsync_filters
from skyloom.spec.loader import SpecError
from skyloom.spec.node_pools import POOLS_FILE, SSHHost, load_pools, pool_hosts
from temporalio.exceptions import ApplicationError

if TYPE_CHECKING:
    from fabric import Connection
    from skyloom.activities.providers.ssh_watch import HostWatches

CONNECT_TIMEOUT = 10
NODE_DIR = ".skyloom_node"

# One round trip that tells us everything launch needs about a host: its home, the
# cluster that holds it (if any), and its GPUs. Claiming is separate (it writes).
_PROBE = r"""
root="$HOME/{node_dir}/{key}"
echo "home=$HOME"
echo "owner=$(readlink "$root/claim" 2>/dev/null)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sed 's/^/gpu=/'
fi
true
"""
# A fresh claim clears what an earlier holder may have left (it is stale by definition).
_CLAIM = (
    "mkdir -p {root} && {{ if ln -s {owner} {root}/claim 2>/dev/null; then "
    "rm -rf {root}/jobs {root}/sky_workdir; fi; readlink {root}/claim; }}"
)
# Kill every job, remove job dirs and the workdir, then (last) give the host back.
_RELEASE = (
    KILL_ALL_JOBS + "; rm -rf {root}/jobs {root}/sky_workdir; "
    '[ "$(readlink {root}/claim)" = {owner} ] && rm -f {root}/claim && rmdir {root} 2>/dev/null; '
    "true"
)

# SkyPilot's accelerator names, most specific first, matched against nvidia-smi's names.
_GPU_NAMES = (
    "GH200", "H200", "H100", "B200", "A100", "A10G", "A10", "L40S", "L40", "L4", "T4",
    "V100", "P100", "P40", "P4", "K80", "A6000", "A5000", "A4000", "A40", "RTX6000",
    "RTX4090", "RTX3090",
)  # fmt: skip


def gpu_name(smi_name: str) -> str:
    """nvidia-smi's 'NVIDIA A100-SXM4-80GB' → SkyPilot's 'A100-80GB'."""
    compact = smi_name.upper().replace("NVIDIA", "").replace("GEFORCE", "").replace(" ", "")
    if "A100" in compact and "80GB" in compact:
        return "A100-80GB"
    for name in _GPU_NAMES:
        if name.removeprefix("RTX") in compact:
            return name
    return compact or smi_name


def gpus_fit(have: dict[str, int], want: dict[str, Any] | None) -> bool:
    if not want:
        return True
    lower = {k.lower(): v for k, v in have.items()}
    return all(lower.get(name.lower(), 0) >= (count or 1) for name, count in want.items())


# ---- connections ---------------------------------------------------------------------


class Connections:
    """Open SSH connections by host, shared by every thread of the process.

    Host keys: trust on first use, recorded in skyloom's own known_hosts; a changed key is
    refused (never retried) with the file to edit if the host was really rebuilt.
    """

    def __init__(self, known_hosts: Path, *, strict: bool = True) -> None:
        self.known_hosts = known_hosts
        # Not strict: any host key is accepted and nothing recorded (cloud VMs, whose
        # addresses are handed to new machines all the time, as SkyPilot does for them).
        self.strict = strict
        self._lock = threading.Lock()
        self._open: dict[str, Connection] = {}
        # One lock per host: connecting to a slow host must not hold up the others.
        self._host_locks: dict[str, threading.Lock] = {}

    def _host_lock(self, host: SSHHost) -> threading.Lock:
        with self._lock:
            return self._host_locks.setdefault(host.address, threading.Lock())

    def get(self, host: SSHHost) -> Connection:
        with self._host_lock(host):
            conn = self._open.get(host.address)
            if conn is not None and conn.is_connected:
                return conn
            conn = self._connect(host)
            with self._lock:
                self._open[host.address] = conn
            return conn

    def drop(self, host: SSHHost) -> None:
        with self._lock:
            conn = self._open.pop(host.address, None)
        if conn is not None:
            # Closing a broken connection may fail too; it is being dropped either way.
            with contextlib.suppress(Exception):
                conn.close()

    def close_all(self) -> None:
        with self._lock:
            conns, self._open = list(self._open.values()), {}
        for c in conns:
            c.close()

    def _connect(self, host: SSHHost) -> Connection:
        import paramiko
        from fabric import Config, Connection

        if host.identity_file and not Path(host.identity_file).exists():
            raise provider_error(
                ErrorKind.CREDENTIALS,
                f"ssh {host.address}: identity_file {host.identity_file} does not exist "
                f"(pool {host.pool!r} in {POOLS_FILE})",
            )
        kwargs: dict[str, Any] = {
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": CONNECT_TIMEOUT,
            "auth_timeout": CONNECT_TIMEOUT,
        }
        if host.identity_file:
            kwargs["key_filename"] = [host.identity_file]
        if host.password:
            kwargs["password"] = host.password
        # Only the user's ssh config when the pool asks for it (SkyPilot's use_ssh_config).
        config = Config() if host.use_ssh_config else Config(ssh_config=paramiko.SSHConfig())
        conn = Connection(
            host.ip,
            user=host.user,
            port=host.port,
            config=config,
            connect_timeout=CONNECT_TIMEOUT,
            connect_kwargs=kwargs,
        )
        if self.strict:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            self.known_hosts.touch(mode=0o600, exist_ok=True)
            # A known host offering another key raises BadHostKeyException; an unknown one
            # is trusted on first use and recorded.
            conn.client.get_host_keys().load(str(self.known_hosts))
            conn.client.set_missing_host_key_policy(_TrustOnFirstUse(self.known_hosts))
        else:
            conn.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            conn.open()
        except Exception as e:
            raise classify(e, host, self.known_hosts) from e
        transport = conn.client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        return conn


class _TrustOnFirstUse:
    """Records a new host's key in skyloom's known_hosts (merged under a lock, so hosts
    first met at the same time by different threads are all kept)."""

    _file_lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        import paramiko

        with self._file_lock:
            keys = paramiko.HostKeys()
            if self.path.exists():
                keys.load(str(self.path))
            keys.add(hostname, key.get_name(), key)
            keys.save(str(self.path))
        client.get_host_keys().add(hostname, key.get_name(), key)


def classify(err: BaseException, host: SSHHost, known_hosts: Path) -> ApplicationError:
    """An SSH failure as the workflow must see it: auth and host keys are final, the rest
    (refused, timed out, reset) is transient and retried."""
    import paramiko

    if isinstance(err, ApplicationError):
        return err
    if isinstance(err, paramiko.BadHostKeyException):
        return provider_error(
            ErrorKind.HOST_KEY,
            f"ssh {host.address}: host key mismatch: the host offered "
            f"{err.key.get_name()} {err.key.fingerprint}, but {known_hosts} records another. "
            f"If the host was rebuilt, delete its line from {known_hosts}.",
        )
    if isinstance(err, paramiko.AuthenticationException):
        how = f"key {host.identity_file}" if host.identity_file else "no identity_file"
        if host.password:
            how += " and a password"
        return provider_error(
            ErrorKind.CREDENTIALS,
            f"ssh {host.address}: authentication failed with {how} ({err}); check "
            f"user/identity_file of pool {host.pool!r} in {POOLS_FILE}",
        )
    if isinstance(err, paramiko.ssh_exception.PasswordRequiredException):
        return provider_error(
            ErrorKind.CREDENTIALS,
            f"ssh {host.address}: key {host.identity_file} is encrypted; give an unencrypted "
            "key or load it into an agent",
        )
    what = str(err) or type(err).__name__
    return provider_error(ErrorKind.UNREACHABLE, f"ssh {host.address}: unreachable: {what}")


# ---- the runner ----------------------------------------------------------------------


class SSHRunner(Runner):
    """Runs commands on one host over a shared fabric connection."""

    def __init__(self, host: SSHHost, conns: Connections) -> None:
        self.host = host
        self.conns = conns

    def _with_conn(self, fn: Any) -> Any:
        """fn(connection), reconnecting once: a cached connection may have died since
        (host rebooted, sshd restarted) without the host being unreachable now."""
        for attempt in (1, 2):
            conn = self.conns.get(self.host)
            try:
                return fn(conn)
            except (TimeoutError, OSError, EOFError) as e:
                self.conns.drop(self.host)
                if attempt == 2:
                    raise classify(e, self.host, self.conns.known_hosts) from e
            except Exception as e:
                import paramiko

                if isinstance(e, paramiko.SSHException):
                    self.conns.drop(self.host)
                    if attempt == 2:
                        raise classify(e, self.host, self.conns.known_hosts) from e
                else:
                    raise
        raise AssertionError("unreachable")

    def _exec(self, command: str, stdin: str | None, timeout: float) -> tuple[int, bytes, bytes]:
        # One channel on the host's open transport: a few ms, where invoke's runner (with
        # its I/O threads and polling sleeps) takes over 100 ms per command.
        def go(conn: Connection) -> tuple[int, bytes, bytes]:
            transport = conn.client.get_transport()
            if transport is None or not transport.is_active():
                raise EOFError("ssh transport closed")
            chan = transport.open_session(timeout=CONNECT_TIMEOUT)
            try:
                chan.settimeout(timeout)
                chan.exec_command(command)
                if stdin:
                    chan.sendall(stdin.encode())
                chan.shutdown_write()
                try:
                    # stdout first, then stderr: the commands skyloom runs write little to
                    # stderr, far below the channel window that could make this block.
                    out = chan.makefile("rb").read()
                    err = chan.makefile_stderr("rb").read()
                except TimeoutError:
                    return 124, b"", f"timed out after {timeout}s: {command[:80]}".encode()
                code = chan.recv_exit_status()
                if code == -1:
                    # No exit status: the connection went away under the command.
                    raise EOFError("ssh channel closed before the command's exit status")
            finally:
                chan.close()
            return code, out, err

        result: tuple[int, bytes, bytes] = self._with_conn(go)
        return result

    def run(self, command: str, *, stdin: str | None = None, timeout: float = 60) -> CommandResult:
        code, out, err = self._exec(command, stdin, timeout)
        return CommandResult(code, out.decode(errors="replace"), err.decode(errors="replace"))

    def put_file(self, path: str, content: str, mode: int = 0o644) -> None:
        parent, name = path.rsplit("/", 1)
        tmp = f"{parent}/.{name}.tmp"
        self.run(
            f"mkdir -p {shlex.quote(parent)} && cat > {shlex.quote(tmp)} && "
            f"chmod {mode:o} {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} {shlex.quote(path)}",
            stdin=content,
        ).check(f"write {path} on {self.host.address}")

    def read_file(
        self, path: str, offset: int = 0, *, wait_seconds: float = 0, limit: int | None = None
    ) -> bytes:
        # A command, not SFTP: hosts without the sftp subsystem are common. A waiting read
        # waits on the host, so a follower costs one login per burst of output.
        q = shlex.quote(path)
        wait = max(0, int(wait_seconds * 10))
        head = f" | head -c {int(limit)}" if limit is not None else ""
        script = (
            f'n={wait}; while [ $n -gt 0 ] && [ "$(wc -c < {q} 2>/dev/null || echo 0)" '
            f"-le {int(offset)} ]; do sleep 0.1; n=$((n-1)); done; "
            f"[ -f {q} ] && tail -c +{int(offset) + 1} {q}{head}"
        )
        code, out, _ = self._exec(script, None, 60 + wait_seconds)
        return out if code == 0 else b""

    def sync_dir(self, source: str, target: str) -> None:
        """rsync over ssh with this host's port, user, key and skyloom's known_hosts."""
        src = Path(source).expanduser()
        if not src.exists():
            raise FileNotFoundError(f"{source} does not exist")
        if shutil.which("rsync") is None:
            raise provider_error(
                ErrorKind.NODE_SETUP, "rsync is not installed on the worker machine; install it"
            )
        if self.host.password and not self.host.identity_file:
            raise provider_error(
                ErrorKind.CREDENTIALS,
                f"ssh {self.host.address}: file sync runs rsync over ssh, which needs a key; "
                f"set identity_file for pool {self.host.pool!r}",
            )
        self.ensure_rsync()
        remote = _remote_path(target)
        parent = remote if src.is_dir() else remote.rsplit("/", 1)[0] or "/"
        self.run(f"mkdir -p {parent}").check(f"mkdir {target} on {self.host.address}")
        ssh = [
            "ssh", "-p", str(self.host.port), "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
            "-o", f"UserKnownHostsFile={self.conns.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
        ]  # fmt: skip
        if self.host.identity_file:
            ssh += ["-i", self.host.identity_file, "-o", "IdentitiesOnly=yes"]
        if not self.host.use_ssh_config:
            ssh += ["-F", "/dev/null"]
        dest = f"{self.host.user}@{_bracket(self.host.ip)}:{_rsync_remote(target)}"
        if src.is_dir():
            cmd = ["rsync", "-a", "--delete", *rsync_filters(str(src)), f"{src}/", f"{dest}/"]
        else:
            cmd = ["rsync", "-a", str(src), dest]
        # Make sure skyloom's known_hosts has the key before ssh checks it strictly.
        self.conns.get(self.host)
        p = subprocess.run(
            cmd,
            env=_rsync_env(" ".join(shlex.quote(x) for x in ssh)),
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if p.returncode == 0:
            return
        err = p.stderr.strip()[-500:]
        if p.returncode == 255 or "Connection" in err or "connect" in err:
            if "Permission denied" in err:
                raise provider_error(ErrorKind.CREDENTIALS, f"rsync to {self.host.address}: {err}")
            if "Host key verification failed" in err:
                raise provider_error(ErrorKind.HOST_KEY, f"rsync to {self.host.address}: {err}")
            raise provider_error(ErrorKind.UNREACHABLE, f"rsync to {self.host.address}: {err}")
        raise RuntimeError(f"rsync {src} → {self.host.address}:{target} failed: {err}")

    def ensure_rsync(self) -> None:
        script = (
            "command -v rsync >/dev/null && exit 0; "
            "if command -v apt-get >/dev/null; then "
            "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync "
            "|| { sudo -n apt-get update -qq && "
            "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync; }; "
            "elif command -v dnf >/dev/null; then sudo -n dnf install -y -q rsync; "
            "elif command -v yum >/dev/null; then sudo -n yum install -y -q rsync; "
            "elif command -v apk >/dev/null; then sudo -n apk add -q rsync; fi; "
            "command -v rsync >/dev/null"
        )
        res = self.run(script, timeout=600)
        if res.returncode != 0:
            raise provider_error(
                ErrorKind.NODE_SETUP,
                f"rsync is not installed on {self.host.address} and could not be installed "
                f"(needs passwordless sudo and a package manager): install rsync there. "
                f"{res.stderr.strip()[-200:]}",
            )


def _bracket(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _remote_path(path: str) -> str:
    """A shell word for a node path: `~/x` stays relative to the remote home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _rsync_remote(path: str) -> str:
    # rsync hands the remote path to the remote shell; a leading ~/ expands there.
    return path if path.startswith("~") else shlex.quote(path)


def _rsync_env(ssh_command: str) -> dict[str, str]:
    import os

    return {**os.environ, "RSYNC_RSH": ssh_command}


# ---- the provider --------------------------------------------------------------------


@dataclass
class _Probe:
    host: SSHHost
    home: str = ""
    owner: str = ""
    gpus: dict[str, int] = field(default_factory=dict)
    error: ApplicationError | None = None

    @property
    def root(self) -> str:
        return f"{self.home}/{NODE_DIR}/{self.host.key}"

    def describe(self) -> str:
        if self.error is not None:
            why = self.error.message.removeprefix(f"ssh {self.host.address}: ")
            return f"{self.host.address}: {why}"
        gpus = ", ".join(f"{n}:{c}" for n, c in self.gpus.items()) or "no GPU"
        held = f", held by {self.owner!r}" if self.owner else ", free"
        return f"{self.host.address}: {gpus}{held}"


class SSHProvider(Provider):
    name = "ssh"
    # No spot (the hosts are the user's), no ports to open (their network decides).
    capabilities = frozenset({Capability.STOP, Capability.MULTI_NODE, Capability.WATCH})

    def __init__(self, home: Path, *, unreachable_grace: float = 60.0) -> None:
        self.pools_file = home / POOLS_FILE
        self.conns = Connections(home / "ssh" / "known_hosts")
        # A watched node unreachable for this long fails its phase.
        self.unreachable_grace = unreachable_grace
        # Started by the first sweep: only the worker that runs the watcher holds them.
        self.watches: HostWatches | None = None

    def close(self) -> None:
        if self.watches is not None:
            self.watches.close()
        self.conns.close_all()

    # -- helpers

    def _pool(self, infra: str) -> tuple[str, list[SSHHost]]:
        _, _, pool = infra.partition("/")
        if not pool:
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"infra {infra!r}: name the pool, as ssh/<pool>",
                where=Where(infra=infra, field="resources.infra"),
            )
        try:
            return pool, pool_hosts(self.pools_file, pool)
        except SpecError as e:
            raise provider_error(
                ErrorKind.INVALID_SPEC, str(e), where=Where(infra=infra, field="resources.infra")
            ) from None

    def _host_of(self, node: NodeInfo) -> SSHHost:
        pool, _, key = node.node_id.partition("/")
        try:
            for h in load_pools(self.pools_file).get(pool, []):
                if h.key == key:
                    return h
        except SpecError:
            pass
        # The pool file changed since launch: the handle still says how to connect.
        return SSHHost(
            pool=pool,
            ip=node.ip,
            port=node.ssh_port,
            user=node.ssh_user or "root",
            identity_file=node.identity_file,
        )

    def _probe(self, host: SSHHost) -> _Probe:
        probe = _Probe(host)
        try:
            res = SSHRunner(host, self.conns).run(
                _PROBE.format(node_dir=NODE_DIR, key=host.key), timeout=30
            )
        except ApplicationError as e:
            probe.error = e
            return probe
        for line in res.stdout.splitlines():
            k, _, v = line.partition("=")
            if k == "home":
                probe.home = v.strip()
            elif k == "owner":
                probe.owner = v.strip()
            elif k == "gpu" and v.strip():
                name = gpu_name(v.strip())
                probe.gpus[name] = probe.gpus.get(name, 0) + 1
        if not probe.home:
            probe.error = provider_error(
                ErrorKind.UNREACHABLE, f"ssh {host.address}: no answer to probe: {res.stderr}"
            )
        return probe

    def _probe_all(self, hosts: list[SSHHost]) -> list[_Probe]:
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(hosts)))) as pool:
            return list(pool.map(self._probe, hosts))

    def _claim(self, probe: _Probe, owner: str) -> bool:
        res = SSHRunner(probe.host, self.conns).run(
            _CLAIM.format(root=shlex.quote(probe.root), owner=shlex.quote(owner))
        )
        res.check(f"claim {probe.host.address}")
        probe.owner = res.stdout.strip()
        return probe.owner == owner

    def _node(self, rank: int, probe: _Probe) -> NodeInfo:
        h = probe.host
        return NodeInfo(
            rank=rank,
            node_id=f"{h.pool}/{h.key}",
            ip=h.ip,
            root=probe.root,
            ssh_user=h.user,
            ssh_port=h.port,
            identity_file=h.identity_file,
            gpus=probe.gpus,
        )

    # -- the interface

    def offers(self, infra: str, resources: dict[str, Any], num_nodes: int) -> list[Offer]:
        """The pool's hosts that could hold the cluster, probed now (GPUs are read on the
        host). A pool that can never hold it (unknown, too small, no such GPUs, spot) is
        refused here, before anything is claimed."""
        pool, hosts = self._pool(infra)
        self._refuse_never_possible(infra, resources, num_nodes, pool, hosts)
        want = resources.get("accelerators") or None
        probes = self._probe_all(hosts)
        down = [p for p in probes if p.error is not None]
        fit = [p for p in probes if p.error is None and gpus_fit(p.gpus, want)]
        if want and len(fit) + len(down) < num_nodes:
            asked = ", ".join(f"{n}:{c or 1:g}" for n, c in want.items())
            report = "\n  ".join(p.describe() for p in probes)
            raise provider_error(
                ErrorKind.NO_CAPACITY,
                f"pool {pool!r} has {len(fit)} host(s) with {asked}; the task needs "
                f"{num_nodes}:\n  {report}",
                where=Where(infra=infra, field="resources.accelerators"),
            )
        # What every fitting host has: the least a node of this offer is sure to get.
        common = set.intersection(*(set(p.gpus) for p in fit)) if fit else set()
        gpus = {name: float(min(p.gpus[name] for p in fit)) for name in sorted(common)}
        return [
            Offer(
                infra=infra,
                accelerators=gpus,
                max_nodes=len(hosts),
                capabilities=sorted(self.capabilities),
            )
        ]

    def _refuse_never_possible(
        self, infra: str, resources: dict[str, Any], num_nodes: int, pool: str, hosts: list
    ) -> None:
        """What this pool can never give, whatever its hosts' state (no probe needed)."""
        if num_nodes > len(hosts):
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"{num_nodes} nodes asked, SSH node pool {pool!r} has {len(hosts)} host(s) "
                f"({self.pools_file})",
                where=Where(infra=infra, field="num_nodes"),
            )
        if resources.get("use_spot"):
            raise provider_error(
                ErrorKind.NO_CAPACITY,
                "SSH node pools have no spot nodes",
                where=Where(infra=infra, field="resources.use_spot"),
            )

    def create(self, req: ProvisionInput) -> ClusterHandle:
        safe_name(req.cluster)
        pool, hosts = self._pool(req.infra)
        self._refuse_never_possible(req.infra, req.resources, req.num_nodes, pool, hosts)
        owner = req.owner or req.cluster
        want = req.resources.get("accelerators") or None
        probes = self._probe_all(hosts)
        report = "\n  ".join(p.describe() for p in probes)
        down = [p for p in probes if p.error is not None]
        fit = [p for p in probes if p.error is None and gpus_fit(p.gpus, want)]
        if want and len(fit) + len(down) < req.num_nodes:
            # Refused before anything is claimed: the pool cannot ever hold this task.
            asked = ", ".join(f"{n}:{c or 1}" for n, c in want.items())
            raise provider_error(
                ErrorKind.NO_CAPACITY,
                f"pool {pool!r} has {len(fit)} host(s) with {asked}; the task needs "
                f"{req.num_nodes}:\n  {report}",
                where=Where(infra=req.infra, field="resources.accelerators"),
            )
        mine = [p for p in fit if p.owner == owner]
        free = [p for p in fit if not p.owner]
        if len(mine) + len(free) >= req.num_nodes:
            self._claim_more(mine, free, req)
        mine.sort(key=lambda p: hosts.index(p.host))
        for extra in mine[req.num_nodes :]:
            self._release(extra, owner)
        mine = mine[: req.num_nodes]
        if len(mine) < req.num_nodes:
            # Nothing half-claimed stays behind; a retry starts over.
            for p in mine:
                self._release(p, owner)
            # Hosts that may come back make it worth retrying; a bad key or host key on
            # the hosts we lacked is reported as such; otherwise the pool is full.
            errors = [p.error for p in down if p.error is not None]
            transient = [e for e in errors if not e.non_retryable]
            kind = ErrorKind.NO_CAPACITY
            if transient:
                kind = ErrorKind.UNREACHABLE
            elif errors:
                kind = ErrorKind(str(errors[0].type))
            raise provider_error(
                kind,
                f"pool {pool!r}: {len(mine)} of {req.num_nodes} host(s) available for "
                f"cluster {req.cluster!r}:\n  {report}",
                where=Where(infra=req.infra),
            )
        return ClusterHandle(
            cluster=req.cluster,
            infra=req.infra,
            owner=owner,
            nodes=[self._node(rank, p) for rank, p in enumerate(mine)],
            capabilities=sorted(self.capabilities),
        )

    def _claim_more(self, mine: list[_Probe], free: list[_Probe], req: ProvisionInput) -> None:
        """Claim free hosts in pool order until the cluster has enough (another cluster
        may win a host between our probe and our claim: then the next one is tried)."""
        owner = req.owner or req.cluster
        for p in free:
            if len(mine) >= req.num_nodes:
                break
            if self._claim(p, owner):
                mine.append(p)

    def _release(self, probe: _Probe, owner: str) -> None:
        SSHRunner(probe.host, self.conns).run(
            _RELEASE.format(root=shlex.quote(probe.root), owner=shlex.quote(owner)), timeout=60
        ).check(f"release {probe.host.address}")

    def terminate(self, ref: ClusterRef) -> None:
        _, hosts = self._pool(ref.infra)
        ours = {n.node_id for n in ref.handle.nodes} if ref.handle else set()
        errors = []
        for p in self._probe_all(hosts):
            if p.error is not None:
                # A host we hold must be released; one we never had can be skipped (a
                # crashed launch cannot have claimed a host it could not reach).
                if f"{p.host.pool}/{p.host.key}" in ours:
                    errors.append(p.error)
                continue
            if p.owner == (ref.owner or ref.cluster):
                self._release(p, ref.owner or ref.cluster)
        if errors:
            raise errors[0]

    def runner(self, node: NodeInfo) -> Runner:
        return SSHRunner(self._host_of(node), self.conns)

    def stop(self, handle: ClusterHandle) -> None:
        """Kill every job; the hosts stay claimed by the cluster."""
        for node in handle.nodes:
            self.runner(node).run(KILL_ALL_JOBS.format(root=shlex.quote(node.root)), timeout=30)

    def start(self, handle: ClusterHandle) -> ClusterHandle:
        for node in handle.nodes:
            host = self._host_of(node)
            p = self._probe(host)
            if p.error is not None:
                raise p.error
            if p.owner != (handle.owner or handle.cluster):
                raise provider_error(
                    ErrorKind.NO_CAPACITY,
                    f"{host.address} is no longer held by cluster {handle.cluster!r} "
                    f"(owner: {p.owner or 'none'})",
                )
        return handle

    def sweep(self, key: str) -> list[WatchedObservation]:
        """Every ended watched phase on every host of every pool, from one long-lived
        channel per host (ssh_watch.py: the user's shell init runs once per connection,
        not once per look). A host cut off for longer than the grace reports its running
        phases unreachable. SSH hosts are not spot: nothing is ever preempted here."""
        watches = self._watches()
        try:
            pools = load_pools(self.pools_file)
        except SpecError:
            # The file is being edited: keep watching what was watched.
            return watches.observations()
        watches.sync(h for hs in pools.values() for h in hs)
        return watches.observations()

    def _watches(self) -> HostWatches:
        if self.watches is None:
            # Imported here: ssh_watch builds on this module's connections.
            from skyloom.activities.providers.ssh_watch import HostWatches

            self.watches = HostWatches(self.conns, grace=self.unreachable_grace)
        return self.watches

    def check(self) -> list[CheckResult]:
        caps = sorted(self.capabilities)
        try:
            pools = load_pools(self.pools_file)
        except SpecError as e:
            return [CheckResult(infra="ssh", enabled=False, reason=str(e))]
        if not pools:
            return [
                CheckResult(infra="ssh", enabled=False, reason=f"no pools in {self.pools_file}")
            ]
        out = []
        for pool, hosts in pools.items():
            probes = self._probe_all(hosts)
            ok = [p for p in probes if p.error is None]
            out.append(
                CheckResult(
                    infra=f"ssh/{pool}",
                    enabled=bool(ok),
                    reason=f"{len(ok)}/{len(probes)} hosts reachable",
                    details=[p.describe() for p in probes],
                    capabilities=caps,
                )
            )
        return out
