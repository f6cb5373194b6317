"""Assembles the service: store, clock, policy, platform (simulated or Meta), gRPC server and HTTP server."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from wacall_client.sim.v1 import simulator_pb2, simulator_pb2_grpc
from wacall_client.testing.v1 import clock_pb2, clock_pb2_grpc
from wacall_client.v1 import calling_pb2, calling_pb2_grpc

from wacall.api.calling import CallingServicer
from wacall.api.clock import ClockServicer, restore_position
from wacall.api.errors import Context, MalformedRequestGuard
from wacall.call_service import CallService
from wacall.clock import Clock, ManualClock, SystemClock
from wacall.config import Settings
from wacall.graph import GraphClient
from wacall.permissions import PermissionService
from wacall.senders import ConfiguredSenders, ProvisioningSenders, SenderDirectory
from wacall.simulator.platform import GRAPH_VERSION, SimulatedPlatform, number_for_phone_number_id
from wacall.simulator.service import SimulatorServicer
from wacall.store import Store, open_store
from wacall.webhooks import (
    WEBHOOK_PATH,
    ConnectionLimits,
    HttpGuard,
    WebhookLimits,
    guarded_runner,
    start_http_server,
    webhook_routes,
)
from wacall_adapters.announcement import AnnouncementAdapter
from wacall_adapters.base import MediaAdapter
from wacall_adapters.media_stream import MediaStreamAdapter

log = logging.getLogger(__name__)

UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.",)
WORKER_PREFIX = "wacall-worker"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` metadata on every call except health checks."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"

        async def deny(request: Any, context: Context) -> None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'",
            )

        self._deny_unary: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream: grpc.RpcMethodHandler[Any, Any] = grpc.unary_stream_rpc_method_handler(deny)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method or ""
        if method.startswith(UNAUTHENTICATED_PREFIXES):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", ""))
        if hmac.compare_digest(given.encode(), self._expected.encode()):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is not None and handler.response_streaming:
            return self._deny_stream
        return self._deny_unary


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class AddressUnavailable(Exception):
    """A listening address cannot be bound (another process holds it): the service does not start."""

    def __init__(self, what: str, address: str, flag: str, why: str) -> None:
        super().__init__(
            f"cannot listen for {what} on {address}: {why} (another wacall running? choose another with {flag})"
        )


def _ensure_free(what: str, host: str, port: int, flag: str) -> None:
    """Fail with one clear line before grpc's core logs its own: binds the address as a listener would (no port
    sharing), then lets it go."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            why = os.strerror(error.errno) if error.errno else str(error)
            raise AddressUnavailable(what, f"{host}:{port}", flag, why) from None


@dataclass
class Addresses:
    grpc: str
    http: str
    graph: str | None


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = settings.load_policy()
        self.clock: Clock = ManualClock() if settings.clock == "manual" else SystemClock()
        self.store: Store | None = None
        self.platform: SimulatedPlatform | None = None
        self.graph: GraphClient | None = None
        self.permissions: PermissionService | None = None
        self.calls: CallService | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http_runner: web.AppRunner | None = None
        self._http_server: asyncio.Server | None = None
        self.http_guard: HttpGuard | None = None
        self._sim_runner: web.AppRunner | None = None
        self._health = health.aio.HealthServicer()
        self._executor: ThreadPoolExecutor | None = None
        self._recovery: asyncio.Task[None] | None = None

    async def start(self) -> Addresses:
        settings = self.settings
        grpc_host, grpc_port = _split(settings.grpc_address)
        _ensure_free("gRPC", grpc_host, grpc_port, "--grpc-address")
        # aiortc encodes audio in the loop's default executor (MEDIA-3): a named pool of known size, so thread
        # counts stay bounded and readable.
        self._executor = ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix=WORKER_PREFIX)
        asyncio.get_running_loop().set_default_executor(self._executor)
        self.store = open_store(settings.db)
        if isinstance(self.clock, ManualClock):
            await restore_position(self.clock, self.store)
        graph_address: str | None = None
        senders: SenderDirectory
        if settings.upstream == "sim":
            self.platform = SimulatedPlatform(
                self.clock,
                self.policy,
                state_path=Path(settings.sim_state) if settings.sim_state else None,
                no_media_at_start=timedelta(seconds=settings.sim_no_media_at_start_seconds),
                no_media_mid_call=timedelta(seconds=settings.sim_no_media_mid_call_seconds),
            )
            sim_app = web.Application()
            sim_app.add_routes(self.platform.routes())
            self._sim_runner = web.AppRunner(sim_app, access_log=None)
            await self._sim_runner.setup()
            site = web.TCPSite(self._sim_runner, "127.0.0.1", 0)
            await site.start()
            port = self._sim_runner.addresses[0][1]
            graph_address = f"http://127.0.0.1:{port}"
            self.graph = GraphClient(f"{graph_address}/{GRAPH_VERSION}")
            platform = self.platform
            for account in settings.senders:
                platform.register(account)
            senders = ProvisioningSenders(
                settings.senders, platform.provision, number_for_phone_number_id, platform.app_secret
            )
        else:
            self.graph = GraphClient(settings.graph_base_url)
            senders = ConfiguredSenders(settings.senders)
        self.permissions = PermissionService(
            self.store,
            self.clock,
            self.policy,
            senders,
            self.graph,
            reservation_grace=timedelta(seconds=settings.reservation_grace_seconds),
        )

        http_app = web.Application(client_max_size=settings.max_webhook_bytes + 1)
        http_app.add_routes(
            webhook_routes(
                self.permissions,
                lambda: settings.webhook_verify_token or None,
                settings.max_webhook_bytes,
                webhook_limits(settings),
            )
        )
        self._http_runner, self.http_guard = guarded_runner(http_app, connection_limits(settings))
        await self._http_runner.setup()
        http_host, http_port = _split(settings.http_address)
        try:
            self._http_server = await start_http_server(self._http_runner, self.http_guard, http_host, http_port)
        except OSError as error:
            why = os.strerror(error.errno) if error.errno else str(error)
            raise AddressUnavailable("webhooks (HTTP)", f"{http_host}:{http_port}", "--http-address", why) from None
        bound_http = self._http_server.sockets[0].getsockname()
        http_address = f"{http_host}:{bound_http[1]}"
        if self.platform is not None:
            self.platform.webhook_url = f"http://{http_address}{WEBHOOK_PATH}"

        interceptors: list[grpc.aio.ServerInterceptor] = (
            [BearerTokenInterceptor(settings.auth_token)] if settings.auth_token else []
        )
        # No port sharing: a second service on the same port must fail, not take half of the calls.
        server = grpc.aio.server(
            interceptors=[*interceptors, MalformedRequestGuard()], options=[("grpc.so_reuseport", 0)]
        )
        self.calls = CallService(
            self.permissions,
            self.graph,
            inbound_route=self._inbound_route(),
            inbound_route_name=settings.inbound_route,
            media_timeout=timedelta(seconds=settings.media_timeout_seconds),
        )
        await self.calls.start_background()
        calling_pb2_grpc.add_CallingServiceServicer_to_server(CallingServicer(self.permissions, self.calls), server)
        names = [calling_pb2.DESCRIPTOR.services_by_name["CallingService"].full_name]
        if self.platform is not None:
            simulator_pb2_grpc.add_SimulatorServiceServicer_to_server(SimulatorServicer(self.platform), server)
            names.append(simulator_pb2.DESCRIPTOR.services_by_name["SimulatorService"].full_name)
        if isinstance(self.clock, ManualClock):
            settle = self.platform.settle if self.platform is not None else _nothing
            clock_pb2_grpc.add_ClockServiceServicer_to_server(ClockServicer(self.clock, settle, self.store), server)
            names.append(clock_pb2.DESCRIPTOR.services_by_name["ClockService"].full_name)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        try:
            bound = server.add_insecure_port(f"{grpc_host}:{grpc_port}")
        except RuntimeError:
            bound = 0
        if bound == 0 or (grpc_port and bound != grpc_port):
            raise AddressUnavailable("gRPC", f"{grpc_host}:{grpc_port}", "--grpc-address", "Address already in use")
        await server.start()
        self._grpc = server
        # Requests a killed process left unsettled are settled in the background: asking the platform must not hold
        # up start-up (Meta may be slow or unreachable), and a retry of such a key settles it on the spot anyway.
        self._recovery = asyncio.create_task(self.permissions.keep_recovering())
        for name in ["", *names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return Addresses(grpc=f"{grpc_host}:{bound}", http=http_address, graph=graph_address)

    def _inbound_route(self) -> Callable[[], MediaAdapter]:
        """What answers a user's call."""
        settings = self.settings
        if settings.inbound_route == "media_stream":
            return MediaStreamAdapter
        return lambda: AnnouncementAdapter(audio_file=settings.inbound_audio_file)

    async def stop(self, grace: float = 2.0) -> None:
        await self._health.enter_graceful_shutdown()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        if self.calls is not None:
            await self.calls.close()
        if self._http_server is not None:
            self._http_server.close()
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        if self.platform is not None:
            await self.platform.close()
        if self._sim_runner is not None:
            await self._sim_runner.cleanup()
        if self.graph is not None:
            await self.graph.close()
        if self.store is not None:
            await self.store.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def wait(self) -> None:
        assert self._grpc is not None
        await self._grpc.wait_for_termination()


def webhook_limits(settings: Settings) -> WebhookLimits:
    return WebhookLimits(
        max_body_bytes=settings.max_webhook_bytes,
        max_clock_skew=timedelta(seconds=settings.webhook_max_clock_skew_seconds),
        max_age=timedelta(seconds=settings.webhook_max_age_seconds),
        max_expiry_ahead=timedelta(seconds=settings.webhook_max_expiry_ahead_seconds),
        body_timeout=timedelta(seconds=settings.http_body_timeout_seconds),
    )


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout=timedelta(seconds=settings.http_header_timeout_seconds),
        idle_timeout=timedelta(seconds=settings.http_idle_timeout_seconds),
        max_connections=settings.http_max_connections,
    )


async def _nothing() -> None:
    await asyncio.sleep(0)
