"""The PostgreSQL store: limit-consuming decisions per second with two processes against one, and the latency of a
GetPermission's read with 10 k and with 1 M pairs in the ledger.

Run: `.venv/bin/python bench/postgres.py` (`--quick` for a smoke run). It starts its own PostgreSQL 15 on loopback
(tests/postgres_server.py: initdb in a temporary directory, fsync on), one database per measurement.

1. **Decisions per second**: store transactions doing what a permission request's reservation does (the pair's
   ledger read under its lock, the business's pause, the idempotency key, the pair's call in progress; then an
   event appended, the ledger saved with the request counted, a reservation and the key's outcome written; one
   fsynced commit), each for a pair of its own. `--workers` concurrent transactions per process (the store's pool
   has 4 connections) for `--seconds`: one process alone, then two processes at once (two replicas on one
   database), in alternating rounds. Reported: decisions/s (median over rounds), and two against one.
2. **GetPermission's read**: the transaction `GetPermission` runs (the pair's ledger, the business's pause, the
   pair's call in progress) for random pairs, one after another, with 10 k pairs in the ledger and again after
   in a database bulk-loaded (COPY) with 1 M (`--pairs-small`, `--pairs-large`), in alternating rounds. Reported:
   p50 and p99 (ms), large / small (target: flat within 1.2×).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import platform
import random
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from postgres_server import PostgresServer

from wacall.rules.engine import Ledger, PermissionState
from wacall.store import (
    EventRecord,
    IdempotentResult,
    Pair,
    Reservation,
    Tx,
    ledger_to_json,
    migrate_database,
    open_store,
    to_micros,
)

BUSINESS = "+447911123456"
AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def user_number(index: int) -> str:
    return f"+3461{index:07d}"


def decide(tx: Tx, pair: Pair, key: str) -> bool:
    """A reservation's reads and writes (permissions.py `reserve`), without the rule engine's pure arithmetic."""
    ledger = tx.ledger(pair)
    tx.restriction(pair.business)
    if tx.idempotent_result(pair.business, key) is not None or tx.active_call(pair) is not None:
        return False
    tx.append(EventRecord(pair, "permission_request_sent", "business", AT, AT, PermissionState.REQUESTED, {}))
    tx.save_ledger(pair, replace(ledger, state=PermissionState.REQUESTED, request_times=(AT,)), AT)
    tx.save_reservation(Reservation(key, pair, AT, "template", ledger.state, key, "fingerprint"))
    tx.save_idempotent_result(IdempotentResult(pair.business, key, "fingerprint", {"status": "reserved"}), AT)
    return True


def _decisions_in_a_process(url: str, prefix: str, start_at: float, seconds: float, workers: int) -> int:
    """One replica: `workers` concurrent decisions at a time, from `start_at` (wall time) for `seconds`."""

    async def main() -> int:
        store = open_store(url)
        counter = itertools.count()
        try:
            await asyncio.sleep(max(0.0, start_at - time.time()))
            stop = time.monotonic() + seconds

            async def worker() -> int:
                done = 0
                while time.monotonic() < stop:
                    n = next(counter)
                    pair = Pair(BUSINESS, f"+55{prefix}{n:08d}")
                    done += await store.transaction(lambda tx, p=pair, k=f"{prefix}-{n}": decide(tx, p, k))
                return done

            return sum(await asyncio.gather(*(worker() for _ in range(workers))))
        finally:
            await store.close()

    return asyncio.run(main())


def bench_decisions(url: str, seconds: float, workers: int, rounds: int) -> None:
    print(f"decisions: {workers} concurrent transactions per process, {seconds:g} s per run, {rounds} rounds")
    context = multiprocessing.get_context("spawn")
    rates: dict[int, list[float]] = {1: [], 2: []}
    with context.Pool(2) as pool:
        for round_number in range(rounds):
            for processes in (1, 2) if round_number % 2 == 0 else (2, 1):
                start_at = time.time() + 2.0  # both processes opened and connected before the start
                jobs = [(url, f"{round_number}{processes}{p}", start_at, seconds, workers) for p in range(processes)]
                decided = sum(pool.starmap(_decisions_in_a_process, jobs))
                rates[processes].append(decided / seconds)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"  {'target':36} {'decisions/s (median)':>21} {'rounds min-max':>18}")
    for processes, label in ((1, "1 process (baseline)"), (2, "2 processes on one database")):
        spread = f"{min(rates[processes]):,.0f}-{max(rates[processes]):,.0f}"
        print(f"  {label:36} {statistics.median(rates[processes]):21,.0f} {spread:>18}")
    print(f"  2 processes / 1 process: {two / one:.2f}x")


def bulk_load(url: str, first: int, last: int) -> None:
    """Pairs `first`..`last - 1`, each with a ledger as a granted pair has, by COPY."""
    ledger = ledger_to_json(
        Ledger(state=PermissionState.TEMPORARY, expires_at=AT + timedelta(days=7), state_changed_at=AT)
    )
    with (
        psycopg.connect(url) as db,
        db.cursor() as cursor,
        cursor.copy("COPY pairs (business, user_number, ledger, updated_at) FROM STDIN") as copy,
    ):
        for index in range(first, last):
            copy.write_row((BUSINESS, user_number(index), ledger, to_micros(AT)))
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("VACUUM ANALYZE pairs")


def get_permission_read(tx: Tx, pair: Pair) -> Ledger:
    ledger = tx.ledger(pair)
    tx.restriction(pair.business)
    tx.active_call(pair)
    return ledger


async def read_latencies(url: str, pairs: int, samples: int) -> list[float]:
    store = open_store(url)
    try:
        chosen = [Pair(BUSINESS, user_number(random.randrange(pairs))) for _ in range(samples + samples // 5)]
        latencies = []
        for index, pair in enumerate(chosen):
            started = time.perf_counter()
            ledger = await store.transaction(lambda tx, p=pair: get_permission_read(tx, p))
            if index >= samples // 5:  # the first fifth warms the pool and the caches
                latencies.append((time.perf_counter() - started) * 1000)
            assert ledger.state is PermissionState.TEMPORARY
        return latencies
    finally:
        await store.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def bench_reads(small_url: str, large_url: str, small: int, large: int, samples: int, rounds: int) -> None:
    print(f"GetPermission's read: {samples} sequential transactions on random pairs, in {rounds} alternating rounds")
    for url, pairs in ((small_url, small), (large_url, large)):
        started = time.perf_counter()
        bulk_load(url, 0, pairs)
        print(f"  {pairs:,} pairs in the ledger (loaded in {time.perf_counter() - started:.1f} s)")
    results: dict[int, list[float]] = {small: [], large: []}
    for round_number in range(rounds):
        order = ((small_url, small), (large_url, large))
        for url, pairs in order if round_number % 2 == 0 else order[::-1]:
            results[pairs].extend(asyncio.run(read_latencies(url, pairs, samples // rounds)))
    print(f"  {'target':36} {'p50 ms':>8} {'p99 ms':>8}")
    for pairs, label in ((small, f"{small:,} pairs (baseline)"), (large, f"{large:,} pairs")):
        print(f"  {label:36} {percentile(results[pairs], 0.5):8.3f} {percentile(results[pairs], 0.99):8.3f}")
    p50 = percentile(results[large], 0.5) / percentile(results[small], 0.5)
    p99 = percentile(results[large], 0.99) / percentile(results[small], 0.99)
    print(f"  {large:,} / {small:,} pairs: p50 {p50:.2f}x, p99 {p99:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, short runs")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pairs-small", type=int, default=10_000)
    parser.add_argument("--pairs-large", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=5_000)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.workers, args.rounds = 1.0, 4, 2
        args.pairs_small, args.pairs_large, args.samples = 1_000, 20_000, 200
    print(f"python {platform.python_version()} on {platform.machine()}")
    server = PostgresServer()
    try:
        decisions_url, small_url, large_url = (server.create_database() for _ in range(3))
        for url in (decisions_url, small_url, large_url):
            migrate_database(url)  # once, before the processes start
        bench_decisions(decisions_url, args.seconds, args.workers, args.rounds)
        bench_reads(small_url, large_url, args.pairs_small, args.pairs_large, args.samples, args.rounds)
    finally:
        server.close()


if __name__ == "__main__":
    main()
