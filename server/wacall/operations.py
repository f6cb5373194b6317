"""The operations surface around the services: metrics and one log line per RPC, webhook delivery and decision.

Everything here wraps what the assembly builds — the gRPC methods (the recorder their wrapper tells), the `Store`,
the `Upstream`, the webhook `Dispatcher` and its HTTP route (a middleware) — so no service or backend changes to be
measured. The services report their decisions and ended calls through `wacall.observe.Observer`, which
`Operations` implements.
Log lines carry their facts twice: in the message for people, and as `extra` fields the JSON format emits.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from aiohttp import web
from google.protobuf.message import Message

from wacall.ingest import Dispatcher, IngestResult
from wacall.media.counters import MediaCounters
from wacall.metrics import Metrics
from wacall.store import ChangeNotifier, EventRecord, Store, StoredCall, Tx, is_database_failure
from wacall.upstreams.base import (
    Account,
    CallAction,
    PlatformPermission,
    SentMessage,
    TemplateRef,
    Upstream,
    UpstreamRefusal,
    UpstreamUnavailable,
)

T = TypeVar("T")
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

rpc_log = logging.getLogger("wacall.rpc")
webhook_log = logging.getLogger("wacall.webhooks")
decision_log = logging.getLogger("wacall.decisions")
call_log = logging.getLogger("wacall.calls")


class Operations:
    """Records what the services report (`wacall.observe.Observer`): a metric and an INFO line each."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def decision(self, action: str, business: str, user: str, *, allowed: bool, reason: str) -> None:
        outcome = "allowed" if allowed else "refused"
        self.metrics.decisions.labels(action, outcome, reason).inc()
        if decision_log.isEnabledFor(logging.INFO):
            decision_log.info(
                "decision %s %s -> %s: %s%s",
                action,
                business,
                user,
                outcome,
                f" ({reason})" if reason else "",
                extra={"action": action, "business": business, "user": user, "outcome": outcome, "reason": reason},
            )

    def call_ended(self, route: str, outcome: str, media: MediaCounters) -> None:
        self.metrics.calls_ended.labels(route, outcome or "unfinished").inc()
        self.metrics.media_frames.labels("sent").inc(media.frames_sent)
        self.metrics.media_frames.labels("received").inc(media.frames_received)

    def media_timed_out(self, route: str) -> None:
        self.metrics.media_timeouts.labels(route).inc()


# --- gRPC ------------------------------------------------------------------------------------------------------------


def _printable(text: str) -> str:
    """Text from a request as it may go in a log line: a value with a newline or another control character (sent by
    anyone, before validation) is shown escaped, so it cannot forge lines."""
    return text if text.isprintable() else repr(text)


class RpcObserver:
    """Counts and times every RPC by method and final status code, and logs one line per RPC (method, status,
    duration, and the pair when the request names one): the `RpcRecorder` of `wacall.api.serving.ServedMethods`,
    which tells it of calls refused by the bearer token or as malformed too, and of streams when they end."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._children: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

    def rpc_done(self, method: str, code: grpc.StatusCode, seconds: float, request: Message | None) -> None:
        children = self._children.get((method, code))
        if children is None:  # label lookups once per method and code: the hot path only increments
            children = (self._metrics.rpcs.labels(method, code.name), self._metrics.rpc_seconds.labels(method))
            self._children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)
        if rpc_log.isEnabledFor(logging.INFO):
            # The request as the method got it, parsed once: its pair, when it names one.
            business = getattr(request, "business_number", "")
            user = getattr(request, "user_number", "")
            business = _printable(business) if isinstance(business, str) else ""
            user = _printable(user) if isinstance(user, str) else ""
            pair = f" {business} -> {user}" if business or user else ""
            rpc_log.info(
                "rpc %s %s %.1f ms%s",
                method,
                code.name,
                seconds * 1000,
                pair,
                extra={
                    "method": method,
                    "code": code.name,
                    "duration_ms": round(seconds * 1000, 3),
                    "business": business,
                    "user": user,
                },
            )


# --- the store and the platform -----------------------------------------------------------------------------------


class InstrumentedStore:
    """A `Store` that times each transaction and snapshot read, and counts the store's failures by error type: what
    the database or the backend raised (`is_database_failure`), wherever it was raised — a query inside a
    transaction's function included — and never a domain outcome (a rule refusal, a conflict)."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.inner = store
        self._seconds = metrics.store_seconds
        self._errors = metrics.store_errors

    @property
    def changes(self) -> ChangeNotifier:
        return self.inner.changes

    def _failed(self, error: BaseException) -> None:
        if is_database_failure(error):
            self._errors.labels(type(error).__name__).inc()

    async def transaction(self, fn: Callable[[Tx], T], *, priority: bool = False) -> T:
        started = time.perf_counter()
        try:
            return await self.inner.transaction(fn, priority=priority)
        except Exception as error:
            self._failed(error)
            raise
        finally:
            self._seconds.observe(time.perf_counter() - started)

    async def read(self, fn: Callable[[Tx], T]) -> T:
        started = time.perf_counter()
        try:
            return await self.inner.read(fn)
        except Exception as error:
            self._failed(error)
            raise
        finally:
            self._seconds.observe(time.perf_counter() - started)

    async def events_after(
        self, cursor: int, *, business: str | None = None, user: str | None = None, limit: int = 500
    ) -> list[EventRecord]:
        try:
            return await self.inner.events_after(cursor, business=business, user=user, limit=limit)
        except Exception as error:
            self._failed(error)
            raise

    async def last_cursor(self) -> int:
        try:
            return await self.inner.last_cursor()
        except Exception as error:
            self._failed(error)
            raise

    async def list_calls(
        self, *, business: str | None, user: str | None, before: tuple[int, str] | None, limit: int
    ) -> list[StoredCall]:
        try:
            return await self.inner.list_calls(business=business, user=user, before=before, limit=limit)
        except Exception as error:
            self._failed(error)
            raise

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # A backend's own extras (tests reach for them) stay reachable through the wrapper.
        return getattr(self.inner, name)


class InstrumentedUpstream:
    """An `Upstream` that times each platform request by operation and counts its failures."""

    def __init__(self, upstream: Upstream, metrics: Metrics) -> None:
        self.inner = upstream
        self._metrics = metrics

    async def _timed(self, operation: str, request: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await request
        except UpstreamRefusal as error:
            kind = "unavailable" if isinstance(error, UpstreamUnavailable) else "refused"
            self._metrics.upstream_errors.labels(operation, kind).inc()
            raise
        finally:
            self._metrics.upstream_seconds.labels(operation).observe(time.perf_counter() - started)

    async def send_permission_request_interactive(self, account: Account, user_id: str, body_text: str) -> SentMessage:
        return await self._timed(
            "send_permission_request", self.inner.send_permission_request_interactive(account, user_id, body_text)
        )

    async def send_permission_request_template(
        self, account: Account, user_id: str, template: TemplateRef
    ) -> SentMessage:
        return await self._timed(
            "send_permission_request", self.inner.send_permission_request_template(account, user_id, template)
        )

    async def call_permissions(self, account: Account, user_id: str) -> PlatformPermission:
        return await self._timed("call_permissions", self.inner.call_permissions(account, user_id))

    async def connect_call(self, account: Account, user_id: str, offer_sdp: str, opaque: str = "") -> str:
        return await self._timed("connect_call", self.inner.connect_call(account, user_id, offer_sdp, opaque))

    async def call_action(self, account: Account, call_id: str, action: CallAction, answer_sdp: str = "") -> None:
        await self._timed(f"call_{action.value}", self.inner.call_action(account, call_id, action, answer_sdp))

    async def close(self) -> None:
        await self.inner.close()


# --- webhooks ---------------------------------------------------------------------------------------------------


@dataclass
class _Delivery:
    """What the dispatcher learnt of the delivery the middleware is answering."""

    kinds: Mapping[str, int] = field(default_factory=dict)
    result: IngestResult | None = None


_delivery: contextvars.ContextVar[_Delivery | None] = contextvars.ContextVar("wacall_webhook_delivery", default=None)

# HTTP status of a refused delivery → its result label.
REFUSED_DELIVERIES: Mapping[int, str] = {
    401: "refused-signature",
    400: "malformed",
    413: "too-large",
    408: "timeout",
    503: "503",
}


def item_kind(item: object) -> str:
    """An inbound item's kind, from its type: PermissionReply → permission_reply."""
    kind = _KINDS.get(type(item))
    if kind is None:
        kind = _KINDS[type(item)] = re.sub(r"(?<!^)(?=[A-Z])", "_", type(item).__name__).lower()
    return kind


_KINDS: dict[type, str] = {}


class ObservedDispatcher(Dispatcher):
    """The webhook `Dispatcher`, telling the delivery middleware which kinds of item it applied and how."""

    async def deliver(self, body: bytes, resolved: Sequence[tuple[Any, str | None]]) -> IngestResult:
        note = _delivery.get()
        if note is not None:
            note.kinds = Tally(item_kind(item) for item, _ in resolved)
        result = await super().deliver(body, resolved)
        if note is not None:
            note.result = result
        return result


def webhook_middleware(path: str, metrics: Metrics) -> Any:
    """Counts and logs each POST to the webhook `path`: its result, and its items by kind."""
    counters = _DeliveryCounters(metrics)

    @web.middleware
    async def observe(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method != "POST" or request.path != path:
            return await handler(request)
        note = _Delivery()
        token = _delivery.set(note)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as refused:
            status = refused.status
            raise
        finally:
            _delivery.reset(token)
            _count_delivery(counters, status, note)

    return observe


class _DeliveryCounters:
    """The delivery metrics' children, looked up once per label set: a delivery only increments."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._deliveries: dict[str, Any] = {}
        self._items: dict[tuple[str, str], Any] = {}

    def delivery(self, result: str) -> Any:
        child = self._deliveries.get(result)
        if child is None:
            child = self._deliveries[result] = self._metrics.webhooks.labels(result)
        return child

    def items(self, kind: str, result: str) -> Any:
        child = self._items.get((kind, result))
        if child is None:
            child = self._items[(kind, result)] = self._metrics.webhook_items.labels(kind, result)
        return child


def _count_delivery(counters: _DeliveryCounters, status: int, note: _Delivery) -> None:
    if status == 200:
        applied_nothing = note.result is not None and note.result.applied == 0 and note.result.duplicates > 0
        result = "duplicate" if applied_nothing else "ok"
    else:
        result = REFUSED_DELIVERIES.get(status, "error")
    counters.delivery(result).inc()
    for kind, count in note.kinds.items():
        counters.items(kind, result).inc(count)
    if webhook_log.isEnabledFor(logging.INFO):
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(note.kinds.items())) or "no items read"
        webhook_log.info(
            "webhook %s (HTTP %d): %s",
            result,
            status,
            kinds,
            extra={"result": result, "status": status, "items": sum(note.kinds.values()), "kinds": dict(note.kinds)},
        )
