"""Queues across replicas: how long an offer takes to reach an agent whose session is on another replica than the
step that made it, against an agent on the same replica (the baseline, measured in the same run).

Run: `.venv/bin/python bench/queue_replicas.py` (`--quick` for a smoke run). Two wacall services in this process on
one database: a PostgreSQL 15 the benchmark starts on loopback (tests/postgres_server.py), then one SQLite file.
Queue `local` has agent `ann`, signed in on replica A; queue `remote` has `bob`, signed in on replica B. Each round
enqueues a call on A into one of the queues (alternating) and times `enqueue` → the agent's session yields the
offer; the call is then withdrawn (abandoned) and the withdrawal awaited. Reported per database: p50 and p99 (ms)
for each, and remote / local. On PostgreSQL another replica's commit wakes B at once (`NOTIFY`); SQLite processes
hear nothing of each other's commits, so B reads the log every `FOLLOW_POLL` (0.2 s).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from postgres_server import PostgresServer

from wacall.app import Service
from wacall.config import Settings
from wacall.queues.router import Presence, PutAgent, PutQueue, QueueConfig
from wacall.queues.service import QueueService
from wacall.queues.sessions import AgentSession, OfferEvent, OfferWithdrawnEvent, SessionEvent

E = TypeVar("E", OfferEvent, OfferWithdrawnEvent)


async def start(directory: Path, db: str, name: str) -> Service:
    settings = Settings(
        grpc_address="127.0.0.1:0",
        http_address="127.0.0.1:0",
        db=db,
        sim_state=str(directory / f"{name}.json"),
        media_dir=str(directory),
        recordings_dir=str(directory),
        rtpengine="off",
        instance_name=name,
        log_level="warning",
    )
    service = Service(settings)
    await service.start()
    return service


def queues_of(service: Service) -> QueueService:
    assert service.queues is not None
    return service.queues


async def available(queues: QueueService, agent_id: str) -> tuple[AgentSession, AsyncIterator[SessionEvent]]:
    session = await queues.login(agent_id)
    events = session.events()
    await session.set_presence(Presence.AVAILABLE)
    return session, events


async def next_of(events: AsyncIterator[SessionEvent], kind: type[E]) -> E:
    async for event in events:
        if isinstance(event, kind):
            return event
    raise AssertionError(f"the session ended before a {kind.__name__}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(db: str, rounds: int, label: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        a = await start(directory, db, "a")
        b = await start(directory, db, "b")
        try:
            qa, qb = queues_of(a), queues_of(b)
            for queue_id, agent_id in (("local", "ann"), ("remote", "bob")):
                await qa.apply(PutQueue(QueueConfig(queue_id)))
                await qa.apply(PutAgent(agent_id, queues={queue_id: 0}))
            _, ann = await available(qa, "ann")
            _, bob = await available(qb, "bob")
            timings: dict[str, list[float]] = {"local": [], "remote": []}
            for index in range(rounds):
                for queue_id, events in (("local", ann), ("remote", bob)):
                    call_id = f"call_{index:08d}{queue_id:0>24}"
                    started = time.perf_counter()
                    await qa.enqueue(call_id, queue_id)
                    await next_of(events, OfferEvent)
                    timings[queue_id].append((time.perf_counter() - started) * 1000)
                    await qa.call_gone(call_id)
                    await next_of(events, OfferWithdrawnEvent)
        finally:
            # a first: the loop's default executor is b's (the last started), which a's store closes on.
            await a.stop(grace=0.2)
            await b.stop(grace=0.2)
    print(f"{label}: enqueue on replica A → the offer at the agent's session, {rounds} rounds, ms")
    print(f"  {'':34} {'p50':>8} {'p99':>8}")
    for queue_id, name in (("local", "session on A (baseline)"), ("remote", "session on B")):
        values = timings[queue_id]
        print(f"  {name:34} {statistics.median(values):8.2f} {percentile(values, 0.99):8.2f}")
    ratio = statistics.median(timings["remote"]) / statistics.median(timings["local"])
    print(f"  {label} session on B / on A: p50 {ratio:.2f}x")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a few rounds: the smoke test's run")
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds
    server = PostgresServer()
    try:
        await measure(server.create_database(), rounds, "PostgreSQL")
    finally:
        server.close()
    with tempfile.TemporaryDirectory() as scratch:
        await measure(f"sqlite:///{Path(scratch) / 'shared.db'}", rounds, "SQLite")


if __name__ == "__main__":
    asyncio.run(main())
