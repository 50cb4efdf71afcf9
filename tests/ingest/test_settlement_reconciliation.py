"""Three-way reconciliation end to end, as the README's "PSP settlement" section: orders booked from a
CSV, the PSP's settlement report (Adyen, Stripe) confirms them with their fees and expects the payout
on the bank, and the bank's camt.053 line confirms the payout; all through the command line on a real
database. Hostile reports are refused whole with exit 2 and nothing written.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from recon.ingest.adyen import read_adyen_settlement
from recon.ingest.settlement import LineKind, SettlementReport
from recon.ingest.stripe import read_stripe_payouts
from recon.reporting import monitoring
from recon.web.rendering import render
from recon.settings import PROJECT_ROOT
from tests.test_cli import recon

SETTLEMENT = PROJECT_ROOT / "tests" / "data" / "settlement"
RECONCILE = SETTLEMENT / "reconcile"
VIEW_LINKS = {"airflow": "", "base": "/recon", "dag_id": "recon", "dag_url": "/dags/recon", "trigger_api": "/api"}


class Books:
    """A merchant's orders, PSP clearing, PSP fees and bank accounts with the rules that tie them."""

    def __init__(self, db_url: str, currency: str, *, bank_key: tuple[str, ...]):
        self.db_url = db_url
        self.merchant = merchant = self.run("merchant", "create", "Shop")
        account = ("account", "create", "--merchant", merchant, "--currency", currency)
        # statement sides (money arriving is a CREDIT): orders are receivables (an order is a DEBIT
        # there, its expected leg on the clearing account a CREDIT, as the PSP reports a payment)
        self.orders = self.run(*account, "--name", "Web orders", "--type", "DEBIT_NORMAL")
        self.clearing = self.run(*account, "--name", "PSP clearing", "--type", "CREDIT_NORMAL")
        self.fees = self.run(*account, "--name", "PSP fees", "--type", "CREDIT_NORMAL")
        self.bank = self.run(*account, "--name", "Bank", "--type", "CREDIT_NORMAL", "--initial-balance", "1000.00")
        self.run("rule", "create", "--account-one", self.orders, "--account-two", self.clearing,
                 "--fee-account", self.fees, "--aging-days", "3")
        self.run("rule", "create", "--account-one", self.clearing, "--account-two", self.bank, *bank_key,
                 "--aging-days", "3")

    def run(self, *args: str) -> str:
        return recon(self.db_url, *args).stdout.strip()

    def report(self) -> dict:
        return json.loads(self.run("report", "--json"))

    def balances(self) -> dict[str, dict]:
        return {b["account_id"]: b for b in self.report()["balances"]}


def orders_csv(report: SettlementReport, path: Path, extra: dict[str, Decimal] | None = None) -> list[str]:
    """The orders the report settles, one per payment line at its gross (as the shop booked them)."""
    orders = {line.order_id: line.gross for line in report if line.kind is LineKind.PAYMENT}
    orders.update(extra or {})
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["order_id", "amount", "currency", "transaction_date", "type"])
        for order_id, amount in orders.items():
            writer.writerow([order_id, amount, report.currency, "2026-11-01", "Payment"])
    return list(orders)


def camt053(path: Path, currency: str, amount: Decimal, remittance: str, booked: str) -> None:
    """A bank statement with one credit: the PSP's payout."""
    path.write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">
  <BkToCstmrStmt>
    <GrpHdr><MsgId>PAYOUT-{booked}</MsgId><CreDtTm>{booked}T06:00:00</CreDtTm></GrpHdr>
    <Stmt>
      <Id>STMT-{booked}</Id>
      <CreDtTm>{booked}T06:00:00</CreDtTm>
      <Acct><Id><IBAN>DE02120300000000202051</IBAN></Id><Ccy>{currency}</Ccy></Acct>
      <Bal><Tp><CdOrPrtry><Cd>OPBD</Cd></CdOrPrtry></Tp><Amt Ccy="{currency}">1000.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Dt><Dt>{booked}</Dt></Dt></Bal>
      <Bal><Tp><CdOrPrtry><Cd>CLBD</Cd></CdOrPrtry></Tp><Amt Ccy="{currency}">{Decimal("1000.00") + amount}</Amt><CdtDbtInd>CRDT</CdtDbtInd><Dt><Dt>{booked}</Dt></Dt></Bal>
      <Ntry>
        <Amt Ccy="{currency}">{amount}</Amt>
        <CdtDbtInd>CRDT</CdtDbtInd>
        <Sts>BOOK</Sts>
        <BookgDt><Dt>{booked}</Dt></BookgDt>
        <ValDt><Dt>{booked}</Dt></ValDt>
        <AcctSvcrRef>BANK-{booked}-1</AcctSvcrRef>
        <BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>RCDT</Cd><SubFmlyCd>ESCT</SubFmlyCd></Fmly></Domn></BkTxCd>
        <NtryDtls><TxDtls>
          <Refs><EndToEndId>NOTPROVIDED</EndToEndId></Refs>
          <RmtInf><Ustrd>{remittance}</Ustrd></RmtInf>
        </TxDtls></NtryDtls>
      </Ntry>
    </Stmt>
  </BkToCstmrStmt>
</Document>
""")


def assert_three_way(db, books: Books, report: SettlementReport, payout: Decimal, settled_orders: list[str]) -> None:
    summary = books.report()
    staging = summary["staging_entries"]
    assert staging.get("PENDING", 0) == 0 and staging.get("NEEDS_MANUAL_REVIEW", 0) == 0, summary["manual_review"]
    assert summary["invariants"]["ok"]
    balances = books.balances()
    fees = sum((b.fee_total for b in report.batches), Decimal(0))
    assert Decimal(balances[books.fees]["posted"]) == fees
    assert Decimal(balances[books.bank]["posted"]) == Decimal("1000.00") + payout
    assert Decimal(balances[books.bank]["pending"]) == Decimal(balances[books.bank]["posted"])  # nothing left expected
    assert Decimal(balances[books.clearing]["posted"]) == 0 == Decimal(balances[books.clearing]["pending"])
    with db.begin() as conn:  # every order fulfilled by its payment line
        fulfilled = conn.execute(sa.text(
            "SELECT order_id FROM staging_entries WHERE account_id = :a AND processing_mode = 'CONFIRMATION'"
            " AND metadata ->> 'match_type' = 'Phase2_Fulfilled'"), {"a": books.clearing}).scalars().all()
        open_orders = conn.execute(sa.text(
            "SELECT count(*) FROM entries WHERE account_id = :a AND status = 'EXPECTED'"), {"a": books.clearing}).scalar()
    assert sorted(fulfilled) == sorted(settled_orders) and open_orders == 0
    assert clearing_by_batch(db, books.clearing) == {b.batch_id: 0 for b in report.batches}


def clearing_by_batch(db, clearing: str) -> dict[str, Decimal]:
    """The clearing account's posted balance per settlement batch (credits in, debits out)."""
    with db.begin() as conn:
        return dict(conn.execute(sa.text(
            "SELECT metadata ->> 'settlement_batch', sum(CASE entry_type WHEN 'CREDIT' THEN amount ELSE -amount END)"
            " FROM entries WHERE account_id = :a AND status = 'POSTED' GROUP BY 1"), {"a": clearing}).all())


def test_adyen_batch_orders_report_and_bank_reconcile_three_ways(db_url, db, tmp_path):
    """The README's example, with its files: tests/data/settlement/reconcile/."""
    books = Books(db_url, "EUR", bank_key=("--match-key", "order_id=metadata.payout_reference"))
    path = SETTLEMENT / "adyen_batch_4.csv"
    checked = read_adyen_settlement(path, "EUR")
    settled = orders_csv(checked, tmp_path / "orders.csv")
    assert (tmp_path / "orders.csv").read_text() == (RECONCILE / "orders_batch_4.csv").read_text()
    [batch] = checked.batches
    assert batch.payout == Decimal("73879.47") and len(settled) == 300

    books.run("ingest", str(RECONCILE / "orders_batch_4.csv"), "--account", books.orders, "--mode", "TRANSACTION")
    books.run("process")
    dry = recon(db_url, "ingest", str(path), "--account", books.clearing, "--dry-run")
    assert "310 ingested" in dry.stdout and "nothing written" in dry.stderr
    out = books.run("ingest", str(path), "--account", books.clearing, "--format", "adyen-settlement")
    assert "310 ingested" in out
    again = recon(db_url, "ingest", str(path), "--account", books.clearing, check=False)  # detected by header
    assert again.returncode == 4 and "310 duplicates" in again.stdout
    books.run("process")
    # the payout waits on the bank for the statement line naming its reference
    expected = books.balances()[books.bank]
    assert Decimal(expected["pending"]) - Decimal(expected["posted"]) == batch.payout

    books.run("ingest", str(RECONCILE / "bank_payout_batch_4.xml"), "--account", books.bank, "--mode", "CONFIRMATION",
              "--order-id-pattern", r"TX\d+XT")
    books.run("process")
    assert_three_way(db, books, checked, batch.payout, settled)
    # the refunds and the chargeback gave their gross back to the order account, linked by order id
    refund = json.loads(books.run("entry", "show", "ORD-100093", "--json"))
    assert "SettlementBooked" in json.dumps(refund)
    with db.begin() as conn:
        given_back = conn.execute(sa.text(
            "SELECT sum(amount) FROM entries WHERE account_id = :a AND status = 'POSTED' AND entry_type = 'CREDIT'"
            " AND metadata ->> 'settlement_kind' IN ('refund', 'chargeback')"), {"a": books.orders}).scalar()
    assert given_back == Decimal("131.07") + Decimal("127.29") + Decimal("161.23") + Decimal("374.09") \
        + Decimal("9.52") + Decimal("192.90") + Decimal("104.15")

    # the Recon view's Settlements section: the batch, its figures, and the bank's confirmation
    [shown] = monitoring.settlements(db)["batches"]
    assert (shown["batch_id"], shown["payments"], shown["refunds"], shown["chargebacks"]) == ("4", 300, 6, 1)
    assert shown["fees"] == batch.fee_total and shown["net"] == batch.payout == shown["payout"]
    assert (shown["payout_reference"], shown["bank"], shown["in_review"]) == ("TX4821937650XT", "confirmed", 0)
    html = render("_section_settlements.html", {**VIEW_LINKS, "st": monitoring.settlements(db)})
    assert 'data-testid="settlement-bank-4">confirmed' in html and "TX4821937650XT" in html


def test_stripe_payouts_with_refunds_and_a_dispute_reconcile_by_amount(db_url, db, tmp_path):
    books = Books(db_url, "USD", bank_key=("--match-key", "amount", "--date-window-days", "3"))
    path = SETTLEMENT / "stripe_payouts.csv"
    checked = read_stripe_payouts(path, "USD")
    # refunds and disputes name orders of earlier days: the shop booked those too
    settled = orders_csv(checked, tmp_path / "orders.csv")
    kinds = {kind for b in checked.batches for kind in b.line_counts}
    assert {LineKind.PAYMENT, LineKind.REFUND, LineKind.CHARGEBACK, LineKind.FEE} <= kinds

    books.run("ingest", str(tmp_path / "orders.csv"), "--account", books.orders, "--mode", "TRANSACTION")
    books.run("process")
    books.run("ingest", str(path), "--account", books.clearing)  # stripe-payouts, detected by header
    books.run("process", "--chunk-size", "7")  # chunks cut across payments, refunds, fees and payouts
    total = Decimal(0)
    for day, batch in enumerate(checked.batches):
        assert batch.payout is not None and not batch.payout_stated  # paid out at Σ net
        total += batch.payout
        booked = f"2026-11-{4 + day:02d}"
        camt053(tmp_path / f"bank{day}.xml", "USD", batch.payout, "STRIPE TRANSFER", booked)
        books.run("ingest", str(tmp_path / f"bank{day}.xml"), "--account", books.bank, "--mode", "CONFIRMATION")
    books.run("process")
    assert_three_way(db, books, checked, total, settled)


def test_a_carried_over_batch_expects_nothing_on_the_bank(db_url, db, tmp_path):
    books = Books(db_url, "EUR", bank_key=("--match-key", "order_id=metadata.payout_reference"))
    carry, after = SETTLEMENT / "adyen_batch_5_carry_over.csv", SETTLEMENT / "adyen_batch_6_after_carry_over.csv"
    settled = orders_csv(read_adyen_settlement(carry, "EUR"), tmp_path / "orders5.csv")
    settled += orders_csv(read_adyen_settlement(after, "EUR"), tmp_path / "orders6.csv")
    for name in ("orders5.csv", "orders6.csv"):
        books.run("ingest", str(tmp_path / name), "--account", books.orders, "--mode", "TRANSACTION")
    books.run("ingest", str(carry), "--account", books.clearing)
    books.run("process")
    bank = books.balances()[books.bank]
    assert bank["pending"] == bank["posted"]  # batch 5 pays nothing out
    clearing = books.balances()[books.clearing]
    assert Decimal(clearing["posted"]) == Decimal("-468.35")  # the negative balance waits for batch 6

    books.run("ingest", str(after), "--account", books.clearing)
    books.run("process")
    camt053(tmp_path / "bank.xml", "EUR", Decimal("9188.50"), "ADYEN TX4821990144XT BATCH 6", "2026-11-06")
    books.run("ingest", str(tmp_path / "bank.xml"), "--account", books.bank, "--mode", "CONFIRMATION",
              "--order-id-pattern", r"TX\d+XT")
    books.run("process")
    summary = books.report()
    assert summary["staging_entries"].get("NEEDS_MANUAL_REVIEW", 0) == 0 and summary["invariants"]["ok"]
    balances = books.balances()
    assert Decimal(balances[books.bank]["posted"]) == Decimal("10188.50")
    assert Decimal(balances[books.clearing]["posted"]) == 0
    # the transfer moved batch 5's negative balance to batch 6's legs: each batch is back to zero
    assert clearing_by_batch(db, books.clearing) == {"5": 0, "6": 0}
    shown = {b["batch_id"]: b for b in monitoring.settlements(db)["batches"]}
    assert (shown["5"]["bank"], shown["5"]["carried"], shown["6"]["bank"]) == (
        "carried forward", Decimal("-468.35"), "confirmed")


def test_a_payment_of_an_order_never_booked_is_an_exception(db_url, db, tmp_path):
    books = Books(db_url, "EUR", bank_key=("--match-key", "order_id=metadata.payout_reference"))
    path = SETTLEMENT / "adyen_batch_5_carry_over.csv"
    settled = orders_csv(read_adyen_settlement(path, "EUR"), tmp_path / "orders.csv")
    lines = (tmp_path / "orders.csv").read_text().splitlines()
    (tmp_path / "orders.csv").write_text("\n".join(line for line in lines if settled[0] not in line) + "\n")
    books.run("ingest", str(tmp_path / "orders.csv"), "--account", books.orders, "--mode", "TRANSACTION")
    books.run("process")
    books.run("ingest", str(path), "--account", books.clearing)
    books.run("process")
    review = books.report()["manual_review"]
    assert [(g["error_type"], [e["order_id"] for e in g["entries"]]) for g in review] == [
        ("NoMatchFoundError", [settled[0]])]
    # the unmatched payment (net 409.29) is not booked, so its batch is short by it until a reviewer acts;
    # batch 6 (not ingested yet) starts with the negative balance batch 5 carried to it
    assert clearing_by_batch(db, books.clearing) == {"5": Decimal("-409.29"), "6": Decimal("-468.35")}


HOSTILE = [
    ("adyen_line_does_not_add_up.csv", "adyen-settlement", ["batch 7", "row"]),
    ("adyen_batch_does_not_sum.csv", "adyen-settlement", ["batch 7", "payout"]),
    ("adyen_wrong_currency.csv", "adyen-settlement", ["currency"]),
    ("adyen_truncated_before_payout.csv", "adyen-settlement", ["no closing line"]),
    ("adyen_truncated_mid_row.csv", "adyen-settlement", ["row"]),
    ("adyen_float_amount.csv", "adyen-settlement", ["row"]),
    ("adyen_not_utf8.csv", "adyen-settlement", ["UTF-8"]),
    ("stripe_line_does_not_add_up.csv", "stripe-payouts", ["row"]),
    ("stripe_payout_does_not_sum.csv", "stripe-payouts", ["payout"]),
    ("stripe_wrong_currency.csv", "stripe-payouts", ["currency"]),
    ("stripe_truncated.csv", "stripe-payouts", ["line 9", "cut short"]),
]


def test_hostile_reports_are_refused_whole_through_the_cli(db_url):
    eur = Books(db_url, "EUR", bank_key=())
    usd = Books(db_url, "USD", bank_key=())
    for name, file_format, words in HOSTILE:
        clearing = eur.clearing if file_format == "adyen-settlement" else usd.clearing
        result = recon(db_url, "ingest", str(SETTLEMENT / name), "--account", clearing, "--format", file_format,
                       check=False)
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        for word in words:
            assert word in result.stderr, (name, word, result.stderr)
    staging = eur.report()["staging_entries"]
    assert sum(staging.values()) == 0, staging


def test_a_report_needs_its_rules_before_anything_is_written(db_url):
    merchant = recon(db_url, "merchant", "create", "Shop").stdout.strip()
    clearing = recon(db_url, "account", "create", "--merchant", merchant, "--currency", "EUR", "--name", "PSP",
                     "--type", "CREDIT_NORMAL").stdout.strip()
    result = recon(db_url, "ingest", str(SETTLEMENT / "adyen_batch_4.csv"), "--account", clearing, check=False)
    assert result.returncode == 2 and "no recon rule has the clearing account" in result.stderr
    with_mode = recon(db_url, "ingest", str(SETTLEMENT / "adyen_batch_4.csv"), "--account", clearing,
                      "--mode", "CONFIRMATION", check=False)
    assert with_mode.returncode == 2 and "leave out" in with_mode.stderr
    assert sum(json.loads(recon(db_url, "report", "--json").stdout)["staging_entries"].values()) == 0


def test_fee_account_is_checked_like_the_variance_account(db_url):
    books = Books(db_url, "EUR", bank_key=())
    other = recon(db_url, "merchant", "create", "Other").stdout.strip()
    elsewhere = recon(db_url, "account", "create", "--merchant", other, "--currency", "EUR", "--name", "X",
                      "--type", "CREDIT_NORMAL").stdout.strip()
    dollars = books.run("account", "create", "--merchant", books.merchant, "--currency", "USD", "--name", "USD fees",
                        "--type", "CREDIT_NORMAL")
    rules = json.loads(books.run("rule", "list", "--json"))
    rule = next(r for r in rules if r["account_two_id"] == books.clearing)
    assert rule["fee_account_id"] == books.fees
    for account, words in ((elsewhere, "belongs to merchant"), (dollars, "is in USD"), (books.orders, "must differ")):
        refused = recon(db_url, "rule", "update", rule["id"], "--fee-account", account, check=False)
        assert refused.returncode == 2 and "fee account" in refused.stderr and words in refused.stderr
    assert f"fee account        {books.fees}" in books.run("rule", "show", rule["id"])
    books.run("rule", "update", rule["id"], "--no-fee-account")
    assert json.loads(books.run("rule", "show", rule["id"], "--json"))["fee_account_id"] is None


def test_settlement_lines_end_in_the_same_books_one_at_a_time_and_in_chunks(db_url, pg_admin_url, tmp_path):
    """The Stripe report (payments, refunds, a dispute, fees, synthesised payouts) drained one task at a
    time and in chunks of 37 from two copies of one database: the same outcome per line, the same
    ledger rows (tests/test_batch_equivalence.py's comparison)."""
    from bench.databases import Server, database_name
    from recon import pipeline
    from recon.db import Database, reset_default_database
    from tests.test_batch_equivalence import state

    books = Books(db_url, "USD", bank_key=("--match-key", "amount", "--date-window-days", "3"))
    path = SETTLEMENT / "stripe_payouts.csv"
    checked = read_stripe_payouts(path, "USD")
    orders_csv(checked, tmp_path / "orders.csv")
    books.run("ingest", str(tmp_path / "orders.csv"), "--account", books.orders, "--mode", "TRANSACTION")
    books.run("process")
    books.run("ingest", str(path), "--account", books.clearing)
    reset_default_database()
    server = Server(pg_admin_url)
    copy_name = f"{database_name(db_url)}_copy"
    copy, original = Database(server.copy(database_name(db_url), copy_name), "copy"), Database(db_url, "original")
    try:
        for db, batch_size, chunk_size in ((original, 1, 1), (copy, 300, 37)):
            summary = pipeline.process_queue(batch_size=batch_size, chunk_size=chunk_size, db=db, run_id="eq")
            assert summary["retried"] == 0, summary
        want, got = state(original), state(copy)
        assert got == want
        assert {s[0] for s in want["staging"].values()} == {"PROCESSED"}
        booked_by_themselves = sum(n for b in checked.batches for kind, n in b.line_counts.items()
                                   if kind not in (LineKind.PAYMENT, LineKind.PAYOUT))
        outcomes = Counter(s[2] for s in want["staging"].values())
        assert outcomes["SettlementBooked"] == booked_by_themselves == 9
        assert outcomes["Phase2_Fulfilled"] > 150 and outcomes["NewTransactionGenerated"] > 150
    finally:
        original.dispose()
        copy.dispose()
        server.drop(copy_name)


def test_a_reviewer_reopening_a_settled_payment_takes_its_fee_back_too(db_url, db, tmp_path):
    """Reopened, the payment's confirmation leaves with its fee legs; confirmed again, the fee is
    booked once, not twice."""
    books = Books(db_url, "EUR", bank_key=("--match-key", "order_id=metadata.payout_reference"))
    path = SETTLEMENT / "adyen_batch_5_carry_over.csv"
    orders_csv(read_adyen_settlement(path, "EUR"), tmp_path / "orders.csv")
    books.run("ingest", str(tmp_path / "orders.csv"), "--account", books.orders, "--mode", "TRANSACTION")
    books.run("process")
    books.run("ingest", str(path), "--account", books.clearing)
    books.run("process")
    fees = Decimal(books.balances()[books.fees]["posted"])
    with db.begin() as conn:
        payment = conn.execute(sa.text(
            "SELECT staging_entry_id FROM staging_entries WHERE order_id = 'ORD-100401'"
            " AND processing_mode = 'CONFIRMATION'")).scalar_one()
    books.run("review", "reopen", payment, "--reason", "DATA_CORRECTION")
    fee = Decimal("0.11") + Decimal("2.48") + Decimal("0.10") + Decimal("1.24")  # the line's four fee components
    assert Decimal(books.balances()[books.fees]["posted"]) == fees - fee
    books.run("review", "requeue", payment, "--reason", "DATA_CORRECTION")
    books.run("process")
    assert Decimal(books.balances()[books.fees]["posted"]) == fees
    assert books.report()["invariants"]["ok"]
