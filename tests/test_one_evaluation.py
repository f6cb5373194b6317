"""GetPermission, RequestPermission and StartCall decide through one evaluation: what one reports, the others act on."""

from __future__ import annotations

import asyncio

import grpc
from conftest import BUSINESS, USER, Running, call_action, request_action
from wacall_client.v1 import calling_pb2 as pb

from wacall.permissions import PermissionView
from wacall.rules.engine import Ledger
from wacall.store import Pair, Tx

STREAM = pb.Route(media_stream=pb.MediaStreamRoute())


async def test_request_permission_reports_the_active_call_like_get_permission(wacall: Running) -> None:
    await wacall.grant()  # temporary: a further request is still allowed
    await wacall.phone(ring=60)
    await wacall.start_call(route=STREAM)
    before = await wacall.permission()
    assert request_action(before).allowed
    result = await wacall.request()
    returned = result.permission
    busy = call_action(returned)
    assert not busy.allowed and busy.reason == pb.REASON_CALL_IN_PROGRESS
    # The manual clock has not moved: the same instant, the same answer.
    assert returned == await wacall.permission()


async def test_get_permission_reads_a_snapshot_that_answers_what_a_write_transaction_would(wacall: Running) -> None:
    # GetPermission reads without the write lock (Store.read). Under concurrent writers, whenever its snapshot
    # holds the same ledger as a write transaction's, the two answers are identical; and a read never misses a
    # request acknowledged before it started.
    permissions = wacall.service.permissions
    assert permissions is not None
    business, user = permissions.parse_pair(BUSINESS, USER)
    pair = Pair(business.e164, user.e164)
    now = permissions.clock.now()
    acknowledged = 0
    writing = True

    def view(tx: Tx) -> tuple[Ledger, PermissionView]:
        return tx.ledger(pair), permissions._view(tx, pair, business, now)

    async def writer() -> None:
        nonlocal acknowledged, writing
        try:
            for round_ in range(6):
                for _ in range(3):
                    try:
                        await wacall.request()
                        acknowledged += 1
                    except grpc.aio.AioRpcError as refused:  # a limit reached: the rules said no, nothing written
                        assert refused.code() in (
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            grpc.StatusCode.FAILED_PRECONDITION,
                        )
                if round_ % 2:
                    await wacall.grant()  # a webhook written by the dispatcher
                await wacall.advance(25 * 3600)  # the daily limit opens again (six rounds stay within a week)
        finally:
            writing = False

    compared = 0

    async def reader() -> None:
        nonlocal compared
        while writing:
            floor = acknowledged
            read_ledger, read_view = await permissions.store.read(view)
            assert len(read_ledger.request_times) >= floor
            written_ledger, written_view = await permissions.store.transaction(view)
            if read_ledger == written_ledger:
                assert read_view == written_view
                compared += 1
            await asyncio.sleep(0)

    await asyncio.gather(writer(), reader(), reader())
    assert acknowledged >= 2 and compared > 10
