"""The Process Tracker: a PostgreSQL table used as a durable work queue, and the only module whose
SQL reads or writes ``process_tracker``.

Seed API: ``create_task``, ``get_next_pending_task``, ``update_task_status``.
Production queue on top: ``claim_batch`` hands out leases (owner + expiry) with
``FOR UPDATE SKIP LOCKED``; outcome writes (``finish``, ``complete``, ``fail``, ``retry``) only
touch tasks still PROCESSING under the caller's lease, so a late worker cannot overwrite a task
that was rescued by ``reap_expired_leases`` and claimed again.

Every method takes an optional ``conn`` so a caller can put the tracker write in the same
database transaction as its own effect (one outcome, one transaction). The producers' statement
that inserts staging entries and their tasks at once (``recon.staging``) takes this module's
``INSERT_TASKS_FOR_NEW_ENTRIES`` fragment.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Iterable, Iterator, Mapping, Sequence, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recon import settings
from recon.db import Database, default_database
from recon.errors import InvalidInputError, NotFoundError
from recon.model import TaskStatus, TaskType
from recon.settings import RetryPolicy


class TaskNotFoundError(NotFoundError):
    """No tracker task has the given id."""


E = TypeVar("E", bound=enum.Enum)

MAX_ERROR_LENGTH = 4000  # last_error is for humans; a full traceback belongs in the logs


def parse_task_type(value: str | TaskType) -> TaskType:
    return _parse(TaskType, value, "task_type", "task types")


def parse_task_status(value: str | TaskStatus) -> TaskStatus:
    return _parse(TaskStatus, value, "task status", "statuses")


def _parse(kind: type[E], value: object, name: str, plural: str) -> E:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise InvalidInputError(f"unknown {name} {value!r}; known {plural}: {known}") from None


# last_error of a deliberate wait (an outcome with wait_seconds) starts with this: the Recon view and
# the report list such tasks apart from retries after an error
WAIT_PREFIX = "waiting: "


@dataclass(frozen=True, slots=True)
class Task:
    """One process_tracker row; field names are the column names."""

    task_id: str
    task_type: str
    payload: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    processing_started_at: dt.datetime | None
    completed_at: dt.datetime | None
    run_after: dt.datetime
    lease_owner: str | None
    lease_expires_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: Any) -> "Task":
        mapping = row._mapping
        return cls(**{f.name: mapping[f.name] for f in fields(cls)})

    @classmethod
    def from_rows(cls, rows: Iterable[Any]) -> list["Task"]:
        """Rows of a result; positionally when they hold _COLUMNS (the fields in order)."""
        rows = list(rows)
        if rows and tuple(rows[0]._fields) == _FIELD_NAMES:
            return [cls(*row) for row in rows]
        return [cls.from_row(row) for row in rows]


@dataclass(frozen=True, slots=True)
class TaskRef:
    """A claimed task as a chunk sees it: who holds it, and which staging entry it processes."""

    task_id: str
    status: str
    lease_owner: str | None
    staging_entry_id: str | None  # None when the payload names no staging entry
    unusable_payload: Any = None  # the payload, only when it names no staging entry


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one claimed task: COMPLETED, FAILED or RETRY, with an error for the latter two.

    ``wait_seconds`` makes a RETRY a deliberate wait (e.g. for an order that has not arrived):
    due again after that many seconds, and not counted as a failed attempt.
    """

    task_id: str
    status: TaskStatus
    error: str | None = None
    wait_seconds: float | None = None


_FIELD_NAMES = tuple(f.name for f in fields(Task))
_COLUMNS = ", ".join(_FIELD_NAMES)

# The producers' entry+task statement (recon.staging) inserts the task of each new staging entry
# with this fragment, reading the ids from its CTE named `new_entries`.
INSERT_TASKS_FOR_NEW_ENTRIES = """
    INSERT INTO process_tracker (task_type, payload)
    SELECT 'PROCESS_STAGING_ENTRY', jsonb_build_object('staging_entry_id', staging_entry_id)
    FROM new_entries
    RETURNING task_id, payload ->> 'staging_entry_id' AS staging_entry_id
"""

_INSERT_TASKS = sa.text(
    f"""
    INSERT INTO process_tracker (task_type, payload)
    SELECT :task_type, p FROM unnest(CAST(:payloads AS jsonb[])) WITH ORDINALITY AS u(p, n)
    ORDER BY n
    RETURNING {_COLUMNS}
    """
)

_NEXT_DUE = sa.text(
    f"""
    SELECT {_COLUMNS} FROM process_tracker
    WHERE task_type = :task_type AND status IN ('PENDING', 'RETRY') AND run_after <= now()
    ORDER BY run_after, task_id
    LIMIT :limit
    """
)

# SKIP LOCKED inside the CTE keeps the LIMIT exact under concurrency; `= ANY(ARRAY(...))`
# keeps the UPDATE on the primary key index where `FROM cte` can flip to a hash join.
_CLAIM_TEMPLATE = """
    WITH due AS (
        SELECT task_id FROM process_tracker
        WHERE task_type = :task_type AND status IN ('PENDING', 'RETRY') AND run_after <= now()
        ORDER BY run_after, task_id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE process_tracker SET
        status = 'PROCESSING',
        attempts = attempts + 1,
        processing_started_at = now(),
        completed_at = NULL,
        last_error = NULL,
        lease_owner = :owner,
        lease_expires_at = now() + make_interval(secs => :lease_seconds),
        updated_at = now()  -- set here, the touch trigger is skipped (sql/0002)
    WHERE task_id = ANY(ARRAY(SELECT task_id FROM due))
    RETURNING {returning}
"""
_CLAIM = sa.text(_CLAIM_TEMPLATE.format(returning=_COLUMNS))
# the batch pipeline's claim: ids only, in claim order (no row of 13 columns per task to build)
_CLAIM_IDS = sa.text(
    f"WITH claimed AS ({_CLAIM_TEMPLATE.format(returning='task_id, run_after')})"
    " SELECT task_id FROM claimed ORDER BY run_after, task_id"
)

# Backoff for attempt n: min(max, base * 2^(n-1)) scaled by a jitter factor in [0.5, 1).
# psycopg placeholders: the statements using it run with exec_driver_sql.
_BACKOFF = (
    "make_interval(secs => least(%(max_seconds)s, %(base_seconds)s * power(2, greatest(t.attempts - 1, 0)))"
    " * (0.5 + random() / 2))"
)

# A RETRY outcome of a task that used up its attempts is written as FAILED (a wait does not count).
_EXHAUSTED = "(o.status = 'RETRY' AND o.wait_seconds IS NULL AND t.attempts >= %(max_attempts)s)"

# Computed from the row being updated (no second look-up of each task by id): t.attempts is the
# value before this UPDATE, re-read if a concurrent writer changed the row first.
_FINISH = (  # run with exec_driver_sql: psycopg placeholders, %(name)b = a binary array
    f"""
    UPDATE process_tracker t SET
        status = CASE WHEN {_EXHAUSTED} THEN 'FAILED' ELSE o.status END,
        attempts = CASE WHEN o.wait_seconds IS NOT NULL THEN greatest(t.attempts - 1, 0) ELSE t.attempts END,
        last_error = CASE WHEN o.status = 'COMPLETED' THEN NULL ELSE o.error END,
        completed_at = CASE WHEN o.status = 'RETRY' AND NOT {_EXHAUSTED} THEN NULL ELSE now() END,
        run_after = CASE WHEN o.wait_seconds IS NOT NULL THEN now() + make_interval(secs => o.wait_seconds)
                         WHEN o.status = 'RETRY' AND NOT {_EXHAUSTED} THEN now() + {_BACKOFF}
                         ELSE t.run_after END,
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    FROM unnest(CAST(%(ids)b AS text[]), CAST(%(statuses)b AS text[]), CAST(%(errors)b AS text[]),
                CAST(%(waits)b AS float8[])) AS o(task_id, status, error, wait_seconds)
    WHERE t.task_id = o.task_id AND t.status = 'PROCESSING' AND t.lease_owner = %(owner)s
    RETURNING t.task_id, t.status
    """
)

_REAP = (  # run with exec_driver_sql: psycopg placeholders, like _BACKOFF
    f"""
    WITH expired AS (
        SELECT task_id FROM process_tracker
        WHERE status = 'PROCESSING' AND lease_expires_at < now()
        FOR UPDATE SKIP LOCKED
    )
    UPDATE process_tracker t SET
        status = CASE WHEN t.attempts >= %(max_attempts)s THEN 'FAILED' ELSE 'RETRY' END,
        last_error = 'rescued by the reaper: lease of ' || coalesce(t.lease_owner, '?')
                     || ' expired at ' || to_char(t.lease_expires_at, 'YYYY-MM-DD"T"HH24:MI:SSOF')
                     || ' (attempt ' || t.attempts || ')',
        completed_at = CASE WHEN t.attempts >= %(max_attempts)s THEN now() ELSE NULL END,
        run_after = now() + {_BACKOFF},
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    WHERE t.task_id = ANY(ARRAY(SELECT task_id FROM expired))
    RETURNING t.task_id, t.status
    """
)


@dataclass(frozen=True)
class ReapResult:
    retried: list[str]
    failed: list[str]


# ---- what is due: the due-work watcher's question (recon.due_work_trigger, in the triggerer) ----

# The head of the queue in claim order (one probe of process_tracker_claim_idx per task type) and
# the earliest lease held (process_tracker_lease_idx): what a DAG run would do first, and when the
# clock alone changes that. Seconds come from the database, whose clock stamps run_after; a task
# held back with run_after 'infinity' reads as a day away. psycopg placeholders (the watcher runs
# it on its own async psycopg connection).
DUE_WORK = """
    SELECT head.task_id, CASE WHEN isfinite(head.run_after) THEN head.run_after END,
           extract(epoch FROM least(head.run_after, now() + interval '1 day') - now())::float8,
           lease.expires_at,
           extract(epoch FROM lease.expires_at - now())::float8
    FROM (SELECT min(lease_expires_at) AS expires_at FROM process_tracker WHERE status = 'PROCESSING') AS lease
    LEFT JOIN LATERAL (
        SELECT oldest.task_id, oldest.run_after
        FROM unnest(CAST(%(task_types)s AS text[])) AS types(task_type)
        CROSS JOIN LATERAL (
            SELECT task_id, run_after FROM process_tracker
            WHERE task_type = types.task_type AND status IN ('PENDING', 'RETRY')
            ORDER BY run_after, task_id
            LIMIT 1
        ) AS oldest
        ORDER BY oldest.run_after, oldest.task_id
        LIMIT 1
    ) AS head ON true
"""


@dataclass(frozen=True, slots=True)
class DueWork:
    """What a DAG run would find in the queue now, and how long until the clock alone changes it."""

    head_task_id: str | None  # the first PENDING/RETRY task in claim order, due or not
    head_run_after: dt.datetime | None  # None also when held back indefinitely ('infinity')
    head_due_in: float | None  # seconds until the head is due; <= 0: due now
    lease_expires_at: dt.datetime | None  # the earliest lease held
    lease_expires_in: float | None  # seconds; < 0: the reaper has a task to rescue

    @property
    def tasks_due(self) -> bool:
        return self.head_due_in is not None and self.head_due_in <= 0

    @property
    def leases_expired(self) -> bool:
        return self.lease_expires_in is not None and self.lease_expires_in < 0

    @property
    def anything_due(self) -> bool:
        """A run would claim a task or rescue one."""
        return self.tasks_due or self.leases_expired

    @property
    def work_key(self) -> tuple[Any, ...]:
        """Identifies the work a run would start with. A run that claims or reaps changes it, so an
        unchanged key means nobody has acted since it was last seen (asking again would only
        queue another run for the same work)."""
        head = (self.head_task_id, self.head_run_after) if self.tasks_due else None
        return head, self.lease_expires_at if self.leases_expired else None

    def seconds_until_change(self) -> float | None:
        """Seconds until a task falls due or a lease expires (None: only a write can change it)."""
        waits = [self.head_due_in if not self.tasks_due else None,
                 self.lease_expires_in if not self.leases_expired else None]
        waits = [w for w in waits if w is not None]
        return max(0.0, min(waits)) if waits else None


async def read_due_work(conn: Any) -> DueWork:
    """The queue as :class:`DueWork`, on an async psycopg connection in autocommit mode."""
    cursor = await conn.execute(DUE_WORK, {"task_types": [t.value for t in TaskType]})
    return DueWork(*await cursor.fetchone())


class ProcessTracker:
    """The tracker API bound to one database and one retry policy."""

    def __init__(self, db: Database, retry_policy: RetryPolicy | None = None):
        self.db = db
        self.retry_policy = retry_policy or RetryPolicy.from_env()

    @contextmanager
    def _transaction(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
        else:
            with self.db.begin() as own:
                yield own

    # ---- seed API -------------------------------------------------------------------------

    def create_task(
        self, task_type: str | TaskType, payload: Mapping[str, Any], conn: Connection | None = None
    ) -> Task:
        """A new PENDING task with attempts 0."""
        return self.create_tasks(task_type, [payload], conn=conn)[0]

    def create_tasks(
        self,
        task_type: str | TaskType,
        payloads: Sequence[Mapping[str, Any]],
        conn: Connection | None = None,
    ) -> list[Task]:
        """Bulk form of create_task: one INSERT for all payloads, returned in input order."""
        task_type = parse_task_type(task_type)
        encoded = [_encode_payload(p, i) for i, p in enumerate(payloads)]
        if not encoded:
            return []
        with self._transaction(conn) as c:
            return Task.from_rows(c.execute(_INSERT_TASKS, {"task_type": task_type.value, "payloads": encoded}))

    def get_next_pending_task(self, task_type: str | TaskType) -> Task | None:
        """The oldest due PENDING or RETRY task of a type, without claiming it."""
        tasks = self.due_tasks(task_type, limit=1)
        return tasks[0] if tasks else None

    def update_task_status(
        self,
        task_id: str,
        new_status: str | TaskStatus,
        error_message: str | None = None,
        increment_attempt: bool = False,
        conn: Connection | None = None,
    ) -> Task:
        """Administrative status change with the seed's semantics (no lease check)."""
        status = parse_task_status(new_status)
        sets = ["status = :status", "attempts = attempts + :inc"]
        if status is TaskStatus.PROCESSING:
            sets += ["processing_started_at = now()", "last_error = NULL", "completed_at = NULL"]
        elif status is TaskStatus.COMPLETED:
            sets += ["completed_at = now()", "last_error = NULL"]
        elif status is TaskStatus.FAILED:
            sets += ["completed_at = now()", "last_error = coalesce(:error, last_error)"]
        else:  # PENDING, RETRY: due again now, not finished
            sets += ["completed_at = NULL", "run_after = now()"]
            if error_message is not None:
                sets.append("last_error = :error")
        if status is TaskStatus.PROCESSING:
            # a PROCESSING row always carries a lease; an admin claim gets an anonymous one
            sets += [
                "lease_owner = coalesce(lease_owner, 'update_task_status')",
                "lease_expires_at = now() + make_interval(secs => :lease)",
            ]
        else:
            sets += ["lease_owner = NULL", "lease_expires_at = NULL"]
        statement = sa.text(
            f"UPDATE process_tracker SET {', '.join(sets)} WHERE task_id = :task_id RETURNING {_COLUMNS}"
        )
        params = {
            "status": status.value,
            "inc": 1 if increment_attempt else 0,
            "error": _truncate(error_message),
            "task_id": task_id,
            "lease": settings.lease_seconds(),
        }
        with self._transaction(conn) as c:
            row = c.execute(statement, params).first()
        if row is None:
            raise TaskNotFoundError(f"no process_tracker task with task_id {task_id!r}")
        return Task.from_row(row)

    # ---- reading --------------------------------------------------------------------------

    def get_task(self, task_id: str, conn: Connection | None = None) -> Task:
        with self._transaction(conn) as c:
            row = c.execute(
                sa.text(f"SELECT {_COLUMNS} FROM process_tracker WHERE task_id = :id"), {"id": task_id}
            ).first()
        if row is None:
            raise TaskNotFoundError(f"no process_tracker task with task_id {task_id!r}")
        return Task.from_row(row)

    def due_tasks(self, task_type: str | TaskType, limit: int) -> list[Task]:
        """Up to `limit` due tasks, oldest first, read-only (used by dry runs)."""
        task_type = parse_task_type(task_type)
        _check_positive("limit", limit)
        with self.db.begin() as c:
            return Task.from_rows(c.execute(_NEXT_DUE, {"task_type": task_type.value, "limit": limit}))

    def task_refs(self, task_ids: Sequence[str], conn: Connection) -> list["TaskRef"]:
        """What a chunk needs of its tasks, in the order of `task_ids` (unknown ids are left out).

        The payload is decoded only when it names no staging entry (to say what is wrong with it):
        a chunk reads its tasks three times (decide, validate, run).
        """
        rows = conn.exec_driver_sql(  # %(ids)b: the ids as a binary array (no per-element escaping)
            """
            SELECT task_id, status, lease_owner,
                   CASE WHEN jsonb_typeof(payload -> 'staging_entry_id') = 'string'
                        THEN nullif(payload ->> 'staging_entry_id', '') END AS staging_entry_id,
                   CASE WHEN jsonb_typeof(payload -> 'staging_entry_id') = 'string'
                             AND payload ->> 'staging_entry_id' <> '' THEN NULL ELSE payload END AS unusable_payload
            FROM process_tracker WHERE task_id = ANY(%(ids)b)
            """,
            {"ids": list(task_ids)},
        )
        refs = [TaskRef(*r) for r in rows]  # selected in field order
        position = {task_id: i for i, task_id in enumerate(task_ids)}
        return sorted(refs, key=lambda t: position[t.task_id])

    def leased_ids(self, task_ids: Sequence[str], owner: str, conn: Connection | None = None) -> list[str]:
        """Those of `task_ids` still PROCESSING under `owner`'s lease."""
        with self._transaction(conn) as c:
            return list(
                c.exec_driver_sql(
                    "SELECT task_id FROM process_tracker WHERE task_id = ANY(%(ids)b)"
                    " AND status = 'PROCESSING' AND lease_owner = %(owner)s",
                    {"ids": list(task_ids), "owner": owner},
                ).scalars()
            )

    def staging_entry_ids(self, task_ids: Sequence[str], conn: Connection | None = None) -> list[str]:
        """The staging entries these tasks process (their payload's staging_entry_id)."""
        with self._transaction(conn) as c:
            return list(
                c.execute(
                    sa.text(
                        "SELECT DISTINCT payload ->> 'staging_entry_id' FROM process_tracker"
                        " WHERE task_id = ANY(:ids) AND payload ? 'staging_entry_id'"
                    ),
                    {"ids": list(task_ids)},
                ).scalars()
            )

    def failed_task_ids(self, staging_entry_ids: Sequence[str], conn: Connection | None = None) -> list[str]:
        """FAILED tasks of these staging entries (a reprocess scoped by a filter, not by task)."""
        with self._transaction(conn) as c:
            return list(
                c.execute(
                    sa.text(
                        "SELECT task_id FROM process_tracker WHERE status = 'FAILED' AND payload ? 'staging_entry_id'"
                        " AND payload ->> 'staging_entry_id' = ANY(CAST(:ids AS text[])) ORDER BY task_id"
                    ),
                    {"ids": list(staging_entry_ids)},
                ).scalars()
            )

    def count_failed(self, task_ids: Sequence[str] | None, created_from: dt.datetime | None,
                     created_to: dt.datetime | None, conn: Connection | None = None) -> int:
        """FAILED tasks a requeue of this scope would consider (a dry run's answer)."""
        with self._transaction(conn) as c:
            return c.execute(
                sa.text(
                    "SELECT count(*) FROM process_tracker t WHERE t.status = 'FAILED'"
                    " AND (CAST(:ids AS text[]) IS NULL OR t.task_id = ANY(CAST(:ids AS text[])))"
                    " AND (CAST(:created_from AS timestamptz) IS NULL OR t.created_at >= :created_from)"
                    " AND (CAST(:created_to AS timestamptz) IS NULL OR t.created_at < :created_to)"
                ),
                {"ids": list(task_ids) if task_ids is not None else None, "created_from": created_from,
                 "created_to": created_to},
            ).scalar_one()

    def cancel_unstarted(self, staging_entry_ids: Sequence[str], conn: Connection | None = None) -> list[str]:
        """Delete the tasks of entries no task has started on yet (every task PENDING or RETRY with no
        attempt); returns those entries. Entries with any other task are left alone."""
        with self._transaction(conn) as c:
            return list(
                c.execute(
                    sa.text(
                        """
                        WITH started AS (
                            SELECT DISTINCT payload ->> 'staging_entry_id' AS id FROM process_tracker
                            WHERE payload ? 'staging_entry_id'
                              AND payload ->> 'staging_entry_id' = ANY(CAST(:ids AS text[]))
                              AND (status NOT IN ('PENDING', 'RETRY') OR attempts > 0)
                        ), cancelled AS (
                            DELETE FROM process_tracker t
                            WHERE t.payload ? 'staging_entry_id'
                              AND t.payload ->> 'staging_entry_id' = ANY(CAST(:ids AS text[]))
                              AND t.payload ->> 'staging_entry_id' NOT IN (SELECT id FROM started)
                            RETURNING t.payload ->> 'staging_entry_id' AS id
                        )
                        SELECT e.id FROM unnest(CAST(:ids AS text[])) AS e(id)
                        WHERE e.id NOT IN (SELECT id FROM started)
                        """
                    ),
                    {"ids": list(staging_entry_ids)},
                ).scalars()
            )

    def analyze(self, conn: Connection) -> None:
        """Fresh planner statistics after a bulk enqueue (autovacuum may be late, or off)."""
        conn.execute(sa.text("ANALYZE process_tracker"))

    def enqueue_entries(self, staging_entry_ids: Sequence[str], conn: Connection | None = None) -> list[str]:
        """A new PENDING task for each staging entry that has no unfinished task (backfill)."""
        if not staging_entry_ids:
            return []
        with self._transaction(conn) as c:
            return list(
                c.execute(
                    sa.text(
                        """
                        INSERT INTO process_tracker (task_type, payload)
                        SELECT 'PROCESS_STAGING_ENTRY', jsonb_build_object('staging_entry_id', e.id)
                        FROM unnest(CAST(:ids AS text[])) AS e(id)
                        WHERE NOT EXISTS (  -- one probe of the unique index of open tasks per entry
                            SELECT 1 FROM process_tracker o
                            WHERE o.payload ? 'staging_entry_id' AND o.payload ->> 'staging_entry_id' = e.id
                              AND o.status IN ('PENDING', 'PROCESSING', 'RETRY'))
                        RETURNING task_id
                        """
                    ),
                    {"ids": list(staging_entry_ids)},
                ).scalars()
            )

    # ---- claiming and outcomes ------------------------------------------------------------

    def claim_batch(self, task_type: str | TaskType, limit: int, lease_seconds: int | None = None, owner: str = "",
                    conn: Connection | None = None) -> list[Task]:
        """Atomically move up to `limit` due tasks to PROCESSING under a lease held by `owner`.

        Concurrent claimers never receive the same task. `owner` must be unique per claim
        (e.g. the Airflow run id plus a random suffix): it is the fence for outcome writes.
        """
        tasks = Task.from_rows(self._claim(_CLAIM, task_type, limit, lease_seconds, owner, conn))
        return sorted(tasks, key=lambda t: (t.run_after, t.task_id))

    def claim_ids(self, task_type: str | TaskType, limit: int, lease_seconds: int | None = None, owner: str = "",
                  conn: Connection | None = None) -> list[str]:
        """``claim_batch`` returning only the task ids, oldest first (the pipeline's chunks load their
        tasks later; building 13-column rows here cost 16 us per entry, bench/RESULTS.md)."""
        return [row.task_id for row in self._claim(_CLAIM_IDS, task_type, limit, lease_seconds, owner, conn)]

    def _claim(self, statement: sa.TextClause, task_type: str | TaskType, limit: int, lease_seconds: int | None,
               owner: str, conn: Connection | None) -> list[Any]:
        """The claim statement's rows; the arguments are checked before the database is touched."""
        params = self._claim_params(task_type, limit, lease_seconds, owner)
        with self._transaction(conn) as c:
            return c.execute(statement, params).all()

    def _claim_params(
        self, task_type: str | TaskType, limit: int, lease_seconds: int | None, owner: str
    ) -> dict[str, Any]:
        task_type = parse_task_type(task_type)
        _check_positive("limit", limit)
        lease_seconds = settings.lease_seconds() if lease_seconds is None else lease_seconds
        _check_positive("lease_seconds", lease_seconds)
        if not owner:
            raise InvalidInputError("claim_batch needs a non-empty owner (unique per claim)")
        return {"task_type": task_type.value, "limit": limit, "owner": owner, "lease_seconds": lease_seconds}

    def finish(
        self, outcomes: Iterable[Outcome], owner: str, conn: Connection | None = None
    ) -> dict[str, str]:
        """Write outcomes of tasks claimed by `owner`; return {task_id: status written}.

        Tasks no longer PROCESSING under this owner (rescued, re-claimed, already finished)
        are left untouched and absent from the result. A RETRY past max_attempts is FAILED.
        """
        outcomes = list(outcomes)
        if not outcomes:
            return {}
        for outcome in outcomes:
            if outcome.status not in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.RETRY):
                raise InvalidInputError(f"an outcome is COMPLETED, FAILED or RETRY, not {outcome.status}")
            # a wait also gives the attempt back, which only makes sense for a task that will run again
            if outcome.wait_seconds is not None and (outcome.status != TaskStatus.RETRY or outcome.wait_seconds < 0):
                raise InvalidInputError(
                    f"task {outcome.task_id}: wait_seconds needs a RETRY outcome and a value >= 0,"
                    f" got {outcome.status} with {outcome.wait_seconds!r}"
                )
        params = {
            "ids": [o.task_id for o in outcomes],
            "statuses": [TaskStatus(o.status).value for o in outcomes],
            "errors": [_truncate(o.error) for o in outcomes],
            "waits": [o.wait_seconds for o in outcomes],
            "owner": owner,
            **self._policy_params(),
        }
        with self._transaction(conn) as c:
            return dict(c.exec_driver_sql(_FINISH, params).all())

    def complete(self, task_ids: Iterable[str], owner: str, conn: Connection | None = None) -> int:
        return len(self.finish((Outcome(t, TaskStatus.COMPLETED) for t in task_ids), owner, conn))

    def fail(self, errors: Mapping[str, str], owner: str, conn: Connection | None = None) -> int:
        return len(self.finish((Outcome(t, TaskStatus.FAILED, e) for t, e in errors.items()), owner, conn))

    def retry(self, errors: Mapping[str, str], owner: str, conn: Connection | None = None) -> dict[str, str]:
        """Put tasks back for a later attempt with backoff; exhausted ones become FAILED."""
        return self.finish((Outcome(t, TaskStatus.RETRY, e) for t, e in errors.items()), owner, conn)

    def reap_expired_leases(self, conn: Connection | None = None) -> ReapResult:
        """Rescue PROCESSING tasks whose lease expired: RETRY, or FAILED when attempts are used up."""
        with self._transaction(conn) as c:
            rows = c.exec_driver_sql(_REAP, self._policy_params()).all()
        return ReapResult(
            retried=[r.task_id for r in rows if r.status == TaskStatus.RETRY],
            failed=[r.task_id for r in rows if r.status == TaskStatus.FAILED],
        )

    def requeue(
        self,
        task_ids: Sequence[str] | None = None,
        created_from: dt.datetime | None = None,
        created_to: dt.datetime | None = None,
        conn: Connection | None = None,
    ) -> list[str]:
        """FAILED tasks (by ids and/or a created_at window) back to PENDING with attempts 0.

        A task whose staging entry already has another unfinished task is left FAILED, and
        when several FAILED tasks of one staging entry match, only the newest is reopened
        (at most one unfinished task per staging entry).

        Requeues run one at a time: the first takes a transaction-scoped advisory lock, a second
        waits for it to commit (up to the lock timeout) and then finds those tasks requeued
        already. Without it, the second re-checked every row the first had locked against the
        whole candidate set: 31 s for 3,000 tasks, quadratic (bench/requeue.py).
        """
        if task_ids is None and created_from is None and created_to is None:
            raise InvalidInputError("requeue needs task_ids or a created_at window")
        params = {
            "ids": list(task_ids) if task_ids is not None else None,
            "created_from": created_from,
            "created_to": created_to,
        }
        with self._transaction(conn) as c:
            c.execute(_ONE_REQUEUE_AT_A_TIME)
            return list(c.execute(_REQUEUE, params).scalars())

    # ---- observing and housekeeping ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts per task type and status, age of the oldest due task, leases held."""
        with self.db.begin() as c:
            counts = c.execute(
                sa.text("SELECT task_type, status, count(*) AS n FROM process_tracker GROUP BY 1, 2")
            ).all()
            oldest = c.execute(
                sa.text(
                    "SELECT extract(epoch FROM now() - min(run_after)) FROM process_tracker"
                    " WHERE status IN ('PENDING', 'RETRY') AND run_after <= now()"
                )
            ).scalar()
            leases = c.execute(
                sa.text("SELECT count(*) FROM process_tracker WHERE status = 'PROCESSING'")
            ).scalar()
        by_status: Counter[str] = Counter()
        by_type: dict[str, dict[str, int]] = {}
        for row in counts:
            by_status[row.status] += row.n
            by_type.setdefault(row.task_type, {})[row.status] = row.n
        return {
            "by_status": {s.value: by_status.get(s.value, 0) for s in TaskStatus},
            "by_type": by_type,
            "total": sum(by_status.values()),
            "oldest_due_age_seconds": float(oldest) if oldest is not None else None,
            "leases_held": leases,
        }

    def queue_timing(self, conn: Connection) -> Any:
        """Due now, due later, and when the oldest due task became due (the Recon view's queue)."""
        return conn.execute(
            sa.text(
                """
                SELECT now() AS as_of,
                       count(*) FILTER (WHERE run_after <= now()) AS due_now,
                       count(*) FILTER (WHERE run_after > now()) AS due_later,
                       min(run_after) FILTER (WHERE run_after <= now()) AS oldest_due_at
                FROM process_tracker
                WHERE status IN ('PENDING', 'RETRY')
                """
            )
        ).one()

    def backlog(self, conn: Connection) -> int:
        """PENDING and RETRY tasks, due now or later."""
        return conn.execute(
            sa.text("SELECT count(*) FROM process_tracker WHERE status IN ('PENDING', 'RETRY')")
        ).scalar_one()

    def retrying(self, limit: int, conn: Connection) -> list[Any]:
        """Tasks waiting to be tried again, next due first."""
        return conn.execute(
            sa.text(
                """
                SELECT task_id, task_type, attempts, run_after AS next_due_at,
                       extract(epoch FROM run_after - now()) AS due_in_seconds,
                       last_error, payload ->> 'staging_entry_id' AS staging_entry_id
                FROM process_tracker
                WHERE status = 'RETRY'
                ORDER BY run_after, task_id
                LIMIT :limit
                """
            ),
            {"limit": limit},
        ).all()

    def waiting(self, limit: int, conn: Connection) -> tuple[int, list[Any]]:
        """Tasks deliberately waiting (a confirmation before its order, or within its ageing): how
        many, and the `limit` due soonest. Their last_error starts with WAIT_PREFIX."""
        count = conn.execute(
            sa.text("SELECT count(*) FROM process_tracker WHERE status = 'RETRY' AND starts_with(last_error, :p)"),
            {"p": WAIT_PREFIX},
        ).scalar_one()
        rows = conn.execute(
            sa.text(
                """
                SELECT task_id, payload ->> 'staging_entry_id' AS staging_entry_id, run_after AS next_due_at,
                       extract(epoch FROM run_after - now()) AS due_in_seconds,
                       substr(last_error, length(:p) + 1) AS reason
                FROM process_tracker
                WHERE status = 'RETRY' AND starts_with(last_error, :p)
                ORDER BY run_after, task_id
                LIMIT :limit
                """
            ),
            {"p": WAIT_PREFIX, "limit": limit},
        ).all()
        return count, rows

    def leases(self, conn: Connection) -> list[Any]:
        """Leases held, per owner: how many tasks, since when, first expiry, how many expired."""
        return conn.execute(
            sa.text(
                """
                SELECT lease_owner, count(*) AS tasks,
                       min(processing_started_at) AS claimed_at,
                       min(lease_expires_at) AS first_expiry,
                       count(*) FILTER (WHERE lease_expires_at < now()) AS expired
                FROM process_tracker
                WHERE status = 'PROCESSING'
                GROUP BY lease_owner
                ORDER BY min(lease_expires_at), lease_owner
                """
            )
        ).all()

    def failed(self, limit: int, conn: Connection) -> tuple[int, list[Any]]:
        """How many tasks are FAILED, and the most recent `limit` of them."""
        count = conn.execute(sa.text("SELECT count(*) FROM process_tracker WHERE status = 'FAILED'")).scalar_one()
        rows = conn.execute(
            sa.text(
                """
                SELECT task_id, task_type, attempts, last_error, updated_at AS failed_at,
                       payload ->> 'staging_entry_id' AS staging_entry_id
                FROM process_tracker
                WHERE status = 'FAILED'
                ORDER BY updated_at DESC, task_id
                LIMIT :limit
                """
            ),
            {"limit": limit},
        ).all()
        return count, rows

    def failed_task_of_entries(self, staging_entry_ids: Sequence[str], conn: Connection) -> dict[str, str]:
        """The latest FAILED task of each staging entry (what a reprocess of that entry takes)."""
        if not staging_entry_ids:
            return {}
        rows = conn.execute(
            sa.text(
                """
                SELECT DISTINCT ON (payload ->> 'staging_entry_id')
                       payload ->> 'staging_entry_id' AS staging_entry_id, task_id
                FROM process_tracker
                WHERE status = 'FAILED' AND payload ->> 'staging_entry_id' = ANY(:ids)
                ORDER BY payload ->> 'staging_entry_id', updated_at DESC, task_id
                """
            ),
            {"ids": list(staging_entry_ids)},
        ).all()
        return {r.staging_entry_id: r.task_id for r in rows}

    def prune_completed(self, older_than: dt.timedelta, batch_size: int = 5_000) -> int:
        """Delete COMPLETED rows finished before now() - older_than (keeps the hot table small), in
        transactions of at most `batch_size` rows: a months-long backlog of finished rows never holds
        one long transaction and its locks against the claim."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        deleted = 0
        with self.db.begin() as c:
            cutoff = c.execute(sa.text("SELECT now() - make_interval(secs => :secs)"),
                               {"secs": older_than.total_seconds()}).scalar_one()
        while True:
            with self.db.begin() as c:
                batch = c.execute(_PRUNE_BATCH, {"cutoff": cutoff, "batch": batch_size}).rowcount
            deleted += batch
            if batch < batch_size:
                return deleted

    def _policy_params(self) -> dict[str, int]:
        return {
            "max_attempts": self.retry_policy.max_attempts,
            "base_seconds": self.retry_policy.base_seconds,
            "max_seconds": self.retry_policy.max_seconds,
        }


# one batch of the prune, oldest first along process_tracker_completed_at_idx (partial: COMPLETED only)
_PRUNE_BATCH = sa.text(
    "DELETE FROM process_tracker WHERE task_id IN ("
    " SELECT task_id FROM process_tracker WHERE status = 'COMPLETED' AND completed_at < :cutoff"
    " ORDER BY completed_at LIMIT :batch FOR UPDATE SKIP LOCKED)"
)

_ONE_REQUEUE_AT_A_TIME = sa.text("SELECT pg_advisory_xact_lock(hashtextextended('recon.requeue', 0))")

# `payload ? 'staging_entry_id'` lets the NOT EXISTS probe the unique index of open tasks per entry
# (its predicate); `= ANY(ARRAY(...))` is computed once, where `IN (SELECT ... FROM chosen)` was a
# join that the row re-check after a concurrent update ran again for every row.
_REQUEUE = sa.text(
    """
    WITH candidates AS (
        SELECT t.task_id, t.payload ->> 'staging_entry_id' AS entry_id, t.created_at
        FROM process_tracker t
        WHERE t.status = 'FAILED'
          AND (CAST(:ids AS text[]) IS NULL OR t.task_id = ANY(CAST(:ids AS text[])))
          AND (CAST(:created_from AS timestamptz) IS NULL OR t.created_at >= :created_from)
          AND (CAST(:created_to AS timestamptz) IS NULL OR t.created_at < :created_to)
          AND NOT EXISTS (
              SELECT 1 FROM process_tracker o
              WHERE o.payload ? 'staging_entry_id'
                AND o.payload ->> 'staging_entry_id' = t.payload ->> 'staging_entry_id'
                AND o.status IN ('PENDING', 'PROCESSING', 'RETRY'))
    ), chosen AS (
        SELECT task_id FROM candidates WHERE entry_id IS NULL
        UNION ALL
        (SELECT DISTINCT ON (entry_id) task_id FROM candidates WHERE entry_id IS NOT NULL
         ORDER BY entry_id, created_at DESC, task_id DESC)
    )
    UPDATE process_tracker t SET status = 'PENDING', attempts = 0, run_after = now(),
           completed_at = NULL, lease_owner = NULL, lease_expires_at = NULL
    WHERE t.task_id = ANY(ARRAY(SELECT task_id FROM chosen)) AND t.status = 'FAILED'
    RETURNING t.task_id
    """
)


def _encode_payload(payload: Mapping[str, Any], index: int) -> str:
    if not isinstance(payload, Mapping):
        raise InvalidInputError(f"payload #{index} must be a JSON object (dict), got {type(payload).__name__}")
    try:
        return json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"payload #{index} is not JSON-serialisable: {exc}") from None


def _truncate(message: str | None) -> str | None:
    if message is None or len(message) <= MAX_ERROR_LENGTH:
        return message
    return message[: MAX_ERROR_LENGTH - 20] + " ... [truncated]"


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")


# ---- module-level seed API on the default database (library entry points) -----------------------


def tasks_of_entry(conn: Connection, staging_entry_id: str) -> list[Task]:
    """Every task that processed or will process this staging entry, oldest first: the open one
    through process_tracker_one_open_task_per_entry_uq, finished ones through
    process_tracker_finished_entry_idx."""
    return Task.from_rows(conn.execute(
        sa.text(
            f"""
            SELECT {_COLUMNS} FROM process_tracker
            WHERE payload ->> 'staging_entry_id' = :id AND payload ? 'staging_entry_id'
              AND status IN ('PENDING', 'PROCESSING', 'RETRY')
            UNION ALL
            SELECT {_COLUMNS} FROM process_tracker
            WHERE payload ->> 'staging_entry_id' = :id AND status IN ('COMPLETED', 'FAILED')
            ORDER BY created_at, task_id
            """
        ),
        {"id": staging_entry_id},
    ))


def entries_with_open_task(conn: Connection, staging_entry_ids: Sequence[str]) -> set[str]:
    """Those of these staging entries that have a task still to run (PENDING, PROCESSING or RETRY),
    through process_tracker_one_open_task_per_entry_uq. A PENDING line without one (its task failed
    by an operator, or inserted by plain SQL without a task) will not be processed by itself."""
    if not staging_entry_ids:
        return set()
    return set(conn.exec_driver_sql(
        "SELECT payload ->> 'staging_entry_id' FROM process_tracker"
        " WHERE payload ->> 'staging_entry_id' = ANY(CAST(%(ids)b AS text[])) AND payload ? 'staging_entry_id'"
        " AND status IN ('PENDING', 'PROCESSING', 'RETRY')",
        {"ids": list(staging_entry_ids)},
    ).scalars())


def create_task(task_type: str | TaskType, payload: Mapping[str, Any]) -> Task:
    return ProcessTracker(default_database()).create_task(task_type, payload)


def get_next_pending_task(task_type: str | TaskType) -> Task | None:
    return ProcessTracker(default_database()).get_next_pending_task(task_type)


def update_task_status(
    task_id: str,
    new_status: str | TaskStatus,
    error_message: str | None = None,
    increment_attempt: bool = False,
) -> Task:
    return ProcessTracker(default_database()).update_task_status(task_id, new_status, error_message, increment_attempt)
