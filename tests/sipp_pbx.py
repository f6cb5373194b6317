"""A PBX played by SIPp (Debian `sip-tester`) running one of the UAS scenarios in `tests/assets/sipp/`, on a free
port of its own; the tests ask for its SIP URI and, when it is over, how SIPp judged the call."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from test_sipio_sipp import free_port

SCENARIOS = Path(__file__).parent / "assets" / "sipp"


@dataclass
class SippPbx:
    """A running SIPp UAS: `uri` is where to send the INVITE."""

    process: asyncio.subprocess.Process
    port: int
    transport: str

    @property
    def uri(self) -> str:
        suffix = "" if self.transport == "UDP" else ";transport=tcp"
        return f"sip:contact-centre@127.0.0.1:{self.port}{suffix}"

    async def outcome(self, timeout: float = 20.0) -> tuple[int, str]:
        """SIPp's exit status (0: every call ran its scenario to the end) and what it printed on stderr."""
        _out, err = await asyncio.wait_for(self.process.communicate(), timeout)
        assert self.process.returncode is not None
        return self.process.returncode, err.decode(errors="replace")[-2000:]


@contextlib.asynccontextmanager
async def sipp_pbx(
    scenario: str,
    workdir: Path,
    *,
    rtp_port: int | None = None,
    hold_ms: int = 1000,
    transport: str = "UDP",
    calls: int = 1,
) -> AsyncIterator[SippPbx]:
    """SIPp playing `scenario` (a file in tests/assets/sipp) for `calls` calls; killed at the end if still running.
    `rtp_port` is where its SDP says its RTP goes (a socket the test owns) in the scenarios that answer, `hold_ms`
    how long pbx_hangs_up.xml keeps an answered call before it hangs up itself."""
    sipp = shutil.which("sipp")
    assert sipp is not None, "SIPp is needed: apt-get install sip-tester (make system-deps installs it as root)"
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sipp,
        *("-sf", str(SCENARIOS / scenario)),
        *("-t", "u1" if transport == "UDP" else "t1", "-i", "127.0.0.1", "-p", str(port)),
        *("-m", str(calls), "-d", str(hold_ms)),
        *(("-set", "rtp_port", str(rtp_port)) if rtp_port is not None else ()),
        *("-nostdin", "-timeout", "30s"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=workdir,
    )
    try:
        await _bound(port, transport, process)
        yield SippPbx(process, port, transport)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _bound(port: int, transport: str, process: asyncio.subprocess.Process) -> None:
    """Wait until SIPp holds its port (the port cannot be bound any more)."""
    kind = socket.SOCK_DGRAM if transport == "UDP" else socket.SOCK_STREAM
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.returncode is None:
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"SIPp did not bind 127.0.0.1:{port}")
