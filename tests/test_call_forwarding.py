"""Call control on a replica that does not own the call: forwarded to the owner with the client's token, once at
most, and refused with CALL_OWNER_UNREACHABLE (who holds the call, when to retry) when the owner cannot be reached.

Two services in this process on one SQLite file, each with its own embedded simulator (the owner's platform is the
one that hears the call end). The two-process, PostgreSQL and standalone-simulator version is tests/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from conftest import OTHER_USER, Running, refused, settings_for, start_service, stop_service, wait_until
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.api.forwarding import FORWARDED_BY, OwnerForwarding
from wacall.app import advertised_address
from wacall.calls.ownership import CallOwner
from wacall.store import Pair, Tx

TOKEN = "a-token-both-replicas-know"


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[Running, Running]]:
    owner = await start_service(settings_for(tmp_path, auth_token=TOKEN, instance_name="owner"))
    other = None
    try:
        other = await start_service(
            settings_for(tmp_path, auth_token=TOKEN, instance_name="other", sim_state=str(tmp_path / "other.json"))
        )
        yield owner, other
    finally:
        if other is not None:
            await stop_service(other)
        await stop_service(owner)


async def ringing_call(owner: Running) -> pb.Call:
    await owner.grant(permanent=True)
    await owner.phone(ring=600)  # the rules' clock is manual: it rings until the test ends
    call = await owner.start_call()
    return await owner.wait_call(call.call_id, pb.CALL_STATE_RINGING)


def unreachable_details(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, timedelta]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert any(d.Unpack(info) for d in status.details if d.Is(info.DESCRIPTOR))
    assert any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
    return info, retry.retry_delay.ToTimedelta()


async def test_end_call_on_another_replica_reaches_the_owner_with_the_clients_token_and_the_owner_hangs_up(
    replicas: tuple[Running, Running],
) -> None:
    owner, other = replicas
    call = await ringing_call(owner)
    assert owner.service.calls is not None and call.call_id in owner.service.calls.sessions
    # Without the token the other replica refuses it itself: nothing is forwarded.
    missing = await refused(other.calling.EndCall(pb.EndCallRequest(call_id=call.call_id)))
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED

    ended = await other.calling.EndCall(pb.EndCallRequest(call_id=call.call_id), metadata=other.metadata)
    assert ended.state == pb.CALL_STATE_ENDED and ended.outcome == pb.CALL_OUTCOME_CANCELLED
    assert ended.end_reason == "ended by the business"
    # The owner ended it: its media is released and its platform heard the end.
    assert call.call_id not in owner.service.calls.sessions
    phone = await wait_until(
        lambda: owner.sim.GetPhoneCall(
            sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id), metadata=owner.metadata
        ),
        lambda p: p.state == "ended",
    )
    assert phone.state == "ended"
    # An ended call is answered from the store on either replica, without forwarding.
    again = await other.calling.EndCall(pb.EndCallRequest(call_id=call.call_id), metadata=other.metadata)
    assert again.state == pb.CALL_STATE_ENDED and again.end_reason == ended.end_reason


async def test_a_request_that_was_forwarded_once_is_not_forwarded_again(replicas: tuple[Running, Running]) -> None:
    owner, other = replicas
    call = await ringing_call(owner)
    hop = (*other.metadata, (FORWARDED_BY, "a-third-replica/1"))
    error = await refused(other.calling.EndCall(pb.EndCallRequest(call_id=call.call_id), metadata=hop))
    info, _ = unreachable_details(error)
    assert info.reason == "CALL_OWNER_UNREACHABLE" and info.metadata["owner"].startswith("owner/")
    assert (await owner.get_call(call.call_id)).state == pb.CALL_STATE_RINGING  # nothing changed


async def test_an_owner_that_never_registered_is_refused_with_where_the_call_is_and_when_to_retry(
    replicas: tuple[Running, Running],
) -> None:
    owner, other = replicas
    call = await ringing_call(owner)
    store = owner.service.store
    assert store is not None
    lease = datetime.now(UTC) + timedelta(seconds=60)
    ghost = "call_" + "f" * 32

    def left_by_a_ghost(tx: Tx) -> None:
        stored = tx.call(call.call_id)
        assert stored is not None
        tx.save_call(dataclasses.replace(stored, call_id=ghost, pair=Pair(stored.pair.business, OTHER_USER),
                                         platform_call_id=None, owner="ghost/1", lease_expires_at=lease))  # fmt: skip

    await store.transaction(left_by_a_ghost)
    for replica in (owner, other):
        error = await refused(replica.calling.EndCall(pb.EndCallRequest(call_id=ghost), metadata=replica.metadata))
        info, retry_after = unreachable_details(error)
        assert (info.reason, info.domain) == ("CALL_OWNER_UNREACHABLE", "wacall")
        assert dict(info.metadata) == {"call_id": ghost, "owner": "ghost/1", "owner_address": ""}
        # Retry once the ghost's lease has run out and a lease keeper has had its turn (a third of a 15 s lease).
        assert timedelta(seconds=55) < retry_after <= timedelta(seconds=66), retry_after
        assert "ghost/1" in (error.details() or "")
        # CallMedia too, with the same refusal.
        media = other.calling.CallMedia(iter([pb.CallMediaRequest(call_id=ghost)]), metadata=other.metadata)
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await media.read()
        assert unreachable_details(streamed.value)[0].metadata["owner"] == "ghost/1"
    assert (await other.get_call(ghost)).state == pb.CALL_STATE_RINGING  # nothing changed


def test_a_replica_advertises_its_bound_address_or_its_host_name_on_a_wildcard() -> None:
    assert advertised_address("10.1.2.3", 50051) == "10.1.2.3:50051"
    assert advertised_address("0.0.0.0", 50051) == f"{socket.gethostname()}:50051"
    assert advertised_address("::1", 50051) == "[::1]:50051"


async def test_each_replica_records_where_it_is_reached_and_renews_it_with_its_leases(
    replicas: tuple[Running, Running],
) -> None:
    for replica in replicas:
        calls, store = replica.service.calls, replica.service.store
        assert calls is not None and store is not None
        recorded = await store.transaction(lambda tx, instance=calls.instance: tx.replica(instance))
        assert recorded is not None and recorded.address == replica.addresses.grpc
        assert recorded.heartbeat_expires_at > datetime.now(UTC) + timedelta(seconds=10)  # a 15 s lease ahead


# --- the forwarder against an owner that only records what reaches it ---------------------------------------------


class RecordingOwner(calling_pb2_grpc.CallingServiceServicer):
    """An owner whose CallMedia reads the client's messages until its stream ends, and notes that it ended."""

    def __init__(self) -> None:
        self.received: list[pb.CallMediaRequest] = []
        self.ended = asyncio.Event()

    async def CallMedia(
        self, request_iterator: AsyncIterator[pb.CallMediaRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.CallMediaResponse]:
        try:
            async for request in request_iterator:
                self.received.append(request)
            await asyncio.sleep(3600)  # the owner's call goes on until the stream is cancelled
            yield pb.CallMediaResponse()
        finally:
            self.ended.set()


class NoMetadata:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def time_remaining(self) -> None:
        return None


@pytest.fixture
async def recording_owner() -> AsyncIterator[tuple[RecordingOwner, str]]:
    server = grpc.aio.server()
    owner = RecordingOwner()
    calling_pb2_grpc.add_CallingServiceServicer_to_server(owner, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield owner, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_a_client_stream_that_fails_mid_way_cancels_the_owners_stream(
    recording_owner: tuple[RecordingOwner, str],
) -> None:
    owner, address = recording_owner
    calls = SimpleNamespace(instance="other", owner_unreachable=lambda owner, why: RuntimeError(why))
    forwarding = OwnerForwarding(calls)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    held_by = CallOwner("call_x", "owner", address, now + timedelta(seconds=15), now + timedelta(seconds=15), now)

    async def requests() -> AsyncIterator[pb.CallMediaRequest]:
        yield pb.CallMediaRequest(audio=b"\0\0" * 480)
        raise ValueError("a malformed message from the client")  # what parsing it aborts with

    first = pb.CallMediaRequest(call_id="call_x")

    async def forward() -> None:
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            async for _ in forwarding.call_media(held_by, first, requests(), NoMetadata()):  # type: ignore[arg-type]
                pass

    # Without the cancel both would wait: the owner for more messages (or a half-close) until its call ended.
    await asyncio.wait_for(forward(), 10)
    await asyncio.wait_for(owner.ended.wait(), 10)
    assert owner.received[0].call_id == "call_x"  # it was reached, then let go
    await forwarding.close()


async def test_channels_to_owners_beyond_the_limit_are_closed_least_recently_used_first_unless_in_use() -> None:
    calls = SimpleNamespace(instance="other")
    forwarding = OwnerForwarding(calls, max_channels=2)  # type: ignore[arg-type]
    first, second, third, fourth = (f"127.0.0.1:{port}" for port in (1, 2, 3, 4))
    forwarding._stub(first)
    forwarding._stub(second)
    forwarding._stub(third)  # the first, least recently used and idle, is closed
    assert list(forwarding._channels) == [second, third]
    forwarding._using(second, 1)  # a forwarded call runs on it: kept
    forwarding._stub(fourth)
    assert list(forwarding._channels) == [second, fourth]
    forwarding._using(second, -1)
    await forwarding.close()
