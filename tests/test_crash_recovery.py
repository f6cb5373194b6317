"""kill -9 in the middle of permission-request bursts, restart on the same database: nothing is lost or stuck.

Every burst runs many concurrent RequestPermission calls (with and without idempotency keys, across many users)
against a real `wacall serve` process, which is killed at a different point each round. After the restart the
ledger, the simulated platform (the same process's simulator, restored from its state file) and the event log must
agree: every acknowledged request is counted and was sent, nothing sent is uncounted, every sent request has its
event, no key or reservation stays pending, and every key's retry gets the same settled answer twice.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from aiohttp import web
from conftest import BUSINESS, USER, Running, refused, request_action, wait_until
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from test_process import ServeProcess
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.permissions import platform_counted_none
from wacall.upstreams.base import PlatformLimit, PlatformPermission, TemplateRef, limit_window
from wacall.upstreams.meta.accounts import MetaAccount

# Seconds after a burst starts at which the process is killed: before, during and near the end of the sends.
KILL_AFTER = (0.02, 0.1, 0.25, 0.4, 0.6, 0.9)
KEYED_USERS = 30
KEYLESS_USERS = 10
GRACE = "1"  # --reservation-grace-seconds: reservations of the killed process are settled a second after


def keyed_user(round_no: int, index: int) -> str:
    return f"+34612{round_no:02d}{index:04d}"


def keyless_user(round_no: int, index: int) -> str:
    return f"+34622{round_no:02d}{index:04d}"


@dataclass
class Round:
    acknowledged: dict[str, str] = field(default_factory=dict)  # user → message id the client was given
    keys: dict[str, str] = field(default_factory=dict)  # user → idempotency key
    unsettled_at_kill: int = 0


def unsettled(db: Path) -> tuple[int, int]:
    """(reservations, keys pending) in the database, read as any other SQLite reader would."""
    with sqlite3.connect(db) as conn:
        reservations = conn.execute("SELECT COUNT(*) FROM reservations").fetchone()[0]
        pending = conn.execute("SELECT COUNT(*) FROM idempotency WHERE outcome LIKE '%\"pending\"%'").fetchone()[0]
    return int(reservations), int(pending)


async def burst_then_kill(process: ServeProcess, round_no: int, kill_after: float) -> Round:
    result = Round()
    async with grpc.aio.insecure_channel(process.grpc) as channel:
        calling = calling_pb2_grpc.CallingServiceStub(channel)

        async def ask(user: str, key: str) -> None:
            try:
                sent = await calling.RequestPermission(
                    pb.RequestPermissionRequest(business_number=BUSINESS, user_number=user, idempotency_key=key)
                )
            except grpc.aio.AioRpcError:
                return  # the process died under it (or refused it): not acknowledged
            result.acknowledged[user] = sent.message_id

        tasks = []
        for index in range(KEYED_USERS):
            user = keyed_user(round_no, index)
            result.keys[user] = f"burst-{round_no}-{index}"
            tasks.append(asyncio.ensure_future(ask(user, result.keys[user])))
        tasks += [asyncio.ensure_future(ask(keyless_user(round_no, i), "")) for i in range(KEYLESS_USERS)]
        await asyncio.sleep(kill_after)
        process.proc.send_signal(signal.SIGKILL)
        process.proc.wait(timeout=10)
        await asyncio.gather(*tasks)
    return result


async def retry_answer(calling: calling_pb2_grpc.CallingServiceStub, user: str, key: str) -> tuple[str, str]:
    """What a retry of `key` gets: ("sent", message id) or (status, ErrorInfo reason or message)."""
    try:
        sent = await calling.RequestPermission(
            pb.RequestPermissionRequest(business_number=BUSINESS, user_number=user, idempotency_key=key)
        )
    except grpc.aio.AioRpcError as error:
        status = rpc_status.from_call(error)
        for detail in status.details if status else []:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                assert info.metadata["counted"] == "true"
                return error.code().name, info.reason
        return error.code().name, error.details() or ""
    return "sent", sent.message_id


async def check_after_restart(process: ServeProcess, db: Path, round_no: int, burst: Round) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + 30
    while unsettled(db) != (0, 0):
        assert time.monotonic() < deadline, f"round {round_no}: still unsettled {unsettled(db)}"
        await asyncio.sleep(0.1)
    async with grpc.aio.insecure_channel(process.grpc) as channel:
        calling = calling_pb2_grpc.CallingServiceStub(channel)
        sim = simulator_pb2_grpc.SimulatorServiceStub(channel)
        users = [keyed_user(round_no, i) for i in range(KEYED_USERS)]
        users += [keyless_user(round_no, i) for i in range(KEYLESS_USERS)]
        sent_before_retries: dict[str, set[str]] = {}
        for user in users:
            messages = (await sim.ListMessages(sim_pb.ListMessagesRequest(user_number=user))).messages
            sent_ids = sent_before_retries[user] = {m.message_id for m in messages}
            permission = await calling.GetPermission(
                pb.GetPermissionRequest(business_number=BUSINESS, user_number=user)
            )
            request = next(a for a in permission.actions if a.action == pb.ACTION_SEND_PERMISSION_REQUEST)
            counted = max(limit.used for limit in request.limits)
            events = (await calling.ListEvents(pb.ListEventsRequest(user_number=user, page_size=1000))).events
            recorded_ids = {
                e.attributes["message_id"] for e in events if e.kind == pb.EVENT_KIND_PERMISSION_REQUEST_SENT
            }
            may_have_been_sent = [e for e in events if e.attributes.get("may_have_been_sent") == "true"]
            # Nothing sent is uncounted; an acknowledged request was sent and is counted.
            assert len(sent_ids) <= counted, (user, sent_ids, counted)
            if user in burst.acknowledged:
                assert burst.acknowledged[user] in sent_ids and counted >= 1, user
            # Every sent request has its event, or its pair a may-have-been-sent event (counted, unknown).
            unrecorded = sent_ids - recorded_ids
            assert not unrecorded or len(may_have_been_sent) >= len(unrecorded), (user, unrecorded)
            # What is counted beyond what was sent is an unknown outcome, said so in the log.
            assert counted - len(sent_ids) <= len(may_have_been_sent), (user, counted, sent_ids)
            outcomes["sent"] += len(recorded_ids)
            outcomes["may_have_been_sent"] += len(may_have_been_sent)
            outcomes["released"] += sum(1 for e in events if e.attributes.get("outcome") == "not_sent")
        for user, key in burst.keys.items():
            first = await retry_answer(calling, user, key)
            second = await retry_answer(calling, user, key)
            assert first[0] in ("sent", "FAILED_PRECONDITION"), (user, first)
            assert second == first, (user, first, second)
            if first[0] == "FAILED_PRECONDITION":
                assert first[1] == "REQUEST_OUTCOME_UNKNOWN"
            if user in burst.acknowledged:
                assert first == ("sent", burst.acknowledged[user])
            if first[0] != "sent":
                outcomes[f"retry {first[1]}"] += 1
            else:
                outcomes["retry replayed" if first[1] in sent_before_retries[user] else "retry sent anew"] += 1
    return outcomes


async def test_kill_nine_during_request_bursts_leaves_nothing_pending_lost_or_uncounted(tmp_path: Path) -> None:
    db = tmp_path / "wacall.db"
    serve_args = ("--clock", "system", "--reservation-grace-seconds", GRACE, "--log-level", "WARNING")
    totals: Counter[str] = Counter()
    survived = 0
    process = ServeProcess(tmp_path, *serve_args)
    try:
        for round_no, kill_after in enumerate(KILL_AFTER):
            burst = await burst_then_kill(process, round_no, kill_after)
            burst.unsettled_at_kill = unsettled(db)[0]
            process = ServeProcess(tmp_path, *serve_args)
            outcomes = await check_after_restart(process, db, round_no, burst)
            totals.update(outcomes)
            totals["acknowledged"] += len(burst.acknowledged)
            totals["unsettled at kill"] += burst.unsettled_at_kill
            survived += 1
    finally:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()
    print(f"kills survived: {survived}/{len(KILL_AFTER)}; {dict(totals)}")
    assert survived == len(KILL_AFTER)
    # The kills did land between a reservation and its settlement, both before and after the platform saw it.
    assert totals["unsettled at kill"] > 0
    assert totals["released"] > 0 or totals["may_have_been_sent"] > 0


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GRACE_PERIOD = timedelta(seconds=60)


def platform_counting(**usage_by_period: int) -> PlatformPermission:
    limits = tuple(PlatformLimit(period, 5, used, None) for period, used in usage_by_period.items())
    return PlatformPermission("no_permission", None, {"send_call_permission_request": (True, limits)})


def test_only_a_window_holding_the_reservation_with_nothing_counted_proves_it_was_not_sent() -> None:
    an_hour_ago = NOW - timedelta(hours=1)
    assert platform_counted_none(platform_counting(PT24H=0, P7D=1), an_hour_ago, NOW, GRACE_PERIOD)
    # Counted: ours, or another writer's (RULE-2): it cannot be ruled out.
    assert not platform_counted_none(platform_counting(PT24H=1, P7D=1), an_hour_ago, NOW, GRACE_PERIOD)
    # The 24 h window may not hold a reservation made 24 h ago, give or take the clocks' skew.
    at_the_edge = NOW - timedelta(hours=24) + timedelta(seconds=30)
    assert not platform_counted_none(platform_counting(PT24H=0, P7D=1), at_the_edge, NOW, GRACE_PERIOD)
    assert platform_counted_none(platform_counting(PT24H=0, P7D=0), at_the_edge, NOW, GRACE_PERIOD)
    # No limits reported, or in a form we cannot read: nothing can tell.
    assert not platform_counted_none(platform_counting(), an_hour_ago, NOW, GRACE_PERIOD)
    assert not platform_counted_none(platform_counting(P1W=0), an_hour_ago, NOW, GRACE_PERIOD)


def test_limit_periods_read_as_the_platform_writes_them() -> None:
    assert limit_window("PT24H") == timedelta(hours=24)
    assert limit_window("P7D") == timedelta(days=7)
    assert limit_window("PT90S") == timedelta(seconds=90)
    assert limit_window("P1DT2H") == timedelta(days=1, hours=2)
    assert limit_window("P") is None and limit_window("24h") is None


class UnsureMeta:
    """Meta's Graph API where a send can hang (so the caller gives up and its outcome is unknown), and whose
    GET call_permissions reports a chosen request count. Meta itself cannot be reached from here."""

    def __init__(self) -> None:
        self.hang = True
        self.usage = 0
        self.sent: list[str] = []
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.add_routes(
            [web.post("/v23.0/{id}/messages", self.messages), web.get("/v23.0/{id}/call_permissions", self.usage_of)]
        )
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/v23.0"

    async def messages(self, request: web.Request) -> web.Response:
        if self.hang:
            await self.release.wait()
            return web.json_response({"error": {"code": 1, "message": "gone"}}, status=500)
        message_id = f"wamid.META{len(self.sent)}"
        self.sent.append(message_id)
        body = await request.json()
        return web.json_response({"contacts": [{"wa_id": body["to"]}], "messages": [{"id": message_id}]})

    async def usage_of(self, request: web.Request) -> web.Response:
        limit = {"time_period": "PT24H", "max_allowed": 1, "current_usage": self.usage}
        return web.json_response(
            {
                "permission": {"status": "no_permission"},
                "actions": [{"action_name": "send_call_permission_request", "can_perform_action": True,
                             "limits": [limit]}],
            }
        )  # fmt: skip

    async def close(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def unsure_meta(make_service: Callable[..., Awaitable[Running]]) -> AsyncIterator[tuple[Running, UnsureMeta]]:
    meta = UnsureMeta()
    base_url = await meta.start()
    sender = MetaAccount(BUSINESS, "1234567890", "9876543210", "EAAG-test", "s3cret").account(TemplateRef("cpr", "en"))
    running = await make_service(upstream="meta", graph_base_url=base_url, senders=(sender,), sim_state="")
    yield running, meta
    await meta.close()


async def give_up_on_a_hanging_send(wacall: Running, **fields: object) -> None:
    """The caller stops waiting while the send hangs: wacall cannot know whether it reached the user."""
    error = await refused(
        wacall.calling.RequestPermission(
            pb.RequestPermissionRequest(business_number=BUSINESS, user_number=USER, **fields),  # type: ignore[arg-type]
            timeout=0.5,
        )
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


DetailT = TypeVar("DetailT", error_details_pb2.RetryInfo, error_details_pb2.ErrorInfo)


def error_detail(error: grpc.aio.AioRpcError, kind: type[DetailT]) -> DetailT:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            found = kind()
            detail.Unpack(found)
            return found
    raise AssertionError(f"no {kind.__name__} in {error}")


def events_of(events: Sequence[pb.Event], **attributes: str) -> list[pb.Event]:
    return [e for e in events if all(e.attributes.get(k) == v for k, v in attributes.items())]


async def test_a_send_nobody_waited_for_is_released_once_the_platform_proves_it_never_arrived(
    unsure_meta: tuple[Running, UnsureMeta],
) -> None:
    wacall, meta = unsure_meta
    await give_up_on_a_hanging_send(wacall, idempotency_key="order-1")
    # Within the grace period its sender may still be waiting: the key says so, and when to come back.
    in_flight = await refused(wacall.request(idempotency_key="order-1"))
    assert in_flight.code() == grpc.StatusCode.ABORTED
    assert "retry with the same key" in (in_flight.details() or "")
    assert 0 < error_detail(in_flight, error_details_pb2.RetryInfo).retry_delay.seconds <= 60
    assert [u.used for u in request_action(await wacall.permission()).limits] == [1, 1]  # counted meanwhile
    meta.hang = False
    await wacall.advance(61)
    # The platform counts no request: it never arrived. The recovery pass (woken by the clock) releases it — a
    # retry while it does so is told to wait — and the key sends anew, once.
    await wait_until(
        lambda: wacall.calling.ListEvents(pb.ListEventsRequest(user_number=USER)),
        lambda reply: bool(events_of(reply.events, outcome="not_sent", settled_by="recovery")),
    )
    retried = await wacall.request(idempotency_key="order-1")
    assert retried.message_id == meta.sent[0] and not retried.replayed
    again = await wacall.request(idempotency_key="order-1")
    assert again.message_id == retried.message_id and again.replayed
    events = (await wacall.calling.ListEvents(pb.ListEventsRequest(user_number=USER))).events
    assert len(events_of(events, outcome="not_sent", settled_by="recovery")) == 1
    assert len(events_of(events, message_id=retried.message_id)) == 1
    assert [u.used for u in request_action(await wacall.permission()).limits] == [1, 1]


async def test_a_send_the_platform_may_have_counted_stays_counted_and_its_key_says_so(
    unsure_meta: tuple[Running, UnsureMeta],
) -> None:
    wacall, meta = unsure_meta
    await give_up_on_a_hanging_send(wacall, idempotency_key="order-2")
    meta.usage = 1  # ours, or another writer's: the platform cannot say which
    await wacall.advance(61)
    # The recovery pass, woken by the clock, may be settling it right now (a retry meanwhile is told to wait):
    # the answers below are the settled ones, whoever settled it.
    await wait_until(
        lambda: wacall.calling.ListEvents(pb.ListEventsRequest(user_number=USER)),
        lambda reply: bool(events_of(reply.events, may_have_been_sent="true", counted="true")),
    )
    first = await refused(wacall.request(idempotency_key="order-2"))
    second = await refused(wacall.request(idempotency_key="order-2"))
    for answer in (first, second):
        assert answer.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_detail(answer, error_details_pb2.ErrorInfo)
        assert info.reason == "REQUEST_OUTCOME_UNKNOWN" and info.metadata["counted"] == "true"
        assert info.metadata["channel"] == "template"
    assert first.details() == second.details()
    assert [u.used for u in request_action(await wacall.permission()).limits] == [1, 1]
    assert not meta.sent  # never sent twice
    events = (await wacall.calling.ListEvents(pb.ListEventsRequest(user_number=USER))).events
    [unknown] = events_of(events, may_have_been_sent="true", counted="true")
    assert unknown.kind == pb.EVENT_KIND_PERMISSION_REQUEST_FAILED and unknown.attributes["outcome"] == "unknown"


async def test_a_request_without_a_key_is_settled_by_the_recovery_pass(
    unsure_meta: tuple[Running, UnsureMeta],
) -> None:
    wacall, meta = unsure_meta
    await give_up_on_a_hanging_send(wacall)
    await wacall.advance(30)  # not yet: its sender may still be waiting
    events = (await wacall.calling.ListEvents(pb.ListEventsRequest(user_number=USER))).events
    assert not events_of(events, settled_by="recovery")
    await wacall.advance(31)
    settled = await wait_until(
        lambda: wacall.calling.ListEvents(pb.ListEventsRequest(user_number=USER)),
        lambda reply: bool(events_of(reply.events, settled_by="recovery")),
    )
    assert events_of(settled.events, settled_by="recovery")[0].attributes["outcome"] == "not_sent"
    assert [u.used for u in request_action(await wacall.permission()).limits] == [0, 0]
    assert not meta.sent


async def test_two_services_on_one_database_settle_an_unsettled_request_once(
    unsure_meta: tuple[Running, UnsureMeta], make_service: Callable[..., Awaitable[Running]]
) -> None:
    first, meta = unsure_meta
    await give_up_on_a_hanging_send(first, idempotency_key="shared-1")
    second = await make_service(
        upstream="meta",
        graph_base_url=first.service.settings.graph_base_url,
        senders=first.service.settings.senders,
        sim_state="",
    )
    services = [first.service.permissions, second.service.permissions]
    assert all(p is not None for p in services)
    # Young: neither claims it (its sender could be a live process whose send is still on its way).
    assert await asyncio.gather(*(p.recover_reservations() for p in services if p)) == [0, 0]
    # Old: both services' own recovery passes (woken by the clocks) and two more passes race for it.
    await asyncio.gather(first.advance(61), second.advance(61))
    settled = await asyncio.gather(*(p.recover_reservations() for p in services if p))
    assert sum(settled) <= 1
    listed = await wait_until(
        lambda: first.calling.ListEvents(pb.ListEventsRequest(user_number=USER)),
        lambda reply: bool(events_of(reply.events, settled_by="recovery")),
    )
    await asyncio.gather(*(p.recover_reservations() for p in services if p))
    events = (await first.calling.ListEvents(pb.ListEventsRequest(user_number=USER))).events
    assert len(events_of(events, settled_by="recovery")) == len(events_of(listed.events, settled_by="recovery")) == 1
    meta.hang = False
    retried = await second.request(idempotency_key="shared-1")
    assert retried.message_id == meta.sent[0]
