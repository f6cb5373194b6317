"""SQLite reads a WatchEvents stream makes: `events_after(cursor, business=X)` on a large log, and what the event
loop suffers while several streams poll it.

Run: `.venv/bin/python bench/store_reads.py` (`--quick` for a smoke run).

One SQLite file holds `--events` events of one business (default 200,000) and a tenth as many of another. Two
measures, each against a baseline from the same run:

1. **The query**: the median time of `events_after(last - 10, business=X)` (the newest few events, as a stream
   polls after each commit) with migration 7's `events_by_business` index, against the same database with that
   index dropped (the plan then reads the business's rows through `events_by_pair` and sorts them).
2. **The event loop**: the worst stall of a 10 ms ticker while 3 watchers each poll 10 times (yielding between
   polls, as a stream does while it waits for the next commit), reading through the store (on its reader thread),
   against the same reads made on the loop thread (how reads ran before), on the database without the index, where
   each read is long.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from wacall.rules.engine import PermissionState
from wacall.store import EventRecord, Pair, SqliteStore, Tx
from wacall.store.sqlite import events_after_query

BUSINESS = "+447911123456"
OTHER = "+447911000000"
AT = datetime(2026, 12, 1, tzinfo=UTC)
WATCHERS = 3
POLLS = 10


async def fill(store: SqliteStore, events: int) -> None:
    def batch(start: int, business: str, end: int) -> Callable[[Tx], None]:
        def write(tx: Tx) -> None:
            for n in range(start, end):
                pair = Pair(business, f"+3461{n % 100_000:07}")
                tx.append(EventRecord(pair, "user_message_received", "user", AT, AT, PermissionState.NONE, {}))

        return write

    for business, count in ((BUSINESS, events), (OTHER, events // 10)):
        for start in range(0, count, 5000):
            await store.transaction(batch(start, business, min(count, start + 5000)))


async def query_median(store: SqliteStore, cursor: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await store.events_after(cursor, business=BUSINESS)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def worst_stall(poll: Callable[[], Awaitable[object]]) -> float:
    """The longest a 10 ms ticker overslept while `WATCHERS` watchers each ran `poll` `POLLS` times."""
    worst = 0.0
    running = True

    async def ticker() -> None:
        nonlocal worst
        while running:
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            worst = max(worst, time.perf_counter() - started - 0.01)

    async def watcher() -> None:
        for _ in range(POLLS):
            await poll()
            await asyncio.sleep(0)  # as a stream waits for the next commit between polls

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    await asyncio.gather(*(watcher() for _ in range(WATCHERS)))
    running = False
    await ticking
    return worst


async def main(args: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="wacall-bench-reads-"))
    try:
        indexed, bare = directory / "indexed.db", directory / "bare.db"
        store = SqliteStore(indexed)
        await fill(store, args.events)
        cursor = await store.last_cursor() - 10
        await store.close()
        shutil.copy(indexed, bare)
        with sqlite3.connect(bare) as db:
            db.execute("DROP INDEX events_by_business")

        with_index, without_index = SqliteStore(indexed), SqliteStore(bare)
        rounds = 5 if args.quick else 20
        fast = await query_median(with_index, cursor, rounds)
        slow = await query_median(without_index, cursor, rounds)
        print(f"events_after(cursor, business) on {args.events:,} events of one business (median of {rounds})")
        print(f"  with events_by_business          {fast * 1000:10.2f} ms")
        print(f"  baseline: without it             {slow * 1000:10.2f} ms")
        print(f"  ratio (baseline / with index)    {slow / fast:10.1f}x")

        loop_thread = sqlite3.connect(bare, isolation_level=None)
        sql, params = events_after_query(cursor, BUSINESS, None, 500)

        async def on_the_loop_thread() -> object:
            return loop_thread.execute(sql, params).fetchall()

        async def through_the_store() -> object:
            return await without_index.events_after(cursor, business=BUSINESS)

        off_loop = await worst_stall(through_the_store)
        on_loop = await worst_stall(on_the_loop_thread)
        loop_thread.close()
        print(f"worst event-loop stall, {WATCHERS} watchers x {POLLS} polls, without the index (10 ms ticker)")
        print(f"  reads on the store's reader thread {off_loop * 1000:8.1f} ms")
        print(f"  baseline: reads on the loop thread {on_loop * 1000:8.1f} ms")
        print(f"  ratio (baseline / reader thread)   {on_loop / max(off_loop, 1e-4):8.1f}x")
        await with_index.close()
        await without_index.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000, help="events of the measured business")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.events = min(args.events, 5000)
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
