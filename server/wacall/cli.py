"""The `wacall` command: `serve`, and client subcommands for people at a terminal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.testing.v1 import clock_pb2, clock_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.config import SCALARS, ConfigError, load_settings

DEFAULT_ADDRESS = "127.0.0.1:50051"


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


def describe_error(error: grpc.aio.AioRpcError) -> str:
    lines = [f"error: {error.code().name}: {error.details()}"]
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        for kind in (
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.BadRequest,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                lines.append(f"  {kind.__name__}: {str(message).strip()}".replace("\n", "; "))
    return "\n".join(lines)


def _metadata() -> list[tuple[str, str]]:
    token = os.environ.get("WACALL_AUTH_TOKEN", "")
    return [("authorization", f"Bearer {token}")] if token else []


async def run_client(args: argparse.Namespace) -> int:
    async with grpc.aio.insecure_channel(args.address) as channel:
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
            print(describe_error(error), file=sys.stderr)
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
        reply = await sim.SetUserBehavior(
            sim_pb.SetUserBehaviorRequest(
                user_number=args.user,
                on_permission_request=args.on_request.upper(),
                reply_delay=_duration(args.delay),
                outdated_client=args.outdated_client,
            ),
            metadata=md,
        )
        print(f"{reply.user_number}: {sim_pb.PermissionRequestResponse.Name(reply.on_permission_request)}")
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
        reply = await sim.SetUserBehavior(
            sim_pb.SetUserBehaviorRequest(
                user_number=args.user, on_call=args.on_call.upper(), ring_duration=_duration(args.ring),
                talk_duration=_duration(args.talk), tone_hz=args.tone_hz,
                on_permission_request=args.on_request.upper(),
            ),
            metadata=md,
        )  # fmt: skip
        print(f"{reply.user_number}: {sim_pb.OnCall.Name(reply.on_call)} after {reply.ring_duration.ToTimedelta()}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wacall", description="WhatsApp Business Calling permissions and calls.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument("--config", help="TOML configuration file (env WACALL_CONFIG)")
    for name in SCALARS:
        serve.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            type=SCALARS[name],
            help=f"(env WACALL_{name.upper()})",
        )

    def client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--address",
            default=os.environ.get("WACALL_ADDRESS", DEFAULT_ADDRESS),
            help="gRPC address of the service (env WACALL_ADDRESS)",
        )
        return p

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

    sim = commands.add_parser("sim", help="drive the embedded WhatsApp simulator")
    sim_sub = sim.add_subparsers(dest="subcommand", required=True)
    behavior = client(sim_sub.add_parser("behavior", help="how a simulated user answers permission requests"))
    behavior.add_argument("user")
    behavior.add_argument("on_request", choices=["accept_temporary", "accept_permanent", "reject", "ignore"])
    behavior.add_argument("--delay", default="0s", help="reply delay, e.g. 30s or 2h")
    behavior.add_argument("--outdated-client", action="store_true")
    message = client(sim_sub.add_parser("message", help="the user writes to the business (opens the window)"))
    message.add_argument("business")
    message.add_argument("user")
    message.add_argument("text", nargs="?", default="Hello")
    for verb in ("grant", "revoke"):
        p = client(sim_sub.add_parser(verb, help=f"the user {verb}s permission from the business profile"))
        p.add_argument("business")
        p.add_argument("user")
        if verb == "grant":
            p.add_argument("--permanent", action="store_true")
    messages = client(sim_sub.add_parser("messages", help="what the business sent to a user"))
    messages.add_argument("user")

    phone = client(sim_sub.add_parser("phone", help="how a simulated user's phone behaves when called"))
    phone.add_argument("user")
    phone.add_argument("on_call", choices=["answer", "no_answer", "decline"])
    phone.add_argument("--ring", default="3s", help="ring time before acting, e.g. 3s")
    phone.add_argument("--talk", default="0s", help="talk time before hanging up (0: until the business does)")
    phone.add_argument("--tone-hz", type=float, default=880.0, help="what the user says (a tone)")
    phone.add_argument("--on-request", default="ignore",
                       choices=["accept_temporary", "accept_permanent", "reject", "ignore"])  # fmt: skip
    call_me = client(sim_sub.add_parser("call-business", help="the user calls the business"))
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

    clock = commands.add_parser("clock", help="the manual clock (serve --clock manual)")
    clock_sub = clock.add_subparsers(dest="subcommand", required=True)
    client(clock_sub.add_parser("now"))
    advance = client(clock_sub.add_parser("advance"))
    advance.add_argument("duration", help="e.g. 90s, 15m, 24h, 7d")
    return parser


async def serve(args: argparse.Namespace) -> int:
    from wacall.app import AddressUnavailable, Service

    try:
        settings = load_settings(args.config, {name: getattr(args, name) for name in SCALARS})
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    service = Service(settings)
    # Handlers first: a supervisor may signal as soon as it reads the banner.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        addresses = await service.start()
    except AddressUnavailable as exc:
        print(f"wacall: {exc}", file=sys.stderr)
        await service.stop(grace=0)
        return 1
    graph = f" (simulated Graph API at {addresses.graph})" if addresses.graph else ""
    print(
        f"wacall serving grpc={addresses.grpc} http={addresses.http} upstream={settings.upstream}{graph} "
        f"clock={settings.clock} policy={service.policy.label} db={settings.db}",
        flush=True,
    )
    await stop.wait()
    await service.stop()
    print("wacall stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return asyncio.run(serve(args))
    return asyncio.run(run_client(args))


if __name__ == "__main__":
    raise SystemExit(main())
