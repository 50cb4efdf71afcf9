"""Reviewer actions on manual-review items, and the audit log that records each decision; the only
module whose SQL reads or writes ``review_decisions``.

Every action is one database transaction: the staging entry is locked FOR UPDATE (the engine's
chunk locks it too, so a reviewer and a worker never both act on a line), its state is compared
with what the reviewer saw, the ledger effect is booked through the ledger's own fulfilment and
versioning functions, and the decision is appended to the audit log. Anything that no longer holds
raises and writes nothing.

The audit log is append-only (the database refuses UPDATE, DELETE and TRUNCATE, sql/0020) and hash
chained: each row stores the hash of the row before it and the SHA-256 of its own canonical content,
so an edit made around the trigger (a superuser, a restored dump) is found by :func:`verify`.
"""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recon import accounts, ledger, staging
from recon.db import Database
from recon.errors import ErrorType, InvalidInputError, NotFoundError, ReviewNotAllowedError, StaleReviewError
from recon.ledger import LedgerBatch
from recon.model import ProcessingMode, StagingStatus
from recon.staging import ReviewItem, StagingUpdate
from recon.tracker import ProcessTracker

REASON_CODES = ("BANK_FEE", "ROUNDING", "FX_DIFFERENCE", "CUSTOMER_DISPUTE", "DATA_CORRECTION", "NOT_OURS", "OTHER")
ACTIONS = ("accept", "force-match", "ignore", "reopen", "requeue")
MAX_NOTE = 2000
GENESIS_HASH = "0" * 64
_CHAIN_LOCK = 0x726576696577  # "review": appends take turns, so each row follows the one before it


# ---- the audit log -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One row of the audit log."""

    seq: int
    staging_entry_id: str
    action: str
    reason_code: str
    note: str
    actor: str
    decided_at: dt.datetime
    before: dict[str, Any]
    after: dict[str, Any]
    decision_key: str | None
    prev_hash: str
    row_hash: str


_COLUMNS = ("seq, staging_entry_id, action, reason_code, note, actor, decided_at, before, after, decision_key,"
            " prev_hash, row_hash")


def content_hash(d: Decision) -> str:
    """SHA-256 of a row's canonical content: every field but its own hash, as sorted compact JSON
    (the time in UTC to the microsecond), so the same row always hashes the same."""
    content = {
        "seq": d.seq, "staging_entry_id": d.staging_entry_id, "action": d.action, "reason_code": d.reason_code,
        "note": d.note, "actor": d.actor,
        "decided_at": d.decided_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "before": d.before, "after": d.after, "decision_key": d.decision_key, "prev_hash": d.prev_hash,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _append(conn: Connection, item: ReviewItem, action: str, reason: str, note: str, actor: str,
            after: dict[str, Any], decision_key: str | None) -> Decision:
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})
    last = conn.execute(sa.text("SELECT seq, row_hash FROM review_decisions ORDER BY seq DESC LIMIT 1")).first()
    now = conn.execute(sa.text("SELECT now()")).scalar_one()
    before = {"status": item.entry.status, "updated_at": seen_token(item.updated_at),
              **{k: item.entry.metadata[k] for k in ("error_type", "matched_transaction_id", "evolved_transaction_id")
                 if item.entry.metadata.get(k) is not None}}
    draft = Decision(
        seq=last.seq + 1 if last else 1, staging_entry_id=item.entry.staging_entry_id, action=action,
        reason_code=reason, note=note, actor=actor, decided_at=now, before=before, after=after,
        decision_key=decision_key, prev_hash=last.row_hash if last else GENESIS_HASH, row_hash="",
    )
    decision = Decision(**{**vars(draft), "row_hash": content_hash(draft)})
    conn.execute(
        sa.text(
            f"INSERT INTO review_decisions ({_COLUMNS}) VALUES (:seq, :staging_entry_id, :action, :reason_code,"
            " :note, :actor, :decided_at, CAST(:before AS jsonb), CAST(:after AS jsonb), :decision_key,"
            " :prev_hash, :row_hash)"
        ),
        {**vars(decision), "before": json.dumps(decision.before), "after": json.dumps(decision.after)},
    )
    return decision


def decisions(conn: Connection, staging_entry_id: str | None = None, limit: int = 100) -> list[Decision]:
    """The latest decisions (of one entry, or all), newest first."""
    rows = conn.execute(
        sa.text(f"SELECT {_COLUMNS} FROM review_decisions"
                " WHERE CAST(:id AS text) IS NULL OR staging_entry_id = :id ORDER BY seq DESC LIMIT :limit"),
        {"id": staging_entry_id, "limit": limit},
    )
    return [Decision(*r) for r in rows]


@dataclass(frozen=True)
class ChainReport:
    rows: int
    first_broken_seq: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_broken_seq is None


def verify(db: Database) -> ChainReport:
    """Recompute the chain in order: the first row whose content no longer matches its hash, or
    that does not follow the row before it (one removed or inserted), is named."""
    previous_hash, expected_seq, count = GENESIS_HASH, 1, 0
    with db.begin() as conn:
        for row in conn.execution_options(yield_per=1000).execute(
                sa.text(f"SELECT {_COLUMNS} FROM review_decisions ORDER BY seq")):
            d = Decision(*row)
            count += 1
            if d.seq != expected_seq:
                return ChainReport(count, d.seq, f"row {d.seq} follows row {expected_seq - 1}: a row is missing")
            if d.prev_hash != previous_hash:
                return ChainReport(count, d.seq, f"row {d.seq} does not follow the row before it (prev_hash"
                                                 f" {d.prev_hash[:12]}..., expected {previous_hash[:12]}...)")
            if content_hash(d) != d.row_hash:
                return ChainReport(count, d.seq, f"row {d.seq} was altered: its content no longer matches its hash")
            previous_hash, expected_seq = d.row_hash, d.seq + 1
    return ChainReport(count)


# ---- checks shared by the actions ------------------------------------------------------------------


def seen_token(updated_at: dt.datetime) -> str:
    """What a reviewer saw of an item: when it last changed (shown by `show`, the export, the form)."""
    return updated_at.astimezone(dt.timezone.utc).isoformat()


_AGE = re.compile(r"([0-9]{1,6}(?:\.[0-9]{1,6})?)([dhm]?)")
_AGE_UNITS = {"d": "days", "h": "hours", "m": "minutes", "": "days"}


def parse_age(text: str | None, name: str = "older_than") -> dt.timedelta | None:
    """'3d', '12h', '90m' or a number of days (the review filters' --older-than), as a timedelta."""
    if text is None:
        return None
    found = _AGE.fullmatch(text)
    if found is None:
        raise InvalidInputError(f"{name} {text!r} must look like 3d, 12h or 90m", field=name)
    return dt.timedelta(**{_AGE_UNITS[found.group(2)]: float(found.group(1))})


def _parse_seen(seen: str | None) -> dt.datetime | None:
    if seen in (None, ""):
        return None
    try:
        parsed = dt.datetime.fromisoformat(seen)
    except (TypeError, ValueError):
        raise InvalidInputError(f"seen {seen!r} must be the ISO timestamp `review show` printed", field="seen") from None
    if parsed.tzinfo is None:
        raise InvalidInputError(f"seen {seen!r} needs its time zone", field="seen")
    return parsed


def _check_words(reason: str, note: str, actor: str) -> tuple[str, str, str]:
    if reason not in REASON_CODES:
        raise InvalidInputError(f"reason {reason!r} must be one of {', '.join(REASON_CODES)}", field="reason")
    if not isinstance(note, str) or len(note) > MAX_NOTE or "\x00" in note:
        raise InvalidInputError(f"note must be text of at most {MAX_NOTE} characters", field="note")
    if reason == "OTHER" and not note.strip():
        raise InvalidInputError("reason OTHER needs a note saying why", field="note")
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 255:
        raise InvalidInputError(f"actor must be a non-empty name of at most 255 characters, got {actor!r}",
                                field="actor")
    return reason, note.strip(), actor.strip()


def _lock(conn: Connection, staging_entry_id: str, seen: dt.datetime | None, status: str | None) -> ReviewItem:
    """The item locked, checked against what the reviewer saw and the status the action needs."""
    item = staging.lock_for_review(conn, staging_entry_id)
    if item is None:
        raise NotFoundError(f"no staging entry with id {staging_entry_id!r}")
    if seen is not None and item.updated_at != seen:
        raise StaleReviewError(
            f"staging entry {staging_entry_id} changed since you looked (it is now {item.entry.status},"
            f" changed at {seen_token(item.updated_at)}; you saw {seen_token(seen)}): reload it and decide again")
    if status is not None and item.entry.status != status:
        raise StaleReviewError(
            f"staging entry {staging_entry_id} is {item.entry.status}, no longer in manual review"
            " (it changed since you looked): reload it")
    return item


def default_actor() -> str:
    return getpass.getuser()


# ---- the actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Asked:
    """What the reviewer asked for, as each action's effect reads it."""

    db: Database
    action: str
    reason: str
    note: str
    actor: str
    expected_entry_id: str | None

    @property
    def review_note(self) -> dict[str, str]:
        """Kept in the booked version's metadata: the ledger says which decision made it."""
        return {"action": self.action, "reason_code": self.reason, "note": self.note, "actor": self.actor}

    @property
    def run(self) -> str:
        """Who changed the entry, as its outcome history names it."""
        return f"review:{self.actor}"

    @property
    def history_reason(self) -> str:
        """Why, as the entry's outcome history says it."""
        return f"{self.action} by {self.actor}: {self.reason}" + (f" ({self.note})" if self.note else "")


def _fulfil(conn: Connection, item: ReviewItem, expected_entry_id: str, asked: _Asked) -> dict[str, Any]:
    """Fulfil the expected leg with this line at the line's amount; a difference goes to the rule's
    variance account. Refused (nothing written) when the pair cannot be matched."""
    entry = item.entry
    named = "expected_entry_id" if asked.action == "force-match" else None  # the field to blame, if asked for
    if entry.processing_mode != ProcessingMode.CONFIRMATION:
        raise ReviewNotAllowedError(f"staging entry {entry.staging_entry_id} is a {entry.processing_mode} line:"
                                    " only a CONFIRMATION line fulfils an expected entry (use ignore or requeue)")
    found = ledger.lock_leg_for_review(conn, expected_entry_id)
    if found is None:
        raise StaleReviewError(f"expected entry {expected_entry_id} is not open: unknown, already fulfilled or"
                               " reopened since you looked", field=named)
    leg = found.leg
    if found.transaction_status == "MISMATCH" and entry.metadata.get("matched_transaction_id") != leg.transaction_id:
        raise ReviewNotAllowedError(f"expected entry {leg.entry_id} is held by another line's mismatch"
                                    f" (transaction {leg.transaction_id}): resolve or reopen that one first",
                                    field=named)
    if leg.account_id != entry.account_id:
        raise ReviewNotAllowedError(f"expected entry {leg.entry_id} is on account {leg.account_id}, the line on"
                                    f" {entry.account_id}: a confirmation fulfils an expected entry of its own"
                                    " account", field=named)
    for name, want, got in (("currency", leg.currency, entry.currency), ("side", leg.entry_type, entry.entry_type)):
        if want != got:
            raise ReviewNotAllowedError(f"{name} differs: expected entry {leg.entry_id} is {want}, the line {got};"
                                        " only an amount difference can be written off", field=named)
    variance_account_id = None
    if leg.amount != entry.amount:
        rule = _rule_of(conn, found)
        if rule.variance_account_id is None:
            raise ReviewNotAllowedError(
                f"the amounts differ by {leg.amount - entry.amount} {leg.currency} and recon rule {rule.id} has no"
                " variance account to write it off to: give the rule a variance_account_id first")
        variance_account_id = rule.variance_account_id
    batch = LedgerBatch()
    booked = ledger.book_fulfilment(
        batch, leg, ledger.posted_legs(conn, [leg.transaction_id]).get(leg.transaction_id, []), entry,
        variance_account_id, {"review": asked.review_note})
    batch.flush(conn)  # checks the new version balances per currency
    match_type = "Accepted" if asked.action == "accept" else "ForceMatched"
    after = {"status": StagingStatus.PROCESSED.value, "match_type": match_type,
             "matched_transaction_id": leg.transaction_id, "matched_entry_id": leg.entry_id,
             "evolved_transaction_id": booked.transaction_id}
    if booked.variance is not None:
        after["variance"] = {"account_id": booked.variance.account_id, "entry_type": booked.variance.entry_type,
                             "amount": str(booked.variance.amount)}
    staging.apply_updates(conn, [StagingUpdate(entry.staging_entry_id, StagingStatus.PROCESSED,
                                               {k: v for k, v in after.items() if k != "status"},
                                               reason=asked.history_reason)], run=asked.run)
    return after


def _rule_of(conn: Connection, found: ledger.ReviewLeg) -> Any:
    if found.recon_rule_id:
        return accounts.get_rule(found.recon_rule_id, conn)
    rules = [r for r in accounts.load_rules(conn, [found.leg.account_id]) if r.account_two_id == found.leg.account_id]
    if not rules:
        raise ReviewNotAllowedError(f"no recon rule has account {found.leg.account_id} as account_two")
    return rules[0]


def _accept(conn: Connection, item: ReviewItem, asked: _Asked) -> dict[str, Any]:
    meta = item.entry.metadata
    if not meta.get("matched_entry_id"):
        raise ReviewNotAllowedError(
            f"accept resolves a mismatch with its expected entry; staging entry {item.entry.staging_entry_id} is"
            f" {meta.get('error_type')}: use force-match --expected ENTRY_ID")
    return _fulfil(conn, item, meta["matched_entry_id"], asked)


def _force_match(conn: Connection, item: ReviewItem, asked: _Asked) -> dict[str, Any]:
    if not asked.expected_entry_id:
        raise InvalidInputError("force-match needs the expected entry to match (--expected ENTRY_ID)",
                                field="expected_entry_id")
    return _fulfil(conn, item, asked.expected_entry_id, asked)


def _ignore(conn: Connection, item: ReviewItem, asked: _Asked) -> dict[str, Any]:
    """PROCESSED with no ledger effect; an expected leg this line held in MISMATCH is open again."""
    after: dict[str, Any] = {"status": StagingStatus.PROCESSED.value, "match_type": "Ignored"}
    mismatched = item.entry.metadata.get("matched_transaction_id")
    if mismatched:
        batch = LedgerBatch()
        reopened = ledger.reopen_confirmed(conn, item.entry.staging_entry_id, mismatched, batch)
        if reopened is not None:
            batch.flush(conn)
            after.update(reopened)
    staging.apply_updates(conn, [StagingUpdate(item.entry.staging_entry_id, StagingStatus.PROCESSED,
                                               {"match_type": "Ignored", "review": asked.review_note},
                                               reason=asked.history_reason)], run=asked.run)
    return after


def _reopen(conn: Connection, item: ReviewItem, asked: _Asked) -> dict[str, Any]:
    entry = item.entry
    in_review = entry.status == StagingStatus.NEEDS_MANUAL_REVIEW
    mismatched = entry.metadata.get("matched_transaction_id") if in_review else None
    batch = LedgerBatch()
    reopened = ledger.reopen_confirmed(conn, entry.staging_entry_id, mismatched, batch)
    if reopened is None:
        state = entry.metadata.get("match_type") or entry.metadata.get("error_type")
        raise ReviewNotAllowedError(f"staging entry {entry.staging_entry_id} has no match or mismatch to reopen"
                                    f" ({entry.status}, {state})")
    batch.flush(conn)
    staging.back_to_review(conn, entry.staging_entry_id, f"reopened by {asked.actor}: {asked.reason}",
                           ErrorType.REOPENED.value, {"reopened_transaction_id": reopened["reopened_transaction_id"]},
                           run=asked.run)
    return {"status": StagingStatus.NEEDS_MANUAL_REVIEW.value, **reopened}


def _requeue(conn: Connection, item: ReviewItem, asked: _Asked) -> dict[str, Any]:
    """Today's reprocess, for this one entry: back to PENDING with a fresh task."""
    reopened = staging.reopen_for_review(conn, staging.ReprocessScope(staging_entry_ids=[item.entry.staging_entry_id]),
                                         reason=asked.history_reason, run=asked.run)
    tasks = ProcessTracker(asked.db).enqueue_entries(reopened, conn)
    return {"status": StagingStatus.PENDING.value, "task_ids": tasks}


# action -> (its effect, the status the item must be in; None: the effect checks)
_EFFECTS: dict[str, tuple[Callable[[Connection, ReviewItem, _Asked], dict[str, Any]], str | None]] = {
    "accept": (_accept, StagingStatus.NEEDS_MANUAL_REVIEW),
    "force-match": (_force_match, StagingStatus.NEEDS_MANUAL_REVIEW),
    "ignore": (_ignore, StagingStatus.NEEDS_MANUAL_REVIEW),
    "reopen": (_reopen, None),
    "requeue": (_requeue, StagingStatus.NEEDS_MANUAL_REVIEW),
}


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    already_applied: bool = False  # an imported decision found in the log: nothing done again


def act(db: Database, action: str, staging_entry_id: str, *, reason: str, note: str = "", actor: str | None = None,
        seen: str | None = None, expected_entry_id: str | None = None, decision_key: str | None = None) -> Outcome:
    """Apply one reviewer decision in one transaction, audited; `seen` (the item's last change as
    `show` printed it) refuses the action if the item changed since."""
    if action not in _EFFECTS:
        raise InvalidInputError(f"action {action!r} must be one of {', '.join(ACTIONS)}", field="action")
    reason, note, actor = _check_words(reason, note, actor if actor is not None else default_actor())
    seen_at = _parse_seen(seen)
    effect, status = _EFFECTS[action]
    with db.begin() as conn:
        if decision_key is not None:
            done = conn.execute(sa.text(f"SELECT {_COLUMNS} FROM review_decisions WHERE decision_key = :k"),
                                {"k": decision_key}).first()
            if done is not None:
                return Outcome(Decision(*done), already_applied=True)
        item = _lock(conn, staging_entry_id, seen_at, status)
        after = effect(conn, item, _Asked(db, action, reason, note, actor, expected_entry_id))
        return Outcome(_append(conn, item, action, reason, note, actor, after, decision_key))


def requeue_matching(db: Database, *, reason: str, note: str = "", actor: str | None = None,
                     error_type: str | None = None, account_id: str | None = None,
                     older_than: dt.timedelta | None = None) -> list[Outcome]:
    """Requeue every open item matching the filter, each its own audited decision."""
    if error_type is None and account_id is None and older_than is None:
        raise InvalidInputError("requeue needs a staging entry id or a filter (--type, --account, --older-than)")
    with db.begin() as conn:
        ids = [i.staging_entry_id for i in staging.open_items(conn, error_type, account_id, older_than)]
    outcomes = []
    for staging_entry_id in ids:
        try:
            outcomes.append(act(db, "requeue", staging_entry_id, reason=reason, note=note, actor=actor))
        except StaleReviewError:
            continue  # taken by the engine or another reviewer meanwhile
    return outcomes


# ---- what a reviewer looks at ----------------------------------------------------------------------


def _differences(line: Any, leg: Any) -> list[dict[str, str]]:
    """mismatched_fields of a line against an expected leg: field, expected, actual."""
    found = []
    for name, want, got in (("amount", leg.amount, line.amount), ("currency", leg.currency, line.currency),
                            ("side", leg.entry_type, line.entry_type)):
        if want != got:
            found.append({"field": name, "expected": str(want), "actual": str(got)})
    return found


def show(db: Database, staging_entry_id: str) -> dict[str, Any]:
    """The line, its reason, its mismatched fields, the candidate expected entries (open legs of its
    order on its account, and the one it mismatched) each with its differences, and its decisions."""
    with db.begin() as conn:
        row = staging.get_staging_entry(conn, staging_entry_id)
        if row is None:
            raise NotFoundError(f"no staging entry with id {staging_entry_id!r}")
        meta = row.metadata
        in_review = row.status == StagingStatus.NEEDS_MANUAL_REVIEW
        named = [meta["matched_entry_id"]] if in_review and meta.get("matched_entry_id") else []
        # the matcher's own candidates when it recorded them (entry ids, or objects naming one)
        recorded = meta.get("candidates") if isinstance(meta.get("candidates"), list) else []  # SQL may write anything
        named += [c.get("entry_id") if isinstance(c, dict) else c for c in recorded
                  if isinstance(c, str) or (isinstance(c, dict) and isinstance(c.get("entry_id"), str))]
        legs = ledger.candidate_legs(conn, row.account_id, row.order_id, named)
        history = decisions(conn, staging_entry_id)
    candidates = [{
        "entry_id": c.leg.entry_id, "transaction_id": c.leg.transaction_id, "transaction_status": c.transaction_status,
        "order_id": c.leg.order_id, "entry_type": c.leg.entry_type, "amount": c.leg.amount, "currency": c.leg.currency,
        "difference": row.amount - c.leg.amount, "mismatched_fields": _differences(row, c.leg),
        "recon_rule_id": c.recon_rule_id,
    } for c in legs]
    recorded = meta.get("mismatched_fields")
    mismatched = [f for f in recorded if isinstance(f, dict)] if isinstance(recorded, list) else None
    if mismatched is None and named:
        mismatched = next((c["mismatched_fields"] for c in candidates if c["entry_id"] == named[0]), [])
    return {
        "staging_entry_id": row.staging_entry_id, "account_id": row.account_id, "order_id": row.order_id,
        "entry_type": row.entry_type, "amount": row.amount, "currency": row.currency, "status": row.status,
        "processing_mode": row.processing_mode, "effective_date": row.effective_date,
        "error_type": meta.get("error_type"), "reason": meta.get("error"), "match_type": meta.get("match_type"),
        "mismatched_fields": mismatched or [], "candidates": candidates, "seen": seen_token(row.updated_at),
        "created_at": row.created_at, "decisions": [vars(d) for d in history],
    }


def ageing(db: Database) -> list[dict[str, Any]]:
    """Open items per error type and age bucket (<1d, 1-3d, 3-7d, >7d): count and amount per currency."""
    with db.begin() as conn:
        return [dict(r._mapping) for r in staging.ageing_buckets(conn)]


# ---- bulk: export, decide in a spreadsheet, import ---------------------------------------------------

EXPORT_COLUMNS = ("staging_entry_id", "seen", "error_type", "account_id", "order_id", "entry_type", "amount",
                  "currency", "reason", "candidates", "decision", "expected_entry_id", "reason_code", "note")


def export_csv(db: Database, path: Path, error_type: str | None = None, account_id: str | None = None,
               older_than: dt.timedelta | None = None) -> int:
    """The open items as CSV with empty decision columns; returns how many rows were written."""
    with db.begin() as conn:
        items = staging.open_items(conn, error_type, account_id, older_than)
        rows = []
        for item in items:
            named = [item.metadata["matched_entry_id"]] if item.metadata.get("matched_entry_id") else []
            legs = ledger.candidate_legs(conn, item.account_id, item.order_id, named)
            rows.append({
                "staging_entry_id": item.staging_entry_id, "seen": seen_token(item.updated_at),
                "error_type": item.error_type, "account_id": item.account_id, "order_id": item.order_id or "",
                "entry_type": item.entry_type, "amount": str(item.amount), "currency": item.currency,
                "reason": item.reason or "", "candidates": " ".join(c.leg.entry_id for c in legs),
                "decision": "", "expected_entry_id": "", "reason_code": "", "note": "",
            })
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


@dataclass
class ImportReport:
    applied: list[int] = field(default_factory=list)  # row numbers (the header is row 1)
    already_applied: list[int] = field(default_factory=list)
    undecided: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


def import_csv(db: Database, path: Path, actor: str | None = None) -> ImportReport:
    """Apply each row with a decision, row by row: a bad row is reported with its number and the
    others are applied. A row imported again is found by its decision key and not applied twice."""
    report = ImportReport()
    try:
        handle = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("staging_entry_id", "seen", "decision", "reason_code") if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidInputError(f"{path} is not a review export: missing column(s) {', '.join(missing)}")
        for number, row in enumerate(reader, start=2):
            decision = (row.get("decision") or "").strip()
            if not decision:
                report.undecided += 1
                continue
            key_parts = [row.get(c) or "" for c in ("staging_entry_id", "seen", "decision", "expected_entry_id",
                                                     "reason_code", "note")]
            key = "import:" + hashlib.sha256("\x1f".join(key_parts).encode()).hexdigest()
            try:
                outcome = act(db, decision, (row.get("staging_entry_id") or "").strip(),
                              reason=(row.get("reason_code") or "").strip(), note=row.get("note") or "", actor=actor,
                              seen=(row.get("seen") or "").strip() or None,
                              expected_entry_id=(row.get("expected_entry_id") or "").strip() or None, decision_key=key)
            except (InvalidInputError, NotFoundError) as exc:
                report.errors.append((number, str(exc)))
                continue
            (report.already_applied if outcome.already_applied else report.applied).append(number)
    return report
