"""The load balancer: one Caddy instance driven through its admin API.

Each service gets its own HTTP server in Caddy (`skyloom-<service>`, tagged with the same
`@id`), listening on one port and sending requests to the service's READY replicas. Every
change touches that one server's path, never the whole config, so services changed at
the same time by different callers do not clobber each other: Caddy applies admin changes
one at a time, and a read-then-write of one service is guarded by the Etag of what was read.

What Caddy does with the config we write, and why it is written so:

- A replica that goes away between two probes (refused connection) costs a retry on
  another upstream, not a failed request: `try_duration`/`try_interval` retry every
  request whose connection could not be made, whatever its method, and passive health
  checks skip a failing upstream for `fail_duration`. Requests that already reached a
  replica are retried only if they are GETs (Caddy's default).
- Every admin change reloads Caddy's whole config (all services). Requests already being
  proxied finish on the old server, but a connection that reaches the old server in the
  last millisecond before it stops is closed without an answer (or reset), and idle
  keep-alive connections are closed: clients see a dropped connection, never a request
  half-forwarded, and clients that send such an unanswered GET again (browsers, Go's
  HTTP client) see nothing. Hence writes happen only when something changed.
- Caddy resets its HTTP metrics at every config reload; `requests_served` adds the counts
  seen before each reload back (see `_Counts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx

POLICIES = {"round_robin": "round_robin", "least_load": "least_conn"}

_SERVICE_NAME = re.compile(r"[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?")
# Prefix of our servers' names and @ids: marks what skyloom owns in a shared Caddy.
_PREFIX = "skyloom-"
_NO_REPLICAS = "no ready replicas\n"

# A request whose upstream refuses the connection is tried on another one for this long.
_TRY_DURATION = "3s"
_TRY_INTERVAL = "50ms"
# One failed request marks an upstream down for this long (passive health check).
_FAIL_DURATION = "3s"

_ADMIN_TIMEOUT = 10.0
# Caddy restarts its admin endpoint after every config change and closes the kept-alive
# connections to it; a request sent on one of them fails. One connection per call avoids
# that, and a call that another caller's change cut off unanswered is sent again (all
# ours are safe to repeat: a repeated PUT gets 409, a repeated PATCH 412, DELETE 404).
_FRESH = {"Connection": "close"}
_CALL_ATTEMPTS = 4
_CALL_RETRY_PAUSE = 0.05
_WRITE_ATTEMPTS = 5


class LBError(Exception):
    """The load balancer could not be reached or refused a change."""


def _server_name(service: str) -> str:
    """Caddy's name (and @id) of the service's server."""
    if len(service) > 63 or not _SERVICE_NAME.fullmatch(service):
        raise ValueError(f"invalid service name: {service!r}")
    return _PREFIX + service


def _handler(service: str, upstreams: list[str], policy: str) -> dict[str, Any]:
    hid = f"{_server_name(service)}-handler"
    if not upstreams:
        return {
            "@id": hid,
            "handler": "static_response",
            "status_code": 503,
            "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
            "body": _NO_REPLICAS,
        }
    return {
        "@id": hid,
        "handler": "reverse_proxy",
        "upstreams": [{"dial": u} for u in upstreams],
        "load_balancing": {
            "selection_policy": {"policy": POLICIES[policy]},
            "try_duration": _TRY_DURATION,
            "try_interval": _TRY_INTERVAL,
        },
        "health_checks": {"passive": {"fail_duration": _FAIL_DURATION, "max_fails": 1}},
        # Streamed responses (tokens from a model) reach the client as they are written.
        "flush_interval": -1,
    }


def _server(service: str, host: str, port: int, upstreams: list[str], policy: str) -> dict:
    return {
        "@id": _server_name(service),
        "listen": [f"{_host(host)}:{port}"],
        # Plain HTTP only: no certificates, no redirect to HTTPS, no HTTP/2-3 attempts.
        "automatic_https": {"disable": True},
        "protocols": ["h1"],
        "routes": [{"handle": [_handler(service, upstreams, policy)]}],
    }


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _canonical(upstreams: list[str]) -> list[str]:
    """One order for the same set, so an unchanged set compares equal."""
    for u in upstreams:
        _, sep, port = u.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"upstream must be host:port, got {u!r}")
    return sorted(set(upstreams))


def _listen_port(server: dict) -> int | None:
    for addr in server.get("listen") or []:
        _, _, port = str(addr).rpartition(":")
        if port.isdigit():
            return int(port)
    return None


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As Caddy binds: connections left in TIME_WAIT on the port do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            # Not an address of this machine (Caddy runs elsewhere): Caddy will tell.
            return e.errno == errno.EADDRNOTAVAIL
    return True


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class _Scrape:
    requests: dict[str, float]  # server name -> requests since the last reload
    reloaded_at: float | None
    started_at: float | None


def _parse_metrics(text: str) -> _Scrape:
    requests: dict[str, float] = {}
    reloaded_at = started_at = None
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.groups()
        if name == "caddy_http_requests_total":
            server = dict(_LABEL.findall(labels or "")).get("server", "")
            requests[server] = requests.get(server, 0.0) + float(value)
        elif name == "caddy_config_last_reload_success_timestamp_seconds":
            reloaded_at = float(value)
        elif name == "process_start_time_seconds":
            started_at = float(value)
    return _Scrape(requests, reloaded_at, started_at)


@dataclass
class _Counts:
    """Request counts per server, cumulative over Caddy's config reloads.

    Caddy starts its HTTP counters again from zero at each reload. What was counted before
    a reload is added back here, so the counts only go down when Caddy itself restarted.
    Requests served between the last scrape and a reload are not seen; scraping right
    before our own changes keeps that gap to the changes made by others.
    """

    started_at: float | None = None
    reloaded_at: float | None = None
    before: dict[str, float] = field(default_factory=dict)  # counted before the last reload
    since: dict[str, float] = field(default_factory=dict)  # counted since the last reload

    def absorb(self, s: _Scrape) -> None:
        if s.started_at != self.started_at:
            self.started_at, self.before = s.started_at, {}
        elif s.reloaded_at != self.reloaded_at:
            for name, n in self.since.items():
                self.before[name] = self.before.get(name, 0.0) + n
        self.reloaded_at, self.since = s.reloaded_at, dict(s.requests)

    def total(self, name: str) -> int:
        return int(self.before.get(name, 0.0) + self.since.get(name, 0.0))


class LoadBalancer:
    """Async client of one Caddy instance's admin API (see the module docstring)."""

    def __init__(
        self,
        admin: str,
        *,
        listen_host: str = "127.0.0.1",
        ports: range = range(30001, 30101),
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.admin = admin.rstrip("/")
        self.listen_host = listen_host
        self.ports = ports
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=_ADMIN_TIMEOUT)
        self._counts = _Counts()
        # Ports are picked one service at a time within this process; other processes
        # racing for the same port are refused by Caddy and move on to the next.
        self._picking = asyncio.Lock()

    # -- admin API --

    async def _call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        for attempt in range(1, _CALL_ATTEMPTS + 1):
            try:
                return await self._client.request(
                    method,
                    self.admin + path,
                    json=body,
                    headers={**_FRESH, **(headers or {})},
                )
            except httpx.TimeoutException as e:  # may still be at work: not repeated
                raise LBError(f"load balancer at {self.admin}: {method} {path}: {e!r}") from e
            except httpx.TransportError as e:
                if attempt == _CALL_ATTEMPTS:
                    raise LBError(f"load balancer at {self.admin} unreachable: {e!r}") from e
                await asyncio.sleep(_CALL_RETRY_PAUSE * attempt)
        raise AssertionError("unreachable")

    async def _get(self, path: str) -> tuple[Any, str | None]:
        """The config at path (None when absent) and its Etag."""
        r = await self._call("GET", path)
        # 400: a parent of the path is missing (Caddy's "invalid traversal path").
        if r.status_code in (400, 404):
            return None, None
        if r.status_code != 200:
            raise LBError(f"GET {path}: {r.status_code} {r.text.strip()}")
        return r.json(), r.headers.get("Etag")

    @staticmethod
    def _refused(r: httpx.Response, what: str) -> LBError:
        return LBError(f"{what}: {r.status_code} {r.text.strip()}")

    async def _ensure_base(self) -> None:
        """A Caddy without our http app (fresh or restarted bare) gets it, with metrics on."""
        app, _ = await self._get("/config/apps/http")
        if app is None:
            # PUT creates the missing parents and fails with 409 when someone else won.
            r = await self._call("PUT", "/config/apps/http", {"servers": {}, "metrics": {}})
        elif "metrics" not in app:
            r = await self._call("PUT", "/config/apps/http/metrics", {})
        else:
            return
        if r.status_code not in (200, 409):
            raise self._refused(r, "loading the base config")

    async def _servers(self) -> dict[str, dict]:
        servers, _ = await self._get("/config/apps/http/servers")
        return servers or {}

    # -- public --

    async def alive(self) -> bool:
        try:
            r = await self._call("GET", "/config/admin")
        except LBError:
            return False
        return r.status_code == 200

    async def ensure(self, service: str, port: int | None = None) -> int:
        """Make sure the service has its own HTTP server in Caddy; return its listen port.
        Idempotent: an existing server for the service keeps its port. port=None picks a free
        one in `ports` (not used by another service's server in Caddy and bindable on
        listen_host). A Caddy that lost its config (restarted) gets the base config loaded
        first."""
        name = _server_name(service)
        await self._ensure_base()
        async with self._picking:
            tried: set[int] = set()
            while True:
                servers = await self._servers()
                if name in servers:
                    existing = _listen_port(servers[name])
                    if existing is None:
                        raise LBError(f"server {name} in Caddy has no port")
                    return existing
                taken = {p for s in servers.values() if (p := _listen_port(s)) is not None}
                candidate = port or next(
                    (
                        p
                        for p in self.ports
                        if p not in taken and p not in tried and _bindable(self.listen_host, p)
                    ),
                    None,
                )
                if candidate is None:
                    raise LBError(f"no free port for {service} in {self.ports}")
                body = _server(service, self.listen_host, candidate, [], "round_robin")
                r = await self._call("PUT", f"/config/apps/http/servers/{name}", body)
                if r.status_code in (200, 409):  # 409: created meanwhile by someone else
                    continue
                tried.add(candidate)
                # Move on only when the port is what failed (claimed meanwhile, or in use).
                if port is None and (
                    candidate in {_listen_port(s) for s in (await self._servers()).values()}
                    or not _bindable(self.listen_host, candidate)
                ):
                    continue
                raise self._refused(r, f"creating the server of {service} on port {candidate}")

    async def set_upstreams(
        self, service: str, port: int, upstreams: list[str], policy: str
    ) -> bool:
        """The service's server at `port` sends requests to exactly `upstreams` ("host:port"
        strings) with `policy` ("round_robin" | "least_load"). No upstream: every request gets
        503 with body "no ready replicas\\n". Returns True when Caddy's config changed, False
        when it already matched. Recreates the server if Caddy lost it."""
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; one of {sorted(POLICIES)}")
        name = _server_name(service)
        want = _server(service, self.listen_host, port, _canonical(upstreams), policy)
        path = f"/config/apps/http/servers/{name}"
        # Someone (or our own repeated call) wrote this service since we first read it.
        changed = False
        for _ in range(_WRITE_ATTEMPTS):
            have, etag = await self._get(path)
            if have == want:
                return changed
            # Counts since the last reload are lost at the next one: take them first.
            with contextlib.suppress(LBError):
                await self._scrape()
            if have is None:
                await self._ensure_base()
                r = await self._call("PUT", path, want)
            else:
                # If-Match: written only if nobody changed this service since we read it.
                r = await self._call("PATCH", f"/id/{name}", want, {"If-Match": etag or ""})
            if r.status_code == 200:
                return True
            if r.status_code not in (409, 412):
                raise self._refused(r, f"setting the upstreams of {service}")
            changed = True
        raise LBError(f"setting the upstreams of {service}: changed by others meanwhile")

    async def remove(self, service: str) -> None:
        r = await self._call("DELETE", f"/config/apps/http/servers/{_server_name(service)}")
        if r.status_code not in (200, 400, 404):  # 400/404: already gone
            raise self._refused(r, f"removing {service}")

    async def _scrape(self) -> _Scrape:
        r = await self._call("GET", "/metrics")
        if r.status_code != 200:
            raise self._refused(r, "reading metrics")
        s = _parse_metrics(r.text)
        self._counts.absorb(s)
        return s

    async def requests_served(self, service: str) -> int:
        """Cumulative count of requests the service's server has handled since Caddy started
        (from Caddy's Prometheus metrics at the admin /metrics endpoint). A restarted Caddy
        starts again from 0: callers handle a count that goes down."""
        await self._scrape()
        return self._counts.total(_server_name(service))

    async def upstreams(self, service: str) -> list[str] | None:
        """What Caddy has now; None: no server."""
        handler, _ = await self._get(f"/id/{_server_name(service)}-handler")
        if handler is None:
            return None
        return [u["dial"] for u in handler.get("upstreams") or []]

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()
