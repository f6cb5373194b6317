"""A local rtpengine on loopback, started and supervised by wacall.

rtpengine runs as its own process (GPLv3: separate, controlled over UDP). It is started with no system config file
(`--config-file=none`: otherwise it reads /etc/rtpengine/rtpengine.conf, which opens fixed ports and a second
instance collides), userspace forwarding only (`--table=-1`, no kernel module), a free ng port and a media port
range of its own, so several instances run side by side. `LocalEngine` starts it, waits until it answers `ping`,
starts it again with growing pauses if it dies, and stops it with SIGTERM (SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from wacall.media.rtpengine import EngineError, EngineProtocolError, EngineTimeout, NgClient

log = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install --no-install-recommends rtpengine-daemon"

# Media ports come from below Linux's ephemeral range (32768+), where aiortc and other clients take theirs.
PORT_SPACE = (10000, 32767)
STARTUP_PING_TIMEOUT = 0.25


def dying_with_parent(command: list[str]) -> list[str]:
    """The command, run so that the kernel SIGTERMs it when wacall dies: a wacall that is killed (SIGKILL, a crash)
    has no chance to stop its rtpengine, which would run on orphaned. `setpriv` (util-linux) sets the parent-death
    signal and execs the command; no Python runs between fork and exec, which a process with gRPC's threads must not
    do (gRPC's fork handlers abort the child). Without setpriv the command runs as it is."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--", *command] if setpriv else command


class EngineUnavailable(Exception):
    """The local rtpengine cannot be started: the binary is missing, or it exited or stayed silent at start."""


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How to run the local rtpengine. Ports left as None are chosen free at start."""

    binary: str = "rtpengine"
    interface: str = "127.0.0.1"
    ng_port: int | None = None
    port_min: int | None = None
    port_count: int = 2000  # a WebRTC relay call holds 4 ports (2 per side, RTCP's included)
    num_threads: int = 2
    start_timeout: float = 10.0
    stop_grace: float = 5.0
    restart_backoff: Sequence[float] = (0.5, 1.0, 2.0, 5.0, 10.0)
    stable_after: float = 30.0  # a run this long resets the backoff


def engine_command(
    binary: str, *, interface: str, ng_port: int, port_min: int, port_max: int, pidfile: Path, num_threads: int
) -> list[str]:
    """The rtpengine command line: foreground, logging to stderr, no config file, no kernel table."""
    return [
        binary,
        "--config-file=none",
        "--table=-1",
        f"--interface={interface}",
        f"--listen-ng={interface}:{ng_port}",
        f"--port-min={port_min}",
        f"--port-max={port_max}",
        "--foreground",
        "--log-stderr",
        f"--pidfile={pidfile}",
        "--delete-delay=0",  # a deleted call frees its ports at once
        f"--num-threads={num_threads}",
    ]


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def free_port_range(host: str, count: int, *, tries: int = 50) -> int:
    """The first port of `count` consecutive ports in PORT_SPACE whose first, middle and last ports are free (a
    random block, so instances side by side rarely meet; rtpengine skips any port it finds taken)."""
    low, high = PORT_SPACE
    for _ in range(tries):
        start = random.randrange(low, high - count)
        if all(_bindable(host, port) for port in (start, start + count // 2, start + count - 1)):
            return start
    raise EngineUnavailable(f"no free range of {count} UDP ports in {low}-{high}")


class LocalEngine:
    """A supervised local rtpengine. `async with LocalEngine() as engine:` starts it (answering pings) and stops
    it; `engine.client` talks to it. The ng port and the port range stay the same across restarts."""

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._client: NgClient | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self.ng_port = 0
        self.port_min = 0
        self.port_max = 0

    @property
    def client(self) -> NgClient:
        if self._client is None:
            raise RuntimeError("the local rtpengine is not started")
        return self._client

    @property
    def pid(self) -> int | None:
        """The running rtpengine's process id (None while it is down)."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    @property
    def log_path(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("the local rtpengine is not started")
        return Path(self._workdir.name) / "rtpengine.log"

    async def start(self) -> None:
        """Start rtpengine and return once it answers `ping`; `EngineUnavailable` says why it could not."""
        settings = self.settings
        binary = shutil.which(settings.binary)
        if binary is None:
            raise EngineUnavailable(
                f"rtpengine ({settings.binary!r}) is not installed; install it with: {INSTALL_HINT}"
            )
        self._workdir = tempfile.TemporaryDirectory(prefix="wacall-rtpengine-")
        self.ng_port = settings.ng_port or free_udp_port(settings.interface)
        self.port_min = settings.port_min or free_port_range(settings.interface, settings.port_count)
        self.port_max = self.port_min + settings.port_count - 1
        self._client = await NgClient.connect((settings.interface, self.ng_port))
        self._stopping = False
        try:
            await self._launch(binary)
        except BaseException:
            await self.stop()
            raise
        self._supervisor = asyncio.create_task(self._supervise(binary), name="wacall-rtpengine-supervisor")

    async def _launch(self, binary: str) -> None:
        settings = self.settings
        command = engine_command(
            binary,
            interface=settings.interface,
            ng_port=self.ng_port,
            port_min=self.port_min,
            port_max=self.port_max,
            pidfile=self.log_path.with_name("rtpengine.pid"),
            num_threads=settings.num_threads,
        )
        with self.log_path.open("ab") as stderr:
            self._process = await asyncio.create_subprocess_exec(
                *dying_with_parent(command),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + settings.start_timeout
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise EngineUnavailable(
                    f"rtpengine exited with status {self._process.returncode} at start:\n{self._log_tail()}"
                )
            try:
                # Short tries while it starts: it answers about 0.1 s after launch.
                await asyncio.wait_for(self.client.ping(), STARTUP_PING_TIMEOUT)
            except (TimeoutError, EngineTimeout, EngineError, EngineProtocolError, OSError):
                await asyncio.sleep(0.05)
            else:
                # Quiet: a service that fails to start after this must say one thing only (its own error).
                log.debug("rtpengine %s answers on ng port %d", self._process.pid, self.ng_port)
                return
        await self._terminate()
        raise EngineUnavailable(f"rtpengine did not answer ping within {settings.start_timeout} s:\n{self._log_tail()}")

    def _log_tail(self, count: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-count:])
        except OSError:
            return "(no log)"

    async def _supervise(self, binary: str) -> None:
        failures = 0
        while not self._stopping:
            process = self._process
            assert process is not None
            started = time.monotonic()
            status = await process.wait()
            if self._stopping:
                return
            if time.monotonic() - started >= self.settings.stable_after:
                failures = 0
            backoff = self.settings.restart_backoff
            pause = backoff[min(failures, len(backoff) - 1)]
            failures += 1
            log.warning("rtpengine exited with status %s; starting it again in %.1f s", status, pause)
            await asyncio.sleep(pause)
            if self._stopping:
                return
            try:
                await self._launch(binary)
            except (EngineUnavailable, OSError) as error:  # OSError: the binary replaced or gone, no descriptors
                log.error("rtpengine did not come back: %s", error)
                continue  # _process has exited (or was terminated): the loop waits on it and backs off further
            self.restarts += 1

    async def _terminate(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.settings.stop_grace)
        except TimeoutError:
            log.warning("rtpengine %s ignored SIGTERM for %.1f s; killing it", process.pid, self.settings.stop_grace)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def stop(self) -> None:
        """Stop supervising, then stop rtpengine (SIGTERM, SIGKILL after the grace period)."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._terminate()
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    async def __aenter__(self) -> LocalEngine:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()
