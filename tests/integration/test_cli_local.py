"""The CLI end to end on the embedded engine and the local infra."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import Sky, _alive, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_hello_example_streams_setup_and_run_and_links_the_ui(sky: Sky, name: str):
    p = sky.run("launch", "-y", "-c", name, "hello.yaml", cwd=REPO / "examples")
    assert p.returncode == 0, p.stderr
    assert "setup on node 0" in p.stdout
    assert "hello from node 0 of 1" in p.stdout
    assert "hello.yaml" in p.stdout  # `ls` ran in the synced workdir
    ui = sky.engine()["ui_url"]
    assert f"{ui}/namespaces/default/workflows/cluster-{name}" in p.stdout + p.stderr
    assert sky.clusters()[name]["status"] == "UP"
    assert sky.jobs(name)[1]["status"] == "SUCCEEDED"


def test_two_nodes_get_ranks_ips_and_the_task_env(sky: Sky, name: str, tmp_path: Path):
    run = (
        'echo "rank=$SKYPILOT_NODE_RANK n=$SKYPILOT_NUM_NODES model=$MODEL flag=$FLAG '
        'ips=$(echo $SKYPILOT_NODE_IPS | wc -w) secret=$TOKEN"'
    )
    task = write(tmp_path / "t.yaml", f"num_nodes: 2\nenvs: {{MODEL: llama}}\nrun: {run}\n")
    out = sky.ok("launch", "-y", "-c", name, str(task), "--env", "FLAG=on", "--secret", "TOKEN=t0p")
    assert "rank=0 n=2 model=llama flag=on ips=2 secret=t0p" in out
    rank1 = sky.ok("logs", name, "1", "--no-follow", "--node-rank", "1")
    assert "rank=1 n=2 model=llama flag=on ips=2" in rank1
    c = sky.clusters()[name]
    assert c["num_nodes"] == 2 and c["infra"] == "local"
    # Secrets are never shown by the engine's queries.
    assert "t0p" not in sky.ok("queue", name, "-o", "json")


def test_workdir_is_synced_without_ignored_files(sky: Sky, name: str, tmp_path: Path):
    proj = tmp_path / "proj"
    write(proj / "train.py", "print('x')\n")
    write(proj / "model.ckpt", "big")
    write(proj / "notes.txt", "private")
    write(proj / ".gitignore", "*.ckpt\n")
    write(proj / ".skyignore", "notes.txt\n")
    write(proj / "task.yaml", "workdir: .\nrun: ls -a | sort | tr '\\n' ' '\n")
    out = sky.ok("launch", "-y", "-c", name, str(proj / "task.yaml"))
    listed = out.split()
    assert "train.py" in listed and "task.yaml" in listed
    assert "model.ckpt" not in listed and "notes.txt" not in listed


def test_failed_job_exits_1_with_its_log_tail(sky: Sky, name: str):
    p = sky.run("launch", "-y", "-c", name, "echo about-to-fail; exit 7")
    assert p.returncode == 1
    assert "about-to-fail" in p.stdout + p.stderr
    job = sky.jobs(name)[1]
    assert job["status"] == "FAILED" and job["exit_code"] == 7


def test_failed_setup_is_failed_setup_and_run_never_runs(sky: Sky, name: str, tmp_path: Path):
    task = write(tmp_path / "t.yaml", "setup: exit 4\nrun: touch " + str(tmp_path / "ran") + "\n")
    assert sky.run("launch", "-y", "-c", name, str(task)).returncode == 1
    assert sky.jobs(name)[1]["status"] == "FAILED_SETUP"
    assert not (tmp_path / "ran").exists()


def test_bad_yaml_exits_2_naming_file_and_field_and_starts_nothing(sky: Sky, tmp_path: Path):
    task = write(tmp_path / "bad.yaml", "name: x\nresources:\n  cpu: 4\nrun: echo\n")
    before = sky.clusters()
    p = sky.run("launch", "-y", "-c", "never", str(task))
    assert p.returncode == 2
    assert "bad.yaml" in p.stderr and "resources.cpu" in p.stderr and "cpus" in p.stderr
    assert sky.clusters() == before
    v = sky.run("validate", str(task))
    assert v.returncode == 2 and "resources.cpu" in v.stderr
    good = write(tmp_path / "good.yaml", "run: echo hi\n")
    assert sky.run("validate", str(good)).returncode == 0


def test_bad_flags_exit_2(sky: Sky):
    assert sky.run("launch", "-y", "-c", "x", "--env", "1BAD=v", "echo").returncode == 2
    assert sky.run("launch", "-y", "-c", "x", "--num-nodes", "0", "echo").returncode == 2
    assert sky.run("launch", "-y", "-c", "x", "--infra", "nowhere", "echo").returncode == 2
    assert sky.run("queue", "no-such-cluster").returncode == 2


@pytest.mark.parametrize(
    "flags,named",
    [
        (["-i", "-5"], "'-i'"),
        (["--cpus", "0"], "--cpus"),
        (["--memory", "0"], "--memory"),
        (["--infra", "local/zone/extra"], "--infra"),
        (["--num-nodes", "99999"], "--num-nodes"),
        (["--gpus", "A100:0"], "--gpus"),
        (["-c", "../../../tmp/x"], "-c/--cluster"),
        (["-c", "Bad Name!"], "-c/--cluster"),
    ],
)
def test_flags_get_the_yaml_checks_and_errors_name_the_flag(sky: Sky, flags, named):
    before = sky.clusters()
    p = sky.run("launch", "--dryrun", "-y", *flags, "echo hi")
    assert p.returncode == 2, p.stdout + p.stderr
    assert named in p.stderr and "Traceback" not in p.stderr
    assert sky.clusters() == before


def test_the_local_infra_states_its_node_limit(sky: Sky):
    p = sky.run("launch", "--dryrun", "--num-nodes", "99999", "echo hi")
    assert p.returncode == 2 and "the local infra runs at most 32 nodes" in p.stderr


def test_a_name_escaping_the_state_dir_is_refused_and_nothing_is_written(
    sky: Sky, tmp_path: Path, nodes_root: Path
):
    marker = nodes_root.parent.parent / "marker"
    p = sky.run("launch", "-y", "-c", "../../x", "echo pwned > marker", cwd=tmp_path)
    assert p.returncode == 2 and "not a valid name" in p.stderr
    assert not marker.exists() and not (nodes_root.parent / "x").exists()
    assert sky.run("jobs", "launch", "-y", "-n", "../x", "echo").returncode == 2


def test_an_env_declared_without_a_value_needs_one(sky: Sky, name: str, tmp_path: Path):
    task = write(tmp_path / "t.yaml", "envs:\n  HF_TOKEN:\nrun: echo token=$HF_TOKEN\n")
    p = sky.run("launch", "-y", "-c", name, str(task))
    assert p.returncode == 2 and "envs.HF_TOKEN" in p.stderr and "--env" in p.stderr
    out = sky.ok("launch", "-y", "-c", name, str(task), "--env", "HF_TOKEN=hf_x")
    assert "token=hf_x" in out


def test_unreachable_engine_exits_3_with_what_to_do(sky: Sky):
    p = sky.run("status", TEMPORAL_ADDRESS="127.0.0.1:9", timeout=60)
    assert p.returncode == 3
    assert "127.0.0.1:9" in p.stderr and "TEMPORAL_ADDRESS" in p.stderr


def test_exec_queues_jobs_without_rerunning_setup(sky: Sky, name: str, tmp_path: Path):
    setups = tmp_path / "setups"
    task = write(tmp_path / "t.yaml", f"setup: echo s >> {setups}\nrun: echo first\n")
    sky.ok("launch", "-y", "-c", name, str(task))
    assert "second" in sky.ok("exec", name, "echo second")
    assert "third" in sky.ok("exec", name, str(write(tmp_path / "e.yaml", "run: echo third\n")))
    assert setups.read_text().splitlines() == ["s"]
    jobs = sky.jobs(name)
    assert [jobs[i]["status"] for i in (1, 2, 3)] == ["SUCCEEDED"] * 3
    assert {"id", "name", "status"} <= set(jobs[1])


def test_cancel_kills_the_running_job_and_drops_pending_ones(sky: Sky, name: str, tmp_path: Path):
    pidfile = tmp_path / "pid"
    sky.ok("launch", "-y", "-d", "-c", name, f"echo $$ > {pidfile}; sleep 300")
    sky.ok("exec", "-d", name, "echo never")
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 60, "job to start")
    pid = int(pidfile.read_text())
    sky.ok("cancel", "-y", name, "1", "2")
    wait_until(lambda: not _alive(pid), 30, "the job process to die")
    jobs = sky.jobs(name)
    assert jobs[1]["status"] == "CANCELLED" and jobs[2]["status"] == "CANCELLED"
    # The cluster takes new work afterwards.
    assert "after" in sky.ok("exec", name, "echo after")


def test_logs_of_a_finished_job_and_tail(sky: Sky, name: str):
    sky.ok("launch", "-y", "-c", name, "for i in 1 2 3 4 5; do echo line$i; done")
    full = sky.ok("logs", name, "--no-follow")
    assert all(f"line{i}" in full for i in range(1, 6))
    tail = sky.ok("logs", name, "1", "--no-follow", "--tail", "2")
    assert "line5" in tail and "line1" not in tail


def test_detached_launch_then_logs_follow_until_the_end(sky: Sky, name: str):
    sky.ok("launch", "-y", "-d", "-c", name, "echo begin; sleep 2; echo end")
    out = sky.ok("logs", name, "1")
    assert "begin" in out and "end" in out


def test_stop_start_down_leave_nothing_behind(sky: Sky, name: str, nodes_root: Path):
    sky.ok("launch", "-y", "-c", name, "--num-nodes", "2", "echo up")
    assert sorted(p.name for p in (nodes_root / name).iterdir()) == ["node-0", "node-1"]
    sky.ok("stop", "-y", name)
    assert sky.clusters()[name]["status"] == "STOPPED"
    assert sky.run("exec", name, "echo no").returncode == 2
    sky.ok("start", "-y", name)
    assert sky.clusters()[name]["status"] == "UP"
    assert "again" in sky.ok("exec", name, "echo again")
    sky.ok("down", "-y", name)
    assert not (nodes_root / name).exists()
    wait_until(lambda: name not in sky.clusters(), 30, "the cluster to leave status")


def test_down_cancels_a_running_job(sky: Sky, name: str, tmp_path: Path, nodes_root: Path):
    pidfile = tmp_path / "pid"
    sky.ok("launch", "-y", "-d", "-c", name, f"echo $$ > {pidfile}; sleep 300")
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 60, "job to start")
    sky.ok("down", "-y", name)
    assert not _alive(int(pidfile.read_text()))
    assert not (nodes_root / name).exists()


def test_autostop_down_is_a_timer_in_the_workflow(sky: Sky, name: str, nodes_root: Path):
    sky.ok("launch", "-y", "-c", name, "echo idle-soon")
    sky.ok("autostop", name, "-i", "0", "--down")
    wait_until(lambda: not (nodes_root / name).exists(), 60, "autostop to tear down")
    wait_until(lambda: name not in sky.clusters(), 30, "the cluster to leave status")


def test_launch_down_flag_tears_down_after_the_job(sky: Sky, name: str, nodes_root: Path):
    sky.ok("launch", "-y", "--down", "-c", name, "echo once")
    wait_until(lambda: not (nodes_root / name).exists(), 60, "--down to tear down")


def test_dryrun_starts_nothing(sky: Sky, name: str):
    p = sky.run("launch", "--dryrun", "-c", name, "echo hi")
    assert p.returncode == 0
    assert name not in sky.clusters()


def test_dryrun_plan_as_json_and_no_infra_is_local_without_clouds(sky: Sky, name: str):
    # The test worker has no cloud credentials: no infra means the local machine.
    plan = json.loads(sky.ok("launch", "--dryrun", "-o", "json", "-c", name, "--cpus", "1+", "x"))
    assert plan["cluster"] == name
    (row,) = plan["plan"]
    assert set(row) == {
        "infra", "instance_type", "vcpus", "memory_gb", "accelerators", "spot", "price_per_hour"
    }  # fmt: skip
    assert (row["infra"], row["price_per_hour"], row["spot"]) == ("local", 0.0, False)
    p = sky.run("launch", "-o", "json", "-c", name, "echo hi")
    assert p.returncode == 2 and "only with --dryrun" in p.stderr
    assert name not in sky.clusters()


def test_check_says_why_each_cloud_is_disabled(sky: Sky):
    report = json.loads(sky.ok("check", "-o", "json"))
    by = {r["infra"]: r for r in report["infras"]}
    for cloud in ("aws", "gcp", "azure"):
        assert by[cloud]["enabled"] is False and "credentials" in by[cloud]["reason"]
    assert "aws" not in report["not_supported_yet"]


def test_show_gpus_lists_the_catalog_through_the_worker(sky: Sky):
    rows = json.loads(sky.ok("show-gpus", "A100:8", "--infra", "aws", "-o", "json"))
    assert rows and all(r["accelerator"] == "A100" and r["count"] == 8 for r in rows)
    assert {r["instance_type"] for r in rows} == {"p4d.24xlarge"}
    assert all(r["infra"].startswith("aws/") and r["price_per_hour"] > 0 for r in rows)
    assert all(r["enabled"] is False for r in rows)  # no credentials on the test worker
    table = sky.ok("show-gpus")
    assert "A100" in table and "H100" in table and "aws, azure, gcp" in table
    p = sky.run("show-gpus", "A1OO")
    assert p.returncode == 2 and "no such GPU" in p.stderr and "A100" in p.stderr
    p = sky.run("show-gpus", "A100", "--infra", "lambda")
    assert p.returncode == 2 and "--infra" in p.stderr


def test_engine_status_and_start_revives_a_dead_worker(sky: Sky):
    st = sky.engine()
    assert {"address", "ui_url", "server_pid", "worker_pid"} <= set(st)
    old = sky.kill_worker()
    sky.restart_worker()
    new = sky.engine()["worker_pid"]
    assert new != old and _alive(new)
    assert sky.engine()["server_pid"] == st["server_pid"]


def test_schema_and_help(sky: Sky):
    import json

    assert "resources" in json.loads(sky.ok("schema"))["properties"]
    assert "launch" in sky.ok("--help")
    assert os.path.exists(sky.bin)


def test_secrets_are_encrypted_in_workflow_history(sky: Sky, name: str):
    import asyncio

    from temporalio.client import Client

    out = sky.ok("launch", "-y", "-c", name, "--secret", "TOKEN=t0p-s3cret", "echo got=$TOKEN")
    assert "got=t0p-s3cret" in out  # the job had it

    async def raw_history() -> str:
        # A client without our codec sees what the server stores.
        client = await Client.connect(sky.engine()["address"])
        history = await client.get_workflow_handle(f"cluster-{name}").fetch_history()
        return "\n".join(str(e) for e in history.events)  # payload bytes shown escaped

    stored = asyncio.run(raw_history())
    assert "binary/skyloom-aesgcm" in stored
    assert "t0p-s3cret" not in stored and "dDBwLXMzY3JldA" not in stored  # nor base64
