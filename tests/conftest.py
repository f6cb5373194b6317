"""Fixtures: a real wacall service (real gRPC, real HTTP, real SQLite file, embedded simulator, manual clock)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2
from postgres_server import PostgresServer
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.testing.v1 import clock_pb2, clock_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.app import Addresses, Service
from wacall.clock import Clock
from wacall.config import Settings

T = TypeVar("T")

# Valid numbers (libphonenumber rejects the fictional 07700 900xxx range).
BUSINESS = "+447911123456"  # GB: business-initiated calling available
USER = "+34612345678"  # ES
OTHER_USER = "+5511987654321"  # BR
US_BUSINESS = "+12015550123"  # US: on the default deny-list


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=seconds))
    return d


@dataclass
class Running:
    service: Service
    addresses: Addresses
    channel: grpc.aio.Channel
    calling: calling_pb2_grpc.CallingServiceStub
    sim: simulator_pb2_grpc.SimulatorServiceStub
    clock: clock_pb2_grpc.ClockServiceStub
    metadata: tuple[tuple[str, str], ...] = ()

    async def now(self) -> datetime:
        reply = await self.clock.Now(clock_pb2.NowRequest(), metadata=self.metadata)
        return reply.now.ToDatetime().replace(tzinfo=UTC)

    async def advance(self, seconds: float) -> datetime:
        reply = await self.clock.Advance(clock_pb2.AdvanceRequest(duration=duration(seconds)), metadata=self.metadata)
        return reply.now.ToDatetime().replace(tzinfo=UTC)

    async def permission(self, business: str = BUSINESS, user: str = USER) -> pb.Permission:
        return await self.calling.GetPermission(
            pb.GetPermissionRequest(business_number=business, user_number=user), metadata=self.metadata
        )

    async def behave(self, user: str, response: int, delay_seconds: float = 0) -> None:
        await self.sim.SetUserBehavior(
            sim_pb.SetUserBehaviorRequest(
                user_number=user, on_permission_request=response, reply_delay=duration(delay_seconds)
            ),
            metadata=self.metadata,
        )

    async def request(
        self, business: str = BUSINESS, user: str = USER, **fields: object
    ) -> pb.RequestPermissionResponse:
        return await self.calling.RequestPermission(
            pb.RequestPermissionRequest(business_number=business, user_number=user, **fields),  # type: ignore[arg-type]
            metadata=self.metadata,
        )

    async def grant(self, user: str = USER, permanent: bool = False, business: str = BUSINESS) -> None:
        await self.sim.GrantPermission(
            sim_pb.GrantPermissionRequest(business_number=business, user_number=user, permanent=permanent),
            metadata=self.metadata,
        )

    async def phone(
        self,
        user: str = USER,
        on_call: int = sim_pb.ANSWER,
        ring: float = 0,
        talk: float = 0,
        tone_hz: float = 0,
        on_request: int = sim_pb.IGNORE,
    ) -> None:
        """How the simulated user's phone behaves (ring and talk in clock seconds; 0 talk = until hung up)."""
        await self.sim.SetUserBehavior(
            sim_pb.SetUserBehaviorRequest(
                user_number=user,
                on_call=on_call,
                ring_duration=duration(ring),
                talk_duration=duration(talk),
                tone_hz=tone_hz,
                on_permission_request=on_request,
            ),
            metadata=self.metadata,
        )

    async def start_call(
        self, user: str = USER, business: str = BUSINESS, route: pb.Route | None = None, **fields: object
    ) -> pb.Call:
        return await self.calling.StartCall(
            pb.StartCallRequest(business_number=business, user_number=user, route=route, **fields),  # type: ignore[arg-type]
            metadata=self.metadata,
        )

    async def get_call(self, call_id: str) -> pb.Call:
        return await self.calling.GetCall(pb.GetCallRequest(call_id=call_id), metadata=self.metadata)

    async def wait_call(self, call_id: str, state: int, timeout: float = 10.0) -> pb.Call:
        return await wait_until(lambda: self.get_call(call_id), lambda c: c.state == state, timeout)

    async def wait_for_state(
        self, state: int, business: str = BUSINESS, user: str = USER, timeout: float = 5.0
    ) -> pb.Permission:
        return await wait_until(lambda: self.permission(business, user), lambda p: p.state == state, timeout)


async def wait_until(fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 5.0) -> T:
    """Poll (real time) until `done(fetch())`: webhooks travel over real HTTP."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s; last value:\n{value}")
        await asyncio.sleep(0.02)


async def eventually(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait (real time) until `condition()` holds: media runs in real time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.02)


def request_action(permission: pb.Permission) -> pb.ActionStatus:
    return next(a for a in permission.actions if a.action == pb.ACTION_SEND_PERMISSION_REQUEST)


def call_action(permission: pb.Permission) -> pb.ActionStatus:
    return next(a for a in permission.actions if a.action == pb.ACTION_START_CALL)


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The gRPC error a call ends with (it must fail)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def settings_for(tmp_path: Path, **changes: object) -> Settings:
    values: dict[str, object] = {
        "grpc_address": "127.0.0.1:0",
        "http_address": "127.0.0.1:0",
        "db": f"sqlite:///{tmp_path / 'wacall.db'}",
        "clock": "manual",
        "sim_state": str(tmp_path / "simulator.json"),
        # Tests write their audio and recordings in their own directory: the service reads and writes only there.
        "media_dir": str(tmp_path),
        "recordings_dir": str(tmp_path),
        # The aiortc bridge, whatever the machine has installed: the engine bridge has tests of its own
        # (test_engine_bridge.py, test_browser.py), which ask for the local rtpengine.
        "rtpengine": "off",
    }
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


async def start_service(settings: Settings, wall_clock: Clock | None = None) -> Running:
    service = Service(settings, wall_clock)
    addresses = await service.start()
    channel = grpc.aio.insecure_channel(addresses.grpc)
    token = settings.auth_token
    return Running(
        service=service,
        addresses=addresses,
        channel=channel,
        calling=calling_pb2_grpc.CallingServiceStub(channel),
        sim=simulator_pb2_grpc.SimulatorServiceStub(channel),
        clock=clock_pb2_grpc.ClockServiceStub(channel),
        metadata=(("authorization", f"Bearer {token}"),) if token else (),
    )


async def stop_service(running: Running) -> None:
    await running.channel.close()
    await running.service.stop(grace=0.5)


@pytest.fixture
async def wacall(tmp_path: Path) -> AsyncIterator[Running]:
    running = await start_service(settings_for(tmp_path))
    try:
        yield running
    finally:
        await stop_service(running)


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Start a service with settings changes (policy, policy_overrides, auth_token...); stopped at teardown."""
    started: list[Running] = []

    async def make(**changes: object) -> Running:
        running = await start_service(settings_for(tmp_path, **changes))
        started.append(running)
        return running

    yield make
    for running in started:
        await stop_service(running)


MINUTE = 60
HOUR = 3600
DAY = 24 * HOUR
MARGIN = 2  # every preset's boundary_margin, in seconds: a window limit frees this long after the platform's instant


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL 15 on loopback for the session (tests/postgres_server.py); `create_database()` per test."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()
