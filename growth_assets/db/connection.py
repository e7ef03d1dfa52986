"""Connections to the project's PostgreSQL: one place that knows how to open them.

The project's own tables live in their own schema (``GROWTH_DB_SCHEMA``, default ``growth``),
apart from the platform's tables and from Dagster's storage: every connection opened here puts
that schema first on its ``search_path``, ahead of the one the URL asks for (``public`` when
it asks for none), so the project's tables are found in their schema and the platform's
(``mirt_ability``, ``weekly_kpi``, ...) where the platform keeps them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..settings import Settings, check_schema, libpq_options


class DatabaseNotConfigured(RuntimeError):
    pass


def database_url(url: str | None = None) -> str:
    url = url or Settings.from_env().database_url
    if not url:
        raise DatabaseNotConfigured(
            "DATABASE_URL is not set (for a local database: `growth-assets db start` prints one)"
        )
    return url


# SQL: the project's schema (parameter ``schema``, a quoted identifier) first on the search_path
# for the rest of the current transaction, ahead of whatever path the session had
SCHEMA_FIRST = "set_config('search_path', %(schema)s || ', ' || current_setting('search_path'), true)"

# a search_path in libpq's options, in every form the server takes: "-c search_path=x", "-csearch_path=x"
# or "--search_path=x" (also "--search-path=x"), the name in any case
_SEARCH_PATH = re.compile(r"(?:-c\s*|--)search[_-]path\s*=\s*(\S+)", re.IGNORECASE)


def with_schema_options(options: str, schema: str) -> str:
    """libpq ``options`` with ``schema`` first on the search_path: prepended to a search_path
    the options already set (unless it is first there already), else ``schema,public``."""
    m = _SEARCH_PATH.search(options)
    if not m:
        return f"{options} -c search_path={schema},public".strip()
    path = [p.strip() for p in m.group(1).replace("\\,", ",").split(",") if p.strip()]
    if path and path[0].strip('"') == schema:
        return options
    return options[:m.start()] + f"-c search_path={','.join([schema, *path])}" + options[m.end():]


def project_conninfo(url: str | None = None, schema: str | None = None, **kwargs) -> str:
    """The connection string of ``url`` (DATABASE_URL when None) with the project's schema first
    on its search_path; ``kwargs`` are libpq parameters (an ``options`` given here is merged)."""
    schema = check_schema(schema or Settings.from_env().db_schema)
    url = database_url(url)
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:  # libpq quotes the part it refused: the password, in a run's log
        raise psycopg.ProgrammingError(f"DATABASE_URL: {without_password(str(e), url)}") from None
    extra = kwargs.pop("options", "")
    params.update(kwargs)
    # libpq reads PGOPTIONS only when the string has no options: writing ours must keep them
    base = params["options"] if "options" in params else libpq_options()
    params["options"] = with_schema_options(f"{base} {extra}".strip(), schema)
    # the project's text goes to and from the server as UTF-8 (binary COPY writes it so, the
    # panel's ids are read so); a database in another encoding converts it
    params["client_encoding"] = "UTF8"
    return make_conninfo("", **params)


def without_password(text: str, url: str | None) -> str:
    """``text`` with ``url``'s password (as written, and decoded) and any ``password=`` value
    replaced by ``***``."""
    from urllib.parse import unquote, urlsplit

    try:
        raw = urlsplit(url).password if url and "://" in url else None
    except ValueError:
        raw = None
    for secret in {raw, unquote(raw) if raw else None} - {None, ""}:
        text = text.replace(secret, "***")
    # a URL that urlsplit cannot read (an unclosed IPv6 bracket) is quoted whole by libpq: its
    # user:password@ goes by its shape
    text = re.sub(r"(://[^:/@\s\"']*:)[^@\s\"']*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text)


@contextmanager
def connect(url: str | None = None, *, schema: str | None = None, autocommit: bool = False,
            **kwargs) -> Iterator[psycopg.Connection]:
    """A connection that commits on success and rolls back on error, then closes, with the
    project's schema first on its search_path."""
    with psycopg.connect(project_conninfo(url, schema, **kwargs), autocommit=autocommit) as conn:
        yield conn


# what a connection's second connection must take over to read as the first does (``in_snapshot``):
# its role (a session's SET ROLE) and its search_path (SET after connecting, or a call's own),
# neither of which its connection string carries; read on the first, with the exported snapshot
EXPORT_SNAPSHOT = "SELECT pg_export_snapshot(), current_user, current_setting('search_path')"


@contextmanager
def in_snapshot(conninfo: str, password: str | None, snapshot: str, *, read_only: bool = True,
                role: str | None = None, search_path: str | None = None) -> Iterator[psycopg.Connection]:
    """A second connection to a connection's database (the first one's ``info.dsn`` and
    ``info.password``, read by the thread that uses the first one: libpq's connection is not
    for two threads at once), in a read-only transaction that sees exactly ``snapshot``
    (``pg_export_snapshot()`` of a transaction of the first one's, open for as long as this one
    needs it): two server processes read one state of the database at once. Closed when the
    block ends. Connecting can fail (a pooler that keeps one server connection per client, a
    server at max_connections): psycopg's error, for the caller to read on the first
    connection alone. ``read_only=False``: a transaction that may write its own temporary
    tables (PostgreSQL refuses CREATE TABLE AS in a read-only one); it writes nothing else.
    ``role``, ``search_path`` (``EXPORT_SNAPSHOT``'s): the first one's, taken for this
    transaction, so that both read the same tables with the same rights (a role the login may
    not take is psycopg's InsufficientPrivilege)."""
    with psycopg.connect(conninfo, password=password, autocommit=True) as other, \
            other.transaction():
        other.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ" + (", READ ONLY" if read_only else ""))
        other.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        if role is not None or search_path is not None:
            other.execute("SELECT set_config('role', coalesce(%s, current_user), true),"
                          " set_config('search_path', coalesce(%s, current_setting('search_path')), true)",
                          (role, search_path))
        yield other


@contextmanager
def get_session(url: str | None = None) -> Iterator[psycopg.Connection]:
    """A session on ``DATABASE_URL`` for callers of ``growth_assets.metrics``.

    The session is a psycopg 3 connection: committed when the block ends normally, rolled
    back when it raises. Connecting gives up after ``DATABASE_CONNECT_TIMEOUT_SECS``, and
    every statement after ``DATABASE_STATEMENT_TIMEOUT_MS`` (waiting for a lock: after
    ``DATABASE_LOCK_TIMEOUT_MS``): an unreachable or stuck database is an error, not a hang.
    """
    s = Settings.from_env()
    options = f"-c statement_timeout={s.db_statement_timeout_ms} -c lock_timeout={s.db_lock_timeout_ms}"
    with connect(url, connect_timeout=s.db_connect_timeout_secs, options=options) as conn:
        yield conn
