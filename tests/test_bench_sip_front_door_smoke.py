"""The SIP front door benchmark runs end to end (`bench/sip_front_door.py --quick`): SIPp's baselines and wacall's
403 and 480 refusals are answered and report a rate and wacall's CPU per refusal, both setup times report, and the
concurrent SIP calls and their passthrough baseline each report a step. No timing thresholds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = r"median \d+ ms, p95 \d+ ms over 3 calls \(0 failed\)"


@pytest.mark.slow
def test_quick_front_door_benchmark_reports_refusals_setup_times_and_concurrent_calls() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sip_front_door.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{output}\n{done.stderr}"
    for target in ("SIPp UAS 403", "SIPp uac/uas"):
        assert re.search(rf"  {target} at 50/s: 100/100 calls in [\d.]+ s = \d+/s, 0 failed\n", output), output
    for target in ("wacall 403", "wacall 480"):
        assert re.search(rf"  {target} at 50/s: 100/100 calls .* 0 failed, wacall CPU \d+ µs per call\n", output), (
            output
        )
    for summary in ("wacall 403 NO_PERMISSION", "wacall 480 CALL_LIMIT_REACHED"):
        assert re.search(rf"{summary}: (\d+/s kept up .*wacall CPU \d+ µs per refusal|kept up at no rate)", output)
    assert re.search(rf"INVITE -> 200 OK through the front door .*: {SETUP}", output), output
    assert re.search(rf"StartCall -> CONNECTED, webrtc bridge .*: {SETUP}", output), output
    assert re.search(r"SIP front door, PCMU <-> Opus .*: sustains \d+ concurrent calls", output), output
    assert re.search(r"webrtc passthrough: sustains \d+ concurrent calls", output), output
    assert re.search(r"setup time, INVITE -> 200 OK / StartCall -> CONNECTED \(medians\): [\d.]+x", output), output
