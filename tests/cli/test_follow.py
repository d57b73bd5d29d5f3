"""Following output: a long-poll read raced against the job moving on never loses bytes."""

from __future__ import annotations

import asyncio

from skyloom.cli.logs import until_done


async def test_a_read_that_answers_while_the_state_is_asked_keeps_its_bytes():
    gate = asyncio.Event()

    async def read() -> bytes:
        await gate.wait()
        return b"last line\n"

    async def done() -> bool:
        gate.set()  # the read answers while this question is in flight
        await asyncio.sleep(0.01)
        return True

    assert await until_done(read(), done) == (b"last line\n", True)


async def test_a_read_still_waiting_when_the_job_moves_on_is_dropped_unread():
    cancelled = asyncio.Event()

    async def read() -> bytes:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b"never"

    async def done() -> bool:
        return True

    assert await until_done(read(), done) == (None, True)
    assert cancelled.is_set()


async def test_a_read_that_answers_first_is_returned():
    async def read() -> bytes:
        return b"out\n"

    async def done() -> bool:
        raise AssertionError("not asked: the read answered first")

    assert await until_done(read(), done) == (b"out\n", False)
