"""The PBX leg wacall places (`wacall.siptrunk.outbound.OutboundCall`) on a real SIP edge, against SIPp playing the
PBX (scenarios in tests/assets/sipp) and against a UAS on a second SIP edge where the request itself is read:
answered (ACK, BYE from each side), refused, ringing until our timeout (CANCEL), a digest challenge with good and
bad credentials, no answer at all, a transport that cannot connect."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from conftest import eventually
from sip_stack import FAST, Stack, start_stack
from sipp_pbx import sipp_pbx

from wacall.sip.dialog import Dialog
from wacall.sip.digest import AuthOutcome, DigestAuth, DigestVerifier
from wacall.sip.message import Request, Response, SipURI, Via, parse_message, response_to
from wacall.sip.transactions import TimerValues
from wacall.sipio.layer import ServerRequest, TransactionLayer
from wacall.sipio.transport import Target, Transports
from wacall.siptrunk.endpoint import SipEndpoint
from wacall.siptrunk.outbound import DialogHandler, DialogRouter, OutboundCall, PbxRefused

OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
USER = "+34612345678"


class Router:
    """The part of the SIP endpoint a leg needs: requests inside a dialog go to the handler registered for it."""

    def __init__(self) -> None:
        self.dialogs: dict[tuple[str, str, str], DialogHandler] = {}
        self.invites: dict[tuple[str, str], Callable[[Response], Awaitable[None]]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def register_dialog(self, dialog_id: tuple[str, str, str], handler: DialogHandler) -> None:
        self.dialogs[dialog_id] = handler

    def unregister_dialog(self, dialog_id: tuple[str, str, str]) -> None:
        self.dialogs.pop(dialog_id, None)

    def register_invite(self, call_id: str, local_tag: str, handler: Callable[[Response], Awaitable[None]]) -> None:
        self.invites[(call_id, local_tag)] = handler

    def unregister_invite(self, call_id: str, local_tag: str) -> None:
        self.invites.pop((call_id, local_tag), None)

    def __call__(self, server: ServerRequest) -> None:
        request = server.request
        handler = self.dialogs.get((request.call_id, request.to.tag or "", request.from_.tag or ""))
        if handler is None:
            server.respond(response_to(request, 481))
            return
        task = asyncio.ensure_future(handler(server))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


@pytest.fixture
async def wacall_side() -> AsyncIterator[tuple[Stack, Router]]:
    router = Router()
    stack = await start_stack(router, timers=TimerValues())
    try:
        yield stack, router
    finally:
        await stack.layer.close()


def pbx_leg(
    layer: TransactionLayer,
    router: DialogRouter,
    target: str,
    wacall_call_id: str,
    *,
    callee: str = "sip:pbx@127.0.0.1",
    **options: object,
) -> OutboundCall:
    """wacall's leg toward the PBX at `target`, calling from the test's user."""
    return OutboundCall(
        layer,
        router,
        target=SipURI.parse(target),
        caller=USER,
        callee=callee,
        wacall_call_id=wacall_call_id,
        **options,  # type: ignore[arg-type]
    )


def leg_to(side: tuple[Stack, Router], uri: str, *, auth: DigestAuth | None = None, **options: object) -> OutboundCall:
    stack, router = side
    return pbx_leg(stack.layer, router, uri, "call_0123", callee=uri, auth=auth, **options)


async def test_an_answered_leg_returns_the_pbxs_sdp_and_ends_with_our_bye(
    wacall_side: tuple[Stack, Router], tmp_path: Path
) -> None:
    async with sipp_pbx("pbx_answers.xml", tmp_path, rtp_port=41000) as pbx:
        leg = leg_to(wacall_side, pbx.uri)
        answer = await leg.invite(OFFER)
        assert "m=audio 41000 RTP/AVP 0" in answer
        assert leg.last_status == 200 and leg.dialog is not None
        assert list(wacall_side[1].dialogs) == [leg.dialog.id]
        await leg.hangup()
        assert wacall_side[1].dialogs == {}
        code, err = await pbx.outcome()
    assert code == 0, err  # SIPp saw X-Wacall-Call-Id, our ACK and our BYE


async def test_a_bye_from_the_pbx_ends_the_leg(wacall_side: tuple[Stack, Router], tmp_path: Path) -> None:
    ended = asyncio.Event()

    async def on_bye() -> None:
        ended.set()

    async with sipp_pbx("pbx_hangs_up.xml", tmp_path, rtp_port=41000, hold_ms=300) as pbx:
        leg = leg_to(wacall_side, pbx.uri, on_bye=on_bye)
        await leg.invite(OFFER)
        await asyncio.wait_for(ended.wait(), 10)
        assert leg.dialog is None and wacall_side[1].dialogs == {}
        await leg.hangup()  # nothing left to end: no second BYE
        code, err = await pbx.outcome()
    assert code == 0, err


async def test_a_pbx_that_refuses_raises_its_status(wacall_side: tuple[Stack, Router], tmp_path: Path) -> None:
    async with sipp_pbx("pbx_refuses.xml", tmp_path) as pbx:
        leg = leg_to(wacall_side, pbx.uri)
        with pytest.raises(PbxRefused) as refused:
            await leg.invite(OFFER)
        assert refused.value.status == 486 and leg.last_status == 486
        code, err = await pbx.outcome()
    assert code == 0, err  # the 486 was ACKed


async def test_a_pbx_that_rings_past_our_patience_is_cancelled_as_a_timeout(
    wacall_side: tuple[Stack, Router], tmp_path: Path
) -> None:
    async with sipp_pbx("pbx_rings.xml", tmp_path) as pbx:
        leg = leg_to(wacall_side, pbx.uri, answer_timeout=1.0)
        with pytest.raises(PbxRefused) as refused:
            await leg.invite(OFFER)
        assert refused.value.status == 408 and leg.last_status == 408
        code, err = await pbx.outcome()
    assert code == 0, err  # SIPp got the CANCEL and its 487 was ACKed


async def test_hanging_up_while_the_pbx_rings_cancels_the_invite(
    wacall_side: tuple[Stack, Router], tmp_path: Path
) -> None:
    async with sipp_pbx("pbx_rings.xml", tmp_path) as pbx:
        leg = leg_to(wacall_side, pbx.uri)
        inviting = asyncio.ensure_future(leg.invite(OFFER))
        await asyncio.sleep(0.5)
        await leg.hangup()
        with pytest.raises(PbxRefused) as refused:
            await inviting
        assert refused.value.status == 487 and leg.last_status == 487
        code, err = await pbx.outcome()
    assert code == 0, err


async def test_sipps_digest_challenge_is_answered_with_the_trunks_credentials(
    wacall_side: tuple[Stack, Router], tmp_path: Path
) -> None:
    async with sipp_pbx("pbx_challenges.xml", tmp_path, rtp_port=41000) as pbx:
        leg = leg_to(wacall_side, pbx.uri, auth=DigestAuth("wacall", "s3cret"))
        await leg.invite(OFFER)
        assert leg.last_status == 200
        await leg.hangup()
        code, err = await pbx.outcome()
    assert code == 0, err  # the second INVITE carried credentials for SIPp's realm and nonce


@pytest.mark.parametrize(("password", "status"), [("s3cret", 200), ("wrong", 403)])
async def test_a_challenge_without_qop_is_answered_the_rfc_2069_way(
    wacall_side: tuple[Stack, Router], tmp_path: Path, password: str, status: int
) -> None:
    async with sipp_pbx("pbx_challenges_without_qop.xml", tmp_path, rtp_port=41000) as pbx:
        leg = leg_to(wacall_side, pbx.uri, auth=DigestAuth("wacall", password))
        if status == 200:
            await leg.invite(OFFER)
            await leg.hangup()
        else:
            with pytest.raises(PbxRefused) as refused:
                await leg.invite(OFFER)
            assert refused.value.status == status
        assert leg.last_status == status
        code, err = await pbx.outcome()
    # SIPp verified the answer itself: the right password got the call to its end, a wrong one its 403.
    assert (code == 0) is (status == 200), err


@pytest.mark.parametrize(("password", "status"), [("s3cret", 200), ("wrong", 403)])
async def test_the_digest_answer_verifies_with_the_right_password_only(password: str, status: int) -> None:
    verifier = DigestVerifier("pbx.example", b"a secret of the PBX", algorithms=("SHA-256", "MD5"))
    seen: list[Request] = []

    def pbx(server: ServerRequest) -> None:
        request = server.request
        seen.append(request)
        if request.method != "INVITE":
            server.respond(response_to(request, 200))
            return
        outcome = verifier.verify(request, username="wacall", password="s3cret", now=time.time())
        if outcome is AuthOutcome.MISSING:
            challenges = [("Proxy-Authenticate", str(c)) for c in verifier.challenges(time.time())]
            server.respond(response_to(request, 407, to_tag="pbx1", headers=challenges))
        elif outcome is AuthOutcome.ACCEPTED:
            headers = [("Contact", f"<sip:pbx@127.0.0.1:{port}>"), ("Content-Type", "application/sdp")]
            server.respond(response_to(request, 200, to_tag="pbx1", headers=headers, body=OFFER.encode()))
        else:
            server.respond(response_to(request, 403, to_tag="pbx1"))

    far = await start_stack(pbx, timers=FAST)
    port = far.target("UDP").port
    router = Router()
    near = await start_stack(router, timers=FAST)
    try:
        leg = pbx_leg(
            near.layer,
            router,
            f"sip:queue@127.0.0.1:{port}",
            "call_auth",
            callee=f"sip:queue@127.0.0.1:{port}",
            auth=DigestAuth("wacall", password),
        )
        if status == 200:
            await leg.invite(OFFER)
            await leg.hangup()
        else:
            with pytest.raises(PbxRefused) as refused:
                await leg.invite(OFFER)
            assert refused.value.status == 403
        assert leg.last_status == status
        invites = [r for r in seen if r.method == "INVITE"]
        assert len(invites) == 2 and "algorithm=SHA-256" in (invites[1].headers.get("Proxy-Authorization") or "")
        assert invites[1].cseq.seq == invites[0].cseq.seq + 1 and invites[1].call_id == invites[0].call_id
    finally:
        await near.layer.close()
        await far.layer.close()


async def test_the_invite_says_who_calls_whom_and_carries_the_routes_headers() -> None:
    requests: list[Request] = []

    def pbx(server: ServerRequest) -> None:
        requests.append(server.request)
        if server.request.method == "INVITE":
            ok = response_to(
                server.request,
                200,
                to_tag="pbx1",
                headers=[("Contact", f"<sip:pbx@127.0.0.1:{port}>"), ("Content-Type", "application/sdp")],
                body=OFFER.encode(),
            )
            server.respond(ok)
        else:
            server.respond(response_to(server.request, 200))

    far = await start_stack(pbx, timers=FAST)
    port = far.target("UDP").port
    router = Router()
    near = await start_stack(router, timers=FAST)
    try:
        leg = pbx_leg(
            near.layer,
            router,
            f"sip:queue@127.0.0.1:{port}",
            "call_abc",
            callee="sip:+447911123456@127.0.0.1",
            headers=[("X-Queue", "billing"), ("User-to-User", "42;encoding=text")],
        )
        await leg.invite(OFFER)
        (invite,) = requests
        assert invite.uri == f"sip:queue@127.0.0.1:{port}"
        assert invite.from_.uri.user == USER  # type: ignore[union-attr]
        assert str(invite.to.uri) == "sip:+447911123456@127.0.0.1"
        assert invite.headers.get("X-Wacall-Call-Id") == "call_abc"
        assert invite.headers.get("X-Queue") == "billing"
        assert invite.headers.get("User-to-User") == "42;encoding=text"
        assert invite.body.decode() == OFFER
        assert invite.call_id == leg.call_id
        await leg.hangup()
        assert [r.method for r in requests] == ["INVITE", "BYE"]
    finally:
        await near.layer.close()
        await far.layer.close()


async def test_no_response_at_all_is_a_timeout_and_no_connection_is_unavailable() -> None:
    router = Router()
    near = await start_stack(router, timers=FAST)  # Timer B: 64 * 20 ms
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the INVITE and never says a word
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    try:
        leg = pbx_leg(near.layer, router, f"sip:pbx@127.0.0.1:{port}", "call_1")
        with pytest.raises(PbxRefused) as refused:
            await leg.invite(OFFER)
        assert refused.value.status == 408 and leg.last_status == 408
        assert silent.recv(65535).startswith(b"INVITE ")
        closed = pbx_leg(
            near.layer, router, f"sip:pbx@127.0.0.1:{port};transport=tcp", "call_2"
        )  # nobody listens for TCP there
        with pytest.raises(PbxRefused) as unreachable:
            await closed.invite(OFFER)
        assert unreachable.value.status == 503 and closed.last_status == 503
    finally:
        silent.close()
        await near.layer.close()


async def test_a_pbx_that_only_says_trying_is_cancelled_when_our_patience_ends() -> None:
    router = Router()
    near = await start_stack(router, timers=FAST)
    trying = await start_stack(lambda server: None, timers=FAST)  # its layer says 100 Trying, its TU nothing
    try:
        leg = pbx_leg(
            near.layer, router, f"sip:pbx@127.0.0.1:{trying.target('UDP').port}", "call_3", answer_timeout=0.5
        )
        with pytest.raises(PbxRefused) as refused:
            await leg.invite(OFFER)
        assert refused.value.status == 408 and leg.last_status == 408
        (invite,) = trying.requests  # the CANCEL is the layer's to answer: 200, and 487 to the INVITE
        assert invite.cancelled.is_set()
    finally:
        await near.layer.close()
        await trying.layer.close()


async def test_inside_the_dialog_a_reinvite_or_update_gets_our_sdp_unchanged_and_options_answered() -> None:
    invites: list[Request] = []

    def pbx(server: ServerRequest) -> None:
        invites.append(server.request)
        headers = [("Contact", f"<sip:pbx@127.0.0.1:{port}>"), ("Content-Type", "application/sdp")]
        server.respond(response_to(server.request, 200, to_tag="pbx1", headers=headers, body=OFFER.encode()))

    far = await start_stack(pbx, timers=FAST)
    port = far.target("UDP").port
    router = Router()
    near = await start_stack(router, timers=FAST)
    ours = OFFER.replace("m=audio 4000", "m=audio 4002")  # what wacall offered: the PBX must get it back as it was
    try:
        leg = pbx_leg(near.layer, router, f"sip:pbx@127.0.0.1:{port}", "call_4")
        await leg.invite(ours)
        # The PBX's side of the dialog, as the PBX would send inside it.
        dialog = Dialog.as_uas(invites[0], "pbx1")

        def via() -> Via:  # a new branch for each request
            return Via.parse(far.layer.via("UDP"))

        hold = OFFER.replace("o=- 1 1", "o=- 1 2") + "a=sendonly\r\n"
        moved = [("Contact", f"<sip:moved@127.0.0.1:{port}>"), ("Content-Type", "application/sdp")]
        dialog, reinvite = dialog.create_request("INVITE", via=via(), headers=moved, body=hold.encode())
        answered = await far.layer.request(reinvite, near.target("UDP"))
        await far.layer.send_stateless(dialog.ack(reinvite.cseq.seq, via=via()), near.target("UDP"))
        # Hold or a session timer's refresh: 200 with the very SDP the PBX has (same o= version, RFC 3264 §8).
        assert answered.status_code == 200 and answered.body.decode() == ours
        assert answered.headers.get("Contact") is not None
        dialog, update = dialog.create_request("UPDATE", via=via(), headers=moved[1:], body=hold.encode())
        updated = await far.layer.request(update, near.target("UDP"))
        assert updated.status_code == 200 and updated.body.decode() == ours
        answers = {}
        for method in ("OPTIONS", "REFER"):
            dialog, request = dialog.create_request(method, via=via())
            answers[method] = (await far.layer.request(request, near.target("UDP"))).status_code
        assert answers == {"OPTIONS": 200, "REFER": 501}
        # A CSeq that is not above the last one is refused, the dialog unchanged.
        _, stale = dataclasses.replace(dialog, local_seq=1).create_request("OPTIONS", via=via())
        assert (await far.layer.request(stale, near.target("UDP"))).status_code == 500
        assert leg.dialog is not None  # the call goes on as it was, its target refreshed by the 2xx'd re-INVITE
        assert leg.dialog.remote_target == f"sip:moved@127.0.0.1:{port}"
        await leg.hangup()
    finally:
        await near.layer.close()
        await far.layer.close()


async def test_an_endpoint_on_every_interface_names_the_address_the_pbx_can_reach() -> None:
    requests: list[Request] = []

    def pbx(server: ServerRequest) -> None:
        requests.append(server.request)
        server.respond(response_to(server.request, 486, to_tag="pbx1"))

    far = await start_stack(pbx, timers=FAST)
    router = Router()
    near_transports = Transports()
    near = TransactionLayer(near_transports, router, timers=FAST)
    await near_transports.listen("0.0.0.0", 0)
    try:
        leg = pbx_leg(near, router, f"sip:pbx@127.0.0.1:{far.target('UDP').port}", "call_5")
        with pytest.raises(PbxRefused):
            await leg.invite(OFFER)
        (invite,) = requests
        port = near_transports.local_address("UDP")[1]
        assert invite.headers.get("Contact") == f"<sip:wacall@127.0.0.1:{port}>"
        assert invite.top_via.sent_by == f"127.0.0.1:{port}" and invite.from_.uri.host == "127.0.0.1"  # type: ignore[union-attr]
    finally:
        await near.close()
        await far.layer.close()


@pytest.mark.parametrize(
    ("contact", "body", "status", "methods"),
    [(False, True, 502, ["INVITE"]), (True, False, 488, ["INVITE", "BYE"])],
    ids=["2xx without Contact", "2xx without SDP"],
)
async def test_a_2xx_that_cannot_carry_the_call_is_refused(
    contact: bool, body: bool, status: int, methods: list[str]
) -> None:
    requests: list[Request] = []

    def pbx(server: ServerRequest) -> None:
        requests.append(server.request)
        headers = [("Contact", f"<sip:pbx@127.0.0.1:{port}>")] if contact else []
        if body:
            headers.append(("Content-Type", "application/sdp"))
        ok = response_to(server.request, 200, to_tag="pbx1", headers=headers, body=OFFER.encode() if body else b"")
        server.respond(ok if server.request.method == "INVITE" else response_to(server.request, 200))

    far = await start_stack(pbx, timers=FAST)
    port = far.target("UDP").port
    router = Router()
    near = await start_stack(router, timers=FAST)
    try:
        leg = pbx_leg(near.layer, router, f"sip:pbx@127.0.0.1:{port}", "call_6")
        with pytest.raises(PbxRefused) as refused:
            await leg.invite(OFFER)
        assert refused.value.status == status and leg.last_status == status
        assert [r.method for r in requests] == methods and router.dialogs == {}
    finally:
        await near.layer.close()
        await far.layer.close()


def answer_200(server: ServerRequest, port: int) -> None:
    headers = [("Contact", f"<sip:pbx@127.0.0.1:{port}>"), ("Content-Type", "application/sdp")]
    server.respond(response_to(server.request, 200, to_tag="pbx1", headers=headers, body=OFFER.encode()))


async def test_a_2xx_crossing_our_cancel_is_acknowledged_and_ended_exactly_once() -> None:
    received: list[str] = []

    def pbx(server: ServerRequest) -> None:
        received.append(f"{server.request.method} {server.request.cseq.seq}")
        if server.request.method == "INVITE":
            server.respond(response_to(server.request, 180, to_tag="pbx1"))
        elif server.request.method == "BYE":
            server.respond(response_to(server.request, 200))

    far = await start_stack(pbx, timers=FAST)
    far.layer.on_stray = lambda message, source: received.append(f"{getattr(message, 'method', '?')} stray")
    port = far.target("UDP").port
    router = Router()
    near = await start_stack(router, timers=FAST)
    try:
        leg = pbx_leg(near.layer, router, f"sip:pbx@127.0.0.1:{port}", "call_5")
        inviting = asyncio.ensure_future(leg.invite(OFFER))
        while not far.requests:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the 180 is in: our CANCEL may go
        answer_200(far.requests[0], port)  # the PBX answers as we cancel: the 2xx crosses the CANCEL
        await leg.hangup()
        with pytest.raises(PbxRefused) as refused:
            await inviting
        await asyncio.sleep(0.3)  # anything sent twice would have arrived by now
        assert refused.value.status == 487
        assert leg.last_status == 200  # what the PBX really answered
        assert received.count("BYE 2") == 1 and "BYE 3" not in received
        assert received.index("ACK stray") < received.index("BYE 2")  # §15: the ACK before the BYE
        assert router.dialogs == {}
    finally:
        await near.layer.close()
        await far.layer.close()


async def test_a_hangup_while_the_ack_is_being_sent_byes_after_the_ack_and_leaves_no_dialog() -> None:
    received: list[str] = []

    def pbx(server: ServerRequest) -> None:
        received.append(server.request.method)
        if server.request.method == "INVITE":
            answer_200(server, port)
        elif server.request.method == "BYE":
            server.respond(response_to(server.request, 200))

    far = await start_stack(pbx, timers=FAST)
    far.layer.on_stray = lambda message, source: received.append(f"{getattr(message, 'method', '?')} stray")
    port = far.target("UDP").port
    router = Router()
    near = await start_stack(router, timers=FAST)
    acking = asyncio.Event()
    send_stateless = near.layer.send_stateless

    async def slow_ack(message: Request | Response, target: object) -> None:
        # The ACK's send yields (as a TCP or TLS connect does): the user hangs up right then.
        if isinstance(message, Request) and message.method == "ACK":
            acking.set()
            await asyncio.sleep(0.1)
        await send_stateless(message, target)  # type: ignore[arg-type]

    near.layer.send_stateless = slow_ack  # type: ignore[method-assign]
    try:
        leg = pbx_leg(near.layer, router, f"sip:pbx@127.0.0.1:{port}", "call_6")
        inviting = asyncio.ensure_future(leg.invite(OFFER))
        await acking.wait()
        await leg.hangup()
        with pytest.raises(PbxRefused):
            await inviting
        assert received == ["INVITE", "ACK stray", "BYE"]
        assert router.dialogs == {} and leg.dialog is None
    finally:
        await near.layer.close()
        await far.layer.close()


async def test_hanging_up_during_a_digest_challenge_sends_no_credentialed_invite() -> None:
    verifier = DigestVerifier("pbx.example", b"a secret of the PBX")

    def pbx(server: ServerRequest) -> None:
        pass  # answered by the test, when it chooses

    far = await start_stack(pbx, timers=FAST)
    port = far.target("UDP").port
    router = Router()
    near = await start_stack(router, timers=FAST)
    try:
        leg = leg_to((near, router), f"sip:pbx@127.0.0.1:{port}", auth=DigestAuth("wacall", "s3cret"))
        inviting = asyncio.ensure_future(leg.invite(OFFER))
        while not far.requests:
            await asyncio.sleep(0.01)
        hanging_up = asyncio.ensure_future(leg.hangup())
        await asyncio.sleep(0.05)
        challenges = [("Proxy-Authenticate", str(c)) for c in verifier.challenges(time.time())]
        far.requests[0].respond(response_to(far.requests[0].request, 407, to_tag="pbx1", headers=challenges))
        await hanging_up
        with pytest.raises(PbxRefused):
            await inviting
        await asyncio.sleep(0.2)
        assert [r.request.method for r in far.requests] == ["INVITE"]  # the credentialed INVITE never went out
    finally:
        await near.layer.close()
        await far.layer.close()


async def test_hanging_up_while_the_credentialed_invite_rings_cancels_that_invite() -> None:
    verifier = DigestVerifier("pbx.example", b"a secret of the PBX")

    def pbx(server: ServerRequest) -> None:
        if server.request.cseq.seq == 1:
            challenges = [("Proxy-Authenticate", str(c)) for c in verifier.challenges(time.time())]
            server.respond(response_to(server.request, 407, to_tag="pbx1", headers=challenges))
        else:
            server.respond(response_to(server.request, 180, to_tag="pbx2"))

    far = await start_stack(pbx, timers=FAST)
    port = far.target("UDP").port
    router = Router()
    near = await start_stack(router, timers=FAST)
    try:
        leg = leg_to((near, router), f"sip:pbx@127.0.0.1:{port}", auth=DigestAuth("wacall", "s3cret"))
        inviting = asyncio.ensure_future(leg.invite(OFFER))
        while len(far.requests) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # its 180 is in
        await leg.hangup()
        with pytest.raises(PbxRefused) as refused:
            await inviting
        assert refused.value.status == 487
        first, second = far.requests
        assert second.cancelled.is_set() and not first.cancelled.is_set()  # the CANCEL named CSeq 2, the ringing one
    finally:
        await near.layer.close()
        await far.layer.close()


class RingsForever(asyncio.DatagramProtocol):
    """A PBX that answers every INVITE 180 and nothing else: its CANCEL never brings a final response."""

    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_message(data)
        if isinstance(message, Request) and message.method == "INVITE":
            self.transport.sendto(response_to(message, 180, to_tag="pbx1").serialize(), addr)


async def test_an_invite_whose_cancel_brings_no_final_is_abandoned_and_hangup_returns() -> None:
    transport, _pbx = await asyncio.get_running_loop().create_datagram_endpoint(
        RingsForever, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    router = Router()
    near = await start_stack(router, timers=FAST)
    try:
        leg = leg_to((near, router), f"sip:pbx@127.0.0.1:{port}")
        inviting = asyncio.ensure_future(leg.invite(OFFER))
        await eventually(lambda: leg.layer.transaction_count == 1, what="the INVITE ringing")
        await asyncio.sleep(0.1)  # its 180 is in
        await leg.hangup()  # CANCEL, no final: given up after 64*T1, not waited for forever
        with pytest.raises(PbxRefused):
            await inviting
        await eventually(lambda: leg.layer.transaction_count == 0, what="no transaction left")
    finally:
        await near.layer.close()
        transport.close()


async def test_a_second_2xx_from_a_forking_proxy_is_acknowledged_and_ended_and_ours_goes_on() -> None:
    received: list[tuple[str, str]] = []

    def pbx(server: ServerRequest) -> None:
        request = server.request
        received.append((request.method, request.to.tag or ""))
        if request.method == "INVITE":
            answer_200(server, port)
        elif request.method == "BYE":
            server.respond(response_to(request, 200))

    far = await start_stack(pbx, timers=FAST)
    far.layer.on_stray = lambda message, source: received.append(
        (getattr(message, "method", "?"), message.to.tag or "")
    )
    port = far.target("UDP").port
    near = SipEndpoint((), agent="wacall-test", timers=FAST)
    await near.start(("127.0.0.1", 0))
    try:
        leg = pbx_leg(near.layer, near, f"sip:pbx@127.0.0.1:{port}", "call_7")
        await leg.invite(OFFER)
        # Another branch of the fork answers too: a dialog of its own (To tag pbx2).
        headers = [("Contact", f"<sip:pbx@127.0.0.1:{port}>"), ("Content-Type", "application/sdp")]
        other = response_to(far.requests[0].request, 200, to_tag="pbx2", headers=headers, body=OFFER.encode())
        near_target = Target("UDP", "127.0.0.1", near.layer.transports.local_address("UDP")[1])
        await far.layer.send_stateless(other, near_target)
        await eventually(lambda: ("BYE", "pbx2") in received, what="the other branch's BYE")
        await far.layer.send_stateless(other, near_target)  # resent: ACKed again, never BYEd twice
        await eventually(lambda: received.count(("ACK", "pbx2")) >= 2, what="the resent 2xx ACKed")
        assert received.index(("ACK", "pbx2")) < received.index(("BYE", "pbx2"))
        assert received.count(("BYE", "pbx2")) == 1
        assert leg.dialog is not None and ("BYE", "pbx1") not in received  # our call goes on
        await leg.hangup()
        await eventually(lambda: ("BYE", "pbx1") in received, what="our BYE")
    finally:
        await near.close()
        await far.layer.close()
