"""The SIP front door's decisions, in memory: the admission of an INVITE (source, digest, the user and business
numbers, codecs) and the one table from refusal reasons to SIP final responses.
Every response is checked as a PBX would read it: serialised and parsed back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from wacall.calls import machine
from wacall.errors import REASONS
from wacall.rules.engine import Reason
from wacall.sip.digest import Challenge, DigestAuth
from wacall.sip.message import Headers, Request, Response, RetryAfter, Warning, parse_message
from wacall.sipdoor.admission import Admitted, Challenged, FrontDoor, Rejected, offered_codecs
from wacall.sipdoor.responses import (
    SIP_ENDINGS,
    SIP_REFUSALS,
    CallOutcome,
    final_response,
    platform_refusal,
    retry_after_seconds,
)
from wacall.sipdoor.trunks import parse_trunks
from wacall.upstreams.base import UpstreamReason

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET = b"nonce-secret-for-tests"
USER = "+34612345678"
BUSINESS = "+447911123456"
OTHER_BUSINESS = "+447400123456"

PBX: dict[str, Any] = {
    "name": "pbx",
    "username": "pbx",
    "password": "s3cret",
    "allowed_sources": ["127.0.0.1/32"],
    "business_numbers": [BUSINESS],
    "target": "sip:contact-centre@127.0.0.1:5080",
    "codecs": ["PCMU", "PCMA", "opus"],
}
OPEN_LAN: dict[str, Any] = {
    "name": "lan",
    "allowed_sources": ["10.0.0.0/8", "2001:db8::/32"],
    "business_numbers": ["*"],
    "target": "sip:agents@10.0.0.5",
    "codecs": ["PCMA"],
}

OFFER_ALL = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 96 0 8 101\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def sdp(media: str, *attributes: str) -> bytes:
    lines = ["v=0", "o=- 1 1 IN IP4 10.0.0.9", "s=-", "c=IN IP4 10.0.0.9", "t=0 0", media, *attributes]
    return ("\r\n".join(lines) + "\r\n").encode()


def invite(
    uri: str = f"sip:{USER}@wacall.example.com",
    *,
    from_user: str = BUSINESS,
    pai: str | None = None,
    body: bytes = OFFER_ALL,
) -> Request:
    headers = [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKdoor1"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:{from_user}@pbx.example.com>;tag=pbx1"),
        ("To", f"<{uri}>"),
        ("Call-ID", "door-1@pbx"),
        ("CSeq", "1 INVITE"),
        ("Contact", "<sip:pbx@127.0.0.1:5062>"),
        ("Content-Type", "application/sdp"),
    ]
    if pai is not None:
        headers.append(("P-Asserted-Identity", pai))
    return Request("INVITE", uri, Headers(headers), body)


def door(*entries: dict[str, Any], algorithms: list[str] | None = None) -> FrontDoor:
    configured = [dict(e, digest_algorithms=algorithms) if algorithms and "username" in e else e for e in entries]
    return FrontDoor(parse_trunks(configured), nonce_secret=SECRET, agent="wacall.example.com")


def open_door() -> FrontDoor:
    """A door whose trunk takes INVITEs from its sources without credentials."""
    return door(OPEN_LAN, dict(PBX, username=None, password=None, business_numbers=[BUSINESS]))


def reparsed(response: Response) -> Response:
    message = parse_message(response.serialize())
    assert isinstance(message, Response)
    return message


def warning(response: Response) -> Warning:
    return Warning.parse(reparsed(response).headers.get("Warning") or "")


def authorised(request: Request, challenge_response: Response, password: str = "s3cret") -> Request:
    """`request` again with credentials answering the first challenge, as a PBX (or SIPp) builds them."""
    challenge = Challenge.parse(challenge_response.headers.get_all("Proxy-Authenticate")[0])
    return DigestAuth("pbx", password).authorize(request, challenge)


# --- responses: one table from reasons to SIP --------------------------------------------------------------------


def test_every_rule_reason_has_a_sip_row() -> None:
    refusals = [r for r in Reason if r is not Reason.ALLOWED]
    assert [r for r in refusals if r not in SIP_REFUSALS] == []
    assert [o for o in CallOutcome if o not in SIP_REFUSALS] == []
    with pytest.raises(ValueError, match="ALLOWED is not a refusal"):
        final_response(invite(), Reason.ALLOWED, agent="wacall", to_tag="t")


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (Reason.NO_PERMISSION, 403),
        (Reason.PERMISSION_EXPIRED, 403),
        (Reason.PERMISSION_REVOKED, 403),
        (Reason.COUNTRY_UNSUPPORTED, 403),
        (Reason.BUSINESS_RESTRICTED, 403),
        (Reason.CALL_LIMIT_REACHED, 480),
        (Reason.CALL_IN_PROGRESS, 486),
        (CallOutcome.INVALID_NUMBER, 404),
        (CallOutcome.NO_COMMON_CODEC, 488),
        (CallOutcome.PLATFORM_FAILURE, 503),
        (CallOutcome.USER_DECLINED, 603),
        (CallOutcome.NO_ANSWER, 480),
        (CallOutcome.CANCELLED, 487),
        (CallOutcome.ENDED_AT_ANSWER, 480),
        (CallOutcome.ENDED_BY_BUSINESS, 480),
        (CallOutcome.SHUTTING_DOWN, 503),
        (CallOutcome.EXTENSION_UNSUPPORTED, 420),
        (CallOutcome.MEDIA_ENGINE_UNAVAILABLE, 503),
        (CallOutcome.MEDIA_SETUP_FAILED, 503),
    ],
)
def test_each_refusal_has_its_sip_status_and_a_warning_naming_the_reason(
    reason: Reason | CallOutcome, status: int
) -> None:
    response = reparsed(final_response(invite(), reason, agent="wacall.example.com", to_tag="door"))
    assert response.status_code == status
    assert response.to.tag == "door" and response.call_id == "door-1@pbx" and str(response.cseq) == "1 INVITE"
    found = warning(response)
    assert (found.code, found.agent) == (399, "wacall.example.com")
    assert found.text.startswith(f"{reason.name}: ")
    assert found.text == f"{reason.name}: {SIP_REFUSALS[reason].advice}"


def test_every_way_a_placed_call_ends_unanswered_has_its_sip_status() -> None:
    # An answered call got its 200 OK; every other outcome ends the INVITE with a final response.
    assert set(SIP_ENDINGS) == set(machine.CallOutcome) - {machine.CallOutcome.ANSWERED}
    statuses = {outcome: SIP_REFUSALS[ending].status for outcome, ending in SIP_ENDINGS.items()}
    assert statuses == {
        machine.CallOutcome.REJECTED: 603,
        machine.CallOutcome.UNANSWERED: 480,
        machine.CallOutcome.FAILED: 503,
        machine.CallOutcome.CANCELLED: 487,
    }


def test_a_platform_refusal_keeps_the_rule_it_names_else_is_a_platform_failure() -> None:
    assert platform_refusal(Reason.NO_PERMISSION) is Reason.NO_PERMISSION
    assert platform_refusal(Reason.CALL_LIMIT_REACHED) is Reason.CALL_LIMIT_REACHED
    for reason in UpstreamReason:
        assert platform_refusal(reason) is CallOutcome.PLATFORM_FAILURE


@pytest.mark.parametrize("reason", [r for r in Reason if r is not Reason.ALLOWED])
def test_a_rule_refusal_says_what_to_do_in_the_same_words_as_the_grpc_error(reason: Reason) -> None:
    response = final_response(invite(), reason, agent="wacall", to_tag="t")
    assert warning(response).text == f"{reason.name}: {REASONS[reason].advice}"


def test_the_warning_names_the_reason_without_prefix_for_the_permission_cases() -> None:
    texts = [
        warning(final_response(invite(), r, agent="h", to_tag="t")).text.split(":")[0]
        for r in (Reason.NO_PERMISSION, Reason.PERMISSION_EXPIRED, Reason.CALL_LIMIT_REACHED)
    ]
    assert texts == ["NO_PERMISSION", "PERMISSION_EXPIRED", "CALL_LIMIT_REACHED"]


def test_the_connected_call_limit_gives_480_with_the_seconds_until_next_allowed_at_rounded_up() -> None:
    next_allowed = NOW + timedelta(hours=2, seconds=3, milliseconds=1)
    response = reparsed(
        final_response(
            invite(), Reason.CALL_LIMIT_REACHED, agent="h", to_tag="t", now=NOW, next_allowed_at=next_allowed
        )
    )
    assert response.status_code == 480
    assert RetryAfter.parse(response.headers.get("Retry-After") or "").seconds == 7204


def test_retry_after_is_exact_on_a_whole_second_and_never_negative() -> None:
    assert retry_after_seconds(NOW + timedelta(seconds=60), NOW) == 60
    assert retry_after_seconds(NOW + timedelta(microseconds=1), NOW) == 1
    assert retry_after_seconds(NOW - timedelta(seconds=5), NOW) == 0


def test_only_a_used_up_limit_carries_retry_after() -> None:
    later = NOW + timedelta(days=1)
    paused = final_response(invite(), Reason.BUSINESS_RESTRICTED, agent="h", to_tag="t", now=NOW, next_allowed_at=later)
    assert paused.status_code == 403 and "Retry-After" not in reparsed(paused).headers
    unknown = final_response(invite(), Reason.CALL_LIMIT_REACHED, agent="h", to_tag="t")
    assert "Retry-After" not in reparsed(unknown).headers
    with pytest.raises(ValueError, match="needs now"):
        final_response(invite(), Reason.CALL_LIMIT_REACHED, agent="h", to_tag="t", next_allowed_at=later)


def test_a_detail_replaces_the_advice_and_survives_quotes() -> None:
    response = final_response(
        invite(), CallOutcome.INVALID_NUMBER, agent="h", to_tag="t", detail='"+1 2" is not a valid number'
    )
    assert warning(response).text == 'INVALID_NUMBER: "+1 2" is not a valid number'


def test_a_detail_with_control_characters_or_too_long_still_makes_a_warning() -> None:
    # A platform's own words may hold a newline (FD8): never the generic 503 a Warning that cannot be built gave.
    response = final_response(
        invite(), Reason.NO_PERMISSION, agent="h", to_tag="t", detail="platform error 138006:\nno\x01 permission"
    )
    assert response.status_code == 403
    assert warning(response).text == "NO_PERMISSION: platform error 138006: no  permission"
    long = final_response(invite(), CallOutcome.PLATFORM_FAILURE, agent="h", to_tag="t", detail="x" * 1000)
    assert len(warning(long).text) == 300 and warning(long).text.endswith("...")


# --- admission: source and digest -------------------------------------------------------------------------------


def test_a_source_no_trunk_allows_gets_403_without_a_challenge() -> None:
    decision = door(PBX).admit(invite(), source="192.0.2.99", now=NOW, to_tag="t")
    assert isinstance(decision, Rejected) and decision.reason is CallOutcome.SOURCE_NOT_ALLOWED
    response = reparsed(decision.response)
    assert response.status_code == 403 and "Proxy-Authenticate" not in response.headers
    assert warning(response).text.startswith("SOURCE_NOT_ALLOWED: ")


def test_a_trunk_with_credentials_challenges_once_per_algorithm_in_its_order() -> None:
    for algorithms in (["SHA-256", "MD5"], ["MD5", "SHA-256"]):
        decision = door(PBX, algorithms=algorithms).admit(invite(), source="127.0.0.1", now=NOW, to_tag="t")
        assert isinstance(decision, Challenged)
        response = reparsed(decision.response)
        assert response.status_code == 407 and response.to.tag == "t"
        challenges = [Challenge.parse(v) for v in response.headers.get_all("Proxy-Authenticate")]
        assert [c.algorithm for c in challenges] == algorithms
        assert all(c.qop == "auth" and not c.stale for c in challenges)


def test_the_default_challenge_order_is_sha256_then_md5() -> None:
    decision = door(PBX).admit(invite(), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(decision, Challenged)
    assert [Challenge.parse(v).algorithm for v in decision.response.headers.get_all("Proxy-Authenticate")] == [
        "SHA-256",
        "MD5",
    ]


@pytest.mark.parametrize("algorithms", [["SHA-256", "MD5"], ["MD5", "SHA-256"]])
def test_good_credentials_are_admitted(algorithms: list[str]) -> None:
    front = door(PBX, algorithms=algorithms)
    challenge = front.admit(invite(), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(challenge, Challenged)
    decision = front.admit(authorised(invite(), challenge.response), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(decision, Admitted)
    assert (decision.trunk.name, decision.user.e164, decision.business.e164) == ("pbx", USER, BUSINESS)


def test_wrong_credentials_get_403_and_no_new_challenge() -> None:
    front = door(PBX)
    challenge = front.admit(invite(), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(challenge, Challenged)
    retry = authorised(invite(), challenge.response, password="wrong")
    decision = front.admit(retry, source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(decision, Rejected) and decision.reason is CallOutcome.BAD_CREDENTIALS
    response = reparsed(decision.response)
    assert response.status_code == 403 and "Proxy-Authenticate" not in response.headers


def test_credentials_from_another_door_secret_are_rejected() -> None:
    challenge = door(PBX).admit(invite(), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(challenge, Challenged)
    other = FrontDoor(parse_trunks([PBX]), nonce_secret=b"another secret", agent="wacall")
    decision = other.admit(authorised(invite(), challenge.response), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(decision, Rejected) and decision.response.status_code == 403


def test_stale_credentials_are_challenged_again_with_stale_true() -> None:
    front = door(PBX)
    challenge = front.admit(invite(), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(challenge, Challenged)
    later = NOW + timedelta(seconds=301)  # past the nonce lifetime
    decision = front.admit(authorised(invite(), challenge.response), source="127.0.0.1", now=later, to_tag="t")
    assert isinstance(decision, Challenged)
    challenges = [Challenge.parse(v) for v in reparsed(decision.response).headers.get_all("Proxy-Authenticate")]
    assert [c.stale for c in challenges] == [True, True]
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]


def test_a_trunk_without_credentials_takes_invites_from_its_sources_unchallenged() -> None:
    decision = open_door().admit(invite(), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(decision, Admitted) and decision.trunk.name == "pbx"


def test_only_invites_are_admitted() -> None:
    options = Request("OPTIONS", "sip:wacall.example.com", invite().headers)
    with pytest.raises(ValueError, match="not OPTIONS"):
        open_door().admit(options, source="127.0.0.1", now=NOW, to_tag="t")


# --- admission: numbers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        f"sip:{USER}@wacall.example.com",
        f"sip:{USER[1:]}@wacall.example.com;user=phone",
        "sip:%2B34612345678@wacall.example.com",
        f"tel:{USER}",
    ],
)
def test_the_whatsapp_user_comes_from_the_request_uri_as_e164_or_bare_digits(uri: str) -> None:
    decision = open_door().admit(invite(uri), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(decision, Admitted) and decision.user.e164 == USER


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("sip:+1555@wacall.example.com", "'+1555' is not a valid number"),
        ("sip:agent@wacall.example.com", "'agent' is not a phone number"),
        ("sip:wacall.example.com", "a phone number in E.164 form is required"),
    ],
)
def test_an_invalid_user_number_gets_404_saying_what_is_wrong(uri: str, says: str) -> None:
    decision = open_door().admit(invite(uri), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(decision, Rejected) and decision.reason is CallOutcome.INVALID_NUMBER
    response = reparsed(decision.response)
    assert response.status_code == 404
    text = warning(response).text
    assert text.startswith("INVALID_NUMBER: Request-URI user: ") and says in text


def test_p_asserted_identity_is_the_business_number_over_from() -> None:
    front = open_door()
    decision = front.admit(
        invite(from_user="anonymous", pai=f'"Sales" <sip:{BUSINESS}@pbx.example.com>'),
        source="127.0.0.1",
        now=NOW,
        to_tag="t",
    )
    assert isinstance(decision, Admitted) and decision.business.e164 == BUSINESS
    refused = front.admit(
        invite(from_user=BUSINESS, pai=f"<sip:{OTHER_BUSINESS}@pbx.example.com>"),
        source="127.0.0.1",
        now=NOW,
        to_tag="t",
    )
    assert isinstance(refused, Rejected) and refused.reason is CallOutcome.BUSINESS_NUMBER_NOT_ALLOWED


def test_p_asserted_identity_may_be_a_tel_uri_among_several() -> None:
    decision = open_door().admit(
        invite(from_user="anonymous", pai=f"<sip:sales@pbx.example.com>, <tel:{BUSINESS}>"),
        source="127.0.0.1",
        now=NOW,
        to_tag="t",
    )
    assert isinstance(decision, Admitted) and decision.business.e164 == BUSINESS


def test_the_from_user_part_in_bare_digits_is_the_business_number_without_pai() -> None:
    decision = open_door().admit(invite(from_user=BUSINESS[1:]), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(decision, Admitted) and decision.business.e164 == BUSINESS
    assert not decision.any_business_number


def test_a_business_number_not_on_the_trunk_gets_403_naming_it() -> None:
    decision = open_door().admit(invite(from_user=OTHER_BUSINESS), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(decision, Rejected)
    response = reparsed(decision.response)
    assert response.status_code == 403
    assert warning(response).text == (
        f"BUSINESS_NUMBER_NOT_ALLOWED: {OTHER_BUSINESS} is not one of trunk pbx's business_numbers"
    )


def test_an_unreadable_business_number_gets_403_saying_what_is_wrong() -> None:
    decision = open_door().admit(invite(from_user="anonymous"), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(decision, Rejected) and decision.response.status_code == 403
    assert warning(decision.response).text.startswith("BUSINESS_NUMBER_NOT_ALLOWED: business number: 'anonymous'")


def test_star_accepts_any_valid_business_number_and_says_so() -> None:
    decision = open_door().admit(invite(from_user=OTHER_BUSINESS), source="10.0.0.7", now=NOW, to_tag="t")
    assert isinstance(decision, Admitted) and decision.trunk.name == "lan"
    assert decision.business.e164 == OTHER_BUSINESS and decision.any_business_number


# --- admission: codecs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "codecs"),
    [
        (OFFER_ALL, ("opus", "PCMU", "PCMA")),
        (sdp("m=audio 4000 RTP/AVP 0 8"), ("PCMU", "PCMA")),  # static payload types, no rtpmap
        (sdp("m=audio 4000 RTP/AVP 8 0", "a=rtpmap:8 PCMA/8000", "a=rtpmap:0 PCMU/8000"), ("PCMA", "PCMU")),
        (sdp("m=audio 4000 RTP/AVP 111", "a=rtpmap:111 OPUS/48000/2"), ("opus",)),
        (sdp("m=audio 4000 RTP/AVP 18", "a=rtpmap:18 G729/8000"), ()),
        (sdp("m=audio 0 RTP/AVP 0"), ()),  # a disabled stream
        (sdp("m=video 4000 RTP/AVP 0"), ()),  # not audio
        (sdp("m=audio 4000 RTP/AVP 96", "a=rtpmap:96 telephone-event/8000"), ()),
    ],
)
def test_the_offer_codecs_are_read_from_rtpmap_and_static_payload_types(body: bytes, codecs: tuple[str, ...]) -> None:
    assert offered_codecs(body) == codecs


def test_the_common_codecs_are_the_offers_that_the_trunk_allows_in_the_offers_order() -> None:
    decision = open_door().admit(invite(), source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(decision, Admitted) and decision.codecs == ("opus", "PCMU", "PCMA")
    lan = open_door().admit(invite(), source="10.0.0.1", now=NOW, to_tag="t")
    assert isinstance(lan, Admitted) and lan.codecs == ("PCMA",)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (sdp("m=audio 4000 RTP/AVP 0"), "the offer has none of PCMA"),
        (sdp("m=audio 4000 RTP/AVP 18", "a=rtpmap:18 G729/8000"), "the offer has none of PCMA"),
        (b"", "the INVITE must carry an SDP offer"),
    ],
)
def test_no_common_codec_gets_488(body: bytes, says: str) -> None:
    decision = open_door().admit(invite(body=body), source="10.0.0.1", now=NOW, to_tag="t")
    assert isinstance(decision, Rejected) and decision.reason is CallOutcome.NO_COMMON_CODEC
    response = reparsed(decision.response)
    assert response.status_code == 488
    assert warning(response).text == f"NO_COMMON_CODEC: {says}"


def test_the_checks_run_in_order_source_credentials_user_business_codec() -> None:
    # Everything is wrong at once: each fix reveals the next refusal.
    bad = invite("sip:agent@wacall.example.com", from_user=OTHER_BUSINESS, body=sdp("m=audio 4000 RTP/AVP 18"))
    front = door(PBX)
    assert isinstance(front.admit(bad, source="192.0.2.1", now=NOW, to_tag="t"), Rejected)
    challenge = front.admit(bad, source="127.0.0.1", now=NOW, to_tag="t")
    assert isinstance(challenge, Challenged)

    def outcome(request: Request) -> CallOutcome:
        decision = front.admit(authorised(request, challenge.response), source="127.0.0.1", now=NOW, to_tag="t")
        assert isinstance(decision, Rejected)
        return decision.reason

    assert outcome(bad) is CallOutcome.INVALID_NUMBER
    fixed_user = invite(from_user=OTHER_BUSINESS, body=sdp("m=audio 4000 RTP/AVP 18"))
    assert outcome(fixed_user) is CallOutcome.BUSINESS_NUMBER_NOT_ALLOWED
    assert outcome(invite(body=sdp("m=audio 4000 RTP/AVP 18"))) is CallOutcome.NO_COMMON_CODEC
