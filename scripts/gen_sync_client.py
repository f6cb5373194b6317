"""Generate the sync Python client (clients/python/wacall_client/_sync_client.py) from the async one (_client.py),
or check that it is current: one source for every method, its signature and its docstring.

The async client is written so that a plain rewrite gives the sync one on `grpc` sync channels: `async def` →
`def`, no `await`, `async for` → `for`, async iterables → iterables, `grpc.aio` channels → `grpc` channels, and each
`...Client` class → `Sync...Client`. The result is formatted with ruff.

    python scripts/gen_sync_client.py          # regenerate
    python scripts/gen_sync_client.py --check  # exit 1 if the committed file is stale
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clients" / "python" / "wacall_client"
SOURCE = PACKAGE / "_client.py"
TARGET = PACKAGE / "_sync_client.py"

HEADER = '''"""The sync client (grpc sync channels): `SyncClient` and its services, the async `Client`'s methods.

Generated from _client.py by scripts/gen_sync_client.py: edit _client.py and run `make proto`.
"""
'''

REWRITES = [
    (re.compile(r"\basync def\b"), "def"),
    (re.compile(r"\basync for\b"), "for"),
    (re.compile(r"\basync with\b"), "with"),
    (re.compile(r"\bawait "), ""),
    # A loop that only passes items on is `yield from` in a plain generator.
    (re.compile(r"^(\s*)for (\w+) in (.+):\n\s+yield \2$", re.MULTILINE), r"\1yield from \3"),
    (re.compile(r"\bAsyncIterable\b"), "Iterable"),
    (re.compile(r"\bAsyncIterator\b"), "Iterator"),
    (re.compile(r"\bgrpc\.aio\.(secure_channel|insecure_channel|Channel)\b"), r"grpc.\1"),
    (re.compile(r"\b__aenter__\b"), "__enter__"),
    (re.compile(r"\b__aexit__\b"), "__exit__"),
    (re.compile(r"\b(?<!_)([A-Z]\w*)?Client\b"), lambda m: f"Sync{m.group(1) or ''}Client"),
]


def sync_source(text: str) -> str:
    docstring_end = text.index('"""', 3) + 3
    body = text[docstring_end:]
    for pattern, replacement in REWRITES:
        body = pattern.sub(replacement, body)  # type: ignore[arg-type]
    return _ruff(HEADER + body)


def _ruff(text: str) -> str:
    for command in (["check", "--fix", "--select", "I", "--quiet"], ["format", "--quiet"]):
        text = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--stdin-filename", str(TARGET), "-"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
    return text


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="fail if the committed sync client is stale")
    options = parser.parse_args()
    fresh = sync_source(SOURCE.read_text())
    if options.check:
        if not TARGET.exists() or TARGET.read_text() != fresh:
            print(f"{TARGET.relative_to(ROOT)} is stale; run `make proto`", file=sys.stderr)
            return 1
        print(f"{TARGET.relative_to(ROOT)} is current")
        return 0
    TARGET.write_text(fresh)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
