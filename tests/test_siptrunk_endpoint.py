"""wacall's SIP endpoint: what it does with each request before any call exists — OPTIONS answered, other methods
refused with Allow, requests inside a dialog handed to the dialog's owner (and 481 for a dialog nobody holds), an
ACK of a 2xx to its dialog; `wacall serve --sip-address` listens, and a call's SIP leg shows in GetCall."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from conftest import BUSINESS, USER, Running
from sip_stack import FAST, Stack, make_request, start_stack
from wacall_client.v1 import calling_pb2 as pb

from wacall.calls.record import SipDirection, SipLeg
from wacall.sip.dialog import Dialog
from wacall.sip.message import Request, Response, SipParseError, Via, Warning, response_to
from wacall.sipio.layer import ServerRequest
from wacall.sipio.transport import Target
from wacall.siptrunk.endpoint import ALLOWED_METHODS, SipEndpoint, dialog_id_of


@pytest.fixture
async def endpoint() -> AsyncIterator[SipEndpoint]:
    door = SipEndpoint((), agent="wacall.test", timers=FAST)
    await door.start(("127.0.0.1", 0))
    try:
        yield door
    finally:
        await door.close()


@pytest.fixture
async def pbx() -> AsyncIterator[Stack]:
    stack = await start_stack()
    try:
        yield stack
    finally:
        await stack.layer.close()


def door_target(endpoint: SipEndpoint, transport: str = "UDP") -> Target:
    host, port = endpoint.transports.local_address(transport)
    return Target(transport, host, port)


def warning_text(response: Response) -> str:
    value = response.headers.get("Warning")
    assert value is not None, f"{response.status_code} without a Warning"
    return Warning.parse(value).text


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_options_is_answered_200_with_what_the_endpoint_allows(
    endpoint: SipEndpoint, pbx: Stack, transport: str
) -> None:
    target = door_target(endpoint, transport)
    response = await pbx.layer.request(make_request(pbx.layer, "OPTIONS", target), target)
    assert response.status_code == 200
    assert response.headers.get("Allow") == ", ".join(ALLOWED_METHODS)


async def test_a_method_the_endpoint_does_not_take_gets_405_with_allow_and_a_warning(
    endpoint: SipEndpoint, pbx: Stack
) -> None:
    target = door_target(endpoint)
    response = await pbx.layer.request(make_request(pbx.layer, "REGISTER", target), target)
    assert response.status_code == 405
    assert "INVITE" in (response.headers.get("Allow") or "")
    assert warning_text(response).startswith("METHOD_NOT_ALLOWED")


async def test_an_invite_without_a_front_door_gets_503_saying_so(endpoint: SipEndpoint, pbx: Stack) -> None:
    target = door_target(endpoint)
    response = await pbx.layer.request(make_request(pbx.layer, "INVITE", target), target)
    assert response.status_code == 503
    assert warning_text(response).startswith("SIP_UNAVAILABLE")


async def test_a_bye_outside_any_dialog_or_inside_an_unknown_one_gets_481(endpoint: SipEndpoint, pbx: Stack) -> None:
    target = door_target(endpoint)
    response = await pbx.layer.request(make_request(pbx.layer, "BYE", target), target)
    assert response.status_code == 481
    in_dialog = make_request(pbx.layer, "BYE", target)
    in_dialog = Request("BYE", in_dialog.uri, in_dialog.headers.replaced("To", "<sip:x@127.0.0.1>;tag=nobody"))
    response = await pbx.layer.request(in_dialog, target)
    assert response.status_code == 481
    assert warning_text(response).startswith("DIALOG_UNKNOWN")


async def test_requests_and_the_ack_inside_a_registered_dialog_reach_its_handler(
    endpoint: SipEndpoint, pbx: Stack
) -> None:
    target = door_target(endpoint)
    received: list[ServerRequest | Request | Response] = []

    async def handler(message: ServerRequest | Request | Response) -> None:
        received.append(message)
        if isinstance(message, ServerRequest):
            message.respond(response_to(message.request, 200))

    base = make_request(pbx.layer, "INFO", target)
    headers = base.headers.replaced("To", "<sip:+447911123456@127.0.0.1>;tag=ours")
    info = Request("INFO", base.uri, headers)
    dialog = dialog_id_of(info)
    assert dialog == (info.call_id, "ours", info.from_.tag)
    endpoint.register_dialog(dialog, handler)
    assert endpoint.dialog_count == 1

    assert (await pbx.layer.request(info, target)).status_code == 200
    ack = Request("ACK", base.uri, headers.replaced("CSeq", "1 ACK").replaced("Via", pbx.layer.via("UDP")))
    await pbx.layer.send_stateless(ack, target)
    while len(received) < 2:
        await asyncio.sleep(0.01)
    assert isinstance(received[0], ServerRequest) and received[0].request.method == "INFO"
    assert isinstance(received[1], Request) and received[1].method == "ACK"

    endpoint.unregister_dialog(dialog)
    bye = Request("BYE", base.uri, headers.replaced("CSeq", "2 BYE").replaced("Via", pbx.layer.via("UDP")))
    assert (await pbx.layer.request(bye, target)).status_code == 481
    assert endpoint.dialog_count == 0


async def test_serve_with_a_sip_address_listens_and_shows_a_calls_sip_leg(
    make_service: Callable[..., Awaitable[Running]], pbx: Stack
) -> None:
    running = await make_service(sip_address="127.0.0.1:0")
    service = running.service
    assert service.sip is not None
    host, port = service.sip_addresses["UDP"]
    assert service.sip_addresses["TCP"] == (host, port)
    target = Target("UDP", host, port)
    assert (await pbx.layer.request(make_request(pbx.layer, "OPTIONS", target), target)).status_code == 200

    await running.grant()
    call = await running.start_call()
    assert not call.HasField("sip")
    assert service.calls is not None
    await service.calls.record_sip_leg(call.call_id, SipLeg("pbx", "abc@pbx", SipDirection.FRONT_DOOR, 200))
    shown = await running.get_call(call.call_id)
    assert (shown.sip.trunk, shown.sip.call_id, shown.sip.direction, shown.sip.last_status) == (
        "pbx",
        "abc@pbx",
        pb.SIP_DIRECTION_FRONT_DOOR,
        200,
    )
    events = await running.calling.ListEvents(
        pb.ListEventsRequest(business_number=BUSINESS, user_number=USER), metadata=running.metadata
    )
    assert any(e.call.sip.call_id == "abc@pbx" for e in events.events)


def a_dialog(*, route_set: tuple[str, ...] = (), contact: str = "sip:pbx@192.0.2.7:5070") -> Dialog:
    return Dialog(
        call_id="c1",
        local_tag="ours",
        remote_tag="theirs",
        local_uri="<sip:+447911123456@wacall.test>",
        remote_uri="<sip:pbx@pbx.test>",
        remote_target=contact,
        route_set=route_set,
    )


async def test_a_request_inside_a_dialog_goes_to_the_first_route_else_to_the_contact(endpoint: SipEndpoint) -> None:
    # §12.2.1.1: a record-routing proxy stays in the path; without one, the PBX's Contact, not the INVITE's source.
    assert endpoint.dialog_target(a_dialog(), transport="UDP") == Target("UDP", "192.0.2.7", 5070)
    routed = a_dialog(route_set=("<sip:proxy.test:5080;lr;transport=tcp>", "<sip:other.test;lr>"))
    assert endpoint.dialog_target(routed, transport="UDP") == Target("TCP", "proxy.test", 5080)
    # No transport parameter: the transport the dialog was made over; sips: means TLS on 5061.
    assert endpoint.dialog_target(a_dialog(contact="sip:pbx@[2001:db8::1]"), transport="TCP") == Target(
        "TCP", "2001:db8::1", 5060
    )
    assert endpoint.dialog_target(a_dialog(contact="sips:pbx@pbx.test"), transport="TLS") == Target(
        "TLS", "pbx.test", 5061
    )
    with pytest.raises(SipParseError):
        endpoint.dialog_target(a_dialog(contact="tel:+441234"), transport="UDP")


async def test_a_dialogs_requests_reuse_the_connection_it_came_on_and_keep_it_open() -> None:
    endpoint = SipEndpoint((), agent="wacall.test", timers=FAST)
    await endpoint.start(("127.0.0.1", 0))
    endpoint.transports.idle_timeout = 0.2
    pbx = await start_stack(lambda server: server.respond(response_to(server.request, 200, to_tag="pbx")))
    try:
        target = door_target(endpoint, "TCP")
        options = make_request(pbx.layer, "OPTIONS", target)
        assert (await pbx.layer.request(options, target)).status_code == 200
        (connection,) = endpoint.transports._connections
        # The PBX's Contact names its listening port; the connection came from an ephemeral one.
        dialog = a_dialog(contact=f"sip:pbx@127.0.0.1:{pbx.transports.local_address('TCP')[1]};transport=tcp")
        endpoint.register_dialog(dialog.id, lambda message: asyncio.sleep(0), connection=connection)
        await asyncio.sleep(0.6)  # quiet for three idle timeouts: a dialog holds the connection open
        chosen = endpoint.dialog_target(dialog, transport="TCP")
        assert chosen.connection is connection
        via = Via.parse(endpoint.layer.via("TCP"))
        dialog, bye = dialog.create_request("BYE", via=via)
        assert (await endpoint.layer.request(bye, chosen)).status_code == 200
        assert pbx.requests[-1].source.connection is not None
        assert pbx.transports.connection_count == 1  # the same connection, not a new one to the Contact
        endpoint.unregister_dialog(dialog.id)
        await asyncio.wait_for(connection.closed, 2.0)  # nothing holds it now: closed once idle
        assert endpoint.dialog_target(dialog, transport="TCP").connection is None
    finally:
        await endpoint.close()
        await pbx.layer.close()


async def test_a_2xx_matching_no_dialog_goes_to_its_invites_owner(endpoint: SipEndpoint, pbx: Stack) -> None:
    target = door_target(endpoint)
    invite = make_request(pbx.layer, "INVITE", target)  # stands for one of wacall's INVITEs: its From tag is ours
    local_tag = invite.from_.tag or ""
    forks: list[Response] = []

    async def fork(response: Response) -> None:
        forks.append(response)

    endpoint.register_invite(invite.call_id, local_tag, fork)
    # Two branches of a fork answer: each 2xx is a dialog of its own (different To tags).
    for tag in ("branch-a", "branch-b"):
        answer = response_to(invite, 200, to_tag=tag, headers=[("Contact", "<sip:pbx@127.0.0.1>")])
        await pbx.layer.send_stateless(answer, target)
    for _ in range(100):
        if len(forks) == 2:
            break
        await asyncio.sleep(0.01)
    assert [r.to.tag for r in forks] == ["branch-a", "branch-b"]
    endpoint.unregister_invite(invite.call_id, local_tag)
    await pbx.layer.send_stateless(response_to(invite, 200, to_tag="branch-c"), target)
    await asyncio.sleep(0.1)
    assert len(forks) == 2


async def test_a_request_requiring_an_extension_wacall_lacks_gets_420_naming_it(
    endpoint: SipEndpoint, pbx: Stack
) -> None:
    target = door_target(endpoint)
    invite = make_request(pbx.layer, "INVITE", target)
    invite = Request("INVITE", invite.uri, invite.headers.with_header("Require", "100rel, timer"), invite.body)
    response = await pbx.layer.request(invite, target)
    assert response.status_code == 420  # §8.2.2.3, not accepted as if nothing were required
    assert response.headers.get("Unsupported") == "100rel, timer"
    assert warning_text(response).startswith("EXTENSION_UNSUPPORTED: ")


async def test_an_ipv6_agent_is_bracketed_in_the_warning(pbx: Stack) -> None:
    endpoint = SipEndpoint((), agent="2001:db8::5", timers=FAST)
    await endpoint.start(("127.0.0.1", 0))
    try:
        target = door_target(endpoint)
        response = await pbx.layer.request(make_request(pbx.layer, "REGISTER", target), target)
        value = response.headers.get("Warning") or ""
        assert value.startswith('399 [2001:db8::5] "')  # §20.43: warn-agent is a hostport
    finally:
        await endpoint.close()
