"""Activities against the local infra: real processes, real files, no engine.

These prove what the workflow relies on: a phase starts once per node however often it is
asked to, runs detached in its own process group with SkyPilot's environment, reports how
it ended, and is killed as a whole group.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from skyloom.activities.cluster import ClusterActivities, Providers
from skyloom.activities.models import (
    ClusterRef,
    KillInput,
    Phase,
    PhaseInput,
    ProvisionInput,
    SyncInput,
    job_dir,
    log_path,
)
from skyloom.activities.providers.local import LocalProvider
from skyloom.activities.runners import LocalRunner
from temporalio.testing import ActivityEnvironment


@pytest.fixture
def acts(tmp_path: Path) -> ClusterActivities:
    return ClusterActivities(Providers({"local": LocalProvider(tmp_path / "nodes")}))


@pytest.fixture
def aenv() -> ActivityEnvironment:
    return ActivityEnvironment()


def launch(aenv, acts, n: int = 1, name: str = "c1"):
    return aenv.run(acts.provision, ProvisionInput(cluster=name, infra="local", num_nodes=n))


def phase(handle, command: str, job_id: int = 1, p: Phase = Phase.RUN, **kw) -> PhaseInput:
    return PhaseInput(
        handle=handle,
        job_id=job_id,
        phase=p,
        command=command,
        num_nodes=len(handle.nodes),
        poll_seconds=0.05,
        **kw,
    )


def run_phase(aenv, acts, inp: PhaseInput) -> list[int | None]:
    """Start the phase and wait for its ending on every rank, as the watcher sees it."""
    inp = inp.model_copy(update={"notify": inp.notify or "wf"})
    aenv.run(acts.start_phase, inp)
    return wait_codes(acts, inp)


def wait_codes(acts, inp: PhaseInput, timeout: float = 30) -> list[int | None]:
    provider = acts.providers.get("local")
    codes: dict[int, int | None] = {}
    deadline = time.monotonic() + timeout
    while len(codes) < inp.num_nodes:
        assert time.monotonic() < deadline, f"phase never ended on every rank: {codes}"
        for w in provider.sweep("local"):
            o = w.observation
            if (w.workflow_id, o.job_id, o.phase) == (inp.notify, inp.job_id, inp.phase):
                codes[o.rank] = o.exit_code
        time.sleep(0.05)
    return [codes[r] for r in range(inp.num_nodes)]


def log_of(handle, rank: int, job_id: int = 1, p: Phase = Phase.RUN) -> str:
    return Path(log_path(handle.nodes[rank], job_id, p)).read_text()


def test_launch_is_idempotent_and_terminate_removes_every_node(aenv, acts, tmp_path):
    first = launch(aenv, acts, n=2)
    again = launch(aenv, acts, n=2)
    assert first == again
    assert len(list((tmp_path / "nodes" / "c1").glob("node-*"))) == 2
    aenv.run(acts.terminate_nodes, ClusterRef(cluster="c1", infra="local", handle=first))
    assert not (tmp_path / "nodes" / "c1").exists()
    # Terminating what is gone is not an error (a retried down).
    aenv.run(acts.terminate_nodes, ClusterRef(cluster="c1", infra="local", handle=first))


def test_every_node_gets_skypilot_env_and_task_envs(aenv, acts):
    handle = launch(aenv, acts, n=2)
    aenv.run(acts.sync_files, SyncInput(handle=handle, job_id=1))
    inp = phase(
        handle,
        'python3 -c "import os, json; print(json.dumps(dict(os.environ)))"',
        envs={"LR": "0.1"},
        secrets={"TOKEN": "s3cret"},
        task_id="task-7",
        num_gpus_per_node=0,
    )
    assert run_phase(aenv, acts, inp) == [0, 0]
    for rank in (0, 1):
        env = json.loads(log_of(handle, rank))
        assert env["SKYPILOT_NODE_RANK"] == str(rank)
        assert env["SKYPILOT_NUM_NODES"] == "2"
        assert env["SKYPILOT_NODE_IPS"].splitlines() == [n.ip for n in handle.nodes]
        assert env["SKYPILOT_NUM_GPUS_PER_NODE"] == "0"
        assert env["SKYPILOT_TASK_ID"] == "task-7"
        assert json.loads(env["SKYPILOT_CLUSTER_INFO"])["num_nodes"] == 2
        assert env["LR"] == "0.1" and env["TOKEN"] == "s3cret"
        # The job runs in the synced workdir of its node.
        assert env["PWD"] == str(Path(handle.nodes[rank].root) / "sky_workdir")


def test_setup_gets_setup_variables(aenv, acts):
    handle = launch(aenv, acts, n=2)
    run_phase(aenv, acts, phase(handle, "echo rank=$SKYPILOT_SETUP_NODE_RANK", p=Phase.SETUP))
    assert log_of(handle, 1, p=Phase.SETUP).strip() == "rank=1"


def test_a_phase_started_twice_runs_once(aenv, acts):
    handle = launch(aenv, acts)
    runs = Path(handle.nodes[0].root) / "runs"
    inp = phase(handle, f"echo ran >> {runs}", notify="wf")
    aenv.run(acts.start_phase, inp)
    aenv.run(acts.start_phase, inp)  # a retry after a crash
    wait_codes(acts, inp)
    aenv.run(acts.start_phase, inp)  # even after it finished
    assert runs.read_text().splitlines() == ["ran"]


def test_job_runs_detached_in_its_own_process_group(aenv, acts):
    handle = launch(aenv, acts)
    inp = phase(handle, "sleep 30", notify="wf")
    aenv.run(acts.start_phase, inp)
    pid_file = Path(job_dir(handle.nodes[0], 1)) / "run" / "pid"
    for _ in range(100):
        if pid_file.exists():
            break
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    assert os.getpgid(pid) == pid != os.getpgid(0)
    assert os.getsid(pid) != os.getsid(0)
    aenv.run(acts.kill_job, KillInput(handle=handle, job_id=1))
    assert wait_codes(acts, inp) == [None]


def test_kill_takes_the_whole_process_group(aenv, acts, tmp_path):
    handle = launch(aenv, acts)
    child_pid = tmp_path / "child"
    inp = phase(handle, f"sleep 60 & echo $! > {child_pid}; wait")
    aenv.run(acts.start_phase, inp)
    for _ in range(100):
        if child_pid.exists() and child_pid.read_text().strip():
            break
        time.sleep(0.05)
    child = int(child_pid.read_text())
    aenv.run(acts.kill_job, KillInput(handle=handle, job_id=1))
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the job's child survived the kill")


def test_kill_before_start_means_it_never_starts(aenv, acts):
    handle = launch(aenv, acts)
    inp = phase(handle, "echo should-not-run")
    aenv.run(acts.kill_job, KillInput(handle=handle, job_id=1))
    aenv.run(acts.start_phase, inp)
    time.sleep(0.3)
    assert not Path(log_path(handle.nodes[0], 1, Phase.RUN)).exists()


def test_a_failing_rank_is_seen_alone_and_kill_job_stops_the_others(aenv, acts):
    handle = launch(aenv, acts, n=2)
    inp = phase(handle, 'if [ "$SKYPILOT_NODE_RANK" = 1 ]; then exit 3; fi; sleep 60', notify="wf")
    aenv.run(acts.start_phase, inp)
    provider = acts.providers.get("local")
    for _ in range(200):
        seen = {w.observation.rank: w.observation.exit_code for w in provider.sweep("local")}
        if 1 in seen:
            break
        time.sleep(0.05)
    assert seen == {1: 3}  # rank 0 still runs: the workflow decides to kill it
    aenv.run(acts.kill_job, KillInput(handle=handle, job_id=1))
    assert wait_codes(acts, inp)[0] in (None, 143)  # killed by the group kill


def test_workdir_sync_leaves_out_ignored_files(aenv, acts, tmp_path):
    src = tmp_path / "project"
    (src / "data").mkdir(parents=True)
    (src / "sub").mkdir()
    (src / "train.py").write_text("print('hi')\n")
    (src / "big.ckpt").write_text("x")
    (src / "data" / "keep.txt").write_text("k")
    (src / "secret.env").write_text("s")
    (src / "sub" / "cache.tmp").write_text("t")
    (src / "sub" / "code.py").write_text("c")
    (src / ".gitignore").write_text("*.ckpt\n")
    (src / "sub" / ".gitignore").write_text("*.tmp\n")
    (src / ".skyignore").write_text("secret.env\n")
    mount = tmp_path / "mount-src"
    mount.mkdir()
    (mount / "m.txt").write_text("m")
    handle = launch(aenv, acts)
    target = Path(handle.nodes[0].root) / "mnt"
    aenv.run(
        acts.sync_files,
        SyncInput(handle=handle, job_id=1, workdir=str(src), file_mounts={str(target): str(mount)}),
    )
    wd = Path(handle.nodes[0].root) / "sky_workdir"
    got = sorted(str(p.relative_to(wd)) for p in wd.rglob("*") if p.is_file())
    assert "train.py" in got and "data/keep.txt" in got and "sub/code.py" in got
    assert "big.ckpt" not in got and "secret.env" not in got and "sub/cache.tmp" not in got
    assert (target / "m.txt").read_text() == "m"


def test_runner_files_are_written_atomically_and_read_from_offsets(tmp_path):
    from skyloom.activities.models import NodeInfo

    r = LocalRunner(NodeInfo(rank=0, node_id="n", root=str(tmp_path)))
    r.put_file(str(tmp_path / "a" / "f"), "hello world", 0o600)
    assert r.read_file(str(tmp_path / "a" / "f"), 6) == b"world"
    assert oct((tmp_path / "a" / "f").stat().st_mode & 0o777) == "0o600"
    assert r.read_file(str(tmp_path / "missing")) == b""


def _age(root: Path) -> None:
    """Make every directory look untouched for a while, so the sweep trusts its memory."""
    past = time.time() - 30
    for d, _, _ in os.walk(root):
        os.utime(d, (past, past))


def _wait_for_pids(handle, p: Phase) -> None:
    for node in handle.nodes:
        pid_file = Path(job_dir(node, 1)) / p.value / "pid"
        for _ in range(200):
            if pid_file.exists():
                break
            time.sleep(0.05)


def _sweep_until(provider, want, tries: int = 100) -> set:
    for _ in range(tries):
        got = {
            (w.workflow_id, w.observation.rank, w.observation.phase, w.observation.state,
             w.observation.exit_code)
            for w in provider.sweep("local")
        }  # fmt: skip
        if want <= got:
            return got
        time.sleep(0.05)
    pytest.fail(f"the sweep never reported {want - got}; last: {got}")


def test_sweep_remembers_what_it_read_yet_sees_every_change(aenv, acts, tmp_path):
    """The watcher's sweep re-reads only directories whose mtime moved. Each way a watched
    phase changes after the sweep has cached it must still show: a new phase in a known
    job, a rank that exits, a rank killed without an exit code, a preempted node, and a
    cluster that is gone."""
    provider = acts.providers.get("local")
    handle = launch(aenv, acts, n=2, name="job-7-1")
    run_phase(aenv, acts, phase(handle, "true", p=Phase.SETUP, notify="job-7"))
    _age(tmp_path / "nodes")
    setup_done = {("job-7", r, Phase.SETUP, "exited", 0) for r in (0, 1)}
    assert _sweep_until(provider, setup_done) == setup_done

    go = tmp_path / "go"
    command = f'if [ "$SKYPILOT_NODE_RANK" = 0 ]; then while [ ! -f {go} ]; do sleep 0.05; done; exit 5; fi; sleep 60'  # noqa: E501
    aenv.run(acts.start_phase, phase(handle, command, notify="job-7"))
    _wait_for_pids(handle, Phase.RUN)
    _age(tmp_path / "nodes")
    assert _sweep_until(provider, setup_done) == setup_done  # both ranks still running

    go.touch()
    _sweep_until(provider, {("job-7", 0, Phase.RUN, "exited", 5)})
    pid = int((Path(job_dir(handle.nodes[1], 1)) / "run" / "pid").read_text())
    os.killpg(pid, 9)
    got = _sweep_until(provider, {("job-7", 1, Phase.RUN, "killed", None)})
    assert not any(state == "preempted" for *_, state, _ in got)

    _age(tmp_path / "nodes")
    provider.preempt("job-7-1")
    _sweep_until(provider, {("job-7", r, None, "preempted", None) for r in (0, 1)})

    aenv.run(acts.terminate_nodes, ClusterRef(cluster="job-7-1", infra="local", handle=handle))
    assert provider.sweep("local") == []
