"""The Process Tracker API against a real PostgreSQL database (one fresh database per test).

Time is moved with SQL (run_after / lease_expires_at set in the past) instead of sleeping,
so every test is deterministic and fast.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import sqlalchemy as sa

from recon import tracker as tracker_module
from recon.db import Database
from recon.settings import RetryPolicy
from recon.tracker import (
    MAX_ERROR_LENGTH,
    Outcome,
    ProcessTracker,
    Task,
    TaskNotFoundError,
    TaskStatus,
    TaskType,
)

pytestmark = pytest.mark.external_ok

T = "PROCESS_STAGING_ENTRY"


# ---- helpers ----------------------------------------------------------------------------------


def sql(db: Database, statement: str, **params) -> list[sa.Row]:
    """Run one statement in its own transaction; return its rows (if any)."""
    with db.begin() as conn:
        result = conn.execute(sa.text(statement), params)
        return result.all() if result.returns_rows else []


def make_due(db: Database, task_ids: list[str]) -> None:
    """Move run_after into the past: a RETRY task waiting for its backoff becomes due now."""
    sql(db, "UPDATE process_tracker SET run_after = now() - interval '1 second' WHERE task_id = ANY(:ids)",
        ids=task_ids)


def expire_leases(db: Database, task_ids: list[str]) -> None:
    """Pretend the workers holding these claims died: their leases ran out a minute ago."""
    sql(db, "UPDATE process_tracker SET lease_expires_at = now() - interval '1 minute'"
            " WHERE task_id = ANY(:ids)", ids=task_ids)


def entry_tasks(tracker: ProcessTracker, n: int, prefix: str = "stg") -> list[Task]:
    return tracker.create_tasks(T, [{"staging_entry_id": f"{prefix}_{i}"} for i in range(n)])


def ids_of(tasks: list[Task]) -> list[str]:
    return [t.task_id for t in tasks]


def count_tasks(db: Database) -> int:
    return sql(db, "SELECT count(*) FROM process_tracker")[0][0]


@pytest.fixture
def offline_tracker() -> ProcessTracker:
    """A tracker whose database refuses connections: any query would raise OperationalError,
    so a ValueError proves the argument was rejected before the database was touched."""
    return ProcessTracker(Database("postgresql://nobody@127.0.0.1:1/nowhere"), RetryPolicy())


# ---- create_task / create_tasks ---------------------------------------------------------------


def test_create_task_is_pending_with_zero_attempts(tracker):
    task = tracker.create_task(T, {"staging_entry_id": "stg_1", "note": "ü"})
    assert task.task_type == "PROCESS_STAGING_ENTRY"
    assert task.status == "PENDING" and task.status is not None
    assert task.attempts == 0
    assert task.payload == {"staging_entry_id": "stg_1", "note": "ü"}
    assert task.task_id.startswith("task_")
    assert task.last_error is None
    assert task.processing_started_at is None and task.completed_at is None
    assert task.lease_owner is None and task.lease_expires_at is None
    assert task.created_at.tzinfo is not None
    assert tracker.get_task(task.task_id) == task


def test_create_task_accepts_the_enum_as_well_as_the_string(tracker):
    task = tracker.create_task(TaskType.PROCESS_STAGING_ENTRY, {"staging_entry_id": "stg_1"})
    assert task.task_type == T


def test_create_tasks_inserts_all_in_input_order(tracker, db):
    tasks = entry_tasks(tracker, 50)
    assert [t.payload["staging_entry_id"] for t in tasks] == [f"stg_{i}" for i in range(50)]
    assert len(set(ids_of(tasks))) == 50
    assert count_tasks(db) == 50
    assert tracker.create_tasks(T, []) == []


@pytest.mark.parametrize("bad_type", ["process_staging_entry", "SEND_EMAIL", "", None, 1])
def test_unknown_task_type_raises_value_error_before_touching_the_database(offline_tracker, bad_type):
    with pytest.raises(ValueError, match="unknown task_type .*PROCESS_STAGING_ENTRY"):
        offline_tracker.create_task(bad_type, {"staging_entry_id": "stg_1"})
    with pytest.raises(ValueError, match="unknown task_type"):
        offline_tracker.create_tasks(bad_type, [{"staging_entry_id": "stg_1"}])
    with pytest.raises(ValueError, match="unknown task_type"):
        offline_tracker.get_next_pending_task(bad_type)
    with pytest.raises(ValueError, match="unknown task_type"):
        offline_tracker.claim_batch(bad_type, 10, 60, owner="w")


def test_offline_tracker_really_is_offline(offline_tracker):
    """Guards the test above: with valid arguments the same tracker fails on the connection."""
    with pytest.raises(sa.exc.OperationalError):
        offline_tracker.create_task(T, {"staging_entry_id": "stg_1"})


@pytest.mark.parametrize(
    "bad_payload", [["staging_entry_id", "x"], "staging_entry_id=x", None, 42, {"x": float("nan")}, {"x": object()}]
)
def test_payload_must_be_a_json_object(offline_tracker, bad_payload):
    with pytest.raises(ValueError, match="payload #0"):
        offline_tracker.create_task(T, bad_payload)


def test_one_bad_payload_in_a_bulk_create_inserts_nothing(tracker, db):
    with pytest.raises(ValueError, match="payload #1"):
        tracker.create_tasks(T, [{"staging_entry_id": "stg_ok"}, ["not", "a", "dict"]])
    assert count_tasks(db) == 0


def test_create_task_joins_the_callers_transaction(tracker, db):
    """One outcome, one transaction: a producer's rollback takes the task with it."""
    with pytest.raises(RuntimeError):
        with db.begin() as conn:
            tracker.create_task(T, {"staging_entry_id": "stg_1"}, conn=conn)
            raise RuntimeError("producer failed after enqueueing")
    assert count_tasks(db) == 0


# ---- the schema as producers see it -------------------------------------------------------------


def test_plain_sql_insert_enqueues_a_claimable_pending_task(tracker, db):
    sql(db, """INSERT INTO process_tracker (task_type, payload)
               VALUES ('PROCESS_STAGING_ENTRY', '{"staging_entry_id": "x"}')""")
    task = tracker.get_next_pending_task(T)
    assert task is not None
    assert (task.status, task.attempts, task.payload) == ("PENDING", 0, {"staging_entry_id": "x"})
    assert task.task_id.startswith("task_")
    claimed = tracker.claim_batch(T, 10, 60, owner="w1")
    assert ids_of(claimed) == [task.task_id]


@pytest.mark.parametrize(
    "columns, values",
    [
        ("task_type, payload", "'SEND_EMAIL', '{}'"),
        ("task_type, payload", "'PROCESS_STAGING_ENTRY', '[1, 2]'"),
        ("task_type, payload, status", "'PROCESS_STAGING_ENTRY', '{}', 'DONE'"),
        ("task_type, payload, attempts", "'PROCESS_STAGING_ENTRY', '{}', -1"),
        # a PROCESSING row must carry a lease, or the reaper could never rescue it
        ("task_type, payload, status", "'PROCESS_STAGING_ENTRY', '{}', 'PROCESSING'"),
    ],
)
def test_database_rejects_rows_the_api_would_reject(db, columns, values):
    with pytest.raises(sa.exc.IntegrityError):
        sql(db, f"INSERT INTO process_tracker ({columns}) VALUES ({values})")


def test_updated_at_is_maintained_by_the_database_on_every_update(tracker, db):
    task = tracker.create_task(T, {"staging_entry_id": "stg_1"})
    # even a writer that tries to set updated_at itself cannot leave it stale
    sql(db, "UPDATE process_tracker SET updated_at = '2000-01-01', created_at = '2000-01-01'"
            " WHERE task_id = :id", id=task.task_id)
    touched = tracker.get_task(task.task_id)
    assert touched.created_at.year == 2000  # the write itself went through...
    assert touched.updated_at > dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc)  # ...but not to updated_at
    sql(db, "UPDATE process_tracker SET updated_at = '2000-01-01' WHERE task_id = :id", id=task.task_id)
    updated = tracker.update_task_status(task.task_id, "RETRY", "later")
    assert updated.updated_at > dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc)


def test_at_most_one_unfinished_task_per_staging_entry(tracker, db):
    first = tracker.create_task(T, {"staging_entry_id": "stg_1"})
    with pytest.raises(sa.exc.IntegrityError, match="process_tracker_one_open_task_per_entry_uq"):
        tracker.create_task(T, {"staging_entry_id": "stg_1"})
    with pytest.raises(sa.exc.IntegrityError):
        sql(db, """INSERT INTO process_tracker (task_type, payload)
                   VALUES ('PROCESS_STAGING_ENTRY', '{"staging_entry_id": "stg_1"}')""")
    for status in ("PROCESSING", "RETRY"):  # still unfinished
        tracker.update_task_status(first.task_id, status)
        with pytest.raises(sa.exc.IntegrityError):
            tracker.create_task(T, {"staging_entry_id": "stg_1"})
    tracker.update_task_status(first.task_id, "COMPLETED")
    second = tracker.create_task(T, {"staging_entry_id": "stg_1"})  # a finished task does not block
    tracker.update_task_status(second.task_id, "FAILED", "boom")
    tracker.create_task(T, {"staging_entry_id": "stg_1"})
    # tasks without a staging entry are not limited
    tracker.create_tasks(T, [{}, {}])
    assert count_tasks(db) == 5


# ---- get_next_pending_task ------------------------------------------------------------------------


def test_get_next_pending_task_returns_none_when_nothing_is_due(tracker, db):
    assert tracker.get_next_pending_task(T) is None
    task = tracker.create_task(T, {"staging_entry_id": "stg_1"})
    sql(db, "UPDATE process_tracker SET status = 'RETRY', run_after = now() + interval '1 hour'")
    assert tracker.get_next_pending_task(T) is None
    for status in ("COMPLETED", "FAILED", "PROCESSING"):
        tracker.update_task_status(task.task_id, status)
        assert tracker.get_next_pending_task(T) is None


def test_get_next_pending_task_returns_the_oldest_due_task_without_claiming_it(tracker, db):
    newer, older, retry = entry_tasks(tracker, 3)
    sql(db, "UPDATE process_tracker SET run_after = now() - interval '1 minute' WHERE task_id = :id", id=newer.task_id)
    sql(db, "UPDATE process_tracker SET run_after = now() - interval '2 minutes' WHERE task_id = :id", id=older.task_id)
    sql(db, "UPDATE process_tracker SET status = 'RETRY', run_after = now() + interval '1 hour'"
            " WHERE task_id = :id", id=retry.task_id)
    first = tracker.get_next_pending_task(T)
    assert first.task_id == older.task_id
    assert tracker.get_next_pending_task(T) == first  # reading does not claim
    assert first.status == "PENDING" and first.attempts == 0
    # a RETRY task that became due and waited longest comes first
    sql(db, "UPDATE process_tracker SET run_after = now() - interval '3 minutes' WHERE task_id = :id", id=retry.task_id)
    assert tracker.get_next_pending_task(T).task_id == retry.task_id


def test_due_tasks_lists_oldest_first_and_validates_limit(tracker, db, offline_tracker):
    tasks = entry_tasks(tracker, 3)
    for minutes, task in zip((1, 3, 2), tasks):
        sql(db, "UPDATE process_tracker SET run_after = now() - make_interval(mins => :m) WHERE task_id = :id",
            m=minutes, id=task.task_id)
    assert ids_of(tracker.due_tasks(T, limit=2)) == [tasks[1].task_id, tasks[2].task_id]
    with pytest.raises(ValueError, match="limit"):
        offline_tracker.due_tasks(T, limit=0)


# ---- update_task_status (seed semantics) ----------------------------------------------------------


def set_error(db: Database, task_id: str, error: str = "previous error") -> None:
    sql(db, "UPDATE process_tracker SET last_error = :e WHERE task_id = :id", e=error, id=task_id)


def test_update_to_processing_stamps_start_and_clears_the_error(tracker, db):
    task = tracker.create_task(T, {"staging_entry_id": "stg_1"})
    set_error(db, task.task_id)
    updated = tracker.update_task_status(task.task_id, "PROCESSING")
    assert updated.status == "PROCESSING"
    assert updated.processing_started_at is not None
    assert updated.last_error is None
    assert updated.completed_at is None
    assert updated.attempts == 0  # only increment_attempt adds one
    assert updated.lease_owner and updated.lease_expires_at > updated.processing_started_at


def test_update_to_completed_stamps_completion_and_clears_the_error(tracker, db):
    task = tracker.create_task(T, {"staging_entry_id": "stg_1"})
    set_error(db, task.task_id)
    updated = tracker.update_task_status(task.task_id, TaskStatus.COMPLETED)
    assert updated.status == "COMPLETED"
    assert updated.completed_at is not None
    assert updated.last_error is None
    assert updated.lease_owner is None and updated.lease_expires_at is None


def test_update_to_failed_stamps_completion_and_sets_or_keeps_the_error(tracker, db):
    task = tracker.create_task(T, {"staging_entry_id": "stg_1"})
    failed = tracker.update_task_status(task.task_id, "FAILED", error_message="bank file unreadable")
    assert failed.status == "FAILED"
    assert failed.completed_at is not None
    assert failed.last_error == "bank file unreadable"
    # no new message: the previous error is kept
    again = tracker.update_task_status(task.task_id, "FAILED")
    assert again.last_error == "bank file unreadable"


def test_update_to_retry_stores_the_error_and_sets_no_completion(tracker, db):
    task = tracker.create_task(T, {"staging_entry_id": "stg_1"})
    tracker.update_task_status(task.task_id, "COMPLETED")
    retry = tracker.update_task_status(task.task_id, "RETRY", "deadlock detected", increment_attempt=True)
    assert retry.status == "RETRY"
    assert retry.completed_at is None
    assert retry.last_error == "deadlock detected"
    assert retry.attempts == 1
    assert tracker.get_next_pending_task(T).task_id == task.task_id  # due again at once


def test_increment_attempt_adds_one_only_when_asked(tracker):
    task = tracker.create_task(T, {"staging_entry_id": "stg_1"})
    assert tracker.update_task_status(task.task_id, "PROCESSING", increment_attempt=True).attempts == 1
    assert tracker.update_task_status(task.task_id, "RETRY", "x").attempts == 1
    assert tracker.update_task_status(task.task_id, "PROCESSING", increment_attempt=True).attempts == 2
    assert tracker.update_task_status(task.task_id, "PENDING").attempts == 2


def test_error_messages_are_truncated_for_humans(tracker):
    task = tracker.create_task(T, {"staging_entry_id": "stg_1"})
    updated = tracker.update_task_status(task.task_id, "FAILED", "x" * 100_000)
    assert len(updated.last_error) <= MAX_ERROR_LENGTH
    assert updated.last_error.endswith("[truncated]")


@pytest.mark.parametrize("bad_status", ["DONE", "completed", "", None])
def test_unknown_status_raises_value_error_and_changes_nothing(tracker, offline_tracker, bad_status):
    with pytest.raises(ValueError, match="unknown task status .*COMPLETED"):
        offline_tracker.update_task_status("task_x", bad_status)
    task = tracker.create_task(T, {"staging_entry_id": "stg_1"})
    with pytest.raises(ValueError):
        tracker.update_task_status(task.task_id, bad_status, "err", increment_attempt=True)
    assert tracker.get_task(task.task_id) == task


def test_unknown_task_id_raises_task_not_found(tracker):
    with pytest.raises(TaskNotFoundError, match="task_missing"):
        tracker.update_task_status("task_missing", "COMPLETED")
    with pytest.raises(TaskNotFoundError, match="task_missing"):
        tracker.get_task("task_missing")
    assert issubclass(TaskNotFoundError, LookupError)


def test_module_level_seed_functions_use_the_default_database(db_url, db):
    """The seed's free functions: RECON_DATABASE_URL (set by the db_url fixture) picks the database."""
    task = tracker_module.create_task("PROCESS_STAGING_ENTRY", {"staging_entry_id": "stg_1"})
    assert (task.status, task.attempts) == ("PENDING", 0)
    assert tracker_module.get_next_pending_task("PROCESS_STAGING_ENTRY").task_id == task.task_id
    failed = tracker_module.update_task_status(task.task_id, "FAILED", "boom", increment_attempt=True)
    assert (failed.status, failed.last_error, failed.attempts) == ("FAILED", "boom", 1)
    assert tracker_module.get_next_pending_task("PROCESS_STAGING_ENTRY") is None
    assert count_tasks(db) == 1
    with pytest.raises(ValueError):
        tracker_module.create_task("NOPE", {})


# ---- claim_batch ------------------------------------------------------------------------------------


def test_claim_batch_moves_due_tasks_to_processing_under_a_lease(tracker):
    [task] = entry_tasks(tracker, 1)
    [claimed] = tracker.claim_batch(T, 10, lease_seconds=90, owner="run-1/abc")
    assert claimed.task_id == task.task_id
    assert claimed.status == "PROCESSING"
    assert claimed.attempts == 1
    assert claimed.lease_owner == "run-1/abc"
    assert claimed.processing_started_at is not None
    assert claimed.lease_expires_at - claimed.processing_started_at == dt.timedelta(seconds=90)
    assert claimed.completed_at is None and claimed.last_error is None
    assert tracker.get_task(task.task_id) == claimed
    assert tracker.claim_batch(T, 10, 90, owner="run-2") == []  # already claimed


def test_claim_batch_returns_the_oldest_first_and_respects_the_limit(tracker, db):
    tasks = entry_tasks(tracker, 6)
    ages = [4, 6, 1, 5, 3, 2]  # minutes since due, scrambled
    for minutes, task in zip(ages, tasks):
        sql(db, "UPDATE process_tracker SET run_after = now() - make_interval(mins => :m) WHERE task_id = :id",
            m=minutes, id=task.task_id)
    by_age = [t.task_id for _, t in sorted(zip(ages, tasks), key=lambda p: -p[0])]
    first = tracker.claim_batch(T, 4, 60, owner="w1")
    assert ids_of(first) == by_age[:4]
    second = tracker.claim_batch(T, 4, 60, owner="w2")
    assert ids_of(second) == by_age[4:]
    assert tracker.claim_batch(T, 4, 60, owner="w3") == []


def test_claim_batch_skips_retry_tasks_that_are_not_due_yet(tracker, db):
    waiting, pending = entry_tasks(tracker, 2)
    sql(db, "UPDATE process_tracker SET status = 'RETRY', run_after = now() + interval '5 minutes'"
            " WHERE task_id = :id", id=waiting.task_id)
    assert ids_of(tracker.claim_batch(T, 10, 60, owner="w1")) == [pending.task_id]
    assert tracker.claim_batch(T, 10, 60, owner="w2") == []
    make_due(db, [waiting.task_id])
    assert ids_of(tracker.claim_batch(T, 10, 60, owner="w3")) == [waiting.task_id]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"limit": 0}, "limit"),
        ({"limit": -5}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"lease_seconds": -1}, "lease_seconds"),
        ({"lease_seconds": 1.5}, "lease_seconds"),
        ({"owner": ""}, "owner"),
    ],
)
def test_claim_batch_rejects_bad_arguments_before_touching_the_database(offline_tracker, kwargs, message):
    args = {"task_type": T, "limit": 10, "lease_seconds": 60, "owner": "w1", **kwargs}
    with pytest.raises(ValueError, match=message):
        offline_tracker.claim_batch(**args)


def test_claim_batch_defaults_the_lease_from_the_environment(tracker, monkeypatch):
    monkeypatch.setenv("RECON_LEASE_SECONDS", "42")
    entry_tasks(tracker, 1)
    [claimed] = tracker.claim_batch(T, 1, owner="w1")
    assert claimed.lease_expires_at - claimed.processing_started_at == dt.timedelta(seconds=42)


def test_a_rolled_back_claim_leaves_the_tasks_pending(tracker, db):
    [task] = entry_tasks(tracker, 1)
    with pytest.raises(RuntimeError):
        with db.begin() as conn:
            assert len(tracker.claim_batch(T, 1, 60, owner="w1", conn=conn)) == 1
            raise RuntimeError("worker crashed before commit")
    assert tracker.get_task(task.task_id) == task


# ---- outcomes: complete / fail / retry / finish -------------------------------------------------------


def test_complete_and_fail_write_outcomes_under_the_claim(tracker):
    a, b = entry_tasks(tracker, 2)
    tracker.claim_batch(T, 2, 60, owner="w1")
    assert tracker.complete([a.task_id], owner="w1") == 1
    assert tracker.fail({b.task_id: "amount mismatch"}, owner="w1") == 1
    done, failed = tracker.get_task(a.task_id), tracker.get_task(b.task_id)
    assert (done.status, done.last_error, done.attempts) == ("COMPLETED", None, 1)
    assert done.completed_at is not None and done.lease_owner is None and done.lease_expires_at is None
    assert (failed.status, failed.last_error) == ("FAILED", "amount mismatch")
    assert failed.completed_at is not None and failed.lease_owner is None
    # a second write of the same outcome changes nothing: the task is no longer PROCESSING
    assert tracker.complete([a.task_id], owner="w1") == 0
    assert tracker.get_task(a.task_id) == done


def test_finish_writes_mixed_outcomes_in_one_statement(tracker):
    a, b, c = entry_tasks(tracker, 3)
    tracker.claim_batch(T, 3, 60, owner="w1")
    written = tracker.finish(
        [Outcome(a.task_id, TaskStatus.COMPLETED), Outcome(b.task_id, "FAILED", "bad"), Outcome(c.task_id, "RETRY", "busy")],
        owner="w1",
    )
    assert written == {a.task_id: "COMPLETED", b.task_id: "FAILED", c.task_id: "RETRY"}
    assert tracker.finish([], owner="w1") == {}


@pytest.mark.parametrize("status", ["PENDING", "PROCESSING", "DONE"])
def test_finish_rejects_a_status_that_is_not_an_outcome(tracker, status):
    [task] = entry_tasks(tracker, 1)
    [claimed] = tracker.claim_batch(T, 1, 60, owner="w1")
    with pytest.raises(ValueError):
        tracker.finish([Outcome(task.task_id, status)], owner="w1")
    assert tracker.get_task(task.task_id) == claimed


def test_outcomes_from_another_owner_or_for_unclaimed_tasks_change_nothing(tracker):
    tasks = entry_tasks(tracker, 2)
    [claimed] = tracker.claim_batch(T, 1, 60, owner="w1")
    [pending_task] = [t for t in tasks if t.task_id != claimed.task_id]
    before_pending = tracker.get_task(pending_task.task_id)
    assert before_pending.status == "PENDING"
    assert tracker.complete([claimed.task_id, pending_task.task_id], owner="intruder") == 0
    assert tracker.fail({claimed.task_id: "x"}, owner="") == 0
    assert tracker.complete([pending_task.task_id, "task_missing"], owner="w1") == 0
    assert tracker.get_task(claimed.task_id) == claimed
    assert tracker.get_task(pending_task.task_id) == before_pending


def test_a_late_worker_cannot_overwrite_a_rescued_and_reclaimed_task(tracker, db):
    """The owner check: A's lease expires, the reaper rescues the task, B claims it;
    A's late outcome must change nothing, B's outcome must win."""
    [task] = entry_tasks(tracker, 1)
    [by_a] = tracker.claim_batch(T, 1, 60, owner="worker-a")
    expire_leases(db, [task.task_id])
    assert tracker.reap_expired_leases().retried == [task.task_id]
    rescued = tracker.get_task(task.task_id)
    # A reports while the task waits in RETRY: ignored
    assert tracker.complete([task.task_id], owner="worker-a") == 0
    assert tracker.get_task(task.task_id) == rescued

    make_due(db, [task.task_id])
    [by_b] = tracker.claim_batch(T, 1, 60, owner="worker-b")
    assert (by_b.attempts, by_b.lease_owner) == (2, "worker-b")
    # A reports while B holds the task: ignored, whatever the outcome
    assert tracker.complete([task.task_id], owner="worker-a") == 0
    assert tracker.fail({task.task_id: "late failure"}, owner="worker-a") == 0
    assert tracker.retry({task.task_id: "late retry"}, owner="worker-a") == {}
    assert tracker.get_task(task.task_id) == by_b

    assert tracker.complete([task.task_id], owner="worker-b") == 1
    final = tracker.get_task(task.task_id)
    assert (final.status, final.last_error, final.attempts) == ("COMPLETED", None, 2)
    assert by_a.lease_owner == "worker-a"


# ---- retry policy ---------------------------------------------------------------------------------------


def backoff_delays(db: Database, task_ids: list[str]) -> list[float]:
    """Seconds from the retry write (updated_at, the same transaction's now()) to run_after."""
    rows = sql(db, "SELECT extract(epoch FROM run_after - updated_at) FROM process_tracker"
                   " WHERE task_id = ANY(:ids)", ids=task_ids)
    return [float(r[0]) for r in rows]


def test_retry_backs_off_exponentially_with_jitter_then_fails_past_max_attempts(db):
    policy = RetryPolicy(max_attempts=5, base_seconds=10, max_seconds=60)
    tracker = ProcessTracker(db, policy)
    ids = ids_of(entry_tasks(tracker, 30))
    # attempt n is due again after [0.5, 1) x min(max, base x 2^(n-1)) seconds
    bounds = {1: (5, 10), 2: (10, 20), 3: (20, 40), 4: (30, 60)}
    for attempt, (low, high) in bounds.items():
        make_due(db, ids)
        claimed = tracker.claim_batch(T, 100, 60, owner=f"w{attempt}")
        assert sorted(ids_of(claimed)) == sorted(ids)
        assert {t.attempts for t in claimed} == {attempt}
        written = tracker.retry({i: f"timeout on attempt {attempt}" for i in ids}, owner=f"w{attempt}")
        assert written == {i: "RETRY" for i in ids}
        delays = backoff_delays(db, ids)
        assert all(low <= d < high for d in delays), (attempt, sorted(delays))
        assert len(set(delays)) > 1, "jitter spreads retries apart"
        # not due yet: nobody can claim them before the backoff is over
        assert tracker.claim_batch(T, 100, 60, owner="eager") == []
        task = tracker.get_task(ids[0])
        assert (task.status, task.completed_at, task.last_error) == ("RETRY", None, f"timeout on attempt {attempt}")
        assert task.lease_owner is None and task.lease_expires_at is None

    make_due(db, ids)
    tracker.claim_batch(T, 100, 60, owner="w5")
    assert tracker.retry({i: "timeout on attempt 5" for i in ids}, owner="w5") == {i: "FAILED" for i in ids}
    task = tracker.get_task(ids[0])
    assert (task.status, task.attempts, task.last_error) == ("FAILED", 5, "timeout on attempt 5")
    assert task.completed_at is not None


def test_max_attempts_one_fails_on_the_first_retry(db):
    tracker = ProcessTracker(db, RetryPolicy(max_attempts=1))
    [task] = entry_tasks(tracker, 1)
    tracker.claim_batch(T, 1, 60, owner="w1")
    assert tracker.retry({task.task_id: "nope"}, owner="w1") == {task.task_id: "FAILED"}
    assert tracker.get_task(task.task_id).last_error == "nope"


def test_retry_policy_defaults_to_five_attempts_and_reads_the_environment(monkeypatch):
    assert RetryPolicy().max_attempts == 5
    for name in ("RECON_MAX_ATTEMPTS", "RECON_RETRY_BASE_SECONDS", "RECON_RETRY_MAX_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    assert ProcessTracker(None).retry_policy == RetryPolicy()
    monkeypatch.setenv("RECON_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("RECON_RETRY_BASE_SECONDS", "3")
    assert ProcessTracker(None).retry_policy == RetryPolicy(max_attempts=2, base_seconds=3)
    monkeypatch.setenv("RECON_MAX_ATTEMPTS", "0")
    with pytest.raises(ValueError, match="RECON_MAX_ATTEMPTS"):
        RetryPolicy.from_env()


# ---- reaping ------------------------------------------------------------------------------------------------


def test_reaper_rescues_expired_leases_to_retry_and_leaves_live_ones(tracker, db):
    expired, alive = entry_tasks(tracker, 2)
    tracker.claim_batch(T, 2, 600, owner="crashed-worker")
    expire_leases(db, [expired.task_id])
    result = tracker.reap_expired_leases()
    assert (result.retried, result.failed) == ([expired.task_id], [])
    rescued = tracker.get_task(expired.task_id)
    assert rescued.status == "RETRY"
    assert "rescued" in rescued.last_error and "crashed-worker" in rescued.last_error
    assert rescued.lease_owner is None and rescued.lease_expires_at is None and rescued.completed_at is None
    assert rescued.run_after > rescued.updated_at  # backs off like any retry
    assert tracker.get_task(alive.task_id).status == "PROCESSING"
    assert tracker.reap_expired_leases() == tracker_module.ReapResult([], [])


def test_reaper_fails_a_task_whose_attempts_are_exhausted(tracker, db, retry_policy):
    [task] = entry_tasks(tracker, 1)
    for attempt in range(1, retry_policy.max_attempts + 1):
        make_due(db, [task.task_id])
        [claimed] = tracker.claim_batch(T, 1, 60, owner=f"w{attempt}")
        expire_leases(db, [task.task_id])
        result = tracker.reap_expired_leases()
    assert claimed.attempts == retry_policy.max_attempts
    assert result.failed == [task.task_id] and result.retried == []
    final = tracker.get_task(task.task_id)
    assert final.status == "FAILED"
    assert final.completed_at is not None
    assert "rescued" in final.last_error and f"w{retry_policy.max_attempts}" in final.last_error


# ---- requeue -------------------------------------------------------------------------------------------------


def fail_all(tracker: ProcessTracker, tasks: list[Task]) -> None:
    for task in tasks:
        tracker.update_task_status(task.task_id, "FAILED", "boom", increment_attempt=True)


def test_requeue_by_ids_puts_failed_tasks_back_to_pending(tracker):
    failed, completed, untouched = entry_tasks(tracker, 3)
    fail_all(tracker, [failed, untouched])
    tracker.update_task_status(completed.task_id, "COMPLETED")
    assert tracker.requeue([failed.task_id, completed.task_id, "task_missing"]) == [failed.task_id]
    task = tracker.get_task(failed.task_id)
    assert (task.status, task.attempts, task.completed_at) == ("PENDING", 0, None)
    assert tracker.get_task(completed.task_id).status == "COMPLETED"  # only FAILED tasks move
    assert tracker.get_task(untouched.task_id).status == "FAILED"
    assert ids_of(tracker.claim_batch(T, 10, 60, owner="w1")) == [failed.task_id]
    assert tracker.requeue([]) == []


def test_requeue_by_created_at_window(tracker, db):
    jan, feb, mar = entry_tasks(tracker, 3)
    fail_all(tracker, [jan, feb, mar])
    for task, day in ((jan, "2026-01-15"), (feb, "2026-02-15"), (mar, "2026-03-15")):
        sql(db, "UPDATE process_tracker SET created_at = CAST(:d AS timestamptz) WHERE task_id = :id",
            d=day, id=task.task_id)
    utc = dt.timezone.utc
    feb_1, mar_1 = dt.datetime(2026, 2, 1, tzinfo=utc), dt.datetime(2026, 3, 1, tzinfo=utc)
    assert tracker.requeue(created_from=feb_1, created_to=mar_1) == [feb.task_id]  # [from, to)
    assert tracker.requeue(created_from=mar_1) == [mar.task_id]
    assert tracker.requeue(created_to=feb_1) == [jan.task_id]
    assert tracker.requeue(created_from=feb_1) == []


def test_requeue_skips_a_task_whose_staging_entry_already_has_an_open_task(tracker):
    [old] = entry_tasks(tracker, 1)
    fail_all(tracker, [old])
    newer = tracker.create_task(T, {"staging_entry_id": "stg_0"})
    assert tracker.requeue([old.task_id]) == []
    assert tracker.get_task(old.task_id).status == "FAILED"
    assert tracker.get_task(newer.task_id).status == "PENDING"


def test_requeue_reopens_one_task_when_an_entry_has_several_failed_ones(tracker):
    """Two FAILED tasks of one staging entry: reopening both would break the one-open-task rule."""
    [first] = entry_tasks(tracker, 1)
    fail_all(tracker, [first])
    second = tracker.create_task(T, {"staging_entry_id": "stg_0"})
    fail_all(tracker, [second])
    assert tracker.requeue([first.task_id, second.task_id]) == [second.task_id]  # the newest
    assert tracker.get_task(first.task_id).status == "FAILED"
    assert tracker.requeue(created_to=dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)) == []


def test_two_requeues_at_once_run_one_after_the_other_and_end_correct(tracker, db, db_url):
    """The second requeue waits for the first on the requeue lock (not row by row on its rows, which
    re-checked every locked row against the whole candidate set: quadratic), then finds nothing left."""
    tasks = entry_tasks(tracker, 200)
    fail_all(tracker, tasks)
    doubled = tracker.create_task(T, {"staging_entry_id": "stg_0"})  # an entry with two FAILED tasks
    fail_all(tracker, [doubled])
    window_end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    second: dict[str, list[str]] = {}
    other = Database(db_url, "second requeue")
    try:
        with db.begin() as first:
            first_requeued = tracker.requeue(created_to=window_end, conn=first)
            thread = threading.Thread(target=lambda: second.update(
                ids=ProcessTracker(other).requeue([t.task_id for t in tasks] + [doubled.task_id])))
            thread.start()
            deadline = time.monotonic() + 30
            while not sql(db, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                              " AND wait_event = 'advisory' AND datname = current_database()"):
                assert time.monotonic() < deadline and thread.is_alive(), "the second requeue never waited its turn"
                time.sleep(0.05)
        thread.join(timeout=60)
    finally:
        other.dispose()
    assert second == {"ids": []}  # the first committed them all; nothing left FAILED in its scope
    assert sorted(first_requeued) == sorted([doubled.task_id] + [t.task_id for t in tasks[1:]])
    open_per_entry = sql(db, "SELECT payload ->> 'staging_entry_id', count(*) FROM process_tracker"
                             " WHERE status IN ('PENDING', 'PROCESSING', 'RETRY') GROUP BY 1")
    assert len(open_per_entry) == 200 and {n for _, n in open_per_entry} == {1}
    assert tracker.get_task(tasks[0].task_id).status == "FAILED"  # the newer task of stg_0 was reopened


def test_requeue_needs_ids_or_a_window(offline_tracker):
    with pytest.raises(ValueError, match="task_ids or a created_at window"):
        offline_tracker.requeue()


# ---- stats and housekeeping --------------------------------------------------------------------------------


def test_stats_on_an_empty_queue(tracker):
    assert tracker.stats() == {
        "by_status": {"PENDING": 0, "PROCESSING": 0, "COMPLETED": 0, "FAILED": 0, "RETRY": 0},
        "by_type": {},
        "total": 0,
        "oldest_due_age_seconds": None,
        "leases_held": 0,
    }


def test_stats_counts_per_status_and_type_and_ages_the_oldest_due_task(tracker, db):
    tasks = entry_tasks(tracker, 7)
    tracker.claim_batch(T, 3, 60, owner="w1")  # the first three by run_after (all equal: any three)
    claimed = sql(db, "SELECT task_id FROM process_tracker WHERE status = 'PROCESSING' ORDER BY task_id")
    done, failed, held = (r[0] for r in claimed)
    tracker.complete([done], owner="w1")
    tracker.fail({failed: "x"}, owner="w1")
    pending = [t.task_id for t in tasks if t.task_id not in (done, failed, held)]
    sql(db, "UPDATE process_tracker SET status = 'RETRY', run_after = now() + interval '1 hour'"
            " WHERE task_id = :id", id=pending[0])
    sql(db, "UPDATE process_tracker SET run_after = now() - interval '100 seconds' WHERE task_id = :id",
        id=pending[1])
    stats = tracker.stats()
    expected = {"PENDING": 3, "PROCESSING": 1, "COMPLETED": 1, "FAILED": 1, "RETRY": 1}
    assert stats["by_status"] == expected
    assert stats["by_type"] == {T: expected}
    assert stats["total"] == 7
    assert stats["leases_held"] == 1
    assert 100 <= stats["oldest_due_age_seconds"] < 100 + 600


def test_prune_completed_deletes_only_old_completed_tasks(tracker, db):
    old_done, new_done, old_failed, pending = entry_tasks(tracker, 4)
    for task in (old_done, new_done):
        tracker.update_task_status(task.task_id, "COMPLETED")
    tracker.update_task_status(old_failed.task_id, "FAILED", "kept for requeue")
    sql(db, "UPDATE process_tracker SET completed_at = now() - interval '2 days' WHERE task_id = ANY(:ids)",
        ids=[old_done.task_id, old_failed.task_id])
    assert tracker.prune_completed(dt.timedelta(days=1)) == 1
    remaining = {r[0] for r in sql(db, "SELECT task_id FROM process_tracker")}
    assert remaining == {new_done.task_id, old_failed.task_id, pending.task_id}
    assert tracker.prune_completed(dt.timedelta(days=1)) == 0


def test_prune_deletes_in_bounded_batches_oldest_first(tracker, db):
    tasks = entry_tasks(tracker, 7)
    for task in tasks:
        tracker.update_task_status(task.task_id, "COMPLETED")
    sql(db, "UPDATE process_tracker SET completed_at = now() - interval '2 days'")
    seen = []  # rows left as each transaction of the prune starts: each batch commits on its own
    original = db.begin

    def begin():
        with original() as other:
            seen.append(other.execute(sa.text("SELECT count(*) FROM process_tracker")).scalar_one())
        return original()

    db.begin = begin
    try:
        assert tracker.prune_completed(dt.timedelta(days=1), batch_size=3) == 7
    finally:
        del db.begin
    assert seen == [7, 7, 4, 1]  # the cutoff, then batches of 3, 3 and 1 (the last one short)
    assert sql(db, "SELECT count(*) FROM process_tracker") == [(0,)]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        tracker.prune_completed(dt.timedelta(days=1), batch_size=0)


def test_the_prune_reads_the_completed_at_index(db):
    with db.begin() as conn:  # no seq scan: on a near-empty test table it would win on cost
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        plan = conn.execute(sa.text(
            "EXPLAIN (COSTS OFF) SELECT task_id FROM process_tracker WHERE status = 'COMPLETED'"
            " AND completed_at < now() ORDER BY completed_at LIMIT 5000")).all()
    assert "process_tracker_completed_at_idx" in " ".join(row[0] for row in plan)


# ---- deliberate waits (RETRY with wait_seconds) ------------------------------------------------------------


def test_a_wait_is_due_after_exactly_that_long_and_does_not_use_up_an_attempt(tracker, db, retry_policy):
    """A confirmation waiting for its order is not failing: it may wait past max_attempts."""
    [task] = entry_tasks(tracker, 1)
    for round_ in range(retry_policy.max_attempts + 2):
        make_due(db, [task.task_id])
        [claimed] = tracker.claim_batch(T, 1, 60, owner=f"w{round_}")
        assert claimed.attempts == 1
        written = tracker.finish([Outcome(task.task_id, "RETRY", "order not booked yet", wait_seconds=30)],
                                 owner=f"w{round_}")
        assert written == {task.task_id: "RETRY"}
        assert backoff_delays(db, [task.task_id]) == [30.0]
    waiting = tracker.get_task(task.task_id)
    assert (waiting.attempts, waiting.last_error, waiting.completed_at) == (0, "order not booked yet", None)


@pytest.mark.parametrize("status, wait", [("COMPLETED", 30), ("FAILED", 30), ("RETRY", -1)])
def test_a_wait_needs_a_retry_outcome_and_a_non_negative_delay(tracker, status, wait):
    [task] = entry_tasks(tracker, 1)
    [claimed] = tracker.claim_batch(T, 1, 60, owner="w1")
    with pytest.raises(ValueError, match="wait_seconds"):
        tracker.finish([Outcome(task.task_id, status, "e", wait_seconds=wait)], owner="w1")
    assert tracker.get_task(task.task_id) == claimed
