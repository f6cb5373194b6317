"""Contact-centre routing: the pure router's decisions per second at scale, and the time from an agent becoming
AVAILABLE to the offer reaching its session through the real service.

Run: `.venv/bin/python bench/router.py` (`--quick` for a smoke run).

1. **Router steps** (`wacall.queues.router.step`, one process, one core): a state of `--agents` agents (default
   1,000) in 10 queues of every strategy and `--waiting` calls waiting (default 5,000), then a realistic mix of
   events drawn from the current state: accepts of ringing offers, declines, ends of agents' calls, new calls,
   presence changes (AVAILABLE ↔ AWAY) and ticks of the clock, a second each (ring timeouts and wrap-ups firing).
   New calls keep the number of waiting calls near its start. Reported: steps/s and decisions/s (offers, withdrawals,
   assignments, presence changes), against the same-run baseline of copying the state's maps into a new frozen
   state, the floor of any step of an immutable state (`router.step` starts and ends with that copy).
2. **Available → offer** through the real service (in process: SQLite file, the embedded simulator, gRPC on
   loopback, the system clock): an agent's `AgentSession` stream sets AVAILABLE while a call waits in its queue;
   the time until the `offer` event arrives on the stream (median, p95). Same-run baseline: the time from
   `set_presence AWAY` to its `presence` event on the same stream (a session round trip through one router step,
   without an offer). The service's durable state is seeded with `--service-agents` offline agents and
   `--service-waiting` calls waiting in another queue, so each step carries a realistic state (each step saves the
   whole state); an empty contact centre is measured first, for comparison. The measured calls are ids the store
   does not know: the offer skips the permission lookup a real call's offer makes (one more read transaction).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import grpc
from wacall_client.v1 import contact_center_model_pb2 as model_pb
from wacall_client.v1 import contact_center_pb2 as cc_pb
from wacall_client.v1 import contact_center_pb2_grpc

from wacall.app import Service
from wacall.config import Settings
from wacall.queues import codec, router
from wacall.queues.router import (
    Accept,
    CallGone,
    CallQueued,
    Decline,
    Presence,
    PutAgent,
    PutQueue,
    QueueConfig,
    RouterState,
    SetPresence,
    Step,
    Strategy,
    Tick,
)

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
QUEUES = [f"queue_{i}" for i in range(10)]
STRATEGY_OF = {queue_id: list(Strategy)[i % len(Strategy)] for i, queue_id in enumerate(QUEUES)}


# --- 1. the pure router ---------------------------------------------------------------------------------------------


class Scenario:
    """The state and the clock of the router benchmark, and the next event of the mix drawn from the state."""

    def __init__(self, agents: int, waiting: int, seed: int = 9) -> None:
        self.random = random.Random(seed)
        self.now = T0
        self.calls = 0
        self.target_waiting = waiting
        self.state = router.EMPTY
        for queue_id in QUEUES:
            config = QueueConfig(
                queue_id,
                STRATEGY_OF[queue_id],
                ring_timeout=timedelta(seconds=20),
                wrap_up=timedelta(seconds=10),
                max_missed_offers=3,
            )
            self.apply(PutQueue(config))
        for index in range(agents):
            member_of = {q: self.random.randrange(3) for q in self.random.sample(QUEUES, self.random.randint(1, 3))}
            self.apply(PutAgent(f"agent_{index:04d}", skills={"language": 3}, queues=member_of))
            self.apply(SetPresence(f"agent_{index:04d}", Presence.AVAILABLE))
        for _ in range(waiting):
            self.apply(self.new_call())

    def apply(self, event: router.Event) -> Step:
        step = router.step(self.state, event, self.now)
        self.state = step.state
        return step

    def new_call(self) -> CallQueued:
        self.calls += 1
        return CallQueued(f"call_{self.calls}", self.random.choice(QUEUES), self.random.randrange(3))

    def next_event(self) -> router.Event:
        """One event of the mix, valid in the current state."""
        state, pick = self.state, self.random.random()
        if pick < 0.40 and state.offers:
            offer_id = self.random.choice(list(state.offers))
            return Decline(offer_id) if pick < 0.03 else Accept(offer_id)
        if pick < 0.60 and state.assigned:
            return CallGone(self.random.choice(list(state.assigned)))
        if pick < 0.85 or len(state.waiting) < self.target_waiting:
            return self.new_call()
        if pick < 0.95:
            agent = state.agents[self.random.choice(list(state.agents))]
            if agent.presence is Presence.AVAILABLE:
                return SetPresence(agent.agent_id, Presence.AWAY)
            if agent.presence is Presence.AWAY:
                return SetPresence(agent.agent_id, Presence.AVAILABLE)
            return Tick()
        self.now += timedelta(seconds=1)
        return Tick()


def copy_state(state: RouterState) -> RouterState:
    """The baseline: every map of the state copied into a new frozen state, as any immutable step must."""
    return RouterState(
        queues=MappingProxyType(dict(state.queues)),
        agents=MappingProxyType(dict(state.agents)),
        waiting=MappingProxyType(dict(state.waiting)),
        offers=MappingProxyType(dict(state.offers)),
        assigned=MappingProxyType(dict(state.assigned)),
        last_offered=MappingProxyType(dict(state.last_offered)),
        counters=MappingProxyType(dict(state.counters)),
        next_offer=state.next_offer,
        next_seq=state.next_seq,
        next_added=state.next_added,
    )


def bench_router(agents: int, waiting: int, steps: int, rounds: int) -> None:
    print(f"router: {agents} agents in {len(QUEUES)} queues (every strategy), {waiting} calls waiting")
    built = time.perf_counter()
    scenario = Scenario(agents, waiting)
    print(f"  built in {time.perf_counter() - built:.1f} s: {len(scenario.state.offers)} offers ringing")
    step_rates, decision_rates, copy_rates, kinds = [], [], [], dict[str, int]()
    for _ in range(rounds):
        spent, decisions = 0.0, 0
        for _ in range(steps):
            event = scenario.next_event()
            started = time.perf_counter()
            step = scenario.apply(event)
            spent += time.perf_counter() - started
            decisions += len(step.decisions)
            for decision in step.decisions:
                kinds[type(decision).__name__] = kinds.get(type(decision).__name__, 0) + 1
        step_rates.append(steps / spent)
        decision_rates.append(decisions / spent)
        started = time.perf_counter()
        for _ in range(steps):
            copy_state(scenario.state)
        copy_rates.append(steps / (time.perf_counter() - started))
    state = scenario.state
    print(
        f"  after the mix: {len(state.waiting)} waiting, {len(state.offers)} offers ringing, "
        f"{len(state.assigned)} calls with agents; decisions: "
        + ", ".join(f"{name} {count}" for name, count in sorted(kinds.items()))
    )
    steps_median, copies_median = statistics.median(step_rates), statistics.median(copy_rates)
    print(f"  {'target':34} {'per s (median)':>15} {'rounds min-max':>22} {'baseline / this':>16}")
    for name, rates in (
        ("router.step: steps", step_rates),
        ("router.step: decisions", decision_rates),
        ("baseline: copy the state", copy_rates),
    ):
        spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
        ratio = f"{copies_median / steps_median:15.1f}x" if name.endswith("steps") else ""
        print(f"  {name:34} {statistics.median(rates):15,.0f} {spread:>22} {ratio:>16}")


# --- 2. available → offer through the service -----------------------------------------------------------------------


def seeded_state(agents: int, waiting: int) -> RouterState:
    """Background load for the service: offline agents, and calls waiting in a queue the measured agent is not in."""
    state = router.EMPTY
    for event in [
        PutQueue(QueueConfig("background", Strategy.LONGEST_IDLE)),
        PutQueue(QueueConfig("measured", Strategy.LONGEST_IDLE)),
        *(PutAgent(f"background_{i:04d}", queues={"background": 0}) for i in range(agents)),
        PutAgent("measured_agent", queues={"measured": 0}),
        *(CallQueued(f"background_call_{i}", "background") for i in range(waiting)),
    ]:
        state = router.step(state, event, T0).state
    return state


class Stream:
    """One AgentSession stream; a reader task collects its events with their arrival times."""

    def __init__(self, stub: contact_center_pb2_grpc.ContactCenterServiceStub, agent_id: str) -> None:
        self.requests: asyncio.Queue[cc_pb.AgentSessionRequest | None] = asyncio.Queue()
        self.requests.put_nowait(cc_pb.AgentSessionRequest(login=cc_pb.AgentSessionRequest.Login(agent_id=agent_id)))
        self.events: asyncio.Queue[tuple[float, cc_pb.AgentSessionEvent]] = asyncio.Queue()
        self.call = stub.AgentSession(self._outgoing())
        self.reader = asyncio.create_task(self._read())

    async def _outgoing(self) -> AsyncIterator[cc_pb.AgentSessionRequest]:
        while (request := await self.requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        async for event in self.call:
            self.events.put_nowait((time.perf_counter(), event))

    def presence(self, presence: int) -> float:
        self.requests.put_nowait(
            cc_pb.AgentSessionRequest(set_presence=cc_pb.AgentSessionRequest.SetPresence(presence=presence))  # type: ignore[arg-type]
        )
        return time.perf_counter()

    async def until(self, kind: str) -> tuple[float, cc_pb.AgentSessionEvent]:
        while True:
            at, event = await asyncio.wait_for(self.events.get(), 30)
            if event.WhichOneof("kind") == kind:
                return at, event


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def bench_service(agents: int, waiting: int, samples: int) -> None:
    print(f"service: available → offer, state seeded with {agents} offline agents and {waiting} waiting calls")
    with tempfile.TemporaryDirectory() as directory:
        settings = Settings(  # type: ignore[call-arg]
            grpc_address="127.0.0.1:0",
            http_address="127.0.0.1:0",
            db=f"sqlite:///{Path(directory) / 'bench.db'}",
            sim_state=str(Path(directory) / "simulator.json"),
            media_dir=directory,
            recordings_dir=directory,
            rtpengine="off",
        )
        state = json.dumps(codec.encode(seeded_state(agents, waiting)))
        service = Service(settings)
        addresses = await service.start()
        assert service.store is not None and service.queues is not None
        await service.store.transaction(lambda tx: tx.save_router_state(state))
        queues = service.queues
        await queues.read()
        channel = grpc.aio.insecure_channel(addresses.grpc)
        try:
            stream = Stream(contact_center_pb2_grpc.ContactCenterServiceStub(channel), "measured_agent")
            await stream.until("logged_in")
            to_offer, to_presence = [], []
            for index in range(samples):
                call_id = f"measured_call_{index}"
                await queues.enqueue(call_id, "measured")  # waits: the agent is AWAY
                sent = stream.presence(model_pb.AGENT_PRESENCE_AVAILABLE)
                at, _ = await stream.until("offer")
                to_offer.append(at - sent)
                await queues.call_gone(call_id)  # the caller hangs up: the offer is withdrawn
                await stream.until("offer_withdrawn")
                sent = stream.presence(model_pb.AGENT_PRESENCE_AWAY)
                at, event = await stream.until("presence")
                while event.presence.state != model_pb.AGENT_PRESENCE_AWAY:
                    at, event = await stream.until("presence")
                to_presence.append(at - sent)
            stream.requests.put_nowait(None)
            await asyncio.gather(stream.reader, return_exceptions=True)
        finally:
            await channel.close()
            await service.stop(grace=0.5)
    print(f"  {'target':40} {'median ms':>10} {'p95 ms':>10} {'median / baseline':>18}")
    baseline = statistics.median(to_presence)
    for name, values in (
        ("set_presence AVAILABLE → offer", to_offer),
        ("baseline: set_presence AWAY → presence", to_presence),
    ):
        median = statistics.median(values)
        print(
            f"  {name:40} {median * 1000:10.2f} {percentile(values, 0.95) * 1000:10.2f} "
            f"{median / baseline:17.2f}x   ({len(values)} samples)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--waiting", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=2000, help="router steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--service-agents", type=int, default=1000)
    parser.add_argument("--service-waiting", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    if args.quick:
        args.agents, args.waiting, args.steps, args.rounds = 100, 500, 200, 2
        args.service_agents, args.service_waiting, args.samples = 50, 200, 10
    print(f"python {platform.python_version()} on {platform.machine()}")
    bench_router(args.agents, args.waiting, args.steps, args.rounds)
    # An empty contact centre first (the floor of a step through the service), then the seeded one.
    for agents, waiting in ((0, 0), (args.service_agents, args.service_waiting)):
        asyncio.run(bench_service(agents, waiting, args.samples))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
