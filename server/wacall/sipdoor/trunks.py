"""SIP trunks: who may dial WhatsApp users through the front door, from where, as which business numbers.

`parse_trunks` reads the config file's `[[sip_trunks]]` tables and refuses anything it cannot use with an error
naming the trunk and the field; `match_trunk` picks the trunk an INVITE's source address belongs to.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from wacall.numbers import InvalidNumber, parse_number
from wacall.sip.digest import ALGORITHMS
from wacall.sip.message import SipParseError, SipURI

__all__ = ["ANY_NUMBER", "CODECS", "Network", "Trunk", "TrunkConfigError", "match_trunk", "parse_trunks"]

# `business_numbers = ["*"]`: any number the upstream has a sender for (the caller checks the sender exists).
ANY_NUMBER = "*"
# Codec names as trunks spell them, by their lower-case form (SDP rtpmap names are case-insensitive).
CODECS = {"pcmu": "PCMU", "pcma": "PCMA", "opus": "opus"}
DEFAULT_CODECS = ("PCMU", "PCMA", "opus")
# SHA-256 first; SIPp 3.6 and some other clients read only the first challenge and need MD5 listed first.
DEFAULT_DIGEST_ALGORITHMS = ("SHA-256", "MD5")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_KEYS = frozenset(
    {"name", "username", "password", "allowed_sources", "business_numbers", "target", "codecs", "digest_algorithms"}
)


class TrunkConfigError(ValueError):
    """A `[[sip_trunks]]` entry the front door cannot use: which trunk, which field, and what is wrong."""

    def __init__(self, trunk: str, field: str, why: str) -> None:
        super().__init__(f"sip_trunks {trunk}: {field}: {why}")
        self.trunk = trunk
        self.field = field
        self.why = why


@dataclass(frozen=True, slots=True)
class Trunk:
    """One PBX (or SBC) allowed to place calls through the front door.

    `allowed_sources` empty means any source (only allowed with credentials); `business_numbers` holds canonical
    +E164 numbers or `ANY_NUMBER`.
    """

    name: str
    target: SipURI
    business_numbers: tuple[str, ...]
    username: str | None = None
    password: str | None = None
    allowed_sources: tuple[Network, ...] = ()
    codecs: tuple[str, ...] = DEFAULT_CODECS
    digest_algorithms: tuple[str, ...] = DEFAULT_DIGEST_ALGORITHMS

    @property
    def requires_credentials(self) -> bool:
        return self.username is not None

    def source_prefix(self, address: str) -> int | None:
        """How specifically this trunk allows `address`: the longest matching prefix length, -1 for a trunk open to
        any source, None if the trunk does not allow it (or `address` is not an IP address)."""
        if not self.allowed_sources:
            return -1
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        lengths = [net.prefixlen for net in self.allowed_sources if ip.version == net.version and ip in net]
        return max(lengths) if lengths else None

    def allows_business_number(self, e164: str) -> bool:
        return ANY_NUMBER in self.business_numbers or e164 in self.business_numbers


def match_trunk(trunks: Sequence[Trunk], address: str) -> Trunk | None:
    """The trunk an INVITE from `address` belongs to: the one whose allowed network is the most specific, a trunk
    open to any source only when none lists the address, the first in config order on a tie; None if none allows
    it."""
    best: Trunk | None = None
    best_prefix = -2
    for trunk in trunks:
        prefix = trunk.source_prefix(address)
        if prefix is not None and prefix > best_prefix:
            best, best_prefix = trunk, prefix
    return best


def parse_trunks(value: object) -> tuple[Trunk, ...]:
    """The trunks of the config file's `sip_trunks` array of tables (a TOML document's parsed value).

    Raises `TrunkConfigError` for the first problem found; nothing is half-read.
    """
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise TrunkConfigError("(all)", "sip_trunks", "must be an array of tables ([[sip_trunks]])")
    trunks: list[Trunk] = []
    for index, entry in enumerate(value):
        trunk = parse_trunk(entry, index)
        if any(t.name == trunk.name for t in trunks):
            raise TrunkConfigError(repr(trunk.name), "name", "two trunks have this name; names must be unique")
        trunks.append(trunk)
    return tuple(trunks)


def parse_trunk(entry: object, index: int = 0) -> Trunk:
    """One `[[sip_trunks]]` table; `index` names it in errors until its name is known."""
    label = f"#{index + 1}"
    if not isinstance(entry, Mapping):
        raise TrunkConfigError(label, "(table)", "each sip_trunks entry must be a table")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise TrunkConfigError(label, "name", "a non-empty string is required")
    label = repr(name)
    unknown = sorted(str(k) for k in entry if k not in _KEYS)
    if unknown:
        raise TrunkConfigError(label, unknown[0], f"unknown key; the keys are {', '.join(sorted(_KEYS))}")

    def fail(field: str, why: str) -> TrunkConfigError:
        return TrunkConfigError(label, field, why)

    username = _optional_text(entry, "username", fail)
    password = _optional_text(entry, "password", fail)
    if password is not None and username is None:
        raise fail("password", "a password without a username: set username too, or remove password")
    if username is not None and password is None:
        raise fail("username", "a username without a password: set password too, or remove username")

    sources: list[Network] = []
    for i, text in enumerate(_strings(entry, "allowed_sources", fail, required=False)):
        try:
            sources.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise fail(
                f"allowed_sources[{i}]", f"{text!r} is not an address or CIDR network, e.g. 10.0.0.0/8"
            ) from None
    if not sources and username is None:
        raise fail("allowed_sources", "a trunk without credentials must list the source addresses it accepts")

    numbers: list[str] = []
    raw_numbers = _strings(entry, "business_numbers", fail, required=True)
    if not raw_numbers:
        raise fail("business_numbers", 'at least one number (or "*" for any number with a sender) is required')
    for i, text in enumerate(raw_numbers):
        if text.strip() == ANY_NUMBER:
            numbers.append(ANY_NUMBER)
            continue
        try:
            numbers.append(parse_number(text, f"business_numbers[{i}]").e164)
        except InvalidNumber as invalid:
            raise fail(invalid.field, invalid.why) from None

    target_text = entry.get("target")
    if not isinstance(target_text, str):
        raise fail("target", "a SIP URI is required, e.g. sip:contact-centre@10.0.0.5:5060")
    try:
        target = SipURI.parse(target_text.strip())
    except SipParseError as error:
        raise fail("target", f"{target_text!r} is not a SIP URI ({error})") from None

    codecs: list[str] = []
    raw_codecs = _strings(entry, "codecs", fail, required=False) if "codecs" in entry else list(DEFAULT_CODECS)
    if not raw_codecs:
        raise fail("codecs", f"at least one codec is required: {', '.join(DEFAULT_CODECS)}")
    for i, text in enumerate(raw_codecs):
        codec = CODECS.get(text.strip().lower())
        if codec is None:
            raise fail(f"codecs[{i}]", f"unknown codec {text!r}; supported: {', '.join(DEFAULT_CODECS)}")
        if codec in codecs:
            raise fail(f"codecs[{i}]", f"{codec} is listed twice")
        codecs.append(codec)

    algorithms: list[str] = []
    raw_algorithms = (
        _strings(entry, "digest_algorithms", fail, required=False)
        if "digest_algorithms" in entry
        else list(DEFAULT_DIGEST_ALGORITHMS)
    )
    if not raw_algorithms:
        raise fail("digest_algorithms", f"at least one algorithm is required: {', '.join(ALGORITHMS)}")
    for i, text in enumerate(raw_algorithms):
        algorithm = text.strip().upper()
        if algorithm not in ALGORITHMS:
            raise fail(f"digest_algorithms[{i}]", f"unknown algorithm {text!r}; supported: {', '.join(ALGORITHMS)}")
        if algorithm in algorithms:
            raise fail(f"digest_algorithms[{i}]", f"{algorithm} is listed twice")
        algorithms.append(algorithm)

    return Trunk(
        name=name,
        target=target,
        business_numbers=tuple(numbers),
        username=username,
        password=password,
        allowed_sources=tuple(sources),
        codecs=tuple(codecs),
        digest_algorithms=tuple(algorithms),
    )


# Builds the error for one field of the trunk being read.
_Fail = Callable[[str, str], TrunkConfigError]


def _optional_text(entry: Mapping[object, object], key: str, fail: _Fail) -> str | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise fail(key, "must be a non-empty string when given")
    return value


def _strings(entry: Mapping[object, object], key: str, fail: _Fail, *, required: bool) -> list[str]:
    value = entry.get(key)
    if value is None:
        if required:
            raise fail(key, "an array of strings is required")
        return []
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise fail(key, "must be an array of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise fail(f"{key}[{i}]", f"must be a string, not {type(item).__name__}")
    return list(value)
