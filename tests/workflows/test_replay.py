"""Recorded histories replay on today's workflow code without non-determinism.

A failure here means a change would break clusters or managed jobs that are running now:
guard the change with workflow.patched() instead of re-recording (tests/histories/record.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from skyloom.workflows.cluster import ClusterWorkflow
from skyloom.workflows.managed_job import ManagedJobWorkflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

HISTORIES = sorted((Path(__file__).parents[1] / "histories").glob("*.json"))


def test_there_are_histories_of_every_long_lived_workflow_to_replay():
    # A cluster's lifecycle, a managed job's, and both runs of one that continued as new.
    assert {p.stem for p in HISTORIES} >= {"cluster-lifecycle", "job-1", "job-2.1", "job-2.2"}


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays(path: Path):
    # Named `<workflow id>[.<run>]`: workflows check that their id is the one they expect.
    history = WorkflowHistory.from_json(path.stem.split(".")[0], path.read_text())
    assert len(history.events) > 20  # the recording covers a lifecycle, not a stub
    replayer = Replayer(
        workflows=[ClusterWorkflow, ManagedJobWorkflow], data_converter=pydantic_data_converter
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
