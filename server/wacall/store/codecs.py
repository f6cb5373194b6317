"""How stored values are written: times as microseconds since the epoch (UTC), ledgers as compact JSON.

Pure functions, shared by every backend (and by the simulator, which keeps its state in the same forms).
"""

from __future__ import annotations

import calendar
import functools
import json
from datetime import UTC, datetime
from typing import Any

from wacall.rules.engine import Ledger, PermissionState
from wacall.rules.policy import SEED

# A ledger stored before requests expired is read with the platform's request lifetime (§1.3).
LEGACY_REQUEST_LIFETIME = SEED.request_lifetime


def to_micros(value: datetime) -> int:
    return calendar.timegm(value.utctimetuple()) * 1_000_000 + value.microsecond


def from_micros(value: int) -> datetime:
    seconds, micros = divmod(value, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)


def optional_micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def optional_datetime(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def ledger_to_json(ledger: Ledger) -> str:
    return json.dumps(
        {
            "state": ledger.state.value,
            "expires_at": optional_micros(ledger.expires_at),
            "state_changed_at": optional_micros(ledger.state_changed_at),
            "request_times": [to_micros(t) for t in ledger.request_times],
            "connected_call_times": [to_micros(t) for t in ledger.connected_call_times],
            "consecutive_unanswered": ledger.consecutive_unanswered,
            "last_connected_at": optional_micros(ledger.last_connected_at),
            "last_user_message_at": optional_micros(ledger.last_user_message_at),
            "request_expiries": [to_micros(t) for t in ledger.request_expiries],
            "state_before_request": ledger.state_before_request.value,
        },
        separators=(",", ":"),
    )


# Ledgers are immutable values: a pair read again and again unchanged (GetPermission polled) is parsed once.
@functools.lru_cache(maxsize=4096)
def ledger_from_json(text: str) -> Ledger:
    data: dict[str, Any] = json.loads(text)
    state = PermissionState(data["state"])
    if "request_expiries" in data:
        request_expiries = tuple(from_micros(t) for t in data["request_expiries"])
    else:
        # Written before requests expired: a REQUESTED pair's request lives the platform's 7 days from its last send.
        last_sent = data["request_times"][-1:] if state is PermissionState.REQUESTED else []
        request_expiries = tuple(from_micros(t) + LEGACY_REQUEST_LIFETIME for t in last_sent)
    return Ledger(
        state=state,
        expires_at=optional_datetime(data["expires_at"]),
        state_changed_at=optional_datetime(data["state_changed_at"]),
        request_times=tuple(from_micros(t) for t in data["request_times"]),
        connected_call_times=tuple(from_micros(t) for t in data["connected_call_times"]),
        consecutive_unanswered=data["consecutive_unanswered"],
        last_connected_at=optional_datetime(data["last_connected_at"]),
        last_user_message_at=optional_datetime(data["last_user_message_at"]),
        request_expiries=request_expiries,
        state_before_request=PermissionState(data.get("state_before_request", PermissionState.NONE.value)),
    )
