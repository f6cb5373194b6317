"""Fuzzing the webhook parser (pure) and the real webhook endpoint of a running service (signed bodies).

Every payload kind wacall parses is a seed (permission reply variants, text message, message status, calls
connect / terminate / statuses, account_update); hypothesis mutates any of their fields (replace with a hostile
or random value, delete, or add), and also sends raw garbage and deep nesting. What must hold:
- the parser either returns items or raises MalformedWebhook, and what it returns is storable and in the window;
- the endpoint answers only 2xx or 4xx; a refused body changes nothing (no event, same permission, same calls);
- the service stays healthy: the health check serves and a normal delivery still applies.

Bounded: WACALL_FUZZ_EXAMPLES scales the budget (default 1: the whole file in well under a minute);
WACALL_FUZZ_REPORT=<file> writes the figures (inputs of each kind, status codes seen) as JSON.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from conftest import BUSINESS, USER, settings_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wacall_client.testing.v1 import clock_pb2, clock_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.app import Addresses, Service
from wacall.numbers import parse_number
from wacall.upstreams.meta import wire as payloads
from wacall.upstreams.meta.accounts import MetaAccount
from wacall.upstreams.meta.webhook_payloads import (
    CallEventItem,
    MalformedWebhook,
    PermissionReply,
    TimeWindow,
    parse,
)
from wacall.upstreams.meta.webhooks import SIGNATURE_HEADER, WEBHOOK_PATH, sign

T = TypeVar("T")

SCALE = float(os.environ.get("WACALL_FUZZ_EXAMPLES", "1"))
FIGURES: Counter[tuple[str, str, str]] = Counter()  # (suite, input kind, outcome) → count


def budget(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


@pytest.fixture(scope="module", autouse=True)
def report_figures() -> Iterator[None]:
    yield
    figures: dict[str, dict[str, dict[str, int]]] = {}
    for (suite, kind, outcome), count in sorted(FIGURES.items()):
        figures.setdefault(suite, {}).setdefault(kind, {})[outcome] = count
    print("\nwebhook fuzz figures:", json.dumps(figures, indent=1, sort_keys=True))
    target = os.environ.get("WACALL_FUZZ_REPORT")
    if target:
        Path(target).write_text(json.dumps(figures, indent=1, sort_keys=True))


# --- seeds: one body per payload kind wacall parses ----------------------------------------------------------------

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


def _calls(account: MetaAccount, call: dict[str, Any], errors: list[Any] | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {"contacts": [{"profile": {"name": "U"}, "wa_id": USER[1:]}], "calls": [call]}
    if errors is not None:
        value["errors"] = errors
    return payloads.envelope(account, "calls", value)


def _unix(at: datetime) -> str:
    return str(int(at.timestamp()))


def _seeds() -> dict[str, Callable[[MetaAccount, datetime], dict[str, Any]]]:
    user = USER[1:]
    business = BUSINESS[1:]

    def reply(**options: Any) -> Callable[[MetaAccount, datetime], dict[str, Any]]:
        return lambda account, now: payloads.permission_reply(
            account, user, f"wamid.F{uuid.uuid4().hex}", now, **options
        )

    def reply_without_type(account: MetaAccount, now: datetime) -> dict[str, Any]:
        body = reply(accept=True, expires_at=now + timedelta(days=7))(account, now)
        del body["entry"][0]["changes"][0]["value"]["messages"][0]["type"]
        return body

    def call(event: str, direction: str | None, **extra: Any) -> Callable[[MetaAccount, datetime], dict[str, Any]]:
        def build(account: MetaAccount, now: datetime) -> dict[str, Any]:
            item: dict[str, Any] = {"id": f"wacid.F{uuid.uuid4().hex}", "event": event, "timestamp": _unix(now)}
            item |= (
                {"from": user, "to": business} if direction != "BUSINESS_INITIATED" else {"from": business, "to": user}
            )
            if direction is not None:
                item["direction"] = direction
            fields = copy.deepcopy({k: v for k, v in extra.items() if not callable(v)})
            errors = fields.pop("errors", None)
            item |= {k: v(now) for k, v in extra.items() if callable(v)} | fields
            return _calls(account, item, errors)

        return build

    def call_status(status: str) -> Callable[[MetaAccount, datetime], dict[str, Any]]:
        def build(account: MetaAccount, now: datetime) -> dict[str, Any]:
            item = {"id": f"wacid.F{uuid.uuid4().hex}", "type": "call", "status": status,
                    "timestamp": _unix(now), "recipient_id": user, "biz_opaque_callback_data": "opaque"}  # fmt: skip
            return payloads.envelope(account, "calls", {"statuses": [item]})

        return build

    def restriction(info: list[dict[str, Any]] | None, number: bool = True) -> Callable[..., dict[str, Any]]:
        def build(account: MetaAccount, now: datetime) -> dict[str, Any]:
            value: dict[str, Any] = {"event": "ACCOUNT_RESTRICTION", "restriction_info": info or []}
            if number:
                value["phone_number"] = business
            change = {"field": "account_update", "value": copy.deepcopy(value)}
            entry = {"id": account.waba_id, "time": int(now.timestamp()), "changes": [change]}
            return {"object": "whatsapp_business_account", "entry": [entry]}

        return build

    return {
        "reply_temporary": lambda a, n: reply(accept=True, expires_at=n + timedelta(days=7), context_id="wamid.R")(
            a, n
        ),
        "reply_permanent": reply(accept=True, permanent=True),
        "reply_decline": reply(accept=False, context_id="wamid.R"),
        "reply_auto_revoke": reply(accept=False, automatic=True),
        "reply_callback": lambda a, n: reply(
            accept=True, automatic=True, expires_at=n + timedelta(days=7), context_id="wacid.C"
        )(a, n),
        "reply_without_type": reply_without_type,
        "text_message": lambda a, n: payloads.text_message(a, user, f"wamid.F{uuid.uuid4().hex}", n, "hello"),
        "message_status": lambda a, n: payloads.message_status(
            a, user, "wamid.R", n, "failed", 131026, "Message undeliverable"
        ),
        "call_connect_answer": call(
            "connect", "BUSINESS_INITIATED", session={"sdp_type": "answer", "sdp": SDP}, biz_opaque_callback_data="o"
        ),
        "call_connect_user": call("connect", "USER_INITIATED", session={"sdp_type": "offer", "sdp": SDP}),
        "call_connect_no_direction": call("connect", None, session={"sdp_type": "offer", "sdp": SDP}),
        "call_terminate": call(
            "terminate",
            "BUSINESS_INITIATED",
            status="COMPLETED",
            start_time=lambda n: _unix(n - timedelta(seconds=30)),
            end_time=_unix,
            duration=30,
            errors=[{"code": 138021, "message": "no media", "error_data": {"details": "x"}}],
        ),
        "call_ringing": call_status("RINGING"),
        "call_accepted": call_status("ACCEPTED"),
        "call_rejected": call_status("REJECTED"),
        "account_restricted": restriction(
            [{"restriction_type": "RESTRICTED_BUSINESS_INITIATED_CALLING", "expiration": 1}]
        ),
        "account_lifted": restriction(None),
        "account_messaging": restriction(
            [{"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION", "expiration": 1}], number=False
        ),
    }


SEEDS = _seeds()


# --- mutations ----------------------------------------------------------------------------------------------------

Path_ = tuple[str | int, ...]

NOTABLE = st.sampled_from([
    None, True, False, 0, -1, 1, 2**31, 2**63, 10**30, 1000000000000, 253402300799, 99999999999, 1.5, -0.0, 1e308,
    "", "x", "10s", "\u00b2", "\uff11\uff12", "-1", "1e9", " 1", "false", "true", "accept", "ACCEPT", "reject",
    "automatic", "offer", "answer", "USER_INITIATED", "connect", "terminate", "RINGING", "failed", "call",
    "interactive", "call_permission_reply", "\ud800", "wamid.\udfff", "5215512345678", "551187654321", "+", "0" * 40,
    [], {}, [[[]]], [{}], {"id": 1}, "a" * 5000,
])  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _parent(body: Any, path: Path_) -> Any:
    for step in path[:-1]:
        body = body[step]
    return body


@st.composite
def mutated_bodies(draw: st.DrawFn) -> tuple[str, Callable[[MetaAccount, datetime], bytes]]:
    """(kind, build(account, now) → raw body): a seed with one to three of its fields mutated."""
    kind = draw(st.sampled_from(sorted(SEEDS)))
    steps: list[tuple[str, int, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "replace", "delete", "add", "timestamp"]))
        value = draw(st.one_of(NOTABLE, JSON)) if action in ("replace", "add") else None
        if action == "timestamp":
            value = draw(st.integers(-12 * 86400, 12 * 86400))
        steps.append((action, draw(st.integers(0, 10_000)), value))

    def build(account: MetaAccount, now: datetime) -> bytes:
        body = SEEDS[kind](account, now)
        for action, pick, value in steps:
            paths = list(_paths(body))[1:]
            if not paths:
                break
            path = paths[pick % len(paths)]
            parent = _parent(body, path)
            if action == "delete":
                del parent[path[-1]]
            elif action == "add" and isinstance(parent[path[-1]], dict):
                parent[path[-1]][f"extra{pick}"] = copy.deepcopy(value)
            elif action == "add" and isinstance(parent[path[-1]], list):
                parent[path[-1]].append(copy.deepcopy(value))
            elif action == "timestamp":
                stamp = int(now.timestamp()) + value
                parent[path[-1]] = str(stamp) if pick % 2 else stamp
            else:
                parent[path[-1]] = copy.deepcopy(value)
        return json.dumps(body).encode()  # surrogates travel as \u escapes, as a fuzzer's would

    return kind, build


@st.composite
def garbage_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """Raw bytes, JSON that is no webhook, JSON constants and deep nesting."""
    kind = draw(st.sampled_from(["bytes", "json", "constant", "deep"]))
    if kind == "bytes":
        return kind, draw(st.binary(max_size=300))
    if kind == "json":
        return kind, json.dumps({"object": "whatsapp_business_account", "entry": draw(JSON)}).encode()
    if kind == "constant":
        constant = draw(st.sampled_from(["Infinity", "-Infinity", "NaN"]))
        return kind, b'{"object":"whatsapp_business_account","entry":[{"time":' + constant.encode() + b"}]}"
    depth = draw(st.integers(500, 20_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    return kind, b'{"object":"whatsapp_business_account","entry":' + opener * depth + b"1" + closer * depth + b"}"


# --- the parser (pure) --------------------------------------------------------------------------------------------

ACCOUNT = MetaAccount(BUSINESS, "1" + BUSINESS[1:], "2" + BUSINESS[1:], "token", "secret")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WINDOW = TimeWindow(NOW, timedelta(minutes=5), timedelta(days=8), timedelta(days=366))


def _assert_storable(item: Any) -> None:
    for name in item.__slots__:
        value = getattr(item, name)
        if isinstance(value, str):
            value.encode("utf-8")
        if isinstance(value, datetime) and name not in ("expires_at", "until"):
            assert NOW - WINDOW.max_age <= value <= NOW + WINDOW.max_ahead, (name, value)
    if isinstance(item, PermissionReply) and item.expires_at is not None:
        assert item.expires_at <= NOW + WINDOW.max_expiry_ahead
    if isinstance(item, CallEventItem):
        assert all(0 <= code < 2**31 for code in item.error_codes)


def _parse_outcome(raw: bytes) -> str:
    try:
        items = parse(raw, WINDOW)
    except MalformedWebhook:
        return "refused"
    for item in items:
        _assert_storable(item)
    return "parsed"


@budget(600)
@given(mutated_bodies())
def test_the_parser_reads_or_refuses_every_mutated_body(case: tuple[str, Callable[..., bytes]]) -> None:
    kind, build = case
    FIGURES["parser", kind, _parse_outcome(build(ACCOUNT, NOW))] += 1


@budget(150)
@given(garbage_bodies())
def test_the_parser_refuses_garbage(case: tuple[str, bytes]) -> None:
    kind, raw = case
    outcome = _parse_outcome(raw)
    FIGURES["parser", f"garbage_{kind}", outcome] += 1
    assert kind not in ("constant", "deep") or outcome == "refused"


EVERY_FIELD_VALUES: list[Any] = [
    None, "", "x", -1, 10**30, 1.5, True, "\ud800", [], {}, "1000000000000", [[[[]]]],
]  # fmt: skip


def every_field_mutation(account: MetaAccount, now: datetime) -> Iterator[tuple[str, bytes]]:
    """Each field of each seed replaced in turn (values rotating over EVERY_FIELD_VALUES), and deleted."""
    turn = 0
    for kind, seed in sorted(SEEDS.items()):
        for path in list(_paths(seed(account, now)))[1:]:
            for action in ("replace", "delete"):
                body = seed(account, now)
                parent = _parent(body, path)
                if action == "delete":
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = copy.deepcopy(EVERY_FIELD_VALUES[turn % len(EVERY_FIELD_VALUES)])
                    turn += 1
                yield kind, json.dumps(body).encode()


def test_the_parser_reads_or_refuses_every_field_of_every_kind_replaced_by_every_hostile_value() -> None:
    for kind, seed in sorted(SEEDS.items()):
        for path in list(_paths(seed(ACCOUNT, NOW)))[1:]:
            for value in EVERY_FIELD_VALUES:
                body = seed(ACCOUNT, NOW)
                _parent(body, path)[path[-1]] = copy.deepcopy(value)
                FIGURES["parser", f"every_field_{kind}", _parse_outcome(json.dumps(body).encode())] += 1


# --- the real endpoint of a running service -----------------------------------------------------------------------


@dataclass
class Background:
    """A real wacall service on its own event loop thread, driven from synchronous hypothesis tests."""

    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    service: Service
    addresses: Addresses
    account: MetaAccount
    secret: bytes
    channel: grpc.Channel
    http: httpx.Client
    cursor: str = ""
    call_ids: set[str] = field(default_factory=set)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    @property
    def calling(self) -> calling_pb2_grpc.CallingServiceStub:
        return calling_pb2_grpc.CallingServiceStub(self.channel)

    def now(self) -> datetime:
        reply = clock_pb2_grpc.ClockServiceStub(self.channel).Now(clock_pb2.NowRequest())
        return reply.now.ToDatetime().replace(tzinfo=UTC)

    def post(self, raw: bytes) -> httpx.Response:
        return self.http.post(WEBHOOK_PATH, content=raw, headers={SIGNATURE_HEADER: sign(self.secret, raw)})

    def catch_up(self) -> list[pb.Event]:
        """Every event after the last one seen (the calls they name are remembered)."""
        seen: list[pb.Event] = []
        while True:
            page = list(self.calling.ListEvents(pb.ListEventsRequest(after_cursor=self.cursor, page_size=1000)).events)
            seen += page
            if page:
                self.cursor = page[-1].cursor
            if len(page) < 1000:
                break
        self.call_ids.update(e.call.call_id for e in seen if e.kind == pb.EVENT_KIND_CALL_UPDATED)
        return seen

    def permission(self) -> pb.Permission:
        return self.calling.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER))


@pytest.fixture(scope="module")
def background(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-service", daemon=True)
    thread.start()
    service = Service(settings_for(tmp_path_factory.mktemp("fuzz")))

    async def start() -> tuple[Addresses, MetaAccount]:
        addresses = await service.start()
        assert service.platform is not None
        return addresses, service.platform.provision(parse_number(BUSINESS))

    addresses, account = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=60)
    assert service.platform is not None
    running = Background(
        loop, thread, service, addresses, account, service.platform.app_secret.encode(),
        grpc.insecure_channel(addresses.grpc), httpx.Client(base_url=f"http://{addresses.http}", timeout=30.0),
    )  # fmt: skip
    try:
        yield running
    finally:
        running.http.close()
        running.channel.close()
        running.run(service.stop(grace=0.5))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def _deliver_and_check(background: Background, suite: str, kind: str, raw: bytes) -> None:
    background.catch_up()
    known_calls = set(background.call_ids)
    permission = background.permission()
    response = background.post(raw)
    FIGURES[suite, kind, str(response.status_code)] += 1
    assert 200 <= response.status_code < 500, (response.status_code, response.text, raw[:500])
    if response.status_code >= 400:
        # A refused body changes nothing: no event, no call, the same permission. (Calls that an earlier accepted
        # body created may still be updated by their media work, which runs after that delivery's commit.)
        # The permission first, then the events: a call that ended in between has its event committed with it.
        after = background.permission()
        changes = background.catch_up()
        assert all(e.kind == pb.EVENT_KIND_CALL_UPDATED and e.call.call_id in known_calls for e in changes), changes
        if not changes:  # else a known call moved (ended, say), and with it whether a call is in progress
            assert after == permission


@budget(150)
@given(mutated_bodies())
def test_the_endpoint_answers_every_mutated_signed_body_with_2xx_or_4xx(
    background: Background, case: tuple[str, Callable[..., bytes]]
) -> None:
    kind, build = case
    _deliver_and_check(background, "endpoint", kind, build(background.account, background.now()))


@budget(40)
@given(garbage_bodies())
def test_the_endpoint_refuses_signed_garbage(background: Background, case: tuple[str, bytes]) -> None:
    kind, raw = case
    _deliver_and_check(background, "endpoint", f"garbage_{kind}", raw)


def test_the_endpoint_answers_every_field_of_every_kind_mutated_with_2xx_or_4xx(background: Background) -> None:
    for kind, raw in every_field_mutation(background.account, background.now()):
        _deliver_and_check(background, "endpoint", f"every_field_{kind}", raw)


def test_every_seed_is_accepted_and_the_service_stays_healthy_after_the_fuzzing(background: Background) -> None:
    # Runs after the fuzz tests of this module (file order): the service must still serve and apply.
    health = health_pb2_grpc.HealthStub(background.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    for kind, seed in SEEDS.items():
        response = background.post(json.dumps(seed(background.account, background.now())).encode())
        FIGURES["endpoint", f"seed_{kind}", str(response.status_code)] += 1
        assert response.status_code == 200, (kind, response.text)
    background.catch_up()
    text = payloads.text_message(background.account, USER[1:], "wamid.HEALTHY", background.now(), "x")
    assert background.post(json.dumps(text).encode()).json()["applied"] == 1
    received = [e for e in background.catch_up() if e.kind != pb.EVENT_KIND_CALL_UPDATED]
    assert [(e.kind, e.attributes["message_id"]) for e in received] == [
        (pb.EVENT_KIND_USER_MESSAGE_RECEIVED, "wamid.HEALTHY")
    ]
