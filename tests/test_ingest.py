"""The dispatcher (wacall.ingest): each item to the handler its type names, a delivery applied whole or not at all,
and the work a handler leaves for later run only once the delivery is committed. On a real SQLite file."""

from __future__ import annotations

import sqlite3
import typing
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import Running, eventually

from wacall.app import dispatch_table
from wacall.clock import ManualClock
from wacall.inbound import (
    CallEventItem,
    CallEventKind,
    DeliveryStatus,
    Ignored,
    InboundItem,
    InboundMessage,
    MessageStatus,
    PermissionReply,
    ReplyTo,
)
from wacall.ingest import Dispatcher, DuplicateHandler, Handler, IngestResult, Outcome, Skipped
from wacall.store import Store, Tx, open_store

BUSINESS = "+447911123456"
USER = "34612345678"
AT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def reply(message_id: str) -> PermissionReply:
    return PermissionReply("acct", USER, message_id, AT, True, True, None, False, None, ReplyTo.PROFILE)


def message(message_id: str) -> InboundMessage:
    return InboundMessage("acct", USER, message_id, AT, "text")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path / 'wacall.db'}")
    try:
        yield opened
    finally:
        await opened.close()


def kept_bodies(tmp_path: Path) -> list[bytes]:
    with sqlite3.connect(tmp_path / "wacall.db") as db:
        return [row[0] for row in db.execute("SELECT body FROM webhooks ORDER BY id")]


async def test_each_item_goes_to_the_handler_its_type_names_and_the_counts_say_what_it_did(
    store: Store, tmp_path: Path
) -> None:
    handled: list[tuple[str, str, str]] = []

    def on_reply(tx: Tx, business: str, item: PermissionReply, now: datetime) -> Outcome:
        handled.append(("reply", business, item.message_id))
        return None

    def on_message(tx: Tx, business: str, item: InboundMessage, now: datetime) -> Outcome:
        handled.append(("message", business, item.message_id))
        return Skipped.DUPLICATE if item.message_id == "seen" else Skipped.UNKNOWN_USER

    dispatcher = Dispatcher(
        store,
        ManualClock(AT),
        [Handler(PermissionReply, on_reply), Handler(InboundMessage, on_message)],
    )
    status = MessageStatus("acct", "wamid.S", USER, DeliveryStatus.READ, AT, (), "")
    result = await dispatcher.deliver(
        b'{"delivery": 1}',
        [
            (reply("r1"), BUSINESS),
            (message("seen"), BUSINESS),
            (message("m1"), BUSINESS),
            (reply("r2"), None),  # not for a business number of ours
            (status, BUSINESS),  # no handler for statuses in this table
            (Ignored("security", "not handled"), BUSINESS),
        ],
    )

    assert result == IngestResult(applied=1, duplicates=1, ignored=4)
    assert handled == [("reply", BUSINESS, "r1"), ("message", BUSINESS, "seen"), ("message", BUSINESS, "m1")]
    assert kept_bodies(tmp_path) == [b'{"delivery": 1}']


async def test_a_delivery_that_changes_nothing_is_kept_and_wakes_no_watcher(store: Store, tmp_path: Path) -> None:
    watcher = store.changes.ticket()
    dispatcher = Dispatcher(store, ManualClock(AT), [])
    assert await dispatcher.deliver(b"{}", [(reply("r1"), BUSINESS)]) == IngestResult(0, 0, 1)
    assert not watcher.is_set()  # the store wakes watchers only for commits that wrote events or calls
    assert kept_bodies(tmp_path) == [b"{}"]


async def test_a_delivery_is_applied_whole_or_not_at_all(store: Store, tmp_path: Path) -> None:
    ran: list[str] = []

    async def media() -> None:
        ran.append("media")

    def claim(tx: Tx, business: str, item: PermissionReply, now: datetime) -> Outcome:
        tx.claim(f"message:{item.message_id}", now)
        return media

    def cannot(tx: Tx, business: str, item: InboundMessage, now: datetime) -> Outcome:
        raise RuntimeError("the second item cannot be applied")

    dispatcher = Dispatcher(
        store,
        ManualClock(AT),
        [Handler(PermissionReply, claim), Handler(InboundMessage, cannot)],
    )
    with pytest.raises(RuntimeError, match="second item"):
        await dispatcher.deliver(b"{}", [(reply("r1"), BUSINESS), (message("m1"), BUSINESS)])

    # Neither the first item's dedupe key nor the body was kept, and the first item's media work never ran.
    assert await store.transaction(lambda tx: tx.claim("message:r1", AT)) is True
    assert kept_bodies(tmp_path) == []
    assert ran == []


async def test_work_left_for_after_the_commit_sees_the_delivery_committed(store: Store) -> None:
    seen_committed: list[bool] = []
    item = CallEventItem("acct", "wacid.1", CallEventKind.ACCEPTED, AT, USER)

    def apply(tx: Tx, business: str, event: CallEventItem, now: datetime) -> Outcome:
        tx.claim(f"call:{event.call_id}:{event.kind}", now)

        async def after() -> None:
            # Claiming again fails only if the delivery's own claim was committed.
            seen_committed.append(not await store.transaction(lambda tx: tx.claim("call:wacid.1:accepted", AT)))

        return after

    dispatcher = Dispatcher(store, ManualClock(AT), [Handler(CallEventItem, apply)])
    assert await dispatcher.deliver(b"{}", [(item, BUSINESS)]) == IngestResult(1, 0, 0)
    await eventually(lambda: seen_committed == [True], what="the after-commit work")


async def test_the_table_takes_one_handler_per_item_type(store: Store) -> None:
    def either(tx: Tx, business: str, item: InboundMessage, now: datetime) -> Outcome:
        return None

    with pytest.raises(DuplicateHandler, match="InboundMessage"):
        Dispatcher(store, ManualClock(AT), [Handler(InboundMessage, either), Handler(InboundMessage, either)])


async def test_the_assembled_table_has_a_handler_for_every_item_a_platform_can_send(wacall: Running) -> None:
    # An item type left out of the table would be counted as ignored and acknowledged: silently lost.
    assert wacall.service.permissions is not None and wacall.service.calls is not None
    table = dispatch_table(wacall.service.permissions, wacall.service.calls)
    handled = {entry.item_type for entry in table}
    assert handled == set(typing.get_args(InboundItem)) - {Ignored}
