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

from wacall.health import store_answers
from wacall.rules.engine import PermissionState
from wacall.store import ChangeNotifier, EventRecord, Pair, SqliteStore, StoreError, Tx
from wacall.store import sqlite as sqlite_backend

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


async def test_a_function_raising_stop_iteration_gets_a_runtime_error_and_the_rest_of_its_group_its_answers(
    store: SqliteStore,
) -> None:
    def bug(tx: Tx) -> None:
        next(iter([]))  # StopIteration: a future refuses it as an exception

    holder, release = await hold_the_thread(store)
    failing = asyncio.ensure_future(store.transaction(bug))
    queued = [asyncio.ensure_future(store.transaction(write(n))) for n in range(5)]
    await asyncio.sleep(0.05)
    release.set()
    await holder
    _, pending = await asyncio.wait([failing, *queued], timeout=10)
    assert pending == set()
    assert isinstance(failing.exception(), RuntimeError)
    assert isinstance(failing.exception().__cause__, StopIteration)  # type: ignore[union-attr]
    assert len({job.result() for job in queued}) == 5
    assert committed_settings(store.path) == {f"n{n}": str(n) for n in range(5)}


async def test_a_writer_whose_connection_breaks_answers_its_group_then_refuses_at_once_and_readiness_sees_it(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "broken.db")

    def break_the_connection(tx: Tx) -> None:
        # The connection becomes unusable mid-group (as after a failed COMMIT whose ROLLBACK fails too).
        tx._db.close()  # type: ignore[attr-defined]

    assert await store_answers(lambda: store)() is None
    holder, release = await hold_the_thread(store)
    queued = [asyncio.ensure_future(store.transaction(write(n))) for n in range(3)]
    breaking = asyncio.ensure_future(store.transaction(break_the_connection))
    behind = [asyncio.ensure_future(store.transaction(write(n))) for n in range(3, 6)]
    await asyncio.sleep(0.05)
    release.set()
    _, pending = await asyncio.wait([holder, *queued, breaking, *behind], timeout=10)
    assert pending == set()
    assert all(isinstance(job.exception(), StoreError) for job in [*queued, breaking, *behind])
    with pytest.raises(StoreError, match="writer failed"):
        await asyncio.wait_for(store.transaction(write(9)), 1)  # at once, not after a deadline
    problem = await store_answers(lambda: store)()
    assert problem == "store unavailable (StoreError)"
    await asyncio.wait_for(store.close(), 5)
    assert committed_settings(tmp_path / "broken.db") == {}


async def test_a_transaction_whose_caller_stopped_waiting_before_it_ran_is_not_run(store: SqliteStore) -> None:
    holder, release = await hold_the_thread(store)
    abandoned = asyncio.ensure_future(store.transaction(write(1)))
    kept = asyncio.ensure_future(store.transaction(write(2)))
    await asyncio.sleep(0.05)
    abandoned.cancel()  # its deadline passed while it queued
    release.set()
    await holder
    await kept
    assert committed_settings(store.path) == {"n2": "2"}


async def test_when_a_group_fails_each_caller_gets_its_own_copy_of_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "WRITER_BUSY_TIMEOUT_MS", 500)
    store = SqliteStore(tmp_path / "locked.db")
    # Another process holds the write lock throughout: every group's BEGIN IMMEDIATE fails after the busy timeout.
    other = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        first = asyncio.ensure_future(store.transaction(write(0)))
        await asyncio.sleep(0.05)  # the first group is waiting for the lock; the next three queue behind it
        queued = [asyncio.ensure_future(store.transaction(write(n))) for n in range(1, 4)]
        await asyncio.wait([first], timeout=10)
        errors = await asyncio.gather(*queued, return_exceptions=True)
    finally:
        other.close()
    assert isinstance(first.exception(), sqlite3.OperationalError)
    assert all(isinstance(error, sqlite3.OperationalError) for error in errors)
    assert len({id(error) for error in errors}) == 3  # a copy each: one raise does not grow another's traceback
    assert len({id(error.__cause__) for error in errors}) == 1  # of the one error their shared commit met
    await store.close()


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


async def test_after_a_kill_nine_every_acknowledged_transaction_is_in_the_file(tmp_path: Path) -> None:
    """Proves that a caller is answered only after the COMMIT holding its writes: what a crash of the process
    cannot undo. It does not prove durability against power loss: the OS page cache survives kill -9, so this
    passes with `synchronous=OFF` too; that guarantee rests on `synchronous=FULL`."""
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
