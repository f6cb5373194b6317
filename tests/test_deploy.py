"""deploy/: the compose file and the Kubernetes manifests, checked without a Docker engine or a cluster.

The manifests validate against the Kubernetes OpenAPI schemas that kubernetes-validate bundles (strict: an unknown
field is an error), the compose file against the Compose Specification's schema (tests/assets/compose-spec). Then
what no schema sees: every WACALL_* name is a setting, every command is a real `wacall` subcommand with real flags
(parsed by the CLI's own parser, the settings loaded as `wacall serve` loads them: image environment, env files,
environment, flags), every port, probe and URL agrees with the addresses those settings give, and the committed
secrets are placeholders. Each check returns the problems it finds; each test runs it on the files, then on a copy
broken on purpose, so a check that could not fail would show.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import inspect
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import BUSINESS, USER, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubernetes_validate.utils import SchemaNotFoundError, latest_version
from postgres_server import PostgresServer
from prometheus_client.parser import text_string_to_metric_families
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.app import Service
from wacall.cli import build_parser
from wacall.config import SCALARS, ConfigError, Settings, load_settings
from wacall.media.engine_process import free_port_range, free_udp_port
from wacall.media.rtpengine import NgClient
from wacall.simulator.platform import GRAPH_VERSION
from wacall.upstreams.meta.webhooks import WEBHOOK_PATH

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_SCHEMA = json.loads((ROOT / "tests" / "assets" / "compose-spec" / "compose-spec.json").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
IMAGE = "wacall:latest"
IMAGE_ENVIRONMENT = dict(re.findall(r"(WACALL_[A-Z_]+)=(\S+)", DOCKERFILE))
IMAGE_ENTRYPOINT: list[str] = json.loads(re.findall(r"^ENTRYPOINT (\[.+\])$", DOCKERFILE, re.MULTILINE)[0])
SETTING_VARIABLES = {f"WACALL_{name.upper()}" for name in SCALARS}
POSTGRES_PORT = 5432  # the postgres image's, unchanged in compose.yaml
PLACEHOLDER = "change-me"  # what every committed secret value says
Problems = list[str]


def secret_named(variable: str) -> bool:
    return any(word in variable for word in ("TOKEN", "SECRET", "PASSWORD"))


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def parse_wacall(argv: list[str]) -> argparse.Namespace | str:
    """`argv` (from `wacall` on) parsed by the CLI's own parser, or the parser's complaint."""
    if argv[:1] != ["wacall"]:
        return f"{argv!r} does not run wacall"
    complaint = io.StringIO()
    try:
        with contextlib.redirect_stderr(complaint):
            return build_parser().parse_args(argv[1:])
    except SystemExit:
        return f"{' '.join(argv)}: {complaint.getvalue().strip().splitlines()[-1]}"


def serve_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings | str:
    """The settings `wacall serve` would run with, or its configuration error."""
    try:
        return load_settings(args.config, {name: getattr(args, name) for name in SCALARS}, environ)
    except ConfigError as error:
        return f"configuration error: {error}"


# --- the compose file --------------------------------------------------------------------------------------------


def compose_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def env_file(path: Path) -> dict[str, str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def compose_environ(service: Mapping[str, Any], image_environment: Mapping[str, str]) -> dict[str, str]:
    """A container's environment: the image's, then its env files, then `environment`."""
    environ = dict(image_environment) if service.get("image") == IMAGE else {}
    for name in service.get("env_file", []):
        environ.update(env_file(DEPLOY / name))
    environ.update({key: str(value) for key, value in service.get("environment", {}).items()})
    return environ


def compose_argv(service: Mapping[str, Any]) -> list[str]:
    entrypoint = service.get("entrypoint", IMAGE_ENTRYPOINT if service.get("image") == IMAGE else [])
    return [*entrypoint, *service.get("command", [])]


class Stack:
    """The compose file's wacall services, parsed: `serve` replicas with their settings, the simulator, the
    migration. `problems` holds what could not be parsed."""

    def __init__(self, compose: Mapping[str, Any]) -> None:
        self.services: Mapping[str, Any] = compose["services"]
        self.problems: Problems = []
        self.replicas: dict[str, Settings] = {}
        self.simulators: dict[str, argparse.Namespace] = {}
        self.migrations: dict[str, argparse.Namespace] = {}
        for name, service in self.services.items():
            argv = compose_argv(service)
            if service.get("image") != IMAGE or argv[:1] != ["wacall"]:
                continue
            args = parse_wacall(argv)
            if isinstance(args, str):
                self.problems.append(f"{name}: {args}")
            elif args.command == "serve":
                settings = serve_settings(args, compose_environ(service, IMAGE_ENVIRONMENT))
                if isinstance(settings, str):
                    self.problems.append(f"{name}: {settings}")
                else:
                    self.replicas[name] = settings
            elif args.command == "simulate":
                self.simulators[name] = args
            elif args.command == "migrate":
                self.migrations[name] = args
            else:
                self.problems.append(f"{name}: runs wacall {args.command}, not serve, simulate or migrate")


def compose_schema_problems(compose: Mapping[str, Any]) -> Problems:
    validator = jsonschema.Draft7Validator(COMPOSE_SCHEMA)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]


def compose_command_problems(compose: Mapping[str, Any]) -> Problems:
    stack = Stack(compose)
    problems = list(stack.problems)
    for name, service in stack.services.items():
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:3] == ["python", "-c"]:
            try:
                compile(test[3], f"{name}'s healthcheck", "exec")
            except SyntaxError as error:
                problems.append(f"{name}'s healthcheck is not Python: {error}")
    if len(stack.replicas) != 2:
        problems.append(f"two wacall serve replicas expected, found {sorted(stack.replicas)}")
    if len(stack.simulators) != 1 or len(stack.migrations) != 1:
        problems.append(f"one simulator and one migration expected: {sorted(stack.simulators)}, {stack.migrations}")
    return problems


def _healthcheck_url(service: Mapping[str, Any]) -> str:
    test = " ".join(service.get("healthcheck", {}).get("test", []))
    found = re.findall(r"https?://[^'\"\s]+", test)
    return found[0] if found else ""


def _container_ports(service: Mapping[str, Any]) -> list[str]:
    return [str(entry).rsplit(":", 1)[-1] for entry in service.get("ports", [])]


def compose_port_problems(compose: Mapping[str, Any]) -> Problems:
    stack = Stack(compose)
    problems = list(stack.problems)
    for name, settings in stack.replicas.items():
        listening = {str(port_of(settings.grpc_address)), str(port_of(settings.http_address))}
        for port in _container_ports(stack.services[name]):
            if port not in listening:
                problems.append(f"{name} publishes container port {port}, where nothing listens ({listening})")
        url = _healthcheck_url(stack.services[name])
        expected = f"http://127.0.0.1:{port_of(settings.http_address)}/readyz"
        if url != expected:
            problems.append(f"{name}'s healthcheck asks {url!r}, not its readiness {expected}")
    for name, args in stack.simulators.items():
        listening = {str(port_of(args.grpc_address)), str(port_of(args.http_address))}
        for port in _container_ports(stack.services[name]):
            if port not in listening:
                problems.append(f"{name} publishes container port {port}, where nothing listens ({listening})")
        test = " ".join(stack.services[name].get("healthcheck", {}).get("test", []))
        if f"'127.0.0.1:{port_of(args.grpc_address)}'" not in test or "HealthStub" not in test:
            problems.append(f"{name}'s healthcheck does not ask gRPC health on {args.grpc_address}")
    for name, service in stack.services.items():
        argv = compose_argv(service)
        if argv[:1] != ["rtpengine"]:
            continue
        options = dict(arg.removeprefix("--").split("=", 1) for arg in argv[1:] if "=" in arg)
        rtp = f"{options.get('port-min')}-{options.get('port-max')}/udp"
        if _container_ports(service) != [rtp]:
            problems.append(f"{name} publishes {_container_ports(service)}, its RTP ports are {rtp}")
        ng = port_of(options.get("listen-ng", ":0"))
        hints = re.findall(r"WACALL_RTPENGINE=(\S+)", (DEPLOY / "compose.env").read_text())
        if f"{name}:{ng}" not in hints:
            problems.append(f"compose.env does not tell the replicas {name}'s ng address {name}:{ng} ({hints})")
    return problems


def compose_wiring_problems(compose: Mapping[str, Any]) -> Problems:
    stack = Stack(compose)
    problems = list(stack.problems)
    services = stack.services
    for name, args in stack.simulators.items():
        expected = {
            f"http://{replica}:{port_of(s.http_address)}{WEBHOOK_PATH}" for replica, s in stack.replicas.items()
        }
        if set(args.webhook_url) != expected or len(args.webhook_url) != len(expected):
            problems.append(
                f"{name} delivers webhooks to {args.webhook_url}, the replicas listen at {sorted(expected)}"
            )
        graph = f"http://{name}:{port_of(args.http_address)}/{GRAPH_VERSION}"
        if args.graph_base_url != graph:
            problems.append(f"{name} tells the replicas its Graph URL is {args.graph_base_url!r}, not {graph}")
        for replica, settings in stack.replicas.items():
            if settings.sim_address != f"{name}:{port_of(args.grpc_address)}":
                problems.append(f"{replica} looks for the simulator at {settings.sim_address!r}, not {name}")
    databases = {settings.db for settings in stack.replicas.values()} | {a.db for a in stack.migrations.values()}
    if len(databases) != 1:
        problems.append(f"the replicas and the migration use different databases: {sorted(databases)}")
    for url in databases:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or parts.hostname not in services:
            problems.append(f"{url} is not a PostgreSQL of this stack")
        elif parts.port != POSTGRES_PORT or parts.password:
            problems.append(f"{url}: the port is not {POSTGRES_PORT}, or it carries a password")
    for name in stack.migrations:
        database = urlsplit(stack.migrations[name].db).hostname or ""
        if services[name].get("depends_on", {}).get(database, {}).get("condition") != "service_healthy":
            problems.append(f"{name} does not wait for {database} to be healthy")
    for replica, settings in stack.replicas.items():
        waits = services[replica].get("depends_on", {})
        for migration in stack.migrations:
            if waits.get(migration, {}).get("condition") != "service_completed_successfully":
                problems.append(f"{replica} does not wait for {migration} to complete successfully")
        if settings.upstream != "sim" or not settings.auth_token:
            problems.append(
                f"{replica}: upstream {settings.upstream}, auth token {'set' if settings.auth_token else 'empty'}"
            )
    for replica, settings in stack.replicas.items():
        # The other replicas forward call control there: this replica's service name and its gRPC port.
        if settings.advertise_address != f"{replica}:{port_of(settings.grpc_address)}":
            problems.append(
                f"{replica} advertises {settings.advertise_address!r}, not {replica}:{port_of(settings.grpc_address)}"
            )
    names = [settings.instance_name for settings in stack.replicas.values()]
    if "" in names or len(set(names)) != len(names):
        problems.append(f"every replica needs its own --instance-name: {names}")
    nonces = {settings.sip_nonce_secret for settings in stack.replicas.values()}
    if len(nonces) != 1 or "" in nonces:
        problems.append("the replicas do not share one --sip-nonce-secret")
    return problems


def compose_secret_problems(compose: Mapping[str, Any]) -> Problems:
    """Secrets come from compose.env, where each is a development placeholder; none is written in the compose file,
    and the database password is the same where PostgreSQL sets it and where wacall's driver reads it."""
    problems = []
    environs = {name: compose_environ(service, {}) for name, service in compose["services"].items()}
    given = {environ["POSTGRES_PASSWORD"] for environ in environs.values() if "POSTGRES_PASSWORD" in environ}
    for name, service in compose["services"].items():
        for variable in service.get("environment", {}):
            if secret_named(variable):
                problems.append(f"{name} sets {variable} in compose.yaml: it belongs in compose.env")
        for arg in compose_argv(service):
            flag = arg.split("=", 1)[0].removeprefix("--").replace("-", "_")
            if secret_named(f"WACALL_{flag.upper()}") and flag in SCALARS:
                problems.append(f"{name} passes {arg} on its command line (visible to ps): set it in compose.env")
        for variable, value in environs[name].items():
            if secret_named(variable) and PLACEHOLDER not in value:
                problems.append(f"{name}: {variable} is not a placeholder ({PLACEHOLDER})")
        if "PGPASSWORD" in environs[name] and {environs[name]["PGPASSWORD"]} != given:
            problems.append(f"{name}'s PGPASSWORD is not the password PostgreSQL is given ({len(given)} given)")
    return problems


# --- the Kubernetes manifests ------------------------------------------------------------------------------------


def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every document of every file in deploy/k8s, by file name."""
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.glob("*.yaml"))}


def kubernetes_schema_problems(files: Mapping[str, list[dict[str, Any]]]) -> Problems:
    problems = []
    for file, documents in files.items():
        for document in documents:
            if document.get("kind") == "Kustomization":
                continue  # kustomize's own file: kustomization_problems
            try:
                kubernetes_validate.validate(document, latest_version(), strict=True)
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{file}: {'.'.join(map(str, error.path))}: {error.message}")
            except SchemaNotFoundError as error:
                problems.append(f"{file}: {error.message}")
    return problems


def kustomization_problems(files: Mapping[str, list[dict[str, Any]]]) -> Problems:
    (kustomization,) = files.get("kustomization.yaml", [{}])
    if kustomization.get("kind") != "Kustomization":
        return ["kustomization.yaml is not a Kustomization"]
    listed = kustomization.get("resources", [])
    others = sorted(set(files) - {"kustomization.yaml"})
    return [] if sorted(listed) == others and len(listed) == len(set(listed)) else [f"lists {listed}, not {others}"]


class Cluster:
    """The manifests by kind and name, and what the containers run with."""

    def __init__(self, files: Mapping[str, list[dict[str, Any]]]) -> None:
        self.objects = {
            (d["kind"], d["metadata"]["name"]): d for docs in files.values() for d in docs if "metadata" in d
        }

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.objects.get((kind, name), {})

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: obj for (k, name), obj in self.objects.items() if k == kind}

    def environ(self, container: Mapping[str, Any]) -> dict[str, str]:
        """The image's environment, then envFrom (ConfigMaps and Secrets), then env; a downward-API value is shown
        as what it names."""
        environ = dict(IMAGE_ENVIRONMENT)
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                environ.update(self.get("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
            if "secretRef" in source:
                environ.update(self.get("Secret", source["secretRef"]["name"]).get("stringData", {}))
        for variable in container.get("env", []):
            field = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            value = variable.get("value", f"<{field}>" if field else "")
            # $(VAR) names a variable defined before this one, as the kubelet expands it; anything else stays.
            environ[variable["name"]] = re.sub(r"\$\((\w+)\)", lambda m: environ.get(m.group(1), m.group(0)), value)
        return environ

    def argv(self, container: Mapping[str, Any]) -> list[str] | str:
        """What the container runs, $(VAR) references expanded as the kubelet does; a reference to nothing is a
        problem (the kubelet would pass it on literally)."""
        environ = self.environ(container)
        argv = [*container.get("command", IMAGE_ENTRYPOINT), *container.get("args", [])]
        missing = [name for arg in argv for name in re.findall(r"\$\((\w+)\)", arg) if name not in environ]
        if missing:
            return f"{container['name']} refers to {missing}, which its environment lacks"
        return [re.sub(r"\$\((\w+)\)", lambda m: environ[m.group(1)], arg) for arg in argv]


def _one_container(workload: Mapping[str, Any]) -> dict[str, Any]:
    containers = workload.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])
    return dict(containers[0])


def _named_port(container: Mapping[str, Any], port: int | str) -> int | None:
    for entry in container.get("ports", []):
        if port in (entry.get("name"), entry["containerPort"]):
            return int(entry["containerPort"])
    return None


def _service_port(service: Mapping[str, Any], container: Mapping[str, Any], container_port: int) -> int | None:
    """The Service's port that reaches `container_port` of the container."""
    for entry in service.get("spec", {}).get("ports", []):
        if _named_port(container, entry.get("targetPort", entry["port"])) == container_port:
            return int(entry["port"])
    return None


def _selects(selector: Mapping[str, str], workload: Mapping[str, Any]) -> bool:
    labels = workload.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def _serve(cluster: Cluster, workload: Mapping[str, Any]) -> tuple[dict[str, Any], Settings | str]:
    container = _one_container(workload)
    argv = cluster.argv(container)
    if isinstance(argv, str):
        return container, argv
    args = parse_wacall(argv)
    if isinstance(args, str) or args.command != "serve":
        return container, f"runs {argv}, not wacall serve: {args}"
    return container, serve_settings(args, cluster.environ(container))


def kubernetes_server_problems(files: Mapping[str, list[dict[str, Any]]]) -> Problems:
    """The wacall Deployment: replicas, ports, probes, environment, resources, security, shutdown; its Service and
    its PodDisruptionBudget."""
    cluster = Cluster(files)
    problems: Problems = []
    deployment = cluster.get("Deployment", "wacall")
    pod = deployment.get("spec", {}).get("template", {}).get("spec", {})
    container, settings = _serve(cluster, deployment)
    if isinstance(settings, str):
        return [f"deployment wacall: {settings}"]
    if deployment["spec"].get("replicas") != 2:
        problems.append(f"deployment wacall runs {deployment['spec'].get('replicas')} replicas, not 2")
    grpc_port, http_port = port_of(settings.grpc_address), port_of(settings.http_address)
    if (_named_port(container, "grpc"), _named_port(container, "http")) != (grpc_port, http_port):
        problems.append(f"the container's ports grpc and http are not the settings' {grpc_port} and {http_port}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or _named_port(container, get.get("port", "")) != http_port:
            problems.append(f"{probe} asks {get}, not {path} on the HTTP port {http_port}")
    for source in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source and not cluster.get(kind, source[key]["name"]):
                problems.append(f"envFrom names {kind} {source[key]['name']}, which is not in the manifests")
    downward = {
        v["name"]: v.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for v in container.get("env", [])
    }
    if downward.get("WACALL_INSTANCE_NAME") != "metadata.name":
        problems.append("WACALL_INSTANCE_NAME does not come from the pod's name")
    # Other pods forward call control to the advertised address: the pod's IP (pod names are not in cluster DNS)
    # and the gRPC port.
    if settings.advertise_address != f"<status.podIP>:{grpc_port}":
        problems.append(
            f"the advertised address {settings.advertise_address!r} is not the pod's IP and gRPC port {grpc_port}"
        )
    resources = container.get("resources", {})
    if not resources.get("requests") or not resources.get("limits", {}).get("memory"):
        problems.append(f"the container asks no resources or has no memory limit: {resources}")
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    if (
        security.get("runAsNonRoot") is not True
        or not security.get("runAsUser")
        or security.get("allowPrivilegeEscalation", True)
    ):
        problems.append(f"the pod may run as root or escalate: {security}")
    pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain = pause + inspect.signature(Service.stop).parameters["grace"].default
    if pod.get("terminationGracePeriodSeconds", 30) <= drain:
        problems.append(f"terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds')} <= drain {drain}")
    selector = deployment["spec"]["selector"]["matchLabels"]
    if not _selects(selector, deployment):
        problems.append("the Deployment's selector does not match its pods")
    service = cluster.get("Service", "wacall")
    if not _selects(service.get("spec", {}).get("selector", {}), deployment):
        problems.append("service wacall does not select the wacall pods")
    for port in (grpc_port, http_port):
        if _service_port(service, container, port) is None:
            problems.append(f"service wacall does not reach container port {port}")
    protocols = {entry.get("protocol", "TCP") for entry in service.get("spec", {}).get("ports", [])}
    if protocols != {"TCP"}:
        problems.append(f"service wacall carries {protocols}: SIP needs per-pod addresses (service.yaml)")
    budgets = cluster.of_kind("PodDisruptionBudget")
    if not any(
        b["spec"].get("minAvailable") == 1 and _selects(b["spec"]["selector"]["matchLabels"], deployment)
        for b in budgets.values()
    ):
        problems.append("no PodDisruptionBudget keeps one wacall pod available")
    return problems


def kubernetes_companion_problems(files: Mapping[str, list[dict[str, Any]]]) -> Problems:
    """The migration Job and the staging simulator: real commands, the replicas' database, the simulator reached
    where the replicas look for it, and its webhooks sent to the replicas' Service."""
    cluster = Cluster(files)
    deployment = cluster.get("Deployment", "wacall")
    container, settings = _serve(cluster, deployment)
    if isinstance(settings, str):
        return [f"deployment wacall: {settings}"]
    problems: Problems = []
    jobs = cluster.of_kind("Job")
    for name, job in jobs.items():
        argv = cluster.argv(_one_container(job))
        args = parse_wacall(argv) if isinstance(argv, list) else argv
        if isinstance(args, str) or args.command != "migrate":
            problems.append(f"job {name} does not run wacall migrate: {args}")
        elif args.db != settings.db:
            problems.append(f"job {name} migrates {args.db}, the replicas use {settings.db}")
    if not jobs:
        problems.append("no migration Job")
    simulator = cluster.get("Deployment", "wacall-simulator")
    sim_container = _one_container(simulator)
    argv = cluster.argv(sim_container)
    args = parse_wacall(argv) if isinstance(argv, list) else argv
    if isinstance(args, str) or args.command != "simulate":
        return [*problems, f"deployment wacall-simulator does not run wacall simulate: {args}"]
    sim_service = cluster.get("Service", "wacall-simulator")
    if not _selects(sim_service.get("spec", {}).get("selector", {}), simulator):
        problems.append("service wacall-simulator does not select the simulator's pod")
    grpc_port, http_port = port_of(args.grpc_address), port_of(args.http_address)
    if (_named_port(sim_container, "grpc"), _named_port(sim_container, "http")) != (grpc_port, http_port):
        problems.append("the simulator's container ports are not its --grpc-address and --http-address ports")
    for probe in ("readinessProbe", "livenessProbe"):
        if sim_container.get(probe, {}).get("grpc", {}).get("port") != grpc_port:
            problems.append(f"the simulator's {probe} does not ask gRPC health on {grpc_port}")
    sim_grpc = _service_port(sim_service, sim_container, grpc_port)
    if settings.sim_address != f"wacall-simulator:{sim_grpc}":
        problems.append(f"the replicas look for the simulator at {settings.sim_address!r}, its Service has {sim_grpc}")
    graph = f"http://wacall-simulator:{_service_port(sim_service, sim_container, http_port)}/{GRAPH_VERSION}"
    if args.graph_base_url != graph:
        problems.append(f"the simulator's Graph URL {args.graph_base_url!r} is not its HTTP port's Service, {graph}")
    http = _service_port(cluster.get("Service", "wacall"), container, port_of(settings.http_address))
    if args.webhook_url != [f"http://wacall:{http}{WEBHOOK_PATH}"]:
        problems.append(f"the simulator delivers to {args.webhook_url}, the replicas' Service is wacall:{http}")
    return problems


def kubernetes_secret_problems(files: Mapping[str, list[dict[str, Any]]]) -> Problems:
    cluster = Cluster(files)
    problems = []
    for name, config in cluster.of_kind("ConfigMap").items():
        problems += [
            f"configmap {name} holds {key}: secrets go in the Secret" for key in config["data"] if secret_named(key)
        ]
    for name, secret in cluster.of_kind("Secret").items():
        if secret.get("data"):
            problems.append(f"secret {name} has base64 data: write placeholders in stringData")
        for key, value in secret.get("stringData", {}).items():
            if PLACEHOLDER not in value:
                problems.append(f"secret {name}: {key} is not a placeholder ({PLACEHOLDER})")
    return problems


# --- both --------------------------------------------------------------------------------------------------------


def deploy_texts() -> dict[str, str]:
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in sorted(DEPLOY.rglob("*")) if p.is_file()}
    return {**texts, "Dockerfile": DOCKERFILE}


def variable_problems(texts: Mapping[str, str]) -> Problems:
    """Every WACALL_* name written in deploy/ or the Dockerfile, comments included, is a setting's variable."""
    return [
        f"{path}: {name} is no setting (config.SCALARS)"
        for path, text in texts.items()
        for name in sorted(set(re.findall(r"\bWACALL_[A-Z0-9_]+", text)))
        if name not in SETTING_VARIABLES
    ]


def broken(check: Callable[[Any], Problems], data: Any, mutate: Callable[[Any], object], expected: str) -> None:
    """`check` finds nothing wrong in `data`, and finds `expected` once `mutate` has broken a copy of it."""
    assert check(data) == []
    copied = copy.deepcopy(data)
    mutate(copied)
    found = check(copied)
    assert any(expected in problem for problem in found), found


def _set(path: Iterable[Any], value: Any) -> Callable[[Any], None]:
    *parents, last = path

    def mutate(data: Any) -> None:
        for key in parents:
            data = data[key]
        if value is DELETE:
            del data[last]
        else:
            data[last] = value

    return mutate


DELETE = object()


def _every_db(url: str) -> Callable[[Any], None]:
    """Every `--db` of the compose file (the replicas' and the migration's) set to `url`."""

    def mutate(compose: Any) -> None:
        for service in compose["services"].values():
            command = service.get("command", [])
            for index, arg in enumerate(command[:-1]):
                if arg == "--db":
                    command[index + 1] = url

    return mutate


REPLICA_1 = ["services", "replica-1"]
SIMULATOR = ["services", "simulator"]


def test_compose_file_validates_against_the_compose_specification() -> None:
    broken(
        compose_schema_problems,
        compose_file(),
        _set([*REPLICA_1, "depends_on", "migrate", "condition"], "service_finished"),
        "service_finished",
    )
    broken(compose_schema_problems, compose_file(), _set([*REPLICA_1, "helthcheck"], {}), "helthcheck")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set([*REPLICA_1, "command", 0], "--database"), "unrecognized arguments"),
        (_set([*SIMULATOR, "entrypoint"], ["wacall", "simulator"]), "invalid choice: 'simulator'"),
        (_set(["services", "migrate", "entrypoint"], ["wacall", "migrate", "--dbs"]), "unrecognized arguments: --dbs"),
        (_set([*REPLICA_1, "environment"], {"WACALL_CALL_LEASE_SECONDS": "soon"}), "configuration error"),
        (_set(["services", "replica-2", "entrypoint"], ["wacall", "sim"]), "argument subcommand: invalid choice"),
        (_set([*SIMULATOR, "healthcheck", "test", 3], "import grpc sys"), "healthcheck is not Python"),
    ],
)
def test_compose_commands_are_real_wacall_subcommands_and_flags(mutate: Callable[[Any], None], expected: str) -> None:
    broken(compose_command_problems, compose_file(), mutate, expected)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set([*REPLICA_1, "ports", 1], "127.0.0.1:8080:8081"), "publishes container port 8081"),
        (_set([*REPLICA_1, "environment"], {"WACALL_HTTP_ADDRESS": "0.0.0.0:8082"}), "publishes container port 8080"),
        (
            _set(
                [*REPLICA_1, "healthcheck", "test", 3],
                "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz')",
            ),
            "not its readiness",
        ),
        (_set([*SIMULATOR, "command", 1], "0.0.0.0:50053"), "publishes container port 50052"),
        (_set(["services", "rtpengine", "ports", 0], "40000-40200:40000-40200/udp"), "its RTP ports are"),
        (_set(["services", "rtpengine", "entrypoint", 4], "--listen-ng=0.0.0.0:2224"), "ng address rtpengine:2224"),
    ],
)
def test_compose_ports_and_healthchecks_match_the_settings(mutate: Callable[[Any], None], expected: str) -> None:
    broken(compose_port_problems, compose_file(), mutate, expected)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set([*SIMULATOR, "command", 7], "http://replica-2:8081/webhooks/whatsapp"), "delivers webhooks to"),
        (_set([*SIMULATOR, "command", 5], "http://replica-1:8080/webhooks"), "delivers webhooks to"),
        (_set([*REPLICA_1, "environment"], {"WACALL_HTTP_ADDRESS": "0.0.0.0:8082"}), "delivers webhooks to"),
        (_set([*SIMULATOR, "command", 11], "http://0.0.0.0:8090/v23.0"), "Graph URL"),
        (_set([*SIMULATOR, "command", 11], "http://simulator:8090/v22.0"), "Graph URL"),
        (_set([*REPLICA_1, "command", 5], "simulator:50051"), "looks for the simulator"),
        (_set([*REPLICA_1, "command", 1], "postgresql://wacall@postgres:5432/other"), "different databases"),
        (_set([*REPLICA_1, "depends_on", "migrate", "condition"], "service_started"), "complete successfully"),
        (_set(["services", "migrate", "depends_on", "postgres", "condition"], "service_started"), "to be healthy"),
        (_set(["services", "replica-2", "command", 7], "replica-1"), "its own --instance-name"),
        (_set([*REPLICA_1, "environment"], {"WACALL_SIP_NONCE_SECRET": "x"}), "one --sip-nonce-secret"),
        (_set([*REPLICA_1, "environment"], {"WACALL_AUTH_TOKEN": ""}), "auth token empty"),
        (_set([*REPLICA_1, "environment", "WACALL_ADVERTISE_ADDRESS"], DELETE), "advertises ''"),
        (_set([*REPLICA_1, "environment", "WACALL_ADVERTISE_ADDRESS"], "replica-2:50051"), "advertises"),
        (_every_db("postgresql://wacall@db:5432/wacall"), "not a PostgreSQL of this stack"),
        (_every_db("postgresql://wacall@postgres:5433/wacall"), "the port is not 5432"),
        (_every_db("postgresql://wacall:hunter2@postgres:5432/wacall"), "carries a password"),
    ],
)
def test_compose_replicas_share_one_database_and_one_simulator_that_calls_them_all(
    mutate: Callable[[Any], None], expected: str
) -> None:
    broken(compose_wiring_problems, compose_file(), mutate, expected)


def test_compose_takes_its_secrets_from_the_env_file_as_development_placeholders(tmp_path: Path) -> None:
    broken(compose_secret_problems, compose_file(), _set([*REPLICA_1, "environment"], {"WACALL_AUTH_TOKEN": "t0k"}),
           "belongs in compose.env")  # fmt: skip
    broken(compose_secret_problems, compose_file(), _set([*REPLICA_1, "command", 0], "--auth-token=t0k"),
           "visible to ps")  # fmt: skip
    real = tmp_path / "real.env"
    real.write_text("WACALL_AUTH_TOKEN=7f3c9a\nPGPASSWORD=change-me-dev-postgres-password\n")
    broken(compose_secret_problems, compose_file(), _set([*REPLICA_1, "env_file"], [str(real)]), "not a placeholder")
    real.write_text("PGPASSWORD=change-me-another-password\n")
    broken(compose_secret_problems, compose_file(), _set([*REPLICA_1, "env_file"], [str(real)]), "PGPASSWORD")


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    def misspell(files: Any) -> None:
        files["deployment.yaml"][0]["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}

    broken(kubernetes_schema_problems, manifests(), misspell, "readinessprobe")
    broken(kubernetes_schema_problems, manifests(), _set(["pdb.yaml", 0, "apiVersion"], "policy/v1beta2"),
           "Couldn't find schema")  # fmt: skip
    broken(kubernetes_schema_problems, manifests(), _set(["service.yaml", 0, "spec", "ports", 0, "port"], "grpc"),
           "'grpc' is not of type 'integer'")  # fmt: skip


def test_the_kustomization_lists_every_manifest() -> None:
    broken(kustomization_problems, manifests(), _set(["kustomization.yaml", 0, "resources", 6], DELETE), "lists")
    broken(kustomization_problems, manifests(), _set(["extra.yaml"], []), "extra.yaml")


CONTAINER = ["deployment.yaml", 0, "spec", "template", "spec", "containers", 0]
CONFIG = ["configmap.yaml", 0, "data"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set(["deployment.yaml", 0, "spec", "replicas"], 1), "not 2"),
        (_set([*CONFIG, "WACALL_GRPC_ADDRESS"], "0.0.0.0:50061"), "not the settings' 50061"),
        (_set([*CONTAINER, "ports", 1, "containerPort"], 8081), "not the settings'"),
        (_set([*CONTAINER, "readinessProbe", "httpGet", "path"], "/healthz"), "not /readyz"),
        (_set([*CONTAINER, "livenessProbe", "httpGet", "port"], "grpc"), "not /healthz on the HTTP port"),
        (_set([*CONTAINER, "envFrom", 1, "secretRef", "name"], "wacall-secret"), "Secret wacall-secret"),
        (_set([*CONTAINER, "env", 0, "valueFrom", "fieldRef", "fieldPath"], "spec.nodeName"), "pod's name"),
        (_set([*CONTAINER, "env", 2, "value"], "$(POD_IP):50052"), "the advertised address"),
        (_set([*CONTAINER, "env", 1, "valueFrom", "fieldRef", "fieldPath"], "metadata.name"), "the advertised address"),
        (_set([*CONTAINER, "env", 2], DELETE), "the advertised address"),
        (_set([*CONTAINER, "resources", "limits"], {}), "no memory limit"),
        (_set([*CONTAINER, "securityContext", "allowPrivilegeEscalation"], True), "escalate"),
        (_set(["deployment.yaml", 0, "spec", "template", "spec", "securityContext", "runAsNonRoot"], DELETE), "root"),
        (_set(["deployment.yaml", 0, "spec", "template", "spec", "terminationGracePeriodSeconds"], 5), "<= drain"),
        (_set(["service.yaml", 0, "spec", "ports", 1, "targetPort"], "metrics"), "container port 8080"),
        (_set(["service.yaml", 0, "spec", "selector", "app.kubernetes.io/component"], "api"), "does not select"),
        (_set(["pdb.yaml", 0, "spec", "minAvailable"], 0), "PodDisruptionBudget"),
    ],
)
def test_the_kubernetes_deployment_serves_on_its_settings_ports_with_probes_and_limits(
    mutate: Callable[[Any], None], expected: str
) -> None:
    broken(kubernetes_server_problems, manifests(), mutate, expected)


JOB = ["migrate-job.yaml", 0, "spec", "template", "spec", "containers", 0]
SIM = ["simulator.yaml", 0, "spec", "template", "spec", "containers", 0]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set([*JOB, "args", 1], "$(WACALL_DATABASE)"), "which its environment lacks"),
        (_set([*JOB, "command"], ["wacall", "migrations"]), "does not run wacall migrate"),
        (_set([*JOB, "args"], ["--db", "postgresql://wacall@postgres:5432/other"]), "the replicas use"),
        (_set([*SIM, "args", 1], "0.0.0.0:50053"), "container ports"),
        (_set([*SIM, "args", 5], "http://wacall:8081/webhooks/whatsapp"), "delivers to"),
        (_set([*CONFIG, "WACALL_SIM_ADDRESS"], "wacall-simulator:8090"), "look for the simulator"),
        (_set([*SIM, "args", 9], "http://wacall-simulator:50052/v23.0"), "Graph URL"),
        (_set(["simulator.yaml", 1, "spec", "ports", 1, "port"], 80), "Graph URL"),
        (_set([*SIM, "readinessProbe", "grpc", "port"], 8090), "readinessProbe"),
        (_set([*SIM, "command"], ["wacall", "serve"]), "does not run wacall simulate"),
    ],
)
def test_the_kubernetes_migration_job_and_simulator_run_real_commands_wired_to_the_replicas(
    mutate: Callable[[Any], None], expected: str
) -> None:
    broken(kubernetes_companion_problems, manifests(), mutate, expected)


def test_kubernetes_secrets_are_placeholders_in_the_secret_alone() -> None:
    broken(kubernetes_secret_problems, manifests(), _set([*CONFIG, "WACALL_AUTH_TOKEN"], "change-me"), "configmap")
    broken(kubernetes_secret_problems, manifests(), _set(["secret.yaml", 0, "stringData", "PGPASSWORD"], "hunter2"),
           "not a placeholder")  # fmt: skip


def test_every_wacall_variable_named_in_deploy_and_the_dockerfile_is_a_setting() -> None:
    texts = deploy_texts()
    assert any("WACALL_INSTANCE_NAME" in text for text in texts.values())
    broken(variable_problems, texts, _set(["deploy/k8s/configmap.yaml"], "  WACALL_GRPC_ADRESS: x"), "GRPC_ADRESS")
    broken(variable_problems, texts, _set(["Dockerfile"], "ENV WACALL_SIM_STATES=/x"), "WACALL_SIM_STATES")


# --- the compose stack's own commands, run here ------------------------------------------------------------------

WACALL = Path(sys.executable).parent / "wacall"
STARTUP = 60.0  # seconds a process may take to print its banner on a loaded machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def localised(argv: list[str], moves: Mapping[str, str]) -> list[str]:
    """`argv` with each compose address (`service:port`, `0.0.0.0:port`, a URL) moved where this test runs it."""
    for old, new in moves.items():
        argv = [arg.replace(old, new) for arg in argv]
    return argv


def launch(argv: list[str], environ: Mapping[str, str], started: list[subprocess.Popen[str]]) -> str:
    """Start `wacall …` and return its banner line."""
    process = subprocess.Popen(
        [str(WACALL), *argv[1:]], env={**os.environ, **environ}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    started.append(process)
    assert process.stdout is not None
    banner = process.stdout.readline()
    if not banner.startswith("wacall s"):
        process.kill()
        raise AssertionError(f"{argv} did not start: {banner!r} {process.communicate(timeout=10)[1][-2000:]}")
    return banner


def healthcheck_passes(service: Mapping[str, Any], moves: Mapping[str, str], environ: Mapping[str, str]) -> bool:
    """The service's compose healthcheck (`python -c …`), aimed where this test runs the service, exits 0."""
    _cmd, _python, flag, program = service["healthcheck"]["test"]
    argv = [sys.executable, flag, *localised([program], moves)]
    return subprocess.run(argv, env={**os.environ, **environ}, capture_output=True, timeout=30).returncode == 0


def webhooks_received(http_address: str) -> float:
    text = httpx.get(f"http://{http_address}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "wacall_webhook_deliveries"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("result") == "ok"
    )


@pytest.mark.slow
async def test_the_compose_stacks_commands_run_here_migrate_serve_simulate_and_deliver_to_both_replicas(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """The compose file's own commands and environments as processes on loopback (each `service:port` moved to
    127.0.0.1 and a free port, the database to the test's PostgreSQL): the migration exits 0, the simulator and
    both replicas start and pass their compose healthchecks, the simulator's webhooks reach each replica, and a
    permission request made through one replica (Graph requests to the URL the simulator announces) is granted and
    read through the other."""
    compose = compose_file()
    stack = Stack(compose)
    assert stack.problems == [] and len(stack.replicas) == 2 and len(stack.simulators) == 1
    ((migration, migration_args),) = stack.migrations.items()
    ((simulator, simulator_args),) = stack.simulators.items()
    database = postgres_server.create_database()
    sim_grpc, sim_http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    moves = {
        migration_args.db: database,
        simulator_args.grpc_address: sim_grpc,
        simulator_args.http_address: sim_http,
        f"{simulator}:{port_of(simulator_args.grpc_address)}": sim_grpc,
        f"{simulator}:{port_of(simulator_args.http_address)}": sim_http,
        "127.0.0.1:" + str(port_of(simulator_args.grpc_address)): sim_grpc,
        "/var/lib/wacall": str(tmp_path),
    }
    addresses = {}
    for name, settings in stack.replicas.items():
        grpc_address, http_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        addresses[name] = grpc_address, http_address
        moves[f"{name}:{port_of(settings.http_address)}"] = http_address
    started: list[subprocess.Popen[str]] = []
    services = compose["services"]
    try:
        done = subprocess.run(
            [str(WACALL), *localised(compose_argv(services[migration]), moves)[1:]],
            env={**os.environ, **compose_environ(services[migration], {})}, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        launch(localised(compose_argv(services[simulator]), moves), {}, started)
        for name, (grpc_address, http_address) in addresses.items():
            environ = {
                **{k: v.replace("/var/lib/wacall", str(tmp_path)) for k, v in IMAGE_ENVIRONMENT.items()},
                **compose_environ(services[name], {}),
                "WACALL_GRPC_ADDRESS": grpc_address,
                "WACALL_HTTP_ADDRESS": http_address,
                "WACALL_SIP_ADDRESS": "127.0.0.1:0",
                "WACALL_MEDIA_DIR": str(tmp_path / name / "media"),
                "WACALL_RECORDINGS_DIR": str(tmp_path / name / "recordings"),
            }
            banner = launch(localised(compose_argv(services[name]), moves), environ, started)
            assert f"grpc={grpc_address} http={http_address}" in banner, banner
        for name, (_grpc, http_address) in addresses.items():
            readiness = {f"127.0.0.1:{port_of(stack.replicas[name].http_address)}": http_address}
            assert await wait_until(
                lambda name=name, readiness=readiness: asyncio.to_thread(
                    healthcheck_passes, services[name], readiness, {}
                ),
                bool,
                timeout=STARTUP,
            ), f"{name} never became ready"
        assert healthcheck_passes(services[simulator], moves, {})
        async with grpc.aio.insecure_channel(sim_grpc) as channel:
            sim = simulator_pb2_grpc.SimulatorServiceStub(channel)
            for index in range(4):  # four deliveries, round-robin across the replicas' webhook URLs
                await sim.SendUserMessage(
                    sim_pb.SendUserMessageRequest(
                        business_number=BUSINESS, user_number=f"+3461234563{index}", text="hi"
                    )
                )
        # Each replica got its share (a delivery that failed on one would have moved on to the other).
        received = {name: await asyncio.to_thread(webhooks_received, http) for name, (_, http) in addresses.items()}
        assert sum(received.values()) == 4 and min(received.values()) >= 1, received
        # A permission request through one replica reaches the simulator at the Graph URL it announced; the user's
        # grant, a signed webhook, is read from the other replica (one database).
        (first, (first_grpc, _)), (_second, (second_grpc, _)) = addresses.items()
        token = [("authorization", f"Bearer {compose_environ(services[first], {})['WACALL_AUTH_TOKEN']}")]
        async with (
            grpc.aio.insecure_channel(sim_grpc) as sim_channel,
            grpc.aio.insecure_channel(first_grpc) as first_channel,
            grpc.aio.insecure_channel(second_grpc) as second_channel,
        ):
            await simulator_pb2_grpc.SimulatorServiceStub(sim_channel).SetUserBehavior(
                sim_pb.SetUserBehaviorRequest(user_number=USER, on_permission_request=sim_pb.ACCEPT_PERMANENT)
            )
            await calling_pb2_grpc.CallingServiceStub(first_channel).RequestPermission(
                pb.RequestPermissionRequest(
                    business_number=BUSINESS,
                    user_number=USER,
                    template=pb.Template(name="call_permission_request", language="en"),
                ),
                metadata=token,
            )
            second = calling_pb2_grpc.CallingServiceStub(second_channel)
            permission = await wait_until(
                lambda: second.GetPermission(
                    pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER), metadata=token
                ),
                lambda p: p.state == pb.PERMISSION_STATE_PERMANENT,
                timeout=30,
            )
            assert permission.state == pb.PERMISSION_STATE_PERMANENT
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_the_compose_rtpengine_command_starts_the_installed_rtpengine_and_answers_ping(tmp_path: Path) -> None:
    """The media profile's rtpengine command line, as compose runs it (its interface eth0 is loopback here, its ng
    port and RTP range moved to free ones), starts this machine's rtpengine, which answers an ng ping."""
    (argv,) = [compose_argv(s) for s in compose_file()["services"].values() if compose_argv(s)[:1] == ["rtpengine"]]
    options = dict(arg.removeprefix("--").split("=", 1) for arg in argv[1:] if "=" in arg)
    ng_port, first = free_udp_port("127.0.0.1"), free_port_range("127.0.0.1", 16)
    moves = {
        f"--interface={options['interface']}": "--interface=lo",
        f"--listen-ng={options['listen-ng']}": f"--listen-ng=127.0.0.1:{ng_port}",
        f"--port-min={options['port-min']}": f"--port-min={first}",
        f"--port-max={options['port-max']}": f"--port-max={first + 15}",
    }
    engine = subprocess.Popen(
        [shutil.which(argv[0]) or argv[0], *localised(argv[1:], moves), f"--pidfile={tmp_path / 'rtpengine.pid'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = await NgClient.connect(("127.0.0.1", ng_port))
    try:
        await asyncio.wait_for(client.ping(), 10)
        assert engine.poll() is None
    finally:
        await client.close()
        engine.terminate()
        assert engine.wait(timeout=10) == 0, engine.communicate()[1]


def probe_answers(http_address: str, path: str) -> bool:
    try:
        return httpx.get(f"http://{http_address}{path}", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
async def test_the_kubernetes_containers_run_here_the_job_migrates_and_the_probes_answer(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """The migration Job's, the simulator's and a replica's containers as processes on loopback, with the
    environment the manifests give them (image, ConfigMap, Secret, the pod's name; the ConfigMap's database and
    simulator address pointed here, the listening addresses moved to free ports): the Job exits 0, the simulator
    answers gRPC health and the replica's readiness, liveness and startup probes answer 200."""
    files = manifests()
    sim_grpc, sim_http, grpc_address, http_address = (f"127.0.0.1:{free_port()}" for _ in range(4))
    config = files["configmap.yaml"][0]["data"]
    config.update(WACALL_DB=postgres_server.create_database(), WACALL_SIM_ADDRESS=sim_grpc)
    cluster = Cluster(files)
    job = _one_container(cluster.get("Job", "wacall-migrate"))
    simulator = _one_container(cluster.get("Deployment", "wacall-simulator"))
    server = _one_container(cluster.get("Deployment", "wacall"))
    sim_argv = cluster.argv(simulator)
    sim_args = parse_wacall(sim_argv) if isinstance(sim_argv, list) else sim_argv
    assert not isinstance(sim_args, str), sim_args
    moves: dict[str, str] = {
        sim_args.grpc_address: sim_grpc,
        sim_args.http_address: sim_http,
        "/var/lib/wacall": str(tmp_path),
        f"wacall:{port_of(config['WACALL_HTTP_ADDRESS'])}": http_address,  # the replicas' Service
        f"wacall-simulator:{port_of(sim_args.http_address)}": sim_http,  # the simulator's
    }

    def argv(container: Mapping[str, Any]) -> list[str]:
        found = cluster.argv(container)
        assert isinstance(found, list), found
        return localised(found, moves)

    def environ(container: Mapping[str, Any]) -> dict[str, str]:
        given = {key: localised([value], moves)[0] for key, value in cluster.environ(container).items()}
        return {**given, "WACALL_INSTANCE_NAME": "wacall-5d8f7c9b4-x2x7q"}  # the downward API's pod name

    started: list[subprocess.Popen[str]] = []
    try:
        done = subprocess.run(
            [str(WACALL), *argv(job)[1:]], env={**os.environ, **environ(job)}, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        launch(argv(simulator), {}, started)
        listening = {"WACALL_GRPC_ADDRESS": grpc_address, "WACALL_HTTP_ADDRESS": http_address,
                     "WACALL_SIP_ADDRESS": "127.0.0.1:0"}  # fmt: skip
        banner = launch(argv(server), {**environ(server), **listening}, started)
        assert f"grpc={grpc_address} http={http_address}" in banner, banner
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            path = server[probe]["httpGet"]["path"]
            assert await wait_until(
                lambda path=path: asyncio.to_thread(probe_answers, http_address, path), bool, timeout=STARTUP
            ), f"{probe} {path}"
        async with grpc.aio.insecure_channel(sim_grpc) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
