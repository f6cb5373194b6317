"""Assembles the service: store, clock, policy, platform (simulated or Meta), gRPC server and HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import socket
import ssl
import tempfile
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from wacall_client.internal.v1 import replicas_pb2_grpc
from wacall_client.sim.v1 import simulator_pb2, simulator_pb2_grpc
from wacall_client.testing.v1 import clock_pb2, clock_pb2_grpc
from wacall_client.v1 import calling_pb2, calling_pb2_grpc, contact_center_pb2, contact_center_pb2_grpc

from wacall.api.calling import CallingServicer
from wacall.api.clock import ClockServicer, restore_position, save_position
from wacall.api.contact_center import ContactCenterServicer
from wacall.api.forwarding import OwnerForwarding
from wacall.api.replicas import OwnerCalls, ReplicaServicer
from wacall.api.serving import ServedMethods
from wacall.calls.queue_route import QueueCalls
from wacall.calls.service import CallService
from wacall.calls.sip_route import SipBridgedRoute, SipRoutes
from wacall.clock import Clock, ManualClock, SystemClock
from wacall.config import ConfigError, Settings, engine_addresses, sip_address
from wacall.fields import InvalidField
from wacall.health import ReadinessCheck, health_routes, start_following_readiness, store_answers
from wacall.inbound import BusinessRestriction, CallEventItem, InboundMessage, MessageStatus, PermissionReply
from wacall.ingest import Dispatcher, Handler
from wacall.media.engine_leg import EngineBridgeLeg, PeerMedia
from wacall.media.engine_process import INSTALL_HINT, EngineSettings, LocalEngine
from wacall.media.rtpengine import EnginePool, NgClient
from wacall.metrics import LiveState, Metrics
from wacall.operations import (
    InstrumentedStore,
    InstrumentedUpstream,
    ObservedDispatcher,
    Operations,
    RpcObserver,
    webhook_middleware,
)
from wacall.permissions import PermissionService
from wacall.queues.service import QueueService
from wacall.simulator.platform import GRAPH_VERSION, SimulatedPlatform, number_for_phone_number_id
from wacall.simulator.remote import RemotePlatform, SimulatorLink, fetch_platform_config, webhook_url_listed
from wacall.simulator.service import SimulatorServicer
from wacall.siptrunk.endpoint import SipEndpoint
from wacall.siptrunk.front_door import FrontDoorCalls
from wacall.softphone.web import SoftphoneBackend, softphone_routes
from wacall.store import Store, open_store
from wacall.upstreams.base import Upstream
from wacall.upstreams.meta.graph import GraphClient
from wacall.upstreams.meta.legacy import mark_legacy_setup_failures
from wacall.upstreams.meta.senders import ConfiguredSenders, MetaSenderDirectory, ProvisioningSenders
from wacall.upstreams.meta.upstream import MetaUpstream
from wacall.upstreams.meta.webhooks import (
    WEBHOOK_PATH,
    ConnectionLimits,
    HttpGuard,
    WebhookLimits,
    guarded_runner,
    start_http_server,
    webhook_routes,
)
from wacall_adapters.registry import plan_inbound_route
from wacall_adapters.routes import InboundOptions, RoutePlan, RouteRefused, ServerFiles, SipDial

log = logging.getLogger(__name__)

WORKER_PREFIX = "wacall-worker"
ENGINE_CHECK_INTERVAL = 5.0  # seconds between pings of every media engine


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
    """The assembled service. `start` runs one setup step per component; each enters its teardown into one
    AsyncExitStack, so `stop` (and a start that fails half way) undoes exactly what was set up, in reverse order."""

    def __init__(self, settings: Settings, wall_clock: Clock | None = None) -> None:
        self.settings = settings
        self.policy = settings.load_policy()
        self.clock: Clock = ManualClock() if settings.clock == "manual" else SystemClock()
        # Call leases say whether a process is alive: real time even under the manual clock (tests inject theirs).
        self.wall_clock: Clock = wall_clock or SystemClock()
        self.store: Store | None = None
        self.platform: SimulatedPlatform | None = None
        self.sim_verify_token = ""  # a standalone simulator's webhook verify token (--sim-address)
        self.sim_link: SimulatorLink | None = None  # a standalone simulator's configuration, kept current
        self.upstream: MetaUpstream | None = None
        self.permissions: PermissionService | None = None
        self.calls: CallService | None = None
        self.dispatcher: Dispatcher | None = None
        self.http_guard: HttpGuard | None = None
        self.engines: EnginePool[NgClient] | None = None  # None: webrtc calls are bridged in process
        self.local_engine: LocalEngine | None = None
        self.media_note = ""  # how webrtc calls are bridged, logged once the service has started
        self.sip: SipEndpoint | None = None  # the SIP front door (and the sip route's endpoint), when configured
        self.sip_addresses: dict[str, tuple[str, int]] = {}
        self.sip_routes = SipRoutes((), None)  # replaced once the media engine is known (_build_calls)
        self.front_door: FrontDoorCalls | None = None
        self.queues: QueueService | None = None  # the contact centre
        self.softphone = SoftphoneBackend(settings.auth_token)  # the agent page's handlers, filled in as it starts
        # The queue and agent routes' side of the contact centre (built with the calls, joined to it later).
        self.queue_calls = QueueCalls(settings.media_dir)
        self._grpc: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        # Metrics, and one log line per RPC, webhook and decision (wacall.operations).
        self.metrics = Metrics()
        self.operations = Operations(self.metrics)
        self._stack = contextlib.AsyncExitStack()
        self._grace = 2.0
        self._softphone_address: str | None = None  # the agent page's way to the API when it differs

    async def start(self) -> Addresses:
        async with contextlib.AsyncExitStack() as stack:
            self._setup_executor(stack)
            self._setup_files()
            store = self.store = InstrumentedStore(await self._setup_store(stack), self.metrics)
            graph_address, senders = await self._setup_platform(stack)
            upstream = InstrumentedUpstream(await self._setup_upstream(stack, graph_address), self.metrics)
            permissions = self._setup_permissions(store, senders, upstream)
            engines = await self._setup_media_engine(stack)
            calls = await self._build_calls(permissions, upstream, engines)
            dispatcher = self._setup_dispatcher(store, permissions, calls)
            http_address = await self._setup_http(stack, dispatcher, senders)
            await self._setup_calls(stack, permissions, calls)
            await self._setup_sip(stack, calls)
            queues = await self._setup_queues(stack, store, permissions, calls)
            # Run before the SIP endpoint closes (the stack unwinds in reverse): a PBX leg still hears its BYE.
            stack.push_async_callback(self._end_calls_with_a_pbx_leg)
            grpc_address, names = await self._setup_grpc(stack, store, permissions, calls, queues)
            self._setup_softphone(stack, queues, grpc_address)
            self._setup_live_metrics(calls, queues)
            await self._setup_health(stack, names)
            # Started: from here on the teardown belongs to stop().
            self._stack = stack.pop_all()
        log.info("%s", self.media_note)
        if self.sip is not None:
            listening = ", ".join(f"{name} {host}:{port}" for name, (host, port) in self.sip_addresses.items())
            log.info("SIP front door listening on %s (%d trunks)", listening, len(self.sip.trunks))
        return Addresses(grpc=grpc_address, http=http_address, graph=graph_address)

    async def stop(self, grace: float = 2.0) -> None:
        self._grace = grace
        await self._stack.aclose()

    async def wait(self) -> None:
        assert self._grpc is not None
        await self._grpc.wait_for_termination()

    # --- one setup step per component, each entering its own teardown ---------------------------------------------

    def _setup_executor(self, stack: contextlib.AsyncExitStack) -> None:
        # aiortc encodes audio in the loop's default executor (MEDIA-3): a named pool of known size, so thread
        # counts stay bounded and readable.
        executor = ThreadPoolExecutor(max_workers=self.settings.worker_threads, thread_name_prefix=WORKER_PREFIX)
        asyncio.get_running_loop().set_default_executor(executor)
        stack.callback(executor.shutdown, wait=False)

    def _setup_files(self) -> None:
        """The directories files named in RPCs are confined to; made here so that a fresh install just works."""
        for directory in (self.settings.media_dir, self.settings.recordings_dir):
            Path(directory).mkdir(parents=True, exist_ok=True)

    async def _setup_store(self, stack: contextlib.AsyncExitStack) -> Store:
        store = self.store = open_store(self.settings.db)
        stack.push_async_callback(store.close)
        await store.transaction(mark_legacy_setup_failures)
        if isinstance(self.clock, ManualClock):
            await restore_position(self.clock, store)
        return store

    async def _setup_platform(self, stack: contextlib.AsyncExitStack) -> tuple[str | None, MetaSenderDirectory]:
        """The embedded simulator with its Graph endpoints (upstream sim), or the configured Meta senders."""
        settings = self.settings
        if settings.upstream != "sim":
            return None, ConfiguredSenders(settings.senders)
        if settings.sim_address.strip():
            return await self._use_remote_simulator(stack, settings.sim_address.strip())
        platform = self.platform = SimulatedPlatform(
            self.clock,
            self.policy,
            state_path=Path(settings.sim_state) if settings.sim_state else None,
            no_media_at_start=timedelta(seconds=settings.sim_no_media_at_start_seconds),
            no_media_mid_call=timedelta(seconds=settings.sim_no_media_mid_call_seconds),
        )
        sim_app = web.Application()
        sim_app.add_routes(platform.routes())
        sim_runner = web.AppRunner(sim_app, access_log=None)
        await sim_runner.setup()
        stack.push_async_callback(sim_runner.cleanup)
        stack.push_async_callback(platform.close)
        site = web.TCPSite(sim_runner, "127.0.0.1", 0)
        await site.start()
        port = sim_runner.addresses[0][1]
        platform.graph_base_url = f"http://127.0.0.1:{port}/{GRAPH_VERSION}"
        for account in settings.senders:
            platform.register(account)
        senders = ProvisioningSenders(
            settings.senders, platform.sender, number_for_phone_number_id, platform.app_secret
        )
        return f"http://127.0.0.1:{port}", senders

    async def _use_remote_simulator(
        self, stack: contextlib.AsyncExitStack, address: str
    ) -> tuple[str, MetaSenderDirectory]:
        """A simulator in another process (`wacall simulate`): its Graph URL, secret and accounts, asked over gRPC
        (waiting a while for one started at the same time), and asked again when it restarts with others; its
        SimulatorService is not served here."""
        token = self.settings.sim_auth_token
        remote = await fetch_platform_config(address, token=token)
        senders = ProvisioningSenders(remote.accounts, remote.provision, number_for_phone_number_id, remote.app_secret)
        self.sim_verify_token = remote.webhook_verify_token

        def use(fresh: RemotePlatform) -> None:
            senders.replace(fresh.accounts, fresh.provision, fresh.app_secret)
            self.sim_verify_token = fresh.webhook_verify_token

        self.sim_link = SimulatorLink(remote, use, token=token)
        stack.push_async_callback(self.sim_link.close)
        log.info("using the simulator at %s (Graph API at %s/%s)", address, remote.graph_root, GRAPH_VERSION)
        return remote.graph_root, senders

    async def _setup_upstream(self, stack: contextlib.AsyncExitStack, graph_address: str | None) -> MetaUpstream:
        # The service talks to the simulator over HTTP, exactly as to Meta.
        base_url = f"{graph_address}/{GRAPH_VERSION}" if graph_address is not None else self.settings.graph_base_url
        graph = GraphClient(base_url)
        if self.sim_link is not None:
            graph.on_unauthorized = self.sim_link.suspect
        upstream = self.upstream = MetaUpstream(graph)
        stack.push_async_callback(upstream.close)
        return upstream

    def _setup_permissions(self, store: Store, senders: MetaSenderDirectory, upstream: Upstream) -> PermissionService:
        self.permissions = PermissionService(
            store,
            self.clock,
            self.policy,
            senders,
            upstream,
            reservation_grace=timedelta(seconds=self.settings.reservation_grace_seconds),
            instance=f"{self._instance_name()}/{uuid.uuid4().hex[:16]}".lstrip("/"),
            observer=self.operations,
        )
        return self.permissions

    def _instance_name(self) -> str:
        """This process's name among those sharing the database (see `instance_name`); "" when it has none."""
        if self.settings.instance_name:
            return self.settings.instance_name
        _, port = _split(self.settings.grpc_address)
        return f"{socket.gethostname()}:{port}" if port else ""

    def _setup_dispatcher(self, store: Store, permissions: PermissionService, calls: CallService) -> Dispatcher:
        """Inbound deliveries, each item to the service that applies it."""
        self.dispatcher = ObservedDispatcher(store, self.clock, dispatch_table(permissions, calls))
        return self.dispatcher

    async def _setup_http(
        self, stack: contextlib.AsyncExitStack, dispatcher: Dispatcher, senders: MetaSenderDirectory
    ) -> str:
        """The webhook endpoint; the simulator delivers its webhooks there."""
        settings = self.settings
        http_app = web.Application(client_max_size=settings.max_webhook_bytes + 1)
        http_app.add_routes(
            webhook_routes(
                dispatcher,
                senders,
                lambda: settings.webhook_verify_token or self.sim_verify_token or None,
                settings.max_webhook_bytes,
                webhook_limits(settings),
                on_bad_signature=self.sim_link.suspect if self.sim_link is not None else None,
            )
        )
        http_app.add_routes(softphone_routes(self.softphone))
        http_app.add_routes(health_routes(self.metrics, self._readiness_checks()))
        http_app.middlewares.append(webhook_middleware(WEBHOOK_PATH, self.metrics))
        runner, self.http_guard = guarded_runner(http_app, connection_limits(settings))
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        http_host, http_port = _split(settings.http_address)
        try:
            server = await start_http_server(runner, self.http_guard, http_host, http_port)
        except OSError as error:
            why = os.strerror(error.errno) if error.errno else str(error)
            raise AddressUnavailable("webhooks (HTTP)", f"{http_host}:{http_port}", "--http-address", why) from None
        stack.callback(server.close)
        http_address = f"{http_host}:{server.sockets[0].getsockname()[1]}"
        if self.platform is not None:
            self.platform.webhook_url = f"http://{http_address}{WEBHOOK_PATH}"
        link = self.sim_link
        if link is not None and not webhook_url_listed(
            list(link.current.webhook_urls), int(http_address.rpartition(":")[2])
        ):
            log.warning(
                "the simulator at %s delivers webhooks to %s, none of which is this service's (port %s, path %s): "
                "this service will get no webhooks; add its URL to wacall simulate --webhook-url (replicas of one "
                "service on one database) or --webhook-route NUMBER=URL (another stack)",
                link.current.address,
                ", ".join(link.current.webhook_urls) or "no URL",
                http_address.rpartition(":")[2],
                WEBHOOK_PATH,
            )
        return http_address

    async def _setup_media_engine(self, stack: contextlib.AsyncExitStack) -> EnginePool[NgClient] | None:
        """The rtpengines that bridge webrtc calls: the external ones configured, else a local one when it is
        installed; None (bridge in process) with `off` or when none is installed."""
        addresses = engine_addresses(self.settings.rtpengine)
        if addresses == []:
            self.media_note = "webrtc calls are bridged in this process (aiortc): --rtpengine off"
            return None
        if addresses is None:
            if shutil.which(EngineSettings().binary) is None:
                self.media_note = f"no rtpengine installed: webrtc calls are bridged in this process ({INSTALL_HINT})"
                return None
            local = self.local_engine = LocalEngine()
            await local.start()
            stack.push_async_callback(local.stop)
            clients = [local.client]
            self.media_note = (
                f"webrtc calls are bridged in a local rtpengine (pid {local.pid}, ng port {local.ng_port})"
            )
        else:
            clients = []
            for address in addresses:
                client = await NgClient.connect(address)
                stack.push_async_callback(client.close)
                clients.append(client)
            self.media_note = f"webrtc calls are bridged in rtpengine at {self.settings.rtpengine}"
        engines = self.engines = EnginePool(clients, self.wall_clock)

        async def keep_checking() -> None:
            while True:
                await engines.check()
                await asyncio.sleep(ENGINE_CHECK_INTERVAL)

        checking = asyncio.create_task(keep_checking(), name="wacall-engine-checks")

        async def stop_checking() -> None:
            checking.cancel()
            await asyncio.gather(checking, return_exceptions=True)

        stack.push_async_callback(stop_checking)
        return engines

    async def _build_calls(
        self, permissions: PermissionService, upstream: Upstream, engines: EnginePool[NgClient] | None
    ) -> CallService:
        """Call control: built before the webhook endpoint (which dispatches call events to it), started after."""

        def engine_bridge(call_id: str, peer_offer: str, pool: EnginePool[NgClient]) -> EngineBridgeLeg:
            return EngineBridgeLeg(pool, call_id, peer_offer)

        # The SIP endpoint is started later (_setup_sip) and handed to the sip routes then.
        self.sip_routes = SipRoutes(
            self.settings.sip_trunks,
            engines,
            answer_timeout=self.settings.sip_answer_timeout_seconds,
            inbound_answer_timeout=self.settings.sip_inbound_answer_timeout_seconds,
        )
        inbound_route = await self._inbound_route(self.settings.inbound_route)
        inbound_routes = {
            business: await self._inbound_route(setting) for business, setting in self.settings.inbound_routes
        }
        for plan in (inbound_route, *inbound_routes.values()):
            if plan.sip is not None:
                self._check_inbound_sip(plan.sip, engines)
        return CallService(
            permissions,
            upstream,
            engine_bridges=functools.partial(engine_bridge, pool=engines) if engines is not None else None,
            sip_routes=self.sip_routes,
            inbound_route=inbound_route,
            inbound_routes=inbound_routes,
            media_timeout=timedelta(seconds=self.settings.media_timeout_seconds),
            call_lease=timedelta(seconds=self.settings.call_lease_seconds),
            instance_name=self._instance_name(),
            wall_clock=self.wall_clock,
        )

    async def _end_calls_with_a_pbx_leg(self) -> None:
        calls = self.calls
        if calls is None:
            return
        # Together: each may wait on its PBX (a BYE's answer, a CANCEL's final) for up to 64*T1.
        ending = [call_id for call_id, s in calls.sessions.items() if isinstance(s.adapter, SipBridgedRoute)]
        results = await asyncio.gather(
            *(calls.end(call_id, reason="the service is shutting down") for call_id in ending), return_exceptions=True
        )
        for call_id, result in zip(ending, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("call %s could not be ended at shutdown: %s", call_id, result)

    def _check_inbound_sip(self, dial: SipDial, engines: EnginePool[NgClient] | None) -> None:
        """`--inbound-route sip:<trunk>` needs that trunk, the SIP endpoint and a media engine, checked at start."""
        setting = f"--inbound-route {self.settings.inbound_route}"
        if not (self.settings.sip_address.strip() or self.settings.sip_tls_address.strip()):
            raise ConfigError(f"{setting} hands users' calls to a PBX over SIP: give --sip-address too")
        if engines is None:
            raise ConfigError(f"{setting} bridges users' calls in rtpengine, and none runs: {self.media_note}")
        try:
            self.sip_routes.trunk(dial.trunk)
        except InvalidField as problem:
            raise ConfigError(f"{setting}: {problem.why}") from None

    async def _setup_calls(
        self, stack: contextlib.AsyncExitStack, permissions: PermissionService, calls: CallService
    ) -> None:
        self.calls = calls
        stack.push_async_callback(calls.close)
        await calls.start_background()
        # Requests a killed process left unsettled are settled in the background: asking the platform must not hold
        # up start-up (Meta may be slow or unreachable), and a retry of such a key settles it on the spot anyway.
        recovery = asyncio.create_task(permissions.keep_recovering())

        async def stop_recovery() -> None:
            recovery.cancel()
            await asyncio.gather(recovery, return_exceptions=True)

        stack.push_async_callback(stop_recovery)

    async def _setup_queues(
        self, stack: contextlib.AsyncExitStack, store: Store, permissions: PermissionService, calls: CallService
    ) -> QueueService:
        """The contact centre: its router state, timers and agent sessions (closed before the calls are)."""
        queues = self.queues = QueueService(store, self.clock, permissions, calls)
        self.queue_calls.bind(calls, queues)
        await queues.start()
        stack.push_async_callback(queues.close)
        return queues

    def _setup_softphone(self, stack: contextlib.AsyncExitStack, queues: QueueService, grpc_address: str) -> None:
        """The agent page's WebSocket reaches the contact centre; its customer lookup, the gRPC API (over TLS, its
        private Unix socket: see _setup_grpc), unless mutual TLS guards the API and no token does."""
        self.softphone.queues = queues
        stack.push_async_callback(self.softphone.close)
        if refusal := lookup_refusal(self.settings):
            self.softphone.lookup_refusal = refusal
            log.warning("the agent page's customer lookup (/agent/api) is off: %s", self.softphone.lookup_refusal)
            return
        self.softphone.connect(self._softphone_address or grpc_address)

    async def _setup_sip(self, stack: contextlib.AsyncExitStack, calls: CallService) -> None:
        """The SIP endpoint and its front door when --sip-address or --sip-tls-address is set. SIP media goes
        through rtpengine only: without one the front door answers INVITEs 503 (and says so here)."""
        settings = self.settings
        address = sip_address(settings.sip_address, "sip_address")
        tls_address = sip_address(settings.sip_tls_address, "sip_tls_address")
        if address is None and tls_address is None:
            return
        tls: tuple[str, int, ssl.SSLContext] | None = None
        if tls_address is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                context.load_cert_chain(settings.sip_tls_cert, settings.sip_tls_key)
            except (OSError, ssl.SSLError) as error:
                raise ConfigError(f"sip_tls_cert / sip_tls_key cannot be loaded: {error}") from None
            tls = (*tls_address, context)
        host = (address or tls_address or ("", 0))[0]
        agent = host if host not in ("", "0.0.0.0", "::") else socket.gethostname()
        endpoint = SipEndpoint(settings.sip_trunks, agent=agent)
        try:
            self.sip_addresses = await endpoint.start(address, tls)
        except OSError as error:
            why = os.strerror(error.errno) if error.errno else str(error)
            shown = settings.sip_address or settings.sip_tls_address
            raise AddressUnavailable("SIP", shown, "--sip-address / --sip-tls-address", why) from None
        stack.push_async_callback(endpoint.close)
        self.sip = endpoint
        self.sip_routes.endpoint = endpoint  # the sip route's INVITEs go out through it
        engines = self.engines

        def engine_leg(peer_offer: str, peer: PeerMedia) -> EngineBridgeLeg:
            assert engines is not None
            return EngineBridgeLeg(engines, f"sip-{uuid.uuid4().hex}", peer_offer, peer)

        front_door = self.front_door = FrontDoorCalls(
            endpoint,
            calls,
            engine_legs=engine_leg if engines is not None else None,
            clock=self.clock,
            nonce_secret=settings.sip_nonce_secret.encode() or None,
        )
        # Before the endpoint closes (the stack unwinds in reverse): the PBXs hear their calls end.
        stack.push_async_callback(front_door.close)
        if engines is None:
            log.warning("SIP front door: no media engine (%s): INVITEs are answered 503", self.media_note)

    def _server_files(self) -> ServerFiles:
        return ServerFiles(
            media_dir=self.settings.media_dir, recordings_dir=self.settings.recordings_dir, queues=self.queue_calls
        )

    async def _inbound_route(self, setting: str) -> RoutePlan:
        """What answers a user's call: a configured route, checked once here."""
        options = InboundOptions(audio_file=self.settings.inbound_audio_file)
        try:
            return await plan_inbound_route(setting, options, self._server_files())
        except (InvalidField, RouteRefused) as problem:
            raise ConfigError(f"the inbound route ({setting}) cannot answer calls: {problem}") from None

    async def _setup_grpc(
        self,
        stack: contextlib.AsyncExitStack,
        store: Store,
        permissions: PermissionService,
        calls: CallService,
        queues: QueueService,
    ) -> tuple[str, list[str]]:
        """The gRPC API (and the simulator's and manual clock's services when they run); the bound address and the
        service names health reports on."""
        settings = self.settings
        grpc_host, grpc_port = _split(settings.grpc_address)
        _ensure_free("gRPC", grpc_host, grpc_port, "--grpc-address")
        credentials = grpc_tls_credentials(settings)
        # Made before the server's stop is entered, so it is removed after the server stopped.
        private = credentials is not None and not lookup_refusal(settings)
        private_directory = self._private_directory(stack) if private else None
        # No port sharing: a second service on the same port must fail, not take half of the calls.
        grpc_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        # Calls for another replica's calls go to their owner; closed after the server stops: forwarded calls finish
        # first.
        forwarding = OwnerForwarding(calls, replica_channel_credentials(settings), token=settings.auth_token)
        stack.push_async_callback(forwarding.close)
        stack.push_async_callback(lambda: grpc_server.stop(self._grace))
        # Services are registered through ServedMethods (each method checks the token, parses its own requests and
        # is recorded, with no interceptor); the port on the server.
        server = ServedMethods(grpc_server, bearer_token=settings.auth_token, recorder=RpcObserver(self.metrics))
        calling_pb2_grpc.add_CallingServiceServicer_to_server(
            CallingServicer(permissions, calls, self._server_files(), forwarding), server
        )
        names = [calling_pb2.DESCRIPTOR.services_by_name["CallingService"].full_name]
        contact_center_pb2_grpc.add_ContactCenterServiceServicer_to_server(
            ContactCenterServicer(queues, settings.media_dir), server
        )
        names.append(contact_center_pb2.DESCRIPTOR.services_by_name["ContactCenterService"].full_name)
        # Between replicas (an agent here, a call's media there): served, but not announced by reflection.
        replicas_pb2_grpc.add_ReplicaServiceServicer_to_server(ReplicaServicer(queues), server)
        queues.set_owner_actions(OwnerCalls(forwarding))
        if self.platform is not None:
            simulator_pb2_grpc.add_SimulatorServiceServicer_to_server(
                SimulatorServicer(self.platform, settings.media_dir), server
            )
            names.append(simulator_pb2.DESCRIPTOR.services_by_name["SimulatorService"].full_name)
        if isinstance(self.clock, ManualClock):
            settle = self.platform.settle if self.platform is not None else _nothing
            clock_pb2_grpc.add_ClockServiceServicer_to_server(
                ClockServicer(self.clock, settle, functools.partial(save_position, store)), server
            )
            names.append(clock_pb2.DESCRIPTOR.services_by_name["ClockService"].full_name)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(names), server)
        # gRPC wants an IPv6 host in brackets.
        grpc_target = f"[{grpc_host}]:{grpc_port}" if ":" in grpc_host else f"{grpc_host}:{grpc_port}"
        try:
            if credentials is None:
                bound = grpc_server.add_insecure_port(grpc_target)
            else:
                bound = grpc_server.add_secure_port(grpc_target, credentials)
        except RuntimeError as error:
            raise AddressUnavailable("gRPC", grpc_target, "--grpc-address", str(error)) from None
        if bound == 0 or (grpc_port and bound != grpc_port):
            why = "Address already in use" if bound == 0 else f"gRPC bound port {bound} instead"
            raise AddressUnavailable("gRPC", grpc_target, "--grpc-address", why)
        if private_directory is not None:
            self._softphone_address = f"unix:{private_directory}/api.sock"
            try:
                socket_bound = grpc_server.add_insecure_port(self._softphone_address)
            except RuntimeError:
                socket_bound = 0
            if socket_bound == 0:
                raise ConfigError(
                    f"the agent page's private socket {self._softphone_address[5:]} cannot be bound (a Unix socket's "
                    f"path is at most {UNIX_PATH_MAX - 1} bytes): set TMPDIR to a shorter directory"
                )
        await grpc_server.start()
        self._grpc = grpc_server
        await calls.advertise(self.settings.advertise_address or advertised_address(grpc_host, bound))
        return (f"[{grpc_host}]:{bound}" if ":" in grpc_host else f"{grpc_host}:{bound}"), names

    def _private_directory(self, stack: contextlib.AsyncExitStack) -> str:
        """With TLS on, the agent page reaches the API over a Unix socket in this directory, which only this user
        can enter (mode 0700): it holds no client certificate for mutual TLS, and a loopback TCP port would be open
        to every local user. The bearer token still applies there."""
        directory = tempfile.TemporaryDirectory(prefix="wacall-", dir=_short_temporary_root())
        stack.callback(directory.cleanup)
        return directory.name

    async def _setup_health(self, stack: contextlib.AsyncExitStack, names: list[str]) -> None:
        """gRPC health: SERVING while ready (the same checks as /readyz, every few seconds), NOT_SERVING otherwise."""
        stack.push_async_callback(self._health.enter_graceful_shutdown)

        async def set_serving(serving: bool) -> None:
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ["", *names]:
                await self._health.set(name, status)

        following = await start_following_readiness(self._readiness_checks(), set_serving)

        async def stop_following() -> None:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)

        stack.push_async_callback(stop_following)

    def _readiness_checks(self) -> list[ReadinessCheck]:
        """Ready: the store answers, the platform is configured, and a media engine is alive when one is used."""

        async def platform() -> str | None:
            return None if self.upstream is not None else "platform (upstream) not configured"

        async def media_engine() -> str | None:
            engines = self.engines
            if engines is None or any(engines.alive(engine) for engine in engines.engines):
                return None
            return "no media engine alive"

        return [store_answers(lambda: self.store), platform, media_engine]

    def _setup_live_metrics(self, calls: CallService, queues: QueueService) -> None:
        """What /metrics reads at scrape time: live calls by route, queue depths, agents by presence."""

        def active_calls() -> dict[str, int]:
            return dict(Counter(s.route_name for s in calls.sessions.values() if not s.closed))

        def queue_depths() -> dict[str, int]:
            state = queues.state
            depths = dict.fromkeys(state.queues, 0)
            for waiting in state.waiting.values():
                depths[waiting.queue_id] = depths.get(waiting.queue_id, 0) + 1
            return depths

        def agents() -> dict[str, int]:
            return dict(Counter(agent.presence.value for agent in queues.state.agents.values()))

        self.metrics.live = LiveState(active_calls, queue_depths, agents)


def advertised_address(host: str, port: int) -> str:
    """Where other replicas reach a gRPC server bound to host:port: that address, or on a wildcard address the
    host name (which other hosts resolve; set advertise_address where they do not)."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def dispatch_table(permissions: PermissionService, calls: CallService) -> list[Handler[Any]]:
    """The dispatch table: which service applies each kind of inbound item (the rest are ignored)."""
    return [
        Handler(PermissionReply, permissions.apply_user_message),
        Handler(InboundMessage, permissions.apply_user_message),
        Handler(MessageStatus, permissions.apply_message_status),
        Handler(BusinessRestriction, permissions.apply_restriction),
        Handler(CallEventItem, calls.apply_call_event),
    ]


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


# The longest Unix socket path Linux takes, its terminating NUL included (sun_path).
UNIX_PATH_MAX = 108
# Room the private directory's own name and "api.sock" take below its root.
_PRIVATE_SOCKET_NAME_ROOM = len("/wacall-XXXXXXXX/api.sock")


def _short_temporary_root() -> str | None:
    """Where the private socket's directory goes: the usual temporary directory, or /tmp when that one's path is too
    long for a Unix socket (a deep TMPDIR, as on macOS or in CI). None: the usual one."""
    usual = tempfile.gettempdir()
    if len(os.fsencode(usual)) + _PRIVATE_SOCKET_NAME_ROOM < UNIX_PATH_MAX or not os.path.isdir("/tmp"):
        return None
    return "/tmp"


def lookup_refusal(settings: Settings) -> str:
    """Why the agent page's customer lookup is off ("" when it is on). The lookup calls the API from the HTTP port
    (StartCall included) with the bearer token the page sends: with mutual TLS and no token, it would be the one way
    into the API without a client certificate."""
    if settings.grpc_tls_client_ca.strip() and not settings.auth_token:
        return "the gRPC API requires client certificates (grpc_tls_client_ca) and no auth_token is set"
    return ""


def grpc_tls_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gRPC API's TLS credentials (None: plaintext); with a client CA, client certificates are required and
    verified against it (mutual TLS)."""
    if not settings.grpc_tls_cert:
        return None
    try:
        key = Path(settings.grpc_tls_key).read_bytes()
        chain = Path(settings.grpc_tls_cert).read_bytes()
        client_ca = Path(settings.grpc_tls_client_ca).read_bytes() if settings.grpc_tls_client_ca else None
        # grpc reports bad PEM only as a failure to bind: check them here, for a message that names them.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(settings.grpc_tls_cert, settings.grpc_tls_key)
        if client_ca is not None:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
    except (OSError, ssl.SSLError, ValueError) as error:
        raise ConfigError(f"grpc_tls_cert / grpc_tls_key / grpc_tls_client_ca cannot be loaded: {error}") from None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def replica_channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """How this replica reaches another one when it forwards a call to the call's owner (None: plaintext, as the API
    is served). With TLS, the other replica's certificate is checked against the client CA when one is set (the
    replicas' certificates then come from the CA that signs clients too), else against the system's roots; the
    replica shows its own certificate, which mutual TLS requires."""
    if not settings.grpc_tls_cert:
        return None
    client_ca = Path(settings.grpc_tls_client_ca).read_bytes() if settings.grpc_tls_client_ca else None
    return grpc.ssl_channel_credentials(
        root_certificates=client_ca,
        private_key=Path(settings.grpc_tls_key).read_bytes(),
        certificate_chain=Path(settings.grpc_tls_cert).read_bytes(),
    )


async def _nothing() -> None:
    await asyncio.sleep(0)
