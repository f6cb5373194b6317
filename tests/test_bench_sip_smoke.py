"""The SIP parsing benchmark runs end to end (`bench/sip_parse.py --quick`) and reports every target. No timing
thresholds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_sip_parse_benchmark_reports_every_target_against_its_baselines() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sip_parse.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    for target in (
        "wacall.sip parse+serialise",
        "wacall.sip frame+serialise",
        "email.parser + as_bytes",
        "bytes.split",
    ):
        line = re.search(rf"^{re.escape(target)}.*?\s([\d,]+)\s", done.stdout, re.MULTILINE)
        assert line is not None, done.stdout
        assert int(line.group(1).replace(",", "")) > 0
