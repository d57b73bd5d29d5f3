"""What skyloom's load balancer costs a service's requests, next to SkyServe's, and how
soon a replica that became ready gets traffic.

    python bench/serve_lb.py [--duration 10s] [--connections 1,32,256] [--runs 5]
                             [--only lb|ready] [--skyserve-venv DIR]

Run by hand, never in CI; loopback only. Two measurements:

  * lb: the same two replicas (one HAProxy answering a fixed 200 on two ports: compiled
    and light, so the replicas are never the bottleneck) loaded by wrk, in the same run,
    (a) directly (one replica), (b) through skyloom's load balancer: an embedded Caddy
    started by worker/lb.py's CaddyProcess, its service server made and pointed at both
    replicas by activities/serve/lb.py's LoadBalancer, as the worker does, (c) through
    SkyServe's load balancer (skypilot 0.14.1, /work/shared/baselines/skyserve-lb/,
    against its stand-in controller), and for reference a bare Caddy reverse proxy and a
    bare HAProxy on the same replicas. p50/p99 latency and requests/s at each connection
    count, as a markdown table with ratios to direct. Goals: added p50 ≤ 0.2 ms over
    direct at 1 connection; ≥ 20x SkyServe's throughput at 32 connections.
  * ready: from a replica becoming ready (the wall-clock time its first successful
    readiness-probe answer was sent) to the first request proxied to it, through the real
    product path: `skyloom serve up` of a one-replica service on the local infra in a
    throwaway SKYLOOM_HOME, while a client hits the endpoint every few ms (503 until then).
    Median and max over --runs services. Goal: ≤ 1 s (SkyServe: up to 20 s, its load
    balancer syncs the replica list every 20 s).

Needs wrk and haproxy (`apt-get install -y wrk haproxy`). SkyServe needs a venv with
skypilot==0.14.1: made once in --skyserve-venv (default ~/.cache/skyloom-bench/skyserve)
with `python3 -m venv` and pip when missing. Everything else lives in a throwaway dir;
every process started here is ended by its pid, and the engine is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from skyloom.activities.serve.lb import LoadBalancer  # noqa: E402
from skyloom.worker.engine import free_port  # noqa: E402
from skyloom.worker.lb import CaddyProcess, caddy_binary  # noqa: E402

from bench.cli_and_launch import SKY  # noqa: E402

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
PATHS = ("direct", "skyloom", "SkyServe", "Caddy, bare", "HAProxy, bare")
SKYSERVE_VERSION = "0.14.1"
BASELINE = Path("/work/shared/baselines/skyserve-lb")
GOAL_ADDED_P50_MS = 0.2
GOAL_VS_SKYSERVE = 20.0
GOAL_READY_S = 1.0
# What the ready measurement's client waits between two requests (its resolution).
LOAD_EVERY = 0.005


def free_range(n: int) -> range:
    """n consecutive loopback ports that are free now (skyloom takes a range)."""
    for _ in range(100):
        first = free_port()
        ports = range(first, first + n)
        if ports[-1] < 65536 and all(_bindable(p) for p in ports):
            return ports
    raise SystemExit(f"found no {n} consecutive free ports")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def status_of(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status a GET of url gets; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


def wait_for(url: str, want: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while (got := status_of(url)) != want:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{url}: its server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{url}: still {got} after {timeout:g} s (want {want})")
        time.sleep(0.2)


def end(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after a grace, for one process started here."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the load generator --


@dataclass
class Result:
    p50_ms: float
    p99_ms: float
    rps: float
    errors: int  # socket errors (connect, read, write, timeout) and non-2xx/3xx answers


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m[1]) * _UNITS_MS[m[2]]


def parse_wrk(out: str) -> Result:
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not (p50 and p99 and rps):
        raise SystemExit(f"could not read wrk's output:\n{out}")
    errors = 0
    if sock := re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(n) for n in sock.groups())
    if non2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(non2xx[1])
    return Result(_ms(p50[1]), _ms(p99[1]), float(rps[1]), errors)


def wrk(url: str, connections: int, duration: str) -> Result:
    threads = min(connections, os.cpu_count() or 1)
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", duration, "--latency"]
    # A slow answer counts in the latency instead of as a timeout (wrk's default is 2 s).
    cmd += ["--timeout", "10s", url]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return parse_wrk(p.stdout)


# -- the three ways to the replicas --


def start_replicas(tmp: Path, n: int) -> tuple[subprocess.Popen, list[str]]:
    """One HAProxy answering on n ports with a fixed 200 (`http-request return`): a
    compiled replica that costs so little CPU that on a 2-core machine the path in front of
    it, not the replica, is what the rows measure. (Caddy's own `static_response` took
    about 60% of a core at 32 connections here, and halved every proxy's figures.)"""
    ports = [free_port() for _ in range(n)]
    frontends = "".join(
        f"frontend replica-{i}\n  bind 127.0.0.1:{port}\n"
        f'  http-request return status 200 content-type text/plain string "r{i}"\n'
        for i, port in enumerate(ports, 1)
    )
    d = tmp / "replicas"
    d.mkdir()
    cfg = d / "haproxy.cfg"
    cfg.write_text(HAPROXY_GLOBAL.format(threads=1) + frontends)
    proc = start_haproxy(d, cfg)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    for a in addresses:
        wait_for(f"http://{a}/", 200, 15, proc)
    return proc, addresses


HAPROXY_GLOBAL = """\
global
  nbthread {threads}
defaults
  mode http
  timeout connect 3s
  timeout client 60s
  timeout server 60s
"""


def start_haproxy(d: Path, cfg: Path) -> subprocess.Popen:
    with open(d / "haproxy.log", "ab") as log:
        return subprocess.Popen(
            [HAPROXY, "-db", "-f", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=d,
        )


def start_bare_caddy(tmp: Path, replicas: list[str]) -> tuple[subprocess.Popen, str]:
    """Reference: Caddy's plainest reverse proxy (no retries, health, metrics or flush
    settings), so the table shows what skyloom's config adds to Caddy itself."""
    port = free_port()
    server = {
        "listen": [f"127.0.0.1:{port}"],
        "automatic_https": {"disable": True},
        "routes": [
            {"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": a} for a in replicas]}]}
        ],
    }
    config = {"admin": {"disabled": True}, "apps": {"http": {"servers": {"bare": server}}}}
    d = tmp / "bare-caddy"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "HOME": str(d), "XDG_DATA_HOME": str(d), "XDG_CONFIG_HOME": str(d)}
    with open(d / "caddy.log", "ab") as log:
        proc = subprocess.Popen(
            [caddy_binary(), "run", "--config", str(d / "config.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=d,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    wait_for(url, 200, 15, proc)
    return proc, url


def start_bare_haproxy(tmp: Path, replicas: list[str]) -> tuple[subprocess.Popen, str]:
    """Reference: HAProxy round robin over the same replicas (the C load balancer that
    would be the alternative to Caddy)."""
    port = free_port()
    servers = "".join(f"  server r{i} {a}\n" for i, a in enumerate(replicas, 1))
    d = tmp / "bare-haproxy"
    d.mkdir()
    cfg = d / "haproxy.cfg"
    cfg.write_text(
        HAPROXY_GLOBAL.format(threads=os.cpu_count() or 1)
        + f"frontend lb\n  bind 127.0.0.1:{port}\n  default_backend replicas\n"
        + f"backend replicas\n  balance roundrobin\n{servers}"
    )
    proc = start_haproxy(d, cfg)
    url = f"http://127.0.0.1:{port}/"
    wait_for(url, 200, 15, proc)
    return proc, url


async def start_skyloom_lb(tmp: Path, replicas: list[str]) -> tuple[CaddyProcess, str]:
    """skyloom's load balancer in front of the replicas, set up as the worker and the
    serving loop do it."""
    caddy = CaddyProcess(tmp / "lb")
    await caddy.start()
    port = free_port()
    lb = LoadBalancer(caddy.admin_url, ports=range(port, port + 1))
    try:
        port = await lb.ensure("bench", port)
        await lb.set_upstreams("bench", port, replicas, "round_robin")
    finally:
        await lb.aclose()
    return caddy, f"http://127.0.0.1:{port}/"


def skyserve_python(venv: Path) -> Path:
    """The venv's Python, with skypilot==SKYSERVE_VERSION installed there first if missing."""
    py = venv / "bin" / "python"
    check = f"import importlib.metadata as m; assert m.version('skypilot') == '{SKYSERVE_VERSION}'"
    if py.exists() and subprocess.run([py, "-c", check], capture_output=True).returncode == 0:
        return py
    print(f"making {venv} with skypilot=={SKYSERVE_VERSION} (once; a few minutes)...", flush=True)
    python3 = shutil.which("python3") or sys.executable
    venv.parent.mkdir(parents=True, exist_ok=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", f"skypilot=={SKYSERVE_VERSION}"]
    for cmd in ([python3, "-m", "venv", str(venv)], pip):
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return py


def start_skyserve_lb(
    tmp: Path, replicas: list[str], venv: Path, baseline: Path
) -> tuple[list[subprocess.Popen], str]:
    """SkyServe's load balancer against the stand-in controller; returns once it proxies."""
    py = skyserve_python(venv)
    d = tmp / "skyserve"
    (d / "home").mkdir(parents=True)
    ctrl, port = free_port(), free_port()
    # SkyPilot writes under ~/.sky: a throwaway home keeps the user's own out of it.
    env = {**os.environ, "HOME": str(d / "home")}
    procs: list[subprocess.Popen] = []
    with open(d / "controller.log", "ab") as log:
        procs.append(
            subprocess.Popen(
                [sys.executable, str(baseline / "fake_controller.py"), str(ctrl)]
                + [f"http://{a}" for a in replicas],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        )
    with open(d / "lb.log", "ab") as log:
        procs.append(
            subprocess.Popen(
                [py, str(baseline / "run_skyserve_lb.py"), str(ctrl), str(port), "round_robin"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        # 503 until its first sync with the controller.
        wait_for(url, 200, 120, procs[1])
    except SystemExit:
        print((d / "lb.log").read_text(errors="replace")[-2000:], file=sys.stderr)
        for p in procs:
            end(p)
        raise
    return procs, url


def bench_lb(args: argparse.Namespace, tmp: Path) -> None:
    conns = [int(c) for c in args.connections.split(",") if c]
    replicas_proc, replicas = start_replicas(tmp, 2)
    caddy: CaddyProcess | None = None
    others: list[subprocess.Popen] = []
    try:
        caddy, skyloom_url = asyncio.run(start_skyloom_lb(tmp, replicas))
        wait_for(skyloom_url, 200, 15)
        skyserve, skyserve_url = start_skyserve_lb(
            tmp, replicas, args.skyserve_venv, args.skyserve_dir
        )
        others += skyserve
        bare_caddy, bare_caddy_url = start_bare_caddy(tmp, replicas)
        bare_haproxy, bare_haproxy_url = start_bare_haproxy(tmp, replicas)
        others += [bare_caddy, bare_haproxy]
        targets = {
            "direct": f"http://{replicas[0]}/",
            "skyloom": skyloom_url,
            "SkyServe": skyserve_url,
            "Caddy, bare": bare_caddy_url,
            "HAProxy, bare": bare_haproxy_url,
        }
        print(f"replicas {', '.join(replicas)}; wrk for {args.duration} per row", flush=True)
        for url in targets.values():
            wrk(url, 32, args.warmup)  # connections, caches and Python's imports warmed
        results: dict[tuple[str, int], Result] = {}
        # Connection counts outside, paths inside: a drift of the machine hits all three.
        for c in conns:
            for name, url in targets.items():
                r = results[name, c] = wrk(url, c, args.duration)
                print(
                    f"  {name:13} {c:4} conns: p50 {r.p50_ms:.3f} ms, p99 {r.p99_ms:.3f} ms, "
                    f"{r.rps:,.0f} req/s, {r.errors} errors",
                    flush=True,
                )
    finally:
        for p in reversed(others):
            end(p)
        if caddy is not None:
            asyncio.run(caddy.close())
        end(replicas_proc)
    report_lb(results, conns)


def report_lb(results: dict[tuple[str, int], Result], conns: list[int]) -> None:
    print()
    print("| path | conns | p50 ms | p99 ms | req/s | errors | p50 vs direct | req/s vs direct |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in conns:
        d = results["direct", c]
        for name in PATHS:
            r = results[name, c]
            print(
                f"| {name} | {c} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.rps:,.0f} | {r.errors} "
                f"| {r.p50_ms / d.p50_ms:.2f}x | {r.rps / d.rps:.2f}x |"
            )
    print()
    if 1 in conns:
        direct = results["direct", 1].p50_ms
        added = results["skyloom", 1].p50_ms - direct
        verdict = "met" if added <= GOAL_ADDED_P50_MS else "MISSED"
        print(
            f"skyloom added p50 at 1 conn : +{added:.3f} ms over direct "
            f"(goal ≤ {GOAL_ADDED_P50_MS} ms: {verdict})"
        )
        print(f"SkyServe added p50 at 1 conn: +{results['SkyServe', 1].p50_ms - direct:.3f} ms")
    if 32 in conns:
        ratio = results["skyloom", 32].rps / results["SkyServe", 32].rps
        verdict = "met" if ratio >= GOAL_VS_SKYSERVE else "MISSED"
        print(
            f"throughput at 32 conns      : skyloom {ratio:.1f}x SkyServe "
            f"(goal ≥ {GOAL_VS_SKYSERVE:g}x: {verdict})"
        )


# -- ready → first proxied request --

# A replica that answers its readiness probe 503 until the bench says go (so the client
# is already hitting the endpoint), and notes the wall-clock time of its first 200 to
# the probe and of its first other request.
REPLICA = """
import os, pathlib, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ctl = pathlib.Path(sys.argv[1])

def note(name, t):
    if not (ctl / name).exists():
        (ctl / f"{name}.tmp").write_text(repr(t))
        os.replace(ctl / f"{name}.tmp", ctl / name)

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/health":
            ok = (ctl / "go").exists()
            self.reply(200 if ok else 503)
            if ok:
                note("ready", time.time())
        else:
            note("first", time.time())
            self.reply(200)
    def reply(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\\n")
        self.wfile.flush()
    def log_message(self, *a):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["SKYLOOM_REPLICA_PORT"])), H).serve_forever()
"""

SERVICE = """\
name: {name}
resources:
  infra: local
  ports: 8080
run: exec python3 {replica} {ctl}
service:
  readiness_probe:
    path: /health
    initial_delay_seconds: 120
  replicas: 1
  load_balancing_policy: round_robin
"""


class Load:
    """A client that GETs the endpoint every LOAD_EVERY seconds, on a new connection each
    time, from a thread; notes when it saw its first answer (any) and its first 200."""

    def __init__(self, endpoint: str) -> None:
        host, _, port = endpoint.removeprefix("http://").rstrip("/").rpartition(":")
        self.host, self.port = host, int(port)
        self.answered = threading.Event()
        self.first_ok: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
                self.answered.set()
                if r.status == 200 and self.first_ok is None:
                    self.first_ok = time.time()
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(LOAD_EVERY)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def sky(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    p = subprocess.run([SKY, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"skyloom {' '.join(args)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout


def wait_file(path: Path, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} not written after {timeout:g} s")
        time.sleep(0.02)
    return float(path.read_text())


def bench_ready(args: argparse.Namespace, tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    lb_ports = free_range(args.runs)
    env.update(
        SKYLOOM_HOME=str(tmp / "home"),
        NO_COLOR="1",
        SKYLOOM_LB_PORTS=f"{lb_ports[0]}-{lb_ports[-1]}",
    )
    replica = tmp / "replica.py"
    replica.write_text(REPLICA)
    t = time.perf_counter()
    sky(env, "engine", "start")
    print(f"engine start (cold): {time.perf_counter() - t:.2f} s", flush=True)
    gaps: list[float] = []
    client_gaps: list[float] = []
    try:
        for i in range(args.runs):
            name = f"ready-{i}"
            ctl = tmp / name
            ctl.mkdir()
            yaml = tmp / f"{name}.yaml"
            yaml.write_text(SERVICE.format(name=name, replica=replica, ctl=ctl))
            out = sky(env, "serve", "up", "-d", "-y", "-n", name, str(yaml))
            m = re.search(r"Endpoint: (\S+)", out)
            if not m:
                raise SystemExit(f"no endpoint in `skyloom serve up`'s output:\n{out}")
            with Load(m[1]) as load:
                if not load.answered.wait(30):
                    raise SystemExit(f"{m[1]} does not answer")
                (ctl / "go").touch()
                ready = wait_file(ctl / "ready", 120)
                first = wait_file(ctl / "first", 60)
                deadline = time.monotonic() + 10
                while load.first_ok is None and time.monotonic() < deadline:
                    time.sleep(0.01)
            gaps.append(first - ready)
            client = load.first_ok - ready if load.first_ok is not None else float("nan")
            client_gaps.append(client)
            print(
                f"  run {i}: ready → first proxied request {gaps[-1] * 1e3:.1f} ms "
                f"(→ first 200 at the client {client * 1e3:.1f} ms)",
                flush=True,
            )
            sky(env, "serve", "down", "-y", name, timeout=120)
    finally:
        subprocess.run([SKY, "serve", "down", "-a", "-y"], env=env, capture_output=True)
        subprocess.run([SKY, "down", "-a", "-y"], env=env, capture_output=True)
        subprocess.run([SKY, "engine", "stop"], env=env, capture_output=True)
    med, worst = statistics.median(gaps), max(gaps)
    verdict = "met" if worst <= GOAL_READY_S else "MISSED"
    print()
    print("| measure | runs | median ms | max ms |")
    print("|---|---:|---:|---:|")
    print(f"| ready → first proxied request | {len(gaps)} | {med * 1e3:.1f} | {worst * 1e3:.1f} |")
    print(
        f"| ready → first 200 at the client | {len(client_gaps)} "
        f"| {statistics.median(client_gaps) * 1e3:.1f} | {max(client_gaps) * 1e3:.1f} |"
    )
    print()
    print(
        f"goal ≤ {GOAL_READY_S:g} s: {verdict} (SkyServe: up to 20 s, its load balancer "
        "syncs the replica list every 20 s)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--duration", default="10s", help="wrk's -d for each row (default 10s)")
    ap.add_argument("--warmup", default="1s", help="wrk's -d of one unreported warm-up run")
    ap.add_argument("--connections", default="1,32,256", help="comma-separated counts")
    ap.add_argument("--runs", type=int, default=5, help="services for the ready measurement")
    ap.add_argument("--only", choices=["lb", "ready"], help="one of the two measurements")
    ap.add_argument(
        "--skyserve-venv",
        type=Path,
        default=Path.home() / ".cache" / "skyloom-bench" / "skyserve",
        help="venv with skypilot==0.14.1 (made when missing)",
    )
    ap.add_argument("--skyserve-dir", type=Path, default=BASELINE, help=argparse.SUPPRESS)
    args = ap.parse_args()
    for d in (args.duration, args.warmup):
        if not re.fullmatch(r"\d+[smh]?", d):
            raise SystemExit(f"expected a duration like 10s, got {d!r}")
    if args.only != "ready" and not (shutil.which("wrk") and Path(HAPROXY).exists()):
        print("wrk and haproxy are needed: apt-get install -y wrk haproxy", file=sys.stderr)
        sys.exit(2)
    caddy = subprocess.run([caddy_binary(), "version"], capture_output=True, text=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, caddy {caddy.stdout.split()[0]}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="skyloom-bench-serve-"))
    t = time.perf_counter()
    try:
        if args.only in (None, "lb"):
            bench_lb(args, tmp)
        if args.only in (None, "ready"):
            print()
            bench_ready(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal: {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
