"""`wacall simulate`: the simulated platform as its own process, shared by any number of services.

Its Graph endpoints listen on the HTTP address, `wacall.sim.v1.SimulatorService` (with reflection and health) on
the gRPC address, and its signed webhooks go round-robin inside a group of URLs (replicas of one service on one
database), a failed delivery moving on to the group's next URL. A business number given a `--webhook-route` has a
group of its own; any other uses the `--webhook-url` group. A service uses it with `wacall serve --upstream sim
--sim-address` (the gRPC address): it asks `GetPlatformConfig` for the Graph URL, the app secret and the accounts,
and talks to it over HTTP exactly as to Meta.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from wacall_client.sim.v1 import simulator_pb2, simulator_pb2_grpc
from wacall_client.testing.v1 import clock_pb2, clock_pb2_grpc

from wacall.api.auth import BearerTokenInterceptor
from wacall.api.clock import ClockServicer
from wacall.api.errors import MalformedRequestGuard
from wacall.clock import Clock, ManualClock, SystemClock
from wacall.numbers import InvalidNumber, PhoneNumber, parse_number
from wacall.rules.policy import PRESETS, PolicyError, load_policy
from wacall.simulator.platform import GRAPH_VERSION, SimulatedPlatform
from wacall.simulator.service import SimulatorServicer
from wacall.upstreams.base import TemplateRef
from wacall.upstreams.meta.webhooks import WEBHOOK_PATH

log = logging.getLogger(__name__)

DEFAULT_GRPC_ADDRESS = "127.0.0.1:50052"
DEFAULT_HTTP_ADDRESS = "127.0.0.1:8081"
# The app secret when none is given or kept: derived from nothing secret, so a simulator restarted without
# --sim-state signs with the same secret and accepts the same token, and the services using it go on working.
# A development tool's secret; GetPlatformConfig hands it to anyone who asks.
DEVELOPMENT_APP_SECRET = hashlib.sha256(b"wacall simulate: development app secret").hexdigest()[:32]


def access_token_for(app_secret: str) -> str:
    """The Graph token a standalone simulator accepts with `app_secret`: the same on every run."""
    return "sim-token-" + hashlib.sha256(b"wacall simulate: access token " + app_secret.encode()).hexdigest()[:16]


class SimulatorConfigError(ValueError):
    """A `wacall simulate` setting that cannot work, said in one line naming the flag."""


@dataclass(frozen=True)
class SimulatorSettings:
    grpc_address: str = DEFAULT_GRPC_ADDRESS
    http_address: str = DEFAULT_HTTP_ADDRESS
    webhook_urls: tuple[str, ...] = ()  # the default group
    webhook_routes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (business number E.164, its group)
    auth_token: str = ""  # "" = SimulatorService open to whoever reaches the gRPC address
    sim_state: str = ""  # "" = in memory only
    app_secret: str = ""  # "" = the one kept in sim_state, else DEVELOPMENT_APP_SECRET
    webhook_verify_token: str = ""
    graph_base_url: str = ""  # "" = http://HOST:PORT/v23.0 of http_address
    business_numbers: tuple[PhoneNumber, ...] = ()
    templates: tuple[TemplateRef, ...] = ()  # approved for every business number given
    policy: str = "seed"
    clock: str = "system"  # system | manual (ClockService on the gRPC address)
    no_media_at_start_seconds: float = 20.0
    no_media_mid_call_seconds: float = 30.0
    media_dir: str = "var/media"
    log_level: str = "INFO"


@dataclass(frozen=True)
class SimulatorAddresses:
    grpc: str
    http: str
    graph_base_url: str


def _host_port(address: str, flag: str) -> tuple[str, int]:
    """The host (an IPv6 one without its brackets) and port of HOST:PORT or [IPV6]:PORT."""
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SimulatorConfigError(f"{flag}: {address!r} is not host:port (port 0 picks a free one)")
    return host.strip("[]"), int(port)


def _joined(host: str, port: int) -> str:
    """HOST:PORT as gRPC and URLs want it: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether only this machine reaches `host` (a name other than localhost counts as reachable from outside)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(flag: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SimulatorConfigError(f"{flag} {url!r} is not an http(s) URL, e.g. http://127.0.0.1:8080{WEBHOOK_PATH}")
    return url


def _webhook_routes(texts: list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    routes: dict[str, tuple[str, ...]] = {}
    for text in texts:
        number, equals, urls = text.partition("=")
        if not equals or not urls.strip():
            raise SimulatorConfigError(
                f"--webhook-route {text!r} is not NUMBER=URL[,URL...], e.g. +447911123456=http://10.0.0.5:8080{WEBHOOK_PATH}"
            )
        try:
            business = parse_number(number.strip(), "--webhook-route")
        except InvalidNumber as error:
            raise SimulatorConfigError(f"--webhook-route {text!r}: {error.why}") from None
        if business.e164 in routes:
            raise SimulatorConfigError(f"--webhook-route: {business.e164} is routed twice")
        routes[business.e164] = tuple(_check_url("--webhook-route", url.strip()) for url in urls.split(","))
    return tuple(sorted(routes.items()))


def settings_from_args(args: argparse.Namespace) -> SimulatorSettings:
    """The flags checked into settings; SimulatorConfigError names the first one that cannot work."""
    if not args.webhook_url and not args.webhook_route:
        raise SimulatorConfigError(
            f"--webhook-url (or --webhook-route) is required: the {WEBHOOK_PATH} URL of each service sharing the "
            "simulator"
        )
    for url in args.webhook_url or ():
        _check_url("--webhook-url", url)
    routes = _webhook_routes(args.webhook_route or [])
    if args.graph_base_url:
        parts = urlsplit(args.graph_base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.path.endswith(f"/{GRAPH_VERSION}"):
            raise SimulatorConfigError(
                f"--graph-base-url {args.graph_base_url!r} is not an http(s) URL ending in /{GRAPH_VERSION}, "
                f"e.g. http://simulator:8081/{GRAPH_VERSION}"
            )
    _host_port(args.grpc_address, "--grpc-address")
    _host_port(args.http_address, "--http-address")
    numbers = []
    for number in args.business_number or ():
        try:
            numbers.append(parse_number(number, "--business-number"))
        except InvalidNumber as error:
            raise SimulatorConfigError(f"--business-number {number!r}: {error.why}") from None
    templates = []
    for text in args.template or ():
        name, slash, language = text.partition("/")
        if not slash or not name.strip() or not language.strip():
            raise SimulatorConfigError(f"--template {text!r} is not NAME/LANGUAGE, e.g. call_permission_request/en")
        templates.append(TemplateRef(name.strip(), language.strip()))
    try:
        load_policy(args.policy, {})
    except PolicyError as error:
        raise SimulatorConfigError(f"--policy: {error}") from None
    for flag, value in (("--no-media-at-start-seconds", args.no_media_at_start_seconds),
                        ("--no-media-mid-call-seconds", args.no_media_mid_call_seconds)):  # fmt: skip
        if value <= 0:
            raise SimulatorConfigError(f"{flag} must be greater than 0, got {value!r}")
    return SimulatorSettings(
        grpc_address=args.grpc_address,
        http_address=args.http_address,
        webhook_urls=tuple(args.webhook_url or ()),
        webhook_routes=routes,
        auth_token=args.auth_token,
        sim_state=args.sim_state,
        app_secret=args.app_secret,
        webhook_verify_token=args.webhook_verify_token,
        graph_base_url=args.graph_base_url,
        business_numbers=tuple(numbers),
        templates=tuple(templates),
        policy=args.policy,
        clock=args.clock,
        no_media_at_start_seconds=args.no_media_at_start_seconds,
        no_media_mid_call_seconds=args.no_media_mid_call_seconds,
        media_dir=args.media_dir,
        log_level=args.log_level.upper(),
    )


class StandaloneSimulator:
    """The simulated platform, its Graph endpoints and its gRPC control, started and stopped as one."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.clock: Clock = ManualClock() if settings.clock == "manual" else SystemClock()
        state_path = Path(settings.sim_state) if settings.sim_state else None
        kept = state_path is not None and state_path.exists()
        self.platform = SimulatedPlatform(
            self.clock,
            load_policy(settings.policy, {}),
            state_path=state_path,
            no_media_at_start=timedelta(seconds=settings.no_media_at_start_seconds),
            no_media_mid_call=timedelta(seconds=settings.no_media_mid_call_seconds),
        )
        if isinstance(self.clock, ManualClock) and self.platform.saved_clock_position is not None:
            # A manual clock resumes where the last run left it, as the service's does.
            self.clock.restore(self.platform.saved_clock_position)
        if settings.app_secret or not kept:
            # Given on the command line, it wins over the one a saved state holds; with neither, the same
            # development secret on every run (services re-fetch the configuration when it changes).
            secret = settings.app_secret or DEVELOPMENT_APP_SECRET
            self.platform.set_credentials(secret, access_token_for(secret))
        self._health = health.aio.HealthServicer()
        self._stack = contextlib.AsyncExitStack()

    async def start(self) -> SimulatorAddresses:
        settings = self.settings
        platform = self.platform
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(platform.close)
            platform.webhook_urls = list(settings.webhook_urls)
            platform.webhook_routes = {number: list(urls) for number, urls in settings.webhook_routes}
            platform.webhook_verify_token = settings.webhook_verify_token
            for business in settings.business_numbers:
                account = platform.provision(business)
                for template in settings.templates:
                    platform.approve_template(account, template)
            http = await self._serve_graph(stack)
            grpc_address = await self._serve_grpc(stack)
            self._stack = stack.pop_all()
        assert platform.graph_base_url is not None
        return SimulatorAddresses(grpc=grpc_address, http=http, graph_base_url=platform.graph_base_url)

    async def _serve_graph(self, stack: contextlib.AsyncExitStack) -> str:
        host, port = _host_port(self.settings.http_address, "--http-address")
        app = web.Application()
        app.add_routes(self.platform.routes())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, host, port, reuse_port=False)
        try:
            await site.start()
        except OSError as error:
            why = os.strerror(error.errno) if error.errno else str(error)
            raise SimulatorConfigError(f"--http-address {host}:{port}: cannot listen ({why})") from None
        bound = runner.addresses[0][1]
        # Services reach the Graph endpoints at this URL: a wildcard address is reached by the host's name.
        shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        self.platform.graph_base_url = self.settings.graph_base_url or f"http://{_joined(shown, bound)}/{GRAPH_VERSION}"
        return _joined(host, bound)

    async def _serve_grpc(self, stack: contextlib.AsyncExitStack) -> str:
        host, port = _host_port(self.settings.grpc_address, "--grpc-address")
        token = self.settings.auth_token
        interceptors: list[grpc.aio.ServerInterceptor] = [BearerTokenInterceptor(token)] if token else []
        grpc_server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
        stack.push_async_callback(lambda: grpc_server.stop(2.0))
        # Services are registered through the guard (it wraps each handler); the port and start are the server's.
        server = MalformedRequestGuard(grpc_server)
        simulator_pb2_grpc.add_SimulatorServiceServicer_to_server(
            SimulatorServicer(self.platform, self.settings.media_dir), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = []
        if isinstance(self.clock, ManualClock):
            platform = self.platform

            async def save_position(now: datetime) -> None:
                await platform.save()

            clock_pb2_grpc.add_ClockServiceServicer_to_server(
                ClockServicer(self.clock, platform.settle, save_position), server
            )
            names.append(clock_pb2.DESCRIPTOR.services_by_name["ClockService"].full_name)
        names += [
            simulator_pb2.DESCRIPTOR.services_by_name["SimulatorService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, server)
        address = _joined(host, port)
        try:
            bound = grpc_server.add_insecure_port(address)
        except RuntimeError as error:
            # gRPC's own words (it says no more than that it failed to bind, and how to see why).
            raise SimulatorConfigError(f"--grpc-address {address}: cannot listen: {error}") from None
        if port and bound != port:
            raise SimulatorConfigError(f"--grpc-address {address}: cannot listen: gRPC bound port {bound} instead")
        await grpc_server.start()
        stack.push_async_callback(self._health.enter_graceful_shutdown)
        for name in ("", *names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return _joined(host, bound)

    async def stop(self) -> None:
        """Stops serving; the platform's state is saved as it changes, so nothing is left to write."""
        await self._stack.aclose()


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`wacall simulate` and its flags."""
    simulate = commands.add_parser(
        "simulate",
        help="run the simulated WhatsApp platform on its own (for wacall serve --sim-address)",
        description="Run the simulated WhatsApp platform on its own: Graph endpoints on --http-address, "
        "wacall.sim.v1.SimulatorService on --grpc-address, its phones, and signed webhooks delivered round-robin "
        "inside a group of URLs (a failed delivery is tried on the group's next URL). The URLs of one group must be "
        "replicas of one service on one database: a webhook one of them acknowledges never reaches the others. "
        "--webhook-url gives the default group; --webhook-route gives a business number a group of its own (another "
        "stack, on another database). Services use it with wacall serve --upstream sim --sim-address GRPC_ADDRESS. "
        "For development and tests: GetPlatformConfig hands out its app secret (keep it on loopback, or set "
        "--auth-token).",
    )
    env = os.environ.get
    simulate.add_argument(
        "--grpc-address",
        default=env("WACALL_SIM_GRPC_ADDRESS", DEFAULT_GRPC_ADDRESS),
        metavar="HOST:PORT",
        help="where SimulatorService listens (port 0: a free one)",
    )
    simulate.add_argument(
        "--http-address",
        default=env("WACALL_SIM_HTTP_ADDRESS", DEFAULT_HTTP_ADDRESS),
        metavar="HOST:PORT",
        help="where the Graph endpoints listen (port 0: a free one)",
    )
    simulate.add_argument(
        "--webhook-url",
        action="append",
        metavar="URL",
        help=f"a webhook URL of the default group, e.g. http://127.0.0.1:8080{WEBHOOK_PATH}; repeat only for "
        "replicas of one service on one database (deliveries go round-robin across them)",
    )
    simulate.add_argument(
        "--webhook-route",
        action="append",
        metavar="NUMBER=URL[,URL...]",
        help="the webhook URLs of one business number's group (another stack, on its own database); its URLs, too, "
        "must be replicas of one service on one database (repeatable)",
    )
    simulate.add_argument(
        "--auth-token",
        default=env("WACALL_SIM_AUTH_TOKEN", ""),
        metavar="TOKEN",
        help="require 'authorization: Bearer TOKEN' on every gRPC call but health (wacall serve sends it with "
        "--sim-auth-token); needed off loopback, where anyone could read the app secret",
    )
    simulate.add_argument(
        "--sim-state",
        default="",
        metavar="FILE",
        help="file the platform's state is kept in between runs (default: memory only)",
    )
    simulate.add_argument(
        "--app-secret",
        default=env("WACALL_SIM_APP_SECRET", ""),
        help="the secret webhooks are signed with (default: the one kept in --sim-state, else a fixed development "
        "secret, the same on every run)",
    )
    simulate.add_argument(
        "--graph-base-url",
        default=env("WACALL_SIM_GRAPH_BASE_URL", ""),
        metavar="URL",
        help=f"the Graph base URL services are told to use (default: http://HOST:PORT/{GRAPH_VERSION} of "
        "--http-address, a wildcard host replaced by this host's name); for a proxy or a container network",
    )
    simulate.add_argument(
        "--webhook-verify-token",
        default=env("WACALL_SIM_WEBHOOK_VERIFY_TOKEN", ""),
        help="the verification token handed to services whose own --webhook-verify-token is empty",
    )
    simulate.add_argument(
        "--business-number",
        action="append",
        metavar="E164",
        help="a business number to provision at start (any valid one is also provisioned on use)",
    )
    simulate.add_argument(
        "--template",
        action="append",
        metavar="NAME/LANGUAGE",
        help="a template approved for every --business-number, besides call_permission_request/en",
    )
    simulate.add_argument(
        "--clock",
        default="system",
        choices=["system", "manual"],
        help="real time, or a manual clock moved with wacall.testing.v1.ClockService on --grpc-address "
        "(resumes across restarts with --sim-state)",
    )
    simulate.add_argument("--policy", default="seed", choices=sorted(PRESETS), help="the platform's rule set")
    simulate.add_argument(
        "--no-media-at-start-seconds",
        type=float,
        default=20.0,
        help="a phone drops a call with no audio from the business this long",
    )
    simulate.add_argument(
        "--no-media-mid-call-seconds",
        type=float,
        default=30.0,
        help="a phone drops a call whose business audio stops this long mid-call",
    )
    simulate.add_argument("--media-dir", default="var/media", help="where say_file audio is read from")
    simulate.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


async def run(args: argparse.Namespace) -> int:
    """`wacall simulate`: serve until SIGTERM or SIGINT."""
    try:
        settings = settings_from_args(args)
    except SimulatorConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    grpc_host, _ = _host_port(settings.grpc_address, "--grpc-address")
    if not settings.auth_token and not is_loopback(grpc_host):
        log.warning(
            "SimulatorService listens on %s with no --auth-token: anyone who reaches it can read the app secret "
            "and forge signed webhooks to every service using this simulator. Set --auth-token (and "
            "--sim-auth-token on each wacall serve), or keep --grpc-address on loopback.",
            settings.grpc_address,
        )
    simulator = StandaloneSimulator(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        addresses = await simulator.start()
    except SimulatorConfigError as error:
        print(f"wacall simulate: {error}", file=sys.stderr)
        return 1
    print(
        f"wacall simulating grpc={addresses.grpc} http={addresses.http} graph={addresses.graph_base_url} "
        f"webhooks={','.join(settings.webhook_urls)}"
        + "".join(f" route={number}={','.join(urls)}" for number, urls in settings.webhook_routes),
        flush=True,
    )
    await stop.wait()
    await simulator.stop()
    print("wacall simulate stopped", flush=True)
    return 0
