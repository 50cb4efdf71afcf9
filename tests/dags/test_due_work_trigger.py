"""The due-work watcher on a real PostgreSQL, without Airflow around it: its run() is driven in an
event loop here, the way the triggerer drives it, and the database is written by other
connections the way producers and DAG runs write it.

What it promises: one event for work a run has not been asked to do yet (inserted by any producer,
a RETRY whose run_after arrived, an expired lease), none while that stays so, another once a run
made progress and work remains, a look at the queue on start (catch-up), and a reconnect when its
connection is killed. The notifications it wakes on are one per statement (sql/0006).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator

import psycopg
import pytest

from recon import settings
from recon.db import Database, DatabaseConfigError
from recon.due_work_trigger import DueWorkTrigger, _recon_database_url
from recon.model import TaskStatus
from recon.tracker import DueWork, Outcome, ProcessTracker, read_due_work
from tests.dags.seed import Seed

QUIET_S = 1.5  # how long "no event" is watched for: several debounce periods and queue looks
EVENT_TIMEOUT_S = 10


class Watching:
    """A DueWorkTrigger running in the background of the test's event loop; its events in a queue."""

    def __init__(self, trigger: DueWorkTrigger):
        self.trigger = trigger
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def _pump(self) -> None:
        async for event in self.trigger.run():
            await self.events.put(event.payload)

    async def next_event(self, timeout: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def assert_quiet(self, seconds: float = QUIET_S) -> None:
        with pytest.raises(TimeoutError):
            event = await asyncio.wait_for(self.events.get(), seconds)
            pytest.fail(f"unexpected event {event}")


@contextlib.asynccontextmanager
async def watching(url: str, **kwargs: Any) -> AsyncIterator[Watching]:
    watcher = Watching(DueWorkTrigger(debounce_seconds=0.1, **kwargs))
    task = asyncio.create_task(watcher._pump())
    try:
        await _until_listening(url)
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until_listening(url: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = %s AND state = 'idle'", (settings.DUE_WORK_WATCHER_NAME,))
            if (await cursor.fetchone())[0]:
                return
            await asyncio.sleep(0.05)
    pytest.fail("the watcher did not connect")


def run(scenario: Any) -> None:
    asyncio.run(asyncio.wait_for(scenario, 120))


def test_one_event_per_new_work_and_another_only_after_progress(db_url: str, db: Database):
    seed = Seed(db_url)
    tracker = ProcessTracker(db)

    async def scenario() -> None:
        async with watching(db_url) as watcher:
            await watcher.assert_quiet()  # an empty queue: nothing to do
            first = [seed.stage("acc_bank", "DEBIT", "1.00", "TRANSACTION", f"o-{i}")[1] for i in range(3)]
            event = await watcher.next_event()
            assert event["due_task_id"] in first
            await watcher.assert_quiet()  # still due, but a run was asked for: no second event

            claimed = tracker.claim_batch("PROCESS_STAGING_ENTRY", 1, owner="run-1")  # a run's claim: progress
            event = await watcher.next_event()
            assert event["due_task_id"] in set(first) - {claimed[0].task_id}

            tracker.claim_batch("PROCESS_STAGING_ENTRY", 10, owner="run-2")  # nothing left due
            await watcher.assert_quiet()

    run(scenario())


def test_a_retry_fires_when_its_run_after_arrives(db_url: str, db: Database):
    seed = Seed(db_url)
    _, task_id = seed.stage("acc_bank", "DEBIT", "1.00", "TRANSACTION", "o-retry")
    tracker = ProcessTracker(db)
    tracker.claim_batch("PROCESS_STAGING_ENTRY", 1, owner="run-1")
    tracker.finish([Outcome(task_id, TaskStatus.RETRY, "later", wait_seconds=2.0)], owner="run-1")
    run_after = seed.task(task_id)["run_after"]

    async def scenario() -> None:
        async with watching(db_url) as watcher:
            event = await watcher.next_event()
            fired_at = seed.one("SELECT now()")[0]
            assert event["due_task_id"] == task_id
            assert run_after <= fired_at, "fired before the task was due"
            assert (fired_at - run_after).total_seconds() < 1.0

    run(scenario())


def test_it_catches_up_on_start_and_fires_for_expired_leases(db_url: str, db: Database):
    seed = Seed(db_url)
    _, waiting = seed.stage("acc_bank", "DEBIT", "1.00", "TRANSACTION", "o-before")  # inserted before it listened
    _, crashed = seed.stage("acc_bank", "DEBIT", "2.00", "TRANSACTION", "o-crashed")
    with seed.connect() as c:  # a worker died holding this task's lease
        c.execute("UPDATE process_tracker SET status = 'PROCESSING', lease_owner = 'dead',"
                  " lease_expires_at = now() - interval '1 second' WHERE task_id = %s", (crashed,))

    async def scenario() -> None:
        async with watching(db_url) as watcher:
            event = await watcher.next_event()
            assert event["due_task_id"] == waiting and "lease_expired_at" in event
            await watcher.assert_quiet()

    run(scenario())


def test_it_reconnects_when_its_connection_is_killed(db_url: str, db: Database):
    seed = Seed(db_url)

    async def scenario() -> None:
        async with watching(db_url) as watcher:
            killed = seed.one("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                              " WHERE application_name = %s", settings.DUE_WORK_WATCHER_NAME)[0]
            assert killed == 1
            _, task_id = seed.stage("acc_bank", "DEBIT", "1.00", "TRANSACTION", "o-lost")  # nobody listens now
            event = await watcher.next_event(timeout=15)  # reconnects within seconds and catches up
            assert event["due_task_id"] == task_id

    run(scenario())


def test_work_held_back_indefinitely_is_not_due(db_url: str, db: Database):
    """A task with run_after 'infinity' (the benchmark holds its confirmations back so) reads as not due."""
    seed = Seed(db_url)
    _, task_id = seed.stage("acc_bank", "DEBIT", "1.00", "TRANSACTION", "o-later")
    seed.one("UPDATE process_tracker SET run_after = 'infinity' WHERE task_id = %s RETURNING 1", task_id)

    async def look() -> DueWork:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            return await read_due_work(conn)

    work = asyncio.run(look())
    assert work.head_task_id == task_id and work.head_run_after is None
    assert not work.anything_due and 86_000 < work.seconds_until_change() <= 86_400


def test_one_notification_per_statement_and_none_for_a_rollback(db_url: str):
    with psycopg.connect(db_url, autocommit=True) as listener, psycopg.connect(db_url, autocommit=True) as producer:
        listener.execute(f"LISTEN {settings.DUE_WORK_CHANNEL}")
        producer.execute("INSERT INTO process_tracker (task_type, payload)"
                         " SELECT 'PROCESS_STAGING_ENTRY', '{}' FROM generate_series(1, 5000)")
        with producer.transaction():
            producer.execute("INSERT INTO process_tracker (task_type) VALUES ('PROCESS_STAGING_ENTRY')")
            producer.execute("UPDATE process_tracker SET run_after = now() WHERE status = 'PENDING'")
        with pytest.raises(ZeroDivisionError), producer.transaction():
            producer.execute("INSERT INTO process_tracker (task_type) VALUES ('PROCESS_STAGING_ENTRY')")
            raise ZeroDivisionError  # rolled back: nothing was committed, nothing is sent
        payloads = [n.payload for n in listener.notifies(timeout=1.0)]
    assert payloads == ["INSERT", "INSERT", "UPDATE"]


def test_the_watcher_never_uses_an_embedded_server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RECON_DATABASE_URL", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_RECON_DB", raising=False)
    with pytest.raises(DatabaseConfigError, match="recon_db"):
        _recon_database_url()
