"""Settings: defaults < TOML file < WACALL_* environment < flags, each validated with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from wacall.config import CHOICES, DESCRIPTIONS, SCALARS, ConfigError, load_settings
from wacall.rules.policy import PRESETS
from wacall.upstreams.meta.accounts import meta_part

SENDER = """
[[senders]]
business_number = "447911123456"
phone_number_id = "123"
waba_id = "456"
access_token = "token"
app_secret = "secret"
default_template = { name = "call_permission_request", language = "en", body_parameters = ["x"] }
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "wacall.toml"
    path.write_text(text)
    return str(path)


def test_defaults_run_on_sqlite_and_the_simulator() -> None:
    settings = load_settings(None, {}, environ={})
    assert (settings.upstream, settings.clock, settings.policy) == ("sim", "system", "seed")
    assert settings.db == "sqlite:///var/wacall.db" and settings.grpc_address == "127.0.0.1:50051"


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'policy = "sandbox"\nclock = "manual"\nmax_webhook_bytes = 4096\n')
    settings = load_settings(path, {"clock": None}, environ={"WACALL_POLICY": "meta-current"})
    assert (settings.policy, settings.clock, settings.max_webhook_bytes) == ("meta-current", "manual", 4096)
    flagged = load_settings(path, {"policy": "seed"}, environ={"WACALL_POLICY": "meta-current"})
    assert flagged.policy == "seed"


def test_config_file_named_by_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, 'clock = "manual"\n')
    assert load_settings(None, {}, environ={"WACALL_CONFIG": path}).clock == "manual"


def test_senders_are_parsed_and_canonicalised(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, 'upstream = "meta"\n' + SENDER), {}, environ={})
    (sender,) = settings.senders
    assert sender.business_number == "+447911123456" and meta_part(sender).phone_number_id == "123"
    assert sender.default_template is not None and sender.default_template.body_parameters == ("x",)


def test_policy_overrides_are_applied_and_labelled(tmp_path: Path) -> None:
    text = "[policy_overrides]\nconnected_call_limits = [{ window_seconds = 86400, max_allowed = 10 }]\n"
    policy = load_settings(write(tmp_path, text), {}, environ={}).load_policy()
    assert policy.name == "seed+custom" and policy.connected_call_limits[0].max_allowed == 10


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ('upstream = "meta"\n', {}, "[[senders]]"),
        ('upstream = "cloud"\n', {}, "upstream must be 'sim' or 'meta'"),
        ('clock = "fast"\n', {}, "clock must be 'system' or 'manual'"),
        ('colour = "blue"\n', {}, "unknown settings"),
        ('policy = "nope"\n', {}, "unknown policy 'nope'"),
        ("[policy_overrides]\nprompt_after_unanswered = 0\n", {}, "positive integer"),
        ('upstream = "meta"\n[[senders]]\nbusiness_number = "447911123456"\n', {}, "is missing"),
        ('upstream = "meta"\n' + SENDER.replace("447911123456", "12"), {}, "business_number"),
        ("", {"WACALL_MAX_WEBHOOK_BYTES": "lots"}, "WACALL_MAX_WEBHOOK_BYTES must be an integer"),
        ('inbound_route = "queue"\n', {}, "inbound_route must be"),
        ('inbound_route = "queue:no spaces"\n', {}, "inbound_route queue:no spaces: a queue id is"),
        ('[inbound_routes]\n"+447911123456" = "queue"\n', {}, "inbound_routes '+447911123456' must be"),
        ('[inbound_routes]\n"12" = "queue:sales"\n', {}, "[inbound_routes] '12'"),
        ('[inbound_routes]\n"+447911123456" = 5\n', {}, "must be a route name"),
        ('[inbound_routes]\n"+447911123456" = "sip:pbx"\n', {}, "no [[sip_trunks]] entry is named 'pbx'"),
        ("reservation_grace_seconds = 0\n", {}, "reservation_grace_seconds must be positive"),
        ("call_lease_seconds = 0\n", {}, "call_lease_seconds must be greater than 0, got 0"),
        ("", {"WACALL_CALL_LEASE_SECONDS": "-5"}, "call_lease_seconds must be greater than 0, got -5.0"),
        ('advertise_address = "0.0.0.0:50051"\n', {}, "advertise_address must be host:port that other replicas"),
        ("", {"WACALL_ADVERTISE_ADDRESS": "wacall-1"}, "advertise_address must be host:port that other replicas"),
        ('log_level = "loud"\n', {}, "log_level must be one of DEBUG, INFO, WARNING, ERROR"),
        ('log_format = "xml"\n', {}, "log_format must be 'text' or 'json', got 'xml'"),
        ("", {"WACALL_GRPC_TLS_CERT": "cert.pem"}, "grpc_tls_cert and grpc_tls_key: grpc_tls_key missing"),
        ('grpc_tls_key = "key.pem"\n', {}, "grpc_tls_cert and grpc_tls_key: grpc_tls_cert missing"),
        ('grpc_tls_client_ca = "ca.pem"\n', {}, "grpc_tls_client_ca (mutual TLS) needs grpc_tls_cert"),
        ("", {"WACALL_RESERVATION_GRACE_SECONDS": "soon"}, "WACALL_RESERVATION_GRACE_SECONDS must be a number"),
        ("this is not toml", {}, "wacall.toml"),
        ('sip_address = "5060"\n', {}, "sip_address: '5060' is not host:port"),
        ('sip_tls_address = "127.0.0.1:5061"\n', {}, "sip_tls_cert, sip_tls_key missing"),
        ("", {"WACALL_SIP_TLS_KEY": "key.pem"}, "sip_tls_address, sip_tls_cert missing"),
        ('[[sip_trunks]]\nname = "pbx"\nbusiness_numbers = ["*"]\n', {}, "sip_trunks 'pbx': allowed_sources"),
        ('sip_trunks = "pbx"\n', {}, "must be an array of tables"),
    ],
)
def test_bad_configuration_is_refused_with_what_is_wrong(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(write(tmp_path, text), {}, environ=environ)
    assert message in str(refused.value)


def test_calls_are_leased_for_15_seconds_and_the_advertised_address_comes_from_a_flag_or_the_environment(
    tmp_path: Path,
) -> None:
    defaults = load_settings(None, {}, environ={})
    assert (defaults.call_lease_seconds, defaults.advertise_address) == (15.0, "")
    from_env = load_settings(None, {}, environ={"WACALL_ADVERTISE_ADDRESS": "wacall-1.internal:50051"})
    assert from_env.advertise_address == "wacall-1.internal:50051"
    flagged = load_settings(None, {"advertise_address": "[fd00::1]:50051"}, environ={})
    assert flagged.advertise_address == "[fd00::1]:50051"


TRUNK = """
[[sip_trunks]]
name = "pbx"
allowed_sources = ["127.0.0.1/32"]
business_numbers = ["+447911123456"]
target = "sip:contact-centre@127.0.0.1:5080"
"""


def test_the_sip_front_door_is_off_by_default_and_reads_its_address_and_trunks(tmp_path: Path) -> None:
    assert load_settings(None, {}, environ={}).sip_address == ""
    path = write(tmp_path, 'sip_address = "127.0.0.1:5070"\n' + TRUNK)
    settings = load_settings(path, {}, environ={"WACALL_SIP_ADDRESS": "127.0.0.1:5080"})
    assert settings.sip_address == "127.0.0.1:5080"
    (trunk,) = settings.sip_trunks
    assert (trunk.name, trunk.business_numbers, str(trunk.target)) == (
        "pbx",
        ("+447911123456",),
        "sip:contact-centre@127.0.0.1:5080",
    )


def test_sip_over_tls_takes_an_address_a_certificate_and_a_key(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("certificate")
    key.write_text("key")
    flags = {"sip_tls_address": "127.0.0.1:5061", "sip_tls_cert": str(cert), "sip_tls_key": str(key)}
    assert load_settings(None, flags, environ={}).sip_tls_address == "127.0.0.1:5061"
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {**flags, "sip_tls_key": str(tmp_path / "missing.pem")}, environ={})
    assert "sip_tls_key" in str(refused.value) and "missing.pem" in str(refused.value)


def test_grpc_tls_takes_a_certificate_a_key_and_optionally_a_client_ca(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text(name)
    plaintext = load_settings(None, {}, environ={})
    assert (plaintext.grpc_tls_cert, plaintext.grpc_tls_key, plaintext.grpc_tls_client_ca) == ("", "", "")
    environ = {"WACALL_GRPC_TLS_CERT": str(tmp_path / "cert.pem"), "WACALL_GRPC_TLS_KEY": str(tmp_path / "key.pem")}
    mutual = load_settings(None, {"grpc_tls_client_ca": str(tmp_path / "ca.pem")}, environ=environ)
    assert mutual.grpc_tls_client_ca == str(tmp_path / "ca.pem")
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"grpc_tls_client_ca": str(tmp_path / "other.pem")}, environ=environ)
    assert "grpc_tls_client_ca" in str(refused.value) and "other.pem" in str(refused.value)


def test_logs_are_text_unless_json_is_asked_for() -> None:
    assert load_settings(None, {}, environ={}).log_format == "text"
    assert load_settings(None, {}, environ={"WACALL_LOG_FORMAT": "json"}).log_format == "json"


def test_missing_config_file_is_reported() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings("/nowhere/wacall.toml", {}, environ={})
    assert "not found" in str(refused.value)


def test_every_setting_has_a_description_and_listed_choices_are_the_accepted_ones() -> None:
    assert set(DESCRIPTIONS) == set(SCALARS)
    assert set(CHOICES["policy"]) == set(PRESETS)
    for name, choices in CHOICES.items():
        for choice in choices:
            # meta needs senders (covered above), sip:<trunk> a trunk (tests/test_sip_route.py), queue:<queue_id> an id
            if (name, choice) not in {
                ("upstream", "meta"),
                ("inbound_route", "sip:<trunk>"),
                ("inbound_route", "queue:<queue_id>"),
            }:
                assert getattr(load_settings(None, {name: choice}, environ={}), name) == choice


def test_users_calls_to_a_business_number_can_go_to_a_queue_created_later(tmp_path: Path) -> None:
    config = tmp_path / "wacall.toml"
    config.write_text('inbound_route = "queue:support"\n[inbound_routes]\n"447911123456" = "queue:sales"\n')
    settings = load_settings(str(config), {}, environ={})
    assert settings.inbound_route == "queue:support"
    assert settings.inbound_routes == (("+447911123456", "queue:sales"),)  # the number in E.164
