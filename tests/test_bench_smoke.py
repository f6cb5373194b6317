"""The benchmark script runs end to end (`bench/run.py --quick`) and loses no webhook. No timing thresholds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmark_runs_and_every_webhook_reaches_the_ledger() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{output}\n{done.stderr}"
    assert "wacall GetPermission / echo (grpc.aio bare)" in output
    half_load = re.search(r"GetPermission @ (\d+)/s / echo @ (\d+)/s", output)
    assert half_load is not None and half_load.group(1) == half_load.group(2), output  # one offered rate for both
    assert "wacall webhook (durable) / aiohttp 200 (bare)" in output
    assert "wacall webhook (durable) / aiohttp 200 + HMAC check" in output
    verified = re.search(r"webhooks verified in ledger: (\d+)/(\d+)", output)
    assert verified is not None, output
    found, posted = map(int, verified.groups())
    assert posted > 0
    assert found == posted, output
