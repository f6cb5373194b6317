"""Inbound deliveries: each applied in one transaction, every item by the service the dispatch table names for its type.

The table belongs to neither service: the assembly builds it from their handlers (`app.dispatch_table`), and an
upstream's ingress (Meta's webhook endpoint) hands over each verified delivery with the business number each item
is for. The raw body, the dedupe keys and every item's effect commit together, before the platform is answered
(persist, then acknowledge); work a handler leaves for after the commit (a call's media) runs once it is committed,
off the response path.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from wacall.clock import Clock
from wacall.inbound import InboundItem
from wacall.store import Store, Tx

AfterCommit = Callable[[], Awaitable[None]]


class Skipped(enum.Enum):
    """Why an item changed nothing. A duplicate is counted as one; anything else as ignored."""

    DUPLICATE = "duplicate"  # applied before: the platform retries deliveries
    IGNORED = "ignored"  # nothing of ours to change
    PARKED = "parked"  # for a call id not bound yet: applied when our record of the call is
    UNKNOWN_USER = "unknown_user"


# What applying an item did: skipped, applied (None), or applied with work to run once the delivery is committed.
Outcome = AfterCommit | Skipped | None

Item = TypeVar("Item", bound=InboundItem)


@dataclass(frozen=True, slots=True)
class Handler(Generic[Item]):
    """Items of one type, and what applies each inside the delivery's transaction: (tx, business number, item,
    now) → outcome."""

    item_type: type[Item]
    apply: Callable[[Tx, str, Item, datetime], Outcome]


@dataclass(frozen=True, slots=True)
class IngestResult:
    applied: int
    duplicates: int
    ignored: int


class DuplicateHandler(ValueError):
    def __init__(self, item_type: type[Any]) -> None:
        super().__init__(f"two handlers for {item_type.__name__} items: the dispatch table takes one per type")


class Dispatcher:
    """Applies deliveries through the table. Items of a type with no handler (and items for no business number of
    ours) are ignored."""

    def __init__(self, store: Store, clock: Clock, handlers: Iterable[Handler[Any]]) -> None:
        self.store = store
        self.clock = clock
        self._handlers: dict[type[Any], Handler[Any]] = {}
        for entry in handlers:
            if entry.item_type in self._handlers:
                raise DuplicateHandler(entry.item_type)
            self._handlers[entry.item_type] = entry
        self._after_commit: set[asyncio.Task[None]] = set()

    async def deliver(self, body: bytes, resolved: Sequence[tuple[InboundItem, str | None]]) -> IngestResult:
        """Apply one verified delivery: kept, deduplicated and applied in one transaction, before the 200.

        Each item comes with the business number it is for (None: not one of ours), as the ingress resolved it."""
        after_commit: list[AfterCommit] = []

        def apply_all(tx: Tx) -> IngestResult:
            after_commit.clear()  # the transaction may be retried from scratch
            now = self.clock.now()
            tx.keep_webhook(body, now)
            applied = duplicates = ignored = 0
            for item, business in resolved:
                entry = self._handlers.get(type(item))
                if business is None or entry is None:
                    ignored += 1
                    continue
                outcome = entry.apply(tx, business, item, now)
                if outcome is Skipped.DUPLICATE:
                    duplicates += 1
                elif isinstance(outcome, Skipped):
                    ignored += 1
                else:
                    if outcome is not None:
                        after_commit.append(outcome)
                    applied += 1
            return IngestResult(applied, duplicates, ignored)

        result = await self.store.transaction(apply_all)
        # Media work (apply an SDP answer, answer a user's call) runs after the commit, not in the webhook's
        # response path: no platform calls inside the handler (HOOK-1).
        for action in after_commit:
            task = asyncio.ensure_future(action())
            self._after_commit.add(task)
            task.add_done_callback(self._after_commit.discard)
        return result

    async def refuse(self, body: bytes, now: datetime, reason: str) -> None:
        """Keep a signed delivery that cannot be applied (malformed, untrustworthy times) for audit: applies nothing."""
        await self.store.transaction(lambda tx: tx.keep_refused_webhook(body, now, reason))
