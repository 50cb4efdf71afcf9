"""CONFIRMATION mode: a statement line on the contra account fulfils an EXPECTED leg.

The rules whose account_two is the line's account are tried in (priority, id) order; the first
whose keys find a candidate (an open EXPECTED leg of the same merchant, within its date window)
decides: one candidate is fulfilled when currency and side agree and the amount is within the
rule's tolerance (version N archived, N+1 POSTED with the fulfilling leg, the original POSTED leg
carried over and, for a difference, a leg on the rule's variance account); otherwise it is a
mismatch with the differing fields; several are ambiguous. A line in another currency than its
account (or the candidate) is a currency mismatch that takes no leg. A line no rule finds a
candidate for waits for a booking still queued, then for its rule's ageing, then has no match; a
booking line PENDING with no task to run is waited for only until that ageing, then named in the
review.

A rule with ``group_by`` (N:1) looks the line up by its value of that key instead: every open leg
found is the group, fulfilled in one transaction when their net sum closes to the line's amount
within the rule's tolerance, else SplitMismatchError. No subset is searched: the key decides.

A reprocessed mismatch still holds its expected leg (the transaction stays MISMATCH, so no open-leg
look-up finds it): it is judged again against that leg under the rule as it is now, so a corrected
tolerance fulfils it and an unchanged rule gives the same mismatch, never a false "no match".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar, Sequence

from sqlalchemy.engine import Connection

from recon import accounts, ledger, match_keys, settings, staging, tracker
from recon.db.engine import database_now
from recon.errors import ErrorType
from recon.ledger import LedgerBatch
from recon.match_keys import BY_AMOUNT, BY_METADATA, BY_ORDER, DEFAULT_KEYS, Lookup
from recon.model import Account, ExpectedLeg, PostedLeg, ProcessingMode, ReconRule, StagingEntry, StagingStatus
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
    held: bool = False  # the leg this line held in MISMATCH (a reprocessed mismatch)
    summary_kind: ClassVar[str] = "fulfil"

    def detail(self) -> str:
        variance = f"; the difference to variance account {self.variance_account_id}" if self.variance_account_id else ""
        return f"expected entry {self.leg_ref}{variance}"


@dataclass(frozen=True, slots=True)
class FulfilGroup(Plan):
    """Fulfil every leg of a match group (entry ids, or booking lines' staging entry ids for legs
    booked earlier in the chunk: those listed in `in_chunk`) in one transaction; a difference within
    the rule's tolerance goes to `variance_account_id`."""

    recon_rule_id: str
    group_by: str
    group_value: str
    leg_refs: tuple[str, ...]
    in_chunk: tuple[str, ...] = ()
    variance_account_id: str | None = None
    summary_kind: ClassVar[str] = "fulfil"


@dataclass(frozen=True, slots=True)
class Mismatch(Plan):
    """The one candidate differs in amount (beyond tolerance) or side: its transaction becomes
    MISMATCH and the line goes to manual review with the differences."""

    leg_ref: str
    booked_in_chunk: bool = False
    summary_kind: ClassVar[str] = "manual_review"

    @property
    def review_type(self) -> str:
        return ErrorType.MISMATCH.value

    def detail(self) -> str:
        return f"differs from expected entry {self.leg_ref}"


@dataclass(frozen=True)
class _Loaded:
    rules_by_account_two: dict[str, list[ReconRule]]
    accounts: dict[str, Account]
    lines: dict[str, StagingEntry]  # entries whose rules key on metadata, with their metadata
    found: dict[Lookup, list[ExpectedLeg]]  # open legs in the database, per look-up
    fulfilled_orders: set[OrderKey]
    queued: set[tuple[str, Lookup]]  # (account_one, look-up) with a TRANSACTION line still to be booked
    stranded: dict[tuple[str, Lookup], str]  # the same, where the only such lines have no task to run
    now: dt.datetime
    held: dict[str, tuple[ExpectedLeg, str | None]]  # legs reprocessed mismatches hold, with their rule id


@dataclass(frozen=True)
class _Prepared:
    legs: dict[str, ExpectedLeg]  # the planned legs, locked and still open
    posted: dict[str, list[PostedLeg]]  # by transaction id


def _reads_metadata(rule: ReconRule) -> bool:
    return any(line.startswith(match_keys.METADATA) for line, _ in match_keys.lookup_keys(rule))


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
        queued, stranded = self._queued(conn, lookups, reservations)
        found = self._expected_legs(conn, list(lookups), lock)
        order_keys = sorted({(e.account_id, e.order_id) for e in entries if e.order_id})
        fulfilled = ledger.fulfilled_orders(
            conn, [k for k in order_keys if not found.get(Lookup(BY_ORDER, k[0], (k[1],)))])
        # reprocessed mismatches only: normal work has none and runs no query for them
        held_ids = sorted({e.metadata["matched_entry_id"] for e in entries if _held_leg_id(e)})
        held = ledger.held_legs(conn, held_ids, lock) if held_ids else {}
        return _Loaded(rules_by_two, accounts.load_accounts(conn, sorted({e.account_id for e in entries})),
                       lines, found, fulfilled, queued, stranded, database_now(conn), held)

    @staticmethod
    def _queued(conn: Connection, lookups: dict[Lookup, set[str]], reservations: Reservations
                ) -> tuple[set[tuple[str, Lookup]], dict[tuple[str, Lookup], str]]:
        """Look-ups that a TRANSACTION line still waiting in the queue on a rule's account_one would
        answer: such a confirmation waits instead of failing, so the outcome does not depend on which
        chunk or worker ran first. Where every such line is PENDING with no task to run (stranded),
        the look-up is returned apart with one of those lines: nothing will book it, so its wait is
        bounded (one query for all the lines found, none when nothing is queued)."""
        asked = sorted(((one, found) for found, ones in lookups.items() for one in ones), key=repr)
        exclude = sorted(reservations.chunk_entry_ids)
        by_order = [(one, f) for one, f in asked if f.kind == BY_ORDER]
        by_metadata = [(one, f) for one, f in asked if f.kind == BY_METADATA]
        by_amount = [(one, f) for one, f in asked if f.kind == BY_AMOUNT]
        lines_of: dict[tuple[str, Lookup], list[str]] = {}
        orders = staging.queued_transaction_orders(conn, [(one, f.values[0]) for one, f in by_order], exclude)
        lines_of.update(((one, f), orders[(one, f.values[0])]) for one, f in by_order if (one, f.values[0]) in orders)
        hits = staging.queued_transaction_metadata(conn, [(one, f.probe()) for one, f in by_metadata], exclude)
        lines_of.update((by_metadata[i], ids) for i, ids in hits.items())
        # a TRANSACTION line books the opposite side on the contra account
        hits = staging.queued_transaction_amounts(
            conn, [(one, _opposite(f.values[0]), f.values[1], f.values[2]) for one, f in by_amount], exclude)
        lines_of.update((by_amount[i], ids) for i, ids in hits.items())

        runnable = tracker.entries_with_open_task(conn, sorted({i for ids in lines_of.values() for i in ids}))
        queued = {key for key, ids in lines_of.items() if not runnable.isdisjoint(ids)}
        stranded = {key: ids[0] for key, ids in lines_of.items() if key not in queued}
        return queued, stranded

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
        account = loaded.accounts[entry.account_id]
        if entry.currency != account.currency:  # checked before any leg is taken: see _match
            return _currency_mismatch(entry, account.currency, f"account {account.account_id}")
        held = loaded.held.get(_held_leg_id(entry) or "")
        if held is not None:
            return self._judge_again(entry, rules, *held, reservations)
        merchant_id = account.merchant_id
        tried: list[tuple[ReconRule, Lookup]] = []
        for rule in rules:
            found = match_keys.lookup(rule, entry)
            if found is None:
                continue
            tried.append((rule, found))
            candidates = self._candidates(entry, rule, found, merchant_id, loaded, reservations)
            if rule.group_by and candidates:
                return self._group(entry, rule, found, candidates, loaded, reservations)
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
            wanted = "; ".join(f"{match_keys.keys_text(match_keys.lookup_keys(r))} (rule {r.id})" for r in rules)
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
    def _match(entry: StagingEntry, rule: ReconRule, leg: ExpectedLeg, reservations: Reservations) -> Verdict:
        if entry.currency != leg.currency:
            # a line in another currency can never fulfil this leg: it stays open for the right one
            return _currency_mismatch(entry, leg.currency, f"expected entry {leg.entry_id}")
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
    def _judge_again(entry: StagingEntry, rules: list[ReconRule], leg: ExpectedLeg, rule_id: str | None,
                     reservations: Reservations) -> Verdict:
        """A reprocessed mismatch against the leg it holds, under the rule that booked the leg (or the
        line's first rule): fulfilled when it now agrees within tolerance, else the same mismatch."""
        rule = next((r for r in rules if r.id == rule_id), rules[0])
        reservations.consume(leg.entry_id)
        differs = match_keys.mismatched_fields(entry, leg)
        if differs and not (len(differs) == 1 and differs[0]["field"] == "amount"
                            and match_keys.within_tolerance(rule, entry.amount, leg.amount)):
            # the transaction stays MISMATCH: nothing to write but the same reason
            return ManualReview(ErrorType.MISMATCH, _mismatch_reason(differs), _mismatch_metadata(leg, differs))
        if entry.order_id:
            reservations.mark_fulfilled((entry.account_id, entry.order_id))
        return Fulfil(leg.entry_id, False, rule.variance_account_id if differs else None, rule.fee_account_id,
                      held=True)

    def _group(self, entry: StagingEntry, rule: ReconRule, found: Lookup, candidates: list[ExpectedLeg],
               loaded: _Loaded, reservations: Reservations) -> Verdict:
        """A grouping rule's candidates are its group. It waits while a booking that would join the
        group is queued (a group is formed from a settled set, whatever the chunking); it fulfils
        them all when their net sum closes to the line's amount within tolerance; else the gap is a
        SplitMismatchError and every leg stays open."""
        queued = self._queued_booking(entry, rule, found, loaded, reservations)
        if queued is not None:
            return queued
        assert rule.group_by is not None
        group_value = found.values[0][1]  # BY_METADATA ((name, value),): the group key on both sides
        ids = [leg.entry_id for leg in candidates]
        total = sum((ledger.signed_amount(leg, entry) for leg in candidates), Decimal(0))
        currencies = sorted({leg.currency for leg in candidates} - {entry.currency})
        if not currencies and total > 0 and match_keys.within_tolerance(rule, entry.amount, total):
            for leg_ref in ids:
                reservations.consume(leg_ref)  # fulfilled: a later line of the chunk does not see it
            return FulfilGroup(rule.id, rule.group_by, group_value, tuple(ids),
                               tuple(i for i in ids if reservations.is_booked_in_chunk(i)),
                               rule.variance_account_id if total != entry.amount else None)
        differs = [{"field": "currency", "expected": currencies[0], "actual": entry.currency}] if currencies else []
        if total != entry.amount:
            differs.append({"field": "amount", "expected": str(total), "actual": str(entry.amount),
                            "gap": str(entry.amount - total)})
        return ManualReview(
            ErrorType.SPLIT_MISMATCH,
            f"the {len(ids)} open expected entries with {match_keys.describe(found, rule)} on account"
            f" {entry.account_id} (rule {rule.id}) do not close to the line: "
            + "; ".join(f"{d['field']}: expected {d['expected']}, got {d['actual']}" for d in differs)
            + (f" (gap {entry.amount - total}, tolerance {match_keys.tolerance(rule, total)})"
               if total != entry.amount and not currencies else ""),
            # the key's value is the line's own metadata: nothing to add that a later match would leave stale
            {"mismatched_fields": differs, "candidates": ids[:MAX_CANDIDATES_SHOWN], "recon_rule_id": rule.id},
        )

    def _no_candidate(self, entry: StagingEntry, rule: ReconRule, found: Lookup, loaded: _Loaded,
                      reservations: Reservations) -> Verdict | None:
        """This rule found nothing: it still decides when its order was fulfilled already or a
        booking it would find is queued (a lower-priority rule must not win a race against it)."""
        # only a fulfilment makes a later confirmation "already fulfilled"; after a mismatch (here or
        # in an earlier chunk) there is simply no open expected entry left: NoMatchFound, either way
        key = (entry.account_id, entry.order_id or "")
        if (match_keys.lookup_keys(rule) == DEFAULT_KEYS
                and (key in loaded.fulfilled_orders or reservations.was_fulfilled(key))):
            return ManualReview(
                ErrorType.ALREADY_FULFILLED,
                f"the expected entry for order {entry.order_id!r} on account {entry.account_id}"
                " was already fulfilled by another confirmation",
            )
        return self._queued_booking(entry, rule, found, loaded, reservations)

    def _queued_booking(self, entry: StagingEntry, rule: ReconRule, found: Lookup, loaded: _Loaded,
                        reservations: Reservations) -> Verdict | None:
        """Wait when a TRANSACTION line still queued (in the database, or later in this chunk) would
        book a leg this look-up finds; a line PENDING with no task only until the rule's ageing."""
        queued_in_chunk = (reservations.is_booking_queued((found.account_id, found.values[0]))
                           if found.kind == BY_ORDER
                           else any(match_keys.leg_matches(found, leg) for leg in reservations.queued_legs(found.account_id)))
        if (rule.account_one_id, found) in loaded.queued or queued_in_chunk:
            return Wait(
                f"{match_keys.describe(found, rule)} is still queued as a TRANSACTION line on"
                f" {rule.account_one_id}; waiting for it to be booked",
                seconds=5.0,
            )
        stranded = loaded.stranded.get((rule.account_one_id, found))
        if stranded is not None:
            return self._wait_for_stranded(entry, rule, found, stranded, loaded)
        return None

    def _wait_for_stranded(self, entry: StagingEntry, rule: ReconRule, found: Lookup, line: str,
                           loaded: _Loaded) -> Verdict:
        """The line that would book the leg is PENDING with no task to run: wait for someone to give
        it one until the rule's ageing is over (not forever, as for a line that will run), then
        review naming that line."""
        described = match_keys.describe(found, rule)
        stuck = (f"its TRANSACTION line {line} on {rule.account_one_id} is PENDING with no task to run (the task"
                 " failed by an operator, or the line inserted without one)")
        window_end = self._ageing_end(entry, rule)
        if loaded.now < window_end:
            return self._wait(f"{described}: {stuck}; waiting for it until {window_end.isoformat()}",
                              entry, window_end, loaded)
        return ManualReview(
            ErrorType.NO_MATCH,
            f"no open expected entry for {described} on account {entry.account_id}: {stuck}",
            {"pending_line_without_task": line},
        )

    def _unmatched(self, entry: StagingEntry, tried: list[tuple[ReconRule, Lookup]], loaded: _Loaded) -> Verdict:
        """No rule found a candidate: wait until the latest ageing of the rules tried, then no match."""
        window_end = max(self._ageing_end(entry, rule) for rule, _ in tried)
        rule, found = tried[0]
        if loaded.now < window_end:
            return self._wait(f"no expected entry yet for {match_keys.describe(found, rule)} on account"
                              f" {entry.account_id}; waiting until {window_end.isoformat()}", entry, window_end, loaded)
        return ManualReview(
            ErrorType.NO_MATCH,
            f"no open expected entry for {match_keys.describe(found, rule)} on account {entry.account_id}",
        )

    def _ageing_end(self, entry: StagingEntry, rule: ReconRule) -> dt.datetime:
        """A rule's ageing runs aging_days from the line's effective_date; without it, the matching
        window (RECON_MATCHING_WINDOW_SECONDS) from its arrival."""
        if rule.aging_days is None:
            return entry.created_at + self.window
        return entry.effective_date + dt.timedelta(days=rule.aging_days)

    @staticmethod
    def _wait(reason: str, entry: StagingEntry, until: dt.datetime, loaded: _Loaded) -> Wait:
        waited = (loaded.now - entry.created_at).total_seconds()
        remaining = (until - loaded.now).total_seconds()
        return Wait(reason, seconds=max(1.0, min(remaining, max(10.0, waited))))  # back off as the wait grows

    def prepare_run(self, conn: Connection, planned: Sequence[tuple[WorkItem, Fulfil | Mismatch | FulfilGroup]],
                    reservations: Reservations) -> _Prepared:
        """Another confirmation may have fulfilled or mismatched a planned leg since validate: lock
        the legs' transactions, every plan's (a group's too) in one statement, and check that each
        is still open; the leg a reprocessed mismatch holds is locked as it is (its transaction is
        MISMATCH). A leg another worker's uncommitted chunk holds is not waited for here: its
        line is set aside (VerdictOutdated.busy) and runs after the rest of the chunk."""
        in_db: set[str] = set()
        held: set[str] = set()
        for _, plan in planned:
            if isinstance(plan, FulfilGroup):
                in_db.update(ref for ref in plan.leg_refs if ref not in plan.in_chunk)
            elif _holds(plan):
                held.add(plan.leg_ref)
            elif not plan.booked_in_chunk:
                in_db.add(plan.leg_ref)
        legs, busy = ledger.lock_open_legs(conn, sorted(in_db))
        if held:  # reprocessed mismatches only: normal work runs no query for them
            held_legs = ledger.held_legs(conn, sorted(held), lock=True)
            legs.update((entry_id, leg) for entry_id, (leg, _) in held_legs.items())
        if busy:
            raise VerdictOutdated(f"{len(busy)} expected leg(s) held by another worker, e.g. {min(busy)}",
                                  busy=(item.task_id for item, plan in planned if busy.intersection(_leg_refs(plan))))
        if len(legs) != len(in_db) + len(held):
            gone = sorted((in_db | held) - set(legs))
            raise VerdictOutdated(f"{len(gone)} expected leg(s) no longer open, e.g. {gone[0]}")
        # bookings of this chunk that these plans fulfil publish what they write (see Reservations)
        reservations.want_accounts(
            item.staging.account_id for item, plan in planned if item.staging is not None
            and (plan.in_chunk if isinstance(plan, FulfilGroup) else plan.booked_in_chunk))
        return _Prepared(legs, ledger.posted_legs(conn, sorted({leg.transaction_id for leg in legs.values()})))

    def run(self, item: WorkItem, plan: Fulfil | Mismatch | FulfilGroup, prepared: _Prepared,
            reservations: Reservations, batch: LedgerBatch) -> RunResult:
        entry = item.staging
        assert entry is not None
        if isinstance(plan, FulfilGroup):
            return self._run_group(entry, plan, prepared, reservations, batch)
        if plan.booked_in_chunk:
            leg, posted_legs = reservations.booked_leg(plan.leg_ref)
        else:
            leg = prepared.legs[plan.leg_ref]
            posted_legs = prepared.posted.get(leg.transaction_id, [])
        if isinstance(plan, Mismatch):
            batch.mismatch_transaction_ids.append(leg.transaction_id)
            differs = match_keys.mismatched_fields(entry, leg)
            return ManualReview(ErrorType.MISMATCH, _mismatch_reason(differs), _mismatch_metadata(leg, differs))
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

    @staticmethod
    def _run_group(entry: StagingEntry, plan: FulfilGroup, prepared: _Prepared, reservations: Reservations,
                   batch: LedgerBatch) -> Applied:
        legs: list[tuple[ExpectedLeg, Sequence[PostedLeg]]] = []
        for ref in plan.leg_refs:
            if ref in plan.in_chunk:
                legs.append(reservations.booked_leg(ref))
            else:
                leg = prepared.legs[ref]
                legs.append((leg, prepared.posted.get(leg.transaction_id, [])))
        group = ledger.book_group_fulfilment(batch, legs, entry, recon_rule_id=plan.recon_rule_id,
                                             group_by=plan.group_by, group_value=plan.group_value,
                                             variance_account_id=plan.variance_account_id)
        total = sum((ledger.signed_amount(leg, entry) for leg, _ in legs), Decimal(0))
        result = {"match_type": "GroupFulfilled", "match_group_id": group.match_group_id,
                  "evolved_transaction_id": group.transaction_id, "group_by": plan.group_by,
                  "group_value": plan.group_value, "group_legs": len(legs), "expected_total": str(total)}
        if group.variance is not None:
            result.update(match_type="GroupFulfilledWithTolerance", variance=str(entry.amount - total),
                          variance_account_id=plan.variance_account_id)
        return Applied("fulfil", result)



def _currency_mismatch(entry: StagingEntry, expected: str, of: str) -> ManualReview:
    """A confirmation in the wrong currency goes to review and takes no expected leg, so the line
    in the right currency still matches (a MismatchError would have marked the leg's transaction)."""
    return ManualReview(
        ErrorType.CURRENCY_MISMATCH,
        f"confirmation currency {entry.currency} differs from {of} ({expected}); no expected entry was taken",
        {"mismatched_fields": [{"field": "currency", "expected": expected, "actual": entry.currency}]},
    )


def _held_leg_id(entry: StagingEntry) -> str | None:
    """The expected leg a reprocessed mismatch still names (set by its mismatch, kept by a reprocess)."""
    leg_id = entry.metadata.get("matched_entry_id")
    return leg_id if isinstance(leg_id, str) and entry.status != StagingStatus.PROCESSED else None


def _leg_refs(plan: Fulfil | Mismatch | FulfilGroup) -> Sequence[str]:
    return plan.leg_refs if isinstance(plan, FulfilGroup) else (plan.leg_ref,)


def _holds(plan: Fulfil | Mismatch | FulfilGroup) -> bool:
    return isinstance(plan, Fulfil) and plan.held


def _mismatch_reason(differs: list[dict[str, str]]) -> str:
    return "; ".join(f"{d['field']}: expected {d['expected']}, got {d['actual']}" for d in differs)


def _mismatch_metadata(leg: ExpectedLeg, differs: list[dict[str, str]]) -> dict[str, object]:
    return {"matched_transaction_id": leg.transaction_id, "matched_entry_id": leg.entry_id,
            "mismatched_fields": differs}


def settlement_fee(entry: StagingEntry) -> Decimal:
    """The fee of a PSP settlement line (metadata.fee_total, set by the settlement ingest); 0 for
    any other line, at the cost of one dict look-up."""
    fee = entry.metadata.get("fee_total")
    return Decimal(fee) if fee else Decimal(0)


def _opposite(side: str) -> str:
    return "CREDIT" if side == "DEBIT" else "DEBIT"
