"""The engine is the only interface: clusters started by any Temporal client (the
`temporal` CLI from the venv) are first-class; a CLI with another home and only
TEMPORAL_ADDRESS does everything through the workers; there is one watcher per provider
however many workers run, and it moves when its worker dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Sky, _alive, wait_until

pytestmark = pytest.mark.integration

TEMPORAL = str(Path(sys.executable).parent / "temporal")


def temporal(sky: Sky, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TEMPORAL, *args, "--address", sky.engine()["address"]],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status_of(sky: Sky, wid: str) -> str:
    p = temporal(sky, "workflow", "describe", "-w", wid, "-o", "json")
    return json.loads(p.stdout)["workflowExecutionInfo"]["status"] if p.returncode == 0 else ""


def test_a_foreign_start_with_a_bad_name_fails_at_once_and_writes_nothing(
    sky: Sky, nodes_root: Path
):
    bad = "../../../escaped-foreign"
    p = temporal(
        sky, "workflow", "start", "--task-queue", "skyloom", "--type", "ClusterWorkflow",
        "-w", f"cluster-{bad}", "--input", json.dumps({"name": bad, "num_nodes": 1}),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr  # the engine takes it; the workflow refuses it
    wait_until(lambda: "FAILED" in status_of(sky, f"cluster-{bad}"), 30, "the workflow to fail")
    hist = temporal(sky, "workflow", "show", "-w", f"cluster-{bad}", "-o", "json").stdout
    assert "InvalidInput" in hist and "ActivityTaskScheduled" not in hist
    assert not list(nodes_root.parent.parent.parent.glob("escaped-foreign*"))
    assert not list(nodes_root.parent.glob("**/escaped-foreign*"))


def test_a_cluster_started_and_used_by_the_temporal_cli_is_first_class(sky: Sky):
    p = temporal(
        sky, "workflow", "start", "--task-queue", "skyloom", "--type", "ClusterWorkflow",
        "-w", "cluster-foreign", "--input", '{"name": "foreign", "infra": "local", "num_nodes": 1}',
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    c = wait_until(lambda: sky.clusters().get("foreign"), 30, "listed by status")
    assert c["infra"] == "local" and c["user"] == "unknown"
    p = temporal(
        sky, "workflow", "update", "execute", "-w", "cluster-foreign", "--name", "submit_job",
        "--input", '{"spec": {"run": "echo foreign-ok"}}',
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    wait_until(lambda: sky.jobs("foreign")[1]["status"] == "SUCCEEDED", 60, "the job")
    assert "foreign-ok" in sky.ok("logs", "foreign", "1", "--no-follow")
    q = temporal(sky, "workflow", "query", "-w", "cluster-foreign", "--name", "describe")
    assert q.returncode == 0 and '"SUCCEEDED"' in q.stdout
    # A person scanning the web UI sees what it is: the workflow's one-line summary.
    meta = temporal(sky, "workflow", "metadata", "-w", "cluster-foreign")
    assert "UP · local · 1 node · job 1 SUCCEEDED" in meta.stdout, meta.stdout
    sky.ok("down", "-y", "foreign")


@pytest.fixture
def remote(sky: Sky, tmp_path: Path) -> Sky:
    """A CLI on 'another machine': its own home (no node, pool or log files), only the
    engine's address and the shared secrets key."""
    worker_home = Path(sky.env["SKYLOOM_HOME"])
    home = tmp_path / "laptop"
    home.mkdir()
    env = {
        **sky.env,
        "HOME": str(home),
        "SKYLOOM_HOME": str(home / ".skyloom"),
        "TEMPORAL_ADDRESS": sky.engine()["address"],
        "SKYLOOM_SECRETS_KEY": (worker_home / "secrets.key").read_text().strip(),
    }
    return Sky(sky.bin, env)


def test_a_cli_with_only_the_engine_does_everything_through_the_workers(
    sky: Sky, remote: Sky, tmp_path: Path
):
    out = remote.ok("launch", "-y", "-c", "remote1", "echo remote-run-ok")
    assert "remote-run-ok" in out
    assert remote.jobs("remote1")[1]["status"] == "SUCCEEDED"
    assert "remote-run-ok" in remote.ok("logs", "remote1", "1", "--no-follow")
    out = remote.ok("jobs", "launch", "-y", "-n", "rjob", "echo managed-remote-ok")
    assert "managed-remote-ok" in out
    job = max(j["id"] for j in json.loads(remote.ok("jobs", "queue", "-o", "json")))
    assert "managed-remote-ok" in remote.ok("jobs", "logs", str(job), "--no-follow")
    check = remote.ok("check")
    assert "Checked by worker" in check and "local: enabled" in check
    remote.ok("down", "-y", "remote1")
    home = Path(remote.env["SKYLOOM_HOME"])
    assert not (home / "local").exists() and not (home / "job_logs").exists()


def test_local_files_the_worker_cannot_see_fail_the_job_saying_so(sky: Sky, remote: Sky):
    """What a CLI on a laptop sends for its workdir is a path on the laptop; a worker
    elsewhere cannot read it (uploads come later): the job says so."""
    remote.ok("launch", "-y", "-c", "remote2", "echo up")
    laptop_path = "/nonexistent/laptop/proj"
    p = temporal(
        sky, "workflow", "update", "execute", "-w", "cluster-remote2", "--name", "submit_job",
        "--input", json.dumps({"spec": {"run": "ls", "workdir": laptop_path}}),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    job = wait_until(lambda: (j := remote.jobs("remote2")[2])["status"] == "FAILED" and j, 60, "")
    assert laptop_path in job["reason"] and "does not exist on the worker" in job["reason"]
    assert "cannot send its own files yet" in job["reason"]
    remote.ok("down", "-y", "remote2")


def _pending_watch(sky: Sky, key: str) -> list[dict]:
    p = temporal(sky, "workflow", "describe", "-w", f"skyloom-watch-{key}", "-o", "json")
    return json.loads(p.stdout).get("pendingActivities", []) if p.returncode == 0 else []


def test_one_watcher_per_provider_however_many_workers_and_it_moves(sky: Sky, tmp_path: Path):
    second = subprocess.Popen(
        [sky.bin, "worker"],
        env={**sky.env, "TEMPORAL_ADDRESS": sky.engine()["address"]},
        stdout=(tmp_path / "second.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: "worker polling" in (tmp_path / "second.log").read_text(), 60, "second worker"
        )
        for key in ("local", "ssh"):
            pending = wait_until(lambda k=key: _pending_watch(sky, k), 30, f"watcher {key}")
            assert len(pending) == 1  # one activity sweeps each provider
        first = _pending_watch(sky, "local")[0].get("lastWorkerIdentity")
        # Kill the worker that runs the local watcher; the other takes the watch over.
        if str(first).startswith(f"{second.pid}@"):
            os.kill(second.pid, signal.SIGKILL)
            second.wait()
        else:
            sky.kill_worker()

        def moved() -> bool:
            now = _pending_watch(sky, "local")
            return (
                len(now) == 1
                and now[0].get("state") == "PENDING_ACTIVITY_STATE_STARTED"
                and now[0].get("lastWorkerIdentity") != first
            )

        wait_until(moved, 60, "the local watcher to move to the other worker")
        # Jobs are still woken by it (their own look would come only after 30 minutes).
        out = sky.ok("jobs", "launch", "-y", "-n", "after-move", "echo after-move-ok")
        assert "after-move-ok" in out
    finally:
        if second.poll() is None:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
        if not _alive(sky.engine()["worker_pid"] or 0):
            sky.restart_worker()
