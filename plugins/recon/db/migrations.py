"""Apply the ordered SQL files in ``sql/`` once each, recording them in recon_schema_migrations.

Safe to run from several processes at once: a transaction-scoped advisory lock serialises
them, and each file is applied in its own transaction together with its version row.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from recon import settings
from recon.db.engine import Database
from recon.errors import MigrationError

log = logging.getLogger(__name__)

SQL_DIR = settings.PROJECT_ROOT / "sql"
MIGRATION_LOCK_KEY = 0x7265636F6E  # "recon": one advisory lock id for all migrators
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files are named NNNN_description.sql")
        migrations.append(Migration(match.group(1), path.name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {sql_dir}: {versions}")
    return migrations


def applied_versions(db: Database) -> dict[str, str]:
    with db.begin() as conn:
        if not _table_exists(conn):
            return {}
        rows = conn.execute(sa.text("SELECT version, checksum FROM recon_schema_migrations"))
        return dict(rows.all())


def migrate(db: Database, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date).

    One session-level advisory lock covers the whole run, so concurrent migrators queue up
    and the first applies every pending file while the others find nothing left to do.
    Each file commits in its own transaction together with its version row.
    """
    migrations = load_migrations(sql_dir)
    applied: list[str] = []
    with db.engine.connect() as conn:
        # no statement or lock timeout for this session: an index on a large table takes as long
        # as it takes, and a second migrator waits for the first however long it runs
        conn.execute(sa.text("SET statement_timeout = 0"))
        conn.execute(sa.text("SET lock_timeout = 0"))
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        conn.commit()
        try:
            for migration in migrations:
                if _apply(conn, migration):
                    applied.append(migration.name)
                    log.info("applied migration %s", migration.name)
        finally:
            conn.rollback()  # a failed file leaves its transaction aborted
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            conn.execute(sa.text("RESET statement_timeout"))  # back to the connection's own timeouts
            conn.execute(sa.text("RESET lock_timeout"))
            conn.commit()
    return applied


def _apply(conn: sa.Connection, migration: Migration) -> bool:
    """Apply one file in its own transaction unless already recorded; True when applied."""
    with conn.begin():
        conn.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS recon_schema_migrations ("
                " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        )
        row = conn.execute(
            sa.text("SELECT checksum FROM recon_schema_migrations WHERE version = :v"),
            {"v": migration.version},
        ).first()
        if row is not None:
            if row.checksum != migration.checksum:
                log.warning("migration %s changed after it was applied", migration.name)
            return False
        conn.exec_driver_sql(migration.sql)
        conn.execute(
            sa.text("INSERT INTO recon_schema_migrations (version, name, checksum) VALUES (:v, :n, :c)"),
            {"v": migration.version, "n": migration.name, "c": migration.checksum},
        )
        return True


def _table_exists(conn: sa.Connection) -> bool:
    return bool(conn.execute(sa.text("SELECT to_regclass('recon_schema_migrations') IS NOT NULL")).scalar())
