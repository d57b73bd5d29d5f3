"""Managed jobs end to end: real dev server, real worker (with its shared watcher), local
infra with simulated spot preemption, the real CLI."""

from __future__ import annotations

import json
import random
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.conftest import Sky, _alive, wait_until

pytestmark = pytest.mark.integration


def jobs(sky: Sky) -> dict[int, dict]:
    return {j["id"]: j for j in json.loads(sky.ok("jobs", "queue", "-o", "json"))}


def launch(sky: Sky, path: Path, *args: str) -> int:
    out = sky.ok("jobs", "launch", "-d", "-y", *args, str(path))
    return int(out.split("Managed job ")[-1].split()[0])


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def counting_job(tmp_path: Path, name: str, steps: int, setup: bool = False) -> Path:
    """Counts to `steps`, one per 0.2 s, checkpointing to a file named by the task id."""
    ck = tmp_path / "ckpt"
    ck.mkdir(exist_ok=True)
    lines = [f"name: {name}", "resources:", "  use_spot: true"]
    if setup:
        # One line per (cluster, node) that ran setup: the node's directory.
        lines.append(f'setup: echo "$SKYLOOM_CWD" >> {tmp_path}/setups')
    lines += [
        "run: |",
        f"  f={ck}/$SKYPILOT_TASK_ID",
        "  i=$(cat $f 2>/dev/null || echo 0)",
        f'  echo "start:$i job:$SKYPILOT_MANAGED_JOB_ID" >> {tmp_path}/{name}.starts',
        f"  while [ $i -lt {steps} ]; do i=$((i+1)); echo $i > $f; sleep 0.2; done",
        "  echo finished-at-$i",
    ]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_spot_job_preempted_twice_resumes_its_checkpoint(sky: Sky, tmp_path: Path, nodes_root):
    job = launch(sky, counting_job(tmp_path, "twice", 60))
    starts = tmp_path / "twice.starts"
    for n in (1, 2):
        wait_until(lambda n=n: starts.exists() and len(starts.read_text().split("\n")) > n, 60,
                   f"attempt {n} running")  # fmt: skip
        time.sleep(1.5)
        cluster = jobs(sky)[job]["cluster"]
        t = time.monotonic()
        sky.ok("debug", "preempt", cluster)
        wait_until(lambda n=n: jobs(sky)[job]["recovery_count"] == n, 30, f"recovery {n}")
        assert time.monotonic() - t < 30
    final = wait_until(lambda: (j := jobs(sky)[job])["status"] == "SUCCEEDED" and j, 120,
                       "success")  # fmt: skip
    assert final["recovery_count"] == 2
    begun = [int(line.split()[0].split(":")[1]) for line in starts.read_text().splitlines()]
    assert begun[0] == 0 and 0 < begun[1] < begun[2] < 60  # resumed, never from scratch
    assert all(f"job:{job}" in line for line in starts.read_text().splitlines())
    # Every cluster of the job is gone; its output is kept.
    wait_until(lambda: not list(nodes_root.glob(f"job-{job}-*")), 30, "clusters removed")
    assert "finished-at-60" in sky.ok("jobs", "logs", str(job), "--no-follow")


def test_cancel_mid_run_terminates_the_cluster(sky: Sky, tmp_path: Path, nodes_root):
    job = launch(sky, counting_job(tmp_path, "stopme", 1000))
    starts = tmp_path / "stopme.starts"
    wait_until(starts.exists, 60, "running")
    pid_file = next(nodes_root.glob(f"job-{job}-*/node-0/jobs/1/run/pid"))
    pid = int(pid_file.read_text())
    # `status` counts managed jobs in progress, as SkyPilot does (their clusters are theirs).
    wait_until(lambda: "Managed jobs in progress: 1 RUNNING" in sky.ok("status"), 30,
               "status to count the job")  # fmt: skip
    sky.ok("jobs", "cancel", "-y", str(job))
    wait_until(lambda: jobs(sky)[job]["status"] == "CANCELLED", 60, "cancelled")
    wait_until(lambda: not _alive(pid), 20, "the job's process to die")
    assert not list(nodes_root.glob(f"job-{job}-*"))


def test_pipeline_runs_its_tasks_in_order(sky: Sky, tmp_path: Path):
    out = tmp_path / "order"
    p = write(
        tmp_path / "pipe.yaml",
        f"""\
        name: pipe
        ---
        name: first
        run: echo first >> {out}
        ---
        name: second
        run: echo second >> {out}
        """,
    )
    job = launch(sky, p)
    wait_until(lambda: jobs(sky)[job]["status"] == "SUCCEEDED", 90, "pipeline done")
    assert out.read_text().split() == ["first", "second"]
    assert jobs(sky)[job]["name"] == "pipe"


def test_two_node_job_keeps_each_ranks_output(sky: Sky, tmp_path: Path):
    p = write(
        tmp_path / "two.yaml",
        """\
        num_nodes: 2
        run: echo "hello from rank $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES"
        """,
    )
    job = launch(sky, p)
    wait_until(lambda: jobs(sky)[job]["status"] == "SUCCEEDED", 90, "done")
    for rank in (0, 1):
        out = sky.ok("jobs", "logs", str(job), "--no-follow", "--node-rank", str(rank))
        assert f"hello from rank {rank} of 2" in out
    bad = sky.run("jobs", "logs", str(job), "--no-follow", "--node-rank", "2")
    assert bad.returncode == 2 and "--node-rank 2" in bad.stderr and "2 node(s)" in bad.stderr


def test_user_failure_is_retried_only_as_configured(sky: Sky, tmp_path: Path):
    runs = tmp_path / "runs"
    p = write(
        tmp_path / "fail.yaml",
        f"""\
        resources:
          job_recovery:
            max_restarts_on_errors: 1
        run: echo x >> {runs}; exit 3
        """,
    )
    job = launch(sky, p)
    j = wait_until(lambda: (j := jobs(sky)[job])["status"] == "FAILED" and j, 90, "failed")
    assert len(runs.read_text().split()) == 2
    assert "exit code 3" in j["reason"]


def test_worker_killed_mid_job_is_not_a_failure(sky: Sky, tmp_path: Path):
    job = launch(sky, counting_job(tmp_path, "crash", 25))
    starts = tmp_path / "crash.starts"
    wait_until(starts.exists, 60, "running")
    sky.kill_worker()
    time.sleep(1)
    sky.restart_worker()
    j = wait_until(lambda: (j := jobs(sky)[job])["status"] == "SUCCEEDED" and j, 90, "success")
    assert j["recovery_count"] == 0
    assert len(starts.read_text().splitlines()) == 1  # the job ran once


def test_chaos_worker_kills_and_preemptions_across_a_batch(sky: Sky, tmp_path: Path, nodes_root):
    """Worker kill -9 at random moments and random preemptions across a batch of spot jobs
    with setup: every job succeeds, no node is left, setup never ran twice on a node."""
    rng = random.Random(20261123)
    ids = [launch(sky, counting_job(tmp_path, f"chaos{i}", 100, setup=True)) for i in range(6)]
    kills = preemptions = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = jobs(sky)
        live = [i for i in ids if state[i]["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED")]
        if not live:
            break
        if rng.random() < 0.3:
            sky.kill_worker()
            time.sleep(rng.uniform(0, 1.5))
            sky.restart_worker()
            kills += 1
        victim = state[rng.choice(live)]
        # Preempted mid-run (its checkpoint says it is far from done), a job recovers; one
        # preempted after its run exited 0 is done and must not (tested on its own).
        progress = tmp_path / "ckpt" / f"skyloom-job-{victim['id']}-0"
        far_from_done = progress.exists() and int(progress.read_text() or 0) < 80
        if (
            victim["status"] == "RUNNING"
            and victim["cluster"]
            and far_from_done
            and rng.random() < 0.7
            and sky.run("debug", "preempt", victim["cluster"]).returncode == 0
        ):
            preemptions += 1
        time.sleep(rng.uniform(0.5, 2.5))
    state = jobs(sky)
    assert {state[i]["status"] for i in ids} == {"SUCCEEDED"}, state
    setups = Counter((tmp_path / "setups").read_text().split())
    assert setups and max(setups.values()) == 1, setups  # once per node (= per cluster)
    wait_until(lambda: not list(nodes_root.glob("job-*")), 30, "no job cluster left")
    recoveries = sum(state[i]["recovery_count"] for i in ids)
    print(f"chaos: {len(ids)} jobs, {kills} worker kills, {preemptions} preemptions, "
          f"{recoveries} recoveries, {sum(setups.values())} setups")  # fmt: skip
    assert kills > 0 and preemptions > 0 and recoveries >= 1


def test_a_run_that_exited_0_is_done_even_if_its_node_is_preempted_right_after(
    sky: Sky, tmp_path: Path
):
    """The run finishes and its node is reclaimed at the same moment (the job marks its
    own node preempted as its last act, as a spot reclaim landing then would): the
    watcher sees both in one sweep. The job is done; it must not run again."""
    runs = tmp_path / "runs"
    p = write(
        tmp_path / "last.yaml",
        f"""\
        name: lastbreath
        resources:
          use_spot: true
        run: |
          echo ran >> {runs}
          touch "$SKYLOOM_CWD/../preempted"
        """,
    )
    job = launch(sky, p)
    ended = ("SUCCEEDED", "FAILED", "CANCELLED", "FAILED_NO_RESOURCE")
    j = wait_until(lambda: (j := jobs(sky)[job])["status"] in ended and j, 90, "the job to end")
    assert j["status"] == "SUCCEEDED" and j["recovery_count"] == 0
    assert runs.read_text().splitlines() == ["ran"]
