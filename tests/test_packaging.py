"""What ships: the two wheels hold every module and nothing generic, and the Dockerfile's recipe runs.

No Docker engine runs here, so the image is checked by its parts: its COPY sources exist, its ENV names are real
settings, its ports agree, and the service starts from the built wheels alone (no editable install, no source tree)
with exactly the image's environment, and answers its health check.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from packaging.requirements import Requirement

from wacall.config import SCALARS
from wacall.media.engine_process import INSTALL_HINT, EngineSettings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
         str(ROOT / "clients" / "python"), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    found = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    assert set(found) == {"wacall", "wacall_client"}, found
    return found


def top_level(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/")[0] for name in archive.namelist() if ".dist-info" not in name.split("/")[0]}


def test_wheels_install_only_our_own_top_level_names(wheels: dict[str, Path]) -> None:
    assert top_level(wheels["wacall"]) == {"wacall", "wacall_adapters"}
    assert top_level(wheels["wacall_client"]) == {"wacall_client"}


def test_wheels_carry_every_module_the_stubs_and_the_command(wheels: dict[str, Path]) -> None:
    with zipfile.ZipFile(wheels["wacall"]) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    sources = {str(p.relative_to(ROOT / "server")) for p in (ROOT / "server").rglob("*.py")}
    sources |= {str(p.relative_to(ROOT / "adapters")) for p in (ROOT / "adapters").rglob("*.py")}
    assert sources <= names, sorted(sources - names)
    assert re.search(r"^wacall = wacall\.cli:main$", entry_points, re.MULTILINE)
    with zipfile.ZipFile(wheels["wacall_client"]) as archive:
        client = set(archive.namelist())
    for stub in ("v1/calling_pb2.py", "v1/calling_pb2.pyi", "v1/calling_pb2_grpc.py", "sim/v1/simulator_pb2.py",
                 "testing/v1/clock_pb2.py", "py.typed"):  # fmt: skip
        assert f"wacall_client/{stub}" in client


def test_dockerfile_copies_what_exists_and_configures_real_settings() -> None:
    for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE, re.MULTILINE):
        *sources, _destination = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    env = dict(re.findall(r"(WACALL_[A-Z_]+)=(\S+)", DOCKERFILE))
    assert {name.removeprefix("WACALL_").lower() for name in env} <= set(SCALARS)
    exposed = set(re.findall(r"^EXPOSE (.+)$", DOCKERFILE, re.MULTILINE)[0].split())
    sip_port = env["WACALL_SIP_ADDRESS"].rsplit(":", 1)[1]
    assert {
        env["WACALL_GRPC_ADDRESS"].rsplit(":", 1)[1],
        env["WACALL_HTTP_ADDRESS"].rsplit(":", 1)[1],
        f"{sip_port}/udp",  # the SIP front door listens on UDP and TCP at one address
        f"{sip_port}/tcp",
    } == exposed
    assert 'ENTRYPOINT ["wacall", "serve"]' in DOCKERFILE
    assert re.search(r"^USER wacall$", DOCKERFILE, re.MULTILINE)


def test_dockerfile_installs_the_package_that_provides_the_media_engine_the_service_starts() -> None:
    """The image's apt-get line installs, without recommends, the Debian package that owns the rtpengine binary the
    local engine runs (the package INSTALL_HINT names), and `setpriv`, which starts it, comes with an Essential
    package (every Debian image, slim ones too, carries those)."""
    installs = re.findall(r"apt-get install -y --no-install-recommends ([a-z0-9 .+-]+?)\s*(?:\\|&&|$)", DOCKERFILE)
    assert installs == [INSTALL_HINT.rsplit(" ", 1)[1]], installs
    assert re.search(r"apt-get update \\\n\s+&& apt-get install", DOCKERFILE), "apt-get update runs in the same layer"
    assert "rm -rf /var/lib/apt/lists/*" in DOCKERFILE

    def owner(command: str) -> str:
        binary = shutil.which(command)
        assert binary is not None, f"{command} is not installed here (make test installs it)"
        done = subprocess.run(["dpkg", "-S", os.path.realpath(binary)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.split(":", 1)[0]

    assert owner(EngineSettings().binary) == installs[0]
    essential = subprocess.run(
        ["dpkg-query", "-W", "-f=${Essential}", owner("setpriv")], capture_output=True, text=True, timeout=30
    )
    assert essential.stdout == "yes"


# The image's base, python:3.11-slim-bookworm: Debian 12's glibc, and no compiler in either stage.
IMAGE_BASE = "python:3.11-slim-bookworm"
IMAGE_GLIBC = (2, 36)


def installed_wheel_tags(project: str) -> dict[str, list[str]]:
    """Every distribution `project` depends on here (markers and extras evaluated), by name: the tags of the wheel
    it was installed from (a wheel pip built here from an sdist carries a plain `linux_*` tag)."""
    tags: dict[str, list[str]] = {}
    pending = [Requirement(project)]
    while pending:
        requirement = pending.pop()
        name = requirement.name.lower().replace("_", "-")
        if name in tags:
            continue
        distribution = metadata.distribution(name)
        wheel = distribution.read_text("WHEEL") or ""
        tags[name] = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
        for text in distribution.requires or []:
            needed = Requirement(text)
            extras = {"", *requirement.extras}
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                pending.append(needed)
    return tags


def source_builds(tags: Mapping[str, list[str]], python: str, glibc: tuple[int, int]) -> list[str]:
    """The distributions no wheel on the index fits `python` on `glibc` without a compiler: none of their tags is
    pure (`none-any`) or a CPython `manylinux` one no newer than that glibc."""

    def fits(tag: str) -> bool:
        interpreter, abi, platform = tag.split("-")
        if platform == "any":
            return True
        legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
        found = re.fullmatch(r"manylinux_(\d+)_(\d+)_\w+", platform)
        needs = (int(found.group(1)), int(found.group(2))) if found else legacy.get(platform.rsplit("_", 2)[0])
        abi_fits = abi in ("abi3", "none") or abi == python
        return needs is not None and needs <= glibc and abi_fits and int(interpreter[2:]) <= int(python[2:])

    return sorted(name for name, found in tags.items() if not any(fits(tag) for tag in found))


def test_every_dependency_installs_from_a_wheel_the_image_base_takes_without_a_compiler() -> None:
    """The image's build stage collects wheels with `pip wheel` on a slim base that has no compiler: each dependency
    (the PostgreSQL driver's psycopg[binary] included) must come as a wheel for its Python and glibc. Installed
    here from the same index for the same Python, a dependency pip had to build shows a plain linux tag."""
    assert re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE) == [IMAGE_BASE, IMAGE_BASE]
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert IMAGE_BASE.startswith(f"python:{sys.version_info.major}.{sys.version_info.minor}-")
    tags = installed_wheel_tags("wacall")
    ours = {"wacall", "wacall-client"}  # built in the image's first stage from our pure-Python source
    assert {"psycopg", "psycopg-binary", "psycopg-pool", "grpcio", "aiortc"} <= set(tags)
    assert source_builds({k: v for k, v in tags.items() if k not in ours}, python, IMAGE_GLIBC) == []
    # And it would say so: a wheel built here, one for a newer glibc, one for another CPython.
    built_here = {"psycopg-binary": ["cp311-cp311-linux_x86_64"], "av": ["cp311-abi3-manylinux_2_39_x86_64"],
                  "grpcio": ["cp312-cp312-manylinux_2_17_x86_64"], "h11": ["py3-none-any"]}  # fmt: skip
    assert source_builds(built_here, "cp311", IMAGE_GLIBC) == ["av", "grpcio", "psycopg-binary"]


def test_dockerfile_healthcheck_is_python_that_imports_what_the_wheels_install() -> None:
    """The HEALTHCHECK's program compiles and every module it imports is installed with the service."""
    (command,) = re.findall(r"^\s+CMD (\[.+\])$", DOCKERFILE, re.MULTILINE)
    program, code = json.loads(command)[0], json.loads(command)[-1]
    assert program == "python"
    tree = ast.parse(code)
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert modules, code
    for module in sorted(modules):
        assert importlib.util.find_spec(module) is not None, f"the HEALTHCHECK imports {module}, which is not installed"
    http_port = dict(re.findall(r"(WACALL_[A-Z_]+)=(\S+)", DOCKERFILE))["WACALL_HTTP_ADDRESS"].rsplit(":", 1)[1]
    assert f"'http://127.0.0.1:{http_port}/readyz'" in code  # the image's HTTP address, where readiness answers


def healthcheck_program(http_address: str) -> str:
    """The HEALTHCHECK's Python, asking `http_address` instead of the image's."""
    (command,) = re.findall(r"^\s+CMD (\[.+\])$", DOCKERFILE, re.MULTILINE)
    code: str = json.loads(command)[-1]
    return re.sub(r"127\.0\.0\.1:\d+", http_address, code)


async def test_service_starts_from_the_wheels_alone_with_the_image_environment(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    env_lines = dict(re.findall(r"(WACALL_[A-Z_]+)=(\S+)", DOCKERFILE))
    data = tmp_path / "var-lib-wacall"
    data.mkdir()
    environment = {
        **{k: v.replace("/var/lib/wacall", str(data)) for k, v in env_lines.items()},
        # Loopback and free ports instead of the image's 0.0.0.0:50051 / :8080 / :5060.
        "WACALL_GRPC_ADDRESS": "127.0.0.1:0",
        "WACALL_HTTP_ADDRESS": "127.0.0.1:0",
        "WACALL_SIP_ADDRESS": "127.0.0.1:0",
        # Our wheels first; the dependencies from this environment; no site hooks (no editable install).
        "PYTHONPATH": os.pathsep.join([str(wheels["wacall"]), str(wheels["wacall_client"]),
                                       *[p for p in sys.path if p.endswith("site-packages")]]),
        "PATH": os.environ["PATH"],
    }  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-S", "-c", "import sys; from wacall.cli import main; sys.exit(main(['serve']))"],
        cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        match = re.search(r"grpc=(\S+)", banner)
        assert match, process.stderr.read() if process.stderr else banner
        async with grpc.aio.insecure_channel(match.group(1)) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert (data / "wacall.db").exists()
        assert str(data) in banner
        assert re.search(r"sip_tcp=127\.0\.0\.1:\d+ sip_udp=127\.0\.0\.1:\d+ ", banner), banner  # the image's SIP
        http = re.search(r"http=(\S+)", banner)
        assert http, banner
        # The image's HEALTHCHECK passes against the running service (its /readyz answers 200).
        check = [sys.executable, "-c", healthcheck_program(http.group(1))]
        healthy = subprocess.run(check, capture_output=True, text=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    # And fails once nothing answers there.
    assert subprocess.run(check, capture_output=True, timeout=30).returncode != 0
