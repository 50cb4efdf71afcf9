"""What the Recon view in the Airflow UI shows: queue, throughput, exceptions, ledger.

Every figure comes from one of the SQL statements below (read-only, one round trip each),
so a number on the page can be checked with the same query in psql. The functions return
plain dicts; :func:`recon.json_encoding.jsonable` turns them into JSON-safe values (money as
strings, never floats).

The pipeline writes one row per run with :func:`record_run_summary` (table ``run_summaries``,
migration ``0003``); :func:`summary_markdown` renders such a summary as a short Markdown text.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from typing import Any, Mapping

import sqlalchemy as sa

from recon import ledger
from recon.db import Database, default_database
from recon.tracker import ProcessTracker, TaskStatus

DAG_ID = "recon_process_tracker"
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
REPROCESS_MAX_TASK_IDS = 500  # a pre-filled trigger conf stays small enough to read and edit

# ---------------------------------------------------------------------------------------------
# Queue
# ---------------------------------------------------------------------------------------------

# Counts per status and type, the oldest due task's age and the leases held are
# ProcessTracker.stats(); these statements add what only the view shows.
_QUEUE_TIMING = sa.text(
    """
    SELECT now() AS as_of,
           count(*) FILTER (WHERE status IN ('PENDING', 'RETRY') AND run_after <= now()) AS due_now,
           count(*) FILTER (WHERE status IN ('PENDING', 'RETRY') AND run_after > now()) AS due_later,
           min(run_after) FILTER (WHERE status IN ('PENDING', 'RETRY') AND run_after <= now()) AS oldest_due_at
    FROM process_tracker
    WHERE status IN ('PENDING', 'RETRY')
    """
)

_RETRY_TASKS = sa.text(
    """
    SELECT task_id, task_type, attempts, run_after AS next_due_at,
           extract(epoch FROM run_after - now()) AS due_in_seconds,
           last_error, payload ->> 'staging_entry_id' AS staging_entry_id
    FROM process_tracker
    WHERE status = 'RETRY'
    ORDER BY run_after, task_id
    LIMIT :limit
    """
)

_LEASES = sa.text(
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


def queue(db: Database | None = None, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Counts per status and task type, oldest due task, tasks waiting to retry, leases held."""
    limit = _limit(limit)
    db = db or default_database()
    stats = ProcessTracker(db).stats()
    with db.begin() as conn:
        timing = conn.execute(_QUEUE_TIMING).one()
        retry = conn.execute(_RETRY_TASKS, {"limit": limit}).all()
        leases = conn.execute(_LEASES).all()
    by_status = stats["by_status"]
    return {
        "as_of": timing.as_of,
        "by_status": by_status,
        # every status in every row of the per-type table, 0 where a type has none
        "by_type": {t: {**dict.fromkeys(by_status, 0), **c} for t, c in stats["by_type"].items()},
        "total": stats["total"],
        "due_now": timing.due_now,
        "due_later": timing.due_later,
        "oldest_due_at": timing.oldest_due_at,
        "oldest_due_age_seconds": _float(stats["oldest_due_age_seconds"]),
        "retry": {
            "count": by_status[TaskStatus.RETRY],
            "tasks": [{**r._mapping, "due_in_seconds": _float(r.due_in_seconds)} for r in retry],
        },
        "leases": {
            "held": stats["leases_held"],
            "expired": sum(r.expired for r in leases),
            "owners": [dict(r._mapping) for r in leases],
        },
    }


# ---------------------------------------------------------------------------------------------
# Throughput: per-run summaries
# ---------------------------------------------------------------------------------------------

_RECORD_RUN = sa.text(
    """
    INSERT INTO run_summaries (dag_id, run_id, outcome, dry_run, claimed, processed, backlog, summary)
    SELECT :dag_id, :run_id, :outcome, :dry_run, :claimed, :processed, count(*), CAST(:summary AS jsonb)
    FROM process_tracker WHERE status IN ('PENDING', 'RETRY')
    ON CONFLICT (dag_id, run_id) DO UPDATE SET
        recorded_at = now(), outcome = EXCLUDED.outcome, dry_run = EXCLUDED.dry_run,
        claimed = EXCLUDED.claimed, processed = EXCLUDED.processed, backlog = EXCLUDED.backlog,
        summary = EXCLUDED.summary
    RETURNING dag_id, run_id, recorded_at, outcome, dry_run, claimed, processed, backlog, summary
    """
)

_RUN_COLUMNS = "dag_id, run_id, recorded_at, outcome, dry_run, claimed, processed, backlog, summary"

_RECENT_RUNS = sa.text(
    f"""
    SELECT {_RUN_COLUMNS} FROM run_summaries
    WHERE dag_id = :dag_id
    ORDER BY recorded_at DESC, run_id DESC
    LIMIT :limit
    """
)

_ONE_RUN = sa.text(f"SELECT {_RUN_COLUMNS} FROM run_summaries WHERE dag_id = :dag_id AND run_id = :run_id")


def record_run_summary(
    run_id: str,
    summary: Mapping[str, Any],
    *,
    dag_id: str = DAG_ID,
    outcome: str = "success",
    db: Database | None = None,
) -> dict[str, Any]:
    """Store one run's summary (as returned by ``pipeline.summarize``) with the backlog it left.

    ``outcome`` is ``"failed"`` when the run is about to fail (a chunk did not finish).
    Recording the same run again (a retried summary task) replaces its row.
    """
    if outcome not in ("success", "failed"):
        raise ValueError(f"outcome must be 'success' or 'failed', got {outcome!r}")
    if not run_id:
        raise ValueError("run_id must be a non-empty string")
    dry_run = bool(summary.get("dry_run", False))
    claimed = 0 if dry_run else int(summary.get("claimed", 0) or 0)
    processed = 0 if dry_run else int(summary.get("completed", 0) or 0) + int(summary.get("failed", 0) or 0)
    with (db or default_database()).begin() as conn:
        row = conn.execute(
            _RECORD_RUN,
            {
                "dag_id": dag_id,
                "run_id": run_id,
                "outcome": outcome,
                "dry_run": dry_run,
                "claimed": claimed,
                "processed": processed,
                "summary": json.dumps(dict(summary), default=str),
            },
        ).one()
    return dict(row._mapping)


def recent_runs(db: Database | None = None, limit: int = 30, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
    """The latest recorded runs, newest first."""
    with (db or default_database()).begin() as conn:
        rows = conn.execute(_RECENT_RUNS, {"dag_id": dag_id, "limit": _limit(limit)}).all()
    return [dict(r._mapping) for r in rows]


def run_summary(run_id: str, db: Database | None = None, dag_id: str = DAG_ID) -> dict[str, Any] | None:
    with (db or default_database()).begin() as conn:
        row = conn.execute(_ONE_RUN, {"dag_id": dag_id, "run_id": run_id}).first()
    return dict(row._mapping) if row else None


def throughput(db: Database | None = None, limit: int = 30, dag_id: str = DAG_ID) -> dict[str, Any]:
    """Entries processed per recent run and the backlog each run left, oldest first (chart order)."""
    runs = list(reversed(recent_runs(db, limit, dag_id)))
    # the current trend: the backlog the latest run left against the one before it (the chart
    # shows the longer series)
    real = [r for r in runs if not r["dry_run"]]
    change = real[-1]["backlog"] - real[-2]["backlog"] if len(real) >= 2 else None
    trend = None if change is None else "growing" if change > 0 else "shrinking" if change < 0 else "flat"
    return {
        "runs": [
            {
                **{k: r[k] for k in ("run_id", "recorded_at", "outcome", "dry_run", "claimed", "processed", "backlog")},
                "entries_per_s": r["summary"].get("entries_per_s"),
                "duration_s": r["summary"].get("duration_s"),
            }
            for r in runs
        ],
        "processed_total": sum(r["processed"] for r in runs),
        "backlog_change": change,
        "backlog_trend": trend,
    }


# ---------------------------------------------------------------------------------------------
# Exceptions: FAILED tasks and entries waiting for manual review
# ---------------------------------------------------------------------------------------------

_FAILED_TASKS = sa.text(
    """
    SELECT task_id, task_type, attempts, last_error, updated_at AS failed_at,
           payload ->> 'staging_entry_id' AS staging_entry_id
    FROM process_tracker
    WHERE status = 'FAILED'
    ORDER BY updated_at DESC, task_id
    LIMIT :limit
    """
)

# The filters of the manual-review list; NULL means "any".
_REVIEW_FILTER = """
    s.status = 'NEEDS_MANUAL_REVIEW' AND s.discarded_at IS NULL
    AND (CAST(:error_type AS text) IS NULL OR coalesce(s.metadata ->> 'error_type', '(none)') = :error_type)
    AND (CAST(:account_id AS text) IS NULL OR s.account_id = :account_id)
    AND (CAST(:order_id AS text) IS NULL OR s.order_id = :order_id)
    AND (CAST(:q AS text) IS NULL OR s.staging_entry_id ILIKE :q_like OR s.order_id ILIKE :q_like
         OR s.metadata ->> 'error' ILIKE :q_like)
"""

_REVIEW_GROUPS = sa.text(
    f"""
    SELECT coalesce(s.metadata ->> 'error_type', '(none)') AS error_type, count(*) AS count,
           min(s.updated_at) AS oldest, max(s.updated_at) AS newest
    FROM staging_entries s
    WHERE {_REVIEW_FILTER}
    GROUP BY 1
    ORDER BY count(*) DESC, 1
    """
)

# An entry in manual review has a FAILED tracker task (the engine fails the task with the reason);
# that task id is what a reprocess run takes. Driven by the FAILED tasks, not one look-up per entry.
_REVIEW_ENTRIES = sa.text(
    f"""
    WITH failed AS (
        SELECT DISTINCT ON (payload ->> 'staging_entry_id')
               payload ->> 'staging_entry_id' AS staging_entry_id, task_id
        FROM process_tracker
        WHERE status = 'FAILED' AND payload ? 'staging_entry_id'
        ORDER BY payload ->> 'staging_entry_id', updated_at DESC, task_id
    )
    SELECT s.staging_entry_id, s.account_id, a.account_name, s.order_id, s.entry_type, s.amount,
           s.currency, s.processing_mode, coalesce(s.metadata ->> 'error_type', '(none)') AS error_type,
           s.metadata ->> 'error' AS reason, s.created_at, s.updated_at, f.task_id
    FROM staging_entries s
    JOIN accounts a ON a.account_id = s.account_id
    LEFT JOIN failed f ON f.staging_entry_id = s.staging_entry_id
    WHERE {_REVIEW_FILTER}
    ORDER BY error_type, s.updated_at DESC, s.staging_entry_id
    LIMIT :limit
    """
)

_REVIEW_TASK_IDS = sa.text(
    f"""
    SELECT p.task_id
    FROM process_tracker p
    JOIN staging_entries s ON s.staging_entry_id = p.payload ->> 'staging_entry_id'
    WHERE p.status = 'FAILED' AND {_REVIEW_FILTER}
    ORDER BY p.task_id
    LIMIT :limit
    """
)


def exceptions(
    db: Database | None = None,
    *,
    error_type: str | None = None,
    account_id: str | None = None,
    order_id: str | None = None,
    q: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Recent FAILED tasks, and manual-review entries grouped by error_type (filterable).

    Group counts always cover every matching entry; ``entries`` lists at most ``limit`` of them.
    ``reprocess_task_ids`` are the FAILED tasks of the matching entries (capped), ready for a
    ``reprocess`` trigger of the DAG.
    """
    limit = _limit(limit)
    filters = {
        "error_type": error_type or None,
        "account_id": account_id or None,
        "order_id": order_id or None,
        "q": q or None,
        "q_like": f"%{_escape_like(q)}%" if q else None,
    }
    with (db or default_database()).begin() as conn:
        failed_count = conn.execute(
            sa.text("SELECT count(*) FROM process_tracker WHERE status = 'FAILED'")
        ).scalar_one()
        failed = conn.execute(_FAILED_TASKS, {"limit": limit}).all()
        groups = conn.execute(_REVIEW_GROUPS, filters).all()
        entries = conn.execute(_REVIEW_ENTRIES, {**filters, "limit": limit}).all()
        task_ids = conn.execute(_REVIEW_TASK_IDS, {**filters, "limit": REPROCESS_MAX_TASK_IDS + 1}).scalars().all()
    matching = sum(g.count for g in groups)
    return {
        "failed_tasks": {"count": failed_count, "tasks": [dict(r._mapping) for r in failed]},
        "manual_review": {
            "filters": {k: v for k, v in filters.items() if k != "q_like" and v is not None},
            "count": matching,
            "groups": [dict(g._mapping) for g in groups],
            "entries": [dict(e._mapping) for e in entries],
            "shown": len(entries),
            "reprocess_task_ids": list(task_ids[:REPROCESS_MAX_TASK_IDS]),
            "reprocess_truncated": len(task_ids) > REPROCESS_MAX_TASK_IDS,
        },
    }


def reprocess_conf(task_ids: list[str]) -> dict[str, Any] | None:
    """The DAG run conf that requeues these FAILED tasks (and reopens their entries)."""
    return {"reprocess": {"task_ids": list(task_ids)}} if task_ids else None


def reprocess_window_conf(days: int = 7, now: dt.datetime | None = None) -> dict[str, Any]:
    """The DAG run conf that reprocesses every exception created in the last ``days`` days."""
    now = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    start = now - dt.timedelta(days=days)
    return {
        "reprocess": {
            "created_from": start.isoformat().replace("+00:00", "Z"),
            "created_to": (now + dt.timedelta(seconds=1)).isoformat().replace("+00:00", "Z"),
        }
    }


# ---------------------------------------------------------------------------------------------
# Ledger
# ---------------------------------------------------------------------------------------------

_MISMATCH_TRANSACTIONS = sa.text(
    """
    SELECT t.transaction_id, t.logical_transaction_id, t.version, t.amount, t.currency, t.merchant_id,
           t.metadata ->> 'order_id' AS order_id, t.updated_at,
           s.staging_entry_id AS confirmation_entry_id, s.metadata ->> 'error' AS reason
    FROM transactions t
    LEFT JOIN LATERAL (
        SELECT staging_entry_id, metadata FROM staging_entries
        WHERE status = 'NEEDS_MANUAL_REVIEW' AND metadata ->> 'matched_transaction_id' = t.transaction_id
        ORDER BY updated_at DESC LIMIT 1
    ) s ON true
    WHERE t.status = 'MISMATCH' AND t.discarded_at IS NULL
    ORDER BY t.updated_at DESC, t.transaction_id
    LIMIT :limit
    """
)


def ledger_overview(db: Database | None = None, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Posted / pending / available per account, and transactions in MISMATCH."""
    db = db or default_database()
    balances = [asdict(b) for b in ledger.balances(db=db)]
    with db.begin() as conn:
        mismatch_count = conn.execute(
            sa.text("SELECT count(*) FROM transactions WHERE status = 'MISMATCH' AND discarded_at IS NULL")
        ).scalar_one()
        mismatches = conn.execute(_MISMATCH_TRANSACTIONS, {"limit": _limit(limit)}).all()
    return {
        "balances": balances,
        "mismatch": {"count": mismatch_count, "transactions": [dict(r._mapping) for r in mismatches]},
    }


def overview(db: Database | None = None, **filters: Any) -> dict[str, Any]:
    """Everything the Recon view shows, in one dict."""
    db = db or default_database()
    limit = filters.pop("limit", DEFAULT_LIMIT)
    return {
        "queue": queue(db, limit),
        "throughput": throughput(db),
        "exceptions": exceptions(db, limit=limit, **filters),
        "ledger": ledger_overview(db, limit),
    }


# ---------------------------------------------------------------------------------------------
# Rendering helpers
# ---------------------------------------------------------------------------------------------


def summary_markdown(summary: Mapping[str, Any], run_id: str | None = None, heading: bool = True) -> str:
    """A short Markdown summary of one run: counts, rates and the top manual-review reasons.

    Without ``heading`` the first line is the counts line (what a collapsed run note shows).
    """
    s = dict(summary)
    title = f"Recon run `{run_id}`" if run_id else "Recon run"
    if s.get("dry_run"):
        lines = [f"### {title} (dry run)", ""] if heading else []
        lines.append(f"**{s.get('due', 0)} due** task(s) decided and validated; dry run, nothing written.")
        verdicts = s.get("verdicts") or {}
        if verdicts:
            lines += ["", "Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))]
    else:
        claimed = int(s.get("claimed", 0) or 0)
        lines = [f"### {title}", ""] if heading else []
        lines += [
            f"**{claimed} claimed** · {s.get('completed', 0)} completed · {s.get('failed', 0)} failed · "
            f"{s.get('retried', 0)} retried · {s.get('entries_per_s', 0)} entries/s in {s.get('duration_s', 0)} s",
            "",
            "| booked | matched | mismatched | manual review | waiting |",
            "| ---: | ---: | ---: | ---: | ---: |",
            f"| {s.get('booked', 0)} | {s.get('matched', 0)} | {s.get('mismatched', 0)} "
            f"| {s.get('manual_review', 0)} | {s.get('waiting', 0)} |",
        ]
        if claimed:
            done = int(s.get("completed", 0) or 0)
            lines += ["", f"Completion rate: {100 * done / claimed:.1f} % of claimed tasks."]
    reasons = s.get("manual_review_by_type") or {}
    if reasons:
        top = sorted(reasons.items(), key=lambda kv: (-int(kv[1]), kv[0]))[:5]
        lines += ["", "Top manual-review reasons: " + ", ".join(f"`{k}` × {v}" for k, v in top)]
    return "\n".join(lines) + "\n"


def _limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_LIMIT))


def _float(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")
