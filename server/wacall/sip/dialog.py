"""A dialog (RFC 3261 §12): the peer-to-peer relationship a 2xx to INVITE creates, as immutable data.

A `Dialog` knows its Call-ID, both tags, both CSeq counters, the route set (from Record-Route) and the remote target
(from Contact). It builds the requests sent inside it (BYE, re-INVITE, the ACK for a 2xx) and checks the ones
received (§12.2.2: a CSeq lower than the last one gets a 500). Every change returns a new `Dialog`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from wacall.sip.message import Headers, NameAddr, Request, Response, SipParseError, SipURI, Via, parse_uri

__all__ = ["Dialog", "DialogError"]


class DialogError(ValueError):
    """A request does not fit the dialog; answer it with `status_code` (§12.2.2)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class Dialog:
    """One dialog's state (§12.1). `local_seq` is None until this side sends a request inside the dialog (UAS)."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # our From in requests we send (name-addr as written, without tag)
    remote_uri: str  # their address, our To in requests we send (without tag)
    remote_target: str  # the peer's Contact URI: the Request-URI of requests we send
    route_set: tuple[str, ...] = ()
    local_seq: int | None = None
    remote_seq: int | None = None
    secure: bool = False

    @property
    def id(self) -> tuple[str, str, str]:
        """(Call-ID, local tag, remote tag): the dialog ID (§12)."""
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def as_uac(cls, request: Request, response: Response) -> Dialog:
        """The dialog a 2xx `response` to our INVITE `request` creates (§12.1.2)."""
        if not 200 <= response.status_code < 300:
            raise DialogError(400, f"a dialog is created by a 2xx, not a {response.status_code}")
        remote = response.to
        local = request.from_
        if remote.tag is None or local.tag is None:
            raise DialogError(400, "a dialog needs a From tag and a To tag")
        return cls(
            call_id=request.call_id,
            local_tag=local.tag,
            remote_tag=remote.tag,
            local_uri=_without_tag(local),
            remote_uri=_without_tag(remote),
            remote_target=_contact_uri(response),
            route_set=tuple(reversed(response.headers.get_all("Record-Route"))),
            local_seq=request.cseq.seq,
            remote_seq=None,
            secure=_is_sips(request.uri),
        )

    @classmethod
    def as_uas(cls, request: Request, local_tag: str) -> Dialog:
        """The dialog this side creates by answering `request` with a 2xx carrying To tag `local_tag` (§12.1.1)."""
        remote = request.from_
        if remote.tag is None:
            raise DialogError(400, "a dialog needs a From tag")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote.tag,
            local_uri=_without_tag(request.to),
            remote_uri=_without_tag(remote),
            remote_target=_contact_uri(request),
            route_set=tuple(request.headers.get_all("Record-Route")),
            local_seq=None,
            remote_seq=request.cseq.seq,
            secure=_is_sips(request.uri) and request.top_via.transport == "TLS",
        )

    def matches(self, message: Request | Response) -> bool:
        """`message` belongs to this dialog: same Call-ID, and tags that match from this side's view."""
        if message.call_id != self.call_id:
            return False
        if isinstance(message, Request):
            return message.from_.tag == self.remote_tag and message.to.tag == self.local_tag
        return message.from_.tag == self.local_tag and message.to.tag == self.remote_tag

    def receive(self, request: Request) -> Dialog:
        """Take in a request received inside the dialog (§12.2.2): its CSeq must be higher than the last one (ACK
        and CANCEL reuse their INVITE's); a target refresh (re-INVITE with Contact) updates the remote target."""
        if not self.matches(request):
            raise DialogError(481, "the request does not belong to this dialog")
        seq = request.cseq.seq
        dialog = self
        if request.method not in ("ACK", "CANCEL"):
            if self.remote_seq is not None and seq <= self.remote_seq:
                raise DialogError(500, f"CSeq {seq} is not above the last one, {self.remote_seq}")
            dialog = dataclasses.replace(dialog, remote_seq=seq)
        if request.method in ("INVITE", "UPDATE") and request.headers.get("Contact") is not None:
            dialog = dataclasses.replace(dialog, remote_target=_contact_uri(request))
        return dialog

    def create_request(
        self,
        method: str,
        *,
        via: Via,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> tuple[Dialog, Request]:
        """A request inside the dialog (§12.2.1.1), with the next local CSeq, and the dialog that counted it.

        `via` is this side's Via (its transport and sent-by are the transport's to choose, its branch new). For
        the ACK of a 2xx use `ack`.
        """
        if method in ("ACK", "CANCEL"):
            raise ValueError(f"{method} reuses its INVITE's CSeq: use ack() (CANCEL is sent outside the dialog)")
        seq = (self.local_seq or 0) + 1
        dialog = dataclasses.replace(self, local_seq=seq)
        return dialog, dialog._request(method, seq, via, headers, body)

    def ack(self, invite_seq: int, *, via: Via, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> Request:
        """The ACK for a 2xx to the INVITE with CSeq `invite_seq` (§13.2.2.4): the TU sends it, end to end."""
        return self._request("ACK", invite_seq, via, headers, body)

    def _request(self, method: str, seq: int, via: Via, extra: Iterable[tuple[str, str]], body: bytes) -> Request:
        uri, routes = self._request_uri_and_routes()
        items: list[tuple[str, str]] = [("Via", str(via))]
        items += [("Route", route) for route in routes]
        items += [
            ("Max-Forwards", "70"),
            ("From", f"{self.local_uri};tag={self.local_tag}"),
            ("To", f"{self.remote_uri};tag={self.remote_tag}"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{seq} {method}"),
        ]
        items += list(extra)
        return Request(method, uri, Headers(items), body)

    def _request_uri_and_routes(self) -> tuple[str, list[str]]:
        """Loose routing when the first route has `lr`, else strict routing (§12.2.1.1)."""
        if not self.route_set:
            return self.remote_target, []
        first = NameAddr.parse(self.route_set[0])
        if isinstance(first.uri, SipURI) and first.uri.param("lr") is not None:
            return self.remote_target, list(self.route_set)
        uri = first.uri
        if isinstance(uri, SipURI):
            uri = dataclasses.replace(uri, params=tuple((n, v) for n, v in uri.params if n.lower() != "method"))
        return str(uri), [*self.route_set[1:], f"<{self.remote_target}>"]


def _without_tag(address: NameAddr) -> str:
    return str(
        NameAddr(address.uri, address.display_name, tuple((n, v) for n, v in address.params if n.lower() != "tag"))
    )


def _contact_uri(message: Request | Response) -> str:
    contacts = message.headers.get_all("Contact")
    if len(contacts) != 1 or contacts[0] == "*":
        raise DialogError(400, "a dialog needs exactly one Contact")
    return str(NameAddr.parse(contacts[0]).uri)


def _is_sips(uri: str) -> bool:
    try:
        return parse_uri(uri).scheme == "sips"
    except SipParseError:
        return False
