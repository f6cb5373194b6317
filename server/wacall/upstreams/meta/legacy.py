"""One-off upgrades of records written before the Meta upstream classified its own codes.

Until the `Upstream` interface existed, a call's outcome was derived at read time from the platform codes in its
facts (a setup or connection code in a terminate meant FAILED). Facts now carry `setup_failed`, set when the terminate
is read; calls stored earlier have the codes but not the flag, and would read UNANSWERED. This marks them once.
"""

from __future__ import annotations

import dataclasses

from wacall.store import Tx
from wacall.upstreams.meta.errors import CALL_SETUP_FAILURES

DONE_SETTING = "meta.setup_failures_marked"


def mark_legacy_setup_failures(tx: Tx) -> int:
    """Set `setup_failed` on stored calls whose recorded platform codes say their setup failed; returns how many."""
    if tx.setting(DONE_SETTING) is not None:
        return 0
    marked = 0
    for stored in tx.calls_with_platform_errors():
        facts = stored.data["facts"]
        if facts.get("setup_failed") or CALL_SETUP_FAILURES.isdisjoint(facts.get("error_codes", ())):
            continue
        tx.save_call(dataclasses.replace(stored, data={**stored.data, "facts": {**facts, "setup_failed": True}}))
        marked += 1
    tx.save_setting(DONE_SETTING, "1")
    return marked
