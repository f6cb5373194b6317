"""The layering the code relies on, read from its imports and literals with `ast`.

- The import graph of `wacall` and its routes (`wacall_adapters`) has no cycles.
- A route uses only the service's audio and field checks, never its services, store or API.
- The rule core (engine, policy, the call state machine) imports nothing of the network, the store's database,
  the media stack (the media engine's client and process included) or the simulator, directly or through another
  wacall module.
- Wire formats (bencode, for rtpengine's ng protocol) are pure: no sockets, processes, event loop or time.
- Only the engine leg, the local engine's supervisor and the assembly speak rtpengine's ng protocol: call control
  and routes see a platform leg.
- Only Meta's upstream (`wacall.upstreams.meta`) and the simulator know Meta's error codes and JSON field names.
- The domain does not import Meta's upstream at all, directly or through another module: it reads neutral items
  (`wacall.inbound`), accounts and refusals (`wacall.upstreams.base`). Only the assembly (app, cli, config) and the
  simulator may reach it.
- The inbound dispatcher (`wacall.ingest`) belongs to neither service: it imports neither, and the permission
  service does not import the call service.
- Event kinds are spelled only by `wacall.events.EventKind`: no module writes one as a string literal.
- The store's interface (`wacall.store.base`, its codecs) names no database, and nothing outside the store
  package imports a database driver or a backend module: a second backend changes nothing else.
- The SIP core (`wacall.sip`) is sans-IO: it reaches no event loop, socket, TLS, clock, database, RPC or media stack,
  and none of wacall's services, store or API, nor its own I/O edge (`wacall.sipio`), directly or through another
  module. The edge itself reaches only the SIP core: no service, store, API, media or simulator.
- The SIP front door's decisions (`wacall.sipdoor`: trunks, admission, the reasons → SIP status table) are pure:
  no event loop, socket, clock, database, media, SIP edge, nor the services' I/O; they take `now` and data.
- The SIP trunk's edge (`wacall.siptrunk`) reaches neither the gRPC API, the simulator nor Meta's upstream; its
  endpoint reaches no call service, store or media.
- The queue router (`wacall.queues.router`) is pure: it reaches only data, time arithmetic and a seeded generator
  of the standard library; `now` is an argument.
- The contact centre's service and agent sessions (the rest of `wacall.queues`) speak no transport: no gRPC, proto
  stubs, HTTP, the API or the assembly, so the gRPC stream and the softphone's WebSocket drive the same session.
- The Python client (`wacall_client`, its own wheel) stands alone: it imports nothing of the service or its routes,
  only gRPC, protobuf, the google.rpc types and its own stubs.
- Metrics are defined in one module: only `wacall.metrics` imports prometheus_client, and only the operations edge
  (`wacall.operations`, `wacall.health`) and the assembly import it. The services report through `wacall.observe`
  and reach neither metrics nor the operations edge, directly or through another module.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from wacall.events import EventKind
from wacall.upstreams.meta.errors import META_ERRORS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "server" / "wacall"
ADAPTERS = ROOT / "adapters" / "wacall_adapters"
FIRST_PARTY = ("wacall", "wacall_adapters")

RULE_CORE = ("wacall.rules.engine", "wacall.rules.policy", "wacall.calls.machine")
FORBIDDEN_IN_RULE_CORE = (
    "grpc",
    "aiohttp",
    "httpx",
    "sqlite3",
    "aiortc",
    "wacall.simulator",
    "wacall.media.rtpengine",
    "wacall.media.engine_process",
    "wacall.sipio",
)
# The ng protocol's wire format is pure data: no sockets, processes, event loop or time.
PURE_WIRE_FORMATS = ("wacall.media.bencode",)
PURE_IMPORTS = frozenset({"__future__", "collections", "typing", "dataclasses"})

# The store: the interface every backend shares, the modules of one backend, and what talks to a database.
STORE_INTERFACE = ("wacall.store.base", "wacall.store.codecs")
STORE_BACKENDS = (
    "wacall.store.sqlite",
    "wacall.store.migrations",
    "wacall.store.postgres",
    "wacall.store.postgres_schema",
    "wacall.store.operations",
)
DATABASE_DRIVERS = ("sqlite3", "aiosqlite", "psycopg", "psycopg2", "psycopg_pool", "asyncpg", "sqlalchemy")

# Where Meta's own vocabulary belongs.
PLATFORM_MODULES = ("wacall.upstreams.meta", "wacall.simulator")
META_UPSTREAM = "wacall.upstreams.meta"
# What assembles the service from its parts, and so picks Meta's upstream (and reads its [[senders]]).
ASSEMBLY = ("wacall.app", "wacall.cli", "wacall.config")

# Field names of the Graph API's and its webhooks' JSON bodies (whatsapp-calling.md §4-§6, §8).
# (`biz_opaque_callback_data` and `is_permanent` are left out: our own API and event log name their fields the
# same, on purpose.)
PLATFORM_FIELDS = frozenset(
    {
        "messaging_product",
        "recipient_type",
        "call_permission_request",
        "call_permission_reply",
        "response_source",
        "expiration_timestamp",
        "phone_number_id",
        "display_phone_number",
        "wa_id",
        "user_wa_id",
        "recipient_id",
        "whatsapp_business_account",
        "sdp_type",
        "error_data",
        "fbtrace_id",
        "action_name",
        "can_perform_action",
        "current_usage",
        "limit_expiration_time",
    }
)
# The platform's id prefixes: parsing them is reading its shapes.
PLATFORM_ID_PREFIXES = ("wacid.", "wamid.")


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# The service and its routes: one import graph (a route module imports the service's media and field checks, and
# the service looks routes up in their registry).
MODULES = {
    module_name(path, package): path for package in (PACKAGE, ADAPTERS) for path in sorted(package.rglob("*.py"))
}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _runtime_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    """Every node except what sits under `if TYPE_CHECKING:` (not imported at run time)."""
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        yield node
        pending.extend(ast.iter_child_nodes(node))


def _package_of(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def imported(name: str) -> set[str]:
    """What module `name` imports at run time: wacall modules by full name, others by top-level name."""
    found: set[str] = set()
    for node in _runtime_nodes(TREES[name]):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name)
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # `from package import module` imports the module.
            found.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES)
    edges: set[str] = set()
    for target in found:
        if target.split(".")[0] not in FIRST_PARTY:
            edges.add(target.split(".")[0])
            continue
        # Importing a.b.c runs a, a.b and a.b.c; but a module of package a.b is itself imported while a.b runs
        # (its __init__ re-exporting it, say): a.b is not a dependency of it unless it names a.b itself.
        parts = target.split(".")
        edges.update(
            prefix
            for i in range(1, len(parts) + 1)
            if (prefix := ".".join(parts[:i])) in MODULES and (prefix == target or not name.startswith(f"{prefix}."))
        )
    edges.discard(name)
    return edges


GRAPH = {name: {t for t in imported(name) if t in MODULES} for name in MODULES}


def import_cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a cycle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(GRAPH[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    return cycles


def reachable(name: str) -> set[str]:
    seen: set[str] = set()
    pending = [name]
    while pending:
        current = pending.pop()
        for target in imported(current):
            if target not in seen:
                seen.add(target)
                if target in MODULES:
                    pending.append(target)
    return seen


def test_the_import_graph_has_no_cycles() -> None:
    assert len(GRAPH) > 30  # the whole package was read
    assert import_cycles() == []


def test_the_cycle_check_finds_a_cycle() -> None:
    # The check itself, on a graph with one: engine → calls → engine.
    saved = {name: set(targets) for name, targets in GRAPH.items()}
    try:
        GRAPH["wacall.rules.engine"].add("wacall.calls.machine")
        assert ["wacall.calls.machine", "wacall.rules.engine"] in import_cycles()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


@pytest.mark.parametrize("core", RULE_CORE)
def test_the_rule_core_imports_no_io_media_or_simulator(core: str) -> None:
    everything = reachable(core)
    assert "wacall.rules.engine" in everything or core == "wacall.rules.engine" or core == "wacall.rules.policy"
    offending = sorted(t for t in everything if any(t == f or t.startswith(f"{f}.") for f in FORBIDDEN_IN_RULE_CORE))
    assert offending == [], f"{core} imports {offending} (directly or through another wacall module)"


@pytest.mark.parametrize("module", PURE_WIRE_FORMATS)
def test_wire_formats_are_pure(module: str) -> None:
    assert reachable(module) <= PURE_IMPORTS, f"{module} imports {sorted(reachable(module) - PURE_IMPORTS)}"


def test_call_ownership_is_data_and_arithmetic_on_times() -> None:
    # Who owns a call and when another replica may take it over: decided on data, so the API, the lease keeper and
    # the tests all read the same facts; dialling the owner is api/forwarding.py's business.
    allowed = PURE_IMPORTS | {"datetime"}
    assert reachable("wacall.calls.ownership") <= allowed, sorted(reachable("wacall.calls.ownership") - allowed)


def test_the_purity_check_sees_io() -> None:
    assert not reachable("wacall.media.rtpengine") <= PURE_IMPORTS  # the ng client is an I/O edge


# The ng protocol is spoken by the engine leg (a call's media in rtpengine), the local engine's supervisor and the
# assembly that builds the pool: call control and routes see only a PlatformLeg.
ENGINE_CLIENT = "wacall.media.rtpengine"
ENGINE_CLIENT_USERS = frozenset(
    {"wacall.media.engine_leg", "wacall.media.engine_sip_legs", "wacall.media.engine_process", "wacall.app"}
)


def test_only_the_engine_leg_and_the_assembly_speak_to_the_media_engine() -> None:
    speakers = {name for name in MODULES if ENGINE_CLIENT in imported(name)}
    assert "wacall.media.engine_leg" in speakers  # the check sees the imports it is about
    assert speakers <= ENGINE_CLIENT_USERS, f"{sorted(speakers - ENGINE_CLIENT_USERS)} import {ENGINE_CLIENT}"


def _database_imports(names: set[str]) -> list[str]:
    return sorted(t for t in names if t in DATABASE_DRIVERS or t in STORE_BACKENDS)


@pytest.mark.parametrize("module", STORE_INTERFACE)
def test_the_store_interface_names_no_database(module: str) -> None:
    assert _database_imports(reachable(module)) == [], f"{module} reaches a database driver or a backend"


def test_only_the_store_package_imports_a_database_driver_or_a_backend() -> None:
    outside = [n for n in MODULES if n != "wacall.store" and not n.startswith("wacall.store.")]
    assert "wacall.calls.service" in outside and "wacall.app" in outside
    direct = {name: found for name in outside if (found := _database_imports(imported(name)))}
    assert direct == {}
    # The check itself: the SQLite backend does import its driver, and the package's entry point the backend.
    assert _database_imports(imported("wacall.store.sqlite")) == ["sqlite3", "wacall.store.migrations"]
    assert "wacall.store.sqlite" in imported("wacall.store")
    assert {"psycopg", "psycopg_pool"} <= set(_database_imports(imported("wacall.store.postgres")))
    assert "wacall.store.postgres" in imported("wacall.store")


def _outside_platform() -> list[str]:
    return [n for n in MODULES if not any(n == p or n.startswith(f"{p}.") for p in PLATFORM_MODULES)]


def platform_vocabulary(name: str) -> list[str]:
    """Meta error codes and JSON field names used as literals in module `name` (docstrings and prose aside)."""
    codes = {code for code in META_ERRORS if code >= 1000}
    found = []
    for node in ast.walk(TREES[name]):
        if not isinstance(node, ast.Constant):
            continue
        value = node.value
        if isinstance(value, int) and not isinstance(value, bool) and value in codes:
            found.append(f"line {node.lineno}: error code {value}")
        elif isinstance(value, str):
            if value.isdigit() and int(value) in META_ERRORS:
                found.append(f"line {node.lineno}: error code {value!r}")
            elif value in PLATFORM_FIELDS:
                found.append(f"line {node.lineno}: field {value!r}")
            elif value.startswith(PLATFORM_ID_PREFIXES):
                found.append(f"line {node.lineno}: platform id shape {value!r}")
    return found


def test_only_the_meta_upstream_and_the_simulator_know_meta_codes_and_json_fields() -> None:
    outside = _outside_platform()
    assert "wacall.permissions" in outside and "wacall.calls.service" in outside and "wacall.calls.machine" in outside
    leaks = {name: found for name in outside if (found := platform_vocabulary(name))}
    assert leaks == {}


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in packages)


def graph_reachable(name: str) -> set[str]:
    """The wacall modules `name` imports, directly or through others, as GRAPH has it."""
    seen: set[str] = set()
    pending = [name]
    while pending:
        for target in GRAPH[pending.pop()]:
            if target not in seen:
                seen.add(target)
                pending.append(target)
    return seen


def meta_reached_from_the_domain() -> dict[str, list[str]]:
    """Each module outside Meta's upstream, the simulator and the assembly that reaches Meta's upstream through the
    import graph, with the Meta modules it reaches."""
    found = {}
    for name in GRAPH:
        if _within(name, (*PLATFORM_MODULES, *ASSEMBLY)):
            continue
        if reached := sorted(t for t in graph_reachable(name) if _within(t, (META_UPSTREAM,))):
            found[name] = reached
    return found


def test_the_domain_does_not_import_metas_upstream() -> None:
    domain = [n for n in GRAPH if not _within(n, (*PLATFORM_MODULES, *ASSEMBLY))]
    assert {"wacall.permissions", "wacall.calls.service", "wacall.inbound", "wacall.api.calling"} <= set(domain)
    assert meta_reached_from_the_domain() == {}


def test_the_meta_import_check_sees_a_domain_module_reaching_meta() -> None:
    # The check itself: the domain as it was, with the webhook items still in Meta's parser; and one module away.
    saved = {name: set(targets) for name, targets in GRAPH.items()}
    try:
        GRAPH["wacall.permissions"].add("wacall.upstreams.meta.webhook_payloads")
        found = meta_reached_from_the_domain()
        assert "wacall.upstreams.meta.webhook_payloads" in found["wacall.permissions"]
        assert "wacall.upstreams.meta.errors" in found["wacall.permissions"]  # what the parser imports, too
        assert "wacall.upstreams.meta.webhook_payloads" in found["wacall.calls.service"]  # through permissions
        assert "wacall.app" not in found and "wacall.simulator.platform" not in found
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


SERVICES = ("wacall.permissions", "wacall.calls.service")


def services_reached_by_the_dispatcher() -> list[str]:
    """Services the dispatcher reaches, and the call service if the permission service reaches it."""
    found = sorted(s for s in SERVICES if s in graph_reachable("wacall.ingest"))
    if "wacall.calls.service" in graph_reachable("wacall.permissions"):
        found.append("wacall.permissions → wacall.calls.service")
    return found


def test_the_dispatcher_belongs_to_neither_service() -> None:
    assert "wacall.inbound" in GRAPH["wacall.ingest"]
    assert services_reached_by_the_dispatcher() == []


def test_the_dispatcher_check_sees_a_service_owning_dispatch() -> None:
    # The check itself: a dispatcher that imports a service, and a permission service that imports the other.
    saved = {name: set(targets) for name, targets in GRAPH.items()}
    try:
        GRAPH["wacall.ingest"].add("wacall.permissions")
        GRAPH["wacall.permissions"].add("wacall.calls.service")
        assert services_reached_by_the_dispatcher() == [
            "wacall.calls.service",
            "wacall.permissions",
            "wacall.permissions → wacall.calls.service",
        ]
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_the_vocabulary_check_sees_meta_codes_and_fields() -> None:
    # The check itself: the Meta upstream is full of them.
    assert any("138017" in f for f in platform_vocabulary("wacall.upstreams.meta.errors"))
    assert any("messaging_product" in f for f in platform_vocabulary("wacall.upstreams.meta.wire"))
    assert any("wacid." in f for f in platform_vocabulary("wacall.upstreams.meta.webhook_payloads"))


def event_kind_literals(tree: ast.Module) -> list[str]:
    """String literals in `tree` that spell an event kind. An enum member's own value is not one (the engine's
    `Reason.PERMISSION_REVOKED` shares a kind's words)."""
    kinds = {kind.value for kind in EventKind}
    member_values = {
        id(statement.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for statement in node.body
        if isinstance(statement, ast.Assign)
    }
    return [
        f"line {node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in kinds and id(node) not in member_values
    ]


def test_only_the_event_log_module_spells_event_kinds() -> None:
    assert "wacall.events" in MODULES
    leaks = {name: found for name in MODULES if name != "wacall.events" and (found := event_kind_literals(TREES[name]))}
    assert leaks == {}


def test_the_event_kind_check_sees_a_literal_kind() -> None:
    # The check itself: the enum spells every kind, an event written with a string is caught, an enum value is not.
    assert len(event_kind_literals(TREES["wacall.events"])) == 0  # member values only
    written = ast.parse('tx.append(EventRecord(pair, "call_updated", source, now, now, state))')
    assert event_kind_literals(written) == ["line 1: 'call_updated'"]
    reason = ast.parse('class Reason(enum.Enum):\n    PERMISSION_REVOKED = "permission_revoked"')
    assert event_kind_literals(reason) == []


# What a route may use of the service: audio (tracks, legs, SDP), the field checks and the sans-IO SIP core (a sip
# route reads its target URI). Never its services, store or API: a route sees a call only through its CallLeg.
ROUTE_MAY_IMPORT = ("wacall.media", "wacall.fields", "wacall.confinement", "wacall.sip")


def service_internals_imported_by(name: str) -> list[str]:
    """The service's modules a route reaches, directly or through other modules, beyond what it may use."""
    seen: set[str] = set()
    pending = [name]
    while pending:
        for target in GRAPH[pending.pop()]:
            if target not in seen:
                seen.add(target)
                pending.append(target)
    return sorted(
        t
        for t in seen
        if t.startswith("wacall.")
        and t != "wacall"
        and not any(t == a or t.startswith(f"{a}.") for a in ROUTE_MAY_IMPORT)
    )


def test_routes_use_only_the_services_audio_and_field_checks() -> None:
    routes = [name for name in MODULES if name.startswith("wacall_adapters")]
    assert "wacall_adapters.registry" in routes and "wacall_adapters.announcement" in routes
    reaching = {name: found for name in routes if (found := service_internals_imported_by(name))}
    assert reaching == {}


def test_the_route_check_sees_a_route_reaching_into_the_service() -> None:
    saved = {name: set(targets) for name, targets in GRAPH.items()}
    try:
        GRAPH["wacall_adapters.media_stream"].add("wacall.calls.service")
        assert "wacall.calls.service" in service_internals_imported_by("wacall_adapters.media_stream")
        # Reached through a module a route may use: still caught.
        GRAPH["wacall.media.tracks"].add("wacall.store.base")
        assert "wacall.store.base" in service_internals_imported_by("wacall_adapters.announcement")
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


# The SIP core takes bytes and `now` and returns messages and actions: the transports, timers and trunk logic that
# drive it live elsewhere.
SIP_CORE = "wacall.sip"
FORBIDDEN_IN_SIP_CORE = (
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "time",
    "grpc",
    "aiohttp",
    "httpx",
    "sqlite3",
    "aiortc",
    "aioice",
    "wacall.clock",
    "wacall.permissions",
    "wacall.calls",
    "wacall.ingest",
    "wacall.store",
    "wacall.api",
    "wacall.app",
    "wacall.upstreams",
    "wacall.media",
    "wacall.simulator",
    "wacall.sipio",
)


def reaching_outside(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Each module of `package` with what it reaches (directly or through another module) among `forbidden`."""
    found = {}
    for name in MODULES:
        if _within(name, (package,)) and (offending := sorted(t for t in reachable(name) if _within(t, forbidden))):
            found[name] = offending
    return found


def sip_core_io() -> dict[str, list[str]]:
    return reaching_outside(SIP_CORE, FORBIDDEN_IN_SIP_CORE)


def test_the_sip_core_is_sans_io() -> None:
    assert {"wacall.sip.message", "wacall.sip.transactions", "wacall.sip.dialog", "wacall.sip.digest"} <= set(MODULES)
    assert sip_core_io() == {}


def test_the_sip_core_check_sees_io_directly_and_through_another_module() -> None:
    # The check itself: a parser that opens a socket, and a dialog that reaches asyncio through the assembly.
    saved = dict(TREES)
    try:
        TREES["wacall.sip.message"] = ast.parse("import socket\nfrom wacall.store import base")
        TREES["wacall.sip.dialog"] = ast.parse("from wacall import app")
        found = sip_core_io()
        assert {"socket", "wacall.store", "wacall.store.base"} <= set(found["wacall.sip.message"])
        assert {"wacall.app", "asyncio", "grpc"} <= set(found["wacall.sip.dialog"])
        assert "wacall.sip.digest" in found  # it imports the message module
    finally:
        TREES.clear()
        TREES.update(saved)


# The SIP I/O edge drives the core over sockets; what the calls mean (trunks, rules, media) is decided above it.
SIP_EDGE = "wacall.sipio"
FORBIDDEN_IN_SIP_EDGE = tuple(t for t in FORBIDDEN_IN_SIP_CORE if t.startswith("wacall.") and t != SIP_EDGE)


def test_the_sip_edge_reaches_only_the_sip_core() -> None:
    assert {"wacall.sipio.transport", "wacall.sipio.layer"} <= set(MODULES)
    assert reaching_outside(SIP_EDGE, FORBIDDEN_IN_SIP_EDGE) == {}


def test_the_sip_checks_see_the_core_reaching_its_edge_and_the_edge_reaching_a_service() -> None:
    saved = dict(TREES)
    try:
        TREES["wacall.sip.transactions"] = ast.parse("from wacall.sipio import layer")
        TREES["wacall.sipio.transport"] = ast.parse("from wacall.calls import service")
        edge = reaching_outside(SIP_EDGE, FORBIDDEN_IN_SIP_EDGE)
        assert "wacall.sipio.layer" in sip_core_io()["wacall.sip.transactions"]
        assert "wacall.calls.service" in edge["wacall.sipio.transport"]
        assert "wacall.calls.service" in edge["wacall.sipio.layer"]  # through the transport
    finally:
        TREES.clear()
        TREES.update(saved)


# The front door decides on data (an INVITE, its source, `now`); the edge and the call service act on the decision.
SIP_DOOR = "wacall.sipdoor"
# `wacall.errors`, whose advice the Warnings share, names gRPC status codes (a table, no channel), and the
# upstream's neutral reasons; Meta's upstream itself stays out of reach. The call state machine (pure, in the rule
# core) names the outcomes the endings table maps; the rest of the call service stays out of reach.
FORBIDDEN_IN_SIP_DOOR = tuple(t for t in FORBIDDEN_IN_SIP_CORE if t not in ("grpc", "wacall.upstreams", "wacall.calls"))
FORBIDDEN_IN_SIP_DOOR += (
    "wacall.upstreams.meta",
    "wacall.calls.service",
    "wacall.calls.sessions",
    "wacall.calls.record",
)


def test_the_front_door_decisions_are_pure() -> None:
    assert {"wacall.sipdoor.trunks", "wacall.sipdoor.admission", "wacall.sipdoor.responses"} <= set(MODULES)
    assert reaching_outside(SIP_DOOR, FORBIDDEN_IN_SIP_DOOR) == {}


def test_the_front_door_check_sees_io_directly_and_through_another_module() -> None:
    saved = dict(TREES)
    try:
        TREES["wacall.sipdoor.trunks"] = ast.parse("import socket\nfrom wacall.sipio import layer")
        TREES["wacall.sipdoor.responses"] = ast.parse("from wacall.calls import service")
        found = reaching_outside(SIP_DOOR, FORBIDDEN_IN_SIP_DOOR)
        assert {"socket", "wacall.sipio", "wacall.sipio.layer", "asyncio"} <= set(found["wacall.sipdoor.trunks"])
        assert "wacall.calls.service" in found["wacall.sipdoor.responses"]
        assert "wacall.calls.service" in found["wacall.sipdoor.admission"]  # through the responses
    finally:
        TREES.clear()
        TREES.update(saved)


# The SIP trunk's edge (`wacall.siptrunk`) drives the SIP edge, the front door's decisions and the call service; the
# gRPC API, the simulator and Meta's upstream are not its business, and it reaches the store only through the call
# service. Its endpoint knows requests and dialogs only: no call service, store or media.
SIP_TRUNK = "wacall.siptrunk"
FORBIDDEN_IN_SIP_TRUNK = ("wacall.api", "wacall.app", "wacall.simulator", "wacall.upstreams.meta")
SIP_ENDPOINT = "wacall.siptrunk.endpoint"
FORBIDDEN_IN_SIP_ENDPOINT = (
    "wacall.calls.service",
    "wacall.calls.sessions",
    "wacall.calls.record",
    "wacall.permissions",
    "wacall.store",
    "wacall.media",
    "aiortc",
)


def test_the_sip_trunk_reaches_neither_the_api_nor_the_platform() -> None:
    assert SIP_ENDPOINT in MODULES
    assert reaching_outside(SIP_TRUNK, FORBIDDEN_IN_SIP_TRUNK) == {}
    assert reaching_outside(SIP_ENDPOINT, FORBIDDEN_IN_SIP_ENDPOINT) == {}


def test_the_sip_trunk_check_sees_what_it_forbids() -> None:
    saved = dict(TREES)
    try:
        TREES[SIP_ENDPOINT] = ast.parse("from wacall.calls import service\nfrom wacall.api import calling")
        assert "wacall.calls.service" in reaching_outside(SIP_ENDPOINT, FORBIDDEN_IN_SIP_ENDPOINT)[SIP_ENDPOINT]
        assert "wacall.api.calling" in reaching_outside(SIP_TRUNK, FORBIDDEN_IN_SIP_TRUNK)[SIP_ENDPOINT]
    finally:
        TREES.clear()
        TREES.update(saved)


# The queue router is written as the rule engine is: data and `now` in, decisions out.
QUEUE_ROUTER = "wacall.queues.router"
QUEUE_ROUTER_IMPORTS = PURE_IMPORTS | {"collections.abc", "datetime", "enum", "random", "types"}


def test_the_queue_router_is_pure() -> None:
    assert QUEUE_ROUTER in MODULES
    assert reachable(QUEUE_ROUTER) <= QUEUE_ROUTER_IMPORTS, sorted(reachable(QUEUE_ROUTER) - QUEUE_ROUTER_IMPORTS)


def test_the_queue_router_check_sees_a_clock_read_through_another_module() -> None:
    saved = dict(TREES)
    try:
        TREES[QUEUE_ROUTER] = ast.parse("from wacall.calls import service")
        assert not reachable(QUEUE_ROUTER) <= QUEUE_ROUTER_IMPORTS
    finally:
        TREES.clear()
        TREES.update(saved)


# The contact centre's service and sessions are transport-neutral: the gRPC servicer and the WebSocket mirror both
# drive them.
QUEUES = "wacall.queues"
FORBIDDEN_IN_QUEUES = (
    "grpc",
    "wacall_client",
    "aiohttp",
    "wacall.api",
    "wacall.app",
    "wacall.simulator",
    "wacall.upstreams.meta",
)


# The call service reaches `wacall.errors` (our reasons' gRPC status codes, also read by the SIP front door's table
# of SIP statuses): a table of codes, not a transport, so what it imports does not count against the contact centre.
STATUS_TABLES = frozenset({"wacall.errors"})


def reaching_outside_except_through(
    package: str, forbidden: tuple[str, ...], tables: frozenset[str]
) -> dict[str, list[str]]:
    """`reaching_outside`, not following imports made by the modules in `tables`."""
    found = {}
    for name in MODULES:
        if not _within(name, (package,)):
            continue
        seen: set[str] = set()
        pending = [name]
        while pending:
            for target in imported(pending.pop()):
                if target not in seen:
                    seen.add(target)
                    if target in MODULES and target not in tables:
                        pending.append(target)
        if offending := sorted(t for t in seen if _within(t, forbidden)):
            found[name] = offending
    return found


def test_the_contact_centre_speaks_no_transport() -> None:
    assert {"wacall.queues.service", "wacall.queues.sessions", "wacall.queues.actions"} <= set(MODULES)
    assert reaching_outside_except_through(QUEUES, FORBIDDEN_IN_QUEUES, STATUS_TABLES) == {}


def test_the_contact_centre_check_sees_a_transport_through_another_module() -> None:
    saved = dict(TREES)
    try:
        TREES["wacall.queues.sessions"] = ast.parse("from wacall.api import contact_center")
        found = reaching_outside_except_through(QUEUES, FORBIDDEN_IN_QUEUES, STATUS_TABLES)
        assert "wacall.api.contact_center" in found["wacall.queues.sessions"]
        TREES["wacall.queues.sessions"] = ast.parse("import grpc")
        assert (
            "grpc"
            in reaching_outside_except_through(QUEUES, FORBIDDEN_IN_QUEUES, STATUS_TABLES)["wacall.queues.sessions"]
        )
    finally:
        TREES.clear()
        TREES.update(saved)


# The agent page is an HTTP edge beside the gRPC one: only the assembly mounts it, and it reaches the contact centre
# and the API's mapping, never the simulator or Meta's upstream (the platform is reached through the service only).
SOFTPHONE = "wacall.softphone"
FORBIDDEN_IN_SOFTPHONE = ("wacall.simulator", "wacall.upstreams.meta", "wacall.app")


def test_only_the_assembly_mounts_the_agent_page_and_the_page_reaches_no_platform() -> None:
    assert {"wacall.softphone.web"} <= set(MODULES)
    mounting = {name for name in MODULES if not _within(name, (SOFTPHONE,)) and _within_any(imported(name), SOFTPHONE)}
    assert mounting == {"wacall.app"}
    assert reaching_outside(SOFTPHONE, FORBIDDEN_IN_SOFTPHONE) == {}


def _within_any(names: set[str], package: str) -> bool:
    return any(_within(name, (package,)) for name in names)


# The client ships as its own wheel to programs that never install the service.
CLIENT = ROOT / "clients" / "python" / "wacall_client"
CLIENT_MAY_IMPORT = {"__future__", "grpc", "grpc_status", "google", "wacall_client"}


def client_imports_outside(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Per module: the top-level packages it imports that are neither the standard library nor the client's own
    dependencies."""
    outside: dict[str, set[str]] = {}
    for name, tree in trees.items():
        tops = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        tops |= {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
        }
        extra = tops - CLIENT_MAY_IMPORT - set(sys.stdlib_module_names)
        if extra:
            outside[name] = extra
    return outside


def test_the_python_client_imports_nothing_of_the_service() -> None:
    hand_written = [CLIENT / "__init__.py", *CLIENT.glob("_[a-z]*.py")]
    assert len(hand_written) >= 4
    assert client_imports_outside({p.name: ast.parse(p.read_text()) for p in hand_written}) == {}


def test_the_client_check_sees_the_service_imported() -> None:
    found = client_imports_outside({"_client.py": ast.parse("from wacall.api import errors\nimport grpc")})
    assert found == {"_client.py": {"wacall"}}


OPERATIONS_EDGE = ("wacall.operations", "wacall.health")


def metrics_layering_breaches() -> list[str]:
    found = [
        f"{n} imports prometheus_client" for n in GRAPH if n != "wacall.metrics" and "prometheus_client" in imported(n)
    ]
    found += [
        f"{n} imports wacall.metrics"
        for n in GRAPH
        if "wacall.metrics" in GRAPH[n] and not _within(n, (*OPERATIONS_EDGE, *ASSEMBLY))
    ]
    for service in SERVICES:
        found += [
            f"{service} reaches {t}"
            for t in sorted(graph_reachable(service))
            if t in ("wacall.metrics", *OPERATIONS_EDGE)
        ]
    return found


def test_metrics_live_in_one_module_and_the_services_report_through_the_observer() -> None:
    assert "prometheus_client" in imported("wacall.metrics")
    assert "wacall.observe" in GRAPH["wacall.permissions"] and "wacall.observe" in GRAPH["wacall.calls.service"]
    assert metrics_layering_breaches() == []


def test_the_metrics_check_sees_a_service_reaching_metrics() -> None:
    saved = {name: set(targets) for name, targets in GRAPH.items()}
    try:
        GRAPH["wacall.permissions"].add("wacall.operations")
        assert "wacall.permissions reaches wacall.metrics" in metrics_layering_breaches()
        assert "wacall.calls.service reaches wacall.operations" in metrics_layering_breaches()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
