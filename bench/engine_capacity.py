"""The media engine's capacity: rtpengine's CPU per relayed and per transcoded call, driven by cheap RTP generators.

Run: `.venv/bin/python bench/engine_capacity.py` (about 90 s on 2 cores); `--quick` for a smoke run; `--relay-calls`,
`--transcode-calls`, `--webrtc-calls`, `--window`, `--generators` to scale. aiortc peers saturate 2 cores at about
12 pairs, so the load comes from generator processes (this script with `--generator`): asyncio UDP endpoints that
send pre-encoded 20 ms packets (Opus at 32 kbit/s, PCMU) on one real-time schedule and count what they receive.
One run measures, on one local rtpengine (`LocalEngine`, userspace forwarding):

- baseline: the same generators talking to each other directly (no engine), so their own cost and timing show apart;
- relay: plain RTP (RTP/AVP) Opus on both legs through rtpengine, no transcoding (`TOWARD_PLAIN_RTP` both sides);
- transcode: a PCMU leg (a PBX) offering and an Opus leg answering, rtpengine transcoding both ways;
- WebRTC samples, smaller: aiortc pairs relayed WebRTC ↔ WebRTC (DTLS-SRTP, ICE: the `webrtc` bridge's case), and
  an aiortc leg (Opus, DTLS-SRTP: the WhatsApp leg of a SIP call) against a PCMU generator, transcoded; what the
  plain-RTP figures leave out (SRTP, ICE, DTLS) is their difference per call.

Per mode: rtpengine's CPU (utime+stime from /proc/<pid>/stat) per call and the calls per core it implies
(1 / CPU per call), the generators' CPU apart, and whether packets kept real time at the receivers: lost (sent by
the far end during the window and not received) and late (more than LATE_AFTER behind the stream's earliest-arriving
packet, judged by RTP timestamps: more than a 60 ms jitter buffer holds).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import math
import os
import re
import socket
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

import av
from calls import bounded, proc_cpu_seconds  # bench/calls.py
from engine import Pair, engine_version, fmt, relay_pair, run_mode  # bench/engine.py
from run import machine_info  # bench/run.py

from wacall.media.engine_process import EngineSettings, LocalEngine
from wacall.media.leg import AudioLeg
from wacall.media.rtpengine import (
    TOWARD_PLAIN_RTP,
    TOWARD_WEBRTC,
    WEBRTC_OFFER_TOWARD_PLAIN_RTP_TRANSCODED,
    Flags,
    NgClient,
)
from wacall.media.sdp import without_webrtc_attributes
from wacall.media.tracks import ToneSource

FRAME_SECONDS = 0.02
LATE_AFTER = 0.06  # seconds behind the stream's own earliest arrival: beyond a 60 ms jitter buffer
TONE_HZ = 300.0  # 6 periods per 20 ms frame: one second of packets loops without a click
HOST = "127.0.0.1"
PORTS_PER_CALL = 4  # rtpengine allocates RTP and RTCP ports per side

# A PBX offering G.711 to a plain-RTP Opus peer: the Opus side is offered Opus only, and rtpengine transcodes.
PLAIN_RTP_OFFER_TOWARD_PLAIN_OPUS_TRANSCODED: Flags = MappingProxyType(
    {**TOWARD_PLAIN_RTP, "codec": {"transcode": ["opus"], "mask": ["PCMU", "PCMA"]}}
)


@dataclass(frozen=True)
class Codec:
    """A codec as the generators send it: its name, its SDP rtpmap, its clock rate and its static payload type."""

    name: str
    rtpmap: str
    clock_rate: int
    static_payload_type: int | None

    @property
    def samples_per_frame(self) -> int:
        return round(self.clock_rate * FRAME_SECONDS)


OPUS = Codec("opus", "opus/48000/2", 48000, None)
PCMU = Codec("pcmu", "PCMU/8000", 8000, 0)
CODECS = {codec.name: codec for codec in (OPUS, PCMU)}


def encoded_tone(codec: Codec, frames: int = 50) -> list[bytes]:
    """`frames` packets of a tone, encoded once with PyAV (libopus at 32 kbit/s mono voip, or G.711 µ-law)."""
    rate = codec.clock_rate
    context = av.CodecContext.create("libopus" if codec is OPUS else "pcm_mulaw", "w")
    context.format = "s16"
    context.layout = "mono"
    context.sample_rate = rate
    context.time_base = fractions.Fraction(1, rate)
    if codec is OPUS:
        context.bit_rate = 32000
        context.options = {"application": "voip"}
    samples = codec.samples_per_frame
    packets: list[bytes] = []
    index = 0
    while len(packets) < frames:
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        frame.sample_rate, frame.pts, frame.time_base = rate, index * samples, fractions.Fraction(1, rate)
        start = index * samples
        pcm = [round(0.3 * 32767 * math.sin(2 * math.pi * TONE_HZ * (start + i) / rate)) for i in range(samples)]
        frame.planes[0].update(struct.pack(f"<{samples}h", *pcm))
        packets += [bytes(packet) for packet in context.encode(frame)]
        index += 1
    return packets[:frames]


# --- the generator process ----------------------------------------------------------------------------------------


Target = tuple[int, str, int, int, int, int]
"""A leg starting: (leg index, host, port it sends to, payload type it sends, payload type it hears, its clock)."""


class GeneratorLeg(asyncio.DatagramProtocol):
    """One call leg: a UDP socket that sends a codec's packets and counts what it receives in that codec."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = None
        self.payload_type = codec.static_payload_type or 0  # what it sends
        self.receive_type = self.payload_type  # what it counts as audio, at receive_clock
        self.receive_clock = codec.clock_rate
        self.ssrc = int.from_bytes(os.urandom(4), "big")
        self.sent = 0
        self.received = 0
        self.late = 0
        self.other = 0  # datagrams of another payload type (RTCP, telephone-event)
        self.earliest: float | None = None  # min over packets of arrival - RTP time: the stream's own schedule

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[1] & 0x7F != self.receive_type:
            self.other += 1
            return
        self.received += 1
        behind = time.monotonic() - struct.unpack_from("!I", data, 4)[0] / self.receive_clock
        if self.earliest is None or behind < self.earliest:
            self.earliest = behind
        elif behind - self.earliest > LATE_AFTER:
            self.late += 1


class Generator:
    """Legs of many calls on one schedule: every 20 ms each started leg sends its next packet. A tick that runs
    late sends the packets it owes at once (their RTP times say when they were due), and is counted."""

    def __init__(self) -> None:
        self.legs: list[GeneratorLeg] = []
        self.sending: list[GeneratorLeg] = []
        self.packets = {codec.name: encoded_tone(codec) for codec in CODECS.values()}
        self.late_ticks = 0
        self.ticker: asyncio.Task[None] | None = None

    async def open(self, codecs: Sequence[str]) -> list[int]:
        loop = asyncio.get_running_loop()
        ports = []
        for name in codecs:
            _, leg = await loop.create_datagram_endpoint(lambda n=name: GeneratorLeg(CODECS[n]), local_addr=(HOST, 0))
            assert leg.transport is not None
            leg.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
            self.legs.append(leg)
            ports.append(leg.transport.get_extra_info("sockname")[1])
        return ports

    def start(self, targets: Sequence[Target]) -> None:
        for index, host, port, payload_type, receive_type, receive_clock in targets:
            leg = self.legs[index]
            leg.remote, leg.payload_type = (host, port), payload_type
            leg.receive_type, leg.receive_clock = receive_type, receive_clock
            self.sending.append(leg)
        if self.ticker is None:
            self.ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        origin = time.monotonic()  # RTP times count from here (the receivers compare against time.monotonic)
        start = loop.time()
        done = 0
        while True:
            due = int((loop.time() - start) / FRAME_SECONDS) + 1
            if due - done > 1:
                self.late_ticks += 1
            for tick in range(done, due):
                for leg in self.sending:
                    self._send(leg, tick, origin)
            done = due
            await asyncio.sleep(max(0.0, start + done * FRAME_SECONDS - loop.time()))

    def _send(self, leg: GeneratorLeg, tick: int, origin: float) -> None:
        if leg.transport is None or leg.remote is None or leg.transport.is_closing():
            return
        packets = self.packets[leg.codec.name]
        timestamp = round((origin + tick * FRAME_SECONDS) * leg.codec.clock_rate) & 0xFFFFFFFF
        header = struct.pack("!BBHII", 0x80, leg.payload_type, leg.sent & 0xFFFF, timestamp, leg.ssrc)
        leg.transport.sendto(header + packets[tick % len(packets)], leg.remote)
        leg.sent += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "cpu": proc_cpu_seconds(os.getpid()),
            "late_ticks": self.late_ticks,
            "legs": [[leg.sent, leg.received, leg.late, leg.other] for leg in self.legs],
        }

    def close(self, indexes: Sequence[int]) -> None:
        for index in indexes:
            leg = self.legs[index]
            if leg in self.sending:
                self.sending.remove(leg)
            if leg.transport is not None:
                leg.transport.close()


async def serve_generator() -> None:
    """The generator process: one JSON command per line on stdin, one JSON reply per line on stdout."""
    generator = Generator()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while line := await reader.readline():
        command = json.loads(line)
        reply: dict[str, Any] = {}
        if "open" in command:
            reply = {"ports": await generator.open(command["open"])}
        elif "start" in command:
            generator.start([tuple(target) for target in command["start"]])
        elif "snapshot" in command:
            reply = generator.snapshot()
        elif "close" in command:
            generator.close(command["close"])
        print(json.dumps(reply), flush=True)


class GeneratorProcess:
    """The driver's handle on one generator process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.legs = 0
        self._lock = asyncio.Lock()  # one command and its reply at a time: callers run concurrently

    @classmethod
    async def start(cls) -> GeneratorProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--generator",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        generator = cls(process)
        await generator._reply()
        return generator

    async def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        if not line:
            raise RuntimeError(f"generator {self.pid} exited with {await self.process.wait()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def command(self, **command: object) -> dict[str, Any]:
        assert self.process.stdin is not None
        async with self._lock:
            self.process.stdin.write(json.dumps(command).encode() + b"\n")
            await self.process.stdin.drain()
            return await self._reply()

    async def open(self, codecs: Sequence[str]) -> list[tuple[int, int]]:
        """(leg index, port) for each new leg."""
        ports: list[int] = (await self.command(open=list(codecs)))["ports"]
        first, self.legs = self.legs, self.legs + len(ports)
        return [(first + i, port) for i, port in enumerate(ports)]

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


# --- the driver ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LegRef:
    generator: GeneratorProcess
    index: int
    port: int


@dataclass
class PlainCall:
    """Two generator legs, each sending to where its SDP says; `call_id` is rtpengine's (None when direct)."""

    a: LegRef
    b: LegRef
    call_id: str | None


def plain_sdp(port: int, codec: Codec, payload_type: int) -> str:
    lines = [
        "v=0",
        f"o=- {port} 1 IN IP4 {HOST}",
        "s=-",
        f"c=IN IP4 {HOST}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {payload_type}",
        f"a=rtpmap:{payload_type} {codec.rtpmap}",
        "a=ptime:20",
        "a=sendrecv",
    ]
    return "\r\n".join(lines) + "\r\n"


def media_target(sdp: str, codec: Codec) -> tuple[str, int, int]:
    """(address, port, payload type of `codec`) from an SDP rtpengine gave."""
    port = re.search(r"^m=audio (\d+) ", sdp, re.MULTILINE)
    address = re.search(r"^c=IN IP4 (\S+)", sdp, re.MULTILINE)
    rtpmap = re.search(rf"^a=rtpmap:(\d+) {re.escape(codec.rtpmap.split('/')[0])}/", sdp, re.MULTILINE | re.I)
    if not (port and address and rtpmap):
        raise RuntimeError(f"no {codec.name} media in:\n{sdp}")
    return address.group(1), int(port.group(1)), int(rtpmap.group(1))


DYNAMIC_OPUS = 111


@dataclass
class Window:
    """What one mode measured over its window."""

    label: str
    calls: int
    shares: list[float] = field(default_factory=list)  # per receiving leg: received / sent by the far end
    lost: int = 0
    late: int = 0
    expected: int = 0
    late_ticks: int = 0
    generators_cpu: float | None = None  # % of a core, all generator processes
    engine_cpu: float | None = None  # % of a core, rtpengine
    seconds: float = 0.0
    sessions_left: int | None = None
    load: str = "load generators"  # what generators_cpu measured
    shares_of: str = "of what was sent"

    @property
    def engine_cpu_per_call(self) -> float | None:
        return None if self.engine_cpu is None or not self.calls else self.engine_cpu / self.calls

    @property
    def calls_per_core(self) -> float | None:
        per_call = self.engine_cpu_per_call
        return None if not per_call else 100 / per_call


async def set_up_plain(
    calls: int,
    generators: Sequence[GeneratorProcess],
    client: NgClient | None,
    codecs: tuple[Codec, Codec],
    offer_flags: Flags,
    answer_flags: Flags,
) -> list[PlainCall]:
    """`calls` calls of two generator legs (leg a in one generator, leg b in the next), through the engine when a
    client is given, else pointed at each other; every leg sending once all are set up."""
    codec_a, codec_b = codecs
    a_side = generators[0]
    b_side = generators[1 % len(generators)]
    a_legs = await a_side.open([codec_a.name] * calls)
    b_legs = await b_side.open([codec_b.name] * calls)
    pairs = [
        PlainCall(LegRef(a_side, ai, ap), LegRef(b_side, bi, bp), None)
        for (ai, ap), (bi, bp) in zip(a_legs, b_legs, strict=True)
    ]
    targets: dict[GeneratorProcess, list[Target]] = {a_side: [], b_side: []}
    type_a = codec_a.static_payload_type or DYNAMIC_OPUS
    type_b = codec_b.static_payload_type or DYNAMIC_OPUS

    async def through_engine(call: PlainCall) -> None:
        assert client is not None
        call.call_id = f"capacity-{call.a.port}-{call.b.port}-{time.monotonic_ns()}"
        toward_b = await client.offer(call.call_id, "a", plain_sdp(call.a.port, codec_a, type_a), offer_flags)
        host_b, port_b, offered_type = media_target(toward_b, codec_b)
        toward_a = await client.answer(
            call.call_id, "a", "b", plain_sdp(call.b.port, codec_b, offered_type), answer_flags
        )
        host_a, port_a, answered_type = media_target(toward_a, codec_a)
        targets[a_side].append((call.a.index, host_a, port_a, answered_type, answered_type, codec_a.clock_rate))
        targets[b_side].append((call.b.index, host_b, port_b, offered_type, offered_type, codec_b.clock_rate))

    if client is None:
        for call in pairs:
            targets[a_side].append((call.a.index, HOST, call.b.port, type_a, type_b, codec_b.clock_rate))
            targets[b_side].append((call.b.index, HOST, call.a.port, type_b, type_a, codec_a.clock_rate))
    else:
        for outcome in await bounded(8, pairs, through_engine):
            if isinstance(outcome, BaseException):
                raise outcome
    for generator, started in targets.items():
        if started:
            await generator.command(start=started)
    return pairs


async def snapshots(generators: Sequence[GeneratorProcess]) -> dict[GeneratorProcess, dict[str, Any]]:
    return {generator: await generator.command(snapshot=True) for generator in dict.fromkeys(generators)}


async def measure_plain(
    label: str,
    calls: int,
    generators: Sequence[GeneratorProcess],
    engine: LocalEngine | None,
    codecs: tuple[Codec, Codec],
    offer_flags: Flags = TOWARD_PLAIN_RTP,
    answer_flags: Flags = TOWARD_PLAIN_RTP,
    *,
    window: float,
    settle: float,
) -> Window:
    client = engine.client if engine is not None else None
    pairs = await set_up_plain(calls, generators, client, codecs, offer_flags, answer_flags)
    result = Window(label, calls)
    try:
        await asyncio.sleep(settle)  # past the first packets, transcoder start-up and the receivers' first timing
        wall, engine_before = time.perf_counter(), proc_cpu_seconds(engine.pid) if engine and engine.pid else None
        before = await snapshots(generators)
        await asyncio.sleep(window)
        after = await snapshots(generators)
        result.seconds = time.perf_counter() - wall
        engine_after = proc_cpu_seconds(engine.pid) if engine and engine.pid else None
        if engine_before is not None and engine_after is not None:
            result.engine_cpu = (engine_after - engine_before) / result.seconds * 100
        cpu = [after[g]["cpu"] - before[g]["cpu"] for g in after if after[g]["cpu"] is not None]
        result.generators_cpu = sum(cpu) / result.seconds * 100 if cpu else None
        result.late_ticks = sum(after[g]["late_ticks"] - before[g]["late_ticks"] for g in after)

        def delta(leg: LegRef, column: int) -> int:
            now: int = after[leg.generator]["legs"][leg.index][column]
            then: int = before[leg.generator]["legs"][leg.index][column]
            return now - then

        for call in pairs:
            for sender, receiver in ((call.a, call.b), (call.b, call.a)):
                sent, received = delta(sender, 0), delta(receiver, 1)
                result.expected += sent
                result.lost += max(0, sent - received)
                result.late += delta(receiver, 2)
                result.shares.append(received / sent if sent else 0.0)
    finally:
        for generator in dict.fromkeys(generators):
            await generator.command(close=[leg.index for call in pairs for leg in (call.a, call.b)
                                           if leg.generator is generator])  # fmt: skip
        if client is not None:
            await bounded(8, [call.call_id for call in pairs if call.call_id], client.delete)
            result.sessions_left = await client.session_count()
    return result


async def measure_webrtc(
    label: str, calls: int, engine: LocalEngine, start: Callable[[int], Awaitable[Pair]], window: float
) -> Window:
    """aiortc pairs (bench/engine.py) relayed or transcoded by the engine: its CPU per call and what was heard."""
    outcome = await run_mode(label, start, calls, window, engine.pid)
    result = Window(label, outcome.started, shares=outcome.heard, engine_cpu=outcome.engine_cpu, seconds=window)
    result.generators_cpu = outcome.bench_cpu
    result.load, result.shares_of = "aiortc peers (this process)", "of real time heard"
    result.sessions_left = await engine.client.session_count()
    return result


def transcoded_webrtc_pair(engine: LocalEngine, generator: GeneratorProcess) -> Callable[[int], Awaitable[Pair]]:
    """An aiortc leg (Opus over DTLS-SRTP, as the WhatsApp leg) offering, a PCMU generator leg answering, rtpengine
    transcoding. The generator leg's sound is heard by the aiortc leg; its own reception is not counted here."""

    async def start(index: int) -> Pair:
        call_id = f"capacity-webrtc-{index}-{time.monotonic_ns()}"
        webrtc = AudioLeg(name=f"webrtc-{index}", source=ToneSource(600, amplitude=0.25))
        ((leg, port),) = await generator.open([PCMU.name])
        toward_pbx = without_webrtc_attributes(
            await engine.client.offer(
                call_id, "webrtc", await webrtc.create_offer(), WEBRTC_OFFER_TOWARD_PLAIN_RTP_TRANSCODED
            )
        )
        host, remote_port, payload_type = media_target(toward_pbx, PCMU)
        answer = await engine.client.answer(
            call_id, "webrtc", "pbx", plain_sdp(port, PCMU, payload_type), TOWARD_WEBRTC
        )
        await webrtc.apply_answer(answer)
        await generator.command(start=[(leg, host, remote_port, payload_type, payload_type, PCMU.clock_rate)])

        async def end() -> None:
            await webrtc.close()
            await generator.command(close=[leg])
            await engine.client.delete(call_id)

        # Pair wants two aiortc ends; the PBX side is a generator, so the aiortc leg stands for both in the count.
        return Pair(webrtc, webrtc, end)

    return start


def percent(value: float | None) -> str:
    return fmt(value)


def per_call(result: Window) -> str:
    """rtpengine's CPU per call and the calls per core it implies."""
    share = result.engine_cpu_per_call
    if share is None or result.calls_per_core is None:
        return "n/a"
    return f"{share:.3f}% of a core per call = {result.calls_per_core:.0f} calls per core"


def report(result: Window) -> None:
    shares = result.shares or [0.0]
    timing = ""
    if result.expected:
        timing = (
            f", lost {result.lost}/{result.expected} ({result.lost / result.expected:.2%}), "
            f"late {result.late} ({result.late / result.expected:.2%}), generator ticks late {result.late_ticks}"
        )
    engine = "" if result.engine_cpu is None else f"; rtpengine {percent(result.engine_cpu)}, {per_call(result)}"
    left = "" if result.sessions_left is None else f"; sessions left after delete: {result.sessions_left}"
    print(
        f"{result.label}: {result.calls} calls, received min {min(shares):.1%} median "
        f"{statistics.median(shares):.1%} {result.shares_of}{timing}; {result.load} {percent(result.generators_cpu)} "
        f"of a core{engine}{left}"
    )


def ratio(numerator: float | None, denominator: float | None) -> str:
    return "n/a" if not numerator or not denominator else f"{numerator / denominator:.2f}x"


async def drive(args: argparse.Namespace) -> int:
    relay_calls, transcode_calls, webrtc_calls, window = (
        (4, 2, 2, 2.0) if args.quick else (args.relay_calls, args.transcode_calls, args.webrtc_calls, args.window)
    )
    settle = 1.0 if args.quick else 2.0
    print(machine_info())
    largest = max(relay_calls, transcode_calls, webrtc_calls)
    settings = EngineSettings(port_count=max(400, largest * PORTS_PER_CALL * 2))
    generators = [await GeneratorProcess.start() for _ in range(max(1, args.generators))]
    results: list[Window] = []
    try:
        async with LocalEngine(settings) as engine:
            print(
                f"rtpengine {engine_version(settings.binary)}, {settings.num_threads} threads, userspace forwarding; "
                f"{len(generators)} generator processes; {window:.0f} s windows, same run\n"
            )
            plain = (
                ("baseline: generators direct, Opus both legs (no engine)", relay_calls, None, (OPUS, OPUS), {}),
                ("relay through rtpengine, plain RTP Opus <-> Opus", relay_calls, engine, (OPUS, OPUS), {}),
                ("baseline: generators direct, PCMU <-> Opus (no engine)", transcode_calls, None, (PCMU, OPUS), {}),
                (
                    "transcode in rtpengine, plain RTP PCMU <-> Opus",
                    transcode_calls,
                    engine,
                    (PCMU, OPUS),
                    {"offer_flags": PLAIN_RTP_OFFER_TOWARD_PLAIN_OPUS_TRANSCODED},
                ),
            )
            for label, calls, target, codecs, flags in plain:
                result = await measure_plain(
                    label, calls, generators, target, codecs, window=window, settle=settle, **flags
                )
                report(result)
                results.append(result)
            if webrtc_calls:
                webrtc_relay = await measure_webrtc(
                    "WebRTC sample: aiortc pairs relayed (DTLS-SRTP both legs)",
                    webrtc_calls,
                    engine,
                    relay_pair(engine.client),
                    window,
                )
                report(webrtc_relay)
                webrtc_transcode = await measure_webrtc(
                    "WebRTC sample: aiortc Opus (DTLS-SRTP) <-> PCMU generator, transcoded",
                    webrtc_calls,
                    engine,
                    transcoded_webrtc_pair(engine, generators[0]),
                    window,
                )
                report(webrtc_transcode)
                results += [webrtc_relay, webrtc_transcode]
    finally:
        for generator in generators:
            await generator.stop()
    return summarise(results, relay_calls, transcode_calls, webrtc_calls)


def summarise(results: Sequence[Window], relay_calls: int, transcode_calls: int, webrtc_calls: int) -> int:
    """The summary lines; 0 when every call ran and rtpengine kept no session after the deletes."""
    direct_relay, relay, direct_transcode, transcode = results[:4]
    print("\nSummary (ratios against the same run's baselines)")
    for name, direct, engine, target in (
        ("relayed", direct_relay, relay, 200),
        ("transcoded", direct_transcode, transcode, 50),
    ):
        print(
            f"{name} (plain RTP): rtpengine {per_call(engine)} (target >= {target}); generators' CPU through the "
            f"engine / direct {ratio(engine.generators_cpu, direct.generators_cpu)}; lost {engine.lost} "
            f"(direct {direct.lost}), late {engine.late} (direct {direct.late}) of {engine.expected} packets"
        )
    print(
        "transcoding / relaying, rtpengine CPU per call: "
        f"{ratio(transcode.engine_cpu_per_call, relay.engine_cpu_per_call)}"
    )
    if len(results) >= 6:
        webrtc_relay, webrtc_transcode = results[4:6]
        print(
            "WebRTC (DTLS-SRTP, ICE) / plain RTP, rtpengine CPU per call: "
            f"relay {ratio(webrtc_relay.engine_cpu_per_call, relay.engine_cpu_per_call)} ({per_call(webrtc_relay)}), "
            f"transcode {ratio(webrtc_transcode.engine_cpu_per_call, transcode.engine_cpu_per_call)} "
            f"({per_call(webrtc_transcode)})"
        )
    expected = [relay_calls, relay_calls, transcode_calls, transcode_calls] + [webrtc_calls] * (len(results) - 4)
    every_call_ran = [r.calls for r in results] == expected and all(r.shares for r in results)
    return 0 if every_call_ran and all(r.sessions_left in (None, 0) for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--relay-calls", type=int, default=150, help="concurrent relayed calls (default 150)")
    parser.add_argument("--transcode-calls", type=int, default=30, help="concurrent transcoded calls (default 30)")
    parser.add_argument(
        "--webrtc-calls", type=int, default=6, help="aiortc calls per WebRTC sample (default 6; 0: none)"
    )
    parser.add_argument("--window", type=float, default=10.0, help="measuring window in seconds (default 10)")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few calls, 2 s windows")
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)  # a generator process
    args = parser.parse_args()
    if args.generator:
        asyncio.run(serve_generator())
        return 0
    return asyncio.run(drive(args))


if __name__ == "__main__":
    sys.exit(main())
