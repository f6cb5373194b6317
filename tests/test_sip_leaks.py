"""SIP calls leave nothing behind: 200 calls in sequence through the front door (SIPp's UAC over UDP, each user
granted and answering at once, a little A-law audio played toward the user, then the PBX's BYE) leave wacall's file
descriptors, asyncio tasks and threads, the SIP endpoint's transactions, dialogs and connections, the front door's
calls and rtpengine's sessions where they were after a warm-up call.

Transactions are compared once their timers have run out: over UDP the BYE's server transaction waits Timer J
(64*T1 = 32 s) for retransmissions before it ends (RFC 3261 §17.2.2), which is no leak.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from conftest import BUSINESS, Running, eventually
from test_leaks import settle, task_kinds, worker_threads
from test_sipio_sipp import free_port, last_stats
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.sipdoor.trunks import parse_trunks

ASSETS = Path(__file__).parent / "assets" / "sipp"
CALLS = 200
WARM_UP = 1
AUDIO_MS = 500  # SIPp plays its recording this long into each call before the BYE
TRUNKS = parse_trunks(
    [
        {
            "name": "pbx",
            "allowed_sources": ["127.0.0.1/32"],
            "business_numbers": [BUSINESS],
            "target": "sip:contact-centre@127.0.0.1:5080",
        }
    ]
)
TIMER_J = 32.0


def users(first: int, count: int) -> list[str]:
    return [f"+3461235{n:04d}" for n in range(first, first + count)]


async def answering(wacall: Running, numbers: list[str]) -> None:
    """Each user granted (permanently) and answering at once, saying a tone."""
    for number in numbers:
        await wacall.grant(number, permanent=True)
        await wacall.phone(number, on_call=sim_pb.ANSWER, tone_hz=600)


async def sipp_calls(wacall: Running, tmp_path: Path, numbers: list[str], name: str) -> dict[str, str]:
    """SIPp's UAC places one call per number, one at a time; its last statistics row once every call is done."""
    binary = shutil.which("sipp")
    assert binary is not None, "SIPp is needed: apt-get install sip-tester (make system-deps installs it as root)"
    assert wacall.service.sip is not None
    host, port = wacall.service.sip_addresses["UDP"]
    run = tmp_path / name
    run.mkdir()
    injection = run / "users.csv"
    injection.write_text("SEQUENTIAL\n" + "".join(f"{number.lstrip('+')};\n" for number in numbers))
    process = await asyncio.create_subprocess_exec(
        binary,
        f"{host}:{port}",
        *("-sf", str(ASSETS / "uac_call_with_audio.xml"), "-inf", str(injection), "-set", "business", BUSINESS),
        *("-t", "u1", "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port()), "-cp", str(free_port())),
        *("-m", str(len(numbers)), "-l", "1", "-r", "50", "-d", str(AUDIO_MS)),
        *("-nostdin", "-timeout", "300s", "-timeout_error", "-trace_stat", "-stf", str(run / "stat.csv"), "-fd", "1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=run,
    )
    out, err = await asyncio.wait_for(process.communicate(), 320)
    assert process.returncode == 0, (process.returncode, out.decode()[-2000:], err.decode()[-2000:])
    return last_stats(run / "stat.csv")


async def engine_sessions(wacall: Running) -> tuple[int, list[str]]:
    engine = wacall.service.local_engine
    assert engine is not None, "the local rtpengine runs"
    return await engine.client.session_count(), await engine.client.list_calls()


@pytest.mark.slow
async def test_two_hundred_sip_calls_leak_nothing_in_wacall_or_rtpengine(make_service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wacall: Running = await make_service(
        rtpengine="", sip_address="127.0.0.1:0", sip_trunks=TRUNKS, policy="sandbox", clock="system"
    )
    endpoint, front_door = wacall.service.sip, wacall.service.front_door
    assert endpoint is not None and front_door is not None
    warm_up, measured = users(0, WARM_UP), users(WARM_UP, CALLS)
    await answering(wacall, warm_up + measured)

    stats = await sipp_calls(wacall, tmp_path, warm_up, "warm-up")
    assert int(stats["SuccessfulCall(C)"]) == WARM_UP
    await eventually(lambda: front_door.active_calls == 0, 10, "the warm-up call over")
    before = await settle()
    tasks_before = task_kinds()
    sessions_before = await engine_sessions(wacall)
    sip_before = (endpoint.dialog_count, endpoint.connection_count, endpoint.task_count)
    assert sessions_before == (0, [])

    stats = await sipp_calls(wacall, tmp_path, measured, "calls")
    assert (int(stats["SuccessfulCall(C)"]), int(stats["FailedCall(C)"])) == (CALLS, 0)

    # Every call was answered, carried the PBX's audio to the user, and ended when the PBX hung up.
    listed = await wacall.calling.ListCalls(pb.ListCallsRequest(business_number=BUSINESS, page_size=CALLS + WARM_UP))
    calls = [call for call in listed.calls if call.user_number in measured]
    assert len(calls) == CALLS
    assert {(call.outcome, call.route, call.sip.trunk) for call in calls} == {(pb.CALL_OUTCOME_ANSWERED, "sip", "pbx")}
    assert {call.end_reason for call in calls} == {"the PBX hung up (BYE)"}
    # rtpengine's counters: the PBX's packets relayed to the user, the user's received. Media starts once DTLS with
    # the phone completes (about 0.3 s into a call here), so a machine loaded enough can end a call before.
    with_audio = [call for call in calls if call.media.frames_sent > 0 and call.media.frames_received > 0]
    assert len(with_audio) >= 0.9 * CALLS, f"audio both ways on {len(with_audio)} of {CALLS} calls"

    await eventually(lambda: endpoint.transaction_count == 0, TIMER_J + 10, "the transactions' timers run out")
    await eventually(lambda: front_door.active_calls == 0, 10, "no front-door call")
    after = await settle()
    assert not wacall.service.calls.sessions  # type: ignore[union-attr]
    assert worker_threads() <= wacall.service.settings.worker_threads
    assert after == before, f"(fds, tasks, threads, native) {before} -> {after}; new: {task_kinds() - tasks_before}"
    assert (endpoint.dialog_count, endpoint.connection_count, endpoint.task_count) == sip_before
    assert await engine_sessions(wacall) == sessions_before
