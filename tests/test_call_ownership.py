"""Call ownership: each call records the process that runs its media and a lease that process renews. Another
process sharing the database ends a call only once its owner's lease has expired, so two processes on one database
never end each other's live calls, and the calls of a process that dies are still ended.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from conftest import BUSINESS, OTHER_USER, USER, duration, settings_for, start_service, stop_service, wait_until
from test_process import ServeProcess
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.clock import ManualClock
from wacall.store import Pair, StoredCall, Tx

LEASE_ENDED = "the process holding the call stopped renewing its lease"
RESTARTED = "the service restarted during the call"


# --- two real processes on one SQLite file --------------------------------------------------------------------------

LEASE_SECONDS = 2.0


async def place_a_talking_call(channel: grpc.aio.Channel) -> pb.Call:
    """A call the user picks up at once and talks in until the business hangs up, with ten minutes of tone to play."""
    sim = simulator_pb2_grpc.SimulatorServiceStub(channel)
    await sim.GrantPermission(sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=USER, permanent=True))
    await sim.SetUserBehavior(
        sim_pb.SetUserBehaviorRequest(
            user_number=USER, on_call=sim_pb.ANSWER, ring_duration=duration(0), talk_duration=duration(0), tone_hz=330
        )
    )
    calling = calling_pb2_grpc.CallingServiceStub(channel)
    announcement = pb.AnnouncementRoute(tone_hz=440, tone_duration=duration(600), max_duration=duration(600))
    call = await calling.StartCall(
        pb.StartCallRequest(business_number=BUSINESS, user_number=USER, route=pb.Route(announcement=announcement))
    )
    return await wait_until(
        lambda: calling.GetCall(pb.GetCallRequest(call_id=call.call_id)),
        lambda c: c.state == pb.CALL_STATE_CONNECTED and c.media.frames_received > 0,
        timeout=20,
    )


async def test_a_second_process_leaves_a_live_call_alone_and_ends_it_once_its_owner_is_killed(tmp_path: Path) -> None:
    flags = ("--clock", "system", "--call-lease-seconds", str(LEASE_SECONDS), "--log-level", "WARNING")
    first = ServeProcess(tmp_path, *flags)
    second: ServeProcess | None = None
    try:
        async with grpc.aio.insecure_channel(first.grpc) as channel:
            call = await place_a_talking_call(channel)
            # The second process shares the database (with its own simulated platform): its start-up pass and then
            # its lease keeper (every third of a lease) look at the first process's call for three leases.
            second = ServeProcess(tmp_path, *flags, "--sim-state", str(tmp_path / "second-sim.json"))
            calling = calling_pb2_grpc.CallingServiceStub(channel)
            heard = []
            watch_until = time.monotonic() + 3 * LEASE_SECONDS
            while time.monotonic() < watch_until:
                live = await calling.GetCall(pb.GetCallRequest(call_id=call.call_id))
                assert live.state == pb.CALL_STATE_CONNECTED and not live.end_reason, live
                heard.append(live.media.frames_received)
                await asyncio.sleep(0.25)
            assert heard[-1] - heard[0] >= 3 * LEASE_SECONDS * 40  # the user's audio kept flowing (50 frames/s)
        async with grpc.aio.insecure_channel(second.grpc) as channel:
            calling = calling_pb2_grpc.CallingServiceStub(channel)
            seen = await calling.GetCall(pb.GetCallRequest(call_id=call.call_id))
            assert seen.state == pb.CALL_STATE_CONNECTED and not seen.end_reason
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(timeout=10)
            killed_at = time.monotonic()
            ended = await wait_until(
                lambda: calling.GetCall(pb.GetCallRequest(call_id=call.call_id)),
                lambda c: c.state == pb.CALL_STATE_ENDED,
                timeout=3 * LEASE_SECONDS + 10,
            )
            waited = time.monotonic() - killed_at
            assert ended.end_reason == LEASE_ENDED and ended.outcome == pb.CALL_OUTCOME_ANSWERED
            # Not before the lease ran out: the killed process had renewed it at most a third of a lease earlier.
            assert waited >= LEASE_SECONDS * 2 / 3 - 0.1, waited
            permission = await calling.GetPermission(
                pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER)
            )
            start_call = next(a for a in permission.actions if a.action == pb.ACTION_START_CALL)
            assert start_call.allowed  # not blocked by a phantom call in progress
        assert second.stop() == 0
    finally:
        for process in (first, second):
            if process is not None and process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait()


# --- in one process, with the lease keepers driven by the test --------------------------------------------------------

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=2)
KILLED = "call_" + "d" * 32  # left ringing by a process that was killed
UNOWNED = "call_" + "e" * 32  # left open before calls had owners


async def test_start_up_and_the_lease_keeper_end_only_calls_whose_owner_stopped_renewing(tmp_path: Path) -> None:
    """Leases are on the store's clock (SQLite: this machine's), so they run out in real time; each process's lease
    keeper wakes only when the test moves that process's wall clock, which is how a process stalls here."""
    first_wall, second_wall = ManualClock(T0), ManualClock(T0)
    lease = {"call_lease_seconds": LEASE.total_seconds()}
    first = await start_service(settings_for(tmp_path, **lease), first_wall)
    second = None

    async def renew_first() -> None:
        await first_wall.advance(LEASE / 3)
        await asyncio.sleep(0.1)  # real time for the renewal this step woke

    try:
        await first.grant(permanent=True)
        await first.phone(ring=600)  # the rules' clock is manual: it rings until the test ends
        live = await first.start_call()
        await first.wait_call(live.call_id, pb.CALL_STATE_RINGING)
        store = first.service.store
        assert store is not None
        mine = await store.transaction(lambda tx: tx.call(live.call_id))
        assert mine is not None and mine.owner and mine.lease_expires_at is not None
        assert mine.lease_expires_at - datetime.now(UTC) <= LEASE  # on the store's clock, not the manual wall clock

        def left_behind(call_id: str, user: str, owner: str, lease: datetime | None) -> StoredCall:
            """A ringing call as a process that is gone left it (no platform id: nothing to tell the platform)."""
            assert mine is not None
            return dataclasses.replace(mine, call_id=call_id, pair=Pair(BUSINESS, user), platform_call_id=None,
                                       owner=owner, lease_expires_at=lease)  # fmt: skip

        killed_lease = datetime.now(UTC) + timedelta(seconds=20)

        def leave_behind(tx: Tx) -> None:
            tx.save_call(left_behind(KILLED, OTHER_USER, "a-killed-process", killed_lease))
            tx.save_call(left_behind(UNOWNED, "+4915112345678", "", None))

        await store.transaction(leave_behind)

        second = await start_service(
            settings_for(tmp_path, sim_state=str(tmp_path / "second-sim.json"), **lease), second_wall
        )
        # At start-up: the call stored before calls had owners ends; the killed process's lease still runs.
        unowned = await second.get_call(UNOWNED)
        assert unowned.state == pb.CALL_STATE_ENDED and unowned.end_reason == RESTARTED
        killed = await second.get_call(KILLED)
        assert killed.state == pb.CALL_STATE_RINGING and not killed.end_reason

        # The killed process's lease runs out (moved to the past here, rather than waited for) while the first
        # process keeps renewing; the second's lease keeper passes several times: only the killed call ends.
        await store.transaction(lambda tx: tx.renew_call_leases("a-killed-process", tx.store_now()))

        async def killed_call_ended() -> bool:
            return (await second.get_call(KILLED)).state == pb.CALL_STATE_ENDED

        for _ in range(12):  # two leases on the second's clock, with the first renewing in real time meanwhile
            await second_wall.advance(LEASE / 6)
            await renew_first()
        ended = await second.wait_call(KILLED, pb.CALL_STATE_ENDED)
        assert ended.end_reason == LEASE_ENDED and await killed_call_ended()
        for running in (first, second):
            still = await running.get_call(live.call_id)
            assert still.state == pb.CALL_STATE_RINGING and not still.end_reason
        claimed = await store.transaction(lambda tx: tx.call(KILLED))
        assert first.service.permissions is not None and second.service.permissions is not None
        # Both lease keepers ran past the killed lease (the first's as it renewed): one of the living claimed it.
        living = {first.service.permissions.instance, second.service.permissions.instance}
        assert claimed is not None and claimed.owner in living

        # The first process stalls (its wall clock stands still) past its lease: the second takes its call as
        # abandoned and ends it. The first releases the call's media instead of running it on.
        assert first.service.calls is not None and live.call_id in first.service.calls.sessions
        while (await second.get_call(live.call_id)).state != pb.CALL_STATE_ENDED:
            await second_wall.advance(LEASE / 6)
            await asyncio.sleep(0.1)
        assert (await second.get_call(live.call_id)).end_reason == LEASE_ENDED
        await first_wall.advance(LEASE / 3)  # it wakes (its follower may have released the media already)
        await wait_until(lambda: asyncio.sleep(0, first.service.calls.sessions), lambda held: live.call_id not in held)
    finally:
        if second is not None:
            await stop_service(second)
        await stop_service(first)
