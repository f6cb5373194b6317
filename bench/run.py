"""wacall benchmarks: GetPermission over gRPC and signed webhook ingestion, each against a bare same-run baseline.

Run: `.venv/bin/python bench/run.py` (or `make bench`); `--quick` for a smoke run. Servers run in subprocesses
(the wacall service via `python -m wacall.cli serve`, the baselines via this script's `--serve-baseline` mode), the
load generator in this process, so client and server never share an event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import platform
import re
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import grpc
from aiohttp import web
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.upstreams.meta import wire as payloads
from wacall.upstreams.meta.accounts import MetaAccount
from wacall.upstreams.meta.webhooks import SIGNATURE_HEADER, WEBHOOK_PATH, sign

ROOT = Path(__file__).resolve().parent.parent
BUSINESS = "+447911123456"  # GetPermission pairs
WEBHOOK_BUSINESS = "+447911123457"  # sender of the benchmark webhooks (its own audit trail)
ECHO_METHOD = "/bench.Echo/Ping"
ADDRESS_LINE = re.compile(r"grpc=(\S+) http=(\S+)")
STARTUP_TIMEOUT = 30.0


def user(i: int) -> str:
    return f"+346123456{i % 100:02d}"


# --- baseline server (subprocess mode) --------------------------------------------------------------------------


async def serve_baseline() -> None:
    """A bare grpc.aio echo method and two bare aiohttp webhook endpoints, in one process like the service."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(echo)}),)
    )
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    secret = os.environ.get("BENCH_APP_SECRET", "").encode()

    async def noop(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    async def verify(request: web.Request) -> web.Response:
        raw = await request.read()
        expected = "sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, "").encode(), expected.encode()):
            return web.json_response({"error": "bad signature"}, status=401)
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=1024 * 1024 + 1)
    app.add_routes([web.post("/noop", noop), web.post("/hmac", verify)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    http_port = runner.addresses[0][1]
    print(f"baseline serving grpc=127.0.0.1:{grpc_port} http=127.0.0.1:{http_port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)
    await runner.cleanup()


# --- subprocess handling ------------------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    grpc: str
    http: str
    stderr_path: Path

    def cpu_seconds(self) -> float | None:
        """On-CPU time of the child's threads so far, in ns resolution (Linux /proc schedstat; None elsewhere)."""
        total = 0
        try:
            for task in Path(f"/proc/{self.process.pid}/task").iterdir():
                try:
                    total += int((task / "schedstat").read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    continue  # a thread that just ended
        except OSError:
            return None
        return total / 1e9 if total else None

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_child(name: str, args: list[str], stderr_path: Path, env: dict[str, str] | None = None) -> Child:
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=stderr, env={**os.environ, **(env or {})}
        )
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        line = await asyncio.wait_for(process.stdout.readline(), max(remaining, 0.1)) if remaining > 0 else b""
        if not line:
            process.kill()
            await process.wait()
            tail = stderr_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} did not report its addresses (exit {process.returncode}):\n{tail}")
        match = ADDRESS_LINE.search(line.decode(errors="replace"))
        if match:
            return Child(name, process, match.group(1), match.group(2), stderr_path)


# --- load generation ------------------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    ok: int
    failed: int
    seconds: float
    latencies: list[float]  # seconds, successful calls only
    server_cpu: float | None = None  # server CPU seconds spent during the measured phase
    round_rates: tuple[float, ...] = ()

    def merge(self, other: Result) -> Result:
        """Pool two rounds of the same target."""
        cpu = None if self.server_cpu is None or other.server_cpu is None else self.server_cpu + other.server_cpu
        return Result(
            self.name,
            self.ok + other.ok,
            self.failed + other.failed,
            self.seconds + other.seconds,
            self.latencies + other.latencies,
            cpu,
            (*self.round_rates, *other.round_rates),
        )

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in ms (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[index] * 1000

    @property
    def cpu_us_per_op(self) -> float | None:
        return None if self.server_cpu is None or not self.ok else self.server_cpu / self.ok * 1e6


async def drive(
    name: str, total: int, concurrency: int, call: Callable[[int], Awaitable[bool]], server: Child | None
) -> Result:
    """`total` calls of `call(i)` from `concurrency` coroutines; `call` returns True when the call succeeded."""
    counter = iter(range(total))
    latencies: list[float] = []
    failed = 0

    async def worker() -> None:
        nonlocal failed
        for i in counter:
            started = time.perf_counter()
            try:
                ok = await call(i)
            except (grpc.aio.AioRpcError, aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                failed += 1

    cpu_before = server.cpu_seconds() if server else None
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    cpu_after = server.cpu_seconds() if server else None
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    return Result(name, len(latencies), failed, seconds, latencies, cpu, (len(latencies) / seconds,))


async def paced(
    name: str, rate: float, total: int, call: Callable[[int], Awaitable[bool]], server: Child | None
) -> Result:
    """`total` calls of `call(i)` started at a steady `rate` per second whatever the answers do (an open loop, as
    independent clients would send them). Latency runs from each call's scheduled start, so a server that falls
    behind is charged for the queue it builds (no coordinated omission)."""
    latencies: list[float] = []
    failed = 0
    loop = asyncio.get_running_loop()

    async def one(i: int, scheduled: float) -> None:
        nonlocal failed
        try:
            ok = await call(i)
        except (grpc.aio.AioRpcError, aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            latencies.append(loop.time() - scheduled)
        else:
            failed += 1

    cpu_before = server.cpu_seconds() if server else None
    started = loop.time()
    tasks = []
    for i in range(total):
        scheduled = started + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, scheduled)))
    await asyncio.gather(*tasks)
    seconds = loop.time() - started
    cpu_after = server.cpu_seconds() if server else None
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    return Result(name, len(latencies), failed, seconds, latencies, cpu, (len(latencies) / seconds,))


async def interleaved(rounds: int, targets: list[Callable[[int], Awaitable[Result]]]) -> list[Result]:
    """Run every target once per round, alternating, and pool each target's rounds: slow drift on a shared
    machine (other tenants, CPU frequency) then affects all targets alike instead of whichever ran last."""
    pooled: list[Result | None] = [None] * len(targets)
    for r in range(rounds):
        for t, target in enumerate(targets):
            result = await target(r)
            previous = pooled[t]
            pooled[t] = result if previous is None else previous.merge(result)
    return [p for p in pooled if p is not None]


# --- reporting --------------------------------------------------------------------------------------------------


def print_results(title: str, unit: str, results: list[Result]) -> None:
    print(f"\n{title}")
    print(f"  {'target':<28} {'ok':>7} {'fail':>5} {unit + '/s':>10} {'rounds min-max':>15} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'p99 ms':>8} {'srv CPU us/op':>14}")  # fmt: skip
    for r in results:
        cpu = f"{r.cpu_us_per_op:14.0f}" if r.cpu_us_per_op is not None else f"{'n/a':>14}"
        spread = f"{min(r.round_rates):.0f}-{max(r.round_rates):.0f}" if r.round_rates else "-"
        print(
            f"  {r.name:<28} {r.ok:>7} {r.failed:>5} {r.rate:>10.0f} {spread:>15} {r.percentile(50):>8.2f} "
            f"{r.percentile(95):>8.2f} {r.percentile(99):>8.2f} {cpu}"
        )


def print_ratios(title: str, subject: Result, baselines: list[Result]) -> None:
    print(f"\n{title}")
    print(f"  {'ratio':<52} {'throughput':>10} {'p50':>7} {'p95':>7} {'p99':>7} {'srv CPU/op':>10}")
    for base in baselines:
        throughput = subject.rate / base.rate if base.rate else float("nan")
        lat = [subject.percentile(q) / base.percentile(q) for q in (50, 95, 99)]
        cpu = (
            f"{subject.cpu_us_per_op / base.cpu_us_per_op:9.2f}x"
            if subject.cpu_us_per_op and base.cpu_us_per_op
            else f"{'n/a':>10}"
        )
        label = f"{subject.name} / {base.name}"
        print(f"  {label:<52} {throughput:>9.2f}x {lat[0]:>6.2f}x {lat[1]:>6.2f}x {lat[2]:>6.2f}x {cpu}")


def machine_info() -> str:
    cpus = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cpus
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"machine: {platform.system()} {platform.release()} {platform.machine()}, cores {cpus} (usable {usable})"
        + (f", {model}" if model else "")
        + f"\npython {platform.python_version()} ({platform.python_implementation()}), grpcio {grpc.__version__}, "
        f"aiohttp {aiohttp.__version__}"
    )


# --- the benchmarks ---------------------------------------------------------------------------------------------


@dataclass
class Sizes:
    rounds: int  # each target runs once per round, alternating; counts below are totals over the rounds
    grpc_calls: int
    grpc_warmup: int
    grpc_concurrency: int
    half_load_seconds: float  # total over the rounds, per target, at half the echo's saturated rate
    seeded_pairs: int
    webhooks: int
    webhook_warmup: int
    webhook_concurrency: int


DEFAULT = Sizes(
    rounds=4,
    grpc_calls=20000,
    grpc_warmup=1000,
    grpc_concurrency=32,
    half_load_seconds=8.0,
    seeded_pairs=20,
    webhooks=6000,
    webhook_warmup=300,
    webhook_concurrency=32,
)
QUICK = Sizes(
    rounds=2,
    grpc_calls=300,
    grpc_warmup=50,
    grpc_concurrency=8,
    half_load_seconds=1.0,
    seeded_pairs=4,
    webhooks=100,
    webhook_warmup=10,
    webhook_concurrency=8,
)


async def bench_grpc(sizes: Sizes, baseline: Child, service: Child) -> tuple[Result, Result, Result, Result]:
    """Saturation (as many calls as `grpc_concurrency` callers can make), then latency at half the echo's saturated
    rate, the same offered load for both."""
    request = pb.GetPermissionRequest(business_number=BUSINESS, user_number=user(0))
    payload = request.SerializeToString()
    per_round = sizes.grpc_calls // sizes.rounds
    async with (
        grpc.aio.insecure_channel(baseline.grpc) as echo_channel,
        grpc.aio.insecure_channel(service.grpc) as channel,
    ):
        ping = echo_channel.unary_unary(ECHO_METHOD)  # no serializers: raw bytes both ways
        calling = calling_pb2_grpc.CallingServiceStub(channel)

        async def echo_call(i: int) -> bool:
            reply = await ping(payload, timeout=10)
            return reply == payload

        # Seed: one permission request per pair, so most reads find a ledger with events and limits in use.
        for i in range(sizes.seeded_pairs):
            sent = await calling.RequestPermission(
                pb.RequestPermissionRequest(business_number=BUSINESS, user_number=user(i), idempotency_key=f"seed-{i}"),
                timeout=10,
            )
            if not sent.message_id:
                raise RuntimeError(f"seeding {user(i)} returned no message id")
        # Reads cycle over the seeded pairs plus as many never-seen pairs.
        requests = [
            pb.GetPermissionRequest(business_number=BUSINESS, user_number=user(i))
            for i in range(2 * sizes.seeded_pairs)
        ]

        async def get_call(i: int) -> bool:
            permission = await calling.GetPermission(requests[i % len(requests)], timeout=10)
            return permission.business_number == BUSINESS

        await drive("warmup", sizes.grpc_warmup, sizes.grpc_concurrency, echo_call, None)
        await drive("warmup", sizes.grpc_warmup, sizes.grpc_concurrency, get_call, None)
        echo, got = await interleaved(
            sizes.rounds,
            [
                lambda r: drive("echo (grpc.aio bare)", per_round, sizes.grpc_concurrency, echo_call, baseline),
                lambda r: drive("wacall GetPermission", per_round, sizes.grpc_concurrency, get_call, service),
            ],
        )
        rate = echo.rate / 2
        per_round = int(rate * sizes.half_load_seconds / sizes.rounds)
        echo_half, got_half = await interleaved(
            sizes.rounds,
            [
                lambda r: paced(f"echo @ {rate:.0f}/s", rate, per_round, echo_call, baseline),
                lambda r: paced(f"GetPermission @ {rate:.0f}/s", rate, per_round, get_call, service),
            ],
        )
    return echo, got, echo_half, got_half


Body = tuple[str, bytes, str]  # message id, raw JSON, X-Hub-Signature-256


def webhook_bodies(account: MetaAccount, count: int, prefix: str) -> list[Body]:
    """`count` distinct signed text messages to `account` from its users (distinct message ids)."""
    secret = account.app_secret.encode()
    now = datetime.now(UTC)
    bodies = []
    for i in range(count):
        message_id = f"wamid.BENCH{prefix}{i:07d}"
        raw = json.dumps(
            payloads.text_message(account, user(i)[1:], message_id, now, f"bench {i}"), separators=(",", ":")
        ).encode()
        bodies.append((message_id, raw, sign(secret, raw)))
    return bodies


async def post_all(
    session: aiohttp.ClientSession, name: str, url: str, bodies: list[Body], concurrency: int, server: Child | None
) -> Result:
    """POST every body; only HTTP 200 counts as done."""

    async def post(i: int) -> bool:
        _, raw, signature = bodies[i]
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature}
        async with session.post(url, data=raw, headers=headers) as response:
            await response.read()
            return response.status == 200

    return await drive(name, len(bodies), concurrency, post, server)


async def ledger_message_ids(address: str) -> set[str]:
    """Message ids of every user_message_received event of WEBHOOK_BUSINESS, paging through ListEvents."""
    found: set[str] = set()
    cursor = ""
    async with grpc.aio.insecure_channel(address) as channel:
        calling = calling_pb2_grpc.CallingServiceStub(channel)
        while True:
            page = await calling.ListEvents(
                pb.ListEventsRequest(business_number=WEBHOOK_BUSINESS, page_size=1000, after_cursor=cursor), timeout=30
            )
            found.update(
                e.attributes["message_id"] for e in page.events if e.kind == pb.EVENT_KIND_USER_MESSAGE_RECEIVED
            )
            if not page.next_cursor:
                return found
            cursor = page.next_cursor


async def bench_webhooks(
    sizes: Sizes, baseline: Child, service: Child, account: MetaAccount
) -> tuple[list[Result], int, int]:
    """Returns the results (wacall first), the number of webhooks posted to wacall and how many are in its ledger."""
    warm = webhook_bodies(account, sizes.webhook_warmup, "W")
    measured = webhook_bodies(account, sizes.webhooks, "M")
    per_round = len(measured) // sizes.rounds
    chunks = [measured[r * per_round : (r + 1) * per_round] for r in range(sizes.rounds)]
    posted = warm + [body for chunk in chunks for body in chunk]
    concurrency = sizes.webhook_concurrency
    noop, check, ingest = f"http://{baseline.http}/noop", f"http://{baseline.http}/hmac", f"http://{service.http}"
    ingest += WEBHOOK_PATH
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        for url in (noop, check, ingest):
            await post_all(session, "warmup", url, warm, concurrency, None)
        # The baselines get the same bodies each round; wacall gets fresh message ids each round.
        results = await interleaved(
            sizes.rounds,
            [
                lambda r: post_all(session, "wacall webhook (durable)", ingest, chunks[r], concurrency, service),
                lambda r: post_all(session, "aiohttp 200 (bare)", noop, chunks[r], concurrency, baseline),
                lambda r: post_all(session, "aiohttp 200 + HMAC check", check, chunks[r], concurrency, baseline),
            ],
        )
    in_ledger = await ledger_message_ids(service.grpc)
    ids = {message_id for message_id, _, _ in posted}
    return results, len(ids), len(ids & in_ledger)


async def main(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else DEFAULT
    print("command: " + " ".join([sys.executable, *sys.argv]))
    print(machine_info())
    print(
        f"sizes: gRPC {sizes.grpc_calls} calls x {sizes.grpc_concurrency} concurrent (+{sizes.grpc_warmup} warmup), "
        f"then {sizes.half_load_seconds:.0f} s each at half the echo's rate; {sizes.seeded_pairs} seeded pairs;\n"
        f"       webhooks {sizes.webhooks} x {sizes.webhook_concurrency} concurrent (+{sizes.webhook_warmup} warmup); "
        f"{sizes.rounds} interleaved rounds per target"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wacall-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        sim_state = tmp / "simulator.json"
        service = await start_child(
            "wacall",
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
                f"sqlite:///{tmp / 'wacall.db'}",
                "--sim-state",
                str(sim_state),
                "--clock",
                "system",
                "--log-level",
                "WARNING",
            ],
            tmp / "wacall.stderr",
        )
        baseline: Child | None = None
        try:
            # Provision the webhook sender (this also writes the simulator state, with its app secret).
            async with grpc.aio.insecure_channel(service.grpc) as channel:
                await calling_pb2_grpc.CallingServiceStub(channel).RequestPermission(
                    pb.RequestPermissionRequest(business_number=WEBHOOK_BUSINESS, user_number=user(99)), timeout=10
                )
            app_secret = json.loads(sim_state.read_text())["app_secret"]
            digits = WEBHOOK_BUSINESS[1:]
            account = MetaAccount(WEBHOOK_BUSINESS, "1" + digits, "2" + digits, "", app_secret)
            baseline = await start_child(
                "baseline",
                [sys.executable, str(Path(__file__).resolve()), "--serve-baseline"],
                tmp / "baseline.stderr",
                {"BENCH_APP_SECRET": app_secret},
            )
            pids = f"wacall pid {service.process.pid}, baseline pid {baseline.process.pid}, client pid {os.getpid()}"
            print(f"processes: {pids}")

            echo, got, echo_half, got_half = await bench_grpc(sizes, baseline, service)
            print_results("gRPC unary at saturation (client: grpc.aio, one channel)", "calls", [echo, got])
            print_results(
                "gRPC unary at half the echo's saturated rate (open loop; latency from each call's scheduled start)",
                "calls",
                [echo_half, got_half],
            )
            webhooks, posted, verified = await bench_webhooks(sizes, baseline, service, account)
            print_results("Signed webhooks, POST over HTTP/1.1 (client: aiohttp)", "hooks", webhooks)

            print_ratios("Ratios: wacall GetPermission vs bare echo (latency: higher is slower)", got, [echo])
            print_ratios("Ratios at half load: wacall GetPermission vs bare echo", got_half, [echo_half])
            print_ratios("Ratios: wacall webhook ingest vs bare aiohttp", webhooks[0], webhooks[1:])
            measured = webhooks[0].ok + webhooks[0].failed
            print(f"\nwebhooks accepted (HTTP 200) by wacall, measured phase: {webhooks[0].ok}/{measured}")
            print(f"webhooks verified in ledger: {verified}/{posted}")
            late = echo_half.failed + got_half.failed
            if late:
                # An open loop keeps sending when the machine falls behind: those calls time out (10 s) instead.
                print(f"calls at half load that failed or timed out (the rate was not sustained): {late}")
            failures = echo.failed + got.failed + sum(r.failed for r in webhooks)
        finally:
            for child in (baseline, service):
                if child is not None:
                    await child.stop()
    print(f"total wall time: {time.perf_counter() - started:.1f} s")
    if verified != posted:
        print("FAIL: some accepted webhooks are missing from the ledger", file=sys.stderr)
        return 1
    if failures:
        print(f"FAIL: {failures} calls or posts failed", file=sys.stderr)
        return 1
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        asyncio.run(serve_baseline())
        return 0
    return asyncio.run(main(args))


if __name__ == "__main__":
    raise SystemExit(cli())
