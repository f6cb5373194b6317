"""Dialogs (RFC 3261 §12): created from a 2xx on both sides, the requests sent inside them, and the checks on the
requests received. The last test runs a whole call (INVITE, 200, ACK, BYE) through the in-memory pair."""

from __future__ import annotations

import pytest
from sip_pair import Pair

from wacall.sip.dialog import Dialog, DialogError
from wacall.sip.message import Headers, Request, Response, Via, parse_message, response_to

UAC_VIA = Via("UDP", "192.0.2.4", 5060, (("branch", "z9hG4bKinvite"),))
UAS_VIA = Via("UDP", "203.0.113.9", 5060, (("branch", "z9hG4bKbye"),))


def invite(transport: str = "UDP") -> Request:
    return Request(
        "INVITE",
        "sip:+34612345678@wacall.example.com",
        Headers(
            [
                ("Via", f"SIP/2.0/{transport} 192.0.2.4:5060;branch=z9hG4bKinvite"),
                ("Max-Forwards", "70"),
                ("From", '"Contact Centre" <sip:+447911123456@pbx.example.com>;tag=pbx1'),
                ("To", "<sip:+34612345678@wacall.example.com>"),
                ("Call-ID", "dialog-1@pbx"),
                ("CSeq", "101 INVITE"),
                ("Contact", "<sip:pbx@192.0.2.4:5060>"),
                ("Record-Route", "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>"),
            ]
        ),
    )


def ok(request: Request) -> Response:
    return response_to(
        request,
        200,
        to_tag="wa1",
        headers=[
            ("Record-Route", "<sip:p1.example.com;lr>"),
            ("Record-Route", "<sip:p2.example.com;lr>"),
            ("Contact", "<sip:wacall@203.0.113.9:5060;transport=udp>"),
        ],
    )


def test_a_2xx_creates_the_callers_dialog_with_the_route_set_reversed() -> None:
    request = invite()
    dialog = Dialog.as_uac(request, ok(request))
    assert dialog.id == ("dialog-1@pbx", "pbx1", "wa1")
    assert dialog.remote_target == "sip:wacall@203.0.113.9:5060;transport=udp"
    assert dialog.route_set == ("<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>")
    assert (dialog.local_seq, dialog.remote_seq) == (101, None)
    assert not dialog.secure


def test_answering_creates_the_callees_dialog_with_the_route_set_in_order() -> None:
    dialog = Dialog.as_uas(invite(), local_tag="wa1")
    assert dialog.id == ("dialog-1@pbx", "wa1", "pbx1")
    assert dialog.remote_target == "sip:pbx@192.0.2.4:5060"
    assert dialog.route_set == ("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>")
    assert (dialog.local_seq, dialog.remote_seq) == (None, 101)


def test_only_a_2xx_with_both_tags_and_one_contact_creates_a_dialog() -> None:
    request = invite()
    with pytest.raises(DialogError, match="created by a 2xx, not a 486"):
        Dialog.as_uac(request, response_to(request, 486, to_tag="x"))
    with pytest.raises(DialogError, match="From tag and a To tag"):
        Dialog.as_uac(request, response_to(request, 200))
    no_contact = Response(200, "OK", ok(request).headers.without("Contact"))
    with pytest.raises(DialogError, match="exactly one Contact"):
        Dialog.as_uac(request, no_contact)


def test_the_ack_for_a_2xx_reuses_the_invites_cseq_and_goes_to_the_remote_target_through_the_routes() -> None:
    request = invite()
    dialog = Dialog.as_uac(request, ok(request))
    ack = dialog.ack(101, via=UAC_VIA.with_params(branch="z9hG4bKack"))
    assert ack.method == "ACK" and str(ack.cseq) == "101 ACK"
    assert ack.uri == dialog.remote_target
    assert ack.headers.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert ack.from_.tag == "pbx1" and ack.to.tag == "wa1"
    assert ack.from_.display_name == "Contact Centre"
    assert parse_message(ack.serialize()) == ack


def test_in_dialog_requests_count_up_from_the_last_local_cseq() -> None:
    request = invite()
    dialog = Dialog.as_uac(request, ok(request))
    dialog, bye = dialog.create_request("BYE", via=UAC_VIA.with_params(branch="z9hG4bKbye1"))
    assert str(bye.cseq) == "102 BYE" and dialog.local_seq == 102
    dialog, info = dialog.create_request("INFO", via=UAC_VIA, headers=[("Content-Type", "application/dtmf-relay")])
    assert str(info.cseq) == "103 INFO" and info.headers.get("Content-Type") == "application/dtmf-relay"
    with pytest.raises(ValueError, match="use ack"):
        dialog.create_request("ACK", via=UAC_VIA)


def test_the_callee_starts_its_own_cseq_when_it_first_sends() -> None:
    dialog = Dialog.as_uas(invite(), local_tag="wa1")
    dialog, bye = dialog.create_request("BYE", via=UAS_VIA)
    assert bye.cseq.seq == 1 and bye.uri == "sip:pbx@192.0.2.4:5060"
    assert bye.from_.tag == "wa1" and bye.to.tag == "pbx1"
    assert bye.headers.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]


def test_a_strict_router_first_in_the_route_set_takes_the_request_uri() -> None:
    dialog = Dialog(
        call_id="c",
        local_tag="a",
        remote_tag="b",
        local_uri="<sip:a@example.com>",
        remote_uri="<sip:b@example.com>",
        remote_target="sip:b@192.0.2.50",
        route_set=("<sip:strict.example.com;method=INVITE>", "<sip:p2.example.com;lr>"),
    )
    _, bye = dialog.create_request("BYE", via=UAC_VIA)
    assert bye.uri == "sip:strict.example.com"
    assert bye.headers.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:b@192.0.2.50>"]


def test_received_requests_must_raise_the_cseq_and_carry_the_dialogs_tags() -> None:
    request = invite()
    caller = Dialog.as_uac(request, ok(request))
    callee = Dialog.as_uas(request, local_tag="wa1")
    callee, bye = callee.create_request("BYE", via=UAS_VIA)
    caller = caller.receive(bye)
    assert caller.remote_seq == 1
    with pytest.raises(DialogError, match="not above the last one") as error:
        caller.receive(bye)  # a replay, or out of order
    assert error.value.status_code == 500
    stranger = Request(bye.method, bye.uri, bye.headers.replaced("From", "<sip:pbx@x>;tag=someone-else"))
    with pytest.raises(DialogError) as error:
        caller.receive(stranger)
    assert error.value.status_code == 481


def test_a_re_invite_with_a_new_contact_refreshes_the_remote_target() -> None:
    request = invite()
    callee = Dialog.as_uas(request, local_tag="wa1")
    caller = Dialog.as_uac(request, ok(request))
    caller, reinvite = caller.create_request(
        "INVITE", via=UAC_VIA.with_params(branch="z9hG4bKre"), headers=[("Contact", "<sip:pbx@198.51.100.7:5070>")]
    )
    callee = callee.receive(reinvite)
    assert callee.remote_target == "sip:pbx@198.51.100.7:5070" and callee.remote_seq == 102
    # The ACK of that re-INVITE does not count as a new request.
    assert callee.receive(caller.ack(102, via=UAC_VIA)) == callee


def test_a_sips_request_over_tls_makes_a_secure_dialog() -> None:
    request = invite("TLS")
    secure = Request("INVITE", "sips:+34612345678@wacall.example.com", request.headers)
    assert Dialog.as_uas(secure, local_tag="wa1").secure
    assert not Dialog.as_uas(request, local_tag="wa1").secure


def test_a_whole_call_through_the_pair_invite_200_ack_bye() -> None:
    pair = Pair()
    request = invite()
    pair.uac.send_request(request, pair.now)
    pair.flush()
    assert pair.uas.received == [request]
    answer = ok(request)
    callee = Dialog.as_uas(request, local_tag="wa1")
    pair.uas.respond(request, answer, pair.now)
    pair.flush()
    response = pair.uac.received[-1]
    assert isinstance(response, Response) and response.status_code == 200
    caller = Dialog.as_uac(request, response)
    # The ACK of a 2xx is the dialog's, end to end, outside the INVITE transaction (which has ended).
    pair.uac.send_stateless(caller.ack(101, via=UAC_VIA.with_params(branch="z9hG4bKack1")))
    pair.flush()
    ack = pair.uas.received[-1]
    assert isinstance(ack, Request) and ack.method == "ACK" and callee.matches(ack)
    pair.advance(5.0)
    # The callee hangs up.
    callee, bye = callee.create_request("BYE", via=UAS_VIA)
    pair.uas.send_request(bye, pair.now)
    pair.flush()
    received_bye = pair.uac.received[-1]
    assert isinstance(received_bye, Request)
    caller = caller.receive(received_bye)
    pair.uac.respond(received_bye, response_to(received_bye, 200), pair.now)
    pair.flush()
    final = pair.uas.received[-1]
    assert isinstance(final, Response) and (final.status_code, final.cseq.method) == (200, "BYE")
    pair.advance(60.0)
    assert pair.uac.clients == pair.uas.clients == {} and pair.uac.servers == pair.uas.servers == {}
    assert all(not end.timed_out for _, end in pair.uac.ended + pair.uas.ended)
