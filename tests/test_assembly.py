"""Start-up that fails half way undoes what it set up, in reverse order: nothing is left listening or running."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import pytest
from conftest import eventually, settings_for, start_service, stop_service

from wacall.app import AddressUnavailable, Service


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_busy_grpc_port_after_the_http_server_started_closes_everything_started(tmp_path: Path) -> None:
    http_port = free_port()
    settings = settings_for(tmp_path, http_address=f"127.0.0.1:{http_port}")
    warm = await start_service(settings)  # first-use imports and pools, so that what remains is what start leaked
    await stop_service(warm)
    await eventually(lambda: bindable(http_port), what="the warm-up's HTTP port free")
    threads_before = {t.name for t in threading.enumerate()}
    tasks_before = asyncio.all_tasks()
    fds_before = open_fds()
    with socket.socket() as holder:  # another process's gRPC server, as far as the service can tell
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        service = Service(
            settings_for(tmp_path, http_address=f"127.0.0.1:{http_port}", grpc_address=f"127.0.0.1:{busy}")
        )
        with pytest.raises(AddressUnavailable, match="--grpc-address"):
            await service.start()
    # The HTTP server had started (the simulator points its webhooks at it) before gRPC failed.
    assert service.platform is not None and str(http_port) in service.platform.webhook_url
    assert bindable(http_port)
    await eventually(lambda: {t.name for t in threading.enumerate()} <= threads_before, what="no new threads")
    await eventually(lambda: asyncio.all_tasks() <= tasks_before | {asyncio.current_task()}, what="no new tasks")
    await eventually(lambda: open_fds() <= fds_before, what="no new file descriptors")
    # The store was closed and the ports let go: the same settings start again.
    again = await start_service(settings)
    try:
        assert again.addresses.http == f"127.0.0.1:{http_port}"
        assert (await again.permission()).business_number
    finally:
        await stop_service(again)
