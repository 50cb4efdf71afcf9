"""Nothing waits forever on the recon database: connect, statement and lock timeouts (issue 19 item 10).

Each case is a real condition: a socket that accepts and never answers, a table locked by another
session, a statement that runs too long. The CLI cases run `python -m recon` as a user would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from recon import settings
from recon.db import Database
from recon.db.engine import describe_error
from recon.db.migrations import MIGRATION_LOCK_KEY, migrate
from recon.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[1]


def recon_cli(url: str, *args: str, **settings_env: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "RECON_DATABASE_URL": url, "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}", **settings_env}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "recon", *args], env=env, capture_output=True, text=True,
                            timeout=90)  # psycopg's own connect default is 130 s: the old behaviour fails here
    return result, time.monotonic() - started


@pytest.fixture
def silent_server() -> str:
    """A TCP port that completes the handshake (the kernel's backlog) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"postgresql://nobody:pw-hidden@127.0.0.1:{listener.getsockname()[1]}/recon"


def test_a_server_that_never_answers_fails_within_the_connect_timeout(silent_server):
    result, elapsed = recon_cli(silent_server, "tracker", "stats", RECON_DB_CONNECT_TIMEOUT_SECONDS="2")
    assert result.returncode == 2, result.stderr
    assert "cannot use the database" in result.stderr and "RECON_DB_CONNECT_TIMEOUT_SECONDS=2" in result.stderr
    assert "pw-hidden" not in result.stderr and "Traceback" not in result.stderr
    assert elapsed < 30, f"took {elapsed:.0f} s with a 2 s connect timeout"


def test_a_locked_table_fails_within_the_lock_timeout(db_url):
    with psycopg.connect(db_url) as holder:
        holder.execute("LOCK TABLE process_tracker IN ACCESS EXCLUSIVE MODE")  # held until the block ends
        result, elapsed = recon_cli(db_url, "tracker", "stats", RECON_DB_LOCK_TIMEOUT_SECONDS="1")
    assert result.returncode == 2, result.stderr
    assert "canceling statement due to lock timeout (RECON_DB_LOCK_TIMEOUT_SECONDS=1)" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 30, f"took {elapsed:.0f} s with a 1 s lock timeout"


def test_a_runaway_statement_is_cancelled_by_the_statement_timeout(db_url, monkeypatch):
    monkeypatch.setenv("RECON_DB_STATEMENT_TIMEOUT_SECONDS", "1")
    db = Database(db_url)
    try:
        with pytest.raises(sa.exc.OperationalError) as raised:
            with db.begin() as conn:
                conn.execute(sa.text("SELECT pg_sleep(30)"))
        assert isinstance(raised.value.orig, psycopg.errors.QueryCanceled)
        assert describe_error(raised.value).endswith("(RECON_DB_STATEMENT_TIMEOUT_SECONDS=1)")
    finally:
        db.dispose()


def test_every_connection_carries_the_configured_timeouts_and_the_url_may_override(db_url, monkeypatch):
    def shown(database: Database) -> tuple[str, str]:
        try:
            with database.begin() as conn:
                return (conn.execute(sa.text("SHOW statement_timeout")).scalar_one(),
                        conn.execute(sa.text("SHOW lock_timeout")).scalar_one())
        finally:
            database.dispose()

    assert shown(Database(db_url)) == ("5min", "1min")  # the documented defaults
    monkeypatch.setenv("RECON_DB_STATEMENT_TIMEOUT_SECONDS", "0")
    monkeypatch.setenv("RECON_DB_LOCK_TIMEOUT_SECONDS", "7")
    assert shown(Database(db_url)) == ("0", "7s")
    assert shown(Database(db_url, timeouts=settings.web_database_timeouts())) == ("10s", "2s")
    assert shown(Database(f"{db_url}&options=-c%20lock_timeout%3D3s")) == ("0", "3s")
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=4s")  # libpq's own variable is not hidden
    assert shown(Database(f"{db_url}&options=-c%20lock_timeout%3D3s")) == ("4s", "3s")


def test_a_bad_timeout_setting_names_the_variable(db_url, monkeypatch):
    monkeypatch.setenv("RECON_WEB_DB_LOCK_TIMEOUT_SECONDS", "soon")
    with pytest.raises(ConfigurationError, match="RECON_WEB_DB_LOCK_TIMEOUT_SECONDS must be an integer"):
        settings.web_database_timeouts()


def test_migrations_wait_for_another_migrator_beyond_the_lock_timeout(empty_db_url, monkeypatch):
    """The migrator lifts the timeouts for its own session only, and gives the connection back with them."""
    monkeypatch.setenv("RECON_DB_LOCK_TIMEOUT_SECONDS", "1")
    db = Database(empty_db_url, pool_size=1, max_overflow=0)
    result: dict[str, object] = {}
    try:
        with psycopg.connect(empty_db_url, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
            worker = threading.Thread(target=lambda: result.update(applied=migrate(db)))
            worker.start()
            deadline = time.monotonic() + 30
            while not other.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]:
                assert time.monotonic() < deadline, "the migrator never queued for the lock"
                time.sleep(0.05)
            time.sleep(1.5)  # the point of the test: queued longer than the 1 s lock timeout
            other.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        worker.join(timeout=60)
        assert result.get("applied"), result
        with db.begin() as conn:  # the pooled connection has its timeouts back
            assert conn.execute(sa.text("SHOW lock_timeout")).scalar_one() == "1s"
    finally:
        db.dispose()
