"""The media engine benchmark runs end to end (`bench/engine.py --quick`): both modes report, every relay call
started, and rtpengine holds no session afterwards. No timing thresholds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_engine_benchmark_reports_rtpengines_cpu_per_call() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "engine.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{output}\n{done.stderr}"
    assert re.search(r"aiortc pairs \(no engine\): 2/2 calls, heard min \d+%", output), output
    assert re.search(r"relay through rtpengine: 2/2 calls, heard min \d+%", output), output
    assert re.search(
        r"rtpengine relay: 2 calls, rtpengine CPU [\d.]+% of a core \([\d.]+% per call\); "
        r"sessions left after delete: 0",
        output,
    ), output
