"""One bank line, many expected legs (issue 15, item 3) on a real database: a rule with group_by
fulfils every open leg sharing the line's key value in one balanced transaction, books a difference
within tolerance to its variance account, and refuses a group that does not close."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import assume, given
from hypothesis import strategies as st

from recon import accounts, ledger, match_groups, pipeline
from recon.accounts import RuleSettings
from recon.db import Database, reset_default_database
from recon.reporting.report import build_report
from tests.engine.test_matching_rules import NOV_1, Setup

BATCH = "metadata.invoice_batch"


def grouping(books: Any, **settings: Any) -> Setup:
    """Orders → bank grouped by invoice batch; a line with nothing to match has no match at once."""
    return Setup(books, group_by=BATCH, aging_days=0, **settings)


def invoices(s: Setup, batch: str, *amounts: str) -> list[str]:
    return [s.order(amount, order_id=f"INV-{batch}-{i}", invoice_batch=batch) for i, amount in enumerate(amounts)]


def group_of(s: Setup, staging_entry_id: str) -> tuple[match_groups.MatchGroup, list[match_groups.GroupItem]]:
    with s.db.begin() as conn:
        group = match_groups.groups_of_entries(conn, [staging_entry_id])[staging_entry_id]
        return group, match_groups.items_of_groups(conn, [group.match_group_id])[group.match_group_id]


def open_legs(s: Setup, batch: str) -> list[Any]:
    return s.books.rows("SELECT e.entry_id, e.amount FROM entries e JOIN transactions t USING (transaction_id)"
                        " WHERE e.account_id = :a AND e.status = 'EXPECTED' AND t.status = 'EXPECTED'"
                        " AND e.metadata ->> 'invoice_batch' = :b ORDER BY e.entry_id", a=s.bank, b=batch)


def imbalance_per_currency(s: Setup, transaction_id: str) -> dict[str, Decimal]:
    rows = s.books.rows("SELECT currency, sum(CASE WHEN entry_type = 'DEBIT' THEN amount ELSE -amount END) AS d"
                        " FROM entries WHERE transaction_id = :t GROUP BY currency", t=transaction_id)
    return {r.currency: r.d for r in rows}


def test_a_bank_line_settles_the_three_invoices_of_its_batch(books):
    s = grouping(books)
    invoices(s, "B-1", "100.00", "250.50", "49.50")
    invoices(s, "B-2", "75.00")  # another batch: not touched
    s.process()
    legs = open_legs(s, "B-1")
    line = s.bank_line("400.00", invoice_batch="B-1")
    s.process()

    meta = s.meta(line)
    assert meta["match_type"] == "GroupFulfilled"
    assert (meta["group_legs"], meta["expected_total"], meta["group_value"]) == (3, "400.0000", "B-1")
    group, items = group_of(s, line)
    assert group.match_group_id == meta["match_group_id"]
    assert (group.recon_rule_id, group.group_by, group.line_amount, group.expected_total, group.variance) == (
        s.rule, BATCH, Decimal("400.0000"), Decimal("400.0000"), Decimal("0.0000"))
    assert sorted((i.expected_entry_id, i.allocated_amount) for i in items) == [
        (r.entry_id, r.amount) for r in legs]
    # ONE transaction: the bank line once, the three orders' POSTED legs carried over
    assert Counter(s.books.rows("SELECT account_id, entry_type, amount, status FROM entries"
                                " WHERE transaction_id = :t", t=group.transaction_id)) == Counter([
        (s.bank, "CREDIT", Decimal("400.0000"), "POSTED"),
        (s.orders, "DEBIT", Decimal("100.0000"), "POSTED"),
        (s.orders, "DEBIT", Decimal("250.5000"), "POSTED"),
        (s.orders, "DEBIT", Decimal("49.5000"), "POSTED")])
    assert imbalance_per_currency(s, group.transaction_id) == {"USD": Decimal(0)}
    archived = s.books.rows("SELECT DISTINCT t.status FROM transactions t JOIN match_group_items i"
                            " ON i.expected_transaction_id = t.transaction_id WHERE i.match_group_id = :g",
                            g=group.match_group_id)
    assert [r.status for r in archived] == ["ARCHIVED"]
    assert open_legs(s, "B-1") == [] and len(open_legs(s, "B-2")) == 1
    assert ledger.check_invariants(s.db).ok


def test_within_tolerance_the_difference_goes_to_the_variance_account(books):
    s = grouping(books, amount_tolerance="0.05")
    invoices(s, "B-1", "100.00", "250.50", "49.50")
    s.process()
    line = s.bank_line("399.97", invoice_batch="B-1")
    s.process()
    meta = s.meta(line)
    assert (meta["match_type"], meta["variance"], meta["variance_account_id"]) == (
        "GroupFulfilledWithTolerance", "-0.0300", s.variance)
    group, items = group_of(s, line)
    assert (group.line_amount, group.expected_total, group.variance) == (
        Decimal("399.9700"), Decimal("400.0000"), Decimal("-0.0300"))
    assert len(items) == 3
    assert s.legs(group.transaction_id) == {
        (s.bank, "CREDIT", Decimal("399.9700")), (s.variance, "CREDIT", Decimal("0.0300")),
        (s.orders, "DEBIT", Decimal("100.0000")), (s.orders, "DEBIT", Decimal("250.5000")),
        (s.orders, "DEBIT", Decimal("49.5000"))}
    assert imbalance_per_currency(s, group.transaction_id) == {"USD": Decimal(0)}
    assert ledger.check_invariants(s.db).ok
    tolerated = build_report(s.db)["matched_within_tolerance"]
    assert tolerated["count"] == 1 and tolerated["entries"][0]["variance"] == "-0.0300"


def test_outside_tolerance_is_a_split_mismatch_with_the_gap_and_nothing_is_booked(books):
    s = grouping(books, amount_tolerance="0.05")
    invoices(s, "B-1", "100.00", "250.50", "49.50")
    s.process()
    before = s.books.rows("SELECT transaction_id, status FROM transactions ORDER BY transaction_id")
    line = s.bank_line("399.90", invoice_batch="B-1")
    s.process()
    meta = s.meta(line)
    assert meta["error_type"] == "SplitMismatchError"
    assert meta["mismatched_fields"] == [
        {"field": "amount", "expected": "400.0000", "actual": "399.9000", "gap": "-0.1000"}]
    assert "metadata.invoice_batch 'B-1'" in meta["error"] and "gap -0.1000" in meta["error"]
    assert len(meta["candidates"]) == 3
    assert s.books.rows("SELECT transaction_id, status FROM transactions ORDER BY transaction_id") == before
    assert s.books.rows("SELECT 1 FROM match_groups") == []
    assert len(open_legs(s, "B-1")) == 3  # every leg stays open for a corrected line


def test_a_second_line_with_the_same_key_finds_no_open_legs(books):
    s = grouping(books)
    invoices(s, "B-1", "60.00", "40.00")
    s.process()
    first = s.bank_line("100.00", invoice_batch="B-1")
    second = s.bank_line("100.00", invoice_batch="B-1")
    s.process()  # one chunk: the first line consumes the legs, as it would one at a time
    assert s.outcome(first) == "GroupFulfilled"
    assert s.outcome(second) == "NoMatchFoundError"
    assert "no open expected entry for metadata.invoice_batch 'B-1'" in s.meta(second)["error"]
    third = s.bank_line("100.00", invoice_batch="B-1")  # a later chunk: the same
    s.process()
    assert s.outcome(third) == "NoMatchFoundError"
    assert len(s.books.rows("SELECT 1 FROM match_group_items")) == 2
    assert ledger.check_invariants(s.db).ok


def test_a_line_without_the_key_is_not_looked_up_under_the_grouping_rule(books):
    s = grouping(books)
    invoices(s, "B-1", "60.00")
    s.process()
    line = s.bank_line("60.00", order_id="INV-B-1-0")  # no invoice_batch: the rule does not apply
    s.process()
    assert s.outcome(line) == "MissingOrderIdError"
    assert f"metadata.invoice_batch (rule {s.rule})" in s.meta(line)["error"]


def test_a_leg_already_fulfilled_one_to_one_is_not_in_the_group(books):
    s = grouping(books, priority=10)
    shop = s.account("Shop USD", "DEBIT_NORMAL")
    accounts.create_recon_rule(shop, s.bank, settings=RuleSettings(priority=20), db=s.db)  # by order id
    invoices(s, "B-1", "100.00", "120.00", "180.00")
    s.process()
    single = s.bank_line("100.00", order_id="INV-B-1-0")  # no batch: the order-id rule fulfils it 1:1
    s.process()
    assert s.outcome(single) == "Phase2_Fulfilled"
    fulfilled = s.meta(single)["matched_entry_id"]
    line = s.bank_line("300.00", invoice_batch="B-1")  # the other two invoices
    s.process()
    assert s.outcome(line) == "GroupFulfilled"
    group, items = group_of(s, line)
    assert len(items) == 2 and fulfilled not in {i.expected_entry_id for i in items}
    assert ledger.check_invariants(s.db).ok


def test_a_refund_in_the_batch_is_netted(books):
    s = grouping(books)
    invoices(s, "P-1", "100.00", "50.00")
    s.stage(s.orders, "CREDIT", "30.00", "TRANSACTION", NOV_1, order_id="REF-1", invoice_batch="P-1")
    s.process()
    line = s.bank_line("120.00", invoice_batch="P-1")
    s.process()
    assert s.outcome(line) == "GroupFulfilled"
    group, items = group_of(s, line)
    assert sorted(i.allocated_amount for i in items) == [Decimal("-30.0000"), Decimal("50.0000"), Decimal("100.0000")]
    assert imbalance_per_currency(s, group.transaction_id) == {"USD": Decimal(0)}


def test_a_group_mixes_legs_already_booked_with_legs_booked_earlier_in_the_same_chunk(books):
    s = grouping(books)
    invoices(s, "B-1", "60.00")
    s.process()
    late = s.order("40.00", order_id="INV-LATE", invoice_batch="B-1")
    line = s.bank_line("100.00", invoice_batch="B-1")
    assert s.process()["matched"] == 1  # one chunk: the booking, then the line that includes its leg
    group, items = group_of(s, line)
    (late_leg,) = s.books.rows("SELECT e.entry_id FROM entries e JOIN transactions t USING (transaction_id)"
                               " WHERE t.source_staging_entry_id = :s AND e.account_id = :a", s=late, a=s.bank)
    assert len(items) == 2 and late_leg.entry_id in {i.expected_entry_id for i in items}
    assert imbalance_per_currency(s, group.transaction_id) == {"USD": Decimal(0)}
    assert ledger.check_invariants(s.db).ok


def test_a_booking_of_the_batch_still_queued_makes_the_line_wait(books):
    s = grouping(books)
    invoices(s, "B-1", "60.00")
    s.process()
    line = s.bank_line("100.00", invoice_batch="B-1")
    late = s.order("40.00", order_id="INV-LATE", invoice_batch="B-1")
    with s.db.begin() as conn:  # the order is queued but not due yet: the line waits for it
        conn.execute(sa.text("UPDATE process_tracker SET run_after = now() + interval '1 hour'"
                             " WHERE payload ->> 'staging_entry_id' = :s"), {"s": late})
    s.process()
    assert s.books.staging(line).status == "PENDING"
    for _ in range(2):  # due again; if the line comes before the order in the chunk it waits once more
        with s.db.begin() as conn:
            conn.execute(sa.text("UPDATE process_tracker SET run_after = now() WHERE status IN ('PENDING', 'RETRY')"))
        s.process()
    assert s.outcome(line) == "GroupFulfilled" and len(group_of(s, line)[1]) == 2


# ---- results independent of chunk size ----------------------------------------------------------------


def _stage_scenario(s: Setup) -> None:
    """Batches that close, close within tolerance, do not close, settle twice, or arrive before
    their bookings; orders and bank lines interleaved as a day's files would be."""
    invoices(s, "A", "10.00", "20.00", "30.00")
    s.bank_line("60.00", invoice_batch="A")
    s.bank_line("60.00", invoice_batch="A")  # the second settlement finds nothing
    s.bank_line("45.01", invoice_batch="C")  # before its bookings: waits for them
    invoices(s, "B", "5.55", "4.44")
    invoices(s, "C", "15.00", "30.00")
    s.bank_line("9.98", invoice_batch="B")  # within 0.05
    invoices(s, "D", "1.00", "2.00")
    s.bank_line("5.00", invoice_batch="D")  # does not close
    s.bank_line("7.00", invoice_batch="E")  # no legs at all
    s.bank_line("1.00", order_id="nothing")  # no key


def _drain(db: Database, chunk_size: int) -> None:
    for _ in range(3):  # lines that waited for a booking are due again at once
        pipeline.process_queue(batch_size=500, chunk_size=chunk_size, db=db, run_id="groups")
        with db.begin() as conn:
            conn.execute(sa.text("UPDATE process_tracker SET run_after = now() WHERE status = 'RETRY'"))


def _state(db: Database) -> dict[str, Any]:
    with db.begin() as conn:
        staging = {r[0]: tuple(r[1:]) for r in conn.execute(sa.text(
            "SELECT staging_entry_id, status, metadata ->> 'error_type', metadata ->> 'match_type',"
            " metadata ->> 'variance', metadata ->> 'mismatched_fields', metadata ->> 'group_legs'"
            " FROM staging_entries"))}
        entries = Counter(tuple(r) for r in conn.execute(sa.text(
            "SELECT e.account_id, e.entry_type, e.amount, e.status, t.version FROM entries e"
            " JOIN transactions t USING (transaction_id)")))
        groups = Counter(tuple(r) for r in conn.execute(sa.text(
            "SELECT g.staging_entry_id, g.group_value, g.line_amount, g.expected_total, g.variance,"
            " e.metadata ->> 'order_id', i.allocated_amount FROM match_groups g"
            " JOIN match_group_items i USING (match_group_id) JOIN entries e ON e.entry_id = i.expected_entry_id")))
    return {"staging": staging, "entries": entries, "groups": groups}


def test_chunk_size_one_and_a_large_chunk_end_in_the_same_books(books, db_url, pg_admin_url):
    from bench.databases import Server, database_name

    s = grouping(books, amount_tolerance="0.05")
    _stage_scenario(s)
    books.db.dispose()
    reset_default_database()
    server = Server(pg_admin_url)
    copy_name = f"{database_name(db_url)}_copy"
    copy = Database(server.copy(database_name(db_url), copy_name), "copy")
    original = Database(db_url, "original")
    try:
        _drain(original, chunk_size=1)
        _drain(copy, chunk_size=1000)
        one, large = _state(original), _state(copy)
        assert one == large
        outcomes = Counter(v[2] or v[1] for v in one["staging"].values())
        assert outcomes == Counter({"NewTransactionGenerated": 9, "GroupFulfilled": 1,
                                    "GroupFulfilledWithTolerance": 2, "NoMatchFoundError": 2,
                                    "SplitMismatchError": 1, "MissingOrderIdError": 1})
        assert ledger.check_invariants(original).ok and ledger.check_invariants(copy).ok
    finally:
        original.dispose()
        copy.dispose()
        server.drop(copy_name)


@pytest.mark.parametrize("group_by, problem", [
    ("invoice_batch", "group_by must be metadata.<name>"),
    ("metadata.bad name", "group_by must be metadata.<name>"),
    ("order_id", "group_by must be metadata.<name>"),
])
def test_bad_group_by_is_refused_and_nothing_is_written(books, group_by, problem):
    from recon.errors import InvalidInputError

    orders = accounts.create_account(books.merchant_id, "Orders", "DEBIT_NORMAL", "USD", db=books.db)
    before = books.rows("SELECT * FROM recon_rules ORDER BY id")
    with pytest.raises(InvalidInputError, match=problem):
        accounts.create_recon_rule(orders, books.clearing, settings=RuleSettings(group_by=group_by), db=books.db)
    with pytest.raises(InvalidInputError, match="replaces the match keys"):
        accounts.create_recon_rule(orders, books.clearing, settings=RuleSettings(
            group_by=BATCH, match_keys=(("metadata.reference", "order_id"),)), db=books.db)
    with pytest.raises(InvalidInputError, match=problem):
        accounts.update_recon_rule(books.rule_id, {"group_by": group_by}, db=books.db)
    assert books.rows("SELECT * FROM recon_rules ORDER BY id") == before


def test_two_workers_settling_the_same_batch_fulfil_its_legs_once(books):
    """Both validate (no locks) and plan the same group; under the legs' row locks in run, the second
    finds them gone, validates again under those locks and has no match."""
    import threading

    from recon.tasks import TaskManager
    from recon.tracker import ProcessTracker

    s = grouping(books)
    invoices(s, "B-1", "60.00", "40.00", "25.00")
    s.process()
    lines = [s.bank_line("125.00", invoice_batch="B-1") for _ in range(2)]
    tracker = ProcessTracker(s.db)
    chunks = {owner: [t.task_id for t in tracker.claim_batch("PROCESS_STAGING_ENTRY", 1, 60, owner)]
              for owner in ("worker-a", "worker-b")}
    managers = {owner: TaskManager(s.db) for owner in chunks}
    validations = {owner: managers[owner].validate_chunk(managers[owner].decide_chunk(ids))
                   for owner, ids in chunks.items()}
    assert all(v.counts()[0] == {"fulfil": 1} for v in validations.values())  # both planned the group
    barrier = threading.Barrier(2)
    results = []

    def work(owner: str) -> None:
        barrier.wait()
        results.append(managers[owner].run_chunk(chunks[owner], owner, validations[owner]))

    threads = [threading.Thread(target=work, args=(owner,)) for owner in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.matched for r in results) == [0, 1]
    assert sorted(s.outcome(line) for line in lines) == ["GroupFulfilled", "NoMatchFoundError"]
    assert len(s.books.rows("SELECT 1 FROM match_groups")) == 1
    assert len(s.books.rows("SELECT 1 FROM match_group_items")) == 3
    assert ledger.check_invariants(s.db).ok


def test_reopening_a_group_is_refused_and_changes_nothing(books):
    from recon import review
    from recon.errors import ConflictError

    s = grouping(books)
    invoices(s, "B-1", "60.00", "40.00")
    s.process()
    line = s.bank_line("100.00", invoice_batch="B-1")
    s.process()
    before = s.books.rows("SELECT transaction_id, status FROM transactions ORDER BY transaction_id")
    with pytest.raises(ConflictError, match="reopening a match group is not supported"):
        review.act(s.db, "reopen", line, reason="DATA_CORRECTION", actor="tester")
    assert s.books.rows("SELECT transaction_id, status FROM transactions ORDER BY transaction_id") == before
    assert s.outcome(line) == "GroupFulfilled"


def test_rules_without_group_by_pay_nothing_for_groups(books):
    """Without group_by the confirmations of a chunk run the same statements for 3 lines as for 30
    (set-based, nothing per entry), and none of them reads or writes a match group."""
    s = Setup(books, aging_days=0)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    counts = []
    for n in (3, 30):
        for i in range(n):
            s.order("10.00", order_id=f"ORD-{n}-{i}")
        s.process()
        for i in range(n):
            s.bank_line("10.00", order_id=f"ORD-{n}-{i}")
        statements.clear()
        sa.event.listen(s.db.engine, "before_cursor_execute", record)
        try:
            assert s.process()["matched"] == n
        finally:
            sa.event.remove(s.db.engine, "before_cursor_execute", record)
        counts.append(len(statements))
        assert not [q for q in statements if "match_group" in q]
    assert counts[0] == counts[1]


# ---- the booking itself, for any legs: balanced, and the group's figures add up -------------------------

_money = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99999.99"), places=2)


@given(legs=st.lists(st.tuples(_money, st.sampled_from(["DEBIT", "CREDIT"])), min_size=1, max_size=8),
       line_side=st.sampled_from(["DEBIT", "CREDIT"]), variance=st.decimals(
           min_value=Decimal("-5"), max_value=Decimal("5"), places=4))
def test_a_group_booking_balances_and_its_figures_add_up(legs, line_side, variance):
    import datetime as dt

    from recon.model import ExpectedLeg, PostedLeg, StagingEntry

    when = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    booked = []
    for i, (amount, side) in enumerate(legs):  # each EXPECTED on the bank, its POSTED twin on orders
        expected = ExpectedLeg(f"ent_e{i}", "acc_bank", f"ORD-{i}", side, amount, "USD", f"txn_{i}", f"lt_{i}", 1,
                               "mer", amount, {})
        posted = PostedLeg(f"ent_p{i}", "acc_orders", f"txn_{i}", "CREDIT" if side == "DEBIT" else "DEBIT",
                           amount, "USD", when, {})
        booked.append((expected, [posted]))
    total = sum((a if side == line_side else -a for a, side in legs), Decimal(0))
    assume(total > 0 and total + variance > 0)
    line = StagingEntry("stg_1", "acc_bank", line_side, total + variance, "USD", "PENDING", "CONFIRMATION", when,
                        {"invoice_batch": "B"}, None, when)
    batch = ledger.LedgerBatch()
    ledger.book_group_fulfilment(batch, booked, line, recon_rule_id="rule", group_by=BATCH, group_value="B",
                                 variance_account_id="acc_var")
    (transaction,) = batch.transactions
    assert {e.transaction_id for e in batch.entries} == {transaction.transaction_id}
    assert sum((e.amount if e.entry_type == "DEBIT" else -e.amount for e in batch.entries), Decimal(0)) == 0
    assert all(e.amount > 0 for e in batch.entries)
    (group,) = batch.match_groups
    assert group.line_amount == group.expected_total + group.variance and group.variance == variance
    assert sum((i.allocated_amount for i in batch.match_group_items), Decimal(0)) == group.expected_total == total
    assert sorted(batch.archive_transaction_ids) == sorted(f"txn_{i}" for i in range(len(legs)))
    variance_legs = [e for e in batch.entries if e.account_id == "acc_var"]
    assert len(variance_legs) == (1 if variance else 0)


def test_the_sql_column_lists_name_the_dataclass_fields_in_order():
    from dataclasses import fields

    from recon import match_groups

    assert match_groups._GROUP_COLUMNS.split(", ") == [f.name for f in fields(match_groups.MatchGroup)]
    assert match_groups._ITEM_COLUMNS.split(", ") == [f.name for f in fields(match_groups.GroupItem)]
