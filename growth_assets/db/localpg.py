"""A throwaway local PostgreSQL cluster (``initdb`` + ``pg_ctl`` on a free port).

Used by the demo and the tests when ``DATABASE_URL`` is unset. ``initdb`` refuses to run
as root, so as root every server command runs as the ``postgres`` system user
(``runuser -u postgres --``) and the data directory is handed to that user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

SERVER_USER = "postgres"
DB_NAME = "growth"


class LocalPgError(RuntimeError):
    pass


def find_bindir() -> Path:
    """PostgreSQL's server binaries: ``PG_BINDIR``, ``pg_config --bindir``, or Debian's layout."""
    from ..settings import Settings

    env = Settings.from_env().pg_bindir
    if env:  # named: that one, or an error (another PostgreSQL found instead ran another version unsaid)
        if (Path(env) / "initdb").exists() and (Path(env) / "pg_ctl").exists():
            return Path(env)
        raise LocalPgError(f"PG_BINDIR={env}: no initdb and pg_ctl there")
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    raise LocalPgError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql "
        "(Debian: apt-get install -y postgresql) or set PG_BINDIR"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` (bound as PostgreSQL binds, SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _own_port(datadir: Path) -> int | None:
    """The port of the server of ``datadir`` if its postmaster runs (postmaster.pid's 4th line)."""
    pidfile = datadir / "postmaster.pid"
    if not pidfile.exists() or not _alive(pidfile):
        return None
    try:
        return int(pidfile.read_text().splitlines()[3])
    except (OSError, IndexError, ValueError):
        return None


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVER_USER, "--", *cmd]
    return cmd


def _run(cmd: list[str], what: str) -> None:
    out = subprocess.run(_as_server_user(cmd), capture_output=True, text=True)
    if out.returncode != 0:
        raise LocalPgError(f"{what} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")


@dataclass
class LocalCluster:
    datadir: Path
    port: int

    @property
    def user(self) -> str:
        import pwd

        return SERVER_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    def url(self, dbname: str = DB_NAME) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    @property
    def logfile(self) -> Path:
        return self.datadir / "server.log"

    def is_running(self) -> bool:
        """Whether this cluster's server answers on its port: the server there must serve this
        data directory (another PostgreSQL may have taken the port since)."""
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2) as c:
                served = c.execute("SHOW data_directory").fetchone()[0]
        except psycopg.Error:
            return False
        return Path(served).resolve() == self.datadir.resolve()

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            bindir = find_bindir()
            _run([str(bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"], "pg_ctl stop")


def ensure_cluster(datadir: Path | str, port: int | None = None) -> LocalCluster:
    """Create (once) and start (if stopped) a cluster in ``datadir``; idempotent.

    The port is chosen once and remembered beside ``datadir`` (``<datadir>.port``). A server of
    ``datadir`` that runs keeps its port; a stopped one whose remembered port another program
    (or another PostgreSQL) took since starts on a free port, remembered instead: the other
    server was taken for this one, or every start failed. The ``growth`` database is created
    if missing. Returns the running cluster.
    """
    datadir = Path(datadir).resolve()
    bindir = find_bindir()
    portfile = datadir.parent / f"{datadir.name}.port"
    if portfile.exists():
        port = int(portfile.read_text().strip())
    running = _own_port(datadir)
    if running is not None:
        port = running
    elif port and not _port_free(port):
        port = None
    port = port or free_port()
    cluster = LocalCluster(datadir, port)
    if not (datadir / "PG_VERSION").exists():
        datadir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(datadir, SERVER_USER, SERVER_USER)
            # the server user must be able to reach its data directory
            for parent in datadir.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    raise LocalPgError(f"{parent} is not traversable by the {SERVER_USER} user")
        datadir.chmod(0o700)
        _run([str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", cluster.user,
              "-E", "UTF8", "--locale=C.UTF-8"], "initdb")
    portfile.write_text(str(port))
    if not cluster.is_running():
        _run([str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(cluster.logfile), "-w", "-t", "60",
              "-o", f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                    "-c max_connections=200",
              "start"], f"pg_ctl start (port {port}; log {cluster.logfile})")
        deadline = time.monotonic() + 30
        while not cluster.is_running():
            if time.monotonic() > deadline:
                raise LocalPgError(f"server did not accept connections; see {cluster.logfile}")
            time.sleep(0.2)
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return cluster


def _alive(pidfile: Path) -> bool:
    """Whether the postmaster of ``pidfile`` (its first line) is a running process."""
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:  # another user's process (the server's, when we are not root)
        return True
    try:  # a killed server nobody reaped yet is a zombie: signals reach it, but it is gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stop_cluster(datadir: Path | str) -> bool:
    """Stop the cluster in ``datadir`` if it runs; True if something was stopped."""
    datadir = Path(datadir).resolve()
    pidfile = datadir / "postmaster.pid"
    if not pidfile.exists() or not _alive(pidfile):
        return False  # never started, or died (pg_ctl stop failed on its stale pid file)
    portfile = datadir.parent / f"{datadir.name}.port"
    port = int(portfile.read_text()) if portfile.exists() else 0
    LocalCluster(datadir, port).stop()
    return True
