"""wacall call benchmarks: call setup time, and how many concurrent calls keep their audio in real time, per route.

Run: `.venv/bin/python bench/calls.py` (or `make bench-calls`); `--quick` for a smoke run. The wacall service (with
its embedded WhatsApp simulator, whose simulated users' phones are real aiortc peers) runs in a subprocess; the
benchmark's own aiortc agents and the gRPC client run in this process. Setup times are measured per route
(announcement, webrtc through each bridge, media_stream) against the StartCall RPC latency of the same run; the
concurrency ramps against a same-run baseline of bare aiortc leg pairs. The webrtc bridge is measured twice in the
same run: through rtpengine (the service's default when rtpengine is installed; its CPU is measured apart) and in
process with aiortc (a second service with `--rtpengine off`). The talk delay (a marked burst of the business
side's voice → the moment the user's phone hears it, with the business talking since before the call connected) is
measured per route against a same-run baseline of a bare aiortc leg pair; `--talk-delay-only` runs just that.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf import duration_pb2
from run import Child, machine_info, start_child  # bench/run.py: subprocess handling and machine description
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.media.leg import AudioLeg
from wacall.media.tracks import FRAME_SECONDS, SILENCE, AudioSource, ToneSource

T = TypeVar("T")

BUSINESS = "+447911123456"
POLICY = "sandbox"  # 100 connected calls per 24 h per pair; every call below also uses a user of its own
REAL_TIME_FPS = 1 / FRAME_SECONDS  # 50 frames of 20 ms per second
KEEPS_UP = 0.90  # a step keeps up when every call, both ways, gets at least this share of real time
SETUP_POLL = 0.005  # seconds between GetPhoneCall polls while waiting for the first audible frame
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RPC_TIMEOUT = 30.0


def user(i: int) -> str:
    """Distinct valid Spanish mobiles: +34 61234 0000..9999."""
    return f"+3461234{i % 10000:04d}"


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=seconds))
    return d


def proc_cpu_seconds(pid: int, tid: int | None = None) -> float | None:
    """utime + stime from /proc/<pid>/stat (the whole process, all its threads) or of one thread; None without /proc."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5), counted after "(comm)"


def engine_pids(service_pid: int) -> list[int]:
    """The rtpengine processes the service started (its children named rtpengine)."""
    pids = []
    try:
        for task in Path(f"/proc/{service_pid}/task").iterdir():
            pids += [int(pid) for pid in (task / "children").read_text().split()]
    except OSError:
        return []
    named = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "rtpengine":
                named.append(pid)
        except OSError:
            continue
    return named


def engine_cpu_seconds(service_pid: int) -> float | None:
    """utime + stime of the service's rtpengines; None when it runs none."""
    pids = engine_pids(service_pid)
    times = [proc_cpu_seconds(pid) for pid in pids]
    return sum(t for t in times if t is not None) if pids else None


def host_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine, all cores, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - values[3] - values[4], total


def cpu_pressure_seconds() -> float | None:
    """Linux PSI: total time during which at least one runnable task waited for a CPU (any process, any tenant)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class CpuSample:
    """CPU counters at one moment: the wacall process, its main thread (the asyncio loop), this process, the host."""

    wall: float
    service: float | None
    service_loop: float | None
    bench: float | None
    host: tuple[int, int] | None
    pressure: float | None
    engine: float | None = None  # the service's rtpengine, a process of its own

    @classmethod
    def take(cls, service_pid: int) -> CpuSample:
        return cls(
            time.perf_counter(),
            proc_cpu_seconds(service_pid),
            proc_cpu_seconds(service_pid, service_pid),
            proc_cpu_seconds(os.getpid()),
            host_jiffies(),
            cpu_pressure_seconds(),
            engine_cpu_seconds(service_pid),
        )

    def until(self, later: CpuSample) -> Usage:
        seconds = later.wall - self.wall

        def percent(before: float | None, after: float | None) -> float | None:
            return None if before is None or after is None or seconds <= 0 else (after - before) / seconds * 100

        host = None
        if self.host is not None and later.host is not None and later.host[1] > self.host[1]:
            host = (later.host[0] - self.host[0]) / (later.host[1] - self.host[1]) * 100
        return Usage(
            percent(self.service, later.service),
            percent(self.service_loop, later.service_loop),
            percent(self.bench, later.bench),
            host,
            percent(self.pressure, later.pressure),
            percent(self.engine, later.engine),
        )


@dataclass
class Usage:
    """CPU% over an interval: processes and threads as a percentage of one core; the host's busy time (tick-sampled
    /proc/stat, which undercounts bursty work such as 20 ms audio timers) as a percentage of all its cores; and the
    share of the interval during which some runnable task, of any process, waited for a CPU (PSI)."""

    service: float | None = None
    service_loop: float | None = None
    bench: float | None = None
    host: float | None = None
    waiting: float | None = None
    engine: float | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (as bench/run.py)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def bounded(limit: int, items: Sequence[T], work: Callable[[T], Awaitable[object]]) -> list[object]:
    """`work(item)` for every item, at most `limit` at a time; exceptions are returned, not raised."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> object:
        async with gate:
            return await work(item)

    return await asyncio.gather(*(one(item) for item in items), return_exceptions=True)


class RepeatingTone:
    """The agent's voice: one precomputed 20 ms frame of a 300 Hz tone (exactly 6 periods, so it loops without a
    click), so that the benchmark's own agents spend their CPU on WebRTC, not on computing sines."""

    finished = False

    def __init__(self, frequency: float = 300.0, amplitude: float = 0.3) -> None:
        assert (frequency * FRAME_SECONDS).is_integer(), "the frame must hold whole periods"
        frame = ToneSource(frequency, amplitude).next_frame()
        assert frame is not None
        self.frame = frame

    def next_frame(self) -> bytes | None:
        return self.frame


@dataclass
class Stubs:
    calling: calling_pb2_grpc.CallingServiceStub
    sim: simulator_pb2_grpc.SimulatorServiceStub


class Users:
    """Hands out fresh user numbers, each with a permanent grant and a phone that answers at once."""

    def __init__(self, stubs: Stubs) -> None:
        self.stubs = stubs
        self.next = 0

    async def take(self, count: int, ring_seconds: float = 0.0) -> list[str]:
        numbers = [user(self.next + i) for i in range(count)]
        self.next += count
        if self.next > 10000:
            raise RuntimeError("out of distinct user numbers")

        async def provision(number: str) -> None:
            await self.stubs.sim.SetUserBehavior(
                sim_pb.SetUserBehaviorRequest(
                    user_number=number,
                    on_call=sim_pb.ANSWER,
                    ring_duration=duration(ring_seconds),
                    talk_duration=duration(0),
                    tone_hz=880,
                ),
                timeout=RPC_TIMEOUT,
            )
            await self.stubs.sim.GrantPermission(
                sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=number, permanent=True),
                timeout=RPC_TIMEOUT,
            )

        for outcome in await bounded(8, numbers, provision):
            if isinstance(outcome, BaseException):
                raise outcome
        return numbers


# --- 1. call setup time -------------------------------------------------------------------------------------------


@dataclass
class SetupResult:
    route: str  # the route measured, as printed
    setup: list[float] = field(default_factory=list)  # seconds, StartCall issued → first poll that saw audio
    rpc: list[float] = field(default_factory=list)  # seconds, StartCall RPC alone
    bracket: list[float] = field(default_factory=list)  # seconds, uncertainty of each setup figure (polling)
    answered: list[float] = field(default_factory=list)  # seconds, StartCall issued → first poll: phone connected
    first_frame: list[float] = field(default_factory=list)  # seconds, → first poll: any frame (silence too) received
    failed: int = 0
    cpu_wait: float | None = None  # share of the calls' wall time during which some task waited for a CPU (PSI)


class SetupRoute:
    """One call of a route, as its client places it: `prepare` (not timed: e.g. an agent's offer made in advance),
    `place` (timed: StartCall and whatever the client does at once with its reply), `close`."""

    label = ""
    rpc_seconds = 0.0  # set by `place`: the StartCall RPC alone

    def __init__(self, stubs: Stubs) -> None:
        self.stubs = stubs

    async def prepare(self) -> None:
        """Whatever the client has ready before it calls."""

    async def start_call(self, number: str, route: pb.Route) -> pb.Call:
        began = time.perf_counter()
        call = await self.stubs.calling.StartCall(
            pb.StartCallRequest(business_number=BUSINESS, user_number=number, route=route), timeout=RPC_TIMEOUT
        )
        self.rpc_seconds = time.perf_counter() - began
        return call

    async def place(self, number: str) -> pb.Call:
        raise NotImplementedError

    async def close(self) -> None:
        """Release the client's side (the call itself is ended by the caller)."""


class AnnouncementSetup(SetupRoute):
    label = "announcement route (440 Hz tone)"

    async def place(self, number: str) -> pb.Call:
        route = pb.Route(announcement=pb.AnnouncementRoute(tone_hz=440, tone_duration=duration(5)))
        return await self.start_call(number, route)


class WebRtcSetup(SetupRoute):
    """An agent whose offer is ready, talking (a 300 Hz tone) from the moment its leg connects."""

    def __init__(self, stubs: Stubs, label: str, voice: AudioSource | None = None) -> None:
        super().__init__(stubs)
        self.label = label
        self.agent = AudioLeg(name="agent", source=voice or RepeatingTone())
        self.offer = ""

    async def prepare(self) -> None:
        self.offer = await self.agent.create_offer()

    async def place(self, number: str) -> pb.Call:
        call = await self.start_call(number, pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=self.offer)))
        if not call.webrtc_answer_sdp:
            raise RuntimeError("the bridged call came back without the agent's answer SDP")
        await self.agent.apply_answer(call.webrtc_answer_sdp)
        return call

    async def close(self) -> None:
        await self.agent.close()


class MediaStreamSetup(SetupRoute):
    """A program that attaches to the call's CallMedia stream as soon as StartCall returns and talks (a 300 Hz
    tone, 20 ms frames paced in real time) from then on."""

    label = "media_stream route (a CallMedia client)"

    def __init__(self, stubs: Stubs, voice: AudioSource | None = None) -> None:
        super().__init__(stubs)
        self.voice: AudioSource = voice or RepeatingTone()
        self.outgoing: asyncio.Queue[pb.CallMediaRequest | None] = asyncio.Queue()
        self.stream: grpc.aio.StreamStreamCall | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def requests(self) -> AsyncIterator[pb.CallMediaRequest]:
        while (item := await self.outgoing.get()) is not None:
            yield item

    async def talk(self) -> None:
        began = time.monotonic()
        for index in itertools.count(1):
            self.outgoing.put_nowait(pb.CallMediaRequest(audio=self.voice.next_frame() or SILENCE))
            await asyncio.sleep(max(0.0, began + index * FRAME_SECONDS - time.monotonic()))

    async def listen(self, stream: grpc.aio.StreamStreamCall) -> None:
        async for _ in stream:
            pass

    async def place(self, number: str) -> pb.Call:
        call = await self.start_call(number, pb.Route(media_stream=pb.MediaStreamRoute()))
        self.outgoing.put_nowait(pb.CallMediaRequest(call_id=call.call_id))
        self.stream = self.stubs.calling.CallMedia(self.requests())
        self.tasks = [asyncio.create_task(self.listen(self.stream)), asyncio.create_task(self.talk())]
        return call

    async def close(self) -> None:
        """Stop talking, end the request stream, and let the response stream end with the call."""
        for task in self.tasks[1:]:
            task.cancel()
        self.outgoing.put_nowait(None)
        if self.tasks:
            try:
                await asyncio.wait_for(self.tasks[0], RPC_TIMEOUT)
            except (grpc.aio.AioRpcError, TimeoutError):
                if self.stream is not None:
                    self.stream.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def one_setup(stubs: Stubs, number: str, placer: SetupRoute, result: SetupResult | None) -> None:
    await placer.prepare()
    started = time.perf_counter()
    call = await placer.place(number)
    request = sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id)
    silent_until = started  # the server answered "no audio yet" to a poll sent at this moment (lower bound)
    answered = first_frame = None
    try:
        while True:
            sent = time.perf_counter()
            phone = await stubs.sim.GetPhoneCall(request, timeout=RPC_TIMEOUT)
            heard = time.perf_counter()
            if answered is None and phone.state != "ringing":
                answered = heard
            if first_frame is None and phone.frames_received > 0:
                first_frame = heard
            if phone.audible_frames_received > 0:
                break
            if phone.state == "ended" or heard - started > 20:
                raise RuntimeError(f"no audio reached the phone ({phone.state}, {heard - started:.1f} s)")
            silent_until = sent
            await asyncio.sleep(SETUP_POLL)
    finally:
        await stubs.calling.EndCall(pb.EndCallRequest(call_id=call.call_id), timeout=RPC_TIMEOUT)
    if result is not None:
        result.setup.append(heard - started)
        result.rpc.append(placer.rpc_seconds)
        result.bracket.append(heard - silent_until)
        result.answered.append((answered or heard) - started)
        result.first_frame.append((first_frame or heard) - started)


async def bench_setup(
    stubs: Stubs, users: Users, placer: Callable[[], SetupRoute], calls: int, warmup: int
) -> SetupResult:
    numbers = await users.take(calls + warmup)
    result = SetupResult(placer().label)
    began, waited = time.perf_counter(), cpu_pressure_seconds()
    for i, number in enumerate(numbers):
        route = placer()
        try:
            await one_setup(stubs, number, route, result if i >= warmup else None)
        except (grpc.aio.AioRpcError, RuntimeError, TimeoutError) as error:
            result.failed += 1
            print(f"  setup call {i} ({result.route}) failed: {error}", file=sys.stderr)
        finally:
            await route.close()
    now_waited = cpu_pressure_seconds()
    if waited is not None and now_waited is not None:
        result.cpu_wait = (now_waited - waited) / (time.perf_counter() - began)
    return result


def print_setup(result: SetupResult, section: str, calls: int, warmup: int) -> None:
    def ms(values: list[float]) -> list[float]:
        return [v * 1000 for v in values]

    print(
        f"\n{section}. Call setup, {result.route}, user answers at once: {calls} sequential calls "
        f"(+{warmup} warmup), one fresh user each"
    )
    print(f"  {'from StartCall issued to':<60} {'n':>4} {'median ms':>10} {'p95 ms':>8} {'min ms':>8} {'max ms':>8}")
    for label, values in (
        ("first audible frame at the user's phone (setup time)", ms(result.setup)),
        ("StartCall RPC returned (same calls; baseline)", ms(result.rpc)),
        ("  milestone: the phone answered (left 'ringing')", ms(result.answered)),
        ("  milestone: first frame of any kind (silence too) at phone", ms(result.first_frame)),
    ):
        if values:
            print(
                f"  {label:<60} {len(values):>4} {statistics.median(values):>10.1f} {percentile(values, 95):>8.1f} "
                f"{min(values):>8.1f} {max(values):>8.1f}"
            )
    if result.bracket:
        print(
            f"  (found by polling GetPhoneCall every {SETUP_POLL * 1000:.0f} ms: each figure is an upper bound; the "
            f"first audible frame was seen on\n  average {statistics.mean(result.bracket) * 1000:.1f} ms after the "
            "last poll that still saw none)"
        )
    if result.cpu_wait is not None:
        print(
            f"  CPU wait during these calls: {result.cpu_wait:.0%} (/proc/pressure/cpu: some runnable task of the "
            "machine waited for a core;\n  high = the figures above include queueing behind other work)"
        )
    if result.failed:
        print(f"  failed calls: {result.failed}")


def setup_summary(result: SetupResult) -> str:
    if not result.setup:
        return f"call setup, {result.route}: no call reached the phone's ear"
    median, p95 = statistics.median(result.setup) * 1000, percentile(result.setup, 95) * 1000
    rpc_median, rpc_p95 = statistics.median(result.rpc) * 1000, percentile(result.rpc, 95) * 1000
    return (
        f"call setup (StartCall -> first audible frame at the phone), {result.route}: median {median:.0f} ms, "
        f"p95 {p95:.0f} ms; StartCall RPC alone: median {rpc_median:.1f} ms, p95 {rpc_p95:.1f} ms; "
        f"setup/RPC {median / rpc_median:.1f}x (median)"
    )


# --- 3. talk delay --------------------------------------------------------------------------------------------------

TALK_GAP = 0.6  # seconds of silence before each burst: longer than any queue wacall ever held (500 ms)
TALK_BURST_FRAMES = 10  # 200 ms of tone per burst
TALK_RING = 1.0  # seconds the phone rings before the user picks up, the business side talking all along


class MarkedVoice:
    """The business side's voice for the talk delay: a 300 Hz tone from the first frame (so audio is queued before
    the call connects, as a real agent or program talks), then, once told, silence broken by marked bursts of the
    tone. The moment each burst's first frame leaves the speaker (its "mouth" time) is recorded."""

    finished = False

    def __init__(self) -> None:
        self.frame = RepeatingTone().frame
        self.talking = True
        self.burst_frames_left = 0
        self.burst_pending = False
        self.mouth: list[float] = []

    def burst(self, frames: int) -> None:
        self.talking = False
        self.burst_frames_left = frames
        self.burst_pending = True

    def next_frame(self) -> bytes | None:
        if self.burst_frames_left:
            if self.burst_pending:
                self.mouth.append(time.perf_counter())
                self.burst_pending = False
            self.burst_frames_left -= 1
            return self.frame
        return self.frame if self.talking else SILENCE


@dataclass
class TalkDelayResult:
    route: str
    delay: list[float] = field(default_factory=list)  # seconds, a burst's first frame spoken → first poll hearing it
    bracket: list[float] = field(default_factory=list)  # seconds, uncertainty of each figure (polling)
    failed: int = 0
    cpu_wait: float | None = None  # share of the calls' wall time during which some task waited for a CPU (PSI)


HeardCount = Callable[[], Awaitable[int]]  # audible frames the user's phone has heard so far


async def measure_talk_delay(voice: MarkedVoice, heard_count: HeardCount, bursts: int, result: TalkDelayResult) -> None:
    """With the business talking since before the call connected: wait until the phone hears it, go quiet, then
    time `bursts` marked bursts from the speaker's mouth to the phone's ear."""
    deadline = time.perf_counter() + 20
    while await heard_count() < 25:  # half a second of the business heard: the call is connected and in real time
        if time.perf_counter() > deadline:
            raise RuntimeError("the phone never heard the business side")
        await asyncio.sleep(0.05)
    voice.talking = False
    await asyncio.sleep(TALK_GAP)
    for _ in range(bursts):
        before = await heard_count()
        voice.burst(TALK_BURST_FRAMES)
        silent_until = time.perf_counter()
        while True:
            sent = time.perf_counter()
            if await heard_count() > before:
                heard = time.perf_counter()
                break
            if sent - silent_until > 5:
                raise RuntimeError("the phone never heard a burst")
            silent_until = sent
            await asyncio.sleep(SETUP_POLL)
        result.delay.append(heard - voice.mouth[-1])
        result.bracket.append(heard - max(silent_until, voice.mouth[-1]))
        await asyncio.sleep(TALK_GAP)


async def talk_delay_of_pair(bursts: int, result: TalkDelayResult) -> None:
    """The baseline: a bare aiortc leg pair in this process, agent-like offerer talking to a phone-like answerer."""
    voice = MarkedVoice()
    agent = AudioLeg(name="agent", source=voice)
    phone = AudioLeg(name="phone", source=ToneSource(880, amplitude=0.25))
    try:
        await agent.apply_answer(await phone.accept_offer(await agent.create_offer()))

        async def heard_count() -> int:
            return phone.consumer.audible_frames if phone.consumer is not None else 0

        await measure_talk_delay(voice, heard_count, bursts, result)
    finally:
        await agent.close()
        await phone.close()


async def talk_delay_of_call(
    stubs: Stubs, number: str, placer: SetupRoute, voice: MarkedVoice, bursts: int, result: TalkDelayResult
) -> None:
    """One call of a route through the service, its business side speaking `voice`; the phone polled over gRPC."""
    await placer.prepare()
    call = await placer.place(number)
    request = sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id)

    async def heard_count() -> int:
        phone = await stubs.sim.GetPhoneCall(request, timeout=RPC_TIMEOUT)
        if phone.state == "ended":
            raise RuntimeError("the call ended while measuring")
        return phone.audible_frames_received

    try:
        await measure_talk_delay(voice, heard_count, bursts, result)
    finally:
        await stubs.calling.EndCall(pb.EndCallRequest(call_id=call.call_id), timeout=RPC_TIMEOUT)


TalkPlacer = Callable[[MarkedVoice], SetupRoute]


async def bench_talk_delay(
    stubs: Stubs | None, users: Users | None, label: str, placer: TalkPlacer | None, calls: int, bursts: int
) -> TalkDelayResult:
    """`calls` calls of one route (or, without a placer, of the bare pair), `bursts` marked bursts each."""
    result = TalkDelayResult(label)
    numbers = await users.take(calls, ring_seconds=TALK_RING) if users is not None else [""] * calls
    began, waited = time.perf_counter(), cpu_pressure_seconds()
    for number in numbers:
        try:
            if placer is None or stubs is None:
                await talk_delay_of_pair(bursts, result)
                continue
            voice = MarkedVoice()
            route = placer(voice)
            try:
                await talk_delay_of_call(stubs, number, route, voice, bursts, result)
            finally:
                await route.close()
        except (grpc.aio.AioRpcError, RuntimeError, TimeoutError) as error:
            result.failed += 1
            print(f"  talk delay call ({label}) failed: {error}", file=sys.stderr)
    now_waited = cpu_pressure_seconds()
    if waited is not None and now_waited is not None:
        result.cpu_wait = (now_waited - waited) / (time.perf_counter() - began)
    return result


def print_talk_delays(results: list[TalkDelayResult], calls: int, bursts: int) -> None:
    baseline = results[0]
    base = statistics.median(baseline.delay) * 1000 if baseline.delay else float("nan")
    print(
        f"\n3. Talk delay: the business side talks from before the call connects (the phone rings "
        f"{TALK_RING:g} s), then goes quiet;\n   {calls} call(s) per route, {bursts} marked "
        f"{TALK_BURST_FRAMES * FRAME_SECONDS * 1000:.0f} ms bursts each {TALK_GAP * 1000:.0f} ms apart: from a "
        f"burst's first frame spoken to the first\n   poll (every {SETUP_POLL * 1000:.0f} ms) at which the phone had "
        "heard it. Baseline: a bare aiortc leg pair, same run. CPU wait: share of\n   the route's wall time "
        "during which some runnable task of the machine waited for a core (/proc/pressure/cpu)."
    )
    print(
        f"  {'route':<48} {'n':>4} {'median ms':>10} {'p95 ms':>8} {'min ms':>8} {'max ms':>8} {'vs pair':>9} "
        f"{'CPU wait':>8}"
    )
    for result in results:
        if not result.delay:
            print(f"  {result.route:<48} no burst was heard ({result.failed} failed)")
            continue
        values = [v * 1000 for v in result.delay]
        median = statistics.median(values)
        print(
            f"  {result.route:<48} {len(values):>4} {median:>10.1f} {percentile(values, 95):>8.1f} "
            f"{min(values):>8.1f} {max(values):>8.1f} {median - base:>+7.1f}ms {fmt_share(result.cpu_wait):>8}"
            + (f"  ({result.failed} failed)" if result.failed else "")
        )


def fmt_share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def talk_delay_summary(result: TalkDelayResult, baseline: TalkDelayResult) -> str:
    if not result.delay or not baseline.delay:
        return f"talk delay, {result.route}: not measured"
    median, base = statistics.median(result.delay) * 1000, statistics.median(baseline.delay) * 1000
    return (
        f"talk delay (business speaks -> the phone hears), {result.route}: median {median:.0f} ms, "
        f"p95 {percentile(result.delay, 95) * 1000:.0f} ms; bare aiortc pair {base:.0f} ms; "
        f"{median - base:+.0f} ms, {median / base:.2f}x"
    )


async def run_talk_delays(
    stubs: Stubs, users: Users, aiortc_stubs: Stubs, aiortc_users: Users, sizes: Sizes
) -> list[TalkDelayResult]:
    calls, bursts = sizes.talk_calls, sizes.talk_bursts
    results = [await bench_talk_delay(None, None, "bare aiortc leg pair (baseline)", None, calls, bursts)]
    routes: list[tuple[Stubs, Users, str, TalkPlacer]] = [
        (aiortc_stubs, aiortc_users, "webrtc route, aiortc bridge in process",
         lambda voice: WebRtcSetup(aiortc_stubs, "", voice)),
        (stubs, users, "webrtc route, bridged through rtpengine", lambda voice: WebRtcSetup(stubs, "", voice)),
        (stubs, users, "media_stream route (a CallMedia client)", lambda voice: MediaStreamSetup(stubs, voice)),
    ]  # fmt: skip
    for route_stubs, route_users, label, placer in routes:
        results.append(await bench_talk_delay(route_stubs, route_users, label, placer, calls, bursts))
    print_talk_delays(results, calls, bursts)
    return results


# --- 2. concurrency ---------------------------------------------------------------------------------------------


@dataclass
class Counts:
    """One end of a call at one moment: audible 20 ms frames it has heard and sent so far."""

    at: float  # perf_counter seconds
    heard: int
    sent: int


def leg_counts(leg: AudioLeg) -> Counts:
    heard = leg.consumer.audible_frames if leg.consumer is not None else 0
    return Counts(time.perf_counter(), heard, leg.outgoing.audible_frames_sent)


@dataclass
class Live:
    """One call of a step: `agent` is this process's aiortc leg, `phone_counts` reads the user's end (the simulated
    phone over GetPhoneCall, or the baseline's answering leg)."""

    agent: AudioLeg
    phone_counts: Callable[[], Awaitable[Counts]]
    end: Callable[[], Awaitable[None]]

    def agent_counts(self) -> Counts:
        return leg_counts(self.agent)


class Mode:
    section = ""
    label = ""
    summary = ""

    def __init__(self, stubs: Stubs, users: Users) -> None:
        self.stubs = stubs
        self.users = users

    async def prepare(self, n: int) -> None:
        """Whatever a step needs before its calls start (not timed)."""

    async def start(self, index: int) -> Live:
        raise NotImplementedError


class ServiceMode(Mode):
    passthrough = False

    async def prepare(self, n: int) -> None:
        self.numbers = await self.users.take(n)

    async def start(self, index: int) -> Live:
        agent = AudioLeg(name="agent", source=RepeatingTone())
        call: pb.Call | None = None
        try:
            offer = await agent.create_offer()
            route = pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=offer, passthrough=self.passthrough))
            call = await self.stubs.calling.StartCall(
                pb.StartCallRequest(business_number=BUSINESS, user_number=self.numbers[index], route=route),
                timeout=RPC_TIMEOUT,
            )
            answer = call.webrtc_answer_sdp
            deadline = time.monotonic() + RPC_TIMEOUT
            while not answer:  # passthrough: the platform's answer arrives with the connect webhook
                if time.monotonic() > deadline:
                    raise RuntimeError("no answer SDP")
                await asyncio.sleep(0.01)
                answer = (await self.stubs.calling.GetCall(pb.GetCallRequest(call_id=call.call_id))).webrtc_answer_sdp
            await agent.apply_answer(answer)
        except BaseException:
            if call is not None:
                await self.stubs.calling.EndCall(pb.EndCallRequest(call_id=call.call_id), timeout=RPC_TIMEOUT)
            await agent.close()
            raise
        request = sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id)
        call_id = call.call_id

        async def phone_counts() -> Counts:
            sent = time.perf_counter()
            phone = await self.stubs.sim.GetPhoneCall(request, timeout=RPC_TIMEOUT)
            return Counts((sent + time.perf_counter()) / 2, phone.audible_frames_received, phone.frames_sent)

        async def end() -> None:
            try:
                await self.stubs.calling.EndCall(pb.EndCallRequest(call_id=call_id), timeout=RPC_TIMEOUT)
            finally:
                await agent.close()

        return Live(agent, phone_counts, end)


class BridgeMode(ServiceMode):
    section = "2a"
    label = "webrtc bridge"
    summary = "agent (this process) <-> rtpengine (wacall's) <-> simulated phone (in the service process)"


class AiortcBridgeMode(ServiceMode):
    section = "2b"
    label = "webrtc bridge in aiortc (--rtpengine off)"
    summary = "agent (this process) <-> wacall's aiortc bridge <-> simulated phone (both in the service process)"


class PassthroughMode(ServiceMode):
    section = "2c"
    label = "webrtc passthrough"
    summary = "agent (this process) <-> simulated phone (service process); wacall only signals"
    passthrough = True


class PairsMode(Mode):
    section = "2d"
    label = "aiortc pairs (no service)"
    summary = "baseline: N AudioLeg pairs in this process, agent-like offerer <-> phone-like answerer"

    async def start(self, index: int) -> Live:
        agent = AudioLeg(name="agent", source=RepeatingTone())
        phone = AudioLeg(name="phone", source=ToneSource(880, amplitude=0.25))  # as a simulated phone talks
        try:
            answer = await phone.accept_offer(await agent.create_offer())
            await agent.apply_answer(answer)
        except BaseException:
            await agent.close()
            await phone.close()
            raise

        async def phone_counts() -> Counts:
            return leg_counts(phone)

        async def end() -> None:
            await agent.close()
            await phone.close()

        return Live(agent, phone_counts, end)


@dataclass
class Step:
    n: int
    started: int  # calls that were set up
    setup_seconds: float  # to start all N calls
    flowing: int = 0  # calls whose audio reached both ends before the window
    # Per call, audible frames over the window as a share of real time: heard at each end, and sent by each end.
    phone_heard: list[float] = field(default_factory=list)
    agent_sent: list[float] = field(default_factory=list)
    agent_heard: list[float] = field(default_factory=list)
    phone_sent: list[float] = field(default_factory=list)
    cpu: Usage = field(default_factory=Usage)  # over the window
    error: str = ""
    retry: bool = False

    @property
    def keeps_up(self) -> bool:
        return (
            not self.error
            and self.started == self.n
            and bool(self.phone_heard)
            and min(self.phone_heard) >= KEEPS_UP
            and min(self.agent_heard) >= KEEPS_UP
        )


def shares(before: list[Counts], after: list[Counts], heard: bool) -> list[float]:
    """Per call: frames heard (or sent) between two snapshots over the real-time expectation for that interval."""
    return [
        ((b.heard - a.heard) if heard else (b.sent - a.sent)) / ((b.at - a.at) * REAL_TIME_FPS)
        for a, b in zip(before, after, strict=True)
    ]


async def measure(step: Step, lives: list[Live], service: Child, sizes: Sizes) -> None:
    """Wait until audio flows both ways on every call, let it settle, then count over the window."""
    deadline = time.monotonic() + sizes.flow_timeout
    while True:
        phones = await asyncio.gather(*(live.phone_counts() for live in lives))
        step.flowing = sum(p.heard > 0 and live.agent_counts().heard > 0 for p, live in zip(phones, lives, strict=True))
        if step.flowing == len(lives) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(sizes.settle)
    cpu_before = CpuSample.take(service.process.pid)
    phones_before = await asyncio.gather(*(live.phone_counts() for live in lives))
    agents_before = [live.agent_counts() for live in lives]
    await asyncio.sleep(sizes.window)
    phones_after = await asyncio.gather(*(live.phone_counts() for live in lives))
    agents_after = [live.agent_counts() for live in lives]
    step.cpu = cpu_before.until(CpuSample.take(service.process.pid))
    step.phone_heard = shares(phones_before, phones_after, heard=True)
    step.phone_sent = shares(phones_before, phones_after, heard=False)
    step.agent_heard = shares(agents_before, agents_after, heard=True)
    step.agent_sent = shares(agents_before, agents_after, heard=False)


async def run_step(mode: Mode, n: int, service: Child, sizes: Sizes) -> Step:
    await mode.prepare(n)
    began = time.perf_counter()
    outcomes = await bounded(4, list(range(n)), mode.start)
    lives = [o for o in outcomes if isinstance(o, Live)]
    failures = [o for o in outcomes if not isinstance(o, Live)]
    step = Step(n, started=len(lives), setup_seconds=time.perf_counter() - began)
    if failures:
        step.error = f"{len(failures)} call(s) failed to start, e.g. {failures[0]!r}"[:200]
    try:
        await measure(step, lives, service, sizes)
    except (grpc.aio.AioRpcError, TimeoutError, RuntimeError) as error:
        step.error = (step.error + "; " if step.error else "") + f"measuring failed: {error!r}"[:200]
    finally:
        await bounded(8, lives, lambda live: live.end())
        await asyncio.sleep(0.5)  # let the service finish closing legs before the next step
    return step


@dataclass
class Ramp:
    mode: Mode
    steps: list[Step]
    sustained: int
    stopped: str  # why the ramp ended


async def ramp(mode: Mode, service: Child, sizes: Sizes) -> Ramp:
    print(f"\n{mode.section}. {mode.label}: {mode.summary}")
    print_step_header()
    steps: list[Step] = []
    sustained = 0
    stopped = f"cap of {sizes.steps[-1]} reached"
    began = time.perf_counter()
    for n in sizes.steps:
        if time.perf_counter() - began > sizes.mode_budget:
            stopped = f"time budget ({sizes.mode_budget:.0f} s) used up before {n}; not saturated"
            break
        step = await run_step(mode, n, service, sizes)
        steps.append(step)
        print_step(step)
        if not step.keeps_up:
            # One retry: other tenants of the machine can spoil a single window.
            retry = await run_step(mode, n, service, sizes)
            retry.retry = True
            steps.append(retry)
            print_step(retry)
            if not retry.keeps_up:
                stopped = f"fell behind at {n}"
                break
        sustained = n
    return Ramp(mode, steps, sustained, stopped)


def print_step_header() -> None:
    print(f"  {'':>3} {'':>5} {'agent -> phone (%RT)':>19} {'phone -> agent (%RT)':>20} {'--- wacall CPU% ---':>19} "
          f"{'rtpengine':>9} {'bench':>6} {'CPU':>5} {'start':>6}")  # fmt: skip
    print(f"  {'N':>3} {'up':>5} {'sent':>7} {'heard':>11} {'sent':>8} {'heard':>11} {'all':>5} {'/call':>6} "
          f"{'loop':>6} {'CPU%':>9} {'CPU%':>6} {'wait%':>5} {'s':>6}  keeps up")  # fmt: skip
    print(f"  {'':>3} {'':>5} {'min':>7} {'min/med':>11} {'min':>8} {'min/med':>11}")


def fmt_cpu(value: float | None, width: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.0f}"


def print_step(s: Step) -> None:
    def pair(values: list[float]) -> str:
        return f"{min(values) * 100:.0f}/{statistics.median(values) * 100:.0f}" if values else "-"

    def low(values: list[float]) -> str:
        return f"{min(values) * 100:.0f}" if values else "-"

    per_call = f"{s.cpu.service / s.n:6.1f}" if s.cpu.service is not None and s.n else f"{'n/a':>6}"
    verdict = ("yes" if s.keeps_up else "NO") + (" (retry)" if s.retry else "")
    if s.flowing < s.started:
        verdict += f", audio never flowed on {s.started - s.flowing}"
    print(
        f"  {s.n:>3} {f'{s.started}/{s.n}':>5} {low(s.agent_sent):>7} {pair(s.phone_heard):>11} "
        f"{low(s.phone_sent):>8} {pair(s.agent_heard):>11} {fmt_cpu(s.cpu.service, 5)} {per_call} "
        f"{fmt_cpu(s.cpu.service_loop, 6)} {fmt_cpu(s.cpu.engine, 9)} {fmt_cpu(s.cpu.bench, 6)} "
        f"{fmt_cpu(s.cpu.waiting, 5)} "
        f"{s.setup_seconds:>6.1f}  {verdict}"
    )
    if s.error:
        print(f"      {s.error}")


def kept_up_cpu(r: Ramp, n: int) -> float | None:
    """wacall CPU% of the first step at N that kept up."""
    kept = [s for s in r.steps if s.n == n and s.keeps_up and s.cpu.service is not None]
    return kept[0].cpu.service if kept else None


def print_bridge_cost(bridge: Ramp, passthrough: Ramp) -> None:
    print(f"\nBridge-only cost estimate ({bridge.mode.label}): wacall CPU% in that mode minus passthrough mode at "
          "equal N, steps\nwhere both kept up (both include the simulated phones and the signalling; the difference "
          "is the bridge's share\nin the wacall process: two aiortc legs and the relay per call in aiortc, the "
          "counter polling through rtpengine)")  # fmt: skip
    print(f"  {'N':>3} {'bridge CPU%':>12} {'passthrough CPU%':>17} {'bridge only':>12} {'per call':>9}")
    for n in sorted({s.n for s in bridge.steps}):
        b, p = kept_up_cpu(bridge, n), kept_up_cpu(passthrough, n)
        if b is not None and p is not None:
            print(f"  {n:>3} {b:>12.0f} {p:>17.0f} {b - p:>12.0f} {(b - p) / n:>9.1f}")


def print_per_call_comparison(bridge: Ramp, aiortc_bridge: Ramp) -> None:
    """CPU per call at each N where both bridges kept up: wacall's process (with its simulated phones) and rtpengine."""
    print(
        f"  {'N':>3} {'rtpengine bridge: wacall %/call':>32} {'rtpengine %/call':>17} "
        f"{'aiortc bridge: wacall %/call':>29}"
    )
    for n in sorted({s.n for s in bridge.steps}):
        engine_steps = [s for s in bridge.steps if s.n == n and s.keeps_up and s.cpu.service is not None]
        aiortc_steps = [s for s in aiortc_bridge.steps if s.n == n and s.keeps_up and s.cpu.service is not None]
        if engine_steps and aiortc_steps:
            step, other = engine_steps[0], aiortc_steps[0]
            engine = f"{step.cpu.engine / n:.2f}" if step.cpu.engine is not None else "n/a"
            assert step.cpu.service is not None and other.cpu.service is not None
            print(f"  {n:>3} {step.cpu.service / n:>32.1f} {engine:>17} {other.cpu.service / n:>29.1f}")


def ramp_summary(r: Ramp, cores: int) -> str:
    return f"{r.mode.label}: sustains {r.sustained} concurrent calls on this machine ({cores} cores); {r.stopped}"


# --- main -----------------------------------------------------------------------------------------------------------


@dataclass
class Sizes:
    setup_calls: int
    setup_warmup: int
    steps: tuple[int, ...]  # concurrent calls per ramp step
    window: float  # seconds of audio counted per step
    settle: float  # seconds between audio flowing on every call and the window
    flow_timeout: float  # seconds to wait for audio to flow on every call of a step
    mode_budget: float  # no new step starts after this many seconds of a mode's ramp
    talk_calls: int  # calls per route measured for the talk delay
    talk_bursts: int  # marked bursts per call


DEFAULT = Sizes(
    setup_calls=30,
    setup_warmup=3,
    steps=(1, 2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64),
    window=3.0,
    settle=1.0,
    flow_timeout=15.0,
    mode_budget=40.0,
    talk_calls=3,
    talk_bursts=5,
)
QUICK = Sizes(
    setup_calls=5,
    setup_warmup=1,
    steps=(1, 2),
    window=1.0,
    settle=0.3,
    flow_timeout=10.0,
    mode_budget=15.0,
    talk_calls=1,
    talk_bursts=2,
)


async def run_all(
    service: Child, aiortc_service: Child, sizes: Sizes, talk_only: bool
) -> tuple[list[SetupResult], list[TalkDelayResult], list[Ramp]]:
    async with (
        grpc.aio.insecure_channel(service.grpc) as channel,
        grpc.aio.insecure_channel(aiortc_service.grpc) as aiortc_channel,
    ):
        stubs = Stubs(calling_pb2_grpc.CallingServiceStub(channel), simulator_pb2_grpc.SimulatorServiceStub(channel))
        users = Users(stubs)
        aiortc_stubs = Stubs(
            calling_pb2_grpc.CallingServiceStub(aiortc_channel), simulator_pb2_grpc.SimulatorServiceStub(aiortc_channel)
        )
        aiortc_users = Users(aiortc_stubs)
        # Announcement and media_stream calls hold the WhatsApp leg in process whatever the bridge; the webrtc route
        # is measured through each bridge.
        setups: list[tuple[Stubs, Users, Callable[[], SetupRoute]]] = [
            (stubs, users, lambda: AnnouncementSetup(stubs)),
            (aiortc_stubs, aiortc_users, lambda: WebRtcSetup(aiortc_stubs, "webrtc route, aiortc bridge in process")),
            (stubs, users, lambda: WebRtcSetup(stubs, "webrtc route, bridged through rtpengine")),
            (stubs, users, lambda: MediaStreamSetup(stubs)),
        ]
        if talk_only:
            return [], await run_talk_delays(stubs, users, aiortc_stubs, aiortc_users, sizes), []
        results = []
        for index, (route_stubs, route_users, placer) in enumerate(setups):
            result = await bench_setup(route_stubs, route_users, placer, sizes.setup_calls, sizes.setup_warmup)
            print_setup(result, f"1{'abcd'[index]}", sizes.setup_calls, sizes.setup_warmup)
            results.append(result)
        idle = CpuSample.take(service.process.pid)
        await asyncio.sleep(sizes.window)
        at_rest = idle.until(CpuSample.take(service.process.pid))
        print(
            f"\n2. Concurrent calls: each step starts N calls (start s), waits for audio both ways, counts "
            f"{sizes.window:g} s of it.\n   %RT: audible frames over the window / (50 frames/s x window), per call, "
            "sent by one end and heard\n   by the other (a sender that falls behind its 20 ms pacing shows in sent)."
            "\n   wacall CPU% (utime+stime from /proc, 100 = one core): all = the whole "
            "process, loop = its main\n   (asyncio) thread; bench CPU% = this process; CPU wait% = share of the "
            "window during which some runnable\n   task (of any process on the machine) waited for a CPU "
            "(/proc/pressure/cpu): high = the cores were oversubscribed."
            f"\n   At rest before the ramps: wacall {fmt_cpu(at_rest.service, 0)}%, host busy "
            f"{fmt_cpu(at_rest.host, 0)}% of all cores (/proc/stat),\n   CPU wait {fmt_cpu(at_rest.waiting, 0)}% "
            "(other tenants of this machine show here)."
        )
        ramps = [
            await ramp(BridgeMode(stubs, users), service, sizes),
            await ramp(AiortcBridgeMode(aiortc_stubs, aiortc_users), aiortc_service, sizes),
            await ramp(PassthroughMode(stubs, users), service, sizes),
            await ramp(PairsMode(stubs, users), service, sizes),
        ]
        talk_delays = await run_talk_delays(stubs, users, aiortc_stubs, aiortc_users, sizes)
    return results, talk_delays, ramps


async def start_service(name: str, directory: Path, *flags: str) -> Child:
    directory.mkdir()
    return await start_child(
        name,
        [
            sys.executable,
            "-m",
            "wacall.cli",
            "serve",
            "--grpc-address",
            "127.0.0.1:0",
            "--http-address",
            "127.0.0.1:0",
            "--db",
            f"sqlite:///{directory / 'wacall.db'}",
            "--sim-state",
            str(directory / "simulator.json"),
            "--clock",
            "system",
            "--policy",
            POLICY,
            "--log-level",
            "WARNING",
            *flags,
        ],
        directory / "wacall.stderr",
    )


async def main(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else DEFAULT
    if args.window:
        sizes = dataclasses.replace(sizes, window=args.window)
    if args.cap:
        sizes = dataclasses.replace(sizes, steps=tuple(n for n in sizes.steps if n <= args.cap) or (args.cap,))
    cores = os.cpu_count() or 1
    print("command: " + " ".join([sys.executable, *sys.argv]))
    print(machine_info())
    print(
        f"sizes: setup {sizes.setup_calls} calls (+{sizes.setup_warmup} warmup); ramp steps {list(sizes.steps)}, "
        f"{sizes.window:g} s window after {sizes.settle:g} s settle; a step keeps up when every call gets >= "
        f"{KEEPS_UP:.0%} of real time ({REAL_TIME_FPS:.0f} frames/s) both ways; policy {POLICY}"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wacall-bench-calls-") as tmp_dir:
        tmp = Path(tmp_dir)
        service = await start_service("wacall", tmp / "engine")
        aiortc_service = await start_service("wacall-aiortc", tmp / "aiortc", "--rtpengine", "off")
        engines = engine_pids(service.process.pid)
        print(f"processes: wacall (service + simulator + simulated phones) pid {service.process.pid} with rtpengine "
              f"pid {', '.join(map(str, engines)) or 'none (not installed: both bridges run in aiortc)'}, wacall "
              f"--rtpengine off pid {aiortc_service.process.pid}, benchmark (gRPC client + agents + baseline pairs) "
              f"pid {os.getpid()}")  # fmt: skip
        try:
            setups, talk_delays, ramps = await run_all(service, aiortc_service, sizes, args.talk_delay_only)
        finally:
            await service.stop()
            await aiortc_service.stop()
            stderr = (tmp / "engine" / "wacall.stderr").read_text(errors="replace")
            stderr += (tmp / "aiortc" / "wacall.stderr").read_text(errors="replace")
    if ramps:
        bridge, aiortc_bridge, passthrough, _ = ramps
        print_bridge_cost(bridge, passthrough)
        print_bridge_cost(aiortc_bridge, passthrough)
        print(
            f"\nwebrtc bridge through rtpengine against the aiortc bridge, same run: sustains {bridge.sustained} "
            f"against {aiortc_bridge.sustained} concurrent calls"
        )
        print_per_call_comparison(bridge, aiortc_bridge)
    print(
        "\nNote: the simulated phones run inside the wacall process, so with the aiortc bridge that process carries "
        "three aiortc legs\nper call (phone, WhatsApp leg, agent leg), and through rtpengine or in passthrough mode "
        "one (the phone); a real\ndeployment carries two (aiortc bridge) or none (rtpengine, passthrough). The "
        "agents run in this benchmark process."
    )
    print("\nSummary")
    for setup in setups:
        print(f"  {setup_summary(setup)}")
    for talk_delay in talk_delays[1:]:
        print(f"  {talk_delay_summary(talk_delay, talk_delays[0])}")
    for r in ramps:
        print(f"  {ramp_summary(r, cores)}")
    print(f"total wall time: {time.perf_counter() - started:.1f} s")
    problems = []
    for setup in setups:
        if not setup.setup:
            problems.append(f"call setup, {setup.route}: no call carried audio")
    for talk_delay in talk_delays:
        if not talk_delay.delay:
            problems.append(f"talk delay, {talk_delay.route}: no burst was heard")
    for r in ramps:
        if not any(s.flowing for s in r.steps):
            problems.append(f"{r.mode.label}: audio never flowed on any call")
    if problems:
        print("FAIL: " + "; ".join(problems), file=sys.stderr)
        print(f"wacall stderr (tail):\n{stderr[-3000:]}", file=sys.stderr)
        return 1
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    parser.add_argument("--cap", type=int, help="largest number of concurrent calls to try")
    parser.add_argument("--window", type=float, help="seconds of audio counted per step")
    parser.add_argument("--talk-delay-only", action="store_true", help="measure only the talk delay of each route")
    return asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(cli())
