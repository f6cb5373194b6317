"""gRPC control of the simulator: wacall.sim.v1.SimulatorService."""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from typing import NoReturn

import grpc
from wacall_client.sim.v1 import simulator_pb2 as pb
from wacall_client.sim.v1 import simulator_pb2_grpc

from wacall.api.errors import (
    Context,
    abort,
    abort_bad_request,
    abort_precondition,
    duration_field,
    server_file_field,
    text_field,
)
from wacall.api.messages import timestamp
from wacall.media.tracks import audio_problem
from wacall.numbers import InvalidNumber, PhoneNumber, parse_number
from wacall.rules.engine import PermissionState, effective_state
from wacall.simulator.phone import OnCall, PhoneCall
from wacall.simulator.platform import (
    OnPermissionRequest,
    SimMessage,
    SimulatedPlatform,
    SimUser,
)
from wacall.upstreams.meta.accounts import MetaAccount

BEHAVIOR = {b: getattr(pb, b.name) for b in OnPermissionRequest}
BEHAVIOR_BY_PB = {v: k for k, v in BEHAVIOR.items()}
ON_CALL = {OnCall.ANSWER: pb.ANSWER, OnCall.NO_ANSWER: pb.NO_ANSWER, OnCall.DECLINE: pb.DECLINE}
ON_CALL_BY_PB = {v: k for k, v in ON_CALL.items()}
MAX_TEXT = 4096
MAX_DELAY = timedelta(days=30)
DEFAULT_TONE_HZ = SimUser.tone_hz
MAX_NUMBER_CHARS = 32
MAX_ID = 128
MAX_PATH = 4096


def behavior_message(user: SimUser) -> pb.UserBehavior:
    return pb.UserBehavior(
        user_number=user.number,
        on_permission_request=BEHAVIOR[user.on_permission_request],
        reply_delay=user.reply_delay,
        on_call=ON_CALL[user.on_call],
        ring_duration=user.ring_duration,
        talk_duration=user.talk_duration,
        tone_hz=user.tone_hz,
        say_file=user.say_file,
        outdated_client=user.outdated_client,
        wa_id=user.wa_id,
    )


def sent_message(message: SimMessage) -> pb.SentMessage:
    return pb.SentMessage(
        message_id=message.message_id,
        business_number=message.business,
        user_number=message.user,
        type=pb.MESSAGE_TYPE_INTERACTIVE if message.type == "interactive" else pb.MESSAGE_TYPE_TEMPLATE,
        sent_at=timestamp(message.sent_at),
        body_text=message.body_text,
        template_name=message.template.name if message.template else "",
        template_language=message.template.language if message.template else "",
        template_body_parameters=list(message.template.body_parameters) if message.template else [],
        user_response=message.user_response,
    )


class SimulatorServicer(simulator_pb2_grpc.SimulatorServiceServicer):
    def __init__(self, platform: SimulatedPlatform, media_dir: str) -> None:
        self.platform = platform
        self.media_dir = media_dir

    async def _number(self, context: Context, value: str, field: str) -> PhoneNumber:
        await text_field(context, value, field, max_chars=MAX_NUMBER_CHARS)
        try:
            return parse_number(value, field)
        except InvalidNumber as error:
            await abort_bad_request(context, error.field, error.why)

    async def _business(self, context: Context, value: str) -> PhoneNumber:
        business = await self._number(context, value, "business_number")
        if business.region in self.platform.policy.denied_business_regions:
            await self._unsupported(context, business)
        return business

    async def _unsupported(self, context: Context, business: PhoneNumber) -> NoReturn:
        message = (
            f"business-initiated calling is not available for {business.region} numbers; "
            "simulate with a business number from another country"
        )
        await abort_precondition(context, "COUNTRY_UNSUPPORTED", business.e164, message, message)

    async def SetUserBehavior(self, request: pb.SetUserBehaviorRequest, context: Context) -> pb.UserBehavior:
        """Merges the fields given into the user's behaviour; the fields left out keep their values."""
        user = await self._number(context, request.user_number, "user_number")
        if request.on_permission_request not in BEHAVIOR_BY_PB and request.on_permission_request != 0:
            await abort_bad_request(context, "on_permission_request", "unknown value")
        if request.on_call not in ON_CALL_BY_PB and request.on_call != 0:
            await abort_bad_request(context, "on_call", "unknown value")
        if request.wa_id and not (request.wa_id.isascii() and request.wa_id.isdigit() and len(request.wa_id) <= 20):
            await abort_bad_request(context, "wa_id", "digits only, as WhatsApp writes it (no +)")
        changes: dict[str, object] = {}
        if request.say_file:
            say_file = await server_file_field(
                context, request.say_file, "say_file", self.media_dir, max_chars=MAX_PATH
            )
            if not os.path.isfile(say_file):
                await abort_bad_request(
                    context, "say_file", f"no such file on the server: {request.say_file} (in {self.media_dir})"
                )
            problem = audio_problem(say_file)
            if problem is not None:
                await abort_bad_request(context, "say_file", f"{request.say_file}: {problem}")
            changes["say_file"] = say_file
        for name in ("reply_delay", "ring_duration", "talk_duration"):
            if not request.HasField(name):
                continue
            changes[name] = await duration_field(
                context, getattr(request, name), name, minimum=timedelta(0), maximum=MAX_DELAY
            )
        if not -1 <= request.tone_hz <= 20000 and request.tone_hz != 0:
            await abort_bad_request(context, "tone_hz", "0 (default 880 Hz), a frequency up to 20000, or -1 (silence)")
        if request.on_permission_request:
            changes["on_permission_request"] = BEHAVIOR_BY_PB[request.on_permission_request]
        if request.on_call:
            changes["on_call"] = ON_CALL_BY_PB[request.on_call]
        if request.HasField("tone_hz"):
            changes["tone_hz"] = request.tone_hz or DEFAULT_TONE_HZ
        for name in ("outdated_client", "wa_id", "say_file"):
            if request.HasField(name) and name not in changes:
                changes[name] = getattr(request, name)
        current = self.platform.user(user.e164)
        return behavior_message(self.platform.set_behavior(dataclasses.replace(current, **changes)))  # type: ignore[arg-type]

    async def GetUserBehavior(self, request: pb.GetUserBehaviorRequest, context: Context) -> pb.UserBehavior:
        user = await self._number(context, request.user_number, "user_number")
        return behavior_message(self.platform.user(user.e164))

    async def SendUserMessage(self, request: pb.SendUserMessageRequest, context: Context) -> pb.SendUserMessageResponse:
        business = await self._number(context, request.business_number, "business_number")
        user = await self._number(context, request.user_number, "user_number")
        await text_field(context, request.text, "text", max_chars=MAX_TEXT, multiline=True)
        message_id = await self.platform.user_sends_message(business, user, request.text or "Hello")
        return pb.SendUserMessageResponse(message_id=message_id)

    async def _permission(self, business: PhoneNumber, user: PhoneNumber) -> pb.SimPermission:
        ledger = self.platform.ledger(business.e164, user.e164)
        state = effective_state(ledger, self.platform.clock.now())
        status = {PermissionState.TEMPORARY: "temporary", PermissionState.PERMANENT: "permanent"}.get(
            state, "no_permission"
        )
        return pb.SimPermission(
            business_number=business.e164,
            user_number=user.e164,
            status=status,
            expires_at=timestamp(ledger.expires_at if status == "temporary" else None),
        )

    async def RevokePermission(self, request: pb.RevokePermissionRequest, context: Context) -> pb.SimPermission:
        business = await self._business(context, request.business_number)
        user = await self._number(context, request.user_number, "user_number")
        await self.platform.user_revokes(business, user)
        return await self._permission(business, user)

    async def GrantPermission(self, request: pb.GrantPermissionRequest, context: Context) -> pb.SimPermission:
        business = await self._business(context, request.business_number)
        user = await self._number(context, request.user_number, "user_number")
        await self.platform.user_grants(business, user, request.permanent)
        return await self._permission(business, user)

    async def ListMessages(self, request: pb.ListMessagesRequest, context: Context) -> pb.ListMessagesResponse:
        user = await self._number(context, request.user_number, "user_number")
        business = (
            await self._number(context, request.business_number, "business_number") if request.business_number else None
        )
        return pb.ListMessagesResponse(
            messages=[
                sent_message(m) for m in self.platform.messages_for(user.e164, business.e164 if business else None)
            ]
        )

    async def GetPlatformPermission(
        self, request: pb.GetPlatformPermissionRequest, context: Context
    ) -> pb.SimPermission:
        business = await self._number(context, request.business_number, "business_number")
        user = await self._number(context, request.user_number, "user_number")
        return await self._permission(business, user)

    async def _phone_call(self, context: Context, platform_call_id: str) -> PhoneCall:
        await text_field(context, platform_call_id, "platform_call_id", max_chars=MAX_ID)
        call = self.platform.calls.get(platform_call_id)
        if call is None:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"no simulated call {platform_call_id!r}: use wacall.v1.Call.platform_call_id",
            )
        return call

    async def GetPhoneCall(self, request: pb.GetPhoneCallRequest, context: Context) -> pb.PhoneCall:
        return phone_call_message(await self._phone_call(context, request.platform_call_id))

    async def PlaceUserCall(self, request: pb.PlaceUserCallRequest, context: Context) -> pb.PhoneCall:
        business = await self._number(context, request.business_number, "business_number")
        user = await self._number(context, request.user_number, "user_number")
        if self.platform.active_call(business.e164, user.e164) is not None:
            await abort(context, grpc.StatusCode.ALREADY_EXISTS, "this user already has a call with the business")
        return phone_call_message(await self.platform.place_user_call(business, user))

    async def HangUp(self, request: pb.HangUpRequest, context: Context) -> pb.PhoneCall:
        call = await self._phone_call(context, request.platform_call_id)
        await self.platform.user_hangs_up(call)
        return phone_call_message(call)

    async def RestrictBusiness(
        self, request: pb.RestrictBusinessRequest, context: Context
    ) -> pb.RestrictBusinessResponse:
        business = await self._number(context, request.business_number, "business_number")
        duration = await duration_field(context, request.duration, "duration", minimum=timedelta(0), maximum=MAX_DELAY)
        until = await self.platform.restrict_business(business, duration)
        return pb.RestrictBusinessResponse(restricted_until=timestamp(until))

    async def GetPlatformConfig(self, request: pb.GetPlatformConfigRequest, context: Context) -> pb.PlatformConfig:
        """The simulator's Graph URL, secret, token and accounts: development and tests only (it holds the secret)."""
        platform = self.platform
        if platform.graph_base_url is None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "the simulator's Graph endpoints are not served")
        return pb.PlatformConfig(
            graph_base_url=platform.graph_base_url,
            app_secret=platform.app_secret,
            access_token=platform.access_token,
            accounts=[self._account_message(account) for account in platform.accounts()],
            webhook_urls=platform.webhook_urls,
            webhook_verify_token=platform.webhook_verify_token,
            webhook_routes=[
                pb.WebhookRoute(business_number=number, urls=urls)
                for number, urls in sorted(platform.webhook_routes.items())
            ],
        )

    async def ProvisionBusiness(self, request: pb.ProvisionBusinessRequest, context: Context) -> pb.BusinessAccount:
        business = await self._number(context, request.business_number, "business_number")
        return self._account_message(self.platform.provision(business))

    def _account_message(self, account: MetaAccount) -> pb.BusinessAccount:
        default = self.platform.default_template_of(account)
        return pb.BusinessAccount(
            business_number=account.business_number,
            phone_number_id=account.phone_number_id,
            waba_id=account.waba_id,
            default_template_name=default.name if default is not None else "",
            default_template_language=default.language if default is not None else "",
            templates=[f"{t.name}/{t.language}" for t in self.platform.templates_of(account)],
        )


def phone_call_message(call: PhoneCall) -> pb.PhoneCall:
    call.refresh_stats()
    return pb.PhoneCall(
        platform_call_id=call.platform_call_id,
        business_number=call.business,
        user_number=call.user,
        direction=call.direction,
        state=call.state,
        frames_received=call.frames_received,
        audible_frames_received=call.audible_frames_received,
        mean_level_received=call.mean_level_received,
        frames_sent=call.frames_sent,
        started_at=timestamp(call.started_at),
        answered_at=timestamp(call.answered_at),
        ended_at=timestamp(call.ended_at),
    )
