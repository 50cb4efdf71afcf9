"""The reconciliation report: where every staging entry ended up, why, and the balances."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Connection

from recon import accounts, ledger, staging
from recon.db import Database
from recon.errors import InvalidInputError
from recon.json_encoding import jsonable
from recon.money import format_money
from recon.tracker import ProcessTracker

MANUAL_REVIEW_SAMPLE = 20  # entries listed per reason; the counts are always complete


@dataclass(frozen=True)
class ReportFilter:
    """`recon report --merchant/--account/--since`: the entries, review items, matches, unconfirmed
    legs, transactions and balances of a merchant's accounts or one account, created since a time.
    Balances are as of now whatever `since` says; the queue and the books' invariants are global."""

    merchant_id: str | None = None
    account_id: str | None = None
    since: dt.datetime | None = None

    @classmethod
    def parse(cls, merchant_id: str | None, account_id: str | None, since: str | None) -> "ReportFilter":
        """From the command line; a bad --since is named before anything is read."""
        when = None
        if since:
            try:
                when = dt.datetime.fromisoformat(since)
            except ValueError:
                raise InvalidInputError(f"--since {since!r} is not an ISO 8601 date or time"
                                        " (e.g. 2026-11-01 or 2026-11-01T08:00:00+01:00)", field="since") from None
            when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
        return cls(merchant_id or None, account_id or None, when)

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.merchant_id, self.account_id, self.since))

    def account_ids(self, conn: Connection) -> list[str] | None:
        """The accounts in scope (None: all); an unknown merchant or account, or an account of
        another merchant, is refused with its name."""
        if self.account_id is not None:
            account = accounts.get_account(self.account_id, conn)
            if self.merchant_id is not None and account.merchant_id != self.merchant_id:
                accounts.get_merchant(self.merchant_id, conn)
                raise InvalidInputError(f"account {self.account_id} belongs to merchant {account.merchant_id},"
                                        f" not {self.merchant_id}", field="account")
            return [self.account_id]
        if self.merchant_id is not None:
            accounts.get_merchant(self.merchant_id, conn)
            return [a.account_id for a in accounts.list_accounts(conn) if a.merchant_id == self.merchant_id]
        return None

    def describe(self) -> dict[str, Any]:
        return jsonable({"merchant_id": self.merchant_id, "account_id": self.account_id, "since": self.since})


def build_report(db: Database, where: ReportFilter = ReportFilter()) -> dict[str, Any]:
    with db.begin() as conn:
        scope = where.account_ids(conn)
        since = where.since
        statuses = staging.status_counts(conn, scope, since)
        transactions = ledger.transaction_status_counts(conn, scope, since)
        reasons = staging.review_reasons(conn, MANUAL_REVIEW_SAMPLE, scope, since)
        waiting_count, waiting = ProcessTracker(db).waiting(MANUAL_REVIEW_SAMPLE, conn)
        tolerated_count, tolerated = staging.tolerance_matches(conn, MANUAL_REVIEW_SAMPLE, scope, since)
        in_review = staging.review_amounts(conn, scope, since)
        unconfirmed = ledger.open_expected_ageing(conn, accounts=scope, since=since)
        balances = ledger.balances_of(conn, accounts.list_accounts(conn, scope))
    invariants = ledger.check_invariants(db)
    return {
        **({"filter": where.describe()} if where.active else {}),
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
        "balances": [jsonable(asdict(b)) for b in balances],  # money exact, as text
        "invariants": {**asdict(invariants), "ok": invariants.ok},
    }


def format_report(report: dict[str, Any]) -> str:
    lines = []
    if report.get("filter"):
        shown = ", ".join(f"{k.split('_')[0]} {v}" for k, v in report["filter"].items() if v is not None)
        lines.append(f"Filtered: {shown} (the tracker queue, waiting tasks and the books' check are for everything;"
                     " balances are as of now)")
    lines.append("Staging entries")
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
