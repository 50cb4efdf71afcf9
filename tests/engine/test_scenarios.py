"""The seed's scenarios, end to end through the pipeline on a real database."""

from decimal import Decimal

from recon import ledger


def test_transaction_mode_books_two_legs(books):
    sid, tid = books.stage(books.bank, "DEBIT", "100.50", "TRANSACTION", order_id="o-1", note="x")
    summary = books.process()
    assert summary["booked"] == 1 and summary["completed"] == 1

    staging = books.staging(sid)
    assert staging.status == "PROCESSED" and staging.discarded_at is not None
    assert staging.metadata["match_type"] == "NewTransactionGenerated"
    txn_id = staging.metadata["created_transaction_id"]
    (txn,) = books.rows("SELECT * FROM transactions WHERE transaction_id = :t", t=txn_id)
    assert (txn.status, txn.version, txn.amount) == ("EXPECTED", 1, Decimal("100.50"))
    assert txn.logical_transaction_id == f"{books.bank}_o-1"
    assert txn.metadata["source_staging_entry_id"] == sid and txn.metadata["note"] == "x"
    legs = books.rows("SELECT * FROM entries WHERE transaction_id = :t ORDER BY status DESC", t=txn_id)
    assert [(e.account_id, e.entry_type, e.status) for e in legs] == [
        (books.bank, "DEBIT", "POSTED"), (books.clearing, "CREDIT", "EXPECTED")]
    assert legs[1].metadata["recon_rule_id"] == books.rule_id
    assert legs[0].metadata["order_id"] == "o-1"
    assert books.task(tid).status == "COMPLETED"
    assert ledger.check_invariants(books.db).ok


def test_confirmation_fulfils_expected_leg(books):
    books.stage(books.bank, "DEBIT", "100.50", "TRANSACTION", order_id="o-1")
    books.process()
    sid, tid = books.stage(books.clearing, "CREDIT", "100.5", "CONFIRMATION", order_id="o-1")
    summary = books.process()
    assert summary["matched"] == 1

    staging = books.staging(sid)
    assert staging.status == "PROCESSED"
    meta = staging.metadata
    assert meta["match_type"] == "Phase2_Fulfilled"
    (old,) = books.rows("SELECT * FROM transactions WHERE transaction_id = :t", t=meta["matched_transaction_id"])
    (new,) = books.rows("SELECT * FROM transactions WHERE transaction_id = :t", t=meta["evolved_transaction_id"])
    assert old.status == "ARCHIVED" and old.discarded_at is not None
    assert (new.status, new.version, new.logical_transaction_id) == ("POSTED", 2, old.logical_transaction_id)
    assert new.metadata["evolved_from_transaction_id"] == old.transaction_id
    assert new.metadata["fulfilled_expected_entry_id"] == meta["matched_entry_id"]
    assert {e.status for e in books.rows("SELECT status FROM entries WHERE transaction_id = :t",
                                         t=old.transaction_id)} == {"ARCHIVED"}
    legs = books.rows("SELECT * FROM entries WHERE transaction_id = :t ORDER BY account_id", t=new.transaction_id)
    assert {e.status for e in legs} == {"POSTED"} and len(legs) == 2
    assert any("derived_from_entry_id" in e.metadata for e in legs)
    assert any(e.metadata.get("fulfilled_expected_entry_id") == meta["matched_entry_id"] for e in legs)
    assert books.task(tid).status == "COMPLETED"
    assert ledger.check_invariants(books.db).ok


def test_mismatch_lists_every_difference(books):
    books.stage(books.bank, "DEBIT", "100.00", "TRANSACTION", order_id="o-2")
    books.process()
    sid, tid = books.stage(books.clearing, "DEBIT", "99.00", "CONFIRMATION", order_id="o-2")
    books.process()
    staging = books.staging(sid)
    assert staging.status == "NEEDS_MANUAL_REVIEW"
    assert staging.metadata["error_type"] == "MismatchError"
    assert "amount" in staging.metadata["error"] and "side" in staging.metadata["error"]
    (txn,) = books.rows("SELECT status FROM transactions WHERE transaction_id = :t",
                        t=staging.metadata["matched_transaction_id"])
    assert txn.status == "MISMATCH"
    task = books.task(tid)
    assert task.status == "FAILED" and "MismatchError" in task.last_error


def test_no_rule_no_order_and_wrong_account(books):
    no_order, _ = books.stage(books.clearing, "CREDIT", "5", "CONFIRMATION")
    on_account_one, _ = books.stage(books.bank, "CREDIT", "5", "CONFIRMATION", order_id="o-9")
    unmatched, _ = books.stage(books.clearing, "CREDIT", "5", "CONFIRMATION", order_id="nope")
    no_rule, _ = books.stage(books.clearing, "DEBIT", "5", "TRANSACTION", order_id="o-3")
    books.process()
    assert books.staging(no_order).metadata["error_type"] == "MissingOrderIdError"
    assert books.staging(on_account_one).metadata["error_type"] == "NoReconRuleFoundError"
    assert books.staging(unmatched).metadata["error_type"] == "NoMatchFoundError"
    assert books.staging(no_rule).metadata["error_type"] == "NoReconRuleFoundError"


def test_duplicate_order_and_ambiguous_match(books):
    first, _ = books.stage(books.bank, "DEBIT", "10", "TRANSACTION", order_id="dup")
    second, _ = books.stage(books.bank, "DEBIT", "10", "TRANSACTION", order_id="dup")
    books.process()
    assert books.staging(first).status == "PROCESSED"
    assert books.staging(second).metadata["error_type"] == "DuplicateOrderError"
    # two open expected legs for one order: make a second transaction by hand-free means
    books.stage(books.bank, "DEBIT", "10", "TRANSACTION", order_id="amb")
    books.process()
    with books.db.begin() as c:
        import sqlalchemy as sa
        c.execute(sa.text("UPDATE transactions SET logical_transaction_id = 'moved' WHERE logical_transaction_id = :l"),
                  {"l": f"{books.bank}_amb"})
    books.stage(books.bank, "DEBIT", "10", "TRANSACTION", order_id="amb")
    books.process()
    sid, _ = books.stage(books.clearing, "CREDIT", "10", "CONFIRMATION", order_id="amb")
    books.process()
    assert books.staging(sid).metadata["error_type"] == "AmbiguousMatchError"


def test_rerun_is_a_noop(books):
    sid, tid = books.stage(books.bank, "DEBIT", "10", "TRANSACTION", order_id="o-1")
    books.process()
    from recon.tracker import ProcessTracker
    ProcessTracker(books.db).update_task_status(tid, "PENDING")
    summary = books.process()
    assert summary["already_processed"] == 1 and summary["booked"] == 0
    assert len(books.rows("SELECT 1 FROM transactions")) == 1


def test_balances(books):
    books.stage(books.bank, "DEBIT", "100", "TRANSACTION", order_id="a")
    books.stage(books.bank, "DEBIT", "50", "TRANSACTION", order_id="b")
    books.process()
    books.stage(books.clearing, "CREDIT", "100", "CONFIRMATION", order_id="a")
    books.process()
    by_id = {b.account_id: b for b in ledger.balances(db=books.db)}
    bank, clearing = by_id[books.bank], by_id[books.clearing]
    assert (bank.posted, bank.pending, bank.available) == (Decimal(150), Decimal(150), Decimal(150))
    assert (clearing.posted, clearing.pending, clearing.available) == (Decimal(100), Decimal(150), Decimal(100))


def test_transaction_and_confirmation_in_one_chunk(books):
    books.stage(books.bank, "DEBIT", "20", "TRANSACTION", order_id="same")
    sid, _ = books.stage(books.clearing, "CREDIT", "20", "CONFIRMATION", order_id="same")
    summary = books.process(chunk_size=100)
    assert summary["booked"] == 1 and summary["matched"] == 1
    assert books.staging(sid).metadata["match_type"] == "Phase2_Fulfilled"
    assert ledger.check_invariants(books.db).ok


def test_confirmation_waits_for_its_queued_order(books):
    """A confirmation claimed before its TRANSACTION line waits instead of failing."""
    import sqlalchemy as sa

    tsid, ttid = books.stage(books.bank, "DEBIT", "30", "TRANSACTION", order_id="late")
    csid, ctid = books.stage(books.clearing, "CREDIT", "30", "CONFIRMATION", order_id="late")
    with books.db.begin() as c:  # make the confirmation the older, due task
        c.execute(sa.text("UPDATE process_tracker SET run_after = now() + interval '1 hour' WHERE task_id = :t"),
                  {"t": ttid})
    summary = books.process()
    assert summary["waiting"] == 1 and books.staging(csid).status == "PENDING"
    task = books.task(ctid)
    assert task.status == "RETRY" and task.attempts == 0  # a wait is not a failed attempt
    for _ in range(2):  # time passes: both due again (in either order)
        with books.db.begin() as c:
            c.execute(sa.text("UPDATE process_tracker SET run_after = now() WHERE status IN ('PENDING', 'RETRY')"))
        books.process()
    assert books.staging(csid).status == "PROCESSED" and books.staging(tsid).status == "PROCESSED"


def test_matching_window_keeps_unmatched_confirmation_waiting(books, monkeypatch):
    monkeypatch.setenv("RECON_MATCHING_WINDOW_SECONDS", "3600")
    sid, tid = books.stage(books.clearing, "CREDIT", "30", "CONFIRMATION", order_id="future")
    books.process()
    assert books.staging(sid).status == "PENDING" and books.task(tid).status == "RETRY"
    monkeypatch.setenv("RECON_MATCHING_WINDOW_SECONDS", "0")
    import sqlalchemy as sa
    with books.db.begin() as c:
        c.execute(sa.text("UPDATE process_tracker SET run_after = now()"))
    books.process()
    assert books.staging(sid).metadata["error_type"] == "NoMatchFoundError"


def test_producer_rejects_bad_amounts_and_nul_but_keeps_backslash_text(books):
    import pytest
    from recon.errors import InvalidInputError

    for amount in ["0", "-1", "NaN", "Infinity", "1e400", "1.23456", "١٢", "", "1,00"]:
        with pytest.raises(InvalidInputError, match="amount"):
            books.stage(books.bank, "DEBIT", amount, "TRANSACTION", order_id="x")
    with pytest.raises(InvalidInputError, match="NUL"):
        books.stage(books.bank, "DEBIT", "1", "TRANSACTION", order_id="x", note="a\x00b")
    sid, _ = books.stage(books.bank, "DEBIT", "1", "TRANSACTION", order_id="x", note="C:\\u0000\\dir")
    assert books.staging(sid).metadata["note"] == "C:\\u0000\\dir"
    assert len(books.rows("SELECT 1 FROM staging_entries")) == 1
