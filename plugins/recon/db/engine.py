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
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from recon.db.resolve import resolve_database, to_sqlalchemy_url

log = logging.getLogger(__name__)


class Database:
    """A SQLAlchemy engine for one recon database, safe to use after fork()."""

    def __init__(self, url: str | URL, source: str = "explicit URL"):
        self.url = to_sqlalchemy_url(url) if isinstance(url, str) else url
        self.source = source
        self.engine: Engine = sa.create_engine(
            self.url, pool_pre_ping=True, pool_size=5, max_overflow=5,
            # no server-side prepared statements: after 5 runs PostgreSQL may switch a prepared
            # statement to a generic plan, which guesses 10 rows for unnest() of an id array and
            # turns the engine's bulk statements into nested loops (bench/RESULTS.md)
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
