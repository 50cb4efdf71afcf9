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
        if group["count"] > 5:
            lines.append(f"    ... {group['count'] - 5} more (use --json for up to {MANUAL_REVIEW_SAMPLE})")
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
