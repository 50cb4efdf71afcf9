"""Matching rules (issue 13) end to end on a real database: keys, tolerance with a variance leg,
date windows, ageing, priority, and the structured reasons of manual review."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from recon import accounts, ledger
from recon.accounts import RuleSettings
from recon.errors import ConflictError, InvalidInputError
from recon.staging import NewStagingEntry, create_staging_entries

DAY = dt.timedelta(days=1)
NOV_1 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


class Setup:
    """Orders booked on `orders` (account_one), confirmed by bank lines on `bank` (account_two)."""

    def __init__(self, books: Any, **settings: Any):
        self.books, self.db = books, books.db
        self.orders = self.account("Orders USD", "DEBIT_NORMAL")
        self.bank = self.account("Bank USD", "CREDIT_NORMAL")
        self.variance = self.account("Variance USD", "DEBIT_NORMAL")
        if settings.get("amount_tolerance") or settings.get("amount_tolerance_pct"):
            settings.setdefault("variance_account_id", self.variance)
        self.rule = accounts.create_recon_rule(self.orders, self.bank, settings=RuleSettings(**settings), db=self.db)

    def account(self, name: str, kind: str, currency: str = "USD") -> str:
        return accounts.create_account(self.books.merchant_id, name, kind, currency, db=self.db)

    def order(self, amount: str, when: dt.datetime = NOV_1, account: str | None = None, **metadata: Any) -> str:
        return self.stage(account or self.orders, "DEBIT", amount, "TRANSACTION", when, **metadata)

    def bank_line(self, amount: str, when: dt.datetime = NOV_1, side: str = "CREDIT", **metadata: Any) -> str:
        return self.stage(self.bank, side, amount, "CONFIRMATION", when, **metadata)

    def stage(self, account: str, side: str, amount: str, mode: str, when: dt.datetime, **metadata: Any) -> str:
        entry = NewStagingEntry(account, side, amount, "USD", mode, when, metadata)
        return create_staging_entries([entry], db=self.db)[0].staging_entry_id

    def process(self) -> dict[str, Any]:
        return self.books.process()

    def meta(self, staging_entry_id: str) -> dict[str, Any]:
        return self.books.staging(staging_entry_id).metadata

    def outcome(self, staging_entry_id: str) -> str:
        meta = self.meta(staging_entry_id)
        return meta.get("error_type") or meta.get("match_type") or "PENDING"

    def legs(self, transaction_id: str) -> set[tuple[str, str, Decimal]]:
        rows = self.books.rows("SELECT account_id, entry_type, amount FROM entries WHERE transaction_id = :t",
                               t=transaction_id)
        return {(r.account_id, r.entry_type, r.amount) for r in rows}


def test_a_reference_in_the_bank_line_matches_the_order(books):
    s = Setup(books, match_keys=(("metadata.reference", "order_id"),))
    s.order("120.00", order_id="ORD-1")
    s.process()
    line = s.bank_line("120.00", reference="ORD-1")  # no order id on the bank line
    s.process()
    meta = s.meta(line)
    assert meta["match_type"] == "Phase2_Fulfilled"
    assert s.legs(meta["evolved_transaction_id"]) == {(s.orders, "DEBIT", Decimal("120.0000")),
                                                      (s.bank, "CREDIT", Decimal("120.0000"))}
    other = s.bank_line("120.00", reference="ORD-404")
    s.process()
    assert s.outcome(other) == "NoMatchFoundError"
    assert "metadata.reference 'ORD-404'" in s.meta(other)["error"]


def test_a_metadata_key_matches_a_booking_of_the_same_chunk(books):
    s = Setup(books, match_keys=(("metadata.end_to_end_id", "metadata.end_to_end_id"),))
    s.order("10.00", order_id="ORD-1", end_to_end_id="E2E-1")
    line = s.bank_line("10.00", end_to_end_id="E2E-1")
    s.process()  # one chunk: the booking is evaluated first, the bank line finds its leg
    assert s.outcome(line) == "Phase2_Fulfilled"
    assert ledger.check_invariants(s.db).ok


def test_a_composite_key_needs_every_pair_to_agree(books):
    keys = (("metadata.end_to_end_id", "metadata.end_to_end_id"), ("metadata.customer", "metadata.customer"))
    s = Setup(books, match_keys=keys)
    s.order("10.00", order_id="ORD-1", end_to_end_id="E2E-1", customer="alice")
    s.order("10.00", order_id="ORD-2", end_to_end_id="E2E-1", customer="bob")
    s.process()
    bob = s.bank_line("10.00", end_to_end_id="E2E-1", customer="bob")
    carol = s.bank_line("10.00", end_to_end_id="E2E-1", customer="carol")
    no_customer = s.bank_line("10.00", end_to_end_id="E2E-1")
    s.process()
    assert s.outcome(bob) == "Phase2_Fulfilled"
    (leg,) = s.books.rows("SELECT metadata FROM entries WHERE entry_id = :e", e=s.meta(bob)["matched_entry_id"])
    assert leg.metadata["order_id"] == "ORD-2"
    assert s.outcome(carol) == "NoMatchFoundError"
    assert s.outcome(no_customer) == "MissingOrderIdError"
    assert "metadata.customer" in s.meta(no_customer)["error"]


def test_an_amount_only_rule_matches_within_its_date_window(books):
    s = Setup(books, match_keys=(("amount", "amount"),), date_window_days=2)
    s.order("50.00", when=NOV_1, order_id="ORD-1")
    s.order("60.00", when=NOV_1, order_id="ORD-2")
    s.process()
    inside = s.bank_line("50.00", when=NOV_1 + 2 * DAY)
    outside = s.bank_line("60.00", when=NOV_1 + 3 * DAY)
    s.process()
    assert s.outcome(inside) == "Phase2_Fulfilled"
    assert s.outcome(outside) == "NoMatchFoundError"
    assert "within 2 days" in s.meta(outside)["error"]


def test_an_amount_only_rule_with_two_candidates_is_ambiguous(books):
    s = Setup(books, match_keys=(("amount", "amount"),))
    s.order("70.00", order_id="ORD-1")
    s.order("70.00", order_id="ORD-2")
    s.process()
    line = s.bank_line("70.00")
    s.process()
    meta = s.meta(line)
    assert meta["error_type"] == "AmbiguousMatchError"
    open_legs = s.books.rows("SELECT entry_id FROM entries WHERE account_id = :a AND status = 'EXPECTED'", a=s.bank)
    assert sorted(meta["candidates"]) == sorted(r.entry_id for r in open_legs) and len(open_legs) == 2


def test_within_tolerance_the_difference_goes_to_the_variance_account(books):
    s = Setup(books, amount_tolerance="0.05")
    s.order("100.00", order_id="ORD-1")
    s.process()
    line = s.bank_line("99.97", order_id="ORD-1")
    s.process()
    meta = s.meta(line)
    assert meta["match_type"] == "FulfilledWithTolerance"
    assert meta["variance"] == "-0.0300" and meta["variance_account_id"] == s.variance
    assert s.legs(meta["evolved_transaction_id"]) == {
        (s.orders, "DEBIT", Decimal("100.0000")),
        (s.bank, "CREDIT", Decimal("99.9700")),
        (s.variance, "CREDIT", Decimal("0.0300")),
    }
    (old,) = s.books.rows("SELECT status FROM transactions WHERE transaction_id = :t",
                          t=meta["matched_transaction_id"])
    assert old.status == "ARCHIVED"
    assert ledger.check_invariants(s.db).ok


def test_a_line_above_the_expected_amount_books_the_variance_on_the_other_side(books):
    s = Setup(books, amount_tolerance="0.05")
    s.order("100.00", order_id="ORD-1")
    s.process()
    line = s.bank_line("100.04", order_id="ORD-1")
    s.process()
    meta = s.meta(line)
    assert meta["variance"] == "0.0400"
    assert (s.variance, "DEBIT", Decimal("0.0400")) in s.legs(meta["evolved_transaction_id"])
    assert ledger.check_invariants(s.db).ok


def test_outside_tolerance_is_a_mismatch_with_its_fields(books):
    s = Setup(books, amount_tolerance="0.05")
    s.order("100.00", order_id="ORD-1")
    s.order("100.00", order_id="ORD-2")
    s.process()
    too_far = s.bank_line("99.90", order_id="ORD-1")
    wrong_side = s.bank_line("99.99", order_id="ORD-2", side="DEBIT")
    s.process()
    meta = s.meta(too_far)
    assert meta["error_type"] == "MismatchError"
    assert meta["mismatched_fields"] == [{"field": "amount", "expected": "100.0000", "actual": "99.9000"}]
    # within tolerance in amount, but on the wrong side: a mismatch listing both differences
    assert s.meta(wrong_side)["mismatched_fields"] == [
        {"field": "amount", "expected": "100.0000", "actual": "99.9900"},
        {"field": "side", "expected": "CREDIT", "actual": "DEBIT"},
    ]
    assert s.books.rows("SELECT 1 FROM entries WHERE account_id = :v", v=s.variance) == []


def test_tolerance_in_percent_of_the_expected_amount(books):
    s = Setup(books, amount_tolerance_pct="1")
    s.order("200.00", order_id="ORD-1")
    s.order("200.00", order_id="ORD-2")
    s.process()
    inside = s.bank_line("202.00", order_id="ORD-1")  # exactly 1 %
    outside = s.bank_line("202.01", order_id="ORD-2")
    s.process()
    assert (s.outcome(inside), s.meta(inside)["variance"]) == ("FulfilledWithTolerance", "2.0000")
    assert s.outcome(outside) == "MismatchError"


def test_the_higher_priority_rule_decides(books):
    s = Setup(books, match_keys=(("metadata.reference", "order_id"),), priority=10)
    shop = s.account("Shop USD", "DEBIT_NORMAL")
    accounts.create_recon_rule(shop, s.bank, settings=RuleSettings(priority=20), db=s.db)
    s.order("30.00", order_id="A")  # on orders, found by the reference rule
    s.order("30.00", account=shop, order_id="B")  # on shop, found by the order-id rule
    s.process()
    line = s.bank_line("30.00", order_id="B", reference="A")
    s.process()
    (leg,) = s.books.rows("SELECT order_id FROM entries WHERE entry_id = :e", e=s.meta(line)["matched_entry_id"])
    assert leg.order_id == "A"

    accounts.update_recon_rule(s.rule, {"priority": 30}, db=s.db)  # now the order-id rule goes first
    s.order("40.00", order_id="C")
    s.order("40.00", account=shop, order_id="D")
    s.process()
    line = s.bank_line("40.00", order_id="D", reference="C")
    s.process()
    (leg,) = s.books.rows("SELECT order_id FROM entries WHERE entry_id = :e", e=s.meta(line)["matched_entry_id"])
    assert leg.order_id == "D"


def test_a_rule_that_finds_nothing_leaves_the_line_to_the_next_rule(books):
    s = Setup(books, match_keys=(("metadata.reference", "order_id"),), priority=10)
    shop = s.account("Shop USD", "DEBIT_NORMAL")
    accounts.create_recon_rule(shop, s.bank, settings=RuleSettings(priority=20), db=s.db)
    s.order("30.00", account=shop, order_id="B")
    s.process()
    line = s.bank_line("30.00", order_id="B", reference="nothing-booked")
    s.process()
    assert s.outcome(line) == "Phase2_Fulfilled"


def test_a_priority_tie_on_the_same_account_is_refused(books):
    s = Setup(books, priority=10)
    shop = s.account("Shop USD", "DEBIT_NORMAL")
    before = s.books.rows("SELECT * FROM recon_rules ORDER BY id")
    with pytest.raises(ConflictError, match=f"priority 10 is taken by rule {s.rule}"):
        accounts.create_recon_rule(shop, s.bank, settings=RuleSettings(priority=10), db=s.db)
    assert s.books.rows("SELECT * FROM recon_rules ORDER BY id") == before
    accounts.create_recon_rule(shop, s.bank, settings=RuleSettings(priority=11), db=s.db)  # no tie: fine


def test_an_unmatched_line_waits_for_its_ageing_then_has_no_match(books):
    s = Setup(books, aging_days=3)
    now = dt.datetime.now(dt.timezone.utc)
    young = s.bank_line("15.00", when=now - 2 * DAY, order_id="ORD-LATE")
    old = s.bank_line("15.00", when=now - 4 * DAY, order_id="ORD-GONE")
    s.process()
    assert s.outcome(old) == "NoMatchFoundError"
    assert s.books.staging(young).status == "PENDING"
    (task,) = s.books.rows("SELECT status, attempts, last_error, run_after > now() AS later FROM process_tracker"
                           " WHERE payload ->> 'staging_entry_id' = :s", s=young)
    assert task.status == "RETRY" and task.later and "waiting until" in task.last_error
    # the order arrives within the ageing: the waiting line is matched when it is due again
    s.order("15.00", order_id="ORD-LATE")
    s.process()
    with s.db.begin() as conn:
        conn.execute(sa.text("UPDATE process_tracker SET run_after = now() WHERE status = 'RETRY'"))
    s.process()
    assert s.outcome(young) == "Phase2_Fulfilled"


def test_a_currency_mismatch_names_the_field(books):
    s = Setup(books)
    line = s.stage(s.orders, "DEBIT", "5.00", "TRANSACTION", NOV_1, order_id="ORD-1")
    with s.db.begin() as conn:  # a line in another currency than its account (plain SQL producer)
        conn.execute(sa.text("UPDATE staging_entries SET currency = 'EUR' WHERE staging_entry_id = :s"), {"s": line})
    s.process()
    meta = s.meta(line)
    assert meta["error_type"] == "CurrencyMismatchError"
    assert meta["mismatched_fields"] == [{"field": "currency", "expected": "USD", "actual": "EUR"}]


@pytest.mark.parametrize("settings, problem", [
    ({"amount_tolerance": "0.05", "variance_account_id": None}, "needs a variance account"),
    ({"amount_tolerance": "-1"}, "amount_tolerance must be at least 0"),
    ({"amount_tolerance_pct": "101", "variance_account_id": "X"}, "amount_tolerance_pct must be at least 0 and at most 100"),
    ({"date_window_days": -1}, "date_window_days must be a whole number"),
    ({"aging_days": "soon"}, "aging_days must be a whole number"),
    ({"match_keys": (("metadata.ref erence", "order_id"),)}, "unknown line field"),
    ({"match_keys": (("currency", "currency"),)}, "unknown line field 'currency'"),
    ({"match_keys": (("amount", "order_id"),)}, "amount can only be matched with amount"),
    ({"match_keys": (("amount", "amount"), ("order_id", "order_id"))}, "amount key stands alone"),
    ({"priority": -5}, "priority must be a whole number"),
])
def test_bad_rule_settings_are_refused_and_nothing_is_written(books, settings, problem):
    orders = accounts.create_account(books.merchant_id, "Orders", "DEBIT_NORMAL", "USD", db=books.db)
    before = books.rows("SELECT * FROM recon_rules ORDER BY id")
    with pytest.raises(InvalidInputError, match=problem):
        accounts.create_recon_rule(orders, books.clearing, settings=RuleSettings(**settings), db=books.db)
    assert books.rows("SELECT * FROM recon_rules ORDER BY id") == before


def test_a_variance_account_in_another_currency_is_refused(books):
    orders = accounts.create_account(books.merchant_id, "Orders", "DEBIT_NORMAL", "USD", db=books.db)
    euros = accounts.create_account(books.merchant_id, "Variance EUR", "DEBIT_NORMAL", "EUR", db=books.db)
    with pytest.raises(InvalidInputError, match=f"variance account {euros} is in EUR"):
        accounts.create_recon_rule(orders, books.clearing, settings=RuleSettings(
            amount_tolerance=Decimal("1"), variance_account_id=euros), db=books.db)
    assert len(books.rows("SELECT 1 FROM recon_rules")) == 1


def test_the_report_and_the_recon_view_show_reasons_and_waiting_lines(books):
    from recon.reporting import monitoring
    from recon.reporting.report import build_report, format_report
    from recon.web.rendering import render

    s = Setup(books, amount_tolerance="0.05", aging_days=30)
    s.order("100.00", order_id="ORD-1")
    s.order("20.00", account=s.account("Shop USD", "DEBIT_NORMAL"), order_id="ORD-9")  # no rule: a failure
    s.process()
    mismatch = s.bank_line("90.00", order_id="ORD-1")
    waiting = s.bank_line("15.00", when=dt.datetime.now(dt.timezone.utc), order_id="ORD-LATER")
    s.process()

    report = build_report(s.db)
    (group,) = [g for g in report["manual_review"] if g["error_type"] == "MismatchError"]
    assert group["entries"][0]["mismatched_fields"] == [
        {"field": "amount", "expected": "100.0000", "actual": "90.0000"}]
    assert report["waiting"]["count"] == 1 and report["waiting"]["tasks"][0]["staging_entry_id"] == waiting
    text = format_report(report)
    assert "fields: amount (expected 100.0000, actual 90.0000)" in text
    assert "Waiting for a match (not exceptions): 1" in text and "ORD-LATER" in text

    data = monitoring.overview(s.db)
    assert [t["staging_entry_id"] for t in data["queue"]["waiting"]["tasks"]] == [waiting]
    entries = {e["staging_entry_id"]: e for e in data["exceptions"]["manual_review"]["entries"]}
    assert waiting not in entries and entries[mismatch]["mismatched_fields"][0]["field"] == "amount"
    links = {"base": "", "airflow": "", "dag_id": "d", "dag_url": "", "trigger_api": ""}
    queue_html = render("_section_queue.html", {**links, "q": data["queue"]})
    assert "Confirmations waiting for a match (1)" in queue_html and "ORD-LATER" in queue_html
    exceptions_html = render("_section_exceptions.html", {
        **links, "ex": data["exceptions"], "filters": {}, "limit": 50, "reprocess_conf": None, "window_conf": {}})
    assert "expected <code>100.0000</code>, actual <code>90.0000</code>" in exceptions_html


def test_the_report_lists_matches_within_tolerance(books):
    from recon.reporting.report import build_report, format_report

    s = Setup(books, amount_tolerance="0.05")
    s.order("18.99", order_id="ORD-1")
    s.process()
    line = s.bank_line("18.97", order_id="ORD-1")
    s.process()
    report = build_report(s.db)
    assert report["matched_within_tolerance"]["count"] == 1
    assert report["matched_within_tolerance"]["entries"][0]["variance"] == "-0.0200"
    assert f"{line}  order ORD-1  18.97 USD  variance -0.0200 booked to {s.variance}" in format_report(report)


def test_a_mismatch_reprocessed_after_the_tolerance_is_raised_is_fulfilled_without_stale_reasons(books):
    from recon import pipeline

    s = Setup(books, amount_tolerance="0.05")
    s.order("100.00", order_id="ORD-1")
    s.process()
    line = s.bank_line("99.90", order_id="ORD-1")
    s.process()
    assert s.meta(line)["mismatched_fields"]
    # a MISMATCH transaction is no candidate: reopen it by hand (the reviewer actions of issue 16 will)
    accounts.update_recon_rule(s.rule, {"amount_tolerance": "0.10"}, db=s.db)
    with s.db.begin() as conn:
        conn.execute(sa.text("UPDATE transactions SET status = 'EXPECTED' WHERE status = 'MISMATCH'"))
    (task,) = s.books.rows("SELECT task_id FROM process_tracker WHERE payload ->> 'staging_entry_id' = :s", s=line)
    pipeline.requeue_scope(None, None, [task.task_id], db=s.db)
    s.process()
    meta = s.meta(line)
    assert (meta["match_type"], meta["variance"]) == ("FulfilledWithTolerance", "-0.1000")
    assert not {"mismatched_fields", "error", "error_type"} & set(meta)
    assert ledger.check_invariants(s.db).ok
