"""Services end to end: real dev server, real worker with its embedded Caddy, local infra,
real HTTP replicas (a small Python server per replica), the real CLI. Requests go
through the service's endpoint, as a user's would."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from skyloom.cli.serve import service_spec
from skyloom.client.api import SkyloomClient
from skyloom.client.connection import connect, resolve_target
from skyloom.workflows.models import service_workflow_id

from tests.integration.conftest import Sky, wait_until

pytestmark = pytest.mark.integration

# A replica: answers `/` with its id and version, `/health` with 200 unless its sick
# file exists, `/slow` after a while. It listens where skyloom tells it, and notes each
# start of its server in ctl/starts.
REPLICA = """
import os, sys, time, pathlib
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

rid = os.environ["SKYPILOT_SERVE_REPLICA_ID"]
version = os.environ.get("VERSION", "1")
ctl = pathlib.Path(sys.argv[1])

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/health":
            code = 503 if (ctl / f"sick-{rid}").exists() else 200
            return self.reply(code, b"sick" if code != 200 else b"ok")
        if self.path.startswith("/slow"):
            (ctl / f"busy-{rid}").touch()
            time.sleep(float(self.path.split("=")[-1]) if "=" in self.path else 3)
        self.reply(200, f"replica={rid} version={version}".encode())
    def reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

with open(ctl / "starts", "a") as f:
    f.write(f"{rid}\\n")
print(f"replica {rid} v{version} on port {os.environ['SKYLOOM_REPLICA_PORT']}", flush=True)
ThreadingHTTPServer(("127.0.0.1", int(os.environ["SKYLOOM_REPLICA_PORT"])), H).serve_forever()
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "replica.py").write_text(REPLICA)
    (tmp_path / "ctl").mkdir()
    return tmp_path


def service_yaml(app: Path, name: str, *, version: int = 1, spot: bool = False,
                 service: str = "replicas: 2", setup: str = "true") -> Path:  # fmt: skip
    body = textwrap.dedent(f"""\
        name: {name}
        resources:
          infra: local
          ports: 8080
          use_spot: {str(spot).lower()}
        envs:
          VERSION: "{version}"
        setup: '{setup}'
        run: exec python3 {app}/replica.py {app}/ctl
        service:
          readiness_probe:
            path: /health
            initial_delay_seconds: 60
            timeout_seconds: 2
        """)
    body += textwrap.indent(textwrap.dedent(service), "  ")
    path = app / f"{name}-v{version}.yaml"
    path.write_text(body)
    return path


def get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def replica_of(answer: str) -> int:
    return int(answer.split()[0].split("=")[1])


def status(sky: Sky, name: str) -> dict:
    (svc,) = json.loads(sky.ok("serve", "status", name, "-o", "json"))
    return svc


def ready(sky: Sky, name: str) -> list[dict]:
    return [r for r in status(sky, name)["replicas"] if r["status"] == "READY"]


def has(sky: Sky, name: str, replica: int, state: str) -> bool:
    return any(r["id"] == replica and r["status"] == state for r in status(sky, name)["replicas"])


@pytest.fixture
def down(sky: Sky) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for n in names:
        sky.run("serve", "down", n, "-y", timeout=120)


def up(sky: Sky, path: Path, name: str, down: list[str]) -> str:
    down.append(name)
    out = sky.ok("serve", "up", "-y", "-n", name, str(path), timeout=120)
    assert "READY" in out, out
    endpoint = status(sky, name)["endpoint"]
    assert endpoint and endpoint in out
    return endpoint


class Load:
    """Steady requests to an endpoint from a thread; counts answers and failures.

    A GET whose connection was closed with no answer at all is sent once more, as
    browsers and Go's HTTP client do (RFC 9112 9.3.1): Caddy closes idle connections when
    its config changes, and one caught at that instant got no response from anything.
    Those are counted in `resent`; any answer that is not 200, or a second failure, is a
    failure."""

    def __init__(self, url: str, every: float = 0.01) -> None:
        self.url, self.every = url, every
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self.resent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _one(self) -> None:
        for attempt in (1, 2):
            try:
                self.answers[get(self.url)] += 1
                return
            except urllib.error.HTTPError as e:
                self.failures.append(f"{e.code} {e.reason}")
                return
            except (urllib.error.URLError, OSError) as e:
                cause = getattr(e, "reason", e)
                unanswered = isinstance(
                    cause, http.client.RemoteDisconnected | ConnectionResetError
                )
                if attempt == 1 and unanswered:
                    self.resent += 1
                    continue
                self.failures.append(str(e))
                return

    def _run(self) -> None:
        while not self.stop.is_set():
            self._one()
            time.sleep(self.every)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    @property
    def sent(self) -> int:
        return sum(self.answers.values()) + len(self.failures)


def test_round_robin_service_up_status_logs_down(sky: Sky, app: Path, down, nodes_root):
    name = "svc-rr"
    path = service_yaml(app, name, service="replicas: 2\nload_balancing_policy: round_robin")
    endpoint = up(sky, path, name, down)
    wait_until(lambda: len(ready(sky, name)) == 2, 60, "two replicas READY")
    svc = status(sky, name)
    assert svc["status"] == "READY"
    assert {(r["id"], r["version"], r["infra"], r["spot"]) for r in svc["replicas"]} == {
        (1, 1, "local", False),
        (2, 1, "local", False),
    }
    # Round robin: 40 requests, 20 each.
    seen = Counter(replica_of(get(endpoint + "/")) for _ in range(40))
    assert seen == {1: 20, 2: 20}

    table = sky.ok("serve", "status")
    assert name in table and endpoint in table
    log = sky.ok("serve", "logs", name, "1", "--no-follow")
    assert "replica 1 v1 on port" in log
    events = sky.ok("serve", "logs", name, "--no-follow")
    assert "replica 1: READY" in events and "replica 2: READY" in events

    out = sky.ok("serve", "down", name, "-y", timeout=120)
    down.remove(name)
    assert "DOWN" in out
    with pytest.raises((urllib.error.URLError, OSError)):
        get(endpoint + "/", timeout=2)
    assert not any(nodes_root.glob(f"{name}-*")), "replica clusters left behind"
    assert sky.run("serve", "status", name).returncode == 2


def test_probe_failure_leaves_rotation_and_is_replaced(sky: Sky, app: Path, down):
    name = "svc-probe"
    endpoint = up(sky, service_yaml(app, name), name, down)
    wait_until(lambda: len(ready(sky, name)) == 2, 60, "two replicas READY")
    (app / "ctl" / "sick-1").touch()
    sick_at = time.monotonic()

    # Out of rotation within 2 s: from then on, every answer comes from replica 2.
    def only_2() -> bool:
        return all(replica_of(get(endpoint + "/")) == 2 for _ in range(10))

    wait_until(only_2, 10, "replica 1 out of rotation", every=0.05)
    assert time.monotonic() - sick_at <= 2.5
    wait_until(lambda: has(sky, name, 1, "FAILED_PROBING"), 30, "replica 1 FAILED_PROBING")
    wait_until(lambda: {r["id"] for r in ready(sky, name)} == {2, 3}, 60, "replica 3 READY")
    assert Counter(replica_of(get(endpoint + "/")) for _ in range(20)).keys() <= {2, 3}


def test_killed_and_preempted_spot_replicas_are_replaced(sky: Sky, app: Path, down, nodes_root):
    name = "svc-spot"
    endpoint = up(sky, service_yaml(app, name, spot=True), name, down)
    wait_until(lambda: len(ready(sky, name)) == 2, 60, "two replicas READY")
    with Load(endpoint + "/") as load:
        # Replica 1's server is killed: its run command ended, it is FAILED and replaced.
        os.killpg(run_pid(nodes_root, f"{name}-1"), signal.SIGKILL)
        wait_until(lambda: has(sky, name, 1, "FAILED"), 30, "replica 1 FAILED")
        # Replica 2's nodes are preempted (the local infra plays spot).
        sky.ok("debug", "preempt", f"{name}-2")
        wait_until(lambda: has(sky, name, 2, "PREEMPTED"), 30, "replica 2 PREEMPTED")
        wait_until(lambda: len(ready(sky, name)) == 2, 90, "two replacements READY")
    replicas = ready(sky, name)
    assert {r["id"] for r in replicas} == {3, 4}
    assert all(r["spot"] for r in replicas)
    assert load.sent > 0


def run_pid(nodes_root: Path, cluster: str) -> int:
    """The process group of a replica's run command (the local infra's job wrapper)."""
    return int((nodes_root / cluster / "node-0" / "jobs" / "1" / "run" / "pid").read_text())


def test_least_load_prefers_the_idle_replica(sky: Sky, app: Path, down):
    name = "svc-ll"
    path = service_yaml(app, name, service="replicas: 2\nload_balancing_policy: least_load")
    endpoint = up(sky, path, name, down)
    wait_until(lambda: len(ready(sky, name)) == 2, 60, "two replicas READY")
    busy: list[int] = []
    slow = threading.Thread(target=lambda: busy.append(replica_of(get(endpoint + "/slow?s=4", 30))))
    slow.start()
    # The slow request has reached a replica and holds it.
    wait_until(lambda: list((app / "ctl").glob("busy-*")), 30, "the slow request held")
    seen = Counter(replica_of(get(endpoint + "/")) for _ in range(20))
    slow.join()
    (held,) = busy
    # Round robin would give the held replica 10 of 20; least_load sends nearly all to the
    # idle one (Caddy's least_conn was seen to send 1 or 2 of 20 to the held one under a
    # full, loaded test run).
    assert seen[held] <= 4 and seen[held] < seen.total() - seen[held], seen


def test_rolling_update_drops_no_request(sky: Sky, app: Path, down):
    name = "svc-roll"
    endpoint = up(sky, service_yaml(app, name), name, down)
    wait_until(lambda: len(ready(sky, name)) == 2, 60, "two replicas READY")
    with Load(endpoint + "/", every=0.005) as load:
        time.sleep(1)
        out = sky.ok("serve", "update", name, str(service_yaml(app, name, version=2)), "-y")
        assert "version 2" in out

        def moved() -> bool:
            rs = status(sky, name)["replicas"]
            alive = [r for r in rs if r["status"] not in ("FAILED", "PREEMPTED")
                     and not r["status"].startswith("FAILED")]  # fmt: skip
            return len(alive) == 2 and all(
                r["version"] == 2 and r["status"] == "READY" for r in alive
            )

        wait_until(moved, 90, "both replicas on version 2")
        time.sleep(1)
    versions = Counter(a.split()[1] for a in load.answers)
    print(
        f"rolling update: {load.sent} requests, {len(load.failures)} failed, "
        f"{load.resent} resent once (closed unanswered), {versions}"
    )
    assert load.failures == []
    assert versions["version=1"] > 0 and versions["version=2"] > 0
    assert all(a.endswith("version=2") for a in [get(endpoint + "/") for _ in range(10)])


def test_autoscaler_scales_up_under_load_and_down_after_the_delay(sky: Sky, app: Path, down):
    name = "svc-auto"
    policy = """\
        replica_policy:
          min_replicas: 1
          max_replicas: 2
          target_qps_per_replica: 5
          upscale_delay_seconds: 5
          downscale_delay_seconds: 10
        """
    endpoint = up(sky, service_yaml(app, name, service=textwrap.dedent(policy)), name, down)
    assert status(sky, name)["target_replicas"] == 1
    # About 20 requests a second, bounded to loopback and to this test.
    with Load(endpoint + "/", every=0.05):
        wait_until(lambda: status(sky, name)["target_replicas"] == 2, 60, "target 2")
        wait_until(lambda: len(ready(sky, name)) == 2, 60, "two replicas READY")
    wait_until(lambda: status(sky, name)["target_replicas"] == 1, 90, "target back to 1")
    wait_until(lambda: len([r for r in status(sky, name)["replicas"]
                            if r["status"] == "READY"]) == 1, 30, "one replica left")  # fmt: skip


def starts(app: Path, what: str = "starts") -> Counter[int]:
    """How many times each replica's server (or setup) was started."""
    path = app / "ctl" / what
    return Counter(int(r) for r in path.read_text().split()) if path.exists() else Counter()


# A slow setup that notes each replica it runs for: the worker is killed in the middle of
# a replica's launch.
SLOW_SETUP = "echo $SKYPILOT_SERVE_REPLICA_ID >> {ctl}/setups; sleep 3"


def clusters(nodes_root: Path, name: str) -> set[str]:
    return {p.name for p in nodes_root.glob(f"{name}-*")}


def test_worker_killed_during_scale_up_loses_and_duplicates_nothing(
    sky: Sky, app: Path, down, nodes_root
):
    name = "svc-crash-up"
    policy = """\
        replica_policy:
          min_replicas: 1
          max_replicas: 3
          target_qps_per_replica: 5
          upscale_delay_seconds: 2
          downscale_delay_seconds: 600
        """
    setup = SLOW_SETUP.format(ctl=app / "ctl")
    path = service_yaml(app, name, service=textwrap.dedent(policy), setup=setup)
    endpoint = up(sky, path, name, down)
    with Load(endpoint + "/", every=0.05) as load:
        wait_until(lambda: starts(app, "setups")[2] == 1, 60, "replica 2's setup")
        sky.kill_worker()
        print("killed at", [(r["id"], r["status"]) for r in status(sky, name)["replicas"]])
        # The load balancer outlives the worker: the endpoint keeps answering.
        time.sleep(2)
        sky.restart_worker()
        wait_until(lambda: len(ready(sky, name)) == 3, 120, "three replicas READY")
    assert load.failures == [], load.failures[:5]
    assert {r["id"] for r in status(sky, name)["replicas"]} == {1, 2, 3}
    assert clusters(nodes_root, name) == {f"{name}-1", f"{name}-2", f"{name}-3"}
    assert starts(app) == starts(app, "setups") == {1: 1, 2: 1, 3: 1}


def test_worker_killed_during_update_loses_and_duplicates_nothing(
    sky: Sky, app: Path, down, nodes_root
):
    name = "svc-crash-upd"
    setup = SLOW_SETUP.format(ctl=app / "ctl")
    endpoint = up(sky, service_yaml(app, name, setup=setup), name, down)
    wait_until(lambda: len(ready(sky, name)) == 2, 60, "two replicas READY")
    with Load(endpoint + "/", every=0.01) as load:
        new = service_yaml(app, name, version=2, setup=setup)
        sky.ok("serve", "update", name, str(new), "-y")
        wait_until(lambda: starts(app, "setups")[3] == 1, 60, "replica 3's setup")
        sky.kill_worker()
        print(
            "killed at",
            [(r["id"], r["version"], r["status"]) for r in status(sky, name)["replicas"]],
        )
        time.sleep(2)
        sky.restart_worker()

        def moved() -> bool:
            rs = status(sky, name)["replicas"]
            return len(rs) == 2 and all(r["version"] == 2 and r["status"] == "READY" for r in rs)

        wait_until(moved, 120, "both replicas on version 2")
    print(f"update across a worker kill: {load.sent} requests, {len(load.failures)} failed, "
          f"{load.resent} resent once")  # fmt: skip
    assert load.failures == [], load.failures[:5]
    assert {r["id"] for r in status(sky, name)["replicas"]} == {3, 4}
    wait_until(lambda: clusters(nodes_root, name) == {f"{name}-3", f"{name}-4"}, 30,
               "the old replicas' clusters gone")  # fmt: skip
    assert starts(app) == starts(app, "setups") == {1: 1, 2: 1, 3: 1, 4: 1}


def test_a_killed_load_balancer_is_restarted_and_resynced(sky: Sky, app: Path, down):
    name = "svc-lb-kill"
    endpoint = up(sky, service_yaml(app, name), name, down)
    wait_until(lambda: len(ready(sky, name)) == 2, 60, "two replicas READY")
    info = Path(sky.env["SKYLOOM_HOME"]) / "lb" / "caddy.json"
    pid = json.loads(info.read_text())["pid"]
    os.kill(pid, signal.SIGKILL)

    def serving() -> bool:
        try:
            return {replica_of(get(endpoint + "/", timeout=2)) for _ in range(10)} == {1, 2}
        except (urllib.error.URLError, OSError):
            return False

    # The worker starts a new Caddy and the serving loop puts the service back, on the
    # same endpoint, with the same READY replicas; nothing is relaunched.
    wait_until(serving, 30, "the endpoint back with both replicas", every=0.2)
    assert json.loads(info.read_text())["pid"] != pid
    svc = status(sky, name)
    assert svc["endpoint"] == endpoint
    assert [(r["id"], r["status"]) for r in svc["replicas"]] == [(1, "READY"), (2, "READY")]
    assert starts(app) == {1: 1, 2: 1}


def test_the_service_continues_as_new_while_serving(
    sky: Sky, app: Path, down, nodes_root, monkeypatch: pytest.MonkeyPatch
):
    """A service that lives for months continues as new; on the real engine its replicas,
    their probing and the endpoint carry on across each new run."""
    name = "svc-can"
    monkeypatch.setenv("SKYLOOM_HOME", sky.env["SKYLOOM_HOME"])
    monkeypatch.delenv("TEMPORAL_ADDRESS", raising=False)
    _, spec = service_spec(str(service_yaml(app, name)), {}, {}, {})
    tuning = {"continue_after_events": 10, "idle_report_seconds": 1}

    async def start() -> None:
        target = resolve_target(start_embedded=False)
        await SkyloomClient(await connect(target), target).serve_up(name, spec, tuning)

    async def runs() -> Counter[str]:
        client = await connect(resolve_target(start_embedded=False))
        query = f'WorkflowId = "{service_workflow_id(name)}"'
        return Counter([ex.status.name async for ex in client.list_workflows(query)])  # type: ignore[union-attr]

    down.append(name)
    asyncio.run(start())
    wait_until(lambda: len(ready(sky, name)) == 2, 60, "two replicas READY")
    endpoint = status(sky, name)["endpoint"]
    before = asyncio.run(runs())["CONTINUED_AS_NEW"]
    with Load(endpoint + "/") as load:
        wait_until(lambda: asyncio.run(runs())["CONTINUED_AS_NEW"] >= before + 3, 60,
                   "three more runs")  # fmt: skip
        # The newest run probes what the first one launched: a sick replica is replaced.
        (app / "ctl" / "sick-1").touch()
        wait_until(lambda: {r["id"] for r in ready(sky, name)} == {2, 3}, 60, "replica 3")
    print(f"across {asyncio.run(runs())}: {load.sent} requests, {len(load.failures)} failed")
    assert load.failures == [], load.failures[:5]
    assert starts(app) == {1: 1, 2: 1, 3: 1}
    wait_until(lambda: clusters(nodes_root, name) == {f"{name}-2", f"{name}-3"}, 30,
               "replica 1's cluster gone")  # fmt: skip


@pytest.mark.parametrize(
    ("service", "field"),
    [
        ("replica_policy:\n  min_replicas: 3\n  max_replicas: 1\n", "max_replicas"),
        ("readiness_probe: health\nreplicas: 1\n", "readiness_probe"),
        ("replicas: 1\nload_balancing_policy: fastest\n", "load_balancing_policy"),
        ("replicas: 1\nports: 70000\n", "ports"),
    ],
)
def test_bad_service_yaml_exits_2_naming_the_field(sky: Sky, app: Path, service: str, field: str):
    path = service_yaml(app, "svc-bad", service=service)
    p = sky.run("serve", "up", "-y", str(path))
    assert p.returncode == 2, p.stdout + p.stderr
    assert field in p.stderr and str(path.name) in p.stderr
    assert sky.run("serve", "status", "svc-bad").returncode == 2  # nothing started
