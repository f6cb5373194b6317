"""The Node client (clients/node) against a real service: its own `node --test` suite, given this service's address.

The suite asks for a permission the simulated user grants (driving SimulatorService from Node), follows it on the
WatchEvents stream, and decodes the RetryInfo of the refused second request (see clients/node/test/). `make test`
installs its dependencies (`make node-deps`: `npm ci --prefix clients/node`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.conftest import Running

ROOT = Path(__file__).resolve().parent.parent
NODE_CLIENT = ROOT / "clients" / "node"
TOKEN = "node-client-token"
# The test file named, not the directory: from Node 21 on, --test arguments are globs, and a directory is loaded as
# a module. The TAP reporter prints the "# pass N" / "# fail 0" summary checked below on every Node from 18 on.
NODE_TEST = ["--test", "--test-reporter=tap", "test/client.test.js"]


def test_npm_test_runs_what_the_suite_runs() -> None:
    scripts = json.loads((NODE_CLIENT / "package.json").read_text())["scripts"]
    assert shlex.split(scripts["test"]) == ["node", *NODE_TEST]


def make_dry_run(*targets: str) -> str:
    return subprocess.run(
        ["make", "-n", *targets], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_make_unit_installs_the_node_clients_dependencies_first() -> None:
    # A fresh clone: the lock file newer than what is installed. `make unit` (not only `make test`) installs them.
    dry = make_dry_run("-W", "clients/node/package-lock.json", "unit")
    assert dry.index("npm ci --prefix clients/node") < dry.index("pytest")


def test_system_deps_installs_node_and_npm_as_root_when_missing() -> None:
    assert "apt-get install -y -qq nodejs npm" in make_dry_run("system-deps")


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
        *NODE_TEST,
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
