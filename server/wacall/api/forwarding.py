"""Call control forwarded to the replica that owns the call, so that any replica behind a load balancer serves it.

A call's media runs in one process (its owner, `calls/ownership.py`). EndCall and CallMedia that reach another
replica are sent on to the owner's advertised gRPC address with the client's bearer token and a hop marker
(`wacall-forwarded-by`), and the owner's answer (or error, rich details included) is the client's. A request that
carries the marker is never forwarded again: a call changes hands only when its owner is gone, so one hop suffices.
An owner that is not registered, whose heartbeat expired, or that does not answer is refused with UNAVAILABLE
(`CallOwnerUnreachable`: ErrorInfo `CALL_OWNER_UNREACHABLE` and RetryInfo). Nothing is changed when the request
never reached the owner; an EndCall the owner received but did not answer in time may have ended the call there,
and the refusal says so (read the call back before retrying).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
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
# Channels kept open to owners, the least recently used idle ones closed beyond this: replicas come and go (pod
# addresses change), and a channel to an address nobody forwards to any more must not stay open for ever.
MAX_OWNER_CHANNELS = 32

log = logging.getLogger(__name__)


def was_forwarded(context: Context) -> bool:
    return any(key == FORWARDED_BY for key, _ in context.invocation_metadata() or ())


class OwnerForwarding:
    """Forwards call control to a call's owner: one channel per owner address, opened on first use, at most
    `max_channels` of them kept (the least recently used one that carries no forwarded call is closed)."""

    def __init__(
        self,
        calls: CallService,
        credentials: grpc.ChannelCredentials | None = None,
        token: str = "",
        max_channels: int = MAX_OWNER_CHANNELS,
    ) -> None:
        self.calls = calls
        # None: plaintext between replicas; with TLS on the gRPC port, the credentials that reach the other replicas.
        self.credentials = credentials
        # The service's own bearer token, for requests this replica makes on its own behalf (`own_metadata`).
        self.token = token
        self.max_channels = max_channels
        self._channels: OrderedDict[str, grpc.aio.Channel] = OrderedDict()
        self._in_use: dict[str, int] = {}  # address → forwarded calls on its channel now
        self._closing: set[asyncio.Task[None]] = set()
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
            self._close_idle_channels()
        self._channels.move_to_end(address)
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
        if not owner.reachable():
            raise self.calls.owner_unreachable(owner, "stopped renewing its heartbeat")
        return owner.address

    def _close_idle_channels(self) -> None:
        for address in list(self._channels):
            if len(self._channels) <= self.max_channels:
                return
            if self._in_use.get(address):
                continue
            closing = asyncio.ensure_future(self._channels.pop(address).close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    def _using(self, address: str, delta: int) -> None:
        count = self._in_use.get(address, 0) + delta
        if count > 0:
            self._in_use[address] = count
        else:
            self._in_use.pop(address, None)

    def _metadata(self, context: Context) -> tuple[tuple[str, str | bytes], ...]:
        kept = tuple((key, value) for key, value in context.invocation_metadata() or () if key in KEPT_METADATA)
        return (*kept, (FORWARDED_BY, self.calls.instance))

    def _reachable(self, owner: CallOwner, context: Context) -> str:
        """The owner's address, or the refusal when it cannot be reached (or the request came through a hop)."""
        if was_forwarded(context):
            raise self.calls.owner_unreachable(owner, "does not hold it either (the request was forwarded once)")
        return self.reachable_address(owner)

    async def _relay(
        self, owner: CallOwner, error: grpc.aio.AioRpcError, context: Context, *, may_have_acted: str = ""
    ) -> NoReturn:
        trailers = tuple(error.trailing_metadata() or ())
        if error.code() in UNREACHED and not any(key == STATUS_DETAILS for key, _ in trailers):
            # UNAVAILABLE: the request never reached it. DEADLINE_EXCEEDED: it may have, and acted on it.
            maybe = (
                f"; {may_have_acted}" if may_have_acted and error.code() is grpc.StatusCode.DEADLINE_EXCEEDED else ""
            )
            raise self.calls.owner_unreachable(owner, f"did not answer ({error.code().name}: {error.details()}){maybe}")
        await context.abort(error.code(), error.details() or "", trailing_metadata=trailers)
        raise AssertionError("unreachable")  # pragma: no cover

    async def end_call(self, owner: CallOwner, request: pb.EndCallRequest, context: Context) -> pb.Call:
        """EndCall answered by the call's owner."""
        address = self._reachable(owner, context)
        stub = self._stub(address)
        remaining = context.time_remaining()
        timeout = min(remaining, FORWARD_TIMEOUT.total_seconds()) if remaining else FORWARD_TIMEOUT.total_seconds()
        self._using(address, 1)
        try:
            call: pb.Call = await stub.EndCall(request, metadata=self._metadata(context), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            await self._relay(
                owner, error, context, may_have_acted="it may have ended the call meanwhile: read it (GetCall)"
            )
        finally:
            self._using(address, -1)
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
        address = self._reachable(owner, context)
        stub = self._stub(address)
        call: Any = stub.CallMedia(metadata=self._metadata(context), timeout=context.time_remaining())

        async def pump() -> None:
            try:
                await call.write(first)
                async for message in requests:
                    await call.write(message)
                await call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                pass  # the owner ended the stream: its status is read below
            except asyncio.CancelledError:
                raise
            except BaseException as error:
                # The client's side failed (a malformed message, which aborted the RPC, or anything else): the
                # owner's stream must end too, not wait for the owner to end the call.
                log.info("forwarding CallMedia to %s stopped (%r): cancelling the owner's stream", address, error)
                call.cancel()

        pumping = asyncio.create_task(pump())
        self._using(address, 1)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as error:
            await self._relay(owner, error, context)
        finally:
            self._using(address, -1)
            call.cancel()
            # A task blocked reading grpc.aio's request stream finishes when the RPC does: keep it until then.
            pumping.cancel()
            self._pumps.add(pumping)
            pumping.add_done_callback(self._pumps.discard)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), OrderedDict()
        for channel in channels:
            await channel.close()
