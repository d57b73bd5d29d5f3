"""Activities a client reaches only through workers (plan, read logs, check, preempt), and
the provider contract on the local infra: offers, limits stated as data, names checked
before they touch a path, owners never adopted across namesakes."""

from __future__ import annotations

from pathlib import Path

import pytest
from skyloom.activities.cluster import ClusterActivities, Providers
from skyloom.activities.errors import ErrorKind, where_of
from skyloom.activities.models import (
    Candidate,
    Capability,
    CheckInput,
    ClusterRef,
    LogsInput,
    NodeState,
    ObserveInput,
    Phase,
    PhaseInput,
    PhaseState,
    PlanInput,
    PreemptInput,
    ProvisionInput,
    SavedLogsInput,
    SaveLogsInput,
    SyncInput,
    log_path,
)
from skyloom.activities.providers import local
from skyloom.activities.providers.local import LocalProvider
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment


@pytest.fixture
def acts(tmp_path: Path) -> ClusterActivities:
    return ClusterActivities(
        Providers({"local": LocalProvider(tmp_path / "nodes")}), logs_dir=tmp_path / "logs"
    )


@pytest.fixture
def aenv() -> ActivityEnvironment:
    return ActivityEnvironment()


def plan(aenv, acts, *cands: Candidate, n: int = 1):
    return aenv.run(acts.plan_launch, PlanInput(cluster="c", num_nodes=n, candidates=list(cands)))


def test_local_offers_a_free_node_with_its_capabilities(aenv, acts):
    (p,) = plan(aenv, acts, Candidate(infra="local")).candidates
    assert p.error_kind is None and len(p.offers) == 1
    offer = p.offers[0]
    assert (offer.infra, offer.price_per_hour, offer.max_nodes) == ("local", 0.0, local.MAX_NODES)
    assert Capability.STOP in offer.capabilities and Capability.SPOT in offer.capabilities


def test_plan_states_what_can_never_fit_as_data(aenv, acts):
    cands = [
        Candidate(infra="local", resources={"accelerators": {"A100": 8}}),
        Candidate(infra="local/zone/extra"),
        Candidate(infra="aws/us-east-1"),
        Candidate(infra="local", resources={"cpus": "100000+"}),
    ]
    got = plan(aenv, acts, *cands).candidates
    assert [(c.error_kind, c.error_field) for c in got] == [
        ("NoCapacity", "resources.accelerators"),
        ("InvalidSpec", "resources.infra"),
        ("InvalidSpec", "resources.infra"),  # not enabled on this worker
        ("NoCapacity", "resources.cpus"),
    ]
    assert all(not c.offers for c in got)
    too_many = plan(aenv, acts, Candidate(infra="local"), n=99999).candidates[0]
    assert (too_many.error_kind, too_many.error_field) == ("InvalidSpec", "num_nodes")
    assert f"at most {local.MAX_NODES} nodes" in (too_many.error or "")


@pytest.mark.parametrize("name", ["../../../tmp/x", "Bad Name!", "a/b", "-x"])
def test_no_provider_joins_a_bad_name_into_a_path(aenv, acts, tmp_path, name):
    with pytest.raises(ApplicationError) as e:
        aenv.run(acts.provision, ProvisionInput(cluster=name, infra="local", num_nodes=1))
    assert e.value.type == ErrorKind.INVALID_SPEC.value
    with pytest.raises(ApplicationError):
        aenv.run(acts.terminate_nodes, ClusterRef(cluster=name, infra="local"))
    with pytest.raises(ApplicationError):
        aenv.run(acts.preempt_cluster, PreemptInput(cluster=name))
    with pytest.raises(ApplicationError):
        aenv.run(acts.plan_launch, PlanInput(cluster=name, num_nodes=1, candidates=[]))
    assert not (tmp_path / "tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created anywhere


def test_leftovers_of_an_older_namesake_are_never_adopted(aenv, acts, tmp_path):
    old = aenv.run(
        acts.provision, ProvisionInput(cluster="same", infra="local", num_nodes=1, owner="same.1")
    )
    marker = Path(old.nodes[0].root) / "jobs" / "1" / "run" / "exit_code"
    marker.parent.mkdir(parents=True)
    marker.write_text("0\n")
    new = aenv.run(
        acts.provision, ProvisionInput(cluster="same", infra="local", num_nodes=1, owner="same.2")
    )
    assert new.owner == "same.2" and not marker.exists()
    # The old owner's terminate does not remove the new cluster.
    aenv.run(acts.terminate_nodes, ClusterRef(cluster="same", infra="local", owner="same.1"))
    assert Path(new.nodes[0].root).exists()
    aenv.run(acts.terminate_nodes, ClusterRef(cluster="same", infra="local", owner="same.2"))
    assert not Path(new.nodes[0].root).exists()


def test_describe_reports_each_nodes_state(aenv, acts):
    handle = aenv.run(acts.provision, ProvisionInput(cluster="d", infra="local", num_nodes=2))
    ref = ClusterRef(cluster="d", infra="local", handle=handle)
    assert [n.state for n in aenv.run(acts.describe_nodes, ref).nodes] == [NodeState.UP] * 2
    aenv.run(acts.preempt_cluster, PreemptInput(cluster="d"))
    assert [n.state for n in aenv.run(acts.describe_nodes, ref).nodes] == [NodeState.PREEMPTED] * 2


class Engine:
    """What read_logs asks of the engine: a workflow's `describe` (its nodes)."""

    def __init__(self) -> None:
        self.described: dict[str, dict] = {}
        self.asked: list[str] = []

    def get_workflow_handle(self, workflow_id: str):
        engine = self

        class Handle:
            async def query(self, name: str):
                assert name == "describe"
                engine.asked.append(workflow_id)
                if workflow_id not in engine.described:
                    raise RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b"")
                return engine.described[workflow_id]

        return Handle()


async def test_logs_are_read_from_offsets_and_a_follower_waits_for_more(acts):
    engine = Engine()
    aenv = ActivityEnvironment(client=engine)  # type: ignore[arg-type]
    handle = aenv.run(acts.provision, ProvisionInput(cluster="l", infra="local", num_nodes=1))
    engine.described["cluster-l"] = {"handle": handle.model_dump(mode="json")}
    inp = PhaseInput(
        handle=handle, job_id=1, phase=Phase.RUN, command="echo one; sleep 1; echo two"
    )
    aenv.run(acts.start_phase, inp)
    logs = LogsInput(workflow_id="cluster-l", cluster="l", wait_seconds=5)
    first = await aenv.run(acts.read_logs, logs)
    assert first.data == b"one\n"
    # A long poll: it waits for the next line rather than answering with nothing.
    second = await aenv.run(acts.read_logs, logs.model_copy(update={"offset": first.offset}))
    assert second.data == b"two\n"
    rest = logs.model_copy(update={"offset": second.offset, "wait_seconds": 0})
    assert (await aenv.run(acts.read_logs, rest)).data == b""
    limited = await aenv.run(acts.read_logs, logs.model_copy(update={"max_bytes": 2}))
    assert (limited.data, limited.more) == (b"on", True)
    with pytest.raises(ApplicationError) as e:
        await aenv.run(acts.read_logs, logs.model_copy(update={"rank": 3}))
    assert where_of(e.value).field == "rank"
    # The reader followed cluster `l`; a job that moved on to another cluster reads none.
    moved = await aenv.run(acts.read_logs, logs.model_copy(update={"cluster": "other"}))
    assert moved.data == b""


@pytest.mark.parametrize("wid", ["cluster-../x", "job-1; rm -rf /", "sky-1", "", None])
async def test_log_reads_ask_only_skylooms_workflows_for_nodes(acts, wid):
    engine = Engine()
    aenv = ActivityEnvironment(client=engine)  # type: ignore[arg-type]
    with pytest.raises(ApplicationError) as e:
        await aenv.run(acts.read_logs, LogsInput(workflow_id=wid))
    assert where_of(e.value).field == "workflow_id" and engine.asked == []


async def test_a_cluster_with_no_nodes_or_no_workflow_is_said(acts):
    engine = Engine()
    engine.described["cluster-gone"] = {"handle": None}
    aenv = ActivityEnvironment(client=engine)  # type: ignore[arg-type]
    for wid in ("cluster-gone", "cluster-never"):
        with pytest.raises(ApplicationError) as e:
            await aenv.run(acts.read_logs, LogsInput(workflow_id=wid))
        assert wid in e.value.message


async def test_saved_logs_are_listed_and_read_and_their_paths_checked(aenv, acts, tmp_path):
    handle = aenv.run(acts.provision, ProvisionInput(cluster="s", infra="local", num_nodes=1))
    log = Path(log_path(handle.nodes[0], 1, Phase.RUN))
    log.parent.mkdir(parents=True)
    log.write_text("saved output\n")
    aenv.run(acts.save_logs, SaveLogsInput(handle=handle, job_id=1, dest="7/2"))
    assert aenv.run(acts.saved_logs, SavedLogsInput(managed_job_id=7)).attempts == [2]
    chunk = await aenv.run(acts.read_logs, LogsInput(saved="7/2"))
    assert chunk.data == b"saved output\n"
    for bad in ("../../etc", "7/../../x", "7"):
        with pytest.raises(ApplicationError):
            await aenv.run(acts.read_logs, LogsInput(saved=bad))


def test_check_runs_on_the_worker_and_names_it(aenv, acts):
    report = aenv.run(acts.check_infra, CheckInput())
    assert [r.infra for r in report.results] == ["local"] and report.results[0].enabled
    assert "pid" in report.worker


def test_a_workdir_the_worker_cannot_see_is_a_clear_error(aenv, acts, tmp_path):
    handle = aenv.run(acts.provision, ProvisionInput(cluster="w", infra="local", num_nodes=1))
    missing = str(tmp_path / "on-my-laptop")
    with pytest.raises(ApplicationError) as e:
        aenv.run(acts.sync_files, SyncInput(handle=handle, job_id=1, workdir=missing))
    assert e.value.type == ErrorKind.INVALID_SPEC.value
    assert missing in e.value.message and "worker" in e.value.message
    assert where_of(e.value).field == "workdir"


def test_stop_is_a_checked_capability(aenv, tmp_path):
    class NoStop(LocalProvider):
        capabilities = frozenset({Capability.WATCH})

    acts = ClusterActivities(Providers({"local": NoStop(tmp_path)}))
    handle = aenv.run(acts.provision, ProvisionInput(cluster="n", infra="local", num_nodes=1))
    with pytest.raises(ApplicationError) as e:
        aenv.run(acts.stop_nodes, ClusterRef(cluster="n", infra="local", handle=handle))
    assert e.value.type == ErrorKind.NOT_SUPPORTED.value and "cannot stop" in e.value.message
    (p,) = aenv.run(
        acts.plan_launch, PlanInput(cluster="n", num_nodes=2, candidates=[Candidate(infra="local")])
    ).candidates
    assert p.error_kind == ErrorKind.NOT_SUPPORTED.value  # no multi-node either


class _Unreachable(LocalProvider):
    """A local infra whose nodes stop answering (a host that went away)."""

    def runner(self, node):
        from skyloom.activities.errors import provider_error
        from skyloom.activities.runners import LocalRunner

        class Gone(LocalRunner):
            def nodelet(self, verb, directory, files=None):
                raise provider_error(ErrorKind.UNREACHABLE, "ssh u@10.0.0.9:22: timed out")

        return Gone(node)


def test_a_node_gone_for_good_ends_a_start_and_a_look_after_the_grace(aenv, tmp_path):
    naps: list[float] = []
    acts = ClusterActivities(
        Providers({"local": _Unreachable(tmp_path)}), sleep=naps.append, unreachable_grace=0.05
    )
    handle = aenv.run(acts.provision, ProvisionInput(cluster="g", infra="local", num_nodes=1))
    inp = PhaseInput(handle=handle, job_id=1, phase=Phase.RUN, command="true", notify="wf")
    with pytest.raises(ApplicationError) as e:
        aenv.run(acts.start_phase, inp)
    assert e.value.type == ErrorKind.UNREACHABLE.value and e.value.non_retryable
    assert "node 0 (127.0.0.1) unreachable for more than 0s" in e.value.message
    assert naps  # it was tried again before giving up
    ref = ClusterRef(cluster="g", infra="local", handle=handle)
    (seen,) = aenv.run(acts.observe_cluster, ObserveInput(ref=ref, job_id=1, phase=Phase.RUN))
    assert seen.state == PhaseState.UNREACHABLE and "10.0.0.9" in (seen.reason or "")
