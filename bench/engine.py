"""The media engine's cost: N concurrent relay calls through rtpengine against N bare aiortc pairs, same run.

Run: `.venv/bin/python bench/engine.py` (about a minute on 2 cores); `--quick` for a smoke run. A local rtpengine is
started by `wacall.media.engine_process.LocalEngine` (userspace forwarding). Both modes run N pairs of aiortc legs
in this process, each leg sending a tone in real time; in the relay mode every pair talks through rtpengine
(WebRTC on both sides, no transcoding: the flag set `TOWARD_WEBRTC`), in the baseline directly. Reported per mode:
the share of real time each call's audio reached each end over a measuring window, this process's CPU (the aiortc
peers: what the simulated phones and agents cost), and, for the relay, rtpengine's own CPU from /proc/<pid>/stat,
per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from calls import KEEPS_UP, REAL_TIME_FPS, RepeatingTone, bounded, proc_cpu_seconds  # bench/calls.py
from run import machine_info  # bench/run.py

from wacall.media.engine_process import EngineSettings, LocalEngine
from wacall.media.leg import AudioLeg
from wacall.media.rtpengine import TOWARD_WEBRTC, NgClient
from wacall.media.tracks import ToneSource

PORTS_PER_RELAY_CALL = 4  # two per side (RTP and RTCP ports are allocated in pairs, even with rtcp-mux)


@dataclass
class Pair:
    caller: AudioLeg
    callee: AudioLeg
    end: Callable[[], Awaitable[None]]


@dataclass
class Result:
    label: str
    calls: int
    started: int
    heard: list[float]  # per end, audible frames over the window as a share of real time
    bench_cpu: float | None  # % of a core, this process (the aiortc legs)
    engine_cpu: float | None = None  # % of a core, rtpengine

    @property
    def keeps_up(self) -> bool:
        return self.started == self.calls and bool(self.heard) and min(self.heard) >= KEEPS_UP


def legs(index: int) -> tuple[AudioLeg, AudioLeg]:
    return (
        AudioLeg(name=f"caller-{index}", source=RepeatingTone()),
        AudioLeg(name=f"callee-{index}", source=ToneSource(880, amplitude=0.25)),
    )


async def bare_pair(index: int) -> Pair:
    caller, callee = legs(index)
    await caller.apply_answer(await callee.accept_offer(await caller.create_offer()))

    async def end() -> None:
        await caller.close()
        await callee.close()

    return Pair(caller, callee, end)


def relay_pair(client: NgClient) -> Callable[[int], Awaitable[Pair]]:
    async def start(index: int) -> Pair:
        call_id = f"bench-{index}-{time.monotonic_ns()}"
        caller, callee = legs(index)
        offer = await client.offer(call_id, "caller", await caller.create_offer(), TOWARD_WEBRTC)
        answer = await client.answer(call_id, "caller", "callee", await callee.accept_offer(offer), TOWARD_WEBRTC)
        await caller.apply_answer(answer)

        async def end() -> None:
            await caller.close()
            await callee.close()
            await client.delete(call_id)

        return Pair(caller, callee, end)

    return start


def heard(leg: AudioLeg) -> int:
    return leg.consumer.audible_frames if leg.consumer is not None else 0


async def run_mode(
    label: str, start: Callable[[int], Awaitable[Pair]], calls: int, window: float, engine_pid: int | None
) -> Result:
    outcomes = await bounded(4, list(range(calls)), start)
    pairs = [o for o in outcomes if isinstance(o, Pair)]
    ends = [leg for pair in pairs for leg in (pair.caller, pair.callee)]
    try:
        deadline = time.monotonic() + 15
        while any(heard(leg) == 0 for leg in ends) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # past DTLS and the first frames rtpengine drops before both sides are keyed
        wall, own = time.perf_counter(), proc_cpu_seconds_of_self()
        engine = proc_cpu_seconds(engine_pid) if engine_pid else None
        before = [heard(leg) for leg in ends]
        await asyncio.sleep(window)
        seconds = time.perf_counter() - wall
        after = [heard(leg) for leg in ends]
        own_after = proc_cpu_seconds_of_self()
        engine_after = proc_cpu_seconds(engine_pid) if engine_pid else None
    finally:
        await bounded(8, pairs, lambda pair: pair.end())
    return Result(
        label,
        calls,
        len(pairs),
        [(b - a) / (seconds * REAL_TIME_FPS) for a, b in zip(before, after, strict=True)],
        percent(own, own_after, seconds),
        percent(engine, engine_after, seconds),
    )


def proc_cpu_seconds_of_self() -> float | None:
    return proc_cpu_seconds(os.getpid())


def percent(before: float | None, after: float | None, seconds: float) -> float | None:
    return None if before is None or after is None else (after - before) / seconds * 100


def engine_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return (done.stdout + done.stderr).strip().removeprefix("Version: ").splitlines()[0]


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def report(result: Result) -> None:
    shares = result.heard or [0.0]
    print(
        f"{result.label}: {result.started}/{result.calls} calls, heard min {min(shares):.0%} "
        f"median {statistics.median(shares):.0%} of real time, keeps up: {'yes' if result.keeps_up else 'no'}; "
        f"aiortc peers (this process) {fmt(result.bench_cpu)} of a core"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=10, help="concurrent calls per mode (default 10)")
    parser.add_argument("--window", type=float, default=10.0, help="measuring window in seconds (default 10)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 calls, a 2 s window")
    args = parser.parse_args()
    calls, window = (2, 2.0) if args.quick else (args.calls, args.window)
    print(machine_info())
    settings = EngineSettings(port_count=max(200, calls * PORTS_PER_RELAY_CALL * 2))
    async with LocalEngine(settings) as engine:
        print(f"rtpengine {engine_version(settings.binary)}, {settings.num_threads} threads, userspace forwarding")
        print(f"{calls} concurrent calls per mode, {window:.0f} s window, same run\n")
        baseline = await run_mode("aiortc pairs (no engine)", bare_pair, calls, window, None)
        report(baseline)
        relay = await run_mode("relay through rtpengine", relay_pair(engine.client), calls, window, engine.pid)
        report(relay)
        left = await engine.client.session_count()
    per_call = None if relay.engine_cpu is None else relay.engine_cpu / max(relay.started, 1)
    print(
        f"\nrtpengine relay: {relay.started} calls, rtpengine CPU {fmt(relay.engine_cpu)} of a core "
        f"({fmt(per_call)} per call); sessions left after delete: {left}"
    )
    if baseline.bench_cpu and relay.bench_cpu:
        print(
            f"aiortc peers' CPU, relay / bare pairs: {relay.bench_cpu / baseline.bench_cpu:.2f}x "
            "(the peers do the same work either way; rtpengine's share is the figure above)"
        )
    return 0 if relay.started == calls and left == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
