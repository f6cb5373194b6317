"""The `wacall` command: `serve`, and client subcommands for people at a terminal."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.testing.v1 import clock_pb2, clock_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.config import CHOICES, DESCRIPTIONS, SCALARS, ConfigError, Settings, load_settings
from wacall.logs import configure_logging
from wacall.simulator.standalone import add_parser as simulate_parser
from wacall.simulator.standalone import run as simulate

DEFAULT_ADDRESS = "127.0.0.1:50051"
METAVARS = {"db": "URL", "sim_state": "FILE", "sim_address": "HOST:PORT", "rtpengine": "ADDR[,ADDR...]|off"}
REQUEST_ANSWERS = ["accept_temporary", "accept_permanent", "reject", "ignore"]


def _when(ts: timestamp_pb2.Timestamp, present: bool = True) -> str:
    if not present:
        return "-"
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")


def _enum(enum_type: object, value: int, prefix: str) -> str:
    name: str = enum_type.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix)


def format_permission(p: pb.Permission) -> str:
    state = _enum(pb.PermissionState, p.state, "PERMISSION_STATE_")
    lines = [
        f"{p.business_number} -> {p.user_number}   policy {p.policy}",
        f"  permission: {state}" + (f" (expires {_when(p.expires_at)})" if p.HasField("expires_at") else ""),
    ]
    window = f"open until {_when(p.service_window_expires_at)}" if p.HasField("service_window_expires_at") else "closed"
    lines.append(f"  service window: {window}")
    lines.append(
        f"  unanswered streak: {p.consecutive_unanswered_calls}"
        + ("  (user prompted to reconsider)" if p.user_prompted else "")
    )
    for action in p.actions:
        name = _enum(pb.Action, action.action, "ACTION_").lower().replace("_", " ")
        verdict = "allowed" if action.allowed else f"refused: {_enum(pb.Reason, action.reason, 'REASON_')}"
        if action.channel:
            verdict += f" (channel {_enum(pb.Channel, action.channel, 'CHANNEL_').lower()})"
        if action.HasField("next_allowed_at"):
            verdict += f", next allowed {_when(action.next_allowed_at)}"
        lines.append(f"  {name}: {verdict}")
        for limit in action.limits:
            hours = limit.window.seconds // 3600
            window_text = f"{hours // 24} d" if hours % 24 == 0 and hours > 24 else f"{hours} h"
            resets = f", frees at {_when(limit.resets_at)}" if limit.HasField("resets_at") else ""
            lines.append(f"      {limit.used}/{limit.max_allowed} per {window_text}{resets}")
    return "\n".join(lines)


def format_behavior(b: sim_pb.UserBehavior) -> str:
    answer = sim_pb.PermissionRequestResponse.Name(b.on_permission_request)
    delay = b.reply_delay.ToTimedelta()
    talk = b.talk_duration.ToTimedelta()
    voice = b.say_file or ("silence" if b.tone_hz < 0 else f"a {b.tone_hz:g} Hz tone")
    return (
        f"{b.user_number}: requests {answer}" + (f" after {human_duration(delay)}" if delay else "")
        + (" (outdated client: requests fail with 131026)" if b.outdated_client else "")
        + f"; calls: {sim_pb.OnCall.Name(b.on_call)} after {human_duration(b.ring_duration.ToTimedelta())} of ringing"
        + (f", talks {human_duration(talk)}" if talk else "") + f", says {voice}"
    )  # fmt: skip


def format_call(c: pb.Call) -> str:
    state = _enum(pb.CallState, c.state, "CALL_STATE_")
    outcome = f" {_enum(pb.CallOutcome, c.outcome, 'CALL_OUTCOME_')}" if c.outcome else ""
    direction = "->" if c.direction == pb.CALL_DIRECTION_BUSINESS_INITIATED else "<-"
    media = c.media
    return (
        f"{c.call_id} {c.business_number} {direction} {c.user_number} {state}{outcome} route={c.route} "
        f"created {_when(c.created_at)}"
        + (f", answered {_when(c.answered_at)}" if c.HasField("answered_at") else "")
        + (f", ended {_when(c.ended_at)} ({c.duration_seconds} s)" if c.HasField("ended_at") else "")
        + (
            f"\n  audio: {media.frames_sent} frames sent, {media.audible_frames_received} audible of "
            f"{media.frames_received} received"
            if media.frames_sent or media.frames_received
            else ""
        )
        + (f"\n  platform error {c.platform_error.code}: {c.platform_error.message}" if c.platform_error.code else "")
        + (f"\n  {c.end_reason}" if c.end_reason else "")
    )


def format_event(e: pb.Event) -> str:
    kind = _enum(pb.EventKind, e.kind, "EVENT_KIND_").lower()
    source = _enum(pb.EventSource, e.source, "EVENT_SOURCE_").lower()
    state = _enum(pb.PermissionState, e.permission_state, "PERMISSION_STATE_")
    extras = " ".join(f"{k}={v}" for k, v in sorted(e.attributes.items()))
    if e.HasField("call"):
        call_state = _enum(pb.CallState, e.call.state, "CALL_STATE_")
        outcome = f" {_enum(pb.CallOutcome, e.call.outcome, 'CALL_OUTCOME_')}" if e.call.outcome else ""
        extras = f"call {e.call.call_id} {call_state}{outcome}"
    return (
        f"#{e.cursor} {_when(e.occurred_at)} {e.business_number} {e.user_number} {kind} by {source} "
        f"-> {state} {extras}".rstrip()
    )


def human_duration(delta: timedelta) -> str:
    """24 h, 23 h 59 min, 6 d 23 h, 45 s: hours up to two days, then days; the two largest units."""
    seconds = max(round(delta.total_seconds()), 0)
    days, rest = divmod(seconds, 86400) if seconds >= 2 * 86400 else (0, seconds)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n} {unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")) if n]
    return " ".join(parts[:2]) or "0 s"


def _instant(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC" if at.second else "%Y-%m-%d %H:%M UTC")


def describe_status(code: str, message: str, details: Sequence[any_pb2.Any], now: datetime) -> str:
    """An error for people: the status and message, then each google.rpc detail as a readable line. `now` is the
    service's time (its clock may be a manual one), so "retry ... at" is when the service will allow it."""
    lines = [f"error: {code}: {message}"]
    for detail in details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta()
            lines.append(f"  retry in {human_duration(delay)} (at {_instant(now + delay)})")
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            lines += [f"  limit reached: {v.description} ({v.subject})" for v in quota.violations]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            precondition = error_details_pb2.PreconditionFailure()
            detail.Unpack(precondition)
            lines += [f"  {v.type} ({v.subject}): {v.description}" for v in precondition.violations]
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            lines += [f"  bad {v.field}: {v.description}" for v in bad.field_violations]
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            lines.append(f"  {info.reason} ({info.domain})")
            lines += [f"    {key}: {value}" for key, value in sorted(info.metadata.items())]
    return "\n".join(lines)


def describe_error(error: grpc.aio.AioRpcError, now: datetime) -> str:
    status = rpc_status.from_call(error)
    return describe_status(error.code().name, error.details() or "", list(status.details) if status else [], now)


async def service_now(channel: grpc.aio.Channel, md: list[tuple[str, str]]) -> datetime:
    """The service's time: its manual clock when it runs one, else this terminal's."""
    try:
        reply = await clock_pb2_grpc.ClockServiceStub(channel).Now(clock_pb2.NowRequest(), metadata=md, timeout=2)
    except grpc.aio.AioRpcError:
        return datetime.now(UTC)
    now: datetime = reply.now.ToDatetime().replace(tzinfo=UTC)
    return now


def _metadata() -> list[tuple[str, str]]:
    token = os.environ.get("WACALL_AUTH_TOKEN", "")
    return [("authorization", f"Bearer {token}")] if token else []


def client_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """A channel to the service: plaintext, or TLS when --tls, --ca or --cert is given (the system's roots when no
    --ca; a client certificate for mutual TLS with --cert and --key)."""
    if not (args.tls or args.ca or args.cert):
        return grpc.aio.insecure_channel(args.address)
    if bool(args.cert) != bool(args.key):
        raise SystemExit("--cert and --key go together (the client certificate for mutual TLS and its key)")

    def read(path: str | None) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as error:
            raise SystemExit(f"cannot read {path}: {error.strerror}") from None

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca), private_key=read(args.key), certificate_chain=read(args.cert)
    )
    return grpc.aio.secure_channel(args.address, credentials)


async def run_client(args: argparse.Namespace) -> int:
    async with client_channel(args) as channel:
        calling = calling_pb2_grpc.CallingServiceStub(channel)
        md = _metadata()
        try:
            match args.command, getattr(args, "subcommand", None):
                case "permission", "get":
                    print(
                        format_permission(
                            await calling.GetPermission(
                                pb.GetPermissionRequest(business_number=args.business, user_number=args.user),
                                metadata=md,
                            )
                        )
                    )
                case "permission", "request":
                    template = (
                        pb.Template(name=args.template, language=args.language, body_parameters=args.param or [])
                        if args.template
                        else None
                    )
                    result = await calling.RequestPermission(
                        pb.RequestPermissionRequest(
                            business_number=args.business,
                            user_number=args.user,
                            body_text=args.text or "",
                            template=template,
                            idempotency_key=args.idempotency_key or "",
                        ),
                        metadata=md,
                    )
                    channel_name = _enum(pb.Channel, result.channel, "CHANNEL_").lower()
                    print(f"sent {result.message_id} as {channel_name}" + (" (replayed)" if result.replayed else ""))
                    print(format_permission(result.permission))
                case "events", "watch":
                    async for event in calling.WatchEvents(
                        pb.WatchEventsRequest(
                            business_number=args.business or "",
                            user_number=args.user or "",
                            after_cursor=args.after or "",
                            only_new=args.only_new,
                        ),
                        metadata=md,
                    ):
                        print(format_event(event), flush=True)
                case "sim", str(sub):
                    await _sim(simulator_pb2_grpc.SimulatorServiceStub(channel), sub, args, md)
                case "call", str(sub):
                    await _call(calling, sub, args, md)
                case "clock", sub:
                    clock = clock_pb2_grpc.ClockServiceStub(channel)
                    if sub == "advance":
                        reply = await clock.Advance(
                            clock_pb2.AdvanceRequest(duration=_duration(args.duration)), metadata=md
                        )
                    else:
                        reply = await clock.Now(clock_pb2.NowRequest(), metadata=md)
                    print(_when(reply.now))
        except grpc.aio.AioRpcError as error:
            print(describe_error(error, await service_now(channel, md)), file=sys.stderr)
            return 1
    return 0


def _duration(text: str) -> duration_pb2.Duration:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise SystemExit(f"bad duration {text!r}: use e.g. 90s, 15m, 24h, 7d") from None
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=seconds))
    return d


async def _sim(
    sim: simulator_pb2_grpc.SimulatorServiceStub, sub: str, args: argparse.Namespace, md: list[tuple[str, str]]
) -> None:
    if sub == "behavior":
        # A merge: only what was given on the command line changes.
        behavior = sim_pb.SetUserBehaviorRequest(user_number=args.user, on_permission_request=args.on_request.upper())
        if args.delay is not None:
            behavior.reply_delay.CopyFrom(_duration(args.delay))
        if args.outdated_client is not None:
            behavior.outdated_client = args.outdated_client
        reply = await sim.SetUserBehavior(behavior, metadata=md)
        print(format_behavior(reply))
    elif sub == "message":
        reply = await sim.SendUserMessage(
            sim_pb.SendUserMessageRequest(business_number=args.business, user_number=args.user, text=args.text),
            metadata=md,
        )
        print(f"user message {reply.message_id} delivered")
    elif sub in ("grant", "revoke"):
        if sub == "grant":
            permission = await sim.GrantPermission(
                sim_pb.GrantPermissionRequest(
                    business_number=args.business, user_number=args.user, permanent=args.permanent
                ),
                metadata=md,
            )
        else:
            permission = await sim.RevokePermission(
                sim_pb.RevokePermissionRequest(business_number=args.business, user_number=args.user), metadata=md
            )
        print(f"platform permission: {permission.status}")
    elif sub == "phone":
        phone = sim_pb.SetUserBehaviorRequest(user_number=args.user, on_call=args.on_call.upper())
        for name, value in (("ring_duration", args.ring), ("talk_duration", args.talk)):
            if value is not None:
                getattr(phone, name).CopyFrom(_duration(value))
        if args.tone_hz is not None:
            phone.tone_hz = args.tone_hz
        if args.on_request is not None:
            phone.on_permission_request = args.on_request.upper()
        reply = await sim.SetUserBehavior(phone, metadata=md)
        print(format_behavior(reply))
    elif sub == "call-business":
        phone_call = await sim.PlaceUserCall(
            sim_pb.PlaceUserCallRequest(business_number=args.business, user_number=args.user), metadata=md
        )
        print(f"{args.user} is calling {args.business}: {phone_call.platform_call_id}")
    elif sub == "messages":
        reply = await sim.ListMessages(sim_pb.ListMessagesRequest(user_number=args.user), metadata=md)
        for m in reply.messages:
            kind = sim_pb.MessageType.Name(m.type).removeprefix("MESSAGE_TYPE_").lower()
            what = m.body_text if kind == "interactive" else f"{m.template_name}/{m.template_language}"
            print(f"{_when(m.sent_at)} {m.business_number} -> {m.user_number} {kind} {what!r} user: {m.user_response}")


async def _call(
    calling: calling_pb2_grpc.CallingServiceStub, sub: str, args: argparse.Namespace, md: list[tuple[str, str]]
) -> None:
    if sub == "start":
        if args.media_stream:
            route = pb.Route(media_stream=pb.MediaStreamRoute())
        else:
            route = pb.Route(announcement=pb.AnnouncementRoute(
                audio_file=args.audio_file or "", tone_hz=args.tone_hz, tone_duration=_duration(args.tone_duration),
                record_to=args.record_to or ""))  # fmt: skip
        call = await calling.StartCall(
            pb.StartCallRequest(business_number=args.business, user_number=args.user, route=route,
                                idempotency_key=args.idempotency_key or ""), metadata=md)  # fmt: skip
        print(format_call(call))
    elif sub == "get":
        print(format_call(await calling.GetCall(pb.GetCallRequest(call_id=args.call_id), metadata=md)))
    elif sub == "end":
        print(format_call(await calling.EndCall(pb.EndCallRequest(call_id=args.call_id), metadata=md)))
    elif sub == "list":
        reply = await calling.ListCalls(
            pb.ListCallsRequest(business_number=args.business or "", user_number=args.user or ""), metadata=md
        )
        for call in reply.calls:
            print(format_call(call))


def tls_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A client command's TLS options (see `client_channel`)."""
    p.add_argument("--tls", action="store_true", help="connect over TLS (implied by --ca and --cert)")
    p.add_argument(
        "--ca", metavar="FILE", default=os.environ.get("WACALL_CA"), help="PEM CA that signed the service's "
        "certificate (default: the system's; env WACALL_CA)"
    )  # fmt: skip
    p.add_argument("--cert", metavar="FILE", help="PEM client certificate, for a service requiring mutual TLS")
    p.add_argument("--key", metavar="FILE", help="PEM private key of --cert")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wacall", description="WhatsApp Business Calling permissions and calls.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the service",
        description="Run the service. Settings come from defaults, then --config, then WACALL_* variables, then "
        "these flags.",
    )
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file (env WACALL_CONFIG)")
    defaults = Settings()
    for name in SCALARS:
        choices = CHOICES.get(name)
        default = getattr(defaults, name)
        shown = repr(default) if default == "" else str(default)
        serve.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            type=SCALARS[name],
            # Choices are listed, not enforced here: load_settings checks every source alike, with one message.
            metavar="{" + ",".join(choices) + "}" if choices else METAVARS.get(name, name.split("_")[-1].upper()),
            help=f"{DESCRIPTIONS[name]} (default: {shown}; env WACALL_{name.upper()})",
        )

    migrate = commands.add_parser(
        "migrate",
        help="apply the database's schema migrations and exit",
        description="Bring the database to this wacall's schema (serve does it too when it starts), for operators "
        "who apply migrations separately. The URL comes from --db, else WACALL_DB, else --config.",
    )
    migrate.add_argument("--config", metavar="FILE", help="TOML configuration file (env WACALL_CONFIG)")
    migrate.add_argument("--db", metavar="URL", default=None, help=f"{DESCRIPTIONS['db']} (env WACALL_DB)")

    def client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--address",
            default=os.environ.get("WACALL_ADDRESS", DEFAULT_ADDRESS),
            help="gRPC address of the service (env WACALL_ADDRESS)",
        )
        return tls_options(p)

    def sim_client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # A standalone simulator has its own address (the one `serve --sim-address` names); else the service's.
        p.add_argument(
            "--address",
            default=os.environ.get("WACALL_SIM_ADDRESS") or os.environ.get("WACALL_ADDRESS", DEFAULT_ADDRESS),
            help="gRPC address of the simulator: wacall simulate's --grpc-address, or the service embedding it "
            "(env WACALL_SIM_ADDRESS, else WACALL_ADDRESS)",
        )
        return tls_options(p)

    permission = commands.add_parser("permission", help="read or request a user's call permission")
    permission_sub = permission.add_subparsers(dest="subcommand", required=True)
    get = client(permission_sub.add_parser("get", help="what the pair may do now"))
    get.add_argument("business")
    get.add_argument("user")
    request = client(permission_sub.add_parser("request", help="send a call-permission request"))
    request.add_argument("business")
    request.add_argument("user")
    request.add_argument("--text", help="body of the interactive message")
    request.add_argument("--template", help="template name (when the service window is closed)")
    request.add_argument("--language", default="en")
    request.add_argument("--param", action="append", help="template body parameter (repeatable)")
    request.add_argument("--idempotency-key")

    events = commands.add_parser("events", help="follow the ledger")
    events_sub = events.add_subparsers(dest="subcommand", required=True)
    watch = client(events_sub.add_parser("watch", help="print events as they happen"))
    watch.add_argument("--business")
    watch.add_argument("--user")
    watch.add_argument("--after", help="resume after this cursor")
    watch.add_argument("--only-new", action="store_true")

    sim = commands.add_parser(
        "sim",
        help="drive the WhatsApp simulator (--address: the service's, or wacall simulate's --grpc-address)",
    )
    sim_sub = sim.add_subparsers(dest="subcommand", required=True)
    behavior = sim_client(sim_sub.add_parser("behavior", help="how a simulated user answers permission requests"))
    behavior.add_argument("user")
    behavior.add_argument("on_request", choices=REQUEST_ANSWERS)
    behavior.add_argument("--delay", help="reply delay, e.g. 30s or 2h (default: keep; at once for a new user)")
    behavior.add_argument(
        "--outdated-client",
        action=argparse.BooleanOptionalAction,
        help="the user's app is too old for call permission requests: they fail with 131026 (default: keep)",
    )
    message = sim_client(sim_sub.add_parser("message", help="the user writes to the business (opens the window)"))
    message.add_argument("business")
    message.add_argument("user")
    message.add_argument("text", nargs="?", default="Hello")
    for verb in ("grant", "revoke"):
        p = sim_client(sim_sub.add_parser(verb, help=f"the user {verb}s permission from the business profile"))
        p.add_argument("business")
        p.add_argument("user")
        if verb == "grant":
            p.add_argument("--permanent", action="store_true")
    messages = sim_client(sim_sub.add_parser("messages", help="what the business sent to a user"))
    messages.add_argument("user")

    phone = sim_client(sim_sub.add_parser("phone", help="how a simulated user's phone behaves when called"))
    phone.add_argument("user")
    phone.add_argument("on_call", choices=["answer", "no_answer", "decline"])
    phone.add_argument("--ring", help="ring time before acting, e.g. 3s (default: keep; 3s for a new user)")
    phone.add_argument("--talk", help="talk time before hanging up; 0s: until the business does (default: keep)")
    phone.add_argument("--tone-hz", type=float, help="what the user says: a tone in Hz, -1 for silence (default: keep)")
    phone.add_argument(
        "--on-request", choices=REQUEST_ANSWERS, help="how they answer permission requests (default: keep)"
    )
    call_me = sim_client(sim_sub.add_parser("call-business", help="the user calls the business"))
    call_me.add_argument("business")
    call_me.add_argument("user")

    call = commands.add_parser("call", help="place and follow calls")
    call_sub = call.add_subparsers(dest="subcommand", required=True)
    start = client(call_sub.add_parser("start", help="call a user (announcement by default)"))
    start.add_argument("business")
    start.add_argument("user")
    start.add_argument("--audio-file", help="a WAV/OGG/MP3 file on the server to play")
    start.add_argument("--tone-hz", type=float, default=440.0)
    start.add_argument("--tone-duration", default="5s")
    start.add_argument("--record-to", help="record the user to this WAV file on the server")
    start.add_argument("--media-stream", action="store_true", help="route to a CallMedia stream instead")
    start.add_argument("--idempotency-key")
    for verb in ("get", "end"):
        p = client(call_sub.add_parser(verb, help=f"{verb} a call"))
        p.add_argument("call_id")
    listing = client(call_sub.add_parser("list", help="calls, newest first"))
    listing.add_argument("--business")
    listing.add_argument("--user")

    simulate_parser(commands)

    clock = commands.add_parser("clock", help="the manual clock (serve --clock manual)")
    clock_sub = clock.add_subparsers(dest="subcommand", required=True)
    client(clock_sub.add_parser("now"))
    advance = client(clock_sub.add_parser("advance"))
    advance.add_argument("duration", help="e.g. 90s, 15m, 24h, 7d")
    return parser


async def serve(args: argparse.Namespace) -> int:
    from wacall.app import AddressUnavailable, Service
    from wacall.simulator.remote import SimulatorUnreachable

    try:
        settings = load_settings(args.config, {name: getattr(args, name) for name in SCALARS})
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    service = Service(settings)
    # Handlers first: a supervisor may signal as soon as it reads the banner.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        addresses = await service.start()
    except (AddressUnavailable, SimulatorUnreachable) as exc:
        print(f"wacall: {exc}", file=sys.stderr)
        await service.stop(grace=0)
        return 1
    except ConfigError as exc:  # what can only be checked while starting (an inbound audio file that is not audio)
        print(f"configuration error: {exc}", file=sys.stderr)
        await service.stop(grace=0)
        return 2
    graph = f" (simulated Graph API at {addresses.graph})" if addresses.graph else ""
    sip = "".join(f" sip_{name.lower()}={host}:{port}" for name, (host, port) in service.sip_addresses.items())
    print(
        f"wacall serving grpc={addresses.grpc} http={addresses.http}{sip} upstream={settings.upstream}{graph} "
        f"clock={settings.clock} policy={service.policy.label} db={settings.db}",
        flush=True,
    )
    await stop.wait()
    await service.stop()
    print("wacall stopped", flush=True)
    return 0


def migrate(args: argparse.Namespace) -> int:
    from wacall.store import StoreError, migrate_database

    try:
        settings = load_settings(args.config, {"db": args.db})
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        before, after = migrate_database(settings.db)
    except StoreError as exc:
        print(f"wacall migrate: {exc}", file=sys.stderr)
        return 1
    if before == after:
        print(f"schema version {after}: already current, nothing to do", flush=True)
    else:
        print(f"migrated the schema from version {before} to version {after}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return asyncio.run(serve(args))
    if args.command == "simulate":
        return asyncio.run(simulate(args))
    if args.command == "migrate":
        return migrate(args)
    return asyncio.run(run_client(args))


if __name__ == "__main__":
    raise SystemExit(main())
