"""A real PgBouncer in transaction mode in front of the tests' PostgreSQL (Debian's package
``pgbouncer``, installed by ``scripts/bootstrap.sh``): what a service calling the real-time path
through a connection pooler has between it and the server."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from growth_assets.db import localpg


def _binary() -> str:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if found is None:
        raise RuntimeError("pgbouncer is not installed (Debian package pgbouncer: scripts/bootstrap.sh installs it)")
    return found


@contextlib.contextmanager
def pgbouncer(server_url: str, *, pool_size: int = 2) -> Iterator[str]:
    """PgBouncer in transaction mode with ``pool_size`` server connections, all open before any
    client is let in, handed out in turn (``server_round_robin``): a client's consecutive
    transactions run on different server connections, as under a busy pooler. Yields the URL of
    ``server_url``'s database through it (the same user, trusted)."""
    server = conninfo_to_dict(server_url)
    tmp = Path(tempfile.mkdtemp(prefix="growth-pgbouncer-"))
    tmp.chmod(0o777)  # the server's user (when root) writes its log and pid here
    port = localpg.free_port()
    (tmp / "userlist.txt").write_text(f'"{server["user"]}" ""\n')
    ini = tmp / "pgbouncer.ini"
    ini.write_text("\n".join([
        "[databases]",
        f"* = host={server.get('host', '127.0.0.1')} port={server['port']}",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1", f"listen_port = {port}", "unix_socket_dir =",
        "auth_type = trust", f"auth_file = {tmp / 'userlist.txt'}", f"admin_users = {server['user']}",
        "pool_mode = transaction", f"default_pool_size = {pool_size}", f"min_pool_size = {pool_size}",
        "server_round_robin = 1", "max_client_conn = 100",
        f"logfile = {tmp / 'pgbouncer.log'}", f"pidfile = {tmp / 'pgbouncer.pid'}", ""]))
    for f in tmp.iterdir():
        f.chmod(0o644)
    proc = subprocess.Popen(localpg._as_server_user([_binary(), str(ini)]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = make_conninfo("", **{**server, "host": "127.0.0.1", "port": str(port)})
    try:
        deadline = time.monotonic() + 30
        while True:  # up, and its pool filled (min_pool_size opens the server connections)
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=2) as c:
                    c.execute("SELECT 1")
                    time.sleep(0.2)
                    with psycopg.connect(make_conninfo(url, dbname="pgbouncer"), autocommit=True,
                                         prepare_threshold=None) as admin:
                        n = sum(1 for r in admin.execute("SHOW SERVERS").fetchall()
                                if r[2] == server.get("dbname"))
                if n >= pool_size:
                    break
            except psycopg.OperationalError:
                if proc.poll() is not None:
                    raise RuntimeError(f"pgbouncer exited: {proc.stderr.read()[-2000:]}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not fill its pool: {(tmp / 'pgbouncer.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

