"""Benchmark databases: a server, a migrated template per run, and throw-away copies of it.

Every database the benchmark touches is named ``<prefix>_<role>`` on the server of the
resolved recon database (or ``--server-url``), so it never reads or writes the user's data.
"""

from __future__ import annotations

import time

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from recon.db import Database, ensure_database_exists, libpq_url, resolve_database
from recon.db.migrations import migrate


def default_server_url() -> str:
    """The server of the project's resolved database, as a libpq URL to its `postgres` database."""
    return libpq_url(resolve_database().url, "postgres")


def admin_url(url: str) -> str:
    return libpq_url(url, "postgres")


def database_name(url: str) -> str:
    return make_url(url).database or ""


class Server:
    """CREATE / copy / DROP databases on one PostgreSQL server."""

    def __init__(self, url: str):
        self.admin = admin_url(url)

    def url(self, name: str) -> str:
        return libpq_url(self.admin, name)

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin, autocommit=True)

    def drop(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def create_migrated(self, name: str) -> str:
        """A fresh database with the project's schema (sql/ migrations); returns its URL."""
        self.drop(name)
        ensure_database_exists(self.admin, name)
        db = Database(self.url(name), "bench")
        try:
            migrate(db)
        finally:
            db.dispose()
        return self.url(name)

    def copy(self, template: str, name: str) -> str:
        """A fresh copy of `template` (which must have no open connections); returns its URL."""
        self.drop(name)
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        for attempt in range(20):
            try:
                with self._admin() as conn:
                    conn.execute(statement)
                return self.url(name)
            except psycopg.errors.ObjectInUse:
                # an autovacuum worker or a closing session still holds the template: wait it out
                time.sleep(0.25 * (attempt + 1))
        raise RuntimeError(f"template database {template} stayed busy; cannot copy it to {name}")

    def exists(self, name: str) -> bool:
        with self._admin() as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None

    def ensure(self, name: str) -> str:
        """`name`, created empty unless it exists (kept between runs); returns its URL."""
        ensure_database_exists(self.admin, name)
        return self.url(name)


def vacuum_analyze(url: str) -> None:
    """Settle a freshly generated database: visibility map, hint bits and statistics."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE, FREEZE)")


def with_query(url: str, **params: str) -> str:
    """`url` with extra query parameters (e.g. application_name for one driver's connections)."""
    parsed = make_url(url)
    return parsed.update_query_dict(params).render_as_string(hide_password=False)
