"""CONFIRMATION mode: a statement line on the contra account fulfils an EXPECTED leg.

The rules whose account_two is the line's account are tried in (priority, id) order; the first
whose keys find a candidate (an open EXPECTED leg of the same merchant, within its date window)
decides: one candidate is fulfilled when currency and side agree and the amount is within the
rule's tolerance (version N archived, N+1 POSTED with the fulfilling leg, the original POSTED leg
carried over and, for a difference, a leg on the rule's variance account); otherwise it is a
mismatch with the differing fields; several are ambiguous. A line no rule finds a candidate for
waits for a booking still queued, then for its rule's ageing, then has no match.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar, Sequence

from sqlalchemy.engine import Connection

from recon import accounts, ledger, match_keys, settings, staging
from recon.db.engine import database_now
from recon.errors import ErrorType
from recon.ledger import LedgerBatch
from recon.match_keys import BY_AMOUNT, BY_METADATA, BY_ORDER, DEFAULT_KEYS, Lookup
from recon.model import Account, ExpectedLeg, PostedLeg, ProcessingMode, ReconRule, StagingEntry
from recon.tasks.base import ReconTask, VerdictOutdated
from recon.tasks.chunk import OrderKey, Reservations, WorkItem
from recon.tasks.verdicts import Applied, ManualReview, Plan, RunResult, Verdict, Wait

MAX_CANDIDATES_SHOWN = 20  # metadata.candidates of an AmbiguousMatchError


@dataclass(frozen=True, slots=True)
class Fulfil(Plan):
    """Fulfil this expected leg (an entry id, or the booking line's staging entry id when the leg
    is booked earlier in the same chunk); an amount difference within the rule's tolerance goes to
    `variance_account_id`."""

    leg_ref: str
    booked_in_chunk: bool = False
    variance_account_id: str | None = None
    fee_account_id: str | None = None  # a PSP settlement line's fee goes there (metadata.fee_total)
    summary_kind: ClassVar[str] = "fulfil"


@dataclass(frozen=True, slots=True)
class Mismatch(Plan):
    """The one candidate differs in amount (beyond tolerance), currency or side: its transaction
    becomes MISMATCH and the line goes to manual review with the differences."""

    leg_ref: str
    booked_in_chunk: bool = False
    summary_kind: ClassVar[str] = "manual_review"

    @property
    def review_type(self) -> str:
        return ErrorType.MISMATCH.value


@dataclass(frozen=True)
class _Loaded:
    rules_by_account_two: dict[str, list[ReconRule]]
    accounts: dict[str, Account]
    lines: dict[str, StagingEntry]  # entries whose rules key on metadata, with their metadata
    found: dict[Lookup, list[ExpectedLeg]]  # open legs in the database, per look-up
    fulfilled_orders: set[OrderKey]
    queued: set[tuple[str, Lookup]]  # (account_one, look-up) with a TRANSACTION line still PENDING
    now: dt.datetime


@dataclass(frozen=True)
class _Prepared:
    legs: dict[str, ExpectedLeg]  # the planned legs, locked and still open
    posted: dict[str, list[PostedLeg]]  # by transaction id


def _reads_metadata(rule: ReconRule) -> bool:
    return any(line.startswith(match_keys.METADATA) for line, _ in rule.match_keys)


class ExpectedEntryMatchingTask(ReconTask):
    name = "ExpectedEntryMatchingTask"

    def __init__(self, matching_window_seconds: int | None = None):
        self.window = dt.timedelta(
            seconds=settings.matching_window_seconds() if matching_window_seconds is None
            else matching_window_seconds
        )

    def decide(self, item: WorkItem) -> bool:
        return item.staging is not None and item.staging.processing_mode == ProcessingMode.CONFIRMATION

    def load(self, conn: Connection, items: Sequence[WorkItem], reservations: Reservations, lock: bool) -> _Loaded:
        entries = [i.staging for i in items if i.staging is not None]
        rules_by_two: dict[str, list[ReconRule]] = {}
        for rule in accounts.load_rules(conn, sorted({e.account_id for e in entries})):  # by (priority, id)
            if rule.account_two_id in {e.account_id for e in entries}:
                rules_by_two.setdefault(rule.account_two_id, []).append(rule)
        # decide and validate read no metadata unless a strategy asks: fetch it for the lines whose
        # rules key on it
        keyed = sorted({e.staging_entry_id for e in entries
                        if any(_reads_metadata(r) for r in rules_by_two.get(e.account_id, ()))})
        lines = staging.load_entries(conn, keyed, lock=False) if keyed else {}
        lookups: dict[Lookup, set[str]] = {}  # look-up -> account_one of the rules asking it
        for e in entries:
            for rule in rules_by_two.get(e.account_id, ()):
                found = match_keys.lookup(rule, lines.get(e.staging_entry_id, e))
                if found is not None:
                    lookups.setdefault(found, set()).add(rule.account_one_id)
        reservations.want_accounts(rules_by_two)
        # Which look-ups a TRANSACTION line still queued would answer is read *before* the expected
        # entries: a booking another worker commits in between is then seen by the second read (each
        # statement sees what was committed before it started). Read after, such a booking was in
        # neither, and its confirmation went to manual review instead of waiting for it. This
        # chunk's own lines are left out: they count as queued only until they are evaluated.
        queued = self._queued(conn, lookups, reservations)
        found = self._expected_legs(conn, list(lookups), lock)
        order_keys = sorted({(e.account_id, e.order_id) for e in entries if e.order_id})
        fulfilled = ledger.fulfilled_orders(
            conn, [k for k in order_keys if not found.get(Lookup(BY_ORDER, k[0], (k[1],)))])
        return _Loaded(rules_by_two, accounts.load_accounts(conn, sorted({e.account_id for e in entries})),
                       lines, found, fulfilled, queued, database_now(conn))

    @staticmethod
    def _queued(conn: Connection, lookups: dict[Lookup, set[str]], reservations: Reservations
                ) -> set[tuple[str, Lookup]]:
        """Look-ups that a TRANSACTION line still waiting in the queue on a rule's account_one would
        answer: such a confirmation waits instead of failing, so the outcome does not depend on which
        chunk or worker ran first."""
        asked = sorted(((one, found) for found, ones in lookups.items() for one in ones), key=repr)
        exclude = sorted(reservations.chunk_entry_ids)
        by_order = [(one, f) for one, f in asked if f.kind == BY_ORDER]
        by_metadata = [(one, f) for one, f in asked if f.kind == BY_METADATA]
        by_amount = [(one, f) for one, f in asked if f.kind == BY_AMOUNT]
        queued_orders = staging.queued_transaction_orders(conn, [(one, f.values[0]) for one, f in by_order], exclude)
        queued = {(one, f) for one, f in by_order if (one, f.values[0]) in queued_orders}
        hits = staging.queued_transaction_metadata(conn, [(one, f.probe()) for one, f in by_metadata], exclude)
        queued.update(by_metadata[i] for i in hits)
        # a TRANSACTION line books the opposite side on the contra account
        hits = staging.queued_transaction_amounts(
            conn, [(one, _opposite(f.values[0]), f.values[1], f.values[2]) for one, f in by_amount], exclude)
        queued.update(by_amount[i] for i in hits)
        return queued

    @staticmethod
    def _expected_legs(conn: Connection, lookups: list[Lookup], lock: bool) -> dict[Lookup, list[ExpectedLeg]]:
        """The open legs each look-up finds: one statement per kind of look-up for the chunk."""
        by_order = sorted({(f.account_id, f.values[0]) for f in lookups if f.kind == BY_ORDER})
        found = {Lookup(BY_ORDER, account, (order,)): legs for (account, order), legs
                 in ledger.expected_legs_by_order(conn, by_order, lock, metadata=False).items()}
        by_metadata = sorted((f for f in lookups if f.kind == BY_METADATA), key=repr)
        found.update(zip(by_metadata, ledger.expected_legs_by_metadata(
            conn, [(f.account_id, f.probe()) for f in by_metadata], lock)))
        by_amount = sorted((f for f in lookups if f.kind == BY_AMOUNT), key=repr)
        found.update(zip(by_amount, ledger.expected_legs_by_amount(
            conn, [(f.account_id, *f.values) for f in by_amount], lock)))
        return found

    def validate(self, item: WorkItem, loaded: _Loaded, reservations: Reservations) -> Verdict:
        assert item.staging is not None
        entry = loaded.lines.get(item.staging.staging_entry_id, item.staging)
        rules = loaded.rules_by_account_two.get(entry.account_id)
        if not rules:
            return ManualReview(
                ErrorType.NO_RECON_RULE,
                f"no recon rule has account {entry.account_id} as account_two"
                " (confirmations arrive on a rule's contra account)",
            )
        merchant_id = loaded.accounts[entry.account_id].merchant_id
        tried: list[tuple[ReconRule, Lookup]] = []
        for rule in rules:
            found = match_keys.lookup(rule, entry)
            if found is None:
                continue
            tried.append((rule, found))
            candidates = self._candidates(entry, rule, found, merchant_id, loaded, reservations)
            if len(candidates) > 1:
                ids = [leg.entry_id for leg in candidates]
                return ManualReview(
                    ErrorType.AMBIGUOUS_MATCH,
                    f"{len(candidates)} expected entries match {match_keys.describe(found, rule)} on account"
                    f" {entry.account_id} (rule {rule.id}): {', '.join(ids[:MAX_CANDIDATES_SHOWN])}",
                    {"candidates": ids[:MAX_CANDIDATES_SHOWN], "recon_rule_id": rule.id},
                )
            if candidates:
                return self._match(entry, rule, candidates[0], reservations)
            verdict = self._no_candidate(entry, rule, found, loaded, reservations)
            if verdict is not None:
                return verdict
        if not tried:
            wanted = "; ".join(f"{match_keys.keys_text(r.match_keys)} (rule {r.id})" for r in rules)
            return ManualReview(
                ErrorType.MISSING_ORDER_ID,
                f"confirmation {entry.staging_entry_id} lacks a field its rules match on: {wanted}",
            )
        return self._unmatched(entry, tried, loaded)

    @staticmethod
    def _candidates(entry: StagingEntry, rule: ReconRule, found: Lookup, merchant_id: str, loaded: _Loaded,
                    reservations: Reservations) -> list[ExpectedLeg]:
        """Open legs the look-up finds in the database and among this chunk's bookings, of the
        line's merchant, not taken by an earlier line of the chunk, within the rule's window (and,
        for an amount-only rule, its tolerance), in a fixed order."""
        in_chunk = (reservations.booked_legs((found.account_id, found.values[0])) if found.kind == BY_ORDER
                    else [leg for leg in reservations.booked_legs_on(found.account_id)
                          if match_keys.leg_matches(found, leg)])
        return [
            leg for leg in loaded.found.get(found, []) + in_chunk
            if leg.merchant_id == merchant_id and not reservations.is_consumed(leg.entry_id)
            and match_keys.in_window(rule, entry.effective_date, leg.effective_date)
            and (found.kind != BY_AMOUNT or match_keys.within_tolerance(rule, entry.amount, leg.amount))
        ]

    @staticmethod
    def _match(entry: StagingEntry, rule: ReconRule, leg: ExpectedLeg, reservations: Reservations) -> Plan:
        reservations.consume(leg.entry_id)  # fulfilled or mismatched: not available again
        in_chunk = reservations.is_booked_in_chunk(leg.entry_id)
        differs = match_keys.mismatched_fields(entry, leg)
        if differs and not (differs[0]["field"] == "amount" and len(differs) == 1
                            and match_keys.within_tolerance(rule, entry.amount, leg.amount)):
            return Mismatch(leg.entry_id, in_chunk)
        if entry.order_id:
            # a later confirmation of this order in the chunk finds it fulfilled, as it would one at a time
            reservations.mark_fulfilled((entry.account_id, entry.order_id))
        return Fulfil(leg.entry_id, in_chunk, rule.variance_account_id if differs else None, rule.fee_account_id)

    @staticmethod
    def _no_candidate(entry: StagingEntry, rule: ReconRule, found: Lookup, loaded: _Loaded,
                      reservations: Reservations) -> Verdict | None:
        """This rule found nothing: it still decides when its order was fulfilled already or a
        booking it would find is queued (a lower-priority rule must not win a race against it)."""
        # only a fulfilment makes a later confirmation "already fulfilled"; after a mismatch (here or
        # in an earlier chunk) there is simply no open expected entry left: NoMatchFound, either way
        key = (entry.account_id, entry.order_id or "")
        if rule.match_keys == DEFAULT_KEYS and (key in loaded.fulfilled_orders or reservations.was_fulfilled(key)):
            return ManualReview(
                ErrorType.ALREADY_FULFILLED,
                f"the expected entry for order {entry.order_id!r} on account {entry.account_id}"
                " was already fulfilled by another confirmation",
            )
        queued_in_chunk = (reservations.is_booking_queued((found.account_id, found.values[0]))
                           if found.kind == BY_ORDER
                           else any(match_keys.leg_matches(found, leg) for leg in reservations.queued_legs(found.account_id)))
        if (rule.account_one_id, found) in loaded.queued or queued_in_chunk:
            return Wait(
                f"{match_keys.describe(found, rule)} is still queued as a TRANSACTION line on"
                f" {rule.account_one_id}; waiting for it to be booked",
                seconds=5.0,
            )
        return None

    def _unmatched(self, entry: StagingEntry, tried: list[tuple[ReconRule, Lookup]], loaded: _Loaded) -> Verdict:
        """No rule found a candidate: wait until the latest ageing of the rules tried, then no match.
        A rule's ageing runs aging_days from the line's effective_date; without it, the matching
        window (RECON_MATCHING_WINDOW_SECONDS) from its arrival."""
        window_end = max(entry.created_at + self.window if rule.aging_days is None
                         else entry.effective_date + dt.timedelta(days=rule.aging_days) for rule, _ in tried)
        rule, found = tried[0]
        if loaded.now < window_end:
            waited = (loaded.now - entry.created_at).total_seconds()
            remaining = (window_end - loaded.now).total_seconds()
            return Wait(
                f"no expected entry yet for {match_keys.describe(found, rule)} on account {entry.account_id};"
                f" waiting until {window_end.isoformat()}",
                seconds=max(1.0, min(remaining, max(10.0, waited))),  # back off as the wait grows
            )
        return ManualReview(
            ErrorType.NO_MATCH,
            f"no open expected entry for {match_keys.describe(found, rule)} on account {entry.account_id}",
        )

    def prepare_run(self, conn: Connection, planned: Sequence[tuple[WorkItem, Fulfil | Mismatch]],
                    reservations: Reservations) -> _Prepared:
        """Another confirmation may have fulfilled or mismatched a planned leg since validate: lock
        the legs' transactions and check that each is still open."""
        in_db = sorted({plan.leg_ref for _, plan in planned if not plan.booked_in_chunk})
        legs = ledger.lock_open_legs(conn, in_db)
        if len(legs) != len(in_db):
            gone = sorted(set(in_db) - set(legs))
            raise VerdictOutdated(f"{len(gone)} expected leg(s) no longer open, e.g. {gone[0]}")
        # bookings of this chunk that these plans fulfil publish what they write (see Reservations)
        reservations.want_accounts(item.staging.account_id
                                   for item, plan in planned if plan.booked_in_chunk and item.staging is not None)
        return _Prepared(legs, ledger.posted_legs(conn, sorted({leg.transaction_id for leg in legs.values()})))

    def run(self, item: WorkItem, plan: Fulfil | Mismatch, prepared: _Prepared, reservations: Reservations,
            batch: LedgerBatch) -> RunResult:
        entry = item.staging
        assert entry is not None
        if plan.booked_in_chunk:
            leg, posted_legs = reservations.booked_leg(plan.leg_ref)
        else:
            leg = prepared.legs[plan.leg_ref]
            posted_legs = prepared.posted.get(leg.transaction_id, [])
        if isinstance(plan, Mismatch):
            batch.mismatch_transaction_ids.append(leg.transaction_id)
            differs = match_keys.mismatched_fields(entry, leg)
            return ManualReview(
                ErrorType.MISMATCH,
                "; ".join(f"{d['field']}: expected {d['expected']}, got {d['actual']}" for d in differs),
                metadata={"matched_transaction_id": leg.transaction_id, "matched_entry_id": leg.entry_id,
                          "mismatched_fields": differs},
            )
        fee = settlement_fee(entry)
        if fee and plan.fee_account_id is None:
            return ManualReview(ErrorType.NO_RECON_RULE, f"the settlement line's fee {fee} has no account to go to:"
                                f" rule of account {entry.account_id} names no fee account (--fee-account)")
        transaction_id = ledger.book_fulfilment(batch, leg, posted_legs, entry, plan.variance_account_id).transaction_id
        if fee:  # the PSP kept its fee out of the gross: clearing -> fee account, in the same transaction
            assert plan.fee_account_id is not None
            ledger.book_pair(batch, transaction_id, plan.fee_account_id, entry.account_id, fee, entry.currency,
                             entry.effective_date, {"source_staging_entry_id": entry.staging_entry_id,
                                                    "fee_of_staging_entry_id": entry.staging_entry_id,
                                                    "settlement_batch": entry.metadata.get("settlement_batch"),
                                                    **({"order_id": entry.order_id} if entry.order_id else {})})
        result = {
            "matched_transaction_id": leg.transaction_id,
            "matched_entry_id": leg.entry_id,
            "evolved_transaction_id": transaction_id,
            "match_type": "Phase2_Fulfilled",
        }
        if fee:
            result.update(fee=str(fee), fee_account_id=plan.fee_account_id)
        if entry.amount != leg.amount:
            result.update(match_type="FulfilledWithTolerance", variance=str(entry.amount - leg.amount),
                          variance_account_id=plan.variance_account_id)
        return Applied("fulfil", result)


def settlement_fee(entry: StagingEntry) -> Decimal:
    """The fee of a PSP settlement line (metadata.fee_total, set by the settlement ingest); 0 for
    any other line, at the cost of one dict look-up."""
    fee = entry.metadata.get("fee_total")
    return Decimal(fee) if fee else Decimal(0)


def _opposite(side: str) -> str:
    return "CREDIT" if side == "DEBIT" else "DEBIT"
