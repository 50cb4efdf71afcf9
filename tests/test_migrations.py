"""Migrations: the schema contract, idempotence, concurrent migrators, and `python -m recon db migrate`."""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from recon import settings
from recon.db import Database
from recon.db.migrations import (
    MIGRATION_LOCK_KEY,
    SQL_DIR,
    MigrationError,
    applied_versions,
    load_migrations,
    migrate,
)
from recon.tracker import _NEXT_DUE

pytestmark = pytest.mark.external_ok

# Table and column names are a contract with other tools (issue #2); extra columns are fine.
CONTRACT = {
    "merchant_accounts": "merchant_id merchant_name created_at updated_at",
    "accounts": "account_id merchant_id account_name account_type currency initial_balance created_at updated_at",
    "recon_rules": "id merchant_id account_one_id account_two_id created_at updated_at",
    "staging_entries": "staging_entry_id account_id entry_type amount currency status processing_mode"
                       " effective_date metadata discarded_at created_at updated_at",
    "transactions": "transaction_id logical_transaction_id version amount currency merchant_id status metadata"
                    " discarded_at created_at updated_at",
    "entries": "entry_id account_id transaction_id entry_type amount currency status effective_date metadata"
               " discarded_at created_at updated_at",
    "process_tracker": "task_id task_type payload status attempts last_error created_at updated_at"
                       " processing_started_at completed_at",
}
PRIMARY_KEYS = {
    "merchant_accounts": "merchant_id", "accounts": "account_id", "recon_rules": "id",
    "staging_entries": "staging_entry_id", "transactions": "transaction_id", "entries": "entry_id",
    "process_tracker": "task_id",
}
ENUMS = {
    ("accounts", "account_type"): {"DEBIT_NORMAL", "CREDIT_NORMAL"},
    ("staging_entries", "entry_type"): {"DEBIT", "CREDIT"},
    ("entries", "entry_type"): {"DEBIT", "CREDIT"},
    ("entries", "status"): {"EXPECTED", "POSTED", "ARCHIVED"},
    ("transactions", "status"): {"EXPECTED", "POSTED", "MISMATCH", "ARCHIVED"},
    ("staging_entries", "status"): {"PENDING", "NEEDS_MANUAL_REVIEW", "PROCESSED"},
    ("staging_entries", "processing_mode"): {"CONFIRMATION", "TRANSACTION", "SETTLEMENT"},  # SETTLEMENT: sql/0035
    ("process_tracker", "task_type"): {"PROCESS_STAGING_ENTRY"},
    ("process_tracker", "status"): {"PENDING", "PROCESSING", "COMPLETED", "FAILED", "RETRY"},
}
MONEY = [("accounts", "initial_balance"), ("staging_entries", "amount"), ("transactions", "amount"),
         ("entries", "amount")]


def rows(db: Database, statement: str, **params) -> list[sa.Row]:
    with db.begin() as conn:
        return conn.execute(sa.text(statement), params).all()


@pytest.fixture
def empty_db(empty_db_url: str):
    database = Database(empty_db_url, "test")
    yield database
    database.dispose()


# ---- migrating ------------------------------------------------------------------------------------------


def test_migrate_on_an_empty_database_creates_the_contract_and_records_versions(empty_db):
    migrations = load_migrations()
    assert migrations, "sql/ holds at least the schema"
    assert applied_versions(empty_db) == {}

    assert migrate(empty_db) == [m.name for m in migrations]

    columns = rows(empty_db, "SELECT table_name, column_name FROM information_schema.columns"
                             " WHERE table_schema = current_schema()")
    actual: dict[str, set[str]] = {}
    for table, column in columns:
        actual.setdefault(table, set()).add(column)
    for table, expected in CONTRACT.items():
        missing = set(expected.split()) - actual.get(table, set())
        assert not missing, f"{table} lacks {sorted(missing)}"
    assert applied_versions(empty_db) == {m.version: m.checksum for m in migrations}
    recorded = rows(empty_db, "SELECT version, name, applied_at FROM recon_schema_migrations ORDER BY version")
    assert [(r.version, r.name) for r in recorded] == [(m.version, m.name) for m in migrations]


def test_a_second_migrate_applies_nothing_and_keeps_the_data(empty_db):
    migrate(empty_db)
    with empty_db.begin() as conn:
        conn.execute(sa.text("INSERT INTO merchant_accounts (merchant_name) VALUES ('Acme')"))
    assert migrate(empty_db) == []
    assert rows(empty_db, "SELECT merchant_name FROM merchant_accounts")[0][0] == "Acme"
    assert len(rows(empty_db, "SELECT * FROM recon_schema_migrations")) == len(load_migrations())


def _migrate_in_subprocess(url: str) -> list[str]:
    """Runs in a spawned process: its own engine, its own connections."""
    database = Database(url, "test subprocess")
    try:
        return migrate(database)
    finally:
        database.dispose()


def _wait_for(condition, timeout: float, what: str) -> None:
    """Poll an observable condition (not a guessed delay) until it holds or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_concurrent_migrators_serialise_on_the_advisory_lock_and_apply_once(empty_db_url, empty_db):
    """Three processes start migrating while we hold the migration lock; once all three are
    provably waiting on it we release it: exactly one applies the schema, the others nothing."""
    workers = 3
    with psycopg.connect(empty_db_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))

        def waiting_migrators() -> int:
            return holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()[0]

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.map_async(_migrate_in_subprocess, [empty_db_url] * workers)
            _wait_for(lambda: waiting_migrators() == workers, 60, "all migrators to wait on the lock")
            assert applied_versions(empty_db) == {}  # nobody got past the lock
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            applied = results.get(timeout=120)

    names = [m.name for m in load_migrations()]
    assert sorted(applied, key=len) == [[]] * (workers - 1) + [names]
    assert len(rows(empty_db, "SELECT * FROM recon_schema_migrations")) == len(names)


def test_only_new_migration_files_are_applied_in_order(empty_db, tmp_path):
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    shutil.copy(SQL_DIR / "0001_schema.sql", sql_dir)
    assert migrate(empty_db, sql_dir) == ["0001_schema.sql"]
    (sql_dir / "0003_more.sql").write_text("ALTER TABLE extra ADD COLUMN y int;")
    (sql_dir / "0002_extra.sql").write_text("CREATE TABLE extra (x int);")
    assert migrate(empty_db, sql_dir) == ["0002_extra.sql", "0003_more.sql"]
    assert migrate(empty_db, sql_dir) == []
    assert set(applied_versions(empty_db)) == {"0001", "0002", "0003"}


def test_a_failing_migration_leaves_no_trace(empty_db, tmp_path):
    """Each file and its version row commit together: a broken file changes nothing."""
    (tmp_path / "0001_broken.sql").write_text("CREATE TABLE half_done (x int); SELECT 1 / 0;")
    with pytest.raises(sa.exc.DataError):
        migrate(empty_db, tmp_path)
    assert rows(empty_db, "SELECT to_regclass('half_done') IS NULL")[0][0]
    assert applied_versions(empty_db) == {}


def test_an_edited_migration_is_reported_not_reapplied(empty_db, tmp_path, caplog):
    path = tmp_path / "0001_small.sql"
    path.write_text("CREATE TABLE small (x int);")
    migrate(empty_db, tmp_path)
    path.write_text("CREATE TABLE small (x int, y int);")
    with caplog.at_level("WARNING", logger="recon.db.migrations"):
        assert migrate(empty_db, tmp_path) == []
    assert "0001_small.sql changed after it was applied" in caplog.text


@pytest.mark.parametrize("bad_name", ["schema.sql", "1_schema.sql", "0001-schema.sql", "0001_Schema.sql"])
def test_badly_named_migration_files_are_refused(tmp_path, bad_name):
    (tmp_path / bad_name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_description.sql"):
        load_migrations(tmp_path)


def test_duplicate_versions_are_refused(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="duplicate"):
        load_migrations(tmp_path)


# ---- the schema contract (the migrated per-test database) ---------------------------------------------------


def test_ids_are_text_with_database_defaults(db):
    for table, column in PRIMARY_KEYS.items():
        [(data_type, default)] = rows(
            db, "SELECT data_type, column_default FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = :t AND column_name = :c",
            t=table, c=column)
        assert data_type == "text" and default, f"{table}.{column}"


def test_money_is_numeric_and_timestamps_are_timestamptz(db):
    types = {(t, c): d for t, c, d in rows(
        db, "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema()")}
    for key in MONEY:
        assert types[key] == "numeric", key
    for table, columns in CONTRACT.items():
        for column in columns.split():
            if column.endswith("_at") or column == "effective_date":
                assert types[(table, column)] == "timestamp with time zone", (table, column)


def test_enumerations_allow_exactly_the_contract_values(db):
    for (table, column), expected in ENUMS.items():
        definitions = rows(
            db,
            """SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
               JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
               WHERE c.contype = 'c' AND c.conrelid = CAST(:t AS regclass)
                 AND cardinality(c.conkey) = 1 AND a.attname = :c""",
            t=table, c=column)
        assert len(definitions) == 1, (table, column, definitions)
        assert set(re.findall(r"'([A-Z_]+)'", definitions[0][0])) == expected, (table, column)


def test_foreign_keys_follow_the_model(db):
    references = set(rows(
        db, "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint WHERE contype = 'f'"))
    assert {
        ("accounts", "merchant_accounts"),
        ("recon_rules", "merchant_accounts"),
        ("recon_rules", "accounts"),
        ("staging_entries", "accounts"),
        ("transactions", "merchant_accounts"),
        ("entries", "accounts"),
        ("entries", "transactions"),
    } <= references


def test_unique_versions_and_recon_rules(db):
    unique_column_sets = {(table, tuple(cols)) for table, cols in rows(
        db,
        """SELECT i.indrelid::regclass::text, array_agg(a.attname ORDER BY k.ord)
           FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indisunique GROUP BY i.indexrelid, i.indrelid""")}
    assert ("transactions", ("logical_transaction_id", "version")) in unique_column_sets
    assert ("recon_rules", ("account_one_id", "account_two_id")) in unique_column_sets


def test_every_contract_table_touches_updated_at_on_update(db):
    triggered = {r[0] for r in rows(
        db, "SELECT tgrelid::regclass::text FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
            " WHERE NOT t.tgisinternal AND p.proname = 'recon_touch_updated_at'")}
    assert set(CONTRACT) <= triggered


def test_process_tracker_has_status_type_and_created_at_indexes(db):
    leading = {r[0] for r in rows(
        db, "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            " WHERE i.indrelid = 'process_tracker'::regclass")}
    assert {"status", "task_type", "created_at"} <= leading


def test_finding_the_oldest_due_tasks_is_an_ordered_index_scan(db):
    """A large history and a large backlog enqueued in one transaction (one run_after for all):
    the claim index must hand out the oldest due tasks in order, without a scan or a sort."""
    with db.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO process_tracker (task_type, payload, status, completed_at)"
            " SELECT 'PROCESS_STAGING_ENTRY', '{}', 'COMPLETED', now() FROM generate_series(1, 20000)"))
        conn.execute(sa.text(
            "INSERT INTO process_tracker (task_type, payload)"
            " SELECT 'PROCESS_STAGING_ENTRY', '{}' FROM generate_series(1, 20000)"))
        conn.execute(sa.text("ANALYZE process_tracker"))
    with db.begin() as conn:
        plan = "\n".join(conn.execute(
            sa.text("EXPLAIN " + _NEXT_DUE.text), {"task_type": "PROCESS_STAGING_ENTRY", "limit": 10}).scalars())
    assert "process_tracker_claim_idx" in plan, plan
    assert "Seq Scan" not in plan and "Sort" not in plan, plan


# ---- the command line ---------------------------------------------------------------------------------------


def run_cli(*args: str, database_url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_RECON_DB"}
    env["RECON_DATABASE_URL"] = database_url
    env["PYTHONPATH"] = os.pathsep.join([str(settings.PROJECT_ROOT / "plugins"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "recon", *args], env=env, capture_output=True, text=True, timeout=120,
        cwd=Path(settings.PROJECT_ROOT),
    )


def test_recon_db_migrate_command(empty_db_url, empty_db):
    first = run_cli("db", "migrate", database_url=empty_db_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "applied: " + ", ".join(m.name for m in load_migrations())
    url = make_url(empty_db_url)
    assert f"recon: database postgresql+psycopg://" in first.stderr
    assert f"/{url.database}" in first.stderr and "(from RECON_DATABASE_URL)" in first.stderr
    if url.password:  # the test server may have none; test_db covers the display with one
        assert url.password not in first.stdout + first.stderr
    assert "Traceback" not in first.stderr

    second = run_cli("db", "migrate", database_url=empty_db_url)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "schema is up to date"
    assert set(applied_versions(empty_db)) == {m.version for m in load_migrations()}
