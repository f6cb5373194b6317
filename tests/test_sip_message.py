"""SIP messages (RFC 3261 §7, §20, §25): what parses, what is refused and why, round trips, stream framing.

The torture messages below are written for this file after RFC 4475's descriptions (its section in each name).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wacall.sip.message import (
    CSeq,
    Headers,
    NameAddr,
    OtherURI,
    Request,
    Response,
    RetryAfter,
    SipParseError,
    SipURI,
    StreamFramer,
    TelURI,
    Via,
    Warning,
    parse_datagram,
    parse_message,
    parse_uri,
    response_to,
)


def wire(text: str) -> bytes:
    """A message written with \\n line ends in this file, as CRLF on the wire."""
    return text.replace("\n", "\r\n").encode()


SDP = wire(
    "v=0\n"
    "o=pbx 2890844526 2890844526 IN IP4 192.0.2.4\n"
    "s=-\n"
    "c=IN IP4 192.0.2.4\n"
    "t=0 0\n"
    "m=audio 49170 RTP/AVP 0 8\n"
    "a=sendrecv\n"
)
INVITE = (
    wire(
        "INVITE sip:+34612345678@wacall.example.com SIP/2.0\n"
        "Via: SIP/2.0/UDP pbx.example.com:5060;branch=z9hG4bK776asdhds;rport\n"
        "Max-Forwards: 70\n"
        'From: "Contact Centre" <sip:+447911123456@pbx.example.com>;tag=1928301774\n'
        "To: <sip:+34612345678@wacall.example.com>\n"
        "Call-ID: a84b4c76e66710@pbx.example.com\n"
        "CSeq: 314159 INVITE\n"
        "Contact: <sip:pbx@192.0.2.4:5060>\n"
        "P-Asserted-Identity: <sip:+447911123456@pbx.example.com>\n"
        "Content-Type: application/sdp\n"
        f"Content-Length: {len(SDP)}\n"
        "\n"
    )
    + SDP
)


def test_a_typical_invite_parses_into_its_parts() -> None:
    message = parse_message(INVITE)
    assert isinstance(message, Request)
    assert message.method == "INVITE"
    assert message.uri == "sip:+34612345678@wacall.example.com"
    assert message.call_id == "a84b4c76e66710@pbx.example.com"
    assert message.cseq == CSeq(314159, "INVITE")
    assert message.from_.display_name == "Contact Centre"
    assert message.from_.tag == "1928301774"
    assert message.to.tag is None
    assert message.top_via.branch == "z9hG4bK776asdhds"
    assert message.top_via.rport is True
    assert message.top_via.sent_by == "pbx.example.com:5060"
    assert message.body == SDP
    pai = NameAddr.parse(message.headers.get("p-asserted-identity") or "")
    assert isinstance(pai.uri, SipURI) and pai.uri.user == "+447911123456"


def test_serialising_a_parsed_message_round_trips() -> None:
    message = parse_message(INVITE)
    assert parse_message(message.serialize()) == message
    assert bytes(message) == INVITE


def test_headers_are_case_insensitive_and_compact_forms_read_as_full_names() -> None:
    compact = wire(
        "OPTIONS sip:wacall.example.com SIP/2.0\n"
        "v: SIP/2.0/TCP pbx.example.com;branch=z9hG4bKcompact\n"
        "f: <sip:pbx@pbx.example.com>;tag=a\n"
        "t: <sip:wacall.example.com>\n"
        "i: compact-1@pbx\n"
        "CSEQ: 1 OPTIONS\n"
        "m: <sip:pbx@192.0.2.4>\n"
        "k: timer, 100rel\n"
        "s: hello\n"
        "c: text/plain\n"
        "l: 2\n"
        "\n"
        "hi"
    )
    message = parse_message(compact, datagram=False)
    assert isinstance(message, Request)
    assert message.call_id == "compact-1@pbx"
    assert message.headers.get("CALL-ID") == message.headers.get("i") == "compact-1@pbx"
    assert message.headers.get_all("Supported") == ["timer", "100rel"]
    assert message.headers.get("Subject") == "hello"
    assert message.headers.get("Content-Type") == "text/plain"
    assert message.top_via.transport == "TCP"
    assert message.body == b"hi"
    # Serialised with full names.
    assert b"\r\nCall-ID: compact-1@pbx\r\n" in message.serialize()
    assert b"\r\nCSeq: 1 OPTIONS\r\n" in message.serialize()


def test_list_headers_split_at_commas_outside_quotes_and_brackets() -> None:
    message = parse_message(
        wire(
            "BYE sip:a@example.com SIP/2.0\n"
            "Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK1, SIP/2.0/UDP p2.example.com;branch=z9hG4bK2\n"
            "Via: SIP/2.0/UDP p3.example.com;branch=z9hG4bK3\n"
            'Record-Route: <sip:p1.example.com;lr>, "Proxy, Two" <sip:p2.example.com;lr>\n'
            "From: <sip:b@example.com>;tag=1\n"
            "To: <sip:a@example.com>;tag=2\n"
            "Call-ID: list@example.com\n"
            "CSeq: 2 BYE\n"
            'Authorization: Digest username="a", realm="r"\n'
            "\n"
        )
    )
    assert [v.host for v in message.vias] == ["p1.example.com", "p2.example.com", "p3.example.com"]
    assert message.headers.get_all("Record-Route") == [
        "<sip:p1.example.com;lr>",
        '"Proxy, Two" <sip:p2.example.com;lr>',
    ]
    assert message.headers.get_all("Authorization") == ['Digest username="a", realm="r"']


# --- RFC 4475 §3.1.1: valid messages ---------------------------------------------------------------------------------


def test_rfc4475_3_1_1_1_a_short_tortuous_invite_parses() -> None:
    # Folding, unusual whitespace, mixed case, compact forms, escaped user part, a quoted display name with escapes.
    data = wire(
        "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\n"
        "TO :\n"
        " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\n"
        'from   : "J Rosenberg \\\\\\"" <sip:jdrosen@example.com>\n'
        "  ;\n"
        "  tag = 98asjd8\n"
        "MaX-fOrWaRdS: 0068\n"
        "Call-ID: wsinv.ndaksdj@192.0.2.1\n"
        "Content-Length   : 0\n"
        "cseq: 0009\n"
        "  INVITE\n"
        "Via  : SIP  /   2.0\n"
        " /UDP\n"
        "    192.0.2.2;branch=390skdjuw\n"
        "s :\n"
        "NewFangledHeader:   newfangled value\n"
        " continued newfangled value\n"
        "UnknownHeaderWithUnusualValue: ;;,,;;,;\n"
        'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =\n'
        "      newvalue ;\n"
        "  secondparam ; q = 0.33\n"
        "\n"
    )
    message = parse_message(data)
    assert isinstance(message, Request)
    assert message.to.tag == "1918181833n"
    assert message.from_.tag == "98asjd8"
    assert message.from_.display_name == 'J Rosenberg \\"'
    assert message.cseq == CSeq(9, "INVITE")
    assert message.headers.get("Max-Forwards") == "0068"
    assert message.top_via == Via("UDP", "192.0.2.2", None, (("branch", "390skdjuw"),))
    assert message.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert message.headers.get("Subject") == ""
    contact = NameAddr.parse(message.headers.get("Contact") or "")
    assert contact.display_name == 'Quoted string ""'
    assert (
        contact.param("newparam") == "newvalue" and contact.param("secondparam") == "" and contact.param("q") == "0.33"
    )


def test_rfc4475_3_1_1_2_a_method_of_every_token_character_parses() -> None:
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    data = wire(
        f"{method} sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
        "@example.com SIP/2.0\n"
        "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\n"
        'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy?,/;;*@example.com>\n'
        "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
        '"\xd1\x80\xd0\xb0\xd0\xb1\xd0\xbe\xd1\x82\xd0\xb0\xd1\x8e\xd1\x89\xd0\xb8\xd0\xb9";tag=_token~1\'+`*%!-.\n'
        "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\n"
        f"CSeq: 139122385 {method}\n"
        "Max-Forwards: 255\n"
        "extensionHeader-!.%*+_`'~: \xef\xbb\xbf\xe5\xa4\xa7\xe5\x81\x9c\xe9\x9b\xbb\n"
        "Content-Length: 0\n"
        "\n"
    )
    message = parse_message(data.decode("latin-1").encode("latin-1"))
    assert isinstance(message, Request)
    assert message.method == method
    assert message.cseq.method == method
    assert message.from_.tag == "_token~1'+`*%!-."


def test_rfc4475_3_1_1_3_escaped_characters_in_the_user_part_parse() -> None:
    uri = SipURI.parse("sip:sips%3Auser%40example.com@example.net")
    assert uri.user == "sips%3Auser%40example.com" and uri.host == "example.net"


def test_rfc4475_3_1_1_4_escaped_nulls_in_a_uri_parse() -> None:
    uri = SipURI.parse("sip:null-%00-null@example.com")
    assert uri.user == "null-%00-null"


def test_rfc4475_3_1_1_6_a_message_with_no_lws_between_display_name_and_angle_bracket_parses() -> None:
    address = NameAddr.parse("caller<sip:caller@example.com>;tag=323")
    assert address.display_name == "caller" and address.tag == "323"
    address = NameAddr.parse('"caller"<sip:caller@example.com>;tag=323')
    assert address.display_name == "caller"


def test_rfc4475_3_1_1_7_long_values_parse() -> None:
    long_token = "very" + "long" * 100
    vias = "".join(f"Via: SIP/2.0/TCP host{i}.example.com;branch=z9hG4bK{long_token}{i}\n" for i in range(30))
    data = wire(
        f"INVITE sip:user@{long_token}.example.com SIP/2.0\n"
        f"{vias}"
        f'To: "I have a user name of {long_token}" <sip:{long_token}@example.com>\n'
        f"From: <sip:{long_token}@example.net>;tag={long_token}\n"
        f"Call-ID: {long_token}-longreq@example.com\n"
        "CSeq: 1 INVITE\n"
        f"{long_token}-header: {long_token}\n"
        "\n"
    )
    message = parse_message(data)
    assert len(message.vias) == 30
    assert message.from_.tag == long_token
    assert message.headers.get(f"{long_token}-header") == long_token


def test_rfc4475_3_1_1_8_extra_octets_after_a_datagrams_content_length_are_dropped() -> None:
    first = INVITE
    message = parse_datagram(first + b"REGISTER sip:example.com SIP/2.0\r\n\r\n")
    assert message == parse_message(first)


def test_rfc4475_3_1_1_9_semicolons_in_the_user_part_parse() -> None:
    uri = SipURI.parse("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net" and uri.host == "example.com" and uri.params == ()


def test_rfc4475_3_1_1_10_unknown_transports_in_via_parse() -> None:
    via = Via.parse("SIP/2.0/UNKNOWN t3.example.com;branch=z9hG4bKunknown")
    assert via.transport == "UNKNOWN" and not via.is_reliable
    assert Via.parse("SIP/2.0/TLS t2.example.com;branch=z9hG4bKtls").is_reliable


def test_rfc4475_3_1_1_12_an_unusual_reason_phrase_parses() -> None:
    phrase = "= 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e \u0434\u0435\u0432\u044f\u043d\u043e\u0441\u0442\u043e"
    data = (
        f"SIP/2.0 200 {phrase}\r\n"
        "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\r\n"
        "Call-ID: unreason.1234ksdfak3j2erwedfsASdf\r\n"
        "CSeq: 35 INVITE\r\n"
        "From: sip:user@example.com;tag=11141343\r\n"
        "To: sip:user@example.edu;tag=2229\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    message = parse_message(data)
    assert isinstance(message, Response) and message.reason == phrase and message.status_code == 200


def test_rfc4475_3_1_1_13_an_empty_reason_phrase_parses() -> None:
    data = wire(
        "SIP/2.0 100 \n"
        "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\n"
        "Call-ID: noreason.asndj203insdf99223ndf\n"
        "CSeq: 35 INVITE\n"
        "From: <sip:user@example.com>;tag=39ansfi3\n"
        "To: <sip:user@example.edu>;tag=902jndnke3\n"
        "Content-Length: 0\n\n"
    )
    message = parse_message(data)
    assert isinstance(message, Response) and message.status_code == 100 and message.reason == ""


def test_rfc4475_3_1_1_ipv6_references_and_unknown_schemes_parse() -> None:
    uri = SipURI.parse("sip:[2001:db8::10]:5070;transport=tcp")
    assert uri.host == "[2001:db8::10]" and uri.port == 5070 and uri.transport == "TCP"
    assert Via.parse("SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3;received=[2001:db8::9:255]").received == (
        "[2001:db8::9:255]"
    )
    assert NameAddr.parse("<nobody:unknown-scheme-uri>").uri == OtherURI("nobody", "unknown-scheme-uri")
    assert parse_uri("tel:+34612345678;phone-context=example.com") == TelURI(
        "+34612345678", (("phone-context", "example.com"),)
    )


def test_uri_parts_params_and_headers_round_trip() -> None:
    text = "sips:alice:secret@[2001:db8::1]:5061;transport=tls;lr?subject=project&priority=urgent"
    uri = SipURI.parse(text)
    assert (uri.scheme, uri.user, uri.password, uri.port) == ("sips", "alice", "secret", 5061)
    assert uri.param("LR") == "" and uri.param("maddr") is None
    assert uri.headers == (("subject", "project"), ("priority", "urgent"))
    assert str(uri) == text


# --- RFC 4475 §3.1.2: invalid messages are refused with a reason ----------------------------------------------------


def _refusal(data: bytes, *, datagram: bool = True) -> str:
    with pytest.raises(SipParseError) as error:
        parse_message(data, datagram=datagram)
    return str(error.value)


def _invite_with(
    *, start: str = "INVITE sip:user@example.com SIP/2.0", extra: str = "", cseq: str = "1 INVITE"
) -> bytes:
    return wire(
        f"{start}\n"
        "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw\n"
        "From: <sip:caller@example.net>;tag=134161461246\n"
        "To: <sip:user@example.com>\n"
        "Call-ID: bad.1@example.net\n"
        f"CSeq: {cseq}\n"
        f"{extra}"
        "\n"
    )


def test_rfc4475_3_1_2_1_a_content_length_beyond_the_body_is_refused() -> None:
    assert "shorter than Content-Length 9999" in _refusal(_invite_with(extra="Content-Length: 9999\n") + b"v=0\r\n")


def test_rfc4475_3_1_2_2_a_negative_or_huge_content_length_is_refused() -> None:
    assert "invalid Content-Length '-999'" in _refusal(_invite_with(extra="Content-Length: -999\n"))
    assert "invalid Content-Length" in _refusal(_invite_with(extra="Content-Length: 18446744073709551617\n"))


def test_rfc4475_3_1_2_3_scalar_fields_out_of_range_are_refused() -> None:
    assert "not below 2**31" in _refusal(_invite_with(cseq="36893488147419103232 INVITE"))
    assert "not below 2**31" in _refusal(_invite_with(cseq="2147483648 INVITE"))
    assert "invalid Max-Forwards '300'" in _refusal(_invite_with(extra="Max-Forwards: 300\n"))
    assert "port 65536 out of range" in _refusal(_invite_with(start="INVITE sip:user@example.com:65536 SIP/2.0"))


def test_rfc4475_3_1_2_5_an_unterminated_quoted_display_name_is_refused() -> None:
    data = _invite_with().replace(b"From: <sip:caller", b'From: "Bell, Alexander <sip:caller')
    assert "unterminated quoted string" in _refusal(data)


def test_rfc4475_3_1_2_7_a_request_uri_in_angle_brackets_is_refused() -> None:
    assert "enclosed in <>" in _refusal(_invite_with(start="INVITE <sip:user@example.com> SIP/2.0"))


def test_rfc4475_3_1_2_8_whitespace_inside_the_request_uri_is_refused() -> None:
    assert "request line" in _refusal(_invite_with(start="INVITE sip:user@example.com; lr SIP/2.0"))


def test_rfc4475_3_1_2_10_extra_spaces_in_the_request_line_are_refused() -> None:
    assert "request line" in _refusal(_invite_with(start="INVITE  sip:user@example.com  SIP/2.0"))
    assert "request line" in _refusal(_invite_with(start="INVITE sip:user@example.com SIP/2.0 "))


def test_rfc4475_3_1_2_11_an_unescaped_space_in_an_address_is_refused() -> None:
    data = _invite_with().replace(b"To: <sip:user@example.com>", b"To: <sip:user name@example.com>")
    assert "invalid character in URI" in _refusal(data)


def test_rfc4475_3_1_2_15_an_unknown_sip_version_is_refused() -> None:
    assert "unsupported SIP version 'SIP/7.0'" in _refusal(_invite_with(start="INVITE sip:user@example.com SIP/7.0"))


def test_rfc4475_3_1_2_16_a_cseq_method_other_than_the_requests_is_refused() -> None:
    assert "CSeq method 'OPTIONS' does not match" in _refusal(_invite_with(cseq="1 OPTIONS"))


def test_missing_mandatory_headers_are_named() -> None:
    whole = _invite_with()
    for header in (b"Via", b"From", b"To", b"Call-ID", b"CSeq"):
        lines = [line for line in whole.split(b"\r\n") if not line.startswith(header + b":")]
        assert f"missing {header.decode()}" in _refusal(b"\r\n".join(lines))


def test_conflicting_content_lengths_and_bad_header_lines_are_refused() -> None:
    both = _invite_with(extra="Content-Length: 0\nl: 4\n") + b"v=0\n"
    assert "conflicting Content-Length" in _refusal(both)
    assert "header line without a name" in _refusal(_invite_with(extra="this is not a header\n"))
    assert "not UTF-8" in _refusal(_invite_with(extra="X-Bad: \xff\n").replace(b"\xc3\xbf", b"\xff"))
    assert "no empty line" in _refusal(b"INVITE sip:user@example.com SIP/2.0\r\nVia: x\r\n")
    assert "invalid status code '1000'" in _refusal(b"SIP/2.0 1000 Huge\r\n\r\n")


def test_a_stream_needs_an_exact_content_length() -> None:
    assert "missing Content-Length on a stream" in _refusal(_invite_with(), datagram=False)
    data = _invite_with(extra="Content-Length: 2\n") + b"abc"
    assert "longer than Content-Length 2" in _refusal(data, datagram=False)


# --- Header values -------------------------------------------------------------------------------------------------


def test_a_warning_quotes_its_text_safely() -> None:
    warning = Warning(399, "wacall.example.com", 'NO_PERMISSION: ask the user "call me" first \\ then retry')
    text = str(warning)
    assert text == '399 wacall.example.com "NO_PERMISSION: ask the user \\"call me\\" first \\\\ then retry"'
    assert Warning.parse(text) == warning
    with pytest.raises(ValueError, match="control characters"):
        str(Warning(399, "h", "line\r\nInjected: header"))
    with pytest.raises(ValueError, match="warn-code"):
        Warning(200, "h", "x")


def test_retry_after_reads_seconds_comment_and_duration() -> None:
    assert RetryAfter.parse("18000;duration=3600") == RetryAfter(18000, None, 3600)
    assert RetryAfter.parse("120 (I'm in a meeting)") == RetryAfter(120, "I'm in a meeting")
    assert str(RetryAfter(3600)) == "3600"
    with pytest.raises(SipParseError, match="invalid Retry-After"):
        RetryAfter.parse("soon")


def test_via_reads_branch_cookie_received_and_rport() -> None:
    via = Via.parse("SIP/2.0/UDP 10.0.0.1:5060;rport=5062;received=192.0.2.7;branch=z9hG4bKabc")
    assert via.has_magic_cookie and via.rport == 5062 and via.received == "192.0.2.7"
    assert not Via.parse("SIP/2.0/UDP 10.0.0.1;branch=1234").has_magic_cookie
    stamped = via.with_params(received="198.51.100.1", rport="40000")
    assert Via.parse(str(stamped)).rport == 40000 and stamped.received == "198.51.100.1"
    with pytest.raises(SipParseError, match="invalid rport"):
        Via.parse("SIP/2.0/UDP 10.0.0.1;rport=70000")


def test_a_server_stamps_the_source_on_the_via_and_answers_there_rfc_3581() -> None:
    asks = Via.parse("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnat;rport")
    assert asks.response_address() == ("10.0.0.1", 5060)
    stamped = asks.stamped("198.51.100.7", 40001)
    assert (stamped.received, stamped.rport) == ("198.51.100.7", 40001)
    assert stamped.response_address() == ("198.51.100.7", 40001)
    # Without rport: received only when the source differs from sent-by, and the sent-by port.
    plain = Via.parse("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKplain")
    assert plain.stamped("10.0.0.1", 5070) == plain
    assert plain.stamped("198.51.100.7", 5070).response_address() == ("198.51.100.7", 5060)
    v6 = Via.parse("SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bKv6")
    assert v6.stamped("2001:db8::1", 5062) == v6


def test_max_forwards_reads_as_a_number() -> None:
    message = parse_message(_invite_with(extra="Max-Forwards: 0069\n"))
    assert isinstance(message, Request) and message.max_forwards == 69
    request = parse_message(_invite_with())
    assert isinstance(request, Request) and request.max_forwards is None


def test_headers_edit_without_changing_the_original() -> None:
    headers = Headers([("v", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("X-A", "1")])
    changed = headers.replaced("X-A", "2").with_header("x-b", "3").without("Via")
    assert list(headers) == [("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("X-A", "1")]
    assert list(changed) == [("X-A", "2"), ("X-B", "3")]


# --- Building responses (§8.2.6) -----------------------------------------------------------------------------------


def test_a_response_copies_via_from_to_call_id_and_cseq_and_adds_a_to_tag() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    response = response_to(request, 480, to_tag="as83kd9bs", headers=[("Retry-After", "3600")])
    assert response.reason == "Temporarily Unavailable"
    assert response.headers.get_all("Via") == request.headers.get_all("Via")
    assert response.from_ == request.from_ and response.call_id == request.call_id and response.cseq == request.cseq
    assert response.to.tag == "as83kd9bs" and response.to.uri == request.to.uri
    assert response.headers.get("Retry-After") == "3600"
    assert parse_message(response.serialize()) == response


def test_a_100_trying_gets_no_to_tag_but_keeps_the_timestamp() -> None:
    request = parse_message(_invite_with(extra="Timestamp: 54\n"))
    assert isinstance(request, Request)
    trying = response_to(request, 100, to_tag="abc")
    assert trying.to.tag is None and trying.headers.get("Timestamp") == "54"
    assert response_to(request, 180, to_tag="abc").headers.get("Timestamp") is None


# --- Framing -------------------------------------------------------------------------------------------------------


def test_a_stream_split_at_every_byte_yields_the_same_messages() -> None:
    second = parse_message(INVITE)
    assert isinstance(second, Request)
    bye = Request("BYE", second.uri, second.headers.replaced("CSeq", "314160 BYE"))
    stream = INVITE + b"\r\n\r\n" + bye.serialize()  # a keep-alive between the two
    expected = [parse_message(INVITE), bye]
    for cut in range(len(stream) + 1):
        framer = StreamFramer()
        assert framer.feed(stream[:cut]) + framer.feed(stream[cut:]) == expected, cut
    framer = StreamFramer()
    one_by_one = [m for i in range(len(stream)) for m in framer.feed(stream[i : i + 1])]
    assert one_by_one == expected


def test_several_messages_in_one_read_come_out_in_order() -> None:
    framer = StreamFramer()
    assert framer.feed(INVITE * 3) == [parse_message(INVITE)] * 3


def test_a_stream_without_content_length_or_with_huge_headers_is_refused() -> None:
    with pytest.raises(SipParseError, match="missing Content-Length"):
        StreamFramer().feed(_invite_with())
    with pytest.raises(SipParseError, match="header block too large"):
        StreamFramer().feed(b"INVITE sip:a@b SIP/2.0\r\nX: " + b"a" * 70_000)


# --- Fuzz: the parser raises SipParseError and nothing else --------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_parse_or_raise_sip_parse_error(data: bytes) -> None:
    try:
        parse_message(data)
    except SipParseError:
        pass
    try:
        StreamFramer().feed(data)
    except SipParseError:
        pass


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_mutated_messages_parse_or_raise_sip_parse_error(data: st.DataObject) -> None:
    message = bytearray(INVITE)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(message) - 1))
        op = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = data.draw(st.sampled_from(list(b' \t\r\n:;,<>"@=%\\/0123456789\x00\xffaZ[]')))
        if op == "replace":
            message[at] = byte
        elif op == "insert":
            message.insert(at, byte)
        else:
            del message[at]
    for datagram in (True, False):
        try:
            parsed = parse_message(bytes(message), datagram=datagram)
        except SipParseError:
            continue
        # What parses serialises into something that parses to the same message.
        assert parse_message(parsed.serialize(), datagram=datagram) == parsed
        parsed.vias, parsed.to, parsed.from_, parsed.cseq  # noqa: B018 - the readers of a parsed message work
