"""Managed-job ids: 1, 2, 3, … handed out by one long-lived workflow, so ids are short and
ordered like SkyPilot's, and two launches never get the same one. It is the one serial
point of launching; ids are handed out in blocks for batch launches."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from skyloom.workflows.models import JOB_IDS_WORKFLOW


@workflow.defn(name=JOB_IDS_WORKFLOW)
class JobIdsWorkflow:
    @workflow.init
    def __init__(self, next_id: int = 1) -> None:
        self.next_id = next_id

    @workflow.run
    async def run(self, next_id: int = 1) -> None:
        await workflow.wait_condition(lambda: workflow.info().is_continue_as_new_suggested())
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(self.next_id)

    @workflow.update
    def allocate(self, count: int = 1) -> int:
        """The first of `count` consecutive new ids. One workflow serialises every
        allocation (and Temporal admits 10 in-flight updates per workflow), so launching
        many jobs at once asks for all their ids in one call."""
        job_id = self.next_id
        self.next_id += max(1, count)
        return job_id
