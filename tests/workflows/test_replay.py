"""Recorded histories replay on today's workflow code without non-determinism.

A failure here means a change would break clusters that are running now: guard the change
with workflow.patched() instead of re-recording (see tests/histories/record.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from skyloom.workflows.cluster import ClusterWorkflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

HISTORIES = sorted((Path(__file__).parents[1] / "histories").glob("cluster_*.json"))


def test_there_are_histories_to_replay():
    assert HISTORIES, "tests/histories/ has no recorded cluster histories"


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays(path: Path):
    history = WorkflowHistory.from_json(f"cluster-{path.stem}", path.read_text())
    assert len(history.events) > 50  # the recording covers a whole lifecycle
    replayer = Replayer(workflows=[ClusterWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
