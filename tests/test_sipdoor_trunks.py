"""SIP trunks as the config file's `[[sip_trunks]]` tables give them: the validated model, the errors naming the trunk
and the field, and matching an INVITE's source address (v4 and v6) to a trunk."""

from __future__ import annotations

from typing import Any

import pytest
from test_sipdoor import BUSINESS, OPEN_LAN, PBX

from wacall.sipdoor.trunks import ANY_NUMBER, Trunk, TrunkConfigError, match_trunk, parse_trunk, parse_trunks


def test_a_trunk_reads_exactly_as_the_config_file_shows_it() -> None:
    (trunk,) = parse_trunks([PBX])
    assert trunk.name == "pbx" and (trunk.username, trunk.password) == ("pbx", "s3cret")
    assert [str(n) for n in trunk.allowed_sources] == ["127.0.0.1/32"]
    assert trunk.business_numbers == (BUSINESS,)
    assert (trunk.target.user, trunk.target.host, trunk.target.port) == ("contact-centre", "127.0.0.1", 5080)
    assert trunk.codecs == ("PCMU", "PCMA", "opus")
    assert trunk.digest_algorithms == ("SHA-256", "MD5")
    assert trunk.requires_credentials


def test_numbers_are_kept_canonical_and_codecs_and_algorithms_in_their_own_spelling() -> None:
    trunk = parse_trunk(
        dict(PBX, business_numbers=["44 7911 123456", "*"], codecs=["OPUS", "pcmu"], digest_algorithms=["md5"])
    )
    assert trunk.business_numbers == (BUSINESS, ANY_NUMBER)
    assert trunk.codecs == ("opus", "PCMU")
    assert trunk.digest_algorithms == ("MD5",)


@pytest.mark.parametrize(
    ("change", "field", "why"),
    [
        ({"allowed_sources": ["10.0.0.300/8"]}, "allowed_sources[0]", "not an address or CIDR"),
        ({"allowed_sources": "10.0.0.0/8"}, "allowed_sources", "array of strings"),
        ({"target": "http://pbx.example.com"}, "target", "not a SIP URI"),
        ({"target": None}, "target", "a SIP URI is required"),
        ({"codecs": ["PCMU", "G729"]}, "codecs[1]", "unknown codec 'G729'"),
        ({"codecs": []}, "codecs", "at least one codec"),
        ({"digest_algorithms": ["SHA-512"]}, "digest_algorithms[0]", "unknown algorithm 'SHA-512'"),
        ({"digest_algorithms": ["MD5", "md5"]}, "digest_algorithms[1]", "listed twice"),
        ({"username": None}, "password", "a password without a username"),
        ({"password": None}, "username", "a username without a password"),
        ({"business_numbers": ["+1 555"]}, "business_numbers[0]", "not a valid number"),
        ({"business_numbers": []}, "business_numbers", "at least one number"),
        ({"business_numbers": None}, "business_numbers", "an array of strings is required"),
        ({"codec": ["PCMU"]}, "codec", "unknown key"),
        ({"username": None, "password": None, "allowed_sources": []}, "allowed_sources", "must list the source"),
    ],
)
def test_a_bad_trunk_is_refused_naming_the_trunk_and_the_field(change: dict[str, Any], field: str, why: str) -> None:
    with pytest.raises(TrunkConfigError, match=why) as caught:
        parse_trunks([OPEN_LAN, dict(PBX, **change)])
    assert (caught.value.trunk, caught.value.field) == ("'pbx'", field)
    assert str(caught.value).startswith(f"sip_trunks 'pbx': {field}: ")


def test_two_trunks_with_one_name_are_refused() -> None:
    with pytest.raises(TrunkConfigError, match="names must be unique") as caught:
        parse_trunks([PBX, dict(OPEN_LAN, name="pbx")])
    assert caught.value.field == "name"


def test_a_trunk_without_a_name_is_named_by_its_position() -> None:
    with pytest.raises(TrunkConfigError) as caught:
        parse_trunks([PBX, dict(OPEN_LAN, name="")])
    assert (caught.value.trunk, caught.value.field) == ("#2", "name")
    with pytest.raises(TrunkConfigError, match="array of tables"):
        parse_trunks({"name": "pbx"})


def matched(trunks: tuple[Trunk, ...], address: str) -> str | None:
    trunk = match_trunk(trunks, address)
    return None if trunk is None else trunk.name


def test_an_invite_matches_the_trunk_allowing_its_source_v4_and_v6() -> None:
    trunks = parse_trunks([PBX, OPEN_LAN])
    assert matched(trunks, "127.0.0.1") == "pbx"
    assert matched(trunks, "10.1.2.3") == "lan"
    assert matched(trunks, "2001:db8:5::1") == "lan"
    assert matched(trunks, "[2001:db8::7]") == "lan"
    assert matched(trunks, "::ffff:10.9.9.9") == "lan"  # a v4 peer seen through a dual-stack socket
    assert matched(trunks, "127.0.0.2") is None
    assert matched(trunks, "2001:db9::1") is None
    assert matched(trunks, "not-an-address") is None


def test_the_most_specific_network_wins_and_an_any_source_trunk_comes_last() -> None:
    anywhere = dict(PBX, name="anywhere", allowed_sources=[])
    narrow = dict(OPEN_LAN, name="narrow", allowed_sources=["10.1.0.0/16"])
    trunks = parse_trunks([anywhere, OPEN_LAN, narrow])
    assert [matched(trunks, a) for a in ("10.1.2.3", "10.2.0.1", "192.0.2.1")] == ["narrow", "lan", "anywhere"]
    # On a tie, the first in config order.
    twin = parse_trunks([OPEN_LAN, dict(OPEN_LAN, name="twin")])
    assert matched(twin, "10.0.0.1") == "lan"
