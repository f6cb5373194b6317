"""The PostgreSQL benchmark runs end to end (`bench/postgres.py --quick`): decisions per second with two processes
against one, and GetPermission's read latency with a small and a larger ledger. No timing thresholds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_postgres_benchmark_reports_decisions_per_second_and_read_latency_ratios() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "postgres.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    for target in ("1 process (baseline)", "2 processes on one database"):
        line = re.search(rf"^\s+{re.escape(target)}\s+([\d,]+)\s", done.stdout, re.MULTILINE)
        assert line is not None, done.stdout
        assert int(line.group(1).replace(",", "")) > 0
    assert re.search(r"2 processes / 1 process: \d+\.\d\dx", done.stdout), done.stdout
    for target in ("1,000 pairs (baseline)", "20,000 pairs"):
        line = re.search(rf"^\s+{re.escape(target)}\s+([\d.]+)\s+([\d.]+)$", done.stdout, re.MULTILINE)
        assert line is not None, done.stdout
        assert float(line.group(1)) > 0 and float(line.group(2)) >= float(line.group(1))
    assert re.search(r"20,000 / 1,000 pairs: p50 \d+\.\d\dx, p99 \d+\.\d\dx", done.stdout), done.stdout
