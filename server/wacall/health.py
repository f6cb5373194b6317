"""`/healthz`, `/readyz` and `/metrics` on the HTTP address, and the gRPC health service following readiness.

Liveness says the process serves HTTP and touches nothing else. Readiness asks each dependency a short question —
does the store answer a read and commit a write, is the platform configured, is a media engine alive (when one is
configured) — and answers 503 with the first problem as a short JSON reason: what a load balancer needs to stop
sending traffic, and no more (no addresses, tokens or secrets). Neither is behind the bearer token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from wacall.metrics import CONTENT_TYPE, Metrics
from wacall.store import Store, Tx

log = logging.getLogger(__name__)

# A check of one dependency: a short reason it is not ready, or None.
ReadinessCheck = Callable[[], Awaitable[str | None]]

STORE_TIMEOUT = 1.0  # seconds the store has to answer a readiness probe
READINESS_INTERVAL = 2.0  # seconds between the gRPC health service's readiness checks


def _write_nothing(tx: Tx) -> None:
    return None


def store_answers(store: Callable[[], Store | None], timeout: float = STORE_TIMEOUT) -> ReadinessCheck:
    """Ready when the store answers a read (its newest cursor) and commits an empty transaction within `timeout`:
    the reads and the writes may fail apart (a writer that died, a database locked for writing)."""

    async def check() -> str | None:
        current = store()
        if current is None:
            return "store not open"
        try:
            async with asyncio.timeout(timeout):
                await current.last_cursor()
                # Writes nothing: no fsync, only the writer's lock taken and released.
                await current.transaction(_write_nothing)
        except TimeoutError:
            return f"store did not answer within {timeout:g} s"
        except Exception as error:  # whatever the backend raises, the answer is "not ready"
            return f"store unavailable ({type(error).__name__})"
        return None

    return check


async def first_problem(checks: Sequence[ReadinessCheck]) -> str | None:
    for check in checks:
        problem = await check()
        if problem is not None:
            return problem
    return None


def health_routes(metrics: Metrics, checks: Sequence[ReadinessCheck]) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problem = await first_problem(checks)
        if problem is not None:
            return web.json_response({"status": "not ready", "reason": problem}, status=503)
        return web.json_response({"status": "ready"})

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", scrape)]


async def start_following_readiness(
    checks: Sequence[ReadinessCheck],
    set_serving: Callable[[bool], Awaitable[None]],
    interval: float = READINESS_INTERVAL,
) -> asyncio.Task[None]:
    """Set the gRPC health service NOT_SERVING, run the first readiness check now (SERVING only if it passes), and
    return the task that keeps it in step from then on (cancel it to stop). Never SERVING before a check passed."""
    await set_serving(False)
    problem = await first_problem(checks)
    ready = problem is None
    if ready:
        await set_serving(True)
        log.info("ready")
    else:
        log.warning("not ready: %s", problem)
    return asyncio.create_task(follow_readiness(checks, set_serving, interval, ready), name="wacall-ready")


async def follow_readiness(
    checks: Sequence[ReadinessCheck],
    set_serving: Callable[[bool], Awaitable[None]],
    interval: float = READINESS_INTERVAL,
    serving: bool | None = None,
) -> None:
    """Keep the gRPC health service in step with readiness (checked every `interval`), which was `serving` (None:
    unknown); runs until cancelled."""
    while True:
        problem = await first_problem(checks)
        if (problem is None) != serving:
            serving = problem is None
            await set_serving(serving)
            if problem is not None:
                log.warning("not ready: %s", problem)
            else:
                log.info("ready")
        await asyncio.sleep(interval)
