"""Whether an incoming INVITE may become a call, decided before any call is placed: data in, decision out.

In order: the trunk its source address belongs to (none: 403, no challenge), the trunk's credentials (none or
stale: 407 with one Proxy-Authenticate per algorithm in the trunk's order; wrong: 403), the WhatsApp user from the
Request-URI (invalid: 404 saying why), the business number from P-Asserted-Identity else From (not the trunk's:
403), and a codec both the offer and the trunk have (none: 488). The rules come after, in the call service.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from wacall.numbers import InvalidNumber, PhoneNumber, parse_number
from wacall.sip.digest import AuthOutcome, DigestVerifier
from wacall.sip.message import (
    NameAddr,
    OtherURI,
    Request,
    Response,
    SipParseError,
    SipURI,
    TelURI,
    parse_uri,
    response_to,
    split_list,
)
from wacall.sipdoor.responses import CallOutcome, final_response
from wacall.sipdoor.trunks import CODECS, Trunk, match_trunk

__all__ = ["Admitted", "Challenged", "Decision", "FrontDoor", "Rejected", "offered_codecs"]

# RFC 3551's static payload types for the codecs a trunk may use (an offer may omit their rtpmap).
STATIC_PAYLOAD_TYPES = {"0": "PCMU", "8": "PCMA"}
_RTPMAP = re.compile(r"a=rtpmap:([0-9]{1,3})\s+([A-Za-z0-9\-_.]+)/")


@dataclass(frozen=True, slots=True)
class Admitted:
    """The INVITE may go on to the rules: who calls whom, and the codecs both sides have (the offer's order)."""

    trunk: Trunk
    user: PhoneNumber
    business: PhoneNumber
    # The business number was accepted through "*": the caller checks the upstream has a sender for it.
    any_business_number: bool
    codecs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Challenged:
    """Credentials are missing or stale: send this 407 and wait for the INVITE again."""

    trunk: Trunk
    response: Response


@dataclass(frozen=True, slots=True)
class Rejected:
    """The INVITE is refused with this final response."""

    reason: CallOutcome
    response: Response
    trunk: Trunk | None = None


Decision = Admitted | Challenged | Rejected


class FrontDoor:
    """The admission decisions for a set of trunks. Digest nonces are stateless (HMAC with `nonce_secret`), so the
    door keeps no per-call state; `agent` is wacall's host in Warning headers."""

    def __init__(
        self,
        trunks: Sequence[Trunk],
        *,
        nonce_secret: bytes,
        agent: str,
        realm: str = "wacall",
        nonce_lifetime: float = 300.0,
    ) -> None:
        self.trunks = tuple(trunks)
        self.agent = agent
        self._verifiers = {
            t.name: DigestVerifier(realm, nonce_secret, algorithms=t.digest_algorithms, nonce_lifetime=nonce_lifetime)
            for t in self.trunks
            if t.requires_credentials
        }

    def admit(self, request: Request, *, source: str, now: datetime, to_tag: str) -> Decision:
        """Decide on an INVITE that arrived from IP address `source` at `now`; `to_tag` tags any final response."""
        if request.method != "INVITE":
            raise ValueError(f"the front door admits INVITEs, not {request.method}")

        def reject(reason: CallOutcome, trunk: Trunk | None, detail: str | None = None) -> Rejected:
            response = final_response(request, reason, agent=self.agent, to_tag=to_tag, detail=detail)
            return Rejected(reason, response, trunk)

        trunk = match_trunk(self.trunks, source)
        if trunk is None:
            return reject(CallOutcome.SOURCE_NOT_ALLOWED, None)

        verifier = self._verifiers.get(trunk.name)
        if verifier is not None:
            assert trunk.username is not None and trunk.password is not None  # requires_credentials
            outcome = verifier.verify(request, username=trunk.username, password=trunk.password, now=now.timestamp())
            if outcome is AuthOutcome.REJECTED:
                return reject(CallOutcome.BAD_CREDENTIALS, trunk)
            if outcome is not AuthOutcome.ACCEPTED:
                challenges = verifier.challenges(now.timestamp(), stale=outcome is AuthOutcome.STALE)
                headers = [("Proxy-Authenticate", str(c)) for c in challenges]
                return Challenged(trunk, response_to(request, 407, to_tag=to_tag, headers=headers))

        try:
            user = parse_number(_request_uri_number(request.uri), "Request-URI user")
        except InvalidNumber as invalid:
            return reject(CallOutcome.INVALID_NUMBER, trunk, f"{invalid.field}: {invalid.why}")

        try:
            business = parse_number(_business_text(request), "business number")
        except InvalidNumber as invalid:
            return reject(CallOutcome.BUSINESS_NUMBER_NOT_ALLOWED, trunk, f"{invalid.field}: {invalid.why}")
        if not trunk.allows_business_number(business.e164):
            return reject(
                CallOutcome.BUSINESS_NUMBER_NOT_ALLOWED,
                trunk,
                f"{business.e164} is not one of trunk {trunk.name}'s business_numbers",
            )

        if not request.body.strip():
            # A late offer (SDP in the ACK) would leave the PBX side's codec undecided until after the rules ran.
            return reject(CallOutcome.NO_COMMON_CODEC, trunk, "the INVITE must carry an SDP offer")
        codecs = _common_codecs(request.body, trunk.codecs)
        if not codecs:
            return reject(CallOutcome.NO_COMMON_CODEC, trunk, f"the offer has none of {', '.join(trunk.codecs)}")
        return Admitted(trunk, user, business, business.e164 not in trunk.business_numbers, codecs)


def _number_in(uri: SipURI | TelURI | OtherURI) -> str:
    """The number a sip:/sips: URI's user part (percent-decoded) or a tel: URI holds; "" when there is none."""
    if isinstance(uri, TelURI):
        return uri.number
    if isinstance(uri, SipURI):
        return urllib.parse.unquote(uri.user or "")
    return ""


def _request_uri_number(text: str) -> str:
    try:
        return _number_in(parse_uri(text))
    except SipParseError:
        return ""


def _business_text(request: Request) -> str:
    """The business number as the caller asserted it: from P-Asserted-Identity (which may hold a sip: and a tel:
    identity; the first that reads as a number wins, else the first with a user part), else From's user part."""
    asserted: list[str] = []
    for value in request.headers.get_all("P-Asserted-Identity"):
        for item in split_list(value):
            try:
                if number := _number_in(NameAddr.parse(item.strip()).uri):
                    asserted.append(number)
            except SipParseError:
                continue
    numeric = [n for n in asserted if n[:1] == "+" or n[:1].isdigit()]
    if numeric or asserted:
        return (numeric or asserted)[0]
    return _number_in(request.from_.uri)


def offered_codecs(sdp: bytes) -> tuple[str, ...]:
    """The trunk codecs an SDP offer's audio streams carry, in the offer's order: rtpmap names, and the static
    payload types 0 (PCMU) and 8 (PCMA) without one. Disabled streams (port 0) offer nothing."""
    text = sdp.decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines()]
    found: list[str] = []
    media: list[str] | None = None
    names: dict[str, str] = {}

    def close() -> None:
        for pt in media or ():
            name = names.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
            codec = CODECS.get(name.lower()) if name else None
            if codec is not None and codec not in found:
                found.append(codec)

    for line in lines:
        if line.startswith("m="):
            close()
            fields = line[2:].split()
            active = len(fields) >= 4 and fields[0] == "audio" and fields[1].split("/")[0] != "0"
            media, names = (fields[3:] if active else None), {}
        elif media is not None and (match := _RTPMAP.match(line)):
            names[match.group(1)] = match.group(2)
    close()
    return tuple(found)


def _common_codecs(sdp: bytes, trunk_codecs: Sequence[str]) -> tuple[str, ...]:
    return tuple(c for c in offered_codecs(sdp) if c in trunk_codecs)
