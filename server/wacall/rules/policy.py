"""Named, versioned rule sets. Every number the rules use lives here, never in the engine.

Presets (see README "Rules"): `seed` restates the mid-2025 rules (5 connected calls per 24 h), `meta-current` Meta's
rules since 2025-12-19 (100 per 24 h), `sandbox` the limits of Meta's public test numbers. A configuration file can
override any field of a preset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class WindowLimit:
    """At most `max_allowed` counted events inside any rolling `window`."""

    window: timedelta
    max_allowed: int


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    version: int
    source: str
    # Permission requests (interactive and template together), counted since the last connected call.
    request_limits: tuple[WindowLimit, ...]
    # Answered business-initiated calls; a connected call does not reset these.
    connected_call_limits: tuple[WindowLimit, ...]
    temporary_grant_lifetime: timedelta
    prompt_after_unanswered: int
    revoke_after_unanswered: int
    # The customer-service window opened by an inbound user message.
    service_window: timedelta
    # A permission request nobody answered is dead this long after it was sent (§1.3).
    request_lifetime: timedelta
    # The platform's clock runs behind ours by the network delay: wacall frees a window limit this much later than
    # the platform (so a retry at next_allowed_at is not refused with 138009/138012) ...
    boundary_margin: timedelta
    # ... and prefers the template to an interactive request when the service window closes sooner than this (an
    # interactive request sent in the window's last moments can arrive after it closed).
    window_margin: timedelta
    # ISO 3166 regions whose business numbers cannot use business-initiated calling.
    denied_business_regions: frozenset[str] = field(
        default_factory=lambda: frozenset({"US", "CA", "TR", "EG", "VN", "NG"})
    )

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def longest_window(self) -> timedelta:
        return max(limit.window for limit in (*self.request_limits, *self.connected_call_limits))

    def without_margins(self) -> Policy:
        """The same rules applied exactly, as the platform itself applies them (the simulator)."""
        return dataclasses.replace(self, boundary_margin=timedelta(0), window_margin=timedelta(0))


# Version 2 (every preset): boundary and window margins, and the lifetime of an unanswered request.
SEED = Policy(
    name="seed",
    version=2,
    source="Business-initiated calling rules as restated by Infobip (mid-2025 Meta rules)",
    request_limits=(WindowLimit(DAY, 1), WindowLimit(7 * DAY, 2)),
    connected_call_limits=(WindowLimit(DAY, 5),),
    temporary_grant_lifetime=7 * DAY,
    prompt_after_unanswered=2,
    revoke_after_unanswered=4,
    service_window=DAY,
    request_lifetime=7 * DAY,
    boundary_margin=2 * SECOND,
    window_margin=60 * SECOND,
)

META_CURRENT = dataclasses.replace(
    SEED,
    name="meta-current",
    version=2,
    source="Meta developer documentation since 2025-12-19 (connected-call cap 100 per 24 h)",
    connected_call_limits=(WindowLimit(DAY, 100),),
)

SANDBOX = dataclasses.replace(
    SEED,
    name="sandbox",
    version=2,
    source="Meta's limits for public test numbers and sandbox accounts",
    request_limits=(WindowLimit(DAY, 25), WindowLimit(7 * DAY, 100)),
    connected_call_limits=(WindowLimit(DAY, 100),),
    prompt_after_unanswered=5,
    revoke_after_unanswered=10,
)

PRESETS: Mapping[str, Policy] = {p.name: p for p in (SEED, META_CURRENT, SANDBOX)}


class PolicyError(ValueError):
    """A policy name or override that cannot be used."""


def _seconds(value: Any, key: str) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise PolicyError(f"policy override {key!r} must be a positive number of seconds, got {value!r}")
    return timedelta(seconds=value)


def _margin(value: Any, key: str) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 86_400:
        raise PolicyError(f"policy override {key!r} must be a number of seconds from 0 to 86400, got {value!r}")
    return timedelta(seconds=value)


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PolicyError(f"policy override {key!r} must be a positive integer, got {value!r}")
    return value


def _limits(value: Any, key: str) -> tuple[WindowLimit, ...]:
    if not isinstance(value, list) or not value:
        raise PolicyError(f"policy override {key!r} must be a non-empty list of {{window_seconds, max_allowed}}")
    limits = []
    for item in value:
        if not isinstance(item, Mapping) or set(item) != {"window_seconds", "max_allowed"}:
            raise PolicyError(f"each entry of {key!r} needs exactly window_seconds and max_allowed, got {item!r}")
        limits.append(WindowLimit(_seconds(item["window_seconds"], key), _count(item["max_allowed"], key)))
    return tuple(limits)


def load_policy(name: str, overrides: Mapping[str, Any] | None = None) -> Policy:
    """The preset called `name`, with configuration overrides applied (a changed policy is labelled as such)."""
    try:
        policy = PRESETS[name]
    except KeyError:
        raise PolicyError(f"unknown policy {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None
    if not overrides:
        return policy
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        match key:
            case "request_limits" | "connected_call_limits":
                changes[key] = _limits(value, key)
            case "temporary_grant_lifetime_seconds":
                changes["temporary_grant_lifetime"] = _seconds(value, key)
            case "service_window_seconds":
                changes["service_window"] = _seconds(value, key)
            case "request_lifetime_seconds":
                changes["request_lifetime"] = _seconds(value, key)
            case "boundary_margin_seconds":
                changes["boundary_margin"] = _margin(value, key)
            case "window_margin_seconds":
                changes["window_margin"] = _margin(value, key)
            case "prompt_after_unanswered" | "revoke_after_unanswered":
                changes[key] = _count(value, key)
            case "denied_business_regions":
                if not isinstance(value, list) or not all(isinstance(v, str) and len(v) == 2 for v in value):
                    raise PolicyError(f"{key!r} must be a list of two-letter region codes, got {value!r}")
                changes[key] = frozenset(v.upper() for v in value)
            case _:
                raise PolicyError(f"unknown policy override {key!r}")
    result = dataclasses.replace(policy, **changes, name=f"{policy.name}+custom", source=f"{policy.source}; overridden")
    if result.prompt_after_unanswered > result.revoke_after_unanswered:
        raise PolicyError("prompt_after_unanswered must not exceed revoke_after_unanswered")
    return result
