"""Digest authentication (RFC 7616, RFC 8760, RFC 3261 §22): the published vectors, the server's stateless nonces and
verdicts, and the client's auth flow answering a challenge once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wacall.sip.digest import (
    AuthOutcome,
    Challenge,
    Credentials,
    DigestAuth,
    DigestVerifier,
    digest_response,
)
from wacall.sip.message import Headers, Request, Response, SipParseError, response_to

# RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256.
RFC7616_EXAMPLE = {
    "username": "Mufasa",
    "realm": "http-auth@example.org",
    "password": "Circle of Life",
    "method": "GET",
    "uri": "/dir/index.html",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "nc": "00000001",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
}


def test_rfc7616_example_with_md5() -> None:
    assert digest_response(algorithm="MD5", **RFC7616_EXAMPLE) == "8ca523f5e9506fed4657c9700eebdbec"


def test_rfc7616_example_with_sha256() -> None:
    expected = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    assert digest_response(algorithm="SHA-256", **RFC7616_EXAMPLE) == expected


def test_session_variants_hash_the_nonces_into_ha1() -> None:
    plain = digest_response(algorithm="SHA-256", **RFC7616_EXAMPLE)
    session = digest_response(algorithm="SHA-256-sess", **RFC7616_EXAMPLE)
    assert session != plain and len(session) == 64


def test_an_unknown_algorithm_or_qop_is_refused() -> None:
    with pytest.raises(SipParseError, match="unsupported digest algorithm 'SHA-512-256'"):
        digest_response(algorithm="SHA-512-256", **RFC7616_EXAMPLE)
    with pytest.raises(SipParseError, match="unsupported qop 'auth-int'"):
        digest_response(algorithm="MD5", qop="auth-int", **RFC7616_EXAMPLE)


def test_challenges_and_credentials_round_trip_through_their_headers() -> None:
    challenge = Challenge("wacall", "abc", "SHA-256", "auth", opaque="xyz", stale=True)
    assert (
        str(challenge) == 'Digest realm="wacall", nonce="abc", algorithm=SHA-256, qop="auth", opaque="xyz", stale=true'
    )
    assert Challenge.parse(str(challenge)) == challenge
    credentials = Credentials(
        "pbx", "wacall", "abc", "sip:+34612345678@wacall", "0" * 64, "SHA-256", "auth", "00000001", "c"
    )
    assert Credentials.parse(str(credentials)) == credentials
    with pytest.raises(SipParseError, match="without realm or nonce"):
        Challenge.parse('Digest realm="x"')
    with pytest.raises(SipParseError, match="not a Digest challenge"):
        Challenge.parse('Basic realm="x"')


# --- A full exchange between the client flow and the server verifier -----------------------------------------------

REALM = "wacall.example.com"
SECRET = b"nonce secret shared by every replica"


def invite() -> Request:
    return Request(
        "INVITE",
        "sip:+34612345678@wacall.example.com",
        Headers(
            [
                ("Via", "SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKfirst"),
                ("Max-Forwards", "70"),
                ("From", "<sip:+447911123456@pbx.example.com>;tag=pbx1"),
                ("To", "<sip:+34612345678@wacall.example.com>"),
                ("Call-ID", "auth-1@pbx"),
                ("CSeq", "1 INVITE"),
                ("Contact", "<sip:pbx@192.0.2.4:5060>"),
            ]
        ),
        b"v=0\r\n",
    )


def serve(verifier: DigestVerifier, request: Request, now: float, password: str = "s3cret") -> Response:
    """What a front door answers: 407 challenges, 403 for wrong credentials, 200 when accepted."""
    outcome = verifier.verify(request, username="pbx", password=password, now=now)
    if outcome is AuthOutcome.ACCEPTED:
        return response_to(request, 200, to_tag="uas")
    if outcome is AuthOutcome.REJECTED:
        return response_to(request, 403, to_tag="uas")
    challenges = verifier.challenges(now, stale=outcome is AuthOutcome.STALE)
    return response_to(request, 407, to_tag="uas", headers=[("Proxy-Authenticate", str(c)) for c in challenges])


def run_flow(
    auth: DigestAuth, request: Request, server: Callable[[Request], Response]
) -> list[tuple[Request, Response]]:
    exchanges = []
    flow = auth.auth_flow(request)
    sent = next(flow)
    while True:
        response = server(sent)
        exchanges.append((sent, response))
        try:
            sent = flow.send(response)
        except StopIteration:
            return exchanges


def test_the_client_flow_answers_a_407_once_and_the_server_accepts() -> None:
    verifier = DigestVerifier(REALM, SECRET)
    auth = DigestAuth("pbx", "s3cret", make_token=iter(["cnonce1", "branch1"]).__next__)
    exchanges = run_flow(auth, invite(), lambda r: serve(verifier, r, now=1000.0))
    assert [response.status_code for _, response in exchanges] == [407, 200]
    first, second = exchanges[0][0], exchanges[1][0]
    assert second.cseq.seq == first.cseq.seq + 1  # a new transaction...
    assert second.top_via.branch == "z9hG4bKbranch1" != first.top_via.branch  # ...with a new branch
    assert second.call_id == first.call_id and second.from_ == first.from_ and second.body == first.body
    credentials = Credentials.parse(second.headers.get("Proxy-Authorization") or "")
    assert credentials.algorithm == "SHA-256"  # the server's first choice
    assert (credentials.username, credentials.realm, credentials.uri, credentials.cnonce) == (
        "pbx",
        REALM,
        first.uri,
        "cnonce1",
    )


def test_challenges_come_one_per_algorithm_in_the_configured_order() -> None:
    response = serve(DigestVerifier(REALM, SECRET, algorithms=("MD5", "SHA-256")), invite(), now=0.0)
    challenges = [Challenge.parse(v) for v in response.headers.get_all("Proxy-Authenticate")]
    assert [c.algorithm for c in challenges] == ["MD5", "SHA-256"]
    assert all(c.qop == "auth" and c.realm == REALM for c in challenges)
    # A client follows the server's order: here MD5 first.
    auth = DigestAuth("pbx", "s3cret")
    exchanges = run_flow(
        auth, invite(), lambda r: serve(DigestVerifier(REALM, SECRET, algorithms=("MD5", "SHA-256")), r, 5.0)
    )
    assert Credentials.parse(exchanges[1][0].headers.get("Proxy-Authorization") or "").algorithm == "MD5"
    assert exchanges[1][1].status_code == 200


def test_a_wrong_password_is_rejected_and_the_flow_does_not_retry() -> None:
    verifier = DigestVerifier(REALM, SECRET)
    exchanges = run_flow(DigestAuth("pbx", "wrong"), invite(), lambda r: serve(verifier, r, now=10.0))
    assert [response.status_code for _, response in exchanges] == [407, 403]


def test_a_second_challenge_ends_the_flow() -> None:
    verifier = DigestVerifier(REALM, SECRET)

    def always_challenge(request: Request) -> Response:
        # A server that ignores the credentials it is given.
        return serve(
            verifier, Request(request.method, request.uri, request.headers.without("Proxy-Authorization")), 0.0
        )

    exchanges = run_flow(DigestAuth("pbx", "s3cret"), invite(), always_challenge)
    assert [response.status_code for _, response in exchanges] == [407, 407]


def test_a_401_is_answered_with_an_authorization_header() -> None:
    verifier = DigestVerifier(REALM, SECRET, algorithms=("SHA-256",))

    def registrar(request: Request) -> Response:
        outcome = verifier.verify(request, username="pbx", password="s3cret", now=0.0, header="Authorization")
        if outcome is AuthOutcome.ACCEPTED:
            return response_to(request, 200)
        return response_to(request, 401, headers=[("WWW-Authenticate", str(c)) for c in verifier.challenges(0.0)])

    exchanges = run_flow(DigestAuth("pbx", "s3cret"), invite(), registrar)
    assert [response.status_code for _, response in exchanges] == [401, 200]
    assert exchanges[1][0].headers.get("Authorization") is not None


def test_an_expired_nonce_with_the_right_password_is_stale() -> None:
    verifier = DigestVerifier(REALM, SECRET, nonce_lifetime=300.0)
    challenge = verifier.challenges(1000.0)[0]
    signed = DigestAuth("pbx", "s3cret").authorize(invite(), challenge)
    assert verifier.verify(signed, username="pbx", password="s3cret", now=1299.0) is AuthOutcome.ACCEPTED
    assert verifier.verify(signed, username="pbx", password="s3cret", now=1301.0) is AuthOutcome.STALE
    # The new challenge says so, and a client answering it gets in.
    response = serve(verifier, signed, now=1301.0)
    assert response.status_code == 407
    assert Challenge.parse(response.headers.get("Proxy-Authenticate") or "").stale
    # A stale nonce with the wrong password is still a wrong password.
    assert verifier.verify(signed, username="pbx", password="other", now=1301.0) is AuthOutcome.REJECTED


def test_any_replica_with_the_secret_verifies_a_nonce_and_others_do_not() -> None:
    challenge = DigestVerifier(REALM, SECRET).challenges(50.0)[0]
    signed = DigestAuth("pbx", "s3cret").authorize(invite(), challenge)
    assert DigestVerifier(REALM, SECRET).verify(signed, username="pbx", password="s3cret", now=60.0) is (
        AuthOutcome.ACCEPTED
    )
    assert DigestVerifier(REALM, b"another secret").verify(signed, username="pbx", password="s3cret", now=60.0) is (
        AuthOutcome.REJECTED
    )


def test_tampered_or_missing_credentials_are_told_apart() -> None:
    verifier = DigestVerifier(REALM, SECRET)
    assert verifier.verify(invite(), username="pbx", password="s3cret", now=0.0) is AuthOutcome.MISSING
    signed = DigestAuth("pbx", "s3cret").authorize(invite(), verifier.challenges(0.0)[0])
    value = signed.headers.get("Proxy-Authorization") or ""

    def with_credentials(text: str, uri: str | None = None) -> Request:
        return Request(signed.method, uri or signed.uri, signed.headers.replaced("Proxy-Authorization", text))

    assert verifier.verify(with_credentials(value), username="pbx", password="s3cret", now=1.0) is AuthOutcome.ACCEPTED
    other_user = value.replace('username="pbx"', 'username="admin"')
    assert verifier.verify(with_credentials(other_user), username="pbx", password="s3cret", now=1.0) is (
        AuthOutcome.REJECTED
    )
    forged_nonce = Credentials.parse(value)
    forged = value.replace(forged_nonce.nonce, forged_nonce.nonce[:-2] + "AA")
    assert verifier.verify(with_credentials(forged), username="pbx", password="s3cret", now=1.0) is AuthOutcome.REJECTED
    # Credentials computed for another Request-URI do not authorise this one.
    assert (
        verifier.verify(
            with_credentials(value, uri="sip:+34699999999@wacall.example.com"),
            username="pbx",
            password="s3cret",
            now=1.0,
        )
        is AuthOutcome.REJECTED
    )
    assert verifier.verify(with_credentials("Digest garbage"), username="pbx", password="s3cret", now=1.0) is (
        AuthOutcome.REJECTED
    )
    other_realm = value.replace(f'realm="{REALM}"', 'realm="elsewhere"')
    assert verifier.verify(with_credentials(other_realm), username="pbx", password="s3cret", now=1.0) is (
        AuthOutcome.MISSING
    )


def test_a_verifier_refuses_an_unknown_algorithm_at_configuration() -> None:
    with pytest.raises(ValueError, match="unsupported digest algorithm 'SHA-1'"):
        DigestVerifier(REALM, SECRET, algorithms=("SHA-1",))
    with pytest.raises(ValueError, match="secret"):
        DigestVerifier(REALM, b"")


def test_a_response_without_a_challenge_ends_the_flow_at_once() -> None:
    exchanges = run_flow(DigestAuth("pbx", "s3cret"), invite(), lambda r: response_to(r, 486, to_tag="x"))
    assert [response.status_code for _, response in exchanges] == [486]
