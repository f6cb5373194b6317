"""`/healthz`, `/readyz` and `/metrics` on the HTTP address, and the gRPC health service following readiness.

Liveness says the process serves HTTP and touches nothing else. Readiness asks each dependency a short question —
does the store answer, is the platform configured, is a media engine alive (when one is configured) — and answers
503 with the first problem as a short JSON reason: what a load balancer needs to stop sending traffic, and no more
(no addresses, tokens or secrets). Neither is behind the bearer token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from wacall.metrics import CONTENT_TYPE, Metrics
from wacall.store import Store

log = logging.getLogger(__name__)

# A check of one dependency: a short reason it is not ready, or None.
ReadinessCheck = Callable[[], Awaitable[str | None]]

STORE_TIMEOUT = 1.0  # seconds the store has to answer a readiness probe
READINESS_INTERVAL = 2.0  # seconds between the gRPC health service's readiness checks


def store_answers(store: Callable[[], Store | None], timeout: float = STORE_TIMEOUT) -> ReadinessCheck:
    """Ready when the store answers a read (its newest cursor) within `timeout`."""

    async def check() -> str | None:
        current = store()
        if current is None:
            return "store not open"
        try:
            async with asyncio.timeout(timeout):
                await current.last_cursor()
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


async def follow_readiness(
    checks: Sequence[ReadinessCheck],
    set_serving: Callable[[bool], Awaitable[None]],
    interval: float = READINESS_INTERVAL,
) -> None:
    """Keep the gRPC health service in step with readiness (checked every `interval`); runs until cancelled."""
    serving: bool | None = None
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
