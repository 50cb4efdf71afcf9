"""Run summaries carry money per currency (issue 18, problem 10): booked, matched and sent to review
by the run, and what is still expected when it ended, each with its currency's decimals, grouped."""

from __future__ import annotations

from recon import accounts
from recon.reporting import run_summaries


def test_a_run_summary_says_how_much_money_per_currency(books):
    yen_bank = accounts.create_account(books.merchant_id, "Bank JPY", "DEBIT_NORMAL", "JPY", db=books.db)
    yen_clearing = accounts.create_account(books.merchant_id, "PSP clearing JPY", "CREDIT_NORMAL", "JPY", db=books.db)
    accounts.create_recon_rule(yen_bank, yen_clearing, db=books.db)
    books.stage(books.bank, "DEBIT", "1234567.50", "TRANSACTION", order_id="O-1")
    books.stage(books.bank, "DEBIT", "1200.00", "TRANSACTION", order_id="O-2")
    books.stage(yen_bank, "DEBIT", "15000", "TRANSACTION", "JPY", order_id="J-1")  # never confirmed
    books.process()
    books.stage(books.clearing, "CREDIT", "1234567.50", "CONFIRMATION", order_id="O-1")
    books.stage(books.clearing, "CREDIT", "1150.00", "CONFIRMATION", order_id="O-2")  # a mismatch

    summary = books.process()

    assert summary["amounts"] == {"matched": {"USD": "1234567.5000"}, "to_review": {"USD": "1150.0000"}}
    row = run_summaries.record_run_summary("manual__money", summary, db=books.db)
    assert row["summary"]["amounts"]["unconfirmed"] == {"JPY": "15000.0000"}  # O-2's leg is held by the mismatch
    markdown = run_summaries.summary_markdown(row["summary"], "manual__money")
    assert "| money | JPY | USD |" in markdown
    assert "| matched | – | 1,234,567.50 USD |" in markdown
    assert "| to review | – | 1,150.00 USD |" in markdown
    assert "| unconfirmed (still expected) | 15,000 JPY | – |" in markdown


def test_booked_money_is_summed_per_currency_across_chunks(books):
    for order, amount in (("A-1", "0.10"), ("A-2", "0.20"), ("A-3", "1000000.0001")):
        books.stage(books.bank, "DEBIT", amount, "TRANSACTION", order_id=order)
    summary = books.process(chunk_size=1)
    assert summary["amounts"] == {"booked": {"USD": "1000000.3001"}}  # exact: no float on the way
    assert "| booked | 1,000,000.3001 USD |" in run_summaries.summary_markdown(summary)
