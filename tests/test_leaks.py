"""Calls leave nothing behind, however they end: file descriptors, asyncio tasks and threads.

Threads are counted twice: Python threads outside the worker pool, and the process's native threads, which is
where a leak shows first (each Opus encoder runs its own native threads for as long as it lives, MEDIA-3).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import threading

from conftest import MARGIN, USER, Running, eventually
from test_sdp import deliver_call_event, platform_of, ringing_without_its_connect, without
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
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


def native_threads() -> int:
    """Threads of the process that Python did not start (codecs, grpc's own)."""
    return len(os.listdir("/proc/self/task")) - threading.active_count()


async def settle() -> tuple[int, int, int, int]:
    """Counts once the loop and the decoder threads have had a moment to wind down."""
    for _ in range(50):
        await asyncio.sleep(0.02)
    gc.collect()
    await asyncio.sleep(0.2)
    return open_fds(), len(asyncio.all_tasks()), threads_outside_the_worker_pool(), native_threads()


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
    assert after == before, f"(fds, tasks, threads, native) {before} -> {after}; new: {task_kinds() - tasks_before}"


# --- every way a call ends ----------------------------------------------------------------------------------------

STREAM = pb.Route(media_stream=pb.MediaStreamRoute())
ROUNDS = 2


async def answered(wacall: Running) -> pb.Call:
    await wacall.phone()
    return await one_call(wacall, STREAM)


async def cancelled_while_ringing(wacall: Running) -> pb.Call:
    await wacall.phone(ring=60)
    call = await wacall.start_call(route=STREAM)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_RINGING)
    await asyncio.sleep(0.2)  # media is flowing while the phone rings
    return await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))


async def rejected(wacall: Running) -> pb.Call:
    await wacall.phone(on_call=sim_pb.DECLINE, ring=1)
    call = await wacall.start_call(route=STREAM)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_RINGING)
    await wacall.advance(1)
    return await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)


async def unanswered(wacall: Running) -> pb.Call:
    await wacall.phone(on_call=sim_pb.NO_ANSWER, ring=1)
    call = await wacall.start_call(route=STREAM)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_RINGING)
    await wacall.advance(1)
    return await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)


async def failed(wacall: Running) -> pb.Call:
    """The platform's answer cannot be applied (tests/test_sdp.py)."""
    await wacall.phone(ring=60)
    call, phone = await ringing_without_its_connect(wacall)
    assert phone.leg is not None
    await deliver_call_event(wacall, phone, USER, without(phone.leg.pc.localDescription.sdp, "a=ice-pwd"), "answer")
    return await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)


async def media_timeout(wacall: Running) -> pb.Call:
    """The user's phone goes away and its terminate is lost: no more audio, so the watchdog ends the call
    (media_timeout_seconds, shortened here)."""
    await wacall.phone()
    call = await wacall.start_call(route=STREAM)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    platform = platform_of(wacall)
    webhook_url, platform.webhook_url = platform.webhook_url, ""
    await wacall.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=call.platform_call_id))
    await platform.settle()
    platform.webhook_url = webhook_url
    return await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED, timeout=15)


ENDINGS = {
    answered: (pb.CALL_OUTCOME_ANSWERED, "ended by the business"),
    cancelled_while_ringing: (pb.CALL_OUTCOME_CANCELLED, "ended by the business"),
    rejected: (pb.CALL_OUTCOME_REJECTED, "ended by the platform"),
    # An answered call between two unanswered ones keeps the unanswered streak below the revocation threshold.
    unanswered: (pb.CALL_OUTCOME_UNANSWERED, "ended by the platform"),
    failed: (pb.CALL_OUTCOME_FAILED, "setup failed: "),
    media_timeout: (pb.CALL_OUTCOME_ANSWERED, "no media from the user for 0.5 s"),
}


async def test_every_way_a_call_ends_leaks_no_fds_tasks_or_threads(make_service) -> None:  # type: ignore[no-untyped-def]
    wacall: Running = await make_service(policy="meta-current", media_timeout_seconds=0.5)
    await wacall.grant(permanent=True)
    seen: dict[str, list[int]] = collections.defaultdict(list)

    async def one_round() -> None:
        for ending, (outcome, reason) in ENDINGS.items():
            if ending in (unanswered, media_timeout):
                await answered(wacall)
            call = await ending(wacall)
            assert call.outcome == outcome and call.end_reason.startswith(reason), (ending.__name__, call)
            seen[ending.__name__].append(call.outcome)
            await eventually(lambda: not wacall.service.calls.sessions, what="sessions released")  # type: ignore[union-attr]

    await one_round()  # warm-up: first-use imports, codec tables, executor threads
    before = await settle()
    tasks_before = task_kinds()
    for _ in range(ROUNDS):
        await one_round()
    after = await settle()
    assert {name: len(outcomes) for name, outcomes in seen.items()} == {e.__name__: ROUNDS + 1 for e in ENDINGS}
    assert worker_threads() <= wacall.service.settings.worker_threads
    assert after == before, f"(fds, tasks, threads, native) {before} -> {after}; new: {task_kinds() - tasks_before}"
