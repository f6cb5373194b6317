"""The route registry: every business-side destination a call can have, keyed by its field in `wacall.v1.Route`.

Adding a route is one adapter module declaring a `RouteSpec` (routes.py) plus its line in `ROUTES`; the API and
the assembly look routes up here and hold no per-route code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from wacall_client.v1 import calling_pb2 as pb

from wacall.fields import InvalidField
from wacall_adapters import agent, announcement, media_stream, queue, sip, webrtc
from wacall_adapters.routes import InboundOptions, RoutePlan, RouteRefused, RouteSpec, ServerFiles


def route_table(*specs: RouteSpec) -> Mapping[str, RouteSpec]:
    table = {spec.field: spec for spec in specs}
    oneof = pb.Route.DESCRIPTOR.oneofs_by_name["kind"]
    declared = {field.name for field in oneof.fields}
    if set(table) != declared:
        raise RuntimeError(f"routes registered {sorted(table)} differ from wacall.v1.Route's {sorted(declared)}")
    return table


DEFAULT_ROUTE = "announcement"  # a Route with nothing set


ROUTES = route_table(announcement.ROUTE, webrtc.ROUTE, media_stream.ROUTE, sip.ROUTE, queue.ROUTE, agent.ROUTE)
INBOUND_ROUTES = tuple(name for name, spec in ROUTES.items() if spec.inbound is not None)


async def plan_route(route: pb.Route, files: ServerFiles) -> RoutePlan:
    """The checked plan for a `Route`; InvalidField names the field from the Route (`route.webrtc.offer_sdp`), and so
    does RouteRefused (something the route names is not there or not ready: `route.queue.queue_id`)."""
    kind = route.WhichOneof("kind") or DEFAULT_ROUTE
    try:
        return await ROUTES[kind].build(getattr(route, kind), files)
    except InvalidField as problem:
        raise problem.within(f"route.{kind}.") from None
    except RouteRefused as refused:
        raise RouteRefused(refused.reason, f"route.{kind}.{refused.field}".rstrip("."), refused.message) from None


async def plan_inbound_route(setting: str, options: InboundOptions, files: ServerFiles) -> RoutePlan:
    """The plan for the configured route that answers users' calls (checked once, at start-up): `NAME` or
    `NAME:ARGUMENT` (`sip:pbx`), the argument handed to the route as `InboundOptions.argument`."""
    name, _, argument = setting.partition(":")
    spec = ROUTES.get(name)
    if spec is None or spec.inbound is None:
        raise InvalidField("inbound_route", f"one of {', '.join(INBOUND_ROUTES)}, got {setting!r}")
    route = pb.Route()
    getattr(route, name).CopyFrom(spec.inbound(dataclasses.replace(options, argument=argument)))
    return await plan_route(route, dataclasses.replace(files, users_calls=True))
