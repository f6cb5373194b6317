"""The media engine capacity benchmark runs end to end (`bench/engine_capacity.py --quick`): every mode reports what
its receivers got, the engine modes report rtpengine's CPU, and rtpengine holds no session afterwards. No timing
thresholds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECEIVED = r"received min [\d.]+% median [\d.]+%"
PLAIN = rf"{RECEIVED} of what was sent, lost \d+/\d+ \([\d.]+%\), late \d+ \([\d.]+%\), generator ticks late \d+"
ENGINE = r"rtpengine [\d.]+%, (?:[\d.]+% of a core per call = \d+ calls per core|n/a); sessions left after delete: 0"


@pytest.mark.slow
def test_quick_capacity_benchmark_reports_every_mode_and_leaves_no_session() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "engine_capacity.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{output}\n{done.stderr}"
    for mode in ("baseline: generators direct, Opus both legs", "baseline: generators direct, PCMU <-> Opus"):
        assert re.search(rf"{mode} \(no engine\): \d+ calls, {PLAIN}; load generators [\d.]+% of a core\n", output), (
            output
        )
    for mode in ("relay through rtpengine, plain RTP Opus <-> Opus", "transcode in rtpengine, plain RTP PCMU <-> Opus"):
        assert re.search(rf"{mode}: \d+ calls, {PLAIN}; load generators [\d.]+% of a core; {ENGINE}", output), output
    for sample in ("aiortc pairs relayed", r"aiortc Opus \(DTLS-SRTP\) <-> PCMU generator, transcoded"):
        assert re.search(rf"WebRTC sample: {sample}.*: 2 calls, {RECEIVED} of real time heard.*; {ENGINE}", output), (
            output
        )
    assert re.search(r"relayed \(plain RTP\): rtpengine .*\(target >= 200\)", output), output
    assert re.search(r"transcoded \(plain RTP\): rtpengine .*\(target >= 50\)", output), output
