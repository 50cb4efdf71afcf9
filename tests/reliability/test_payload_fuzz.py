"""Tracker payloads written by hand (plain SQL INSERT), as a careless producer would.

Bad payloads must fail cleanly: the task FAILED with a last_error that starts with a stable error
type, nothing else affected (the good tasks of the same chunk are processed, no staging entry or
ledger row changes because of a bad task). Rows the schema refuses (unknown task type, a payload
that is not a JSON object, a second open task for an entry) are rejected at INSERT, all or nothing.
"""

from __future__ import annotations

import json

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon import pipeline
from tests.reliability import figures
from tests.reliability.helpers import assert_books_consistent, rows, scalar, task_statuses

INSERT = sa.text("INSERT INTO process_tracker (task_type, payload) SELECT :type, CAST(p AS jsonb)"
                 " FROM unnest(CAST(:payloads AS text[])) AS p RETURNING task_id")

INJECTION = "'; DROP TABLE staging_entries; --"

# payload -> the error type its task must fail with
BAD_PAYLOADS = [
    ({}, "InvalidPayloadError"),
    ({"other": "x"}, "InvalidPayloadError"),
    ({"staging_entry_id": None}, "InvalidPayloadError"),
    ({"staging_entry_id": 123}, "InvalidPayloadError"),
    ({"staging_entry_id": 1.5}, "InvalidPayloadError"),
    ({"staging_entry_id": True}, "InvalidPayloadError"),
    ({"staging_entry_id": ["stg_x"]}, "InvalidPayloadError"),
    ({"staging_entry_id": {"id": "stg_x"}}, "InvalidPayloadError"),
    ({"staging_entry_id": ""}, "InvalidPayloadError"),
    ({"staging_entry_id": "stg_does_not_exist"}, "StagingEntryNotFoundError"),
    ({"staging_entry_id": INJECTION}, "StagingEntryNotFoundError"),
    ({"staging_entry_id": "x" * 20_000}, "StagingEntryNotFoundError"),
    ({"staging_entry_id": "stg_\u00e9\u4e2d\U0001f600"}, "StagingEntryNotFoundError"),
    ({"staging_entry_id": "stg_missing", "extra": {"deep": [1, 2, {"x": None}]}}, "StagingEntryNotFoundError"),
]


def _insert(db, payloads, task_type="PROCESS_STAGING_ENTRY"):
    with db.begin() as conn:
        return list(conn.execute(INSERT, {"type": task_type, "payloads": [json.dumps(p) for p in payloads]}).scalars())


def test_bad_payloads_fail_cleanly_beside_good_tasks(books, db):
    good = books.stage([books.transaction(f"good-{i}", "5.00") for i in range(5)])
    bad = _insert(db, [p for p, _ in BAD_PAYLOADS])
    figures.record(bad_inputs_tried=len(BAD_PAYLOADS))

    summary = pipeline.process_queue(db=db, chunk_size=1_000)  # one chunk: bad and good together
    assert summary["claimed"] == len(good) + len(bad)
    assert (summary["booked"], summary["failed"]) == (len(good), len(bad))
    by_id = {r.task_id: r for r in rows(db, "SELECT * FROM process_tracker WHERE task_id = ANY(:t)", t=bad)}
    for task_id, (payload, error_type) in zip(bad, BAD_PAYLOADS):
        task = by_id[task_id]
        assert task.status == "FAILED", (payload, task.status)
        assert task.last_error.startswith(f"{error_type}: "), (payload, task.last_error)
        assert len(task.last_error) <= 4000
    assert "DROP TABLE" in by_id[bad[BAD_PAYLOADS.index(({"staging_entry_id": INJECTION}, "StagingEntryNotFoundError"))]].last_error
    assert scalar(db, "SELECT count(*) FROM staging_entries") == len(good)  # the table is still there
    report = assert_books_consistent(db)
    assert report.processed == report.entries == len(good)


@pytest.mark.parametrize(
    "task_type, payload, error",
    [
        ("UNKNOWN_TASK", {"staging_entry_id": "stg_x"}, psycopg.errors.CheckViolation),
        ("process_staging_entry", {"staging_entry_id": "stg_x"}, psycopg.errors.CheckViolation),
        ("PROCESS_STAGING_ENTRY", "not an object", psycopg.errors.CheckViolation),
        ("PROCESS_STAGING_ENTRY", [1, 2, 3], psycopg.errors.CheckViolation),
        ("PROCESS_STAGING_ENTRY", {"staging_entry_id": "nul\u0000byte"}, psycopg.errors.UntranslatableCharacter),
    ],
)
def test_rows_the_schema_refuses_are_rejected_all_or_nothing(task_type, payload, error, db):
    figures.record(bad_inputs_tried=1)
    with pytest.raises(sa.exc.DBAPIError) as raised:
        with db.begin() as conn:  # a good row in the same statement: rolled back with the bad one
            conn.execute(INSERT, {"type": "PROCESS_STAGING_ENTRY", "payloads": [json.dumps({"staging_entry_id": "ok"})]})
            conn.execute(INSERT, {"type": task_type, "payloads": [json.dumps(payload)]})
    assert isinstance(raised.value.orig, error), raised.value.orig
    assert scalar(db, "SELECT count(*) FROM process_tracker") == 0
    assert_books_consistent(db)


def test_unknown_task_type_is_refused_by_the_pipeline_with_a_clear_error(db):
    figures.record(bad_inputs_tried=1)
    with pytest.raises(ValueError, match="unknown task_type 'NOPE'; known task types: PROCESS_STAGING_ENTRY"):
        pipeline.process_queue(db=db, task_type="NOPE")


def test_a_second_open_task_for_an_entry_is_refused(books, db):
    (created,) = books.stage([books.transaction("twice", "7.00")])
    figures.record(bad_inputs_tried=1)
    with pytest.raises(sa.exc.IntegrityError):
        _insert(db, [{"staging_entry_id": created.staging_entry_id}])
    pipeline.process_queue(db=db)
    # once the first task is done, a second (e.g. replayed) task completes as a no-op
    (again,) = _insert(db, [{"staging_entry_id": created.staging_entry_id}])
    summary = pipeline.process_queue(db=db)
    assert summary["already_processed"] == 1
    assert rows(db, "SELECT status FROM process_tracker WHERE task_id = :t", t=again)[0].status == "COMPLETED"
    report = assert_books_consistent(db)
    assert report.processed == 1 and scalar(db, "SELECT count(*) FROM transactions") == 1


safe_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | safe_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(safe_text, children, max_size=3),
    max_leaves=8,
)
payloads = st.one_of(
    st.dictionaries(safe_text, json_values, max_size=4),  # usually no staging_entry_id
    st.builds(lambda sid, extra: {**extra, "staging_entry_id": sid},
              json_values, st.dictionaries(safe_text, json_values, max_size=2)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(payloads, min_size=1, max_size=6))
def test_fuzzed_payloads_fail_cleanly(books, db, batch):
    """Random JSON payloads beside one good task: each bad one FAILED with a typed error, or refused at
    INSERT when another open task already carries the same staging_entry_id text; the good one booked.
    The database is shared by the examples, so the checks are on this example's rows."""
    (good,) = books.stage([books.transaction(f"fuzz-{scalar(db, 'SELECT count(*) FROM staging_entries')}", "1.00")])
    inserted = []
    for payload in batch:
        try:
            (task_id,) = _insert(db, [payload])
        except sa.exc.IntegrityError as exc:  # the one-open-task-per-entry index: refused, nothing written
            assert isinstance(exc.orig, psycopg.errors.UniqueViolation), exc
            continue
        inserted.append((task_id, payload))
    figures.record(bad_inputs_tried=len(batch))
    pipeline.process_queue(db=db)
    for task_id, payload in inserted:
        (task,) = rows(db, "SELECT status, last_error FROM process_tracker WHERE task_id = :t", t=task_id)
        sid = payload.get("staging_entry_id")
        expected = "StagingEntryNotFoundError" if isinstance(sid, str) and sid else "InvalidPayloadError"
        assert task.status == "FAILED" and task.last_error.startswith(expected + ": "), (payload, task)
    assert rows(db, "SELECT status FROM staging_entries WHERE staging_entry_id = :s",
                s=good.staging_entry_id)[0].status == "PROCESSED"
    assert task_statuses(db).keys() <= {"COMPLETED", "FAILED"}
    assert_books_consistent(db, final=False)
