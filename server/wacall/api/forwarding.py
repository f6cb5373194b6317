"""Call control forwarded to the replica that owns the call, so that any replica behind a load balancer serves it.

A call's media runs in one process (its owner, `calls/ownership.py`). EndCall and CallMedia that reach another
replica are sent on to the owner's advertised gRPC address with the client's bearer token and a hop marker
(`wacall-forwarded-by`), and the owner's answer (or error, rich details included) is the client's. A request that
carries the marker is never forwarded again: a call changes hands only when its owner is gone, so one hop suffices.
An owner that is not registered, whose heartbeat expired, or that does not answer is refused with UNAVAILABLE
(`CallOwnerUnreachable`: ErrorInfo `CALL_OWNER_UNREACHABLE` and RetryInfo), and nothing is changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, NoReturn

import grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.api.errors import Context
from wacall.calls.ownership import CallOwner
from wacall.calls.service import CallService

FORWARDED_BY = "wacall-forwarded-by"  # the hop marker: the instance that forwarded the request
# The metadata a forwarded request keeps: the client's credentials, nothing else (no hop-by-hop headers).
KEPT_METADATA = ("authorization",)
# A unary call forwarded without a deadline of its own still ends: an owner that hangs is an unreachable owner.
FORWARD_TIMEOUT = timedelta(seconds=10)
# The owner's error trailers carry google.rpc details when the owner itself answered; a transport failure has none.
STATUS_DETAILS = "grpc-status-details-bin"
UNREACHED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def was_forwarded(context: Context) -> bool:
    return any(key == FORWARDED_BY for key, _ in context.invocation_metadata() or ())


class OwnerForwarding:
    """Forwards call control to a call's owner: one channel per owner address, opened on first use."""

    def __init__(self, calls: CallService, credentials: grpc.ChannelCredentials | None = None, token: str = "") -> None:
        self.calls = calls
        # None: plaintext between replicas; with TLS on the gRPC port, the credentials that reach the other replicas.
        self.credentials = credentials
        # The service's own bearer token, for requests this replica makes on its own behalf (`own_metadata`).
        self.token = token
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._pumps: set[asyncio.Task[None]] = set()

    def channel(self, address: str) -> grpc.aio.Channel:
        """The channel to another replica (one per address, opened on first use)."""
        channel = self._channels.get(address)
        if channel is None:
            if self.credentials is None:
                channel = grpc.aio.insecure_channel(address)
            else:
                channel = grpc.aio.secure_channel(address, self.credentials)
            self._channels[address] = channel
        return channel

    def _stub(self, address: str) -> calling_pb2_grpc.CallingServiceStub:
        return calling_pb2_grpc.CallingServiceStub(self.channel(address))

    def own_metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata of a request this replica makes on its own behalf: its token and the hop marker."""
        token = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        return (*token, (FORWARDED_BY, self.calls.instance))

    def reachable_address(self, owner: CallOwner) -> str:
        """The owner's address, or `CallOwnerUnreachable` when it cannot be reached."""
        if not owner.address:
            raise self.calls.owner_unreachable(owner, "never recorded an address in the replica registry")
        if not owner.reachable(self.calls.wall_clock.now()):
            raise self.calls.owner_unreachable(owner, "stopped renewing its heartbeat")
        return owner.address

    def _metadata(self, context: Context) -> tuple[tuple[str, str | bytes], ...]:
        kept = tuple((key, value) for key, value in context.invocation_metadata() or () if key in KEPT_METADATA)
        return (*kept, (FORWARDED_BY, self.calls.instance))

    def _reachable(self, owner: CallOwner, context: Context) -> str:
        """The owner's address, or the refusal when it cannot be reached (or the request came through a hop)."""
        if was_forwarded(context):
            raise self.calls.owner_unreachable(owner, "does not hold it either (the request was forwarded once)")
        return self.reachable_address(owner)

    async def _relay(self, owner: CallOwner, error: grpc.aio.AioRpcError, context: Context) -> NoReturn:
        trailers = tuple(error.trailing_metadata() or ())
        if error.code() in UNREACHED and not any(key == STATUS_DETAILS for key, _ in trailers):
            raise self.calls.owner_unreachable(owner, f"did not answer ({error.code().name}: {error.details()})")
        await context.abort(error.code(), error.details() or "", trailing_metadata=trailers)
        raise AssertionError("unreachable")  # pragma: no cover

    async def end_call(self, owner: CallOwner, request: pb.EndCallRequest, context: Context) -> pb.Call:
        """EndCall answered by the call's owner."""
        stub = self._stub(self._reachable(owner, context))
        remaining = context.time_remaining()
        timeout = min(remaining, FORWARD_TIMEOUT.total_seconds()) if remaining else FORWARD_TIMEOUT.total_seconds()
        try:
            call: pb.Call = await stub.EndCall(request, metadata=self._metadata(context), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            await self._relay(owner, error, context)
        return call

    async def call_media(
        self,
        owner: CallOwner,
        first: pb.CallMediaRequest,
        requests: AsyncIterator[pb.CallMediaRequest],
        context: Context,
    ) -> AsyncIterator[pb.CallMediaResponse]:
        """CallMedia proxied both ways to the call's owner: the client's messages (the first one already read) go
        there, the owner's audio and call updates come back, and the stream ends with the owner's status."""
        stub = self._stub(self._reachable(owner, context))
        call: Any = stub.CallMedia(metadata=self._metadata(context), timeout=context.time_remaining())

        async def pump() -> None:
            try:
                await call.write(first)
                async for message in requests:
                    await call.write(message)
                await call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                pass  # the owner ended the stream: its status is read below

        pumping = asyncio.create_task(pump())
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as error:
            await self._relay(owner, error, context)
        finally:
            call.cancel()
            # A task blocked reading grpc.aio's request stream finishes when the RPC does: keep it until then.
            pumping.cancel()
            self._pumps.add(pumping)
            pumping.add_done_callback(self._pumps.discard)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
