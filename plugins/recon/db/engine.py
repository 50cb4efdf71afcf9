"""Connections to one recon database, and the process-wide default chosen by the resolver.

``default_database()`` is for entry points only (the CLI, DAG task bodies, the UI plugin and
the documented library producers): everything below them receives its ``Database``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext

from recon import settings
from recon.db.resolve import resolve_database, to_sqlalchemy_url

log = logging.getLogger(__name__)


class Database:
    """A SQLAlchemy engine for one recon database, safe to use after fork().

    Every connection carries ``timeouts`` (default: the engine's, ``settings.database_timeouts()``):
    nothing waits forever on a server that does not answer, a locked table, or a runaway query.
    """

    def __init__(
        self,
        url: str | URL,
        source: str = "explicit URL",
        timeouts: settings.DatabaseTimeouts | None = None,
        *,
        pool_size: int = 5,
        max_overflow: int = 5,
        pool_timeout: float = 30,
    ):
        self.url = to_sqlalchemy_url(url) if isinstance(url, str) else url
        self.source = source
        self.timeouts = timeouts or settings.database_timeouts()
        self.engine: Engine = sa.create_engine(
            self.url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout,
            # no server-side prepared statements: after 5 runs PostgreSQL may switch a prepared
            # statement to a generic plan, which guesses 10 rows for unnest() of an id array and
            # turns the engine's bulk statements into nested loops (bench/RESULTS.md)
            connect_args={"prepare_threshold": None, **_timeout_parameters(self.url, self.timeouts)},
        )
        sa.event.listen(self.engine, "handle_error", self._name_the_database)
        # a forked child must not reuse the parent's sockets (Airflow's LocalExecutor forks)
        engine_ref = weakref.ref(self.engine)
        os.register_at_fork(after_in_child=lambda: _dispose_in_child(engine_ref))

    @property
    def display(self) -> str:
        return f"{self.url.render_as_string(hide_password=True)} (from {self.source})"

    def _name_the_database(self, context: ExceptionContext) -> None:
        """A failed connection names the database and where its URL came from, in a note under the
        traceback: a DAG task's log then says "from Airflow connection recon_db" (or the URL)."""
        if context.sqlalchemy_exception is not None and (context.connection is None or context.is_disconnect):
            context.sqlalchemy_exception.add_note(f"recon database: {self.display}")

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One database transaction: commits on success, rolls back on any exception."""
        with self.engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()


class JoinedTransaction(Database):
    """A Database inside a transaction already open on `conn`: each begin() is a savepoint of it, so a
    library function that opens its own transaction commits or rolls back with the caller's.

    The REST API stores an Idempotency-Key's answer this way, in the same transaction as the effect
    it answers (a staging batch, an ingested file): both are committed, or neither.
    """

    def __init__(self, conn: Connection, database: Database):  # no engine of its own
        self.conn = conn
        self.url = database.url
        self.source = database.source
        self.timeouts = database.timeouts
        self.engine = database.engine

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.conn.begin_nested():
            yield self.conn

    def dispose(self) -> None:
        """The connection and its engine belong to the caller."""


# A server that vanishes mid-query (a partition, a dead host) sends no error: TCP keepalives
# notice within idle + interval x count = 60 s (ignored on unix sockets, where it cannot happen).
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def _timeout_parameters(url: URL, timeouts: settings.DatabaseTimeouts) -> dict[str, Any]:
    """libpq parameters for the timeouts. The user's own settings win: ``PGOPTIONS`` and the URL's
    ``options`` come after ours (PostgreSQL keeps the last ``-c`` of a setting; an ``options``
    parameter would otherwise hide PGOPTIONS), and the URL's ``connect_timeout`` is kept."""
    options = f"-c statement_timeout={timeouts.statement * 1000} -c lock_timeout={timeouts.lock * 1000}"
    from_url = url.query.get("options")
    for extra in (os.environ.get("PGOPTIONS"), " ".join(from_url) if isinstance(from_url, tuple) else from_url):
        if extra:
            options += " " + extra
    parameters: dict[str, Any] = {**_KEEPALIVES, "options": options}
    if "connect_timeout" not in url.query:
        parameters["connect_timeout"] = timeouts.connect
    return parameters


def describe_error(exc: BaseException, timeouts: settings.DatabaseTimeouts | None = None) -> str:
    """One line for a user about a database error: the server's first line, and for a timeout the
    setting that bounds it (never the URL or the SQL)."""
    orig = getattr(exc, "orig", None) or exc
    reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    timeouts = timeouts or settings.database_timeouts()
    if isinstance(orig, psycopg.errors.ConnectionTimeout):
        return f"{reason} ({timeouts.setting('connect')}={timeouts.connect})"
    if isinstance(orig, psycopg.errors.LockNotAvailable):
        return f"{reason} ({timeouts.setting('lock')}={timeouts.lock})"
    if isinstance(orig, psycopg.errors.QueryCanceled) and "statement timeout" in reason:
        return f"{reason} ({timeouts.setting('statement')}={timeouts.statement})"
    return reason


def _dispose_in_child(engine_ref: "weakref.ref[Engine]") -> None:
    engine = engine_ref()
    if engine is not None:
        engine.dispose(close=False)


_default: Database | None = None
_default_lock = threading.Lock()


def default_database(allow_embedded: bool = True) -> Database:
    """The database chosen by the resolver, created once per process (entry points only)."""
    global _default
    with _default_lock:
        if _default is None:
            resolved = resolve_database(allow_embedded)
            _default = Database(resolved.url, resolved.source)
            log.info("recon database: %s", _default.display)
        return _default


def reset_default_database() -> None:
    """Forget the cached default (tests and the CLI switch databases through the environment)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.dispose()
        _default = None


def database_now(conn: Connection) -> dt.datetime:
    """The database's clock (the time every row of this transaction is stamped with)."""
    return conn.execute(sa.text("SELECT now()")).scalar_one()
