"""The queues-across-replicas benchmark runs end to end (`bench/queue_replicas.py --quick`): an offer's way to a
session on the stepping replica and on another, on PostgreSQL and on SQLite. No timing thresholds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_queue_replicas_benchmark_reports_offer_latency_on_each_replica_and_the_ratio() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "queue_replicas.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    for database in ("PostgreSQL", "SQLite"):
        section = done.stdout.split(f"{database}: ", 1)[1]
        for target in ("session on A (baseline)", "session on B"):
            line = re.search(rf"^\s+{re.escape(target)}\s+([\d.]+)\s+([\d.]+)$", section, re.MULTILINE)
            assert line is not None, done.stdout
            assert 0 < float(line.group(1)) <= float(line.group(2))
        assert re.search(rf"{database} session on B / on A: p50 \d+\.\d\dx", done.stdout), done.stdout
