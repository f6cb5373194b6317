"""The SIP front door under load: refusals per second, call setup time and concurrent transcoded calls, each against
a same-run baseline.

Run: `.venv/bin/python bench/sip_front_door.py` (about 3.5 minutes on 2 cores); `--quick` for a smoke run. A real
`wacall serve` (SQLite, the embedded simulator, its local rtpengine) runs in a subprocess with a trunk for 127.0.0.1
and `--sip-address` on a free port; SIPp (Debian `sip-tester`) drives it over UDP.

1. **Refusals**: SIPp UACs at increasing rates (`-r`, `-m` = rate x step seconds, `-l`), each INVITE answered 100
   Trying then refused and ACKed: 403 (`NO_PERMISSION`: a user who never granted permission) and 480
   (`CALL_LIMIT_REACHED`: a user whose connected-call limit, overridden to 1 per day, is used up; Retry-After).
   Baseline: the same UAC scenario against a SIPp UAS that answers 100 then 403 itself (SIPp's own rate, both ends
   SIPp), and SIPp's stock call (`-sn uac` against `-sn uas`: INVITE, 180, 200, ACK, BYE, 200) at the same rates.
   Per step: the rate achieved (calls that got the expected final response, per second), failures, and wacall's CPU
   per refusal (all its threads, from /proc/<pid>/task/*/schedstat).
2. **Setup time**: INVITE -> 200 OK (SIPp's response-time measure, one call at a time, a fresh granted user each,
   whose simulated phone answers at once; ACK, BYE after 0.5 s) against StartCall of a `webrtc` bridge call (an
   aiortc agent's offer, bridged in rtpengine) -> CONNECTED, in the same run and the same service.
3. **Concurrent calls**: bench/calls.py's ramp with N SIP calls at once (SIPp signals and holds each call until
   wacall's BYE; an RTP endpoint of this process per call sends PCMU and counts what it gets back; the user is the
   simulator's phone, rtpengine transcodes), against N webrtc passthrough calls, which hold the same simulated
   phones: wacall's CPU with SIP calls minus with passthrough calls is the SIP calls' own share, rtpengine's apart.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import calls as call_bench  # bench/calls.py: the concurrency ramp, its modes and CPU sampling
import grpc
from calls import BUSINESS, RPC_TIMEOUT, Counts, Live, Mode, Stubs, Users, percentile
from engine_capacity import PCMU, Generator, GeneratorLeg  # bench/engine_capacity.py: the PBX's RTP endpoints
from run import Child, machine_info, start_child  # bench/run.py
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.media.leg import AudioLeg

HOST = "127.0.0.1"
UNGRANTED_USER = "+34612349999"  # never granted: every INVITE to it is NO_PERMISSION
SIPP_TIMEOUT = 120.0

PCMU_SDP = """v=0
      o=- 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=ptime:20
      a=sendrecv"""

INVITE = """INVITE sip:{user}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{business}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:{user}@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:{business}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      {sdp}"""


def refused_uac_scenario(user: str, status: int) -> str:
    """INVITE, an optional 100, the final `status`, and the ACK of that non-2xx (same branch as the INVITE, §17.1.1.3:
    `[branch-3]`, the INVITE being three scenario elements earlier)."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="INVITE refused with {status}">
  <send retrans="500"><![CDATA[
      {INVITE.format(user=user, business=BUSINESS, sdp=PCMU_SDP)}
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="{status}"/>
  <send><![CDATA[
      ACK sip:{user}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3]
      From: <sip:{BUSINESS}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
</scenario>
"""


REFUSING_UAS_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="UAS answering 100 then 403">
  <recv request="INVITE"/>
  <send><![CDATA[
      SIP/2.0 100 Trying
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
  ]]></send>
  <send retrans="500"><![CDATA[
      SIP/2.0 403 Forbidden
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Warning: 399 sipp "NO_PERMISSION: the baseline refuses every call"
      Content-Length: 0
  ]]></send>
  <recv request="ACK"/>
</scenario>
"""


def answered_uac_scenario() -> str:
    """INVITE to the user in the injection file's first field; the time to the 200 OK is response time 1."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="INVITE answered">
  <send retrans="500" start_rtd="1"><![CDATA[
      {INVITE.format(user="[field0]", business=BUSINESS, sdp=PCMU_SDP)}
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="1" rrs="true"/>
  <send><![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{BUSINESS}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:{BUSINESS}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <pause milliseconds="500"/>
  <send retrans="500"><![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{BUSINESS}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:{BUSINESS}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <recv response="200"/>
</scenario>
"""


def free_port() -> int:
    """A port free for both UDP and TCP on loopback (SIP listens on both; 5060 may be someone else's)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
                return port


def own_ports() -> tuple[str, ...]:
    """SIPp's media and control ports, free ones: its defaults (6000, 8888) are shared with every other SIPp."""
    return ("-mp", str(free_port()), "-cp", str(free_port()))


def last_stats(path: Path) -> dict[str, str]:
    """The last row of SIPp's statistics file (`-trace_stat`), by column name."""
    with path.open(newline="") as stats:
        rows = list(csv.DictReader(stats, delimiter=";"))
    if not rows:
        raise RuntimeError(f"SIPp wrote no statistics to {path}")
    return rows[-1]


def epoch(stamp: str) -> float:
    """SIPp's `date<TAB>time<TAB>epoch` column, the epoch part."""
    return float(stamp.split("\t")[-1])


@dataclass
class Step:
    """One SIPp run at one offered rate."""

    target: str
    offered: float
    calls: int
    succeeded: int = 0
    failed: int = 0
    seconds: float = 0.0
    cpu_seconds: float | None = None  # the target process's CPU over the step (wacall; None for the baseline)

    @property
    def achieved(self) -> float:
        return self.succeeded / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_call_us(self) -> float | None:
        return None if self.cpu_seconds is None or not self.succeeded else self.cpu_seconds / self.succeeded * 1e6

    @property
    def keeps_up(self) -> bool:
        return self.failed == 0 and self.succeeded == self.calls and self.achieved >= 0.9 * self.offered


class Sipp:
    """Runs SIPp (UDP, loopback) in a work directory."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("sipp")
        if binary is None:
            raise SystemExit("SIPp is needed: apt-get install sip-tester")
        self.binary = binary
        self.directory = directory
        self.runs = 0

    def scenario(self, name: str, text: str) -> Path:
        path = self.directory / f"{name}.xml"
        path.write_text(text)
        return path

    async def uac(
        self, target: str, scenario: Path | str, *, rate: float, calls: int, limit: int, extra: Sequence[str] = ()
    ) -> tuple[dict[str, str], Path]:
        """Run a UAC to `target` until `calls` calls are done; its last statistics row and its run directory."""
        self.runs += 1
        run = self.directory / f"run-{self.runs}"
        run.mkdir()
        chosen = ["-sn", scenario] if isinstance(scenario, str) else ["-sf", str(scenario)]
        process = await asyncio.create_subprocess_exec(
            self.binary,
            *chosen,
            target,
            *("-i", HOST, "-p", str(free_port()), "-t", "u1", *own_ports()),
            *("-r", f"{rate:g}", "-m", str(calls), "-l", str(limit)),
            *("-recv_timeout", "5000", "-timeout", f"{SIPP_TIMEOUT:g}s", "-nostdin"),
            *("-trace_stat", "-stf", str(run / "stat.csv"), "-fd", "1"),
            *extra,
            cwd=run,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await process.communicate()
        if not (run / "stat.csv").exists():
            raise RuntimeError(f"SIPp exited {process.returncode} without statistics: {stderr.decode()[-500:]}")
        return last_stats(run / "stat.csv"), run

    async def uas(self, scenario: Path | str) -> tuple[asyncio.subprocess.Process, str]:
        """A SIPp UAS on a free port; the process and its host:port."""
        port = free_port()
        chosen = ["-sn", scenario] if isinstance(scenario, str) else ["-sf", str(scenario)]
        process = await asyncio.create_subprocess_exec(
            self.binary,
            *chosen,
            *("-i", HOST, "-p", str(port), "-t", "u1", "-nostdin", *own_ports()),
            cwd=self.directory,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(0.3)  # it binds at once; give it the moment to start reading
        return process, f"{HOST}:{port}"


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


async def run_step(
    sipp: Sipp, label: str, target: str, scenario: Path | str, rate: float, seconds: float, server: Child | None
) -> Step:
    calls = max(1, round(rate * seconds))
    step = Step(label, rate, calls)
    before = server.cpu_seconds() if server else None
    stats, _ = await sipp.uac(target, scenario, rate=rate, calls=calls, limit=max(50, round(rate)))
    after = server.cpu_seconds() if server else None
    step.succeeded = int(stats["SuccessfulCall(C)"])
    step.failed = int(stats["FailedCall(C)"])
    step.seconds = epoch(stats["CurrentTime"]) - epoch(stats["StartTime"])
    step.cpu_seconds = None if before is None or after is None else after - before
    return step


def report_step(step: Step) -> None:
    cpu = "" if step.cpu_per_call_us is None else f", wacall CPU {step.cpu_per_call_us:.0f} µs per call"
    print(
        f"  {step.target} at {step.offered:g}/s: {step.succeeded}/{step.calls} calls in {step.seconds:.1f} s = "
        f"{step.achieved:.0f}/s, {step.failed} failed{cpu}{'' if step.keeps_up else '  (falls behind)'}"
    )


async def ramp(
    sipp: Sipp,
    label: str,
    target: str,
    scenario: Path | str,
    rates: Sequence[float],
    seconds: float,
    server: Child | None,
) -> list[Step]:
    """Steps at each rate until one falls behind twice (retried once: other tenants of the machine)."""
    steps = []
    for rate in rates:
        step = await run_step(sipp, label, target, scenario, rate, seconds, server)
        if not step.keeps_up:
            report_step(step)
            step = await run_step(sipp, label, target, scenario, rate, seconds, server)
        report_step(step)
        steps.append(step)
        if not step.keeps_up:
            break
    return steps


def best(steps: Sequence[Step]) -> Step | None:
    kept = [step for step in steps if step.keeps_up]
    return max(kept, key=lambda step: step.achieved) if kept else None


# --- the service --------------------------------------------------------------------------------------------------


def config_text() -> str:
    return f"""
[[sip_trunks]]
name = "bench"
allowed_sources = ["{HOST}/32"]
business_numbers = ["{BUSINESS}"]
target = "sip:contact-centre@{HOST}:5080"  # where a sip route would call; unused here
codecs = ["PCMU", "PCMA", "opus"]

[policy_overrides]
connected_call_limits = [{{ window_seconds = 86400, max_allowed = 1 }}]
"""


async def start_service(directory: Path, sip_port: int) -> Child:
    config = directory / "wacall.toml"
    config.write_text(config_text())
    return await start_child(
        "wacall",
        [
            sys.executable,
            *("-m", "wacall.cli", "serve"),
            *("--grpc-address", f"{HOST}:0", "--http-address", f"{HOST}:0"),
            *("--db", f"sqlite:///{directory / 'wacall.db'}", "--sim-state", str(directory / "simulator.json")),
            *("--clock", "system", "--policy", "sandbox", "--log-level", "WARNING"),
            *("--config", str(config), "--sip-address", f"{HOST}:{sip_port}"),
        ],
        directory / "wacall.stderr",
    )


async def user_at_the_call_limit(stubs: Stubs, users: Users) -> str:
    """A granted user with one answered call: with the limit overridden to 1 per day, the next one is refused."""
    (limited,) = await users.take(1)
    route = pb.Route(announcement=pb.AnnouncementRoute(tone_hz=440))
    call = await stubs.calling.StartCall(
        pb.StartCallRequest(business_number=BUSINESS, user_number=limited, route=route), timeout=RPC_TIMEOUT
    )
    deadline = time.monotonic() + 20
    while (await stubs.calling.GetCall(pb.GetCallRequest(call_id=call.call_id))).state != pb.CALL_STATE_CONNECTED:
        if time.monotonic() > deadline:
            raise RuntimeError("the limit-setting call never connected")
        await asyncio.sleep(0.05)
    await stubs.calling.EndCall(pb.EndCallRequest(call_id=call.call_id), timeout=RPC_TIMEOUT)
    return limited


# --- setup time ---------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    label: str
    seconds: list[float] = field(default_factory=list)
    failed: int = 0

    def summary(self) -> str:
        if not self.seconds:
            return f"{self.label}: no call set up ({self.failed} failed)"
        return (
            f"{self.label}: median {statistics.median(self.seconds) * 1000:.0f} ms, p95 "
            f"{percentile(self.seconds, 95) * 1000:.0f} ms over {len(self.seconds)} calls ({self.failed} failed)"
        )


async def sip_setup_times(sipp: Sipp, target: str, numbers: Sequence[str]) -> Setup:
    """INVITE -> 200 OK per call, from SIPp's response-time trace (one line per call)."""
    injection = sipp.directory / "users.csv"
    injection.write_text("SEQUENTIAL\n" + "".join(f"{number};\n" for number in numbers))
    scenario = sipp.scenario("answered", answered_uac_scenario())
    stats, run = await sipp.uac(
        target,
        scenario,
        rate=2,
        calls=len(numbers),
        limit=1,
        extra=("-inf", str(injection), "-trace_rtt", "-rtt_freq", "1"),
    )
    result = Setup("INVITE -> 200 OK through the front door (PCMU, transcoded in rtpengine)")
    result.failed = int(stats["FailedCall(C)"])
    for path in run.glob("*_rtt.csv"):
        with path.open(newline="") as trace:
            for row in csv.DictReader(trace, delimiter=";"):
                result.seconds.append(float(row["response_time_ms"]) / 1000)
    return result


async def start_call_setup_times(stubs: Stubs, numbers: Sequence[str]) -> Setup:
    """StartCall with an aiortc agent's offer (the webrtc bridge, in rtpengine) -> CONNECTED, one call at a time."""
    result = Setup("StartCall -> CONNECTED, webrtc bridge (Opus, relayed in rtpengine)")
    for number in numbers:
        agent = AudioLeg(name="agent")
        try:
            offer = await agent.create_offer()
            route = pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=offer))
            started = time.perf_counter()
            call = await stubs.calling.StartCall(
                pb.StartCallRequest(business_number=BUSINESS, user_number=number, route=route), timeout=RPC_TIMEOUT
            )
            while True:
                state = (await stubs.calling.GetCall(pb.GetCallRequest(call_id=call.call_id))).state
                if state == pb.CALL_STATE_CONNECTED:
                    result.seconds.append(time.perf_counter() - started)
                    break
                if state == pb.CALL_STATE_ENDED or time.perf_counter() - started > 20:
                    result.failed += 1
                    break
                await asyncio.sleep(0.005)
            await stubs.calling.EndCall(pb.EndCallRequest(call_id=call.call_id), timeout=RPC_TIMEOUT)
        finally:
            await agent.close()
    return result


# --- concurrent calls ---------------------------------------------------------------------------------------------


def held_uac_scenario() -> str:
    """A call that stays up until wacall sends the BYE (the bench ends it with EndCall). The PBX's media is an RTP
    endpoint of this process (the injection file's second field); where it must send, from the 200 OK, is logged."""
    sdp = PCMU_SDP.replace("[media_port]", "[field1]")
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="INVITE answered, held until the BYE">
  <send retrans="500"><![CDATA[
      {INVITE.format(user="[field0]", business=BUSINESS, sdp=sdp)}
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rrs="true">
    <action>
      <ereg regexp="m=audio ([0-9]+)" search_in="body" check_it="true" assign_to="media_line,media_port"/>
      <ereg regexp="c=IN IP4 ([0-9.]+)" search_in="body" check_it="true" assign_to="connection_line,media_host"/>
      <log message="answered [field0] [field1] [$media_host] [$media_port]"/>
    </action>
  </recv>
  <send><![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{BUSINESS}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:{BUSINESS}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <recv request="BYE"/>
  <Reference variables="media_line,connection_line"/>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
  ]]></send>
</scenario>
"""


class SipMode(Mode):
    """N PBX calls through the front door at once: SIPp signals (one run per step), an RTP endpoint of this process
    per call sends PCMU (a tone) and counts what comes back; the user's phone is the simulator's. In calls.py's
    tables the "agent" is the PBX side."""

    section = "3a"
    label = "SIP front door, PCMU <-> Opus transcoded in rtpengine"
    summary = "PBX (SIPp signalling, RTP endpoints in this process) <-> rtpengine <-> simulated phone (service process)"

    def __init__(self, stubs: Stubs, users: Users, sipp: Sipp, target: str) -> None:
        super().__init__(stubs, users)
        self.sipp = sipp
        self.target = target
        self.generator = Generator()
        self.process: asyncio.subprocess.Process | None = None
        self.log: Path | None = None
        self.legs: dict[str, tuple[int, int]] = {}  # user -> (generator leg, its port)

    async def prepare(self, n: int) -> None:
        await self.finish()
        self.numbers = await self.users.take(n)
        first = len(self.generator.legs)
        ports = await self.generator.open([PCMU.name] * n)
        self.legs = {
            number: (first + i, port) for i, (number, port) in enumerate(zip(self.numbers, ports, strict=True))
        }
        self.sipp.runs += 1
        run = self.sipp.directory / f"run-{self.sipp.runs}"
        run.mkdir()
        injection = run / "users.csv"
        injection.write_text("SEQUENTIAL\n" + "".join(f"{number};{port};\n" for number, (_, port) in self.legs.items()))
        self.log = run / "answered.log"
        scenario = self.sipp.scenario("held", held_uac_scenario())
        self.process = await asyncio.create_subprocess_exec(
            self.sipp.binary,
            *("-sf", str(scenario), self.target, "-inf", str(injection)),
            *("-i", HOST, "-p", str(free_port()), "-t", "u1", *own_ports()),
            *("-r", "20", "-m", str(n), "-l", str(n)),
            *("-timeout", "300s", "-nostdin", "-trace_logs", "-log_file", str(self.log)),
            cwd=run,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def finish(self) -> None:
        """The previous step's SIPp, done once wacall's BYEs ended its calls."""
        if self.process is not None:
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                await stop(self.process)
            self.process = None

    async def answered(self, number: str) -> tuple[str, int]:
        """Where the PBX must send for `number`'s call: the 200 OK's media address, as SIPp logged it."""
        assert self.log is not None
        deadline = time.monotonic() + RPC_TIMEOUT
        while time.monotonic() < deadline:
            if self.log.exists():
                for line in self.log.read_text(errors="replace").splitlines():
                    fields = line.split()
                    if len(fields) >= 5 and fields[-5] == "answered" and fields[-4] == number:
                        return fields[-2], int(fields[-1])
            await asyncio.sleep(0.05)
        raise RuntimeError(f"no 200 OK for {number} within {RPC_TIMEOUT:g} s")

    async def start(self, index: int) -> Live:
        number = self.numbers[index]
        host, port = await self.answered(number)
        leg, _ = self.legs[number]
        self.generator.start([(leg, host, port, 0, 0, PCMU.clock_rate)])
        listed = await self.stubs.calling.ListCalls(
            pb.ListCallsRequest(business_number=BUSINESS, user_number=number), timeout=RPC_TIMEOUT
        )
        (call,) = listed.calls
        request = sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id)
        pbx = self.generator.legs[leg]

        async def phone_counts() -> Counts:
            sent = time.perf_counter()
            phone = await self.stubs.sim.GetPhoneCall(request, timeout=RPC_TIMEOUT)
            return Counts((sent + time.perf_counter()) / 2, phone.audible_frames_received, phone.frames_sent)

        async def end() -> None:
            try:
                await self.stubs.calling.EndCall(pb.EndCallRequest(call_id=call.call_id), timeout=RPC_TIMEOUT)
            finally:
                self.generator.close([leg])

        return PbxLive(pbx, phone_counts, end)


class PbxLive(Live):
    """A call whose "agent" end is the PBX's RTP endpoint: packets received (PCMU from rtpengine) and sent."""

    def __init__(
        self, pbx: GeneratorLeg, phone_counts: Callable[[], Awaitable[Counts]], end: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(cast(AudioLeg, None), phone_counts, end)
        self.pbx = pbx

    def agent_counts(self) -> Counts:
        return Counts(time.perf_counter(), self.pbx.received, self.pbx.sent)


CONCURRENCY = call_bench.Sizes(
    setup_calls=0,
    setup_warmup=0,
    steps=(2, 4, 8, 12, 16, 20, 24),
    window=3.0,
    settle=1.0,
    flow_timeout=20.0,
    mode_budget=60.0,
    talk_calls=0,  # the talk delay is bench/calls.py's
    talk_bursts=0,
)
CONCURRENCY_QUICK = dataclasses.replace(CONCURRENCY, steps=(2,), window=1.0, settle=0.3, mode_budget=20.0)


def print_sip_cost(sip: call_bench.Ramp, passthrough: call_bench.Ramp) -> None:
    """Per N where both kept up: wacall's CPU with SIP calls minus with passthrough calls (both carry one simulated
    phone per call and the signalling: the difference is what a SIP call costs wacall), and rtpengine's CPU."""
    print(
        "\nSIP front door's own cost: wacall CPU% with N SIP calls minus with N webrtc passthrough calls (both hold N "
        "simulated phones);\nrtpengine transcodes the SIP calls (its CPU apart); the PBX's RTP endpoints and the "
        "passthrough agents run in this process"
    )
    columns = ("SIP: wacall", 12), ("passthrough", 12), ("SIP only", 9), ("/call", 6), ("rtpengine", 10), ("/call", 6)
    print(f"  {'N':>3} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for n in sorted({step.n for step in sip.steps}):
        with_sip = [step for step in sip.steps if step.n == n and step.keeps_up and step.cpu.service is not None]
        phones = call_bench.kept_up_cpu(passthrough, n)
        if not with_sip or phones is None:
            continue
        step = with_sip[0]
        assert step.cpu.service is not None
        engine = step.cpu.engine
        engine_text = "n/a" if engine is None else f"{engine:.1f}"
        per_call_engine = "n/a" if engine is None else f"{engine / n:.2f}"
        own = step.cpu.service - phones
        print(
            f"  {n:>3} {step.cpu.service:>12.0f} {phones:>12.0f} {own:>9.0f} {own / n:>6.1f} {engine_text:>10} "
            f"{per_call_engine:>6}"
        )


# --- main ---------------------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    rates = [50.0] if args.quick else [float(rate) for rate in args.rates.split(",")]
    seconds = 2.0 if args.quick else args.step_seconds
    setup_calls = 3 if args.quick else args.setup_calls
    print(machine_info())
    print(f"refusal steps: {', '.join(f'{r:g}' for r in rates)} INVITEs/s, {seconds:g} s each; SIPp over UDP\n")
    with tempfile.TemporaryDirectory(prefix="wacall-bench-sip-") as tmp_dir:
        tmp = Path(tmp_dir)
        sipp = Sipp(tmp)
        sip_port = free_port()
        service = await start_service(tmp, sip_port)
        wacall = f"{HOST}:{sip_port}"
        try:
            async with grpc.aio.insecure_channel(service.grpc) as channel:
                stubs = Stubs(
                    calling_pb2_grpc.CallingServiceStub(channel), simulator_pb2_grpc.SimulatorServiceStub(channel)
                )
                users = Users(stubs)
                limited_user = await user_at_the_call_limit(stubs, users)

                refusing, baseline_target = await sipp.uas(sipp.scenario("refusing-uas", REFUSING_UAS_SCENARIO))
                stock, stock_target = await sipp.uas("uas")
                try:
                    print("1. refusals per second")
                    ramps = {
                        "baseline: SIPp UAS refusing 403": await ramp(
                            sipp, "SIPp UAS 403", baseline_target,
                            sipp.scenario("uac-403", refused_uac_scenario(UNGRANTED_USER, 403)), rates, seconds, None,
                        ),
                        "baseline: SIPp -sn uac against -sn uas (whole calls)": await ramp(
                            sipp, "SIPp uac/uas", stock_target, "uac", rates, seconds, None
                        ),
                        "wacall 403 NO_PERMISSION": await ramp(
                            sipp, "wacall 403", wacall,
                            sipp.scenario("uac-wacall-403", refused_uac_scenario(UNGRANTED_USER, 403)), rates,
                            seconds, service,
                        ),
                        "wacall 480 CALL_LIMIT_REACHED": await ramp(
                            sipp, "wacall 480", wacall,
                            sipp.scenario("uac-wacall-480", refused_uac_scenario(limited_user, 480)), rates,
                            seconds, service,
                        ),
                    }  # fmt: skip
                finally:
                    await stop(refusing)
                    await stop(stock)

                print("\n2. call setup time (one call at a time, a fresh granted user each, answered at once)")
                sip_numbers = await users.take(setup_calls)
                start_call_numbers = await users.take(setup_calls)
                sip_setup = await sip_setup_times(sipp, wacall, sip_numbers)
                print(f"  {sip_setup.summary()}")
                start_call_setup = await start_call_setup_times(stubs, start_call_numbers)
                print(f"  {start_call_setup.summary()}")

                sizes = CONCURRENCY_QUICK if args.quick else CONCURRENCY
                if args.cap:
                    sizes = dataclasses.replace(
                        sizes, steps=tuple(n for n in sizes.steps if n <= args.cap) or (args.cap,)
                    )
                print(
                    f"\n3. concurrent calls (steps {list(sizes.steps)}, {sizes.window:g} s counted per step; %RT: "
                    "frames over the window / 50 per second; agent = the PBX side for the SIP mode)"
                )
                sip_mode = SipMode(stubs, users, sipp, wacall)
                try:
                    sip_ramp = await call_bench.ramp(sip_mode, service, sizes)
                finally:
                    await sip_mode.finish()
                passthrough_ramp = await call_bench.ramp(call_bench.PassthroughMode(stubs, users), service, sizes)
        finally:
            await service.stop()
            stderr = (tmp / "wacall.stderr").read_text(errors="replace")

    print("\nSummary (same run)")
    baseline = best(ramps["baseline: SIPp UAS refusing 403"])
    for name, steps in ramps.items():
        top = best(steps)
        if top is None:
            print(f"{name}: kept up at no rate tried")
            continue
        versus = (
            "" if baseline is None or top is baseline else f" = {top.achieved / baseline.achieved:.2f}x the baseline"
        )
        cpu = "" if top.cpu_per_call_us is None else f"; wacall CPU {top.cpu_per_call_us:.0f} µs per refusal"
        peak = max(steps, key=lambda step: step.achieved)
        beyond = "" if peak is top else f"; at {peak.offered:g}/s offered it answered {peak.achieved:.0f}/s"
        print(f"{name}: {top.achieved:.0f}/s kept up (offered {top.offered:g}/s){versus}{cpu}{beyond}")
    cores = os.cpu_count() or 1
    print(call_bench.ramp_summary(sip_ramp, cores))
    print(call_bench.ramp_summary(passthrough_ramp, cores))
    print_sip_cost(sip_ramp, passthrough_ramp)
    if sip_setup.seconds and start_call_setup.seconds:
        ratio = statistics.median(sip_setup.seconds) / statistics.median(start_call_setup.seconds)
        print(f"setup time, INVITE -> 200 OK / StartCall -> CONNECTED (medians): {ratio:.2f}x")
    if "Traceback" in stderr:
        print(f"wacall logged an exception:\n{stderr[-3000:]}")
        return 1
    # The exit status says whether everything worked (every first step's calls got their answer, every call of the
    # first concurrency step started, setup times measured), not how fast: timing is for the reader.
    refusals_ok = all(steps and steps[0].failed == 0 for steps in ramps.values())
    concurrency_ok = all(r.steps and r.steps[0].started == r.steps[0].n for r in (sip_ramp, passthrough_ramp))
    return 0 if refusals_ok and concurrency_ok and sip_setup.seconds and start_call_setup.seconds else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rates", default="100,250,500,750,1000,1500", help="INVITEs per second per step (comma-separated)"
    )
    parser.add_argument("--step-seconds", type=float, default=3.0, help="seconds of INVITEs per step (default 3)")
    parser.add_argument("--setup-calls", type=int, default=20, help="calls per setup-time measure (default 20)")
    parser.add_argument("--cap", type=int, default=0, help="largest number of concurrent calls to try")
    parser.add_argument("--quick", action="store_true", help="smoke run: one 50/s step of 2 s, 3 setup calls, 2 calls")
    sys.exit(asyncio.run(main(parser.parse_args())))
