"""Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760): SHA-256 and MD5 (and their `-sess` forms),
qop=auth, for both sides.

- Server: `DigestVerifier` issues challenges (one per algorithm, in the order given) with stateless nonces (an HMAC
  over a timestamp, so any replica holding the secret verifies them) and checks an Authorization or
  Proxy-Authorization header in constant time. An expired but genuine nonce is answered with `stale=true`.
- Client: `DigestAuth.auth_flow` is a generator in the style of httpx's auth flows: it yields the request to send
  and receives the response, answering one 401/407 with credentials, so the same logic runs over any transport.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

from wacall.sip.message import MAGIC_COOKIE, Headers, Request, Response, SipParseError, split_list

__all__ = [
    "ALGORITHMS",
    "AuthOutcome",
    "Challenge",
    "Credentials",
    "DigestAuth",
    "DigestVerifier",
    "digest_response",
]

_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}
# Every algorithm name this module speaks, upper-case: each hash and its session variant.
ALGORITHMS = (*_HASHES, *(f"{name}-SESS" for name in _HASHES))


def _hash_for(algorithm: str) -> Callable[[bytes], str]:
    base = algorithm.upper().removesuffix("-SESS")
    if base not in _HASHES:
        raise SipParseError(f"unsupported digest algorithm {algorithm[:20]!r}")
    return _HASHES[base]


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str,
    cnonce: str,
    qop: str = "auth",
) -> str:
    """The `response` value of RFC 7616 §3.4.1 for qop=auth (hex); with `qop=""`, the RFC 2069 form
    H(HA1:nonce:HA2) that challenges without qop (RFC 2617 §3.2.2.1) call for."""
    if qop not in ("auth", ""):
        raise SipParseError(f"unsupported qop {qop[:20]!r}")
    h = _hash_for(algorithm)
    ha1 = h(f"{username}:{realm}:{password}".encode())
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode())
    ha2 = h(f"{method}:{uri}".encode())
    if not qop:
        return h(f"{ha1}:{nonce}:{ha2}".encode())
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())


_PARAM = re.compile(r'\s*([A-Za-z0-9\-_]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*')


def parse_auth_header(value: str) -> tuple[str, dict[str, str]]:
    """`Digest a=b, c="d"` → ("Digest", {"a": "b", "c": "d"}): the scheme and its params, names lower-cased."""
    scheme, _, rest = value.strip().partition(" ")
    if not scheme:
        raise SipParseError("empty authentication header")
    params: dict[str, str] = {}
    if rest.strip():
        for item in split_list(rest):
            match = _PARAM.fullmatch(item)
            if match is None:
                raise SipParseError(f"invalid auth parameter {item[:40]!r}")
            name, raw = match.group(1).lower(), match.group(2)
            if name in params:
                raise SipParseError(f"repeated auth parameter {name!r}")
            params[name] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
    return scheme, params


def _quoted(value: str) -> str:
    if any(c in value for c in '"\\\r\n'):
        raise ValueError(f"cannot quote {value!r} in a digest header")
    return f'"{value}"'


@dataclass(frozen=True, slots=True)
class Challenge:
    """One `Digest` challenge (WWW-Authenticate / Proxy-Authenticate)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: str = "auth"
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def parse(cls, value: str) -> Challenge:
        scheme, params = parse_auth_header(value)
        if scheme.lower() != "digest":
            raise SipParseError(f"not a Digest challenge: {scheme[:20]!r}")
        if "realm" not in params or "nonce" not in params:
            raise SipParseError("Digest challenge without realm or nonce")
        return cls(
            realm=params["realm"],
            nonce=params["nonce"],
            algorithm=params.get("algorithm", "MD5"),
            qop=params.get("qop", ""),
            opaque=params.get("opaque"),
            stale=params.get("stale", "").lower() == "true",
        )

    def __str__(self) -> str:
        parts = [f"realm={_quoted(self.realm)}", f"nonce={_quoted(self.nonce)}", f"algorithm={self.algorithm}"]
        if self.qop:
            parts.append(f"qop={_quoted(self.qop)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quoted(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        return "Digest " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A `Digest` Authorization / Proxy-Authorization value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    @classmethod
    def parse(cls, value: str) -> Credentials:
        scheme, params = parse_auth_header(value)
        if scheme.lower() != "digest":
            raise SipParseError(f"not Digest credentials: {scheme[:20]!r}")
        missing = [n for n in ("username", "realm", "nonce", "uri", "response") if n not in params]
        if missing:
            raise SipParseError(f"Digest credentials without {', '.join(missing)}")
        return cls(
            username=params["username"],
            realm=params["realm"],
            nonce=params["nonce"],
            uri=params["uri"],
            response=params["response"],
            algorithm=params.get("algorithm", "MD5"),
            qop=params.get("qop"),
            nc=params.get("nc"),
            cnonce=params.get("cnonce"),
            opaque=params.get("opaque"),
        )

    def __str__(self) -> str:
        parts = [
            f"username={_quoted(self.username)}",
            f"realm={_quoted(self.realm)}",
            f"nonce={_quoted(self.nonce)}",
            f"uri={_quoted(self.uri)}",
            f"response={_quoted(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.qop is not None:
            parts += [f"qop={self.qop}", f"nc={self.nc}", f"cnonce={_quoted(self.cnonce or '')}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quoted(self.opaque)}")
        return "Digest " + ", ".join(parts)


# --- Server side ---------------------------------------------------------------------------------------------------


class AuthOutcome(enum.Enum):
    """What a verifier concluded about a request's credentials, and so what to answer."""

    ACCEPTED = "accepted"  # go on
    MISSING = "missing"  # no credentials for this realm: challenge (401/407)
    STALE = "stale"  # right password, expired nonce: challenge again with stale=true
    REJECTED = "rejected"  # wrong credentials, or a nonce this realm never issued: 403


_NONCE_MAC_BYTES = 16


class DigestVerifier:
    """Challenges and verifies digest credentials for one realm, without per-nonce state.

    A nonce is `base64url(issued_at || HMAC-SHA256(secret, issued_at || realm)[:16])`: any process holding `secret`
    checks it, and it expires `nonce_lifetime` seconds after issue. Being stateless it does not detect a replay
    within that lifetime; keep the lifetime short.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        nonce_lifetime: float = 300.0,
    ) -> None:
        if not secret:
            raise ValueError("a nonce secret is required")
        for algorithm in algorithms:
            if algorithm.upper() not in ALGORITHMS:
                raise ValueError(f"unsupported digest algorithm {algorithm!r}; supported: {', '.join(ALGORITHMS)}")
        if not algorithms:
            raise ValueError("at least one digest algorithm is required")
        self.realm = realm
        self.algorithms = tuple(algorithms)
        self.nonce_lifetime = nonce_lifetime
        self._secret = secret

    def _mac(self, issued: bytes) -> bytes:
        return hmac.new(self._secret, issued + self.realm.encode(), hashlib.sha256).digest()[:_NONCE_MAC_BYTES]

    def nonce(self, now: float) -> str:
        """A fresh nonce issued at `now`."""
        issued = struct.pack(">d", now)
        return base64.urlsafe_b64encode(issued + self._mac(issued)).decode().rstrip("=")

    def _nonce_issued_at(self, nonce: str) -> float | None:
        """When this realm issued `nonce`, or None if it did not."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except ValueError:
            return None
        if len(raw) != 8 + _NONCE_MAC_BYTES:
            return None
        issued, mac = raw[:8], raw[8:]
        if not hmac.compare_digest(mac, self._mac(issued)):
            return None
        (when,) = struct.unpack(">d", issued)
        return float(when)

    def challenges(self, now: float, *, stale: bool = False) -> list[Challenge]:
        """One challenge per algorithm, in the configured order (some clients read only the first)."""
        nonce = self.nonce(now)
        return [Challenge(self.realm, nonce, algorithm, "auth", stale=stale) for algorithm in self.algorithms]

    def verify(
        self,
        request: Request,
        *,
        username: str,
        password: str,
        now: float,
        header: str = "Proxy-Authorization",
    ) -> AuthOutcome:
        """Check `request`'s credentials for this realm against `username` / `password`.

        Every credential of this realm is checked (no early exit on a wrong username) and the response is compared
        in constant time. Unreadable credentials count as REJECTED.
        """
        found: list[Credentials] = []
        for value in request.headers.get_all(header):
            try:
                credentials = Credentials.parse(value)
            except SipParseError:
                return AuthOutcome.REJECTED
            if credentials.realm == self.realm:
                found.append(credentials)
        if not found:
            return AuthOutcome.MISSING
        outcome = AuthOutcome.REJECTED
        for credentials in found:
            verdict = self._check(request, credentials, username, password, now)
            if verdict is AuthOutcome.ACCEPTED or (verdict is AuthOutcome.STALE and outcome is AuthOutcome.REJECTED):
                outcome = verdict
        return outcome

    def _check(
        self, request: Request, credentials: Credentials, username: str, password: str, now: float
    ) -> AuthOutcome:
        algorithm = credentials.algorithm.upper()
        allowed = {a.upper() for a in self.algorithms}
        issued = self._nonce_issued_at(credentials.nonce)
        if (
            algorithm not in allowed
            or issued is None
            or credentials.qop != "auth"
            or credentials.nc is None
            or credentials.cnonce is None
            or credentials.uri != request.uri
        ):
            return AuthOutcome.REJECTED
        expected = digest_response(
            algorithm=algorithm,
            username=username,
            realm=self.realm,
            password=password,
            method=request.method,
            uri=credentials.uri,
            nonce=credentials.nonce,
            nc=credentials.nc,
            cnonce=credentials.cnonce,
        )
        right_user = hmac.compare_digest(credentials.username.encode(), username.encode())
        right_response = hmac.compare_digest(credentials.response.lower().encode(), expected.encode())
        if not (right_user and right_response):
            return AuthOutcome.REJECTED
        if not issued <= now <= issued + self.nonce_lifetime:
            return AuthOutcome.STALE
        return AuthOutcome.ACCEPTED


# --- Client side ---------------------------------------------------------------------------------------------------


def _token() -> str:
    return secrets.token_hex(8)


class DigestAuth:
    """Answers a 401 or 407 digest challenge once, as an httpx-style auth flow.

    `auth_flow(request)` yields the request to send; send it and `.send()` the final response back. If that response
    is a challenge this client can answer, the flow yields one more request: the same request with credentials, a
    CSeq one higher and a fresh Via branch (a new transaction). Then it ends; the last response is the outcome.
    """

    def __init__(self, username: str, password: str, *, make_token: Callable[[], str] = _token) -> None:
        self.username = username
        self.password = password
        # cnonces and branches: random by default, fixed in tests.
        self._make_token = make_token

    def auth_flow(self, request: Request) -> Generator[Request, Response, None]:
        response = yield request
        if response.status_code not in (401, 407):
            return
        challenge_header, answer_header = (
            ("WWW-Authenticate", "Authorization")
            if response.status_code == 401
            else ("Proxy-Authenticate", "Proxy-Authorization")
        )
        challenge = self._pick(response.headers.get_all(challenge_header))
        if challenge is None:
            return
        yield self.authorize(request, challenge, answer_header)

    @staticmethod
    def _pick(values: list[str]) -> Challenge | None:
        """The first challenge (the server's preference) whose algorithm and qop this client supports: qop=auth,
        or no qop at all (RFC 2069-style challenges, still common in PBXs and SBCs)."""
        for value in values:
            try:
                challenge = Challenge.parse(value)
            except SipParseError:
                continue
            qops = [q.strip() for q in challenge.qop.split(",")]
            if challenge.algorithm.upper() in ALGORITHMS and ("auth" in qops or not challenge.qop.strip()):
                return challenge
        return None

    def authorize(self, request: Request, challenge: Challenge, header: str = "Proxy-Authorization") -> Request:
        """`request` as a new transaction carrying credentials for `challenge` (qop=auth when it offers it, else
        the RFC 2069 response without qop, nc and cnonce)."""
        qop = "auth" if "auth" in [q.strip() for q in challenge.qop.split(",")] else ""
        cnonce = self._make_token() if qop else None
        nc = "00000001" if qop else None
        response = digest_response(
            algorithm=challenge.algorithm,
            username=self.username,
            realm=challenge.realm,
            password=self.password,
            method=request.method,
            uri=request.uri,
            nonce=challenge.nonce,
            nc=nc or "",
            cnonce=cnonce or "",
            qop=qop,
        )
        credentials = Credentials(
            username=self.username,
            realm=challenge.realm,
            nonce=challenge.nonce,
            uri=request.uri,
            response=response,
            algorithm=challenge.algorithm,
            qop=qop or None,
            nc=nc,
            cnonce=cnonce,
            opaque=challenge.opaque,
        )
        cseq = request.cseq
        vias = request.vias
        top = vias[0].with_params(branch=f"{MAGIC_COOKIE}{self._make_token()}")
        headers = Headers(
            [
                (name, value)
                for name, value in request.headers
                if name not in ("Via", "CSeq", "Authorization", "Proxy-Authorization")
            ]
        )
        items = [("Via", str(top)), *(("Via", str(v)) for v in vias[1:]), *headers]
        items += [("CSeq", f"{cseq.seq + 1} {cseq.method}"), (header, str(credentials))]
        return Request(request.method, request.uri, Headers(items), request.body)
