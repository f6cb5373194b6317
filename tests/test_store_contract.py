"""What every store backend must do, checked through the `Store`/`Tx` interface alone (wacall/store/base.py).

Each test runs once per backend (`BACKENDS` below: SQLite on a real file today). `backend.open()` gives another
store on the same database, as a second process would have: claims, cursors and isolation are checked across
stores, with transactions made to overlap on purpose rather than by luck.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from wacall.engine import PermissionState
from wacall.store import (
    EventRecord,
    Pair,
    Reservation,
    Store,
    StoredCall,
    Tx,
    open_store,
)

# Backend name → how to open a store on the test's database (every call: another store on the same database).
BACKENDS: dict[str, Callable[[Path], Store]] = {
    "sqlite": lambda tmp: open_store(f"sqlite:///{tmp / 'contract.db'}"),
}

AT = datetime(2026, 12, 1, 12, 0, 0, 123_456, tzinfo=UTC)
BUSINESS = "+447911123456"
OTHER_BUSINESS = "+447911123457"
PAIR = Pair(BUSINESS, "+34612345678")
OTHER_PAIR = Pair(BUSINESS, "+5511987654321")
ELSEWHERE = Pair(OTHER_BUSINESS, "+34612345678")


@dataclass
class Backend:
    name: str
    tmp: Path
    opened: list[Store] = field(default_factory=list)

    def open(self) -> Store:
        store = BACKENDS[self.name](self.tmp)
        self.opened.append(store)
        return store


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    opened = Backend(request.param, tmp_path)
    yield opened
    for store in opened.opened:
        await store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


def event(
    pair: Pair = PAIR, kind: str = "permission_request_sent", at: datetime = AT, **attributes: str
) -> EventRecord:
    return EventRecord(pair, kind, "business", at - timedelta(seconds=1), at, PermissionState.REQUESTED, attributes)


def call(
    call_id: str,
    pair: Pair = PAIR,
    created_at: datetime = AT,
    *,
    active: bool = True,
    platform_call_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> StoredCall:
    state = "ringing" if active else "ended"
    return StoredCall(call_id, pair, "business_initiated", created_at, state, data or {"route": "announcement"},
                      platform_call_id, active)  # fmt: skip


def reservation(reservation_id: str, reserved_at: datetime, pair: Pair = PAIR, key: str = "") -> Reservation:
    return Reservation(reservation_id, pair, reserved_at, "template", PermissionState.NONE, key, f"fp-{key}")


def append(record: EventRecord, tx: Tx) -> int:
    return tx.append(record)


async def settle(ticks: int = 10) -> None:
    """Let callbacks already scheduled on the loop run (a notification, say)."""
    for _ in range(ticks):
        await asyncio.sleep(0.005)


# --- notify on commit -----------------------------------------------------------------------------------------------


async def test_a_listener_is_woken_after_the_commit_and_then_reads_what_it_wrote(backend: Backend) -> None:
    store, elsewhere = backend.open(), backend.open()
    ticket = store.changes.ticket()
    read_when_woken: list[EventRecord] = []

    async def listen() -> None:
        await ticket.wait()
        read_when_woken.extend(await elsewhere.events_after(0))

    listener = asyncio.ensure_future(listen())

    def write(tx: Tx) -> None:
        tx.append(event(n="one"))
        time.sleep(0.2)  # a notification sent before the commit would be heard during this

    await store.transaction(write)
    await asyncio.wait_for(listener, 5)
    assert [e.attributes["n"] for e in read_when_woken] == ["one"]


async def test_saving_a_call_notifies_and_every_listener_wakes_once_per_notification(store: Store) -> None:
    first = store.changes.ticket()
    await store.transaction(lambda tx: tx.save_call(call("call_a")))
    await asyncio.wait_for(first.wait(), 5)
    second = store.changes.ticket()
    assert second is not first and not second.is_set()
    await store.transaction(lambda tx: tx.append(event()))
    await asyncio.wait_for(second.wait(), 5)


async def test_a_commit_notifies_even_when_its_caller_stopped_waiting(store: Store) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(tx: Tx) -> None:
        tx.append(event(n="kept"))
        entered.set()
        release.wait(10)

    caller = asyncio.ensure_future(store.transaction(slow))
    try:
        assert await asyncio.to_thread(entered.wait, 5)
        ticket = store.changes.ticket()
        caller.cancel()  # a cancelled RPC
        await asyncio.sleep(0)
    finally:
        release.set()
    await asyncio.wait_for(ticket.wait(), 5)
    assert [e.attributes["n"] for e in await store.events_after(0)] == ["kept"]
