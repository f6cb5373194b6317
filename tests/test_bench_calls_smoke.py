"""The call benchmark runs end to end (`bench/calls.py --quick`): setup time and talk delay on every route and every
concurrency mode report a result. No timing thresholds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUSTAINS = r"sustains \d+ concurrent calls on this machine \(\d+ cores\)"


@pytest.mark.slow
def test_quick_call_benchmark_runs_and_prints_every_summary() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "calls.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{output}\n{done.stderr}"
    for route in ("announcement route", "webrtc route, aiortc bridge", "webrtc route, bridged through rtpengine",
                  "media_stream route"):  # fmt: skip
        assert re.search(
            rf"call setup \(StartCall -> first audible frame at the phone\), {route}[^:]*: median \d+ ms, "
            r"p95 \d+ ms; StartCall RPC alone: median [\d.]+ ms",
            output,
        ), f"no setup summary for {route}\n{output}"
    for route in ("webrtc route, aiortc bridge", "webrtc route, bridged through rtpengine", "media_stream route"):
        assert re.search(
            rf"talk delay \(business speaks -> the phone hears\), {route}[^:]*: median \d+ ms, p95 \d+ ms; "
            r"bare aiortc pair \d+ ms; [+-]\d+ ms, [\d.]+x",
            output,
        ), f"no talk delay summary for {route}\n{output}"
    for mode in ("webrtc bridge", "webrtc passthrough", r"aiortc pairs \(no service\)"):
        assert re.search(rf"{mode}: {SUSTAINS}", output), f"no summary for {mode}\n{output}"
    assert "Bridge-only cost estimate" in output
