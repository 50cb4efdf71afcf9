"""The reconciliation report: where every staging entry ended up, why, and the balances."""

from __future__ import annotations

from dataclasses import asdict
from decimal import Decimal
from typing import Any

from recon import ledger, staging
from recon.db import Database
from recon.json_encoding import jsonable
from recon.money import format_money
from recon.tracker import ProcessTracker

MANUAL_REVIEW_SAMPLE = 20  # entries listed per reason; the counts are always complete


def build_report(db: Database) -> dict[str, Any]:
    with db.begin() as conn:
        statuses = staging.status_counts(conn)
        transactions = ledger.transaction_status_counts(conn)
        reasons = staging.review_reasons(conn, MANUAL_REVIEW_SAMPLE)
        waiting_count, waiting = ProcessTracker(db).waiting(MANUAL_REVIEW_SAMPLE, conn)
        tolerated_count, tolerated = staging.tolerance_matches(conn, MANUAL_REVIEW_SAMPLE)
        in_review = staging.review_amounts(conn)
        unconfirmed = ledger.open_expected_ageing(conn)
    invariants = ledger.check_invariants(db)
    return {
        "staging_entries": {s: statuses.get(s, 0) for s in ("PENDING", "PROCESSED", "NEEDS_MANUAL_REVIEW")},
        "tracker": ProcessTracker(db).stats()["by_status"],
        "transactions": transactions,
        "manual_review": [
            {"error_type": r.error_type or "(none)", "count": r.n, "entries": r.sample} for r in reasons
        ],
        "matched_within_tolerance": {"count": tolerated_count,
                                     "entries": [{k: v for k, v in r._mapping.items() if k != "n"} for r in tolerated]},
        # open expectations within their window: not exceptions, listed apart
        "waiting": {"count": waiting_count,
                    "tasks": [jsonable({"staging_entry_id": w.staging_entry_id, "next_due_at": w.next_due_at,
                                        "reason": w.reason}) for w in waiting]},
        "in_review": [jsonable(dict(r._mapping)) for r in in_review],
        "unconfirmed": jsonable(unconfirmed),  # open expected legs by account and age
        "balances": [jsonable(asdict(b)) for b in ledger.balances(db=db)],  # money exact, as text
        "invariants": {**asdict(invariants), "ok": invariants.ok},
    }


def format_report(report: dict[str, Any]) -> str:
    lines = ["Staging entries"]
    lines += [f"  {status:<22}{n:>10}" for status, n in report["staging_entries"].items()]
    lines.append("Tracker tasks")
    lines += [f"  {status:<22}{n:>10}" for status, n in report["tracker"].items()]
    lines.append("Transactions")
    lines += [f"  {status:<22}{n:>10}" for status, n in sorted(report["transactions"].items())] or ["  (none)"]
    lines.append("Manual review")
    if not report["manual_review"]:
        lines.append("  (none)")
    for group in report["manual_review"]:
        lines.append(f"  {group['error_type']}: {group['count']}")
        for entry in group["entries"][:5]:
            order = entry.get("order_id") or "-"
            lines.append(
                f"    {entry['staging_entry_id']}  order {order}  {_money(entry['amount'], entry['currency'])}"
                f"  {entry['error']}"
            )
            if entry.get("mismatched_fields"):
                lines.append("      fields: " + ", ".join(
                    f"{f['field']} (expected {f['expected']}, actual {f['actual']})" for f in entry["mismatched_fields"]))
            if entry.get("candidates"):
                lines.append("      candidates: " + ", ".join(entry["candidates"]))
        if group["count"] > 5:
            lines.append(f"    ... {group['count'] - 5} more (use --json for up to {MANUAL_REVIEW_SAMPLE})")
    tolerated = report["matched_within_tolerance"]
    lines.append(f"Matched within tolerance: {tolerated['count']}")
    for entry in tolerated["entries"][:5]:
        lines.append(f"    {entry['staging_entry_id']}  order {entry['order_id'] or '-'}"
                     f"  {_money(entry['amount'], entry['currency'])}"
                     f"  variance {entry['variance']} booked to {entry['variance_account_id']}")
    waiting = report["waiting"]
    lines.append(f"Waiting for a match (not exceptions): {waiting['count']}")
    for task in waiting["tasks"][:5]:
        lines.append(f"    {task['staging_entry_id']}  {task['reason']}")
    lines.append("To review (money per currency)")
    lines += [f"  {r['count']:>10,} entries  {_money(r['amount'], r['currency']):>24}" for r in report["in_review"]]
    lines += [] if report["in_review"] else ["  (none)"]
    lines.append("Unconfirmed: open expected legs by account and age (" + " | ".join(ledger.AGE_BUCKETS) + ")")
    for u in report["unconfirmed"]:
        ages = " | ".join(f"{b['count']:,} {_money(b['amount'], u['currency'])}" for b in u["buckets"].values())
        lines.append(f"  {u['account_id']}: {u['count']:,} legs, {_money(u['amount'], u['currency'])}: {ages}")
    lines += [] if report["unconfirmed"] else ["  (none)"]
    lines.append("Balances (posted / pending / available)")
    for b in report["balances"]:
        lines.append(
            f"  {b['account_name'][:28]:<28} {b['account_type']:<13}"
            f" {_money(b['posted'], b['currency']):>22} {_money(b['pending'], b['currency']):>22}"
            f" {_money(b['available'], b['currency']):>22}"
        )
    inv = report["invariants"]
    verdict = "balanced" if inv["ok"] else "NOT BALANCED"
    lines.append(
        f"Books: {verdict} (unbalanced transactions {inv['unbalanced_transactions']},"
        f" expected entries fulfilled twice {inv['expected_entries_fulfilled_twice']},"
        f" entries booked twice {inv['entries_booked_twice']})"
    )
    return "\n".join(lines)


def _money(amount: str, currency: str) -> str:
    """The report's JSON keeps exact text; people read the currency's decimals, grouped."""
    return format_money(Decimal(amount), currency)
