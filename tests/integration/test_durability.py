"""kill -9 of the worker at each moment of a cluster's life, then a restart: the end is the
same as without the crash. Real dev server, real worker subprocess, real SIGKILL."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Sky, _alive, wait_until

pytestmark = pytest.mark.integration


def count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def task(tmp_path: Path, setup: str, run: str, num_nodes: int = 1) -> Path:
    p = tmp_path / "task.yaml"
    p.write_text(f"num_nodes: {num_nodes}\nsetup: |\n  {setup}\nrun: |\n  {run}\n")
    return p


def test_worker_killed_during_setup(sky: Sky, name: str, tmp_path: Path):
    setups, runs = tmp_path / "setups", tmp_path / "runs"
    t = task(
        tmp_path,
        f"echo $SKYPILOT_SETUP_NODE_RANK >> {setups}; sleep 4",
        f"echo $SKYPILOT_NODE_RANK >> {runs}",
        num_nodes=2,
    )
    sky.ok("launch", "-y", "-d", "-c", name, str(t))
    wait_until(lambda: count(setups) == 2, 60, "setup to start on both nodes")
    sky.kill_worker()
    sky.restart_worker()
    wait_until(lambda: sky.jobs(name)[1]["status"] == "SUCCEEDED", 120, "the job to succeed")
    assert sorted(setups.read_text().split()) == ["0", "1"]
    assert sorted(runs.read_text().split()) == ["0", "1"]


def test_worker_killed_during_run(sky: Sky, name: str, tmp_path: Path):
    setups, starts, ends = tmp_path / "setups", tmp_path / "starts", tmp_path / "ends"
    t = task(tmp_path, f"echo s >> {setups}", f"echo r >> {starts}; sleep 5; echo e >> {ends}")
    sky.ok("launch", "-y", "-d", "-c", name, str(t))
    wait_until(lambda: count(starts) == 1, 60, "the run to start")
    sky.kill_worker()
    time.sleep(1)
    sky.restart_worker()
    # `logs` follows to the end across the crash and reports success.
    out = sky.ok("logs", name, "1", timeout=120)
    assert "Job 1 SUCCEEDED" in out or sky.jobs(name)[1]["status"] == "SUCCEEDED"
    assert (count(setups), count(starts), count(ends)) == (1, 1, 1)


def test_worker_killed_right_after_launch_is_accepted(sky: Sky, name: str, tmp_path: Path):
    marks = tmp_path / "marks"
    sky.ok("launch", "-y", "-d", "-c", name, "--num-nodes", "2", f"echo x >> {marks}")
    sky.kill_worker()
    sky.restart_worker()
    wait_until(lambda: sky.jobs(name)[1]["status"] == "SUCCEEDED", 120, "the job to succeed")
    assert count(marks) == 2
    assert sky.clusters()[name]["num_nodes"] == 2


def test_launch_with_a_dead_worker_revives_it_and_runs_once(
    sky: Sky, name: str, tmp_path: Path, nodes_root: Path
):
    marks = tmp_path / "marks"
    dead = sky.kill_worker()
    # The CLI ensures the embedded engine before it submits: the worker comes back.
    sky.ok("launch", "-y", "-c", name, f"echo x >> {marks}")
    assert sky.engine()["worker_pid"] != dead
    assert count(marks) == 1
    assert len(list((nodes_root / name).glob("node-*"))) == 1


def test_worker_killed_during_down_still_removes_every_node(
    sky: Sky, name: str, tmp_path: Path, nodes_root: Path
):
    pidfile = tmp_path / "pid"
    # The job ignores SIGTERM, so down spends seconds in its kill: a window to crash in.
    sky.ok(
        "launch", "-y", "-d", "-c", name, "--num-nodes", "2",
        f"trap '' TERM; echo $$ >> {pidfile}; sleep 300",
    )  # fmt: skip
    wait_until(lambda: count(pidfile) == 2, 60, "the job to start on both nodes")
    pids = [int(p) for p in pidfile.read_text().split()]
    down = subprocess.Popen(
        [sky.bin, "down", "-y", name], env=sky.env, stdout=subprocess.PIPE, text=True
    )
    time.sleep(1.5)
    sky.kill_worker()
    sky.restart_worker()
    out, _ = down.communicate(timeout=120)
    assert down.returncode == 0, out
    assert not any(_alive(p) for p in pids)
    assert not (nodes_root / name).exists()
    wait_until(lambda: name not in sky.clusters(), 30, "the cluster to leave status")
