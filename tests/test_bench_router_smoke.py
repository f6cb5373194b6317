"""The contact-centre benchmark runs end to end (`bench/router.py --quick`): the router's steps and decisions per
second against the state-copy baseline, and available → offer through the service. No timing thresholds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_router_benchmark_reports_decisions_per_second_and_the_time_to_an_offer() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "router.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    for target in ("router.step: steps", "router.step: decisions", "baseline: copy the state"):
        line = re.search(rf"^\s+{re.escape(target)}\s+([\d,]+)\s", done.stdout, re.MULTILINE)
        assert line is not None, done.stdout
        assert int(line.group(1).replace(",", "")) > 0
    # Every kind of decision happened in the mix: the benchmark exercises offers, assignments and presence.
    for kind in ("Assigned", "OfferMade", "OfferWithdrawn", "PresenceChanged"):
        assert re.search(rf"{kind} [1-9]", done.stdout), done.stdout
    for target in ("set_presence AVAILABLE → offer", "baseline: set_presence AWAY → presence"):
        line = re.search(rf"{re.escape(target)}\s+([\d.]+)\s+([\d.]+)\s+.*\((\d+) samples\)", done.stdout)
        assert line is not None, done.stdout
        assert float(line.group(1)) > 0 and int(line.group(3)) == 10
