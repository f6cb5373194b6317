"""200 short calls in sequence leave nothing behind: file descriptors, asyncio tasks and threads."""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import threading

from conftest import MARGIN, Running
from wacall_client.v1 import calling_pb2 as pb

from wacall.app import WORKER_PREFIX

CALLS = 200
WARM_UP = 20


def task_kinds() -> collections.Counter[str]:
    return collections.Counter(getattr(t.get_coro(), "__qualname__", "?") for t in asyncio.all_tasks())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads_outside_the_worker_pool() -> int:
    return sum(not t.name.startswith(WORKER_PREFIX) for t in threading.enumerate())


def worker_threads() -> int:
    return sum(t.name.startswith(WORKER_PREFIX) for t in threading.enumerate())


async def settle() -> tuple[int, int, int]:
    """Counts once the loop and the decoder threads have had a moment to wind down."""
    for _ in range(50):
        await asyncio.sleep(0.02)
    gc.collect()
    await asyncio.sleep(0.2)
    return open_fds(), len(asyncio.all_tasks()), threads_outside_the_worker_pool()


async def one_call(wacall: Running, route: pb.Route) -> pb.Call:
    call = await wacall.start_call(route=route)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    ended = await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED
    return ended


async def test_two_hundred_short_calls_leak_no_fds_tasks_or_threads(make_service) -> None:  # type: ignore[no-untyped-def]
    # meta-current: 100 connected calls per 24 h per pair; the clock moves a day every 50 calls.
    wacall: Running = await make_service(policy="meta-current")
    await wacall.grant(permanent=True)
    await wacall.phone()
    route = pb.Route(media_stream=pb.MediaStreamRoute())
    for _ in range(WARM_UP):  # first-use imports, codec tables, executor threads, keep-alive connection pools
        await one_call(wacall, route)
    before = await settle()
    tasks_before = task_kinds()
    for index in range(CALLS):
        await one_call(wacall, route)
        if index % 50 == 49:
            await wacall.advance(86400 + MARGIN)  # the day's calls age out once the boundary margin has passed
    after = await settle()
    assert not wacall.service.calls.sessions  # type: ignore[union-attr]
    # The worker pool grows on demand up to its fixed size; everything else is back where it was.
    assert worker_threads() <= wacall.service.settings.worker_threads
    assert after == before, f"(fds, tasks, threads) {before} -> {after}; new tasks: {task_kinds() - tasks_before}"
