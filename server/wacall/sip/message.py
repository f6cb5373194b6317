"""SIP messages as data (RFC 3261 §7, §20, §25): parse from bytes, serialise back, and the header values the core
reads (URIs, name-addr, Via, CSeq, Warning, Retry-After).

The parser is strict: anything it cannot read exactly raises `SipParseError` naming what is wrong, never another
exception, so a front door can answer garbage with a 400 (or drop it) without a traceback. Parsing is one pass over
the header block; header values stay text until a reader asks for them (`Headers.get`, `via`, `cseq`...).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "MAGIC_COOKIE",
    "CSeq",
    "Headers",
    "NameAddr",
    "OtherURI",
    "Request",
    "Response",
    "RetryAfter",
    "SipParseError",
    "SipURI",
    "StreamFramer",
    "TelURI",
    "Via",
    "Warning",
    "parse_datagram",
    "parse_message",
    "parse_uri",
    "response_to",
]

# A branch starting with this says its sender follows RFC 3261 and made it unique (§8.1.1.7).
MAGIC_COOKIE = "z9hG4bK"
SIP_VERSION = "SIP/2.0"
# A header block larger than this is refused before it is read: nothing legitimate comes close.
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024


class SipParseError(ValueError):
    """The bytes are not a SIP message this core accepts; the text says what is wrong."""


# RFC 3261 §7.3.3 and later RFCs' compact forms.
COMPACT_FORMS = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}
# Spellings that title-casing gets wrong.
_SPECIAL_NAMES = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "p-asserted-identity": "P-Asserted-Identity",
    "rack": "RAck",
    "rseq": "RSeq",
}
# Headers whose value may be a comma-separated list (§7.3.1): `get_all` splits these, and only these (an
# Authorization or a Date has commas of its own).
LIST_HEADERS = frozenset(
    {
        "via",
        "route",
        "record-route",
        "contact",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-encoding",
        "warning",
        "call-info",
        "alert-info",
        "error-info",
        "in-reply-to",
        "p-asserted-identity",
        "path",
        "allow-events",
    }
)
REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_STATUS_CODE = re.compile(r"[1-6][0-9][0-9]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?)*\.?")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_DIGITS = re.compile(r"[0-9]+")
# Characters of a URI user part (§25.1 user: unreserved, escaped, user-unreserved), and of params and headers.
_USER = re.compile(r"([A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
_PASSWORD = re.compile(r"([A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*")
_PARAM_CHARS = re.compile(r"([A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+")
_HEADER_CHARS = re.compile(r"([A-Za-z0-9\-_.!~*'()\[\]/?:+$]|%[0-9A-Fa-f]{2})*")
_URI_FORBIDDEN = re.compile(r'[ \t<>"]')
_TEL_NUMBER = re.compile(r"\+?[0-9A-Fa-f*#\-.()]+")


@functools.lru_cache(maxsize=1024)  # a few dozen names in practice; bounded against a peer inventing new ones
def canonical_name(name: str) -> str:
    """A header name as this core stores it: compact forms expanded, case normalised (`v` → `Via`)."""
    lower = name.lower()
    if len(lower) == 1 and lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    special = _SPECIAL_NAMES.get(lower)
    if special is not None:
        return special
    return "-".join(part[:1].upper() + part[1:] for part in lower.split("-"))


@functools.lru_cache(maxsize=1024)
def _header_name(raw: str) -> str | None:
    """The canonical name of a header name read from the wire, or None if it is not a token."""
    return canonical_name(raw) if _TOKEN.fullmatch(raw) else None


def split_list(value: str) -> list[str]:
    """Split a header value at commas outside quotes and angle brackets (§7.3.1)."""
    if "," not in value and '"' not in value:  # the common case: one element
        item = value.strip()
        if not item:
            raise SipParseError(f"empty element in list {value!r}")
        return [item]
    items: list[str] = []
    start = 0
    quoted = False
    angle = False
    i = 0
    length = len(value)
    while i < length:
        char = value[i]
        if quoted:
            if char == "\\":
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            angle = True
        elif char == ">":
            angle = False
        elif char == "," and not angle:
            items.append(value[start:i].strip())
            start = i + 1
        i += 1
    if quoted:
        raise SipParseError(f"unterminated quoted string in {value!r}")
    items.append(value[start:].strip())
    if any(not item for item in items):
        raise SipParseError(f"empty element in list {value!r}")
    return items


class Headers:
    """A message's headers in order: case-insensitive, compact forms read as their full names, a name may repeat.

    Immutable: `with_header` and `without` return new instances.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: tuple[tuple[str, str], ...] = tuple((canonical_name(n), v) for n, v in items)

    @classmethod
    def _trusted(cls, items: tuple[tuple[str, str], ...]) -> Headers:
        headers = cls.__new__(cls)
        headers._items = items
        return headers

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def get(self, name: str) -> str | None:
        """The first value of header `name` as written (a list header's first line, unsplit), or None."""
        wanted = canonical_name(name)
        for n, v in self._items:
            if n == wanted:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of header `name` in order; list headers (Via, Contact, Route...) split at their commas."""
        wanted = canonical_name(name)
        values = [v for n, v in self._items if n == wanted]
        if wanted.lower() not in LIST_HEADERS:
            return values
        return [item for v in values for item in split_list(v)]

    def with_header(self, name: str, value: str) -> Headers:
        """These headers with `name: value` appended."""
        return Headers._trusted((*self._items, (canonical_name(name), value)))

    def without(self, name: str) -> Headers:
        """These headers with every `name` header removed."""
        wanted = canonical_name(name)
        return Headers._trusted(tuple((n, v) for n, v in self._items if n != wanted))

    def replaced(self, name: str, value: str) -> Headers:
        """These headers with `name` set to the single `value`, at the place of its first occurrence (or last)."""
        wanted = canonical_name(name)
        items: list[tuple[str, str]] = []
        placed = False
        for n, v in self._items:
            if n == wanted:
                if not placed:
                    items.append((n, value))
                    placed = True
            else:
                items.append((n, v))
        if not placed:
            items.append((wanted, value))
        return Headers._trusted(tuple(items))


class _Message:
    """What requests and responses share: the typed readers of their common headers."""

    __slots__ = ()
    headers: Headers
    body: bytes

    @property
    def call_id(self) -> str:
        return _required(self.headers, "Call-ID")

    @property
    def cseq(self) -> CSeq:
        return CSeq.parse(_required(self.headers, "CSeq"))

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        first = self.headers.get_all("Via")
        if not first:
            raise SipParseError("missing Via")
        return Via.parse(first[0])

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(_required(self.headers, "From"))

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(_required(self.headers, "To"))


def _required(headers: Headers, name: str) -> str:
    value = headers.get(name)
    if value is None:
        raise SipParseError(f"missing {name}")
    return value


def _serialize(start_line: str, headers: Headers, body: bytes) -> bytes:
    # Content-Length always states the body we send (§18.3: mandatory on streams, harmless on datagrams).
    lines = [start_line]
    lines.extend(f"{n}: {v}" for n, v in headers if n != "Content-Length")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(frozen=True, slots=True)
class Request(_Message):
    """A SIP request. `uri` is the Request-URI as written (`parse_uri` reads it)."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (§20.22), None if absent (the parser has checked it is 0-255)."""
        value = self.headers.get("Max-Forwards")
        return None if value is None else int(value)

    def serialize(self) -> bytes:
        """The request as bytes on the wire, with a Content-Length matching its body."""
        return _serialize(f"{self.method} {self.uri} {SIP_VERSION}", self.headers, self.body)

    def __bytes__(self) -> bytes:
        return self.serialize()


@dataclass(frozen=True, slots=True)
class Response(_Message):
    """A SIP response."""

    status_code: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def serialize(self) -> bytes:
        """The response as bytes on the wire, with a Content-Length matching its body."""
        return _serialize(f"{SIP_VERSION} {self.status_code} {self.reason}", self.headers, self.body)

    def __bytes__(self) -> bytes:
        return self.serialize()


# --- Parsing a message ---------------------------------------------------------------------------------------------


def parse_message(data: bytes, *, datagram: bool = True) -> Request | Response:
    """Parse one whole message.

    On a datagram (`datagram=True`, §18.3) a missing Content-Length means the rest of the datagram is the body, and
    bytes past Content-Length are dropped; on a stream the body must be exactly Content-Length bytes.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise SipParseError("no empty line after the headers")
    if end > MAX_HEADER_BYTES:
        raise SipParseError("header block too large")
    message, content_length = _parse_head(data[:end])
    rest = data[end + 4 :]
    if content_length is None:
        if not datagram:
            raise SipParseError("missing Content-Length on a stream transport")
        body = rest
    elif content_length > len(rest):
        raise SipParseError(f"body shorter than Content-Length {content_length}")
    elif content_length < len(rest) and not datagram:
        raise SipParseError(f"body longer than Content-Length {content_length}")
    else:
        body = rest[:content_length]
    if body:
        if isinstance(message, Request):
            return Request(message.method, message.uri, message.headers, body)
        return Response(message.status_code, message.reason, message.headers, body)
    return message


def parse_datagram(data: bytes) -> Request | Response:
    """One UDP datagram is one message (§18.3)."""
    return parse_message(data, datagram=True)


def _parse_head(head: bytes) -> tuple[Request | Response, int | None]:
    """The start line and headers (without the final empty line), and the Content-Length they state."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SipParseError(f"headers are not UTF-8 (byte {error.start})") from None
    lines = text.split("\r\n")
    start_line = lines[0]
    items: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            raise SipParseError("empty line inside the headers")
        if line[0] in " \t":
            # Folding (§7.3.1): a line starting with whitespace continues the previous value.
            if not items:
                raise SipParseError("continuation line before any header")
            folded_name, folded_value = items[-1]
            items[-1] = (folded_name, f"{folded_value} {line.strip()}".strip())
            continue
        colon = line.find(":")
        if colon <= 0:
            raise SipParseError(f"header line without a name and colon: {line[:40]!r}")
        raw_name = line[:colon].rstrip(" \t")
        header_name = _header_name(raw_name)
        if header_name is None:
            raise SipParseError(f"invalid header name {raw_name[:40]!r}")
        value = line[colon + 1 :].strip(" \t")
        if "\n" in value or "\r" in value:
            raise SipParseError(f"control character in header {raw_name!r}")
        items.append((header_name, value))
    content_length = _content_length(items)
    # Content-Length is framing, not content: the body says it, and the serialiser writes it from the body.
    headers = Headers._trusted(tuple(item for item in items if item[0] != "Content-Length"))
    message = _parse_start_line(start_line, headers)
    _check_headers(message)
    return message, content_length


def _parse_start_line(line: str, headers: Headers) -> Request | Response:
    if line.startswith("SIP/"):
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise SipParseError(f"malformed status line {line[:60]!r}")
        version, code = parts[0], parts[1]
        if version != SIP_VERSION:
            raise SipParseError(f"unsupported SIP version {version[:20]!r}")
        if not _STATUS_CODE.fullmatch(code):
            raise SipParseError(f"invalid status code {code[:10]!r}")
        reason = parts[2] if len(parts) == 3 else ""
        if any(c in reason for c in "\r\n\x00"):
            raise SipParseError("control character in the reason phrase")
        return Response(int(code), reason, headers)
    parts = line.split(" ")
    if len(parts) != 3:
        raise SipParseError(f"request line is not 'Method SP Request-URI SP SIP-Version': {line[:60]!r}")
    method, uri, version = parts
    if not _TOKEN.fullmatch(method):
        raise SipParseError(f"invalid method {method[:20]!r}")
    if version != SIP_VERSION:
        raise SipParseError(f"unsupported SIP version {version[:20]!r}")
    if uri.startswith("<"):
        raise SipParseError("Request-URI must not be enclosed in <>")
    parse_uri(uri)
    return Request(method, uri, headers)


def _check_headers(message: Request | Response) -> None:
    """The mandatory headers (§8.1.1) are present and readable, and CSeq agrees with the request line."""
    headers = message.headers
    counts = {"Call-ID": 0, "CSeq": 0, "From": 0, "To": 0}
    for name, _ in headers:
        if name in counts:
            counts[name] += 1
    for name, count in counts.items():
        if count == 0:
            raise SipParseError(f"missing {name}")
        if count > 1:
            raise SipParseError(f"more than one {name}")
    vias = headers.get_all("Via")
    if not vias:
        raise SipParseError("missing Via")
    for via in vias:
        Via.parse(via)
    cseq = CSeq.parse(_required(headers, "CSeq"))
    if not _required(headers, "Call-ID"):
        raise SipParseError("empty Call-ID")
    NameAddr.parse(_required(headers, "From"))
    NameAddr.parse(_required(headers, "To"))
    if isinstance(message, Request):
        if cseq.method != message.method and not (message.method == "ACK" and cseq.method == "INVITE"):
            raise SipParseError(f"CSeq method {cseq.method!r} does not match the request's {message.method!r}")
        max_forwards = headers.get("Max-Forwards")
        if max_forwards is not None and not (
            _DIGITS.fullmatch(max_forwards) and len(max_forwards) <= 10 and int(max_forwards) <= 255
        ):
            raise SipParseError(f"invalid Max-Forwards {max_forwards[:20]!r}")
    for contact in headers.get_all("Contact"):
        if contact != "*":
            NameAddr.parse(contact)


def _content_length(items: list[tuple[str, str]]) -> int | None:
    values = {v for n, v in items if n == "Content-Length"}
    if not values:
        return None
    if len(values) > 1:
        raise SipParseError("conflicting Content-Length values")
    (value,) = values
    if not _DIGITS.fullmatch(value) or len(value) > 9:
        raise SipParseError(f"invalid Content-Length {value[:20]!r}")
    length = int(value)
    if length > MAX_BODY_BYTES:
        raise SipParseError(f"Content-Length {length} too large")
    return length


class StreamFramer:
    """Cuts a stream (TCP, TLS) into messages by Content-Length (§18.3): several messages may come in one read, one
    message may be split over many. Blank lines between messages (keep-alives, RFC 5626 §3.5.1) are skipped.

    After a `SipParseError` the stream cannot be resynchronised: close the connection.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes already searched for the end of the headers, so each byte is searched once
        # A message whose headers are read and whose body is still arriving: it, where its body starts, its length.
        self._pending: tuple[Request | Response, int, int] | None = None

    def feed(self, data: bytes) -> list[Request | Response]:
        """Take the bytes of one read; return the messages they complete, in order."""
        return list(self.messages(data))

    def messages(self, data: bytes) -> Iterator[Request | Response]:
        """Take the bytes of one read; yield the messages they complete, in order. A `SipParseError` is raised where
        the stream goes bad, after every complete message before it was yielded."""
        self._buffer += data
        while (message := self._next()) is not None:
            yield message

    @property
    def buffered(self) -> bytes:
        """The bytes received and not yet part of a complete message (after an error: from the bad message on)."""
        return bytes(self._buffer)

    @property
    def buffered_size(self) -> int:
        """How many bytes `buffered` holds (without copying them)."""
        return len(self._buffer)

    def _next(self) -> Request | Response | None:
        buffer = self._buffer
        if self._pending is None:
            skip = 0
            while buffer[skip : skip + 2] == b"\r\n":
                skip += 2
            if skip:
                del buffer[:skip]
                self._scanned = max(0, self._scanned - skip)
            end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3))
            if end < 0:
                self._scanned = len(buffer)
                if len(buffer) > MAX_HEADER_BYTES:
                    raise SipParseError("header block too large")
                return None
            if end > MAX_HEADER_BYTES:
                raise SipParseError("header block too large")
            head, content_length = _parse_head(bytes(buffer[:end]))
            if content_length is None:
                raise SipParseError("missing Content-Length on a stream transport")
            self._pending = (head, end + 4, content_length)
        message, body_start, content_length = self._pending
        total = body_start + content_length
        if len(buffer) < total:
            return None
        body = bytes(buffer[body_start:total])
        del buffer[:total]
        self._scanned = 0
        self._pending = None
        if not body:
            return message
        if isinstance(message, Request):
            return Request(message.method, message.uri, message.headers, body)
        return Response(message.status_code, message.reason, message.headers, body)


# --- URIs (§19.1, RFC 3966) ----------------------------------------------------------------------------------------


_GENERIC_VALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+|\[[0-9A-Fa-f:.]+\]")


def _parse_params(text: str, what: str, *, uri: bool = False) -> tuple[tuple[str, str | None], ...]:
    """`;name=value;flag` (text starts after the first `;`): URI params (§19.1.1, `uri=True`) or a header's
    generic-params (token, host or quoted-string values, §25.1)."""
    name_pattern = _PARAM_CHARS if uri else _TOKEN
    value_pattern = _PARAM_CHARS if uri else _GENERIC_VALUE
    params: list[tuple[str, str | None]] = []
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        name = name.strip()
        value = value.strip()
        if not name or not name_pattern.fullmatch(name):
            raise SipParseError(f"invalid {what} parameter {item[:40]!r}")
        if eq:
            if value.startswith('"') and not uri:
                if len(value) < 2 or _closing_quote(value) != len(value) - 1:
                    raise SipParseError(f"invalid {what} parameter value {value[:40]!r}")
            elif not value_pattern.fullmatch(value):
                raise SipParseError(f"invalid {what} parameter value {value[:40]!r}")
            params.append((name, value))
        else:
            params.append((name, None))
    return tuple(params)


def _format_params(params: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


def _param(params: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    lower = name.lower()
    for n, v in params:
        if n.lower() == lower:
            return "" if v is None else v
    return None


def _parse_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise SipParseError(f"unterminated IPv6 reference {text[:60]!r}")
        host, rest = text[: close + 1], text[close + 1 :]
        if not _IPV6.fullmatch(host) or host.count(":") < 2:
            raise SipParseError(f"invalid IPv6 reference {host[:60]!r}")
    else:
        host, colon, port_text = text.partition(":")
        rest = f":{port_text}" if colon else ""
        if not host or not _HOSTNAME.fullmatch(host):
            raise SipParseError(f"invalid host {host[:60]!r}")
    if not rest:
        return host, None
    if not rest.startswith(":") or not _DIGITS.fullmatch(rest[1:]) or len(rest) > 6:
        raise SipParseError(f"invalid port in {text[:60]!r}")
    port = int(rest[1:])
    if not 0 < port < 65536:
        raise SipParseError(f"port {port} out of range")
    return host, port


@dataclass(frozen=True, slots=True)
class SipURI:
    """A `sip:` or `sips:` URI: `scheme:user:password@host:port;params?headers`."""

    scheme: str
    host: str
    user: str | None = None
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    password: str | None = None

    @classmethod
    def parse(cls, text: str) -> SipURI:
        uri = parse_uri(text)
        if not isinstance(uri, SipURI):
            raise SipParseError(f"not a sip: or sips: URI: {text[:60]!r}")
        return uri

    def param(self, name: str) -> str | None:
        """Parameter `name` (case-insensitive): its value, "" for a flag such as `lr`, None if absent."""
        return _param(self.params, name)

    @property
    def transport(self) -> str | None:
        value = self.param("transport")
        return value.upper() if value else None

    def __str__(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = self.user if self.password is None else f"{self.user}:{self.password}"
            userinfo += "@"
        port = "" if self.port is None else f":{self.port}"
        headers = "&".join(f"{n}={v}" for n, v in self.headers)
        return (
            f"{self.scheme}:{userinfo}{self.host}{port}{_format_params(self.params)}{'?' + headers if headers else ''}"
        )


@dataclass(frozen=True, slots=True)
class TelURI:
    """A `tel:` URI (RFC 3966): a number and its params."""

    number: str
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def scheme(self) -> str:
        return "tel"

    def __str__(self) -> str:
        return f"tel:{self.number}{_format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class OtherURI:
    """A URI of a scheme this core does not read (allowed in To/From/Contact, §19.1)."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


def parse_uri(text: str) -> SipURI | TelURI | OtherURI:
    """Read a URI; sip/sips and tel strictly, any other scheme as an opaque `OtherURI`."""
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme) or not rest:
        raise SipParseError(f"invalid URI {text[:60]!r}")
    if _URI_FORBIDDEN.search(rest):
        raise SipParseError(f"invalid character in URI {text[:60]!r}")
    lower = scheme.lower()
    if lower == "tel":
        number, _, tel_params = rest.partition(";")
        if not _TEL_NUMBER.fullmatch(number):
            raise SipParseError(f"invalid tel: number {number[:40]!r}")
        return TelURI(number, _parse_params(tel_params, "tel:", uri=True) if tel_params else ())
    if lower not in ("sip", "sips"):
        return OtherURI(scheme, rest)
    user: str | None = None
    password: str | None = None
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, password_text = userinfo.partition(":")
        if not _USER.fullmatch(user):
            raise SipParseError(f"invalid user part {user[:40]!r}")
        if colon:
            if not _PASSWORD.fullmatch(password_text):
                raise SipParseError("invalid password part")
            password = password_text
    rest, question, header_text = rest.partition("?")
    headers: tuple[tuple[str, str], ...] = ()
    if question:
        pairs = []
        for item in header_text.split("&"):
            name, eq, value = item.partition("=")
            if not eq or not name or not _HEADER_CHARS.fullmatch(name) or not _HEADER_CHARS.fullmatch(value):
                raise SipParseError(f"invalid URI header {item[:40]!r}")
            pairs.append((name, value))
        headers = tuple(pairs)
    hostport, semicolon, param_text = rest.partition(";")
    host, port = _parse_hostport(hostport)
    params = _parse_params(param_text, "URI", uri=True) if semicolon else ()
    return SipURI(lower, host, user, port, params, headers, password)


# --- Header values -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NameAddr:
    """From, To, Contact, Route, Record-Route, P-Asserted-Identity: `"Display" <uri>;params` or a bare addr-spec
    (whose `;params` belong to the header, not the URI: §20.10)."""

    uri: SipURI | TelURI | OtherURI
    display_name: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        display: str | None = None
        if text.startswith('"'):
            end = _closing_quote(text)
            display = _unquote(text[1:end])
            text = text[end + 1 :].lstrip()
            if not text.startswith("<"):
                raise SipParseError("quoted display name not followed by <uri>")
        open_angle = text.find("<")
        if open_angle >= 0:
            before = text[:open_angle].strip()
            if before:
                if display is not None or not all(_TOKEN.fullmatch(word) for word in before.split()):
                    raise SipParseError(f"invalid display name {before[:40]!r}")
                display = " ".join(before.split())
            close = text.find(">", open_angle)
            if close < 0:
                raise SipParseError(f"unterminated <uri> in {text[:60]!r}")
            uri = parse_uri(text[open_angle + 1 : close])
            rest = text[close + 1 :].strip()
        else:
            uri_text, semicolon, param_text = text.partition(";")
            uri = parse_uri(uri_text.strip())
            rest = f";{param_text}" if semicolon else ""
        if rest and not rest.startswith(";"):
            raise SipParseError(f"unexpected text after the address: {rest[:40]!r}")
        params = _parse_params(rest[1:], "address") if rest else ()
        return cls(uri, display, params)

    @property
    def tag(self) -> str | None:
        return _param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    def with_tag(self, tag: str) -> NameAddr:
        """This address with its `tag` parameter set to `tag`."""
        params = tuple((n, v) for n, v in self.params if n.lower() != "tag")
        return NameAddr(self.uri, self.display_name, (*params, ("tag", tag)))

    def __str__(self) -> str:
        display = f"{_quote(self.display_name)} " if self.display_name is not None else ""
        return f"{display}<{self.uri}>{_format_params(self.params)}"


def _closing_quote(text: str) -> int:
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    raise SipParseError(f"unterminated quoted string {text[:40]!r}")


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _quote(text: str) -> str:
    """A quoted-string (§25.1) holding `text` exactly: quotes and backslashes escaped, control characters refused."""
    if any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in text):
        raise ValueError("a quoted string cannot hold control characters")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_VIA_PROTOCOL = re.compile(r"SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+(.+)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value (§20.42): transport, sent-by (host, port) and params (branch, received, rport...)."""

    transport: str
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Via:
        match = _VIA_PROTOCOL.fullmatch(text.strip())
        if match is None:
            raise SipParseError(f"invalid Via {text[:60]!r}")
        transport, rest = match.group(1).upper(), match.group(2)
        sent_by, semicolon, param_text = rest.partition(";")
        host, port = _parse_hostport(sent_by.strip().replace(" ", ""))
        params = _parse_params(param_text, "Via") if semicolon else ()
        via = cls(transport, host, port, params)
        if via.param("branch") == "":
            raise SipParseError("Via branch without a value")
        rport = via.param("rport")
        if rport and not (_DIGITS.fullmatch(rport) and len(rport) <= 5 and 0 < int(rport) < 65536):
            raise SipParseError(f"invalid rport {rport[:10]!r}")
        return via

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def has_magic_cookie(self) -> bool:
        """The branch starts with RFC 3261's cookie, so it alone identifies the transaction (§17.2.3)."""
        branch = self.branch
        return branch is not None and branch.startswith(MAGIC_COOKIE)

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def rport(self) -> int | bool | None:
        """RFC 3581: None if absent, True if asked for (empty), the port if a server filled it in."""
        value = self.param("rport")
        if value is None:
            return None
        return True if value == "" else int(value)

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def is_reliable(self) -> bool:
        return self.transport in ("TCP", "TLS", "SCTP", "WS", "WSS")

    def stamped(self, source_host: str, source_port: int) -> Via:
        """This Via as a server records where the request came from (§18.2.1, RFC 3581 §4): `received` when the
        source differs from sent-by or rport was asked for, and rport filled with the source port when asked for."""
        values: dict[str, str | None] = {}
        if self.rport is not None:
            values["received"] = source_host
            values["rport"] = str(source_port)
        elif source_host != self.host.strip("[]") and f"[{source_host}]" != self.host:
            values["received"] = source_host
        return self.with_params(**values) if values else self

    def response_address(self) -> tuple[str, int]:
        """Where a response to a request with this top Via goes over UDP (§18.2.2, RFC 3581 §4): `received` or
        sent-by's host, at the rport a server filled in, else sent-by's port, else 5060."""
        host = self.received or self.host
        rport = self.rport
        if isinstance(rport, int) and not isinstance(rport, bool):
            return host, rport
        return host, self.port if self.port is not None else 5060

    def with_params(self, **values: str | None) -> Via:
        """This Via with params set (`None` value: a flag such as `rport`), replacing any of the same name."""
        names = {n.lower() for n in values}
        kept = tuple((n, v) for n, v in self.params if n.lower() not in names)
        return Via(self.transport, self.host, self.port, (*kept, *values.items()))

    def __str__(self) -> str:
        return f"{SIP_VERSION}/{self.transport} {self.sent_by}{_format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class CSeq:
    """`CSeq: 4711 INVITE` (§20.16): a sequence number below 2**31 and a method."""

    seq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2 or not _DIGITS.fullmatch(parts[0]) or not _TOKEN.fullmatch(parts[1]):
            raise SipParseError(f"invalid CSeq {text[:40]!r}")
        if len(parts[0]) > 10 or int(parts[0]) >= 2**31:
            raise SipParseError(f"CSeq number {parts[0][:20]} is not below 2**31")
        seq = int(parts[0])
        return cls(seq, parts[1])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


@dataclass(frozen=True, slots=True)
class Warning:
    """`Warning: 399 host "text"` (§20.43); `str()` quotes the text safely."""

    code: int
    agent: str
    text: str

    def __post_init__(self) -> None:
        if not 300 <= self.code <= 399:
            raise ValueError(f"warn-code {self.code} is not 3xx")
        if not self.agent or any(c in self.agent for c in ' \t"\r\n,'):
            raise ValueError(f"invalid warn-agent {self.agent!r}")

    def __str__(self) -> str:
        return f"{self.code} {self.agent} {_quote(self.text)}"

    @classmethod
    def parse(cls, text: str) -> Warning:
        code, _, rest = text.strip().partition(" ")
        agent, _, quoted = rest.strip().partition(" ")
        quoted = quoted.strip()
        if not (len(code) == 3 and code.isdigit()) or not agent or not quoted.startswith('"'):
            raise SipParseError(f"invalid Warning {text[:60]!r}")
        end = _closing_quote(quoted)
        if quoted[end + 1 :].strip():
            raise SipParseError(f"text after the Warning's quoted text: {text[:60]!r}")
        try:
            return cls(int(code), agent, _unquote(quoted[1:end]))
        except ValueError as error:
            raise SipParseError(str(error)) from None


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """`Retry-After: 120 (comment);duration=3600` (§20.33)."""

    seconds: int
    comment: str | None = None
    duration: int | None = None

    @classmethod
    def parse(cls, text: str) -> RetryAfter:
        match = re.fullmatch(r"\s*([0-9]{1,10})\s*(?:\(([^()]*)\))?\s*(?:;\s*duration\s*=\s*([0-9]{1,10}))?\s*", text)
        if match is None:
            raise SipParseError(f"invalid Retry-After {text[:40]!r}")
        duration = match.group(3)
        return cls(int(match.group(1)), match.group(2), None if duration is None else int(duration))

    def __str__(self) -> str:
        comment = "" if self.comment is None else f" ({self.comment})"
        duration = "" if self.duration is None else f";duration={self.duration}"
        return f"{self.seconds}{comment}{duration}"


# --- Building responses (§8.2.6) -----------------------------------------------------------------------------------


def response_to(
    request: Request,
    status_code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to `request` as §8.2.6.2 builds it: Via (all, in order), From, Call-ID and CSeq copied; To copied
    and given `to_tag` when it has none (a 100 Trying never gets one); Timestamp copied on a 100; `headers` added."""
    items: list[tuple[str, str]] = [("Via", v) for v in request.headers.get_all("Via")]
    to = _required(request.headers, "To")
    if to_tag is not None and status_code != 100 and NameAddr.parse(to).tag is None:
        to = str(NameAddr.parse(to).with_tag(to_tag))
    items += [
        ("From", _required(request.headers, "From")),
        ("To", to),
        ("Call-ID", _required(request.headers, "Call-ID")),
        ("CSeq", _required(request.headers, "CSeq")),
    ]
    timestamp = request.headers.get("Timestamp")
    if status_code == 100 and timestamp is not None:
        items.append(("Timestamp", timestamp))
    items.extend((canonical_name(n), v) for n, v in headers)
    phrase = reason if reason is not None else REASON_PHRASES.get(status_code, "")
    return Response(status_code, phrase, Headers._trusted(tuple(items)), body)
