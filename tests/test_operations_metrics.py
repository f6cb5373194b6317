"""/metrics, /healthz and /readyz on the HTTP address: Prometheus text whose counters move as the service acts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import BUSINESS, US_BUSINESS, USER, Running, duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import contact_center_model_pb2 as m
from wacall_client.v1 import contact_center_pb2_grpc

from wacall.health import start_following_readiness
from wacall.metrics import LiveState, Metrics
from wacall.operations import InstrumentedStore, InstrumentedUpstream, RpcObserver
from wacall.store import CallInProgress, Pair, StoredCall, open_store
from wacall.upstreams.base import UpstreamUnavailable
from wacall.upstreams.meta import wire
from wacall.upstreams.meta.accounts import MetaAccount
from wacall.upstreams.meta.graph import GraphClient
from wacall.upstreams.meta.upstream import MetaUpstream
from wacall.upstreams.meta.webhooks import SIGNATURE_HEADER, WEBHOOK_PATH, sign

GET_PERMISSION = "/wacall.v1.CallingService/GetPermission"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(wacall: Running) -> Samples:
    """Every sample of /metrics, parsed as Prometheus text: (name, labels) → value."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://{wacall.addresses.http}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, sample_labels), v in samples.items() if n == name and wanted <= sample_labels)


async def test_metrics_parse_as_prometheus_text_and_rpcs_count_by_method_code_and_latency(wacall: Running) -> None:
    before = await scrape(wacall)
    await wacall.permission()
    await wacall.permission()
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await wacall.permission(user="not a number")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = await scrape(wacall)
    ok = {"method": GET_PERMISSION, "code": "OK"}
    assert value(after, "wacall_grpc_requests_total", **ok) - value(before, "wacall_grpc_requests_total", **ok) == 2
    invalid = {"method": GET_PERMISSION, "code": "INVALID_ARGUMENT"}
    assert (
        value(after, "wacall_grpc_requests_total", **invalid)
        == value(before, "wacall_grpc_requests_total", **invalid) + 1
    )
    count = "wacall_grpc_request_duration_seconds_count"
    assert value(after, count, method=GET_PERMISSION) == value(before, count, method=GET_PERMISSION) + 3
    # Store transactions are timed (each GetPermission reads in one).
    transactions = "wacall_store_transaction_duration_seconds_count"
    assert value(after, transactions) >= value(before, transactions) + 2
    # No label carries a phone number.
    assert not any(USER in label or USER[1:] in label for _, labels in after for _, label in labels)


async def test_calls_refused_by_the_token_are_counted_as_unauthenticated(make_service) -> None:  # type: ignore[no-untyped-def]
    running: Running = await make_service(auth_token="s3cret-token")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await running.calling.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER))
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    samples = await scrape(running)
    assert value(samples, "wacall_grpc_requests_total", method=GET_PERMISSION, code="UNAUTHENTICATED") == 1


async def test_rule_decisions_count_by_action_outcome_and_reason_and_upstream_requests_are_timed(
    wacall: Running,
) -> None:
    await wacall.behave(USER, sim_pb.IGNORE)
    await wacall.request()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await wacall.request(business=US_BUSINESS)  # the default policy denies business-initiated calling there
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    samples = await scrape(wacall)
    assert value(samples, "wacall_rule_decisions_total", action="request", outcome="allowed", reason="") == 1
    refusals = {
        dict(labels)["reason"]: v
        for (name, labels), v in samples.items()
        if name == "wacall_rule_decisions_total" and ("outcome", "refused") in labels
    }
    assert sum(refusals.values()) == 1 and all(refusals)  # one refusal, with its reason
    sends = "wacall_upstream_request_duration_seconds_count"
    assert value(samples, sends, operation="send_permission_request") == 1
    assert value(samples, "wacall_upstream_errors_total", operation="send_permission_request", kind="refused") == 0


async def test_an_unreachable_platform_counts_as_upstream_errors_by_operation() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics = Metrics()
    upstream = InstrumentedUpstream(MetaUpstream(GraphClient(f"http://127.0.0.1:{port}/v23.0")), metrics)
    account = MetaAccount(BUSINESS, "1447911123456", "2447911123456", "token", "secret").account()
    with pytest.raises(UpstreamUnavailable):
        await upstream.call_permissions(account, USER[1:])
    await upstream.close()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
    }
    assert value(samples, "wacall_upstream_errors_total", operation="call_permissions", kind="unavailable") == 1
    assert value(samples, "wacall_upstream_request_duration_seconds_count", operation="call_permissions") == 1


async def test_store_failures_count_by_error_type_but_a_refusal_inside_a_transaction_does_not(
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    store = InstrumentedStore(open_store(f"sqlite:///{tmp_path / 'ledger.db'}"), metrics)

    def refuse(tx: object) -> None:
        raise LookupError("the rules say no")

    with pytest.raises(LookupError):
        await store.transaction(refuse)
    assert await store.transaction(lambda tx: 42) == 42
    await store.close()
    with pytest.raises(Exception) as failed:
        await store.last_cursor()  # closed: the backend cannot answer
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
    }
    assert value(samples, "wacall_store_errors_total", error=type(failed.value).__name__) == 1
    assert total(samples, "wacall_store_errors_total") == 1
    assert value(samples, "wacall_store_transaction_duration_seconds_count") == 2


async def test_webhooks_count_by_kind_and_result_including_refused_ones(wacall: Running) -> None:
    await wacall.behave(USER, sim_pb.ACCEPT_TEMPORARY)
    await wacall.request()
    await wacall.wait_for_state(pb.PERMISSION_STATE_TEMPORARY)  # the simulator's signed webhook was applied
    url = f"http://{wacall.addresses.http}{WEBHOOK_PATH}"
    assert wacall.service.platform is not None
    secret = wacall.service.platform.app_secret.encode()
    digits = BUSINESS[1:]
    account = MetaAccount(BUSINESS, "1" + digits, "2" + digits, "", secret.decode())
    message = json.dumps(wire.text_message(account, USER[1:], "wamid.METRICS1", await wacall.now(), "hi")).encode()
    async with httpx.AsyncClient() as http:
        unsigned = await http.post(url, content=b"{}", headers={SIGNATURE_HEADER: "sha256=" + "0" * 64})
        garbage = b'{"object": "whatsapp_business_account", "entry": 7}'
        malformed = await http.post(url, content=garbage, headers={SIGNATURE_HEADER: sign(secret, garbage)})
        for _ in range(2):  # the platform retries: the second delivery applies nothing new
            delivered = await http.post(url, content=message, headers={SIGNATURE_HEADER: sign(secret, message)})
            assert delivered.status_code == 200
    assert (unsigned.status_code, malformed.status_code) == (401, 400)
    samples = await scrape(wacall)
    assert value(samples, "wacall_webhook_deliveries_total", result="duplicate") == 1
    assert value(samples, "wacall_webhook_items_total", kind="inbound_message", result="ok") == 1
    assert value(samples, "wacall_webhook_items_total", kind="inbound_message", result="duplicate") == 1
    assert value(samples, "wacall_webhook_deliveries_total", result="ok") >= 1
    assert value(samples, "wacall_webhook_items_total", kind="permission_reply", result="ok") >= 1
    assert value(samples, "wacall_webhook_deliveries_total", result="refused-signature") == 1
    assert value(samples, "wacall_webhook_deliveries_total", result="malformed") == 1


async def test_a_call_placed_and_ended_counts_by_route_and_outcome_with_its_media_frames(wacall: Running) -> None:
    await wacall.grant()
    await wacall.phone(ring=0, tone_hz=660)
    route = pb.Route(announcement=pb.AnnouncementRoute(tone_hz=440, tone_duration=duration(1.0)))
    call = await wacall.start_call(route=route)
    during = await scrape(wacall)
    assert value(during, "wacall_calls_active", route="announcement") == 1
    assert value(during, "wacall_rule_decisions_total", action="call", outcome="allowed", reason="") == 1
    ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED, timeout=20)
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED

    async def counted() -> bool:
        samples = await scrape(wacall)
        return value(samples, "wacall_calls_ended_total", route="announcement", outcome="answered") == 1

    await eventually_async(counted)
    samples = await scrape(wacall)
    assert value(samples, "wacall_calls_active", route="announcement") == 0
    # The frames the call carried, as stored once its media closed.
    stored = (await wacall.get_call(call.call_id)).media
    assert stored.frames_sent > 0 and stored.frames_received > 0
    assert value(samples, "wacall_call_media_frames_total", direction="sent") == stored.frames_sent
    assert value(samples, "wacall_call_media_frames_total", direction="received") == stored.frames_received
    assert value(samples, "wacall_upstream_request_duration_seconds_count", operation="connect_call") == 1


async def test_queue_depth_and_agents_by_presence_are_read_at_scrape_time(wacall: Running) -> None:
    contact_center = contact_center_pb2_grpc.ContactCenterServiceStub(wacall.channel)
    await contact_center.PutQueue(m.Queue(queue_id="sales"), metadata=wacall.metadata)
    await contact_center.PutAgent(m.Agent(agent_id="ann", queue_ids=["sales"]), metadata=wacall.metadata)
    samples = await scrape(wacall)
    assert ("wacall_queue_depth_calls", frozenset({("queue", "sales")})) in samples
    assert value(samples, "wacall_queue_depth_calls", queue="sales") == 0
    assert value(samples, "wacall_agents", presence="offline") == 1


async def test_each_service_has_its_own_registry(make_service) -> None:  # type: ignore[no-untyped-def]
    first: Running = await make_service()
    second: Running = await make_service(db=f"sqlite:///{Path(first.service.settings.db[10:]).parent / 'b.db'}")
    await first.permission()
    ok = {"method": GET_PERMISSION, "code": "OK"}
    assert value(await scrape(first), "wacall_grpc_requests_total", **ok) == 1
    assert value(await scrape(second), "wacall_grpc_requests_total", **ok) == 0


async def test_database_errors_raised_inside_a_transactions_function_count_and_a_second_active_call_does_not(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    metrics = Metrics()
    store = InstrumentedStore(open_store(f"sqlite:///{path}"), metrics)
    call = StoredCall("call-1", Pair(BUSINESS, USER), "outbound", datetime(2026, 12, 1, tzinfo=UTC), "ringing", {})
    await store.transaction(lambda tx: tx.save_call(call))
    with pytest.raises(CallInProgress):  # a domain outcome, raised by the store's interface
        await store.transaction(lambda tx: tx.save_call(dataclasses.replace(call, call_id="call-2")))
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE settings")  # the database breaks under the service
    with pytest.raises(sqlite3.OperationalError):
        await store.read(lambda tx: tx.setting("paused"))  # a query inside the read's function
    with pytest.raises(sqlite3.OperationalError):
        await store.transaction(lambda tx: tx.save_setting("paused", "1"))  # and inside a transaction's
    await store.close()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
    }
    assert value(samples, "wacall_store_errors_total", error="OperationalError") == 2
    assert total(samples, "wacall_store_errors_total") == 2


async def test_healthz_answers_without_the_store_and_readyz_and_grpc_health_follow_the_store(
    wacall: Running,
) -> None:
    base = f"http://{wacall.addresses.http}"
    health = health_pb2_grpc.HealthStub(wacall.channel)

    async def grpc_serving(expected: int) -> bool:
        return bool((await health.Check(health_pb2.HealthCheckRequest(service=""))).status == expected)

    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{base}/healthz")).status_code == 200
        ready = await http.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        working = wacall.service.store
        # A store whose database is gone: every call raises.
        closed = open_store(wacall.service.settings.db)
        await closed.close()
        wacall.service.store = closed
        try:
            unready = await http.get(f"{base}/readyz")
            assert unready.status_code == 503
            assert unready.json()["status"] == "not ready" and unready.json()["reason"].startswith("store")
            assert (await http.get(f"{base}/healthz")).status_code == 200
            await eventually_async(lambda: grpc_serving(health_pb2.HealthCheckResponse.NOT_SERVING))
        finally:
            wacall.service.store = working
        assert (await http.get(f"{base}/readyz")).status_code == 200
        await eventually_async(lambda: grpc_serving(health_pb2.HealthCheckResponse.SERVING))


async def test_grpc_health_is_not_serving_until_a_readiness_check_has_passed() -> None:
    for problem, expected in [("store unavailable (StoreError)", [False]), (None, [False, True])]:
        told: list[bool] = []

        async def set_serving(serving: bool, told: list[bool] = told) -> None:
            told.append(serving)

        async def check(problem: str | None = problem) -> str | None:
            return problem

        following = await start_following_readiness([check], set_serving, interval=3600)
        assert told == expected  # as the service starts: the first check has run before anything else
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        assert told == expected  # and the loop says nothing it already said


async def eventually_async(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def test_the_readme_lists_every_metric_with_its_labels() -> None:
    """The operations table in the README is the metrics' documentation: the same names and label sets."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    documented: dict[str, set[str]] = {}
    for line in readme.splitlines():
        if line.startswith("| `wacall_"):
            name, _, labels = (cell.strip() for cell in line.strip("|").split("|")[:3])
            # Label names are the backticked words outside parentheses (the values are listed inside them).
            words = (word.rstrip(",:;") for word in re.sub(r"\([^)]*\)", "", labels).split())
            documented[name.strip("`")] = {w.strip("`") for w in words if w.startswith("`") and w.endswith("`")}
    exposed: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, Counter | Histogram):
            name = metric._name + ("_total" if isinstance(metric, Counter) else "")
            exposed[name] = set(metric._labelnames)
    # Read at scrape time: the collector's families and their label names, with a sample each.
    live = LiveState(lambda: {"webrtc": 1}, lambda: {"sales": 0}, lambda: {"available": 1})
    for family in Metrics(live=live).registry.collect():
        if family.type == "gauge":
            exposed[family.name] = {label for sample in family.samples for label in sample.labels}
    assert documented == exposed


def test_a_request_cannot_forge_log_lines_through_its_numbers(caplog: pytest.LogCaptureFixture) -> None:
    observer = RpcObserver(Metrics())
    forged = pb.GetPermissionRequest(business_number="+1\nINFO wacall.rpc forged line", user_number=USER)
    with caplog.at_level("INFO", logger="wacall.rpc"):
        observer.rpc_done("/wacall.v1.CallingService/GetPermission", grpc.StatusCode.INVALID_ARGUMENT, 0.001, forged)
    [line] = [r.getMessage() for r in caplog.records if r.name == "wacall.rpc"]
    assert "\n" not in line and "\\n" in line and USER in line
