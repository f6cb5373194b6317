"""SQLite group commit: transactions queued while the store's thread is busy share one commit (one fsync), each in
its own savepoint, and each caller is answered only once the commit holding its writes is durable.

The backend-neutral promises (a failing transaction among concurrent ones keeps nothing, the others commit) are in
`tests/test_store_contract.py`; this file checks how SQLite keeps them, and a kill -9 in the middle of a stream of
acknowledged transactions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wacall.rules.engine import PermissionState
from wacall.store import ChangeNotifier, EventRecord, Pair, SqliteStore, Tx

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PAIR = Pair("+447911123456", "+34612345678")


class CountingNotifier(ChangeNotifier):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def notify(self) -> None:
        self.count += 1
        super().notify()


class Boom(Exception):
    pass


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "group.db")
    yield opened
    await opened.close()


def write(n: int, *, fail: bool = False) -> Callable[[Tx], int]:
    def fn(tx: Tx) -> int:
        tx.save_setting(f"n{n}", str(n))
        cursor = tx.append(
            EventRecord(PAIR, "user_message_received", "user", AT, AT, PermissionState.NONE, {"n": str(n)})
        )
        if fail:
            raise Boom(n)
        return cursor

    return fn


async def hold_the_thread(store: SqliteStore) -> tuple[asyncio.Future[None], threading.Event]:
    """A transaction that keeps the store's thread busy until released, so the next ones queue behind it."""
    entered, release = threading.Event(), threading.Event()

    def busy(tx: Tx) -> None:
        entered.set()
        release.wait(10)

    holder = asyncio.ensure_future(store.transaction(busy))
    assert await asyncio.to_thread(entered.wait, 5)
    return holder, release


def committed_settings(path: Path) -> dict[str, str]:
    """What another connection (another process) reads: committed rows only."""
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT name, value FROM settings").fetchall())


async def test_transactions_queued_while_the_thread_is_busy_share_one_commit_and_one_notification(
    store: SqliteStore,
) -> None:
    store.changes = notifier = CountingNotifier()
    holder, release = await hold_the_thread(store)
    commits_before = store.commits
    queued = [asyncio.ensure_future(store.transaction(write(n))) for n in range(50)]
    await asyncio.sleep(0.05)  # every caller has queued its transaction
    release.set()
    await holder
    cursors = await asyncio.gather(*queued)
    assert store.commits - commits_before == 2  # the holder's commit, then one for all fifty
    assert cursors == sorted(cursors) and len(set(cursors)) == 50  # run one after another, in the order queued
    await asyncio.sleep(0.05)
    assert notifier.count == 1  # the holder wrote nothing; the fifty notify once


async def test_a_failing_transaction_in_a_group_rolls_back_alone_and_its_caller_gets_the_exception(
    store: SqliteStore,
) -> None:
    holder, release = await hold_the_thread(store)
    commits_before = store.commits
    queued = [asyncio.ensure_future(store.transaction(write(n, fail=n in (0, 7, 19)))) for n in range(20)]
    await asyncio.sleep(0.05)
    release.set()
    await holder
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert store.commits - commits_before == 2
    assert [n for n, r in enumerate(results) if isinstance(r, Boom)] == [0, 7, 19]
    kept = committed_settings(store.path)
    assert sorted(kept) == sorted(f"n{n}" for n in range(20) if n not in (0, 7, 19))
    assert sorted(int(e.attributes["n"]) for e in await store.events_after(0)) == sorted(map(int, kept.values()))


async def test_a_group_holds_at_most_max_group_transactions(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "bounded.db", max_group=4)
    try:
        holder, release = await hold_the_thread(store)
        commits_before = store.commits
        queued = [asyncio.ensure_future(store.transaction(write(n))) for n in range(10)]
        await asyncio.sleep(0.05)
        release.set()
        await holder
        await asyncio.gather(*queued)
        assert store.commits - commits_before == 1 + 3  # the holder, then 4 + 4 + 2
    finally:
        await store.close()


async def test_every_caller_is_answered_only_once_its_writes_are_committed(store: SqliteStore) -> None:
    seen_when_answered: list[bool] = []

    async def caller(n: int) -> None:
        await store.transaction(write(n))
        # Read at once through another connection, as another process would: the commit is already there.
        seen_when_answered.append(committed_settings(store.path).get(f"n{n}") == str(n))

    await asyncio.gather(*(caller(n) for n in range(200)))
    assert seen_when_answered == [True] * 200
    assert store.commits < 200  # they were grouped


async def test_close_answers_every_transaction_queued_before_it(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "closing.db")
    holder, release = await hold_the_thread(store)
    queued = [asyncio.ensure_future(store.transaction(write(n))) for n in range(10)]
    await asyncio.sleep(0.05)
    closing = asyncio.ensure_future(store.close())
    release.set()
    await closing
    await holder
    assert len(await asyncio.gather(*queued)) == 10
    assert len(committed_settings(tmp_path / "closing.db")) == 10


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from wacall.store import SqliteStore

    async def main() -> None:
        store = SqliteStore(__import__("pathlib").Path(sys.argv[1]))
        counter = iter(range(10**9))

        async def caller() -> None:
            for n in counter:
                await store.transaction(lambda tx, n=n: tx.save_setting(f"n{n}", str(n)))
                sys.stdout.write(f"{n}\\n")
                sys.stdout.flush()

        await asyncio.gather(*(caller() for _ in range(32)))

    asyncio.run(main())
    """
)


async def test_kill_nine_loses_no_acknowledged_transaction(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert writer.stdout is not None
    acknowledged: list[str] = []
    try:
        while len(acknowledged) < 2000:
            line = await asyncio.to_thread(writer.stdout.readline)
            assert line, f"the writer stopped (exit {writer.poll()})"
            acknowledged.append(line.decode().strip())
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    kept = committed_settings(path)
    assert [n for n in acknowledged if kept.get(f"n{n}") != n] == []
