"""The `wacall` command for people at a terminal: errors read as sentences, `serve --help` explains every flag."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import BUSINESS, USER
from google.protobuf import any_pb2
from google.rpc import error_details_pb2
from test_process import BIN, ServeProcess

from wacall.cli import describe_status, human_duration
from wacall.config import SCALARS
from wacall.rules.policy import PRESETS

Run = Callable[..., subprocess.CompletedProcess[str]]
RAW_PROTOBUF = re.compile(r"[{}]|seconds:|retry_delay|violations")


@pytest.fixture
def wacall_cli(tmp_path: Path) -> Iterator[Run]:
    """The CLI against a real service process with a manual clock."""
    process = ServeProcess(tmp_path, "--clock", "manual")
    env = {**os.environ, "WACALL_ADDRESS": process.grpc}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "wacall"), *args], capture_output=True, text=True, env=env, timeout=30)

    yield run
    process.proc.kill()
    process.proc.wait()


def service_time(run: Run) -> datetime:
    shown = run("clock", "now").stdout.strip()
    return datetime.strptime(shown, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)


def test_a_used_up_limit_says_when_to_retry_in_words(wacall_cli: Run) -> None:
    assert wacall_cli("permission", "request", BUSINESS, USER).returncode == 0
    now = service_time(wacall_cli)
    again = wacall_cli("permission", "request", BUSINESS, USER)
    assert again.returncode == 1 and not RAW_PROTOBUF.search(again.stderr), again.stderr
    lines = again.stderr.splitlines()
    assert lines[0].startswith("error: RESOURCE_EXHAUSTED: send_permission_request refused")
    retry = next(line for line in lines if "retry in" in line)
    delay, at = re.fullmatch(r"  retry in (.+) \(at (.+)\)", retry).groups()  # type: ignore[union-attr]
    assert delay.startswith("24 h")
    next_allowed = datetime.strptime(at, "%Y-%m-%d %H:%M:%S UTC" if at.count(":") == 2 else "%Y-%m-%d %H:%M UTC")
    assert next_allowed.replace(tzinfo=UTC) - now >= timedelta(hours=24)
    shown = wacall_cli("permission", "get", BUSINESS, USER).stdout
    assert f"next allowed {next_allowed:%Y-%m-%d %H:%M}" in shown
    assert f"  limit reached: 1 of 1 per 24 h used ({BUSINESS}:{USER})" in lines


def test_bad_input_and_a_missing_permission_read_as_lines(wacall_cli: Run) -> None:
    bad = wacall_cli("permission", "get", "+1", USER)
    assert bad.returncode == 1 and not RAW_PROTOBUF.search(bad.stderr), bad.stderr
    assert bad.stderr.startswith("error: INVALID_ARGUMENT: business_number: ")
    assert "\n  bad business_number: " in bad.stderr
    no_permission = wacall_cli("call", "start", BUSINESS, USER)
    assert no_permission.returncode == 1 and not RAW_PROTOBUF.search(no_permission.stderr), no_permission.stderr
    assert no_permission.stderr.startswith("error: FAILED_PRECONDITION: ")
    assert f"  NO_PERMISSION ({BUSINESS}:{USER}): " in no_permission.stderr


def test_error_info_and_every_kind_of_detail_print_without_protobuf_text() -> None:
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason="REQUEST_OUTCOME_UNKNOWN", domain="wacall", metadata={"counted": "true", "channel": "template"}
        )
    )
    retry = any_pb2.Any()
    retry.Pack(error_details_pb2.RetryInfo(retry_delay={"seconds": 6 * 86400 + 23 * 3600 + 5}))
    now = datetime(2026, 12, 2, 19, 42, tzinfo=UTC)
    text = describe_status("FAILED_PRECONDITION", "may have been sent", [info, retry], now)
    assert text.splitlines() == [
        "error: FAILED_PRECONDITION: may have been sent",
        "  REQUEST_OUTCOME_UNKNOWN (wacall)",
        "    channel: template",
        "    counted: true",
        "  retry in 6 d 23 h (at 2026-12-09 18:42:05 UTC)",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(86400, "24 h"), (86399, "23 h 59 min"), (45, "45 s"), (2 * 86400, "2 d"), (90, "1 min 30 s"), (0, "0 s")],
)
def test_durations_read_in_the_largest_units(seconds: int, text: str) -> None:
    assert human_duration(timedelta(seconds=seconds)) == text


def test_serve_help_describes_every_flag_with_its_choices_and_default() -> None:
    shown = subprocess.run([str(BIN / "wacall"), "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0
    flat = " ".join(shown.stdout.split())
    for name in SCALARS:
        flag = f"--{name.replace('_', '-')}"
        assert flag in flat and f"env WACALL_{name.upper()})" in flat, name
    assert "--policy {" + ",".join(sorted(PRESETS)) + "}" in flat
    assert "--clock {system,manual}" in flat and "--upstream {sim,meta}" in flat
    assert "(default: seed;" in flat and "(default: 127.0.0.1:50051;" in flat and "(default: 60.0;" in flat
    # Every flag says what it does, not only where it comes from.
    helps = re.findall(r"\n  --[a-z-]+[^\n]*\n((?:\s{20,}[^\n]*\n)+)", shown.stdout)
    assert all(not h.strip().startswith("(default") for h in helps)


def test_sim_commands_change_only_what_they_are_given(wacall_cli: Run) -> None:
    phone = wacall_cli("sim", "phone", USER, "decline", "--ring", "5s", "--tone-hz", "440")
    assert phone.stdout.strip() == f"{USER}: requests IGNORE; calls: DECLINE after 5 s of ringing, says a 440 Hz tone"
    answers = wacall_cli("sim", "behavior", USER, "accept_permanent", "--delay", "2h")
    assert answers.stdout.strip() == (
        f"{USER}: requests ACCEPT_PERMANENT after 2 h; calls: DECLINE after 5 s of ringing, says a 440 Hz tone"
    )
    rings_longer = wacall_cli("sim", "phone", USER, "answer", "--ring", "9s")
    assert "requests ACCEPT_PERMANENT after 2 h; calls: ANSWER after 9 s" in rings_longer.stdout
