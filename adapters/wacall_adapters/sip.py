"""`sip`: hand the call to a PBX on a SIP trunk once the user picks up (and, as `--inbound-route sip:<trunk>`, a
user's call to the trunk's target, answered when the PBX answers).

The route only checks what it is given: a trunk name (which trunks exist, and whether the SIP endpoint and a media
engine run, the service checks), a `sip:`/`sips:` target URI, and extra INVITE headers: token names, one-line values,
and none of the headers wacall writes itself (overriding Via, From, To, Call-ID, CSeq, Contact or the body's
headers would break the call). The PBX leg and the media are the service's (`wacall.calls.sip_route`): both legs live
in rtpengine, which transcodes Opus↔G.711 between them.
"""

from __future__ import annotations

import re

from wacall_client.v1 import calling_pb2 as pb

from wacall.fields import InvalidField, bounded_text
from wacall.sip.message import SipParseError, SipURI
from wacall_adapters.base import MediaAdapter
from wacall_adapters.routes import InboundOptions, RoutePlan, RouteSpec, ServerFiles, SipDial

MAX_TRUNK_NAME = 64
MAX_URI = 1024
MAX_HEADERS = 16
MAX_HEADER_VALUE = 1024
# RFC 3261 §25.1 token characters.
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# What wacall writes in its INVITE (or what the transaction, the dialog, digest or the body need): not for a route.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Max-Forwards",
        "Route",
        "Record-Route",
        "Content-Type",
        "Content-Length",
        "Content-Encoding",
        "Content-Disposition",
        "Content-Language",
        "Authorization",
        "Proxy-Authorization",
        "X-Wacall-Call-Id",
        "Allow",
        # Extensions the leg would have to honour (RFC 3262, 3311, 4028, 3891, 3911): a route cannot promise them.
        "Require",
        "Proxy-Require",
        "Supported",
        "Session-Expires",
        "Min-SE",
        "RSeq",
        "RAck",
        "Replaces",
        "Join",
        # Compact forms (RFC 3261 §7.3.3) of the above.
        "v",
        "f",
        "t",
        "i",
        "m",
        "c",
        "l",
        "e",
        "k",
        "x",
    )
)


def check_headers(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The route's extra headers, in name order, or InvalidField naming the header at fault."""
    if len(headers) > MAX_HEADERS:
        raise InvalidField("headers", f"at most {MAX_HEADERS} headers")
    checked = []
    for name in sorted(headers):
        value = headers[name]
        field = f"headers[{name!r}]" if len(name) <= 64 else "headers"
        if not _TOKEN.fullmatch(name) or len(name) > 64:
            raise InvalidField(field, "a header name is a token (letters, digits, - . ! % * _ + ` ' ~), 64 at most")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidField(field, f"{name} is wacall's to write (or an extension it lacks): not for a route")
        bounded_text(value, field, max_chars=MAX_HEADER_VALUE)  # no CR, LF or other control characters
        if not value.strip():
            raise InvalidField(field, "a header needs a value")
        checked.append((name, value.strip()))
    return tuple(checked)


def check_target(target: str) -> str:
    """The target as a SIP URI's text ("" stays "": the trunk's target), or InvalidField."""
    bounded_text(target, "target", max_chars=MAX_URI)
    if not target.strip():
        return ""
    try:
        uri = SipURI.parse(target.strip())
    except SipParseError as error:
        raise InvalidField("target", f"a sip: or sips: URI, e.g. sip:queue@pbx.example.com:5060 ({error})") from None
    if uri.transport not in (None, "UDP", "TCP", "TLS"):
        raise InvalidField("target", f"transport={uri.transport.lower()} is not one wacall speaks (udp, tcp, tls)")
    return str(uri)


async def plan(route: pb.SipRoute, files: ServerFiles) -> RoutePlan:
    trunk = bounded_text(route.trunk, "trunk", max_chars=MAX_TRUNK_NAME).strip()
    if not trunk:
        raise InvalidField("trunk", "required: the name of a [[sip_trunks]] entry")
    dial = SipDial(trunk, check_target(route.target), check_headers(dict(route.headers)))
    return RoutePlan("sip", MediaAdapter, repr(dial), sip=dial)


def _inbound(options: InboundOptions) -> pb.SipRoute:
    return pb.SipRoute(trunk=options.argument)


ROUTE = RouteSpec("sip", plan, inbound=_inbound)
