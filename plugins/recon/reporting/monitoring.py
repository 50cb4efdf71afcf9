"""What the Recon view in the Airflow UI shows: queue, throughput, exceptions, ledger.

Read models composed from the owners' queries (tracker, staging, accounts, ledger, run
summaries), so a number on the page is the same statement a psql user would run against the
owning table. The functions return plain dicts; :func:`recon.json_encoding.jsonable` turns them into JSON-safe
values (money as strings, never floats).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Any

from recon import accounts, ledger, settings, staging
from recon.db import Database
from recon.reporting import run_summaries
from recon.tracker import ProcessTracker, TaskStatus

DAG_ID = settings.DAG_ID
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000

# ---------------------------------------------------------------------------------------------
# Queue
# ---------------------------------------------------------------------------------------------


def queue(db: Database, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Counts per status and task type, oldest due task, tasks waiting to retry, leases held."""
    limit = _limit(limit)
    tracker = ProcessTracker(db)
    stats = tracker.stats()
    with db.begin() as conn:
        timing = tracker.queue_timing(conn)
        retry = tracker.retrying(limit, conn)
        waiting_count, waiting = tracker.waiting(limit, conn)
        leases = tracker.leases(conn)
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
        # confirmations waiting for their order or within their rule's ageing: not exceptions
        "waiting": {
            "count": waiting_count,
            "tasks": [{**r._mapping, "due_in_seconds": _float(r.due_in_seconds)} for r in waiting],
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


def throughput(db: Database, limit: int = 30, dag_id: str = DAG_ID) -> dict[str, Any]:
    """Entries processed per recent run and the backlog each run left, oldest first (chart order)."""
    runs = list(reversed(run_summaries.recent_runs(db, _limit(limit), dag_id)))
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


def exceptions(
    db: Database,
    *,
    error_type: str | None = None,
    account_id: str | None = None,
    order_id: str | None = None,
    q: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Recent FAILED tasks, and manual-review entries grouped by error_type (filterable).

    Group counts always cover every matching entry; ``entries`` lists at most ``limit`` of them.
    A reprocess of these entries is the filter itself (:func:`reprocess_conf`), never a list of ids.
    """
    limit = _limit(limit)
    where = staging.ReviewFilter(error_type, account_id, order_id, q)
    tracker = ProcessTracker(db)
    with db.begin() as conn:
        failed_count, failed = tracker.failed(limit, conn)
        groups = staging.review_groups(conn, where)
        entries = staging.review_entries(conn, where, limit)
        names = accounts.load_accounts(conn, sorted({e.account_id for e in entries}))
        # an entry in manual review has a FAILED task (the engine fails the task with the reason)
        task_of = tracker.failed_task_of_entries([e.staging_entry_id for e in entries], conn)
    return {
        "failed_tasks": {"count": failed_count, "tasks": [dict(r._mapping) for r in failed]},
        "manual_review": {
            "filters": {k: v for k, v in where.params().items() if k != "q_like" and v is not None},
            "count": sum(g.count for g in groups),
            "groups": [dict(g._mapping) for g in groups],
            "entries": [
                {**e._mapping, "account_name": names[e.account_id].account_name if e.account_id in names else None,
                 "task_id": task_of.get(e.staging_entry_id)}
                for e in entries
            ],
            "shown": len(entries),
        },
    }


# A reprocess judges a mismatch again against the leg it holds (a corrected tolerance fulfils it),
# but one click must not do that to thousands: the view leaves mismatches to the review actions and
# to `./recon reprocess --error-type MismatchError` after its dry run.
NOT_REPROCESSED_FROM_THE_VIEW = ["MismatchError"]


def reprocess_conf(filters: dict[str, Any]) -> dict[str, Any] | None:
    """The DAG run conf that reprocesses the entries this filter shows, however many: the filter
    itself, mismatches left out. None without a filter (the window trigger covers everything), or
    for a filter on mismatches only."""
    scope = {k: v for k, v in filters.items() if k in ("error_type", "account_id", "order_id", "q") and v}
    if not scope or scope.get("error_type") in NOT_REPROCESSED_FROM_THE_VIEW:
        return None
    return {"reprocess": {**scope, "exclude_error_types": NOT_REPROCESSED_FROM_THE_VIEW}}


def reprocess_window_conf(days: int = 7, now: dt.datetime | None = None) -> dict[str, Any]:
    """The DAG run conf that reprocesses every exception created in the last ``days`` days, but mismatches."""
    now = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    start = now - dt.timedelta(days=days)
    return {
        "reprocess": {
            "created_from": start.isoformat().replace("+00:00", "Z"),
            "created_to": (now + dt.timedelta(seconds=1)).isoformat().replace("+00:00", "Z"),
            "exclude_error_types": NOT_REPROCESSED_FROM_THE_VIEW,
        }
    }


# ---------------------------------------------------------------------------------------------
# Ledger
# ---------------------------------------------------------------------------------------------


def ledger_overview(db: Database, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Posted / pending / available per account, transactions in MISMATCH, and open expected legs
    (orders nobody confirmed) by account and age."""
    balances = [asdict(b) for b in ledger.balances(db=db)]
    with db.begin() as conn:
        mismatch_count, mismatches = ledger.mismatch_transactions(conn, _limit(limit))
        reviews = staging.reviews_of_transactions(conn, [t.transaction_id for t in mismatches])
        unconfirmed = ledger.open_expected_ageing(conn)
    transactions = []
    for t in mismatches:
        review = reviews.get(t.transaction_id)
        transactions.append({
            **t._mapping,
            "confirmation_entry_id": review.confirmation_entry_id if review else None,
            "reason": review.reason if review else None,
        })
    return {"balances": balances, "mismatch": {"count": mismatch_count, "transactions": transactions},
            "unconfirmed": {"age_buckets": list(ledger.AGE_BUCKETS), "accounts": unconfirmed}}


# ---------------------------------------------------------------------------------------------
# Settlements: PSP batches, their payouts and whether the bank confirmed them
# ---------------------------------------------------------------------------------------------


def settlements(db: Database, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """The latest PSP settlement batches: lines settled, refunds, chargebacks, fees, net, the payout
    expected on the bank and its state (``bank``: confirmed, expected, mismatch, carried forward,
    queued), and how many of the batch's lines are exceptions."""
    with db.begin() as conn:
        batches = staging.settlement_batches(conn, _limit(limit))
        booked = ledger.booking_statuses(conn, [b.payout_entry_id for b in batches if b.payout_entry_id])
    shown = []
    for b in batches:
        status = booked.get(b.payout_entry_id) if b.payout_entry_id else None
        bank = ("carried forward" if b.payout_entry_id is None else
                {"POSTED": "confirmed", "EXPECTED": "expected", "MISMATCH": "mismatch"}.get(status or "", "queued"))
        shown.append({**b._mapping, "bank": bank})
    return {"batches": shown}


def overview(db: Database, **filters: Any) -> dict[str, Any]:
    """Everything the Recon view shows, in one dict."""
    limit = filters.pop("limit", DEFAULT_LIMIT)
    return {
        "queue": queue(db, limit),
        "throughput": throughput(db),
        "exceptions": exceptions(db, limit=limit, **filters),
        "ledger": ledger_overview(db, limit),
        "settlements": settlements(db, limit),
    }


# ---------------------------------------------------------------------------------------------
# Rendering helpers
# ---------------------------------------------------------------------------------------------




def _limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_LIMIT))


def _float(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)

