"""The store-reads benchmark runs end to end (`bench/store_reads.py --quick`): the query with and without migration
7's index, and the event loop's worst stall with reads on the reader thread and on the loop thread. No timing
thresholds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_store_reads_benchmark_reports_both_measures_against_their_baselines() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "store_reads.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    for target in (
        "with events_by_business",
        "baseline: without it",
        "reads on the store's reader thread",
        "baseline: reads on the loop thread",
    ):
        line = re.search(rf"^\s+{re.escape(target)}\s+([\d.]+) ms$", done.stdout, re.MULTILINE)
        assert line is not None, done.stdout
    assert len(re.findall(r"ratio \(baseline / [a-z ]+\)\s+[\d.]+x", done.stdout)) == 2, done.stdout
