"""Every Prometheus metric wacall exposes, defined once, in a registry of its own per service instance.

Names are `wacall_*` with their unit in the name; label values come from small fixed sets (methods, status codes,
reasons, routes, outcomes, queue ids chosen by the operator), never a phone number, call id or free text. What reads
live state at scrape time (active calls, queue depth, agents by presence) is a collector over callables the assembly
hands in, so a scrape costs nothing between scrapes and no hot path keeps a gauge up to date.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# The text exposition format's content type (version 0.0.4), as Prometheus scrapes it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: gRPC calls and store transactions answer in well under a millisecond to a few seconds.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Graph requests cross the internet.
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class LiveState:
    """What the scrape-time collector reads: each a callable returning the current counts."""

    active_calls_by_route: Callable[[], Mapping[str, int]] = dict
    queue_depths: Callable[[], Mapping[str, int]] = dict
    agents_by_presence: Callable[[], Mapping[str, int]] = dict


@dataclass
class Metrics:
    """The service's metrics. One instance per service: its own registry, so several services in one process (as
    in tests) never share a counter."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    live: LiveState = field(default_factory=LiveState)

    def __post_init__(self) -> None:
        r = self.registry
        self.rpcs = Counter(
            "wacall_grpc_requests_total",
            "gRPC calls handled, by full method name and final status code (streams counted when they end)",
            ["method", "code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "wacall_grpc_request_duration_seconds",
            "gRPC call duration, by full method name (a stream's whole life)",
            ["method"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "wacall_rule_decisions_total",
            "Rule decisions on limit-consuming actions: action (request, call), outcome (allowed, refused) and the "
            "refusal reason ('' when allowed)",
            ["action", "outcome", "reason"],
            registry=r,
        )
        self.webhooks = Counter(
            "wacall_webhook_deliveries_total",
            "Webhook deliveries (POST) by result: ok, duplicate, refused-signature, malformed, too-large, timeout, 503",
            ["result"],
            registry=r,
        )
        self.webhook_items = Counter(
            "wacall_webhook_items_total",
            "Items in verified webhook deliveries, by kind (the inbound item types) and delivery result",
            ["kind", "result"],
            registry=r,
        )
        self.calls_ended = Counter(
            "wacall_calls_ended_total",
            "Calls whose media ran in this process, by route and outcome when they ended",
            ["route", "outcome"],
            registry=r,
        )
        self.media_frames = Counter(
            "wacall_call_media_frames_total",
            "Audio frames of ended calls, by direction: sent (to the user) and received (from the user)",
            ["direction"],
            registry=r,
        )
        self.media_timeouts = Counter(
            "wacall_call_media_timeouts_total",
            "Calls ended because the user's audio stopped for media_timeout_seconds, by route",
            ["route"],
            registry=r,
        )
        self.store_seconds = Histogram(
            "wacall_store_transaction_duration_seconds",
            "Store transaction and snapshot read duration (queueing for the database included)",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "wacall_store_errors_total",
            "Store operations that failed for the database's sake (not a rule refusal raised inside one), by error "
            "type",
            ["error"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "wacall_upstream_request_duration_seconds",
            "Requests to the platform (Graph API), by operation",
            ["operation"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "wacall_upstream_errors_total",
            "Platform requests that failed, by operation and kind: refused (the platform said no) or unavailable",
            ["operation", "kind"],
            registry=r,
        )
        r.register(_LiveCollector(lambda: self.live))

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Active calls, queue depth and agents by presence, read from live state at scrape time."""

    def __init__(self, live: Callable[[], LiveState]) -> None:
        self._live = live

    def describe(self) -> Iterable[Metric]:
        return list(self._families({}, {}, {}))

    def collect(self) -> Iterable[Metric]:
        live = self._live()
        return list(self._families(live.active_calls_by_route(), live.queue_depths(), live.agents_by_presence()))

    @staticmethod
    def _families(calls: Mapping[str, int], depths: Mapping[str, int], presence: Mapping[str, int]) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "wacall_calls_active", "Calls with live media in this process, by route", labels=["route"]
        )
        for route, count in sorted(calls.items()):
            active.add_metric([route], count)
        yield active
        depth = GaugeMetricFamily(
            "wacall_queue_depth_calls", "Calls waiting for an agent, by contact-centre queue", labels=["queue"]
        )
        for queue, count in sorted(depths.items()):
            depth.add_metric([queue], count)
        yield depth
        agents = GaugeMetricFamily("wacall_agents", "Contact-centre agents by presence", labels=["presence"])
        for state, count in sorted(presence.items()):
            agents.add_metric([state], count)
        yield agents
