"""A real PostgreSQL 15 server for the tests: initdb into a temporary directory, listening on a free loopback port.

Debian's binaries (`/usr/lib/postgresql/15/bin`, the `postgresql-15` package that `make system-deps` installs).
The server refuses to run as root, so as root it runs as the package's `postgres` user (`setpriv`), which owns the
data directory. `fsync` stays on: durability is part of what the tests check. Each test takes a fresh database
(`create_database()`); `stop()` and `start()` make an outage on the same port, `freeze()` and `thaw()` a server
that stops answering without closing its connections.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One cluster in a temporary directory; `url(dbname)` names a database on it."""

    def __init__(self, max_connections: int = 300, shared_buffers: str = "32MB") -> None:
        if not (BIN / "initdb").exists():
            raise RuntimeError(f"{BIN / 'initdb'} is missing: run `make system-deps` (installs postgresql-15)")
        self.root = Path(tempfile.mkdtemp(prefix="wacall-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.sockets.mkdir()
        self.port = _free_port()
        self.max_connections = max_connections
        self.shared_buffers = shared_buffers
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            os.chown(self.sockets, owner.pw_uid, owner.pw_gid)
            self._as_user = ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--clear-groups"]
        self._databases = itertools.count(1)
        self._run(BIN / "initdb", "-D", self.data, "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-instructions")
        self.start()

    def _run(self, *command: object) -> None:
        subprocess.run(
            [*self._as_user, *map(str, command)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=on "
            f"-c max_connections={self.max_connections} -c shared_buffers={self.shared_buffers}"
        )
        self._run(BIN / "pg_ctl", "start", "-w", "-t", "60", "-D", self.data, "-l", self.root / "log", "-o", options)

    def stop(self) -> None:
        """Stop the server now (fast shutdown: clients are disconnected, nothing committed is lost)."""
        self._run(BIN / "pg_ctl", "stop", "-w", "-m", "fast", "-D", self.data)

    def pids(self) -> list[int]:
        """The postmaster's pid and its children's (the backends and auxiliary processes)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the process ended meanwhile
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *children]

    def freeze(self) -> list[int]:
        """SIGSTOP the whole server: its sockets stay open and the kernel still acknowledges what is sent, but nothing
        answers (a frozen host, a partition without a reset). Returns the pids for `thaw`."""
        pids = self.pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self, pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"test_{next(self._databases)}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)
