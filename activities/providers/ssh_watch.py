"""Watching the jobs of SSH hosts through one long-lived channel per host.

Each watched host runs a small bash loop (`_LOOP`) in one session channel of the host's
shared connection. Every second it looks at every watched phase under the host's node
root with shell builtins only (no process per phase: hosts keep hundreds of finished job
directories), and prints a full snapshot of them when something changed, a heartbeat
otherwise. The user's login shell (and whatever its rc files run: conda, pyenv, modules)
starts once per channel, not once per look.

The loop ends by itself when its channel goes away: its stdin is the channel, which never
sends anything, so the one-second pause (`read -t 1`) doubles as an end-of-file check, and
a write to a closed channel kills it (SIGPIPE) or fails (then it exits). No loop is left
behind on a host.

One thread per host reads its channel: paramiko channels block, connecting to a slow host
takes up to CONNECT_TIMEOUT, and paramiko already runs one thread per connection, so a
reader thread per host keeps each host's failures and back-off its own at a small cost.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from skyloom.activities.models import Observation, Phase, PhaseState, WatchedObservation
from skyloom.activities.providers.ssh import CONNECT_TIMEOUT, NODE_DIR, Connections, classify
from skyloom.spec.node_pools import SSHHost
from temporalio.exceptions import ApplicationError

if TYPE_CHECKING:
    from paramiko import Channel

log = logging.getLogger("skyloom.ssh.watch")

# The loop prints a heartbeat after this many quiet rounds (~1 s each).
HEARTBEAT_ROUNDS = 2
# A channel that said nothing for this long (three heartbeats and a round) is dead.
SILENCE_SECONDS = 3 * HEARTBEAT_ROUNDS + 1.0
# Reconnecting waits 1 s, then doubles up to this.
MAX_BACKOFF = 10.0
# How often a reader wakes up to check for silence and for being stopped.
_TICK = 0.5
_MAX_LINE = 1 << 16
# Marks the loop's processes (`bash -c LOOP skyloom-watch <node dir>`): ps shows it.
LOOP_NAME = "skyloom-watch"

# $1: the node directory's name under ~/.skyloom_node, $2: rounds between heartbeats.
# A zombie answers kill -0: its state in /proc says it is gone (where /proc exists).
# Snapshot lines: "<workflow> <cluster> <rank> <owner> <job> <phase> <state> [code]" (owner
# "-" when the watch file names none), state one of
# starting, running, exited (with its code), killed. Ended phases are final: remembered
# (line_of) and not read again; a recreated jobs directory (a new claim) forgets them all,
# noticed by holding the old one open and comparing inodes.
_LOOP = r"""
root="$HOME/__NODE_DIR__/$1"; beat=$2
shopt -s nullglob
declare -A line_of=() at_of=()
prev=- quiet=0 jobs_fd=
while :; do
  if [[ -n $jobs_fd ]] && ! [[ /dev/fd/$jobs_fd -ef $root/jobs ]]; then
    exec {jobs_fd}<&-; jobs_fd=; line_of=(); at_of=()
  fi
  if [[ -z $jobs_fd && -d $root/jobs ]]; then { exec {jobs_fd}<"$root/jobs"; } 2>/dev/null; fi
  snap=
  for w in "$root"/jobs/*/*/watch; do
    d=${w%/watch}
    line=${line_of[$d]-}
    if [[ -z $line ]]; then
      at=${at_of[$d]-}
      if [[ -z $at ]]; then
        wid= cluster= rank= owner=
        { read -r wid; read -r cluster; read -r rank; read -r owner; } 2>/dev/null <"$w"
        [[ -n $rank ]] || continue
        j=${d%/*}
        at="$wid $cluster $rank ${owner:--} ${j##*/} ${d##*/}"; at_of[$d]=$at
      fi
      code= pid=
      if [[ -f $d/exit_code ]]; then
        read -r code 2>/dev/null <"$d/exit_code"; line="$at exited $code"; line_of[$d]=$line
      elif [[ -f $d/pid ]]; then
        read -r pid 2>/dev/null <"$d/pid"
        stat=
        if [[ ! $pid =~ ^[0-9]+$ ]]; then line="$at starting"
        elif kill -0 "$pid" 2>/dev/null && {
          read -r stat 2>/dev/null </proc/"$pid"/stat; [[ ${stat##*) } != Z* ]]; }; then
          line="$at running"
        elif [[ -f $d/exit_code ]]; then
          read -r code 2>/dev/null <"$d/exit_code"; line="$at exited $code"; line_of[$d]=$line
        else line="$at killed"; line_of[$d]=$line
        fi
      else line="$at starting"
      fi
    fi
    snap+=$line$'\n'
  done
  if [[ $snap != "$prev" ]]; then
    printf '@snap\n%s@end\n' "$snap" || exit 0
    prev=$snap quiet=0
  elif (( ++quiet >= beat )); then
    printf '@beat\n' || exit 0
    quiet=0
  fi
  read -r -t 1 nothing; (( $? > 128 )) || exit 0
done
""".replace("__NODE_DIR__", NODE_DIR)


def loop_command(host: SSHHost) -> str:
    """What the channel runs: bash itself, whatever the user's login shell is."""
    return shlex.join(["exec", "bash", "-c", _LOOP, LOOP_NAME, host.key, str(HEARTBEAT_ROUNDS)])


@dataclass(frozen=True)
class WatchedPhase:
    """One line of a host's snapshot."""

    workflow_id: str
    cluster: str
    rank: int
    owner: str | None
    job_id: int
    phase: Phase
    state: PhaseState
    exit_code: int | None = None

    @classmethod
    def parse(cls, line: str) -> WatchedPhase | None:
        parts = line.split()
        if len(parts) < 7:
            return None
        wid, cluster, rank, owner, job, phase, state = parts[:7]
        try:
            code = int(parts[7]) if state == PhaseState.EXITED and len(parts) > 7 else None
            return cls(
                wid,
                cluster,
                int(rank),
                None if owner == "-" else owner,
                int(job),
                Phase(phase),
                PhaseState(state),
                code,
            )
        except ValueError:
            return None

    @property
    def ended(self) -> bool:
        return self.state in (PhaseState.EXITED, PhaseState.KILLED)

    def observation(self, state: PhaseState, reason: str | None = None) -> WatchedObservation:
        obs = Observation(
            cluster=self.cluster,
            rank=self.rank,
            state=state,
            job_id=self.job_id,
            phase=self.phase,
            exit_code=self.exit_code if state == PhaseState.EXITED else None,
            reason=reason,
            owner=self.owner,
        )
        return WatchedObservation(workflow_id=self.workflow_id, observation=obs)


class _Lost(Exception):
    """The channel ended or went quiet; the message says how."""


class _HostWatch:
    """One host's channel, its reader thread, and the last snapshot the host sent."""

    def __init__(self, host: SSHHost, conns: Connections, clock: Callable[[], float]) -> None:
        self.host = host
        self.conns = conns
        self.clock = clock
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._chan: Channel | None = None
        # What the reader saw, read by other threads under the lock.
        self.snapshot: tuple[WatchedPhase, ...] | None = None
        self.live = False
        self.error: str | None = None
        self.down_since: float = clock()
        # When the current channel sent its first snapshot (reader thread only).
        self._live_since: float | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"ssh-watch {host.address}", daemon=True
        )
        self._thread.start()

    # -- read by HostWatches

    def state(self) -> tuple[tuple[WatchedPhase, ...] | None, bool, str | None, float]:
        with self._lock:
            return self.snapshot, self.live, self.error, self.down_since

    def stop(self) -> None:
        """Stop at once without waiting: closing the channel wakes the reader and ends the
        loop on the host (its stdin reaches end of file)."""
        with self._lock:
            self._stopped.set()
            chan, self._chan = self._chan, None
        if chan is not None:
            with contextlib.suppress(Exception):
                chan.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # -- the reader thread

    def _run(self) -> None:
        delay = 0.0
        while not self._stopped.is_set():
            if delay and self._stopped.wait(delay):
                break
            self._live_since = None
            try:
                self._session()
            except Exception as e:
                self._failed(e)
            if self._stopped.is_set():
                break
            # A channel that lived long is reopened at once; repeated failures back off.
            lived = 0.0 if self._live_since is None else self.clock() - self._live_since
            delay = 0.0 if lived >= MAX_BACKOFF else min(max(2 * delay, 1.0), MAX_BACKOFF)
        with self._lock:
            self.live = False

    def _failed(self, e: BaseException) -> None:
        if isinstance(e, _Lost):
            why = str(e)
        else:
            err = (
                e
                if isinstance(e, ApplicationError)
                else classify(e, self.host, self.conns.known_hosts)
            )
            why = err.message.removeprefix(f"ssh {self.host.address}: ").removeprefix(
                "unreachable: "
            )
        with self._lock:
            again = why == self.error
            self.live, self.error = False, why
        if not self._stopped.is_set():
            # A host down for hours logs its error once, not at every try.
            log.log(
                logging.DEBUG if again else logging.INFO, "watching %s: %s", self.host.address, why
            )

    def _session(self) -> None:
        """Open a channel, run the loop and read it until stopped. Raises _Lost or a
        connection error when the channel could not be had or kept."""
        conn = self.conns.get(self.host)
        transport = conn.client.get_transport()
        if transport is None or not transport.is_active():
            self.conns.drop(self.host)
            raise _Lost("connection closed")
        import paramiko

        try:
            chan = transport.open_session(timeout=CONNECT_TIMEOUT)
        except paramiko.ChannelException:
            raise  # refused by the server (MaxSessions): the connection itself is fine
        except Exception:
            # No channel in time on a connection that looks open: it is not.
            self.conns.drop(self.host)
            raise
        with self._lock:
            if self._stopped.is_set():
                chan.close()
                return
            self._chan = chan
        try:
            chan.settimeout(_TICK)
            chan.exec_command(loop_command(self.host))
            self._read(chan)
        finally:
            with self._lock:
                if self._chan is chan:
                    self._chan = None
            with contextlib.suppress(Exception):
                chan.close()
            if not transport.is_active():
                self.conns.drop(self.host)

    def _read(self, chan: Channel) -> None:
        pending = b""
        lines: list[str] | None = None  # inside a snapshot
        heard = self.clock()
        stderr = b""
        while not self._stopped.is_set():
            try:
                data = chan.recv(1 << 16)
            except TimeoutError:
                data = None
            while chan.recv_stderr_ready():
                stderr = (stderr + chan.recv_stderr(1 << 12))[-400:]
            now = self.clock()
            if data == b"":
                if self._stopped.is_set():
                    break
                raise _Lost(self._ended(chan, stderr))
            if data is None:
                if now - heard > SILENCE_SECONDS:
                    raise _Lost(f"no heartbeat for {now - heard:.0f}s")
                continue
            heard = now
            pending += data
            *complete, pending = pending.split(b"\n")
            if len(pending) > _MAX_LINE:
                pending = b""  # not the loop's (rc files' noise): the loop's lines are short
            for raw in complete:
                line = raw.decode(errors="replace").strip()
                if line == "@snap":
                    lines = []
                elif line == "@end" and lines is not None:
                    snapshot = tuple(p for p in map(WatchedPhase.parse, lines) if p is not None)
                    lines = None
                    if self._live_since is None:
                        self._live_since = now
                    with self._lock:
                        self.snapshot, self.live, self.error = snapshot, True, None
                elif lines is not None:
                    lines.append(line)
                # Anything else (heartbeats, text printed by the user's rc files) only
                # shows the host is there.
            if self._live_since is not None:
                with self._lock:
                    self.down_since = now

    def _ended(self, chan: Channel, stderr: bytes) -> str:
        why = "channel closed"
        if chan.exit_status_ready():
            code = chan.recv_exit_status()
            why = f"watch loop ended (exit status {code})" if code >= 0 else why
        tail = stderr.decode(errors="replace").strip().splitlines()
        return f"{why}: {tail[-1]}" if tail else why


class HostWatches:
    """One watch per SSH host, each a long-lived channel running the watch loop.

    `sync` says which hosts to watch; `observations` answers from the snapshots the hosts
    last sent, at no cost to the hosts. A host whose channel is down for longer than
    `grace` turns its phases that were still starting or running into UNREACHABLE; a host
    never heard from says nothing (it can only be wrong to report an ending unseen).
    """

    def __init__(
        self,
        conns: Connections,
        *,
        grace: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conns = conns
        self.grace = grace
        self.clock = clock
        self._lock = threading.Lock()
        self._watches: dict[str, _HostWatch] = {}

    def sync(self, hosts: Iterable[SSHHost]) -> None:
        """Watch exactly these hosts: start new ones, stop and forget the others (and a host
        whose entry changed, user or key: its watch starts over)."""
        wanted = {h.address: h for h in hosts}
        with self._lock:
            gone = [w for a, w in self._watches.items() if a not in wanted or w.host != wanted[a]]
            for w in gone:
                del self._watches[w.host.address]
            for address, host in wanted.items():
                if address not in self._watches:
                    self._watches[address] = _HostWatch(host, self.conns, self.clock)
        for w in gone:
            w.stop()

    def observations(self) -> list[WatchedObservation]:
        """Every watched phase that ended, as last seen on its host (endings are final,
        so a host down for a while still tells them), and UNREACHABLE for the phases
        still going on a host that has been down for longer than the grace."""
        with self._lock:
            watches = list(self._watches.values())
        now = self.clock()
        out: list[WatchedObservation] = []
        for w in watches:
            snapshot, live, error, down_since = w.state()
            if snapshot is None:
                continue
            out += [p.observation(p.state) for p in snapshot if p.ended]
            if live or now - down_since <= self.grace:
                continue
            for p in snapshot:
                if not p.ended:
                    reason = (
                        f"node {p.rank} ({w.host.ip}) unreachable for more than "
                        f"{self.grace:g}s: {error or 'no answer'}"
                    )
                    out.append(p.observation(PhaseState.UNREACHABLE, reason))
        return out

    def status(self) -> dict[str, str]:
        """Host address → "live", "connecting" or "down for 12s: <why>"."""
        with self._lock:
            watches = list(self._watches.values())
        now = self.clock()
        out = {}
        for w in watches:
            _, live, error, down_since = w.state()
            if live:
                out[w.host.address] = "live"
            elif error is None:
                out[w.host.address] = "connecting"
            else:
                out[w.host.address] = f"down for {now - down_since:.0f}s: {error}"
        return out

    def close(self, timeout: float = 5.0) -> None:
        """Stop every watch and close its channel (each loop on its host then ends)."""
        with self._lock:
            watches, self._watches = list(self._watches.values()), {}
        for w in watches:
            w.stop()
        end = time.monotonic() + timeout
        for w in watches:
            w.join(max(0.0, end - time.monotonic()))

    def __enter__(self) -> HostWatches:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
