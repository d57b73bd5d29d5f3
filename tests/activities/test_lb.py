"""The load balancer on a real Caddy (started the way a worker starts it) in front of real
HTTP replicas on loopback: one server per service, the balancing policies, the empty set,
changes under load, replicas dying, request counts, and Caddy itself dying or being
adopted by another worker."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import json
import os
import signal
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from skyloom.activities.serve.lb import LoadBalancer
from skyloom.worker.engine import pid_alive
from skyloom.worker.lb import CaddyProcess


class Replica:
    """A replica on loopback that answers its own name; GET /slow waits for `release`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.busy = threading.Event()
        self.release = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._dead = False
        replica = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in two writes: without this, Nagle holds the body
            # back for the proxy's delayed ACK on every kept-alive request.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with replica._lock:
                    replica._conns.add(self.connection)

            def finish(self) -> None:
                with replica._lock:
                    replica._conns.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def do_GET(self) -> None:
                if self.path == "/slow":
                    replica.busy.set()
                    replica.release.wait(30)
                body = replica.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}
        )
        self._thread.start()

    def kill(self) -> None:
        """Die like a process: new connections refused, open ones cut, nothing answered."""
        if self._dead:
            return
        self._dead = True
        self.release.set()
        self.server.shutdown()
        self._thread.join()
        self.server.socket.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self.server.server_close()  # joins the handler threads


@pytest.fixture
def replicas() -> Iterator[Callable[[str], Replica]]:
    made: list[Replica] = []

    def make(name: str) -> Replica:
        made.append(Replica(name))
        return made[-1]

    yield make
    for r in made:
        r.kill()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
async def caddy(tmp_path: Path) -> AsyncIterator[CaddyProcess]:
    cp = CaddyProcess(tmp_path / "lb")
    await cp.start()
    pids = {cp.pid}
    try:
        yield cp
    finally:
        pids.add(cp.pid)
        await cp.close()
        for pid in pids - {None}:
            assert pid is not None
            if pid_alive(pid):  # never leave a Caddy behind, whatever the test did
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"caddy {pid} outlived close()")


@pytest.fixture
async def lb(caddy: CaddyProcess) -> AsyncIterator[LoadBalancer]:
    balancer = LoadBalancer(caddy.admin_url)
    yield balancer
    await balancer.aclose()


def fetch(port: int, path: str = "/") -> tuple[int, str]:
    """One GET on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


async def until(cond: Callable[[], bool], timeout: float = 15) -> None:
    """Poll until cond() holds (fails the test after timeout)."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


class Load:
    """GETs sent back to back from threads until stopped, like clients of the service.

    With `retry_unanswered`, a client sends a GET again once when its connection was
    closed or reset before any byte of a response came back, as browsers and Go's HTTP
    client do for idempotent requests; nothing else is retried.
    """

    def __init__(self, port: int, *, keepalive: bool, retry_unanswered: bool) -> None:
        self.port, self.keepalive, self.retry = port, keepalive, retry_unanswered
        self.answers: Counter[tuple[int, str]] = Counter()
        self.failures: list[str] = []
        self.retried = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run)

    @property
    def sent(self) -> int:
        return sum(self.answers.values()) + len(self.failures)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {} if self.keepalive else {"Connection": "close"}
        while not self._stop.is_set():
            for attempt in (1, 2):
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                try:
                    conn.request("GET", "/", headers=headers)
                    r = conn.getresponse()
                except ConnectionError as e:  # nothing of a response came back
                    conn.close()
                    conn = None
                    if self.retry and attempt == 1:
                        self.retried += 1
                        continue
                    with self._lock:
                        self.failures.append(repr(e))
                    break
                try:
                    answer = (r.status, r.read().decode())
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    conn = None
                    with self._lock:
                        self.failures.append(repr(e))
                    break
                if r.will_close:
                    conn.close()
                    conn = None
                with self._lock:
                    self.answers[answer] += 1
                break
        if conn is not None:
            conn.close()


async def test_ensure_is_idempotent_and_keeps_its_port(lb: LoadBalancer) -> None:
    port = await lb.ensure("web")
    assert port in lb.ports
    assert await lb.ensure("web") == port
    assert await lb.ensure("web", port=port + 7) == port  # an existing server keeps its port
    other = await lb.ensure("api")
    assert other != port
    chosen = next(p for p in reversed(lb.ports) if p not in (port, other) and _bindable(p))
    assert await lb.ensure("chosen", port=chosen) == chosen
    for p in (port, other):
        assert fetch(p) == (503, "no ready replicas\n")
    assert await lb.upstreams("web") == []
    assert await lb.upstreams("missing") is None


async def test_config_is_one_plain_http_server_per_service(
    lb: LoadBalancer, caddy: CaddyProcess, replicas: Callable[[str], Replica]
) -> None:
    port = await lb.ensure("web")
    r1 = replicas("r1")
    await lb.set_upstreams("web", port, [r1.address], "least_load")
    async with httpx.AsyncClient() as c:
        config = (await c.get(f"{caddy.admin_url}/config/")).json()
    assert config["admin"]["listen"] == caddy.admin_url.removeprefix("http://")
    server = config["apps"]["http"]["servers"]["skyloom-web"]
    assert server["@id"] == "skyloom-web"
    assert server["listen"] == [f"127.0.0.1:{port}"]
    assert server["automatic_https"] == {"disable": True}
    [handler] = server["routes"][0]["handle"]
    assert handler["@id"] == "skyloom-web-handler"
    assert handler["upstreams"] == [{"dial": r1.address}]
    assert handler["load_balancing"]["selection_policy"] == {"policy": "least_conn"}
    assert handler["health_checks"]["passive"]["max_fails"] == 1
    assert "tls" not in config["apps"]  # nothing ever asked for a certificate


async def test_an_empty_caddy_gets_the_base_config_first(
    lb: LoadBalancer, caddy: CaddyProcess, replicas: Callable[[str], Replica]
) -> None:
    async with httpx.AsyncClient() as c:
        assert (await c.delete(f"{caddy.admin_url}/config/apps")).status_code == 200
    port = await lb.ensure("web")
    r1 = replicas("r1")
    assert await lb.set_upstreams("web", port, [r1.address], "round_robin")
    assert fetch(port) == (200, "r1")
    assert await lb.requests_served("web") == 1  # metrics came with the base config


async def test_two_services_side_by_side(
    lb: LoadBalancer, replicas: Callable[[str], Replica]
) -> None:
    a, b = await lb.ensure("a"), await lb.ensure("b")
    ra, rb = replicas("ra"), replicas("rb")
    assert await lb.set_upstreams("a", a, [ra.address], "round_robin")
    assert await lb.set_upstreams("b", b, [rb.address], "least_load")
    assert {fetch(a) for _ in range(5)} == {(200, "ra")}
    assert {fetch(b) for _ in range(5)} == {(200, "rb")}
    await lb.set_upstreams("a", a, [], "round_robin")
    assert fetch(a) == (503, "no ready replicas\n")
    assert fetch(b) == (200, "rb")
    assert await lb.upstreams("b") == [rb.address]
    await lb.remove("a")
    assert fetch(b) == (200, "rb")


async def test_concurrent_callers_do_not_clobber_each_other(
    lb: LoadBalancer, caddy: CaddyProcess, replicas: Callable[[str], Replica]
) -> None:
    other = LoadBalancer(caddy.admin_url)  # another worker, with its own client
    try:
        names = [f"s{i}" for i in range(6)]
        callers = [lb, other] * 3
        ports = await asyncio.gather(*(c.ensure(n) for c, n in zip(callers, names, strict=True)))
        assert len(set(ports)) == len(names)
        rs = [replicas(n) for n in names]
        changed = await asyncio.gather(
            *(
                c.set_upstreams(n, p, [r.address], "round_robin")
                for c, n, p, r in zip(callers, names, ports, rs, strict=True)
            )
        )
        assert all(changed)
        for n, p, r in zip(names, ports, rs, strict=True):
            assert await lb.upstreams(n) == [r.address]
            assert fetch(p) == (200, n)
    finally:
        await other.aclose()


async def test_round_robin_spreads_requests_evenly(
    lb: LoadBalancer, replicas: Callable[[str], Replica]
) -> None:
    port = await lb.ensure("web")
    rs = [replicas(f"r{i}") for i in range(3)]
    await lb.set_upstreams("web", port, [r.address for r in rs], "round_robin")
    got = Counter(fetch(port)[1] for _ in range(30))
    assert got == {"r0": 10, "r1": 10, "r2": 10}


async def test_least_load_sends_new_requests_to_the_idle_replica(
    lb: LoadBalancer, replicas: Callable[[str], Replica]
) -> None:
    port = await lb.ensure("web")
    r1, r2 = replicas("r1"), replicas("r2")
    await lb.set_upstreams("web", port, [r1.address, r2.address], "least_load")
    slow: list[tuple[int, str]] = []
    t = threading.Thread(target=lambda: slow.append(fetch(port, "/slow")))
    t.start()
    await until(lambda: r1.busy.is_set() or r2.busy.is_set())
    busy, idle = (r1, r2) if r1.busy.is_set() else (r2, r1)
    assert {fetch(port) for _ in range(10)} == {(200, idle.name)}
    busy.release.set()
    t.join()
    assert slow == [(200, busy.name)]


async def test_no_replica_means_503_and_unchanged_sets_are_not_rewritten(
    lb: LoadBalancer, replicas: Callable[[str], Replica]
) -> None:
    port = await lb.ensure("web")
    assert not await lb.set_upstreams("web", port, [], "round_robin")
    assert not await lb.set_upstreams("web", port, [], "least_load")  # 503 has no policy
    assert fetch(port) == (503, "no ready replicas\n")
    r1, r2 = replicas("r1"), replicas("r2")
    assert await lb.set_upstreams("web", port, [r1.address, r2.address], "round_robin")
    assert not await lb.set_upstreams("web", port, [r2.address, r1.address], "round_robin")
    assert await lb.set_upstreams("web", port, [r1.address, r2.address], "least_load")
    assert not await lb.set_upstreams("web", port, [r1.address, r2.address], "least_load")
    assert await lb.upstreams("web") == sorted([r1.address, r2.address])
    assert await lb.set_upstreams("web", port, [], "least_load")
    assert fetch(port) == (503, "no ready replicas\n")
    with pytest.raises(ValueError):
        await lb.set_upstreams("web", port, [r1.address], "fastest")


async def test_changes_under_load_fail_no_request(
    lb: LoadBalancer, replicas: Callable[[str], Replica]
) -> None:
    """Each change reloads Caddy; requests keep flowing through eight of them. A request
    already with a replica finishes there; connections that Caddy closes at a reload
    before answering (see activities/serve/lb.py) are sent again, as real clients do."""
    port = await lb.ensure("web")
    r1, r2, r3 = replicas("r1"), replicas("r2"), replicas("r3")
    sets = [[r2], [r1, r2], [r3], [r2, r3], [r1], [r1, r2, r3], [r2], [r3]]
    await lb.set_upstreams("web", port, [r1.address], "round_robin")
    slow: list[tuple[int, str]] = []
    held = threading.Thread(target=lambda: slow.append(fetch(port, "/slow")))
    held.start()
    await until(r1.busy.is_set)
    with (
        Load(port, keepalive=True, retry_unanswered=True) as kept,
        Load(port, keepalive=False, retry_unanswered=True) as fresh,
    ):
        for upstreams in sets:
            before = kept.sent + fresh.sent
            assert await lb.set_upstreams(
                "web", port, [r.address for r in upstreams], "round_robin"
            )
            await until(lambda before=before: kept.sent + fresh.sent >= before + 60)
    r1.release.set()
    held.join()
    assert slow == [(200, "r1")]  # in flight across all eight reloads
    for load in (kept, fresh):
        assert load.failures == []
        assert set(load.answers) <= {(200, "r1"), (200, "r2"), (200, "r3")}
    assert kept.sent + fresh.sent >= 8 * 60
    assert {fetch(port) for _ in range(5)} == {(200, "r3")}


async def test_a_replica_that_dies_fails_no_request(
    lb: LoadBalancer, replicas: Callable[[str], Replica]
) -> None:
    """No reload here: a dead upstream costs retries inside Caddy, never a failed GET."""
    port = await lb.ensure("web")
    r1, r2 = replicas("r1"), replicas("r2")
    await lb.set_upstreams("web", port, [r1.address, r2.address], "round_robin")
    with (
        Load(port, keepalive=True, retry_unanswered=False) as kept,
        Load(port, keepalive=False, retry_unanswered=False) as fresh,
    ):
        await until(lambda: kept.sent + fresh.sent >= 100)
        r1.kill()
        at_kill = kept.sent + fresh.sent
        await until(lambda: kept.sent + fresh.sent >= at_kill + 300)
    for load in (kept, fresh):
        # A response the replica was writing when it died is cut short (its headers
        # were already passed on, so Caddy cannot retry it): at most the one request
        # each client had there at that instant. Nothing else fails.
        assert all("IncompleteRead" in f for f in load.failures), load.failures
        assert len(load.failures) <= 1, load.failures
        assert set(load.answers) <= {(200, "r1"), (200, "r2")}
    assert {fetch(port) for _ in range(10)} == {(200, "r2")}


async def test_requests_served_counts_across_reloads(
    lb: LoadBalancer, caddy: CaddyProcess, replicas: Callable[[str], Replica]
) -> None:
    port = await lb.ensure("web")
    assert await lb.requests_served("web") == 0
    for _ in range(3):
        fetch(port)  # 503s count too
    assert await lb.requests_served("web") == 3
    r1 = replicas("r1")
    await lb.set_upstreams("web", port, [r1.address], "round_robin")  # a reload
    for _ in range(4):
        fetch(port)
    assert await lb.requests_served("web") == 7
    # Another caller's change reloads Caddy too, which zeroes Caddy's own counters.
    other = LoadBalancer(caddy.admin_url)
    try:
        await other.ensure("api")
    finally:
        await other.aclose()
    for _ in range(2):
        fetch(port)
    assert await lb.requests_served("web") == 9
    assert await lb.requests_served("api") == 0


async def test_removed_service_refuses_connections(
    lb: LoadBalancer, replicas: Callable[[str], Replica]
) -> None:
    port = await lb.ensure("web")
    r1 = replicas("r1")
    await lb.set_upstreams("web", port, [r1.address], "round_robin")
    assert fetch(port) == (200, "r1")
    await lb.remove("web")
    await lb.remove("web")  # already gone: fine
    with pytest.raises(ConnectionRefusedError):
        fetch(port)
    assert await lb.upstreams("web") is None


async def test_a_killed_caddy_is_restarted_and_resynced(
    lb: LoadBalancer, caddy: CaddyProcess, replicas: Callable[[str], Replica]
) -> None:
    port = await lb.ensure("web")
    r1 = replicas("r1")
    await lb.set_upstreams("web", port, [r1.address], "round_robin")
    for _ in range(3):
        fetch(port)
    assert await lb.requests_served("web") == 3
    stop = asyncio.Event()
    supervisor = asyncio.create_task(caddy.supervise(stop))
    try:
        first = caddy.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await until(lambda: caddy.pid != first)
        while not await lb.alive():
            await asyncio.sleep(0.02)
        assert await lb.upstreams("web") is None  # the new Caddy starts from the base config
        # What the serving loop does every second: its port, its READY set.
        assert await lb.set_upstreams("web", port, [r1.address], "round_robin")
        assert await lb.ensure("web") == port
        assert fetch(port) == (200, "r1")
        assert await lb.requests_served("web") == 1  # counted again from 0
        assert json.loads((caddy.dir / "caddy.json").read_text())["pid"] == caddy.pid
    finally:
        stop.set()
        await supervisor


async def test_a_second_worker_adopts_the_running_caddy(
    lb: LoadBalancer, caddy: CaddyProcess, replicas: Callable[[str], Replica]
) -> None:
    port = await lb.ensure("web")
    r1 = replicas("r1")
    await lb.set_upstreams("web", port, [r1.address], "round_robin")
    adopter = CaddyProcess(caddy.dir)
    await adopter.start()
    assert adopter.admin_url == caddy.admin_url
    assert adopter.pid == caddy.pid
    assert (caddy.dir / "caddy.log").read_text().count("serving initial configuration") == 1
    assert fetch(port) == (200, "r1")  # the services kept serving
    pid = caddy.pid
    assert pid is not None
    await adopter.close()  # the recorded pid is its Caddy: stopped too
    assert not pid_alive(pid)
    assert json.loads((caddy.dir / "caddy.json").read_text())["pid"] is None
