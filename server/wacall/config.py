"""Settings: defaults, then a TOML file (--config), then WACALL_* environment variables, then command-line flags."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wacall.confinement import OutsideDirectory, inside
from wacall.numbers import InvalidNumber, parse_number
from wacall.rules.policy import PRESETS, Policy, PolicyError, load_policy
from wacall.sipdoor.trunks import Trunk, TrunkConfigError, parse_trunks
from wacall.upstreams.base import Account
from wacall.upstreams.meta.accounts import InvalidSenderConfig, sender_from_config
from wacall_adapters.queue import IDENTIFIER as QUEUE_ID
from wacall_adapters.registry import INBOUND_ROUTES

# The inbound routes written NAME:ARGUMENT, as they are shown.
ROUTE_SETTING_FORMS: Mapping[str, str] = {"sip": "sip:<trunk>", "queue": "queue:<queue_id>"}


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    grpc_address: str = "127.0.0.1:50051"
    # gRPC over TLS: a PEM certificate (chain) and its key, both or neither; with a client CA, mutual TLS (clients
    # must present a certificate that CA signed).
    grpc_tls_cert: str = ""
    grpc_tls_key: str = ""
    grpc_tls_client_ca: str = ""
    http_address: str = "127.0.0.1:8080"
    db: str = "sqlite:///var/wacall.db"
    upstream: str = "sim"  # sim | meta
    clock: str = "system"  # system | manual
    policy: str = "seed"
    policy_overrides: Mapping[str, Any] = field(default_factory=dict)
    # Bearer token required on every gRPC call except health; empty = no auth (development).
    auth_token: str = ""
    webhook_verify_token: str = ""
    graph_base_url: str = "https://graph.facebook.com/v23.0"
    max_webhook_bytes: int = 1024 * 1024
    senders: tuple[Account, ...] = ()  # from [[senders]]: Meta's accounts
    # Where the simulator keeps its state between runs ("" = in memory only).
    sim_state: str = "var/simulator.json"
    # The gRPC address of a simulator running on its own (`wacall simulate`); "" = the embedded simulator.
    sim_address: str = ""
    # The bearer token sent to that simulator (its own --auth-token); "" = none.
    sim_auth_token: str = ""
    # The simulated client drops a call with no audio from the business for this long at start / mid-call.
    sim_no_media_at_start_seconds: float = 20.0
    sim_no_media_mid_call_seconds: float = 30.0
    # End a call when the user has sent no audio for this long (MEDIA-1).
    media_timeout_seconds: float = 20.0
    # A permission request still unsettled this long after its limits were reserved has no live sender (killed,
    # timed out): recovery asks the platform and settles it. Longer than any send can take.
    reservation_grace_seconds: float = 60.0
    # A call's owner (the process running its media) renews its lease on the call a few times per lease; calls
    # whose owner stopped renewing for this long are ended by another process, or at start-up.
    call_lease_seconds: float = 15.0
    # This process's name among those sharing the database. A process that starts again under the same name ends
    # the calls its previous run left open at once, without waiting for their leases. Empty: the host name and the
    # gRPC port (none when the port is picked at random: then only the lease tells).
    instance_name: str = ""
    # The gRPC address other replicas reach this process at, to forward call control for the calls it owns. Empty:
    # the bound gRPC address, or the host name and the bound port when it listens on a wildcard address.
    advertise_address: str = ""
    # Threads for audio encoding and file decoding (the event loop's default executor).
    worker_threads: int = 8
    # Where calls from users go: "announcement" (inbound_audio_file, or a tone) or "media_stream" (a program
    # attaches with CallMedia after seeing the call in WatchEvents).
    inbound_route: str = "announcement"
    inbound_audio_file: str = ""
    # Per business number (E.164), the route its users' calls take instead of inbound_route ([inbound_routes] in
    # the configuration file, e.g. "+447911123456" = "queue:sales").
    inbound_routes: tuple[tuple[str, str], ...] = ()
    # The only directories files named in an RPC may be read from (audio) and written to (recordings).
    media_dir: str = "var/media"
    recordings_dir: str = "var/recordings"
    log_level: str = "INFO"
    log_format: str = "text"  # text | json (one object per line, for log pipelines)
    # The media engine bridging `webrtc` calls: "" = a local rtpengine when one is installed (else in process),
    # "host:port,..." = external rtpengines' ng ports, "off" = always in process (aiortc).
    rtpengine: str = ""
    # Webhook timestamps: refused when further ahead of our clock than the skew, or older than the platform's
    # retries (up to 7 days) plus a margin; expirations (permissions, pauses) no further ahead than the last bound.
    webhook_max_clock_skew_seconds: float = 300.0
    webhook_max_age_seconds: float = 8 * 24 * 3600.0
    webhook_max_expiry_ahead_seconds: float = 366 * 24 * 3600.0
    # The webhook HTTP server: time to receive a request's line and headers, then its body; how long an idle
    # keep-alive connection stays open; how many connections it holds at once (more are refused with 503).
    http_header_timeout_seconds: float = 10.0
    http_body_timeout_seconds: float = 30.0
    http_idle_timeout_seconds: float = 75.0
    http_max_connections: int = 1000
    # The SIP front door: UDP and TCP on one HOST:PORT ("" = off), TLS on its own with a certificate and key.
    sip_address: str = ""
    sip_tls_address: str = ""
    sip_tls_cert: str = ""
    sip_tls_key: str = ""
    sip_trunks: tuple[Trunk, ...] = ()
    # The key of the front door's digest nonces: the same on every replica so each accepts the others' ("" = a
    # random one per process). Never derived from the trunks' passwords: a nonce would let anyone test guesses.
    sip_nonce_secret: str = ""
    # How long a PBX may ring on wacall's INVITE (the sip route) before the leg is cancelled as a 408.
    sip_answer_timeout_seconds: float = 60.0  # from [[sip_trunks]]: the PBXs allowed to call through the front door
    # How long a PBX may ring on a user's call (inbound sip) before it is cancelled and the call rejected: the
    # platform ends a user's call it has not seen accepted within about 30 s, so never longer than that.
    sip_inbound_answer_timeout_seconds: float = 25.0

    def load_policy(self) -> Policy:
        try:
            return load_policy(self.policy, self.policy_overrides)
        except PolicyError as exc:
            raise ConfigError(str(exc)) from None


# The platform ends a user's call it has not seen accepted within roughly 30-60 s: a PBX rings no longer than this.
MAX_SIP_INBOUND_ANSWER_TIMEOUT = 30.0

# Settings that can come from the environment and the command line (name → type).
SCALARS: Mapping[str, type] = {
    "grpc_address": str,
    "grpc_tls_cert": str,
    "grpc_tls_key": str,
    "grpc_tls_client_ca": str,
    "http_address": str,
    "db": str,
    "upstream": str,
    "clock": str,
    "policy": str,
    "auth_token": str,
    "webhook_verify_token": str,
    "graph_base_url": str,
    "max_webhook_bytes": int,
    "sim_state": str,
    "sim_address": str,
    "sim_auth_token": str,
    "sim_no_media_at_start_seconds": float,
    "sim_no_media_mid_call_seconds": float,
    "media_timeout_seconds": float,
    "reservation_grace_seconds": float,
    "call_lease_seconds": float,
    "instance_name": str,
    "advertise_address": str,
    "worker_threads": int,
    "inbound_route": str,
    "inbound_audio_file": str,
    "media_dir": str,
    "recordings_dir": str,
    "log_level": str,
    "log_format": str,
    "rtpengine": str,
    "webhook_max_clock_skew_seconds": float,
    "webhook_max_age_seconds": float,
    "webhook_max_expiry_ahead_seconds": float,
    "http_header_timeout_seconds": float,
    "http_body_timeout_seconds": float,
    "http_idle_timeout_seconds": float,
    "http_max_connections": int,
    "sip_address": str,
    "sip_tls_address": str,
    "sip_tls_cert": str,
    "sip_tls_key": str,
    "sip_answer_timeout_seconds": float,
    "sip_inbound_answer_timeout_seconds": float,
    "sip_nonce_secret": str,
}


# The values a setting can take, where they are a fixed list (checked in load_settings, shown in --help).
CHOICES: Mapping[str, tuple[str, ...]] = {
    "upstream": ("sim", "meta"),
    "clock": ("system", "manual"),
    "policy": tuple(sorted(PRESETS)),
    "inbound_route": tuple(ROUTE_SETTING_FORMS.get(r, r) for r in INBOUND_ROUTES),
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR"),
    "log_format": ("text", "json"),
}

# What each setting does, for `wacall serve --help`.
DESCRIPTIONS: Mapping[str, str] = {
    "grpc_address": "where the gRPC API listens (host:port; port 0 picks a free one)",
    "grpc_tls_cert": "the PEM certificate (chain) the gRPC API presents over TLS (empty: plaintext)",
    "grpc_tls_key": "the PEM private key of --grpc-tls-cert",
    "grpc_tls_client_ca": (
        "mutual TLS: the PEM CA certificate(s) gRPC clients' certificates must be signed by (needs --grpc-tls-cert)"
    ),
    "http_address": "where the webhook endpoint listens (host:port)",
    "db": "the ledger's database URL (sqlite:///relative.db, sqlite:////absolute.db or "
    "postgresql://USER:PASS@HOST:PORT/DB)",
    "upstream": "the WhatsApp platform: the embedded simulator, or Meta's Graph API (needs [[senders]] in --config)",
    "clock": "real time, or a manual clock moved with wacall clock advance / ClockService (resumes across restarts)",
    "policy": "the named rule set (limits, windows, country deny-list); override numbers in [policy_overrides]",
    "auth_token": "bearer token required on every gRPC call but health (empty: no auth, for development)",
    "webhook_verify_token": "the token Meta's webhook verification handshake (GET) must present",
    "graph_base_url": "Meta's Graph API base URL, with version (--upstream meta)",
    "max_webhook_bytes": "largest webhook body accepted (bigger ones get HTTP 413)",
    "sim_state": "file where the simulator keeps its state between runs (empty: memory only)",
    "sim_address": (
        "with --upstream sim: the gRPC address (host:port) of a simulator started with wacall simulate, whose "
        "accounts, app secret and Graph URL are used instead of an embedded simulator's; this process then serves "
        "no SimulatorService (empty: the embedded simulator)"
    ),
    "sim_auth_token": "the bearer token sent to the simulator at sim_address (its wacall simulate --auth-token)",
    "sim_no_media_at_start_seconds": "the simulated phone drops a call with no audio from the business this long",
    "sim_no_media_mid_call_seconds": "the simulated phone drops a call whose business audio stops this long mid-call",
    "media_timeout_seconds": "end a call after this long without audio from the user",
    "reservation_grace_seconds": (
        "a permission request unsettled this long (its process was killed, its send timed out) is settled by "
        "recovery; longer than any send can take"
    ),
    "call_lease_seconds": (
        "the process running a call renews its lease on it a few times per lease; a call whose process stopped "
        "renewing (killed, cut off) this long is ended by another process sharing the database, or at start-up"
    ),
    "instance_name": (
        "this process's name among those sharing the database; restarted under the same name, it ends the calls "
        "its previous run left open at once (default: host name and gRPC port)"
    ),
    "advertise_address": (
        "the gRPC address (host:port) other replicas reach this process at to forward control of the calls it "
        "owns (default: the bound gRPC address; the host name and port when it listens on a wildcard address)"
    ),
    "worker_threads": "threads for audio encoding and file decoding",
    "inbound_route": (
        "what answers a user's call: an announcement, a CallMedia stream program, a PBX on a SIP trunk "
        "(sip:<trunk>, answered when the PBX answers), or a contact-centre queue (queue:<queue_id>: answered at "
        "once, hold audio until an agent takes it); per business number in [inbound_routes] of --config"
    ),
    "inbound_audio_file": "the announcement played to users who call, a file in media_dir (empty: a tone)",
    "media_dir": (
        "the directory audio files named in an RPC or in inbound_audio_file are read from (created at start); "
        "nothing outside it is read"
    ),
    "recordings_dir": "the directory record_to files are written in (created at start); nothing outside it is written",
    "log_level": "how much to log",
    "log_format": "text lines for people, or json: one object per line (time, level, logger, message, fields)",
    "rtpengine": (
        "the media engine that bridges webrtc calls: external rtpengines' ng addresses (host:port, comma-separated; "
        "each call pinned to one, a dead one out of rotation), 'off' to bridge in this process (aiortc), or empty "
        "for a local rtpengine on loopback when one is installed"
    ),
    "webhook_max_clock_skew_seconds": "webhook timestamps further ahead of our clock than this are refused (HTTP 400)",
    "webhook_max_age_seconds": "webhook timestamps older than this are refused (the platform retries for 7 days)",
    "webhook_max_expiry_ahead_seconds": "permission or pause expirations further ahead than this are refused",
    "http_header_timeout_seconds": "a webhook connection must send its request line and headers within this",
    "http_body_timeout_seconds": "a webhook request must send its body within this (else HTTP 408)",
    "http_idle_timeout_seconds": "an idle keep-alive webhook connection is closed after this",
    "http_max_connections": "webhook connections held at once; more are refused with HTTP 503",
    "sip_address": (
        "where the SIP front door listens for UDP and TCP (host:port; port 0 picks a free one; empty: no SIP); "
        "trunks come from [[sip_trunks]] in --config"
    ),
    "sip_tls_address": "where the SIP front door listens for TLS (host:port; needs --sip-tls-cert and --sip-tls-key)",
    "sip_tls_cert": "the PEM certificate (chain) the SIP front door presents over TLS",
    "sip_tls_key": "the PEM private key of --sip-tls-cert",
    "sip_nonce_secret": (
        "the key the SIP front door signs its digest nonces with; give every replica the same random value "
        "(empty: a random key per process, so a PBX's answer to one replica's challenge is challenged again elsewhere)"
    ),
    "sip_answer_timeout_seconds": (
        "how long a PBX may ring on wacall's INVITE for the sip route before it is cancelled and counted as 408 "
        "(users' calls: --sip-inbound-answer-timeout-seconds)"
    ),
    "sip_inbound_answer_timeout_seconds": (
        "how long a PBX may ring on a user's call (--inbound-route sip:<trunk>) before it is cancelled (408) and the "
        f"call rejected on the platform; at most {MAX_SIP_INBOUND_ANSWER_TIMEOUT:g}, since the platform ends a "
        "user's call not accepted within about 30 s"
    ),
}


def _sender(item: Mapping[str, Any], index: int) -> Account:
    try:
        return sender_from_config(item, f"senders[{index}]")
    except InvalidSenderConfig as exc:
        raise ConfigError(str(exc)) from None


def engine_addresses(setting: str) -> list[tuple[str, int]] | None:
    """The external rtpengines `setting` names (host:port, comma-separated); [] for "off"; None for a local one."""
    setting = setting.strip()
    if not setting:
        return None
    if setting == "off":
        return []
    addresses = []
    for item in setting.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"rtpengine: {item.strip()!r} is not host:port (an rtpengine's ng address), nor 'off'")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def load_settings(
    config_file: str | None, flags: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Settings:
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or environ.get("WACALL_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path}: {exc}") from None
        unknown = set(data) - set(SCALARS) - {"senders", "policy_overrides", "sip_trunks", "inbound_routes"}
        if unknown:
            raise ConfigError(f"unknown settings in {path}: {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in data.items() if k in SCALARS})
        values["policy_overrides"] = data.get("policy_overrides", {})
        values["senders"] = tuple(_sender(s, i) for i, s in enumerate(data.get("senders", [])))
        values["inbound_routes"] = _inbound_routes(data.get("inbound_routes", {}), path)
        if "sip_trunks" in data:
            try:
                values["sip_trunks"] = parse_trunks(data["sip_trunks"])
            except TrunkConfigError as exc:
                raise ConfigError(f"configuration file {path}: {exc}") from None
    for name, kind in SCALARS.items():
        env = environ.get(f"WACALL_{name.upper()}")
        if env is not None:
            try:
                values[name] = kind(env)
            except ValueError:
                expected = {int: "an integer", float: "a number"}.get(kind, "text")
                raise ConfigError(f"WACALL_{name.upper()} must be {expected}, got {env!r}") from None
    values.update({k: v for k, v in flags.items() if v is not None and k in SCALARS})
    settings = Settings(**values)
    if settings.upstream not in ("sim", "meta"):
        raise ConfigError(f"upstream must be 'sim' or 'meta', got {settings.upstream!r}")
    _check_inbound_route(settings)
    if settings.inbound_audio_file:
        try:
            audio_file = inside(settings.media_dir, settings.inbound_audio_file)
        except OutsideDirectory as error:
            raise ConfigError(f"inbound_audio_file: {error}") from None
        if not Path(audio_file).is_file():
            raise ConfigError(
                f"inbound_audio_file {settings.inbound_audio_file} does not exist in {settings.media_dir}"
            )
    engine_addresses(settings.rtpengine)
    _check_sim_address(settings)
    if settings.clock not in ("system", "manual"):
        raise ConfigError(f"clock must be 'system' or 'manual', got {settings.clock!r}")
    if settings.reservation_grace_seconds <= 0:
        raise ConfigError(f"reservation_grace_seconds must be positive, got {settings.reservation_grace_seconds}")
    if settings.log_format not in CHOICES["log_format"]:
        raise ConfigError(f"log_format must be 'text' or 'json', got {settings.log_format!r}")
    if settings.log_level.upper() not in CHOICES["log_level"]:
        raise ConfigError(f"log_level must be one of {', '.join(CHOICES['log_level'])}, got {settings.log_level!r}")
    if settings.upstream == "meta" and not settings.senders:
        raise ConfigError("--upstream meta needs at least one [[senders]] entry in the configuration file")
    for name in ("call_lease_seconds", "webhook_max_clock_skew_seconds", "webhook_max_age_seconds",
                 "webhook_max_expiry_ahead_seconds", "http_header_timeout_seconds", "http_body_timeout_seconds",
                 "http_idle_timeout_seconds", "http_max_connections", "sip_answer_timeout_seconds"):  # fmt: skip
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{name} must be greater than 0, got {getattr(settings, name)!r}")
    _check_sip(settings)
    _check_grpc_tls(settings)
    _check_advertise_address(settings.advertise_address)
    if not 0 < settings.sip_inbound_answer_timeout_seconds <= MAX_SIP_INBOUND_ANSWER_TIMEOUT:
        raise ConfigError(
            "sip_inbound_answer_timeout_seconds must be greater than 0 and at most "
            f"{MAX_SIP_INBOUND_ANSWER_TIMEOUT:g} (the platform ends a user's call not accepted within about 30 s), "
            f"got {settings.sip_inbound_answer_timeout_seconds!r}"
        )
    settings.load_policy()
    return settings


def sip_address(setting: str, name: str) -> tuple[str, int] | None:
    """The HOST:PORT a SIP setting names (None when empty); ConfigError naming the setting when it is not one."""
    setting = setting.strip()
    if not setting:
        return None
    host, _, port = setting.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{name}: {setting!r} is not host:port, e.g. 0.0.0.0:5060")
    return host.strip("[]"), int(port)


def _check_advertise_address(address: str) -> None:
    """Another replica dials it: a host and a real port (a wildcard host or port 0 reaches nobody)."""
    if not address:
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or host in ("0.0.0.0", "::") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"advertise_address must be host:port that other replicas can dial (a port 1-65535, not a wildcard "
            f"host), got {address!r}"
        )


def _check_sim_address(settings: Settings) -> None:
    if not settings.sim_address.strip():
        return
    if settings.upstream != "sim":
        raise ConfigError("sim_address names a simulator: it needs --upstream sim")
    host, _, port = settings.sim_address.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"sim_address: {settings.sim_address!r} is not host:port (wacall simulate's gRPC address)")
    if settings.senders:
        raise ConfigError(
            "[[senders]] are registered with the embedded simulator only: a simulator given by sim_address "
            "provisions its own accounts (wacall simulate --business-number)"
        )


def _check_sip(settings: Settings) -> None:
    sip_address(settings.sip_address, "sip_address")
    tls = {"sip_tls_address": settings.sip_tls_address, "sip_tls_cert": settings.sip_tls_cert,
           "sip_tls_key": settings.sip_tls_key}  # fmt: skip
    given = [name for name, value in tls.items() if value.strip()]
    if given and len(given) != len(tls):
        missing = [name for name in tls if name not in given]
        raise ConfigError(
            f"SIP over TLS needs sip_tls_address, sip_tls_cert and sip_tls_key: {', '.join(missing)} missing"
        )
    if given:
        sip_address(settings.sip_tls_address, "sip_tls_address")
        for name in ("sip_tls_cert", "sip_tls_key"):
            if not Path(tls[name]).is_file():
                raise ConfigError(f"{name}: {tls[name]} is not a readable file")


def _check_grpc_tls(settings: Settings) -> None:
    """A certificate and its key, both or neither; a client CA only on top of them; every file readable."""
    cert, key, client_ca = settings.grpc_tls_cert.strip(), settings.grpc_tls_key.strip(), settings.grpc_tls_client_ca
    if bool(cert) != bool(key):
        missing = "grpc_tls_key" if cert else "grpc_tls_cert"
        raise ConfigError(f"gRPC over TLS needs both grpc_tls_cert and grpc_tls_key: {missing} missing")
    if client_ca.strip() and not cert:
        raise ConfigError("grpc_tls_client_ca (mutual TLS) needs grpc_tls_cert and grpc_tls_key too")
    for name in ("grpc_tls_cert", "grpc_tls_key", "grpc_tls_client_ca"):
        path = getattr(settings, name).strip()
        if path and not Path(path).is_file():
            raise ConfigError(f"{name}: {path} is not a readable file")


def _check_inbound_route(settings: Settings) -> None:
    _check_route_setting(settings.inbound_route, "inbound_route", settings)
    for business, route in settings.inbound_routes:
        _check_route_setting(route, f"inbound_routes {business!r}", settings)


def _check_route_setting(route: str, where: str, settings: Settings) -> None:
    """`NAME`, `sip:<trunk>` naming one of the [[sip_trunks]], or `queue:<queue_id>` (the queue itself may be
    created later through the API)."""
    name, colon, argument = route.partition(":")
    if name not in INBOUND_ROUTES or (name in ROUTE_SETTING_FORMS) != bool(colon):
        choices = " or ".join(repr(ROUTE_SETTING_FORMS.get(r, r)) for r in INBOUND_ROUTES)
        raise ConfigError(f"{where} must be {choices}, got {route!r}")
    if name == "sip" and argument not in {trunk.name for trunk in settings.sip_trunks}:
        known = ", ".join(trunk.name for trunk in settings.sip_trunks) or "none in the configuration file"
        raise ConfigError(f"{where} {route}: no [[sip_trunks]] entry is named {argument!r} (trunks: {known})")
    if name == "queue" and not QUEUE_ID.fullmatch(argument):
        raise ConfigError(f"{where} {route}: a queue id is 1 to 64 letters, digits, '.', '_' or '-'")


def _inbound_routes(table: Any, path: str) -> tuple[tuple[str, str], ...]:
    """`[inbound_routes]`: business number → route setting, the numbers in E.164 (the routes checked later)."""
    if not isinstance(table, dict):
        raise ConfigError(f'configuration file {path}: [inbound_routes] must be a table of number = "route"')
    routes: dict[str, str] = {}
    for number, route in table.items():
        try:
            business = parse_number(number, "business number").e164
        except InvalidNumber as error:
            raise ConfigError(f"configuration file {path}: [inbound_routes] {number!r}: {error}") from None
        if not isinstance(route, str):
            raise ConfigError(f"configuration file {path}: [inbound_routes] {number!r} must be a route name")
        if business in routes:
            raise ConfigError(f"configuration file {path}: [inbound_routes] names {business} twice")
        routes[business] = route
    return tuple(sorted(routes.items()))
