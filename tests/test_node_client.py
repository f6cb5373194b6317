"""The Node client (clients/node) against a real service: its own `node --test` suite, given this service's address.

The suite asks for a permission the simulated user grants (driving SimulatorService from Node), follows it on the
WatchEvents stream, and decodes the RetryInfo of the refused second request (see clients/node/test/). `make test`
installs its dependencies (`make node-deps`: `npm ci --prefix clients/node`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.conftest import Running

NODE_CLIENT = Path(__file__).resolve().parent.parent / "clients" / "node"
TOKEN = "node-client-token"


async def test_node_client_suite_passes_against_a_running_service(
    make_service: Callable[..., Awaitable[Running]],
) -> None:
    node = shutil.which("node")
    assert node is not None, "the Node client's test needs node (>= 18): apt-get install nodejs npm"
    assert (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run `make node-deps` first"
    running = await make_service(auth_token=TOKEN)
    # The service runs in this process's event loop: node runs beside it, without blocking the loop.
    process = await asyncio.create_subprocess_exec(
        node,
        "--test",
        "test/",
        cwd=NODE_CLIENT,
        env={**os.environ, "WACALL_ADDRESS": running.addresses.grpc, "WACALL_TOKEN": TOKEN},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 180)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    report = output.decode(errors="replace")
    assert process.returncode == 0, report
    passed = re.search(r"^# pass (\d+)$", report, re.MULTILINE)
    assert passed is not None and int(passed.group(1)) >= 5, report
    assert re.search(r"^# fail 0$", report, re.MULTILINE), report
