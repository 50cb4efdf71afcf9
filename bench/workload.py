"""The benchmark's workload: books, statement lines, their expected outcomes, and checks.

Several merchants, each with a PSP clearing account (CREDIT_NORMAL, a rule's account_two)
and two bank accounts (DEBIT_NORMAL, account_one of a rule to the clearing account), plus a shop
account whose orders a bank-in account confirms by the order id in the bank line's
metadata.reference. Every other merchant's PSP rules tolerate 0.05, booked to its variance
account. Half of the lines are TRANSACTION lines (one order each); the other half are
CONFIRMATION lines for those orders, with about 5% amount mismatches, 2% unmatched orders, 1%
duplicates (a second confirmation of a fulfilled order) and, on tolerant rules, a third of the
matches settled 0.03 short, shuffled. The third merchant's clearing account is a PSP's that settles
net of a fee: its rules name a fee account and its confirmations are settled payments at gross
carrying metadata.fee_total (1.5 % + 0.25) as the settlement ingest writes them, so each fulfilment
also moves the fee from clearing to the fee account (its balance is checked: Σ fees booked).

Lines go in through the project's producer (``recon.ingest.insert_staging_entries``): each
with its PROCESS_STAGING_ENTRY task. Confirmations *arrive later*: their tasks are created
not yet due and :func:`release_confirmations` makes them due once the TRANSACTION lines are
drained, the way a settlement file follows the orders it settles. Every mode (DAG, serial,
raw SQL) does the same, so a confirmation never races its own order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Iterator

import sqlalchemy as sa

from recon import accounts, ledger
from recon.db import Database
from recon.staging import NewStagingEntry, insert_staging_entries

CURRENCIES = ("USD", "EUR", "GBP", "CHF")
NOT_YET_DUE = "infinity"  # run_after of confirmations until they "arrive"
INSERT_BATCH = 5_000
BASE_DATE = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
FEE_MERCHANT = 2  # index of the merchant whose PSP clearing account settles payments net of a fee


def psp_fee(gross: Decimal) -> Decimal:
    """The PSP's fee on a settled payment: 1.5 % + 0.25, to the cent."""
    return (gross * Decimal("0.015") + Decimal("0.25")).quantize(Decimal("0.01"), ROUND_HALF_UP)


@dataclass(frozen=True)
class Pair:
    merchant_id: str
    bank: str  # account_one, DEBIT_NORMAL
    clearing: str  # account_two, CREDIT_NORMAL
    currency: str
    tolerant: bool = False  # the rule accepts 0.05 short or over, booked to a variance account
    by_reference: bool = False  # confirmations carry the order id in metadata.reference
    fee_account: str | None = None  # a PSP pair: its confirmations are settled payments with a fee


@dataclass
class Books:
    pairs: list[Pair]
    orphans: list[str]  # bank accounts without a rule (edge cases)
    keyed: dict[str, Pair] = field(default_factory=dict)  # matching-rule edge cases: kind -> pair


def create_keyed_books(db: Database, books: Books) -> None:
    """Pairs of the first merchant whose rules match otherwise (edge cases): bank lines carrying the
    order id in metadata.reference, with a 0.05 tolerance; bank lines matched by amount alone, within
    0.1 % and 3 days; both with a variance account; bank lines matched by the end-to-end id the
    order carried (metadata on both sides)."""
    merchant, currency = books.pairs[0].merchant_id, books.pairs[0].currency
    variance = "acc_bench_1_variance"  # create_books made it
    for kind, settings in (
        ("reference", accounts.RuleSettings(match_keys=(("metadata.reference", "order_id"),),
                                            amount_tolerance=Decimal("0.05"), variance_account_id=variance)),
        ("amount", accounts.RuleSettings(match_keys=(("amount", "amount"),), amount_tolerance_pct=Decimal("0.1"),
                                         variance_account_id=variance, date_window_days=3)),
        ("end_to_end", accounts.RuleSettings(match_keys=(("metadata.end_to_end_id", "metadata.end_to_end_id"),))),
    ):
        orders = accounts.create_account(merchant, f"Orders {kind} {currency}", "DEBIT_NORMAL", currency,
                                         account_id=f"acc_bench_1_orders_{kind}", db=db)
        bank = accounts.create_account(merchant, f"Bank {kind} {currency}", "CREDIT_NORMAL", currency,
                                       account_id=f"acc_bench_1_bank_{kind}", db=db)
        accounts.create_recon_rule(orders, bank, rule_id=f"rule_bench_1_{kind}", settings=settings, db=db)
        books.keyed[kind] = Pair(merchant, orders, bank, currency)


@dataclass
class Workload:
    entries: int
    transactions: int
    confirmations: int
    expected: dict[str, int] | None  # outcome -> count, None when edge cases make it data-dependent
    mix: dict[str, int] = field(default_factory=dict)
    fees: dict[str, str] = field(default_factory=dict)  # fee account -> its balance once drained (Σ fees booked)


def outcome_key(status: str, error_type: str | None, match_type: str | None) -> str:
    return f"{status}:{error_type or match_type or '-'}"


def create_books(db: Database, merchants: int = 4) -> Books:
    pairs, orphans = [], []
    for m in range(merchants):
        currency = CURRENCIES[m % len(CURRENCIES)]
        merchant = accounts.create_merchant(f"Bench merchant {m + 1}", merchant_id=f"mer_bench_{m + 1}", db=db)
        clearing = accounts.create_account(merchant, f"PSP clearing {currency}", "CREDIT_NORMAL", currency,
                                         account_id=f"acc_bench_{m + 1}_psp", db=db)
        tolerant = m % 2 == 0
        variance = accounts.create_account(merchant, f"Variance {currency}", "CREDIT_NORMAL", currency,
                                           account_id=f"acc_bench_{m + 1}_variance", db=db)
        fees = None
        if m == min(FEE_MERCHANT, merchants - 1):  # both rules onto its clearing account take the fees
            fees = accounts.create_account(merchant, f"PSP fees {currency}", "CREDIT_NORMAL", currency,
                                           account_id=f"acc_bench_{m + 1}_fees", db=db)
        tolerance = (accounts.RuleSettings(amount_tolerance=Decimal("0.05"), variance_account_id=variance,
                                           fee_account_id=fees)
                     if tolerant else accounts.RuleSettings(fee_account_id=fees))
        for b in (1, 2):
            bank = accounts.create_account(merchant, f"Bank {b} {currency}", "DEBIT_NORMAL", currency, "1000.00",
                                         account_id=f"acc_bench_{m + 1}_bank{b}", db=db)
            accounts.create_recon_rule(bank, clearing, rule_id=f"rule_bench_{m + 1}_{b}", settings=tolerance, db=db)
            pairs.append(Pair(merchant, bank, clearing, currency, tolerant=tolerant, fee_account=fees))
        shop = accounts.create_account(merchant, f"Shop {currency}", "DEBIT_NORMAL", currency,
                                       account_id=f"acc_bench_{m + 1}_shop", db=db)
        bank_in = accounts.create_account(merchant, f"Bank in {currency}", "CREDIT_NORMAL", currency,
                                          account_id=f"acc_bench_{m + 1}_bankin", db=db)
        accounts.create_recon_rule(shop, bank_in, rule_id=f"rule_bench_{m + 1}_ref", db=db, settings=accounts.RuleSettings(
            match_keys=(("metadata.reference", "order_id"),)))
        pairs.append(Pair(merchant, shop, bank_in, currency, by_reference=True))
        orphans.append(accounts.create_account(merchant, f"Bank without rule {currency}", "DEBIT_NORMAL", currency,
                                             account_id=f"acc_bench_{m + 1}_orphan", db=db))
    return Books(pairs, orphans)


def _line(account: str, side: str, amount: Decimal, currency: str, mode: str, i: int,
          order_id: str | None, source: str, key: str = "order_id") -> NewStagingEntry:
    metadata: dict[str, Any] = {"source_file": source, "line": i}
    if order_id is not None:
        metadata[key] = order_id
    return NewStagingEntry(account, side, amount, currency, mode, BASE_DATE + dt.timedelta(seconds=i), metadata)


def plan_lines(books: Books, entries: int, seed: int = 7, edge_cases: bool = False
               ) -> tuple[list[NewStagingEntry], list[NewStagingEntry], Workload]:
    """TRANSACTION lines and CONFIRMATION lines (shuffled) for `entries` lines in total."""
    rng = random.Random(seed)
    n_tx = entries // 2
    n_conf = entries - n_tx
    n_unmatched = round(n_conf * 0.02)
    n_dup = round(n_conf * 0.01)
    n_confirmed = min(n_tx, n_conf - n_unmatched - n_dup)
    n_unmatched = n_conf - n_dup - n_confirmed  # small sizes: keep the total exact
    n_mismatch = round(n_conf * 0.05)

    orders = []  # (pair, order_id, amount)
    transactions = []
    for i in range(n_tx):
        pair = books.pairs[rng.randrange(len(books.pairs))]
        order_id = f"ORD-{i:08d}"
        amount = Decimal(rng.randrange(100, 500_000)) / 100
        orders.append((pair, order_id, amount))
        transactions.append(_line(pair.bank, "DEBIT", amount, pair.currency, "TRANSACTION", i, order_id,
                                  "bench-transactions.csv"))

    confirmed = rng.sample(range(n_tx), n_confirmed)
    mismatched = set(confirmed[:n_mismatch])
    matched = confirmed[n_mismatch:]
    short = {i for k, i in enumerate(matched) if k % 3 == 0 and orders[i][0].tolerant}  # settled 0.03 short
    confirmations = []
    for k, i in enumerate(confirmed):
        pair, order_id, amount = orders[i]
        if i in mismatched:
            amount = amount + Decimal("1.00")
        elif i in short:
            amount = amount - Decimal("0.03")
        confirmations.append(_confirmation(pair, amount, k, order_id))
    # the same line twice: the second finds its order already fulfilled (order-id rules say so)
    repeatable = [i for i in matched if not orders[i][0].by_reference and i not in short] or matched
    for k in range(n_dup):
        pair, order_id, amount = orders[repeatable[k % len(repeatable)]]
        confirmations.append(_confirmation(pair, amount, n_confirmed + k, order_id))
    for k in range(n_unmatched):
        pair = books.pairs[rng.randrange(len(books.pairs))]
        confirmations.append(_confirmation(pair, Decimal("10.00"), n_confirmed + n_dup + k, f"UNKNOWN-{k:08d}"))

    fees: Counter[str] = Counter()  # what the fulfilled payments of PSP pairs move to their fee accounts
    for i in matched:
        pair, _, amount = orders[i]
        if pair.fee_account:
            fees[pair.fee_account] += psp_fee(amount - Decimal("0.03") if i in short else amount)
    expected: dict[str, int] | None = {
        outcome_key("PROCESSED", None, "NewTransactionGenerated"): n_tx,
        outcome_key("PROCESSED", None, "Phase2_Fulfilled"): len(matched) - len(short),
        outcome_key("PROCESSED", None, "FulfilledWithTolerance"): len(short),
        outcome_key("NEEDS_MANUAL_REVIEW", "MismatchError", None): len(mismatched),
        outcome_key("NEEDS_MANUAL_REVIEW", "NoMatchFoundError", None): n_unmatched,
        outcome_key("NEEDS_MANUAL_REVIEW", "AlreadyFulfilledError", None): n_dup,
    }
    if edge_cases:
        transactions, confirmations = _add_edge_cases(books, rng, orders, sorted(mismatched), transactions,
                                                      confirmations)
        expected = None
    rng.shuffle(confirmations)
    workload = Workload(
        entries=len(transactions) + len(confirmations),
        transactions=len(transactions),
        confirmations=len(confirmations),
        expected={k: v for k, v in expected.items() if v} if expected else None,
        mix={"orders": n_tx, "confirmed": n_confirmed, "mismatched": len(mismatched), "duplicates": n_dup,
             "unmatched": n_unmatched, "within_tolerance": len(short),
             "by_reference": sum(1 for i in confirmed if orders[i][0].by_reference),
             "with_fees": sum(1 for line in confirmations if "fee_total" in line.metadata),
             "edge_cases": int(edge_cases)},
        fees={} if edge_cases else {account: str(total) for account, total in sorted(fees.items())},
    )
    return transactions, confirmations, workload


def _confirmation(pair: Pair, amount: Decimal, i: int, order_id: str) -> NewStagingEntry:
    line = _line(pair.clearing, "CREDIT", amount, pair.currency, "CONFIRMATION", i, order_id,
                 "bench-confirmations.csv", key="reference" if pair.by_reference else "order_id")
    if pair.fee_account is None:
        return line
    # a settled payment as recon.ingest.settlement_entries writes it: CREDIT at gross, the fee kept by the PSP
    fee = psp_fee(amount)
    return dataclasses.replace(line, metadata={
        **line.metadata, "settlement_batch": f"BENCH-{pair.currency}-1", "settlement_kind": "payment",
        "gross": str(amount), "fee_total": str(fee), "net": str(amount - fee)})


def _add_edge_cases(books: Books, rng: random.Random, orders: list, mismatched: list[int],
                    transactions: list[NewStagingEntry], confirmations: list[NewStagingEntry]
                    ) -> tuple[list[NewStagingEntry], list[NewStagingEntry]]:
    """Every other outcome of the engine, a few times each (for the equivalence test)."""
    tx, cf = list(transactions), list(confirmations)
    n = len(tx)
    for k in range(max(2, n // 50)):
        pair, order_id, amount = orders[rng.randrange(len(orders))]
        tx.append(_line(pair.bank, "DEBIT", amount, pair.currency, "TRANSACTION", n + k, order_id, "edge"))  # duplicate
    for k, orphan in enumerate(books.orphans):  # no rule for this account
        tx.append(_line(orphan, "DEBIT", Decimal("5.00"), "USD", "TRANSACTION", n + 100 + k, f"ORPHAN-{k}", "edge"))
    pair = books.pairs[0]
    tx.append(_line(pair.bank, "DEBIT", Decimal("6.00"), "JPY", "TRANSACTION", n + 200, "CURRENCY-1", "edge"))
    tx.append(_line(pair.bank, "CREDIT", Decimal("7.00"), pair.currency, "TRANSACTION", n + 201, None, "edge"))
    # ambiguous: the same order booked on both bank accounts of a merchant, then confirmed once
    same_merchant = [p for p in books.pairs if p.clearing == pair.clearing]
    for k in range(3):
        order_id = f"AMBIGUOUS-{k}"
        for p in same_merchant:
            tx.append(_line(p.bank, "DEBIT", Decimal("8.00"), p.currency, "TRANSACTION", n + 300 + k, order_id, "edge"))
        cf.append(_line(pair.clearing, "CREDIT", Decimal("8.00"), pair.currency, "CONFIRMATION", 900 + k, order_id,
                        "edge"))
    for k, i in enumerate(mismatched[:5]):  # a second confirmation of a mismatched order
        p, order_id, amount = orders[i]
        cf.append(_line(p.clearing, "CREDIT", amount, p.currency, "CONFIRMATION", 1000 + k, order_id, "edge"))
    p, order_id, amount = orders[0]
    cf.append(_line(p.clearing, "DEBIT", amount, p.currency, "CONFIRMATION", 1100, f"SIDE-{order_id}", "edge"))
    cf.append(_line(p.clearing, "CREDIT", Decimal("9.00"), p.currency, "CONFIRMATION", 1101, None, "edge"))
    cf.append(_line(p.bank, "CREDIT", amount, p.currency, "CONFIRMATION", 1102, order_id, "edge"))  # no rule as two
    for k in range(3):  # side and currency differences on booked orders
        p, order_id, amount = orders[rng.randrange(len(orders))]
        cf.append(_line(p.clearing, "DEBIT", amount, p.currency, "CONFIRMATION", 1200 + k, order_id, "edge"))
        p, order_id, amount = orders[rng.randrange(len(orders))]
        cf.append(_line(p.clearing, "CREDIT", amount, "JPY", "CONFIRMATION", 1300 + k, order_id, "edge"))
    if books.keyed:
        _add_keyed_edge_cases(books, rng, tx, cf)
    return tx, cf


def _add_keyed_edge_cases(books: Books, rng: random.Random, tx: list[NewStagingEntry],
                          cf: list[NewStagingEntry]) -> None:
    """Lines for the keyed rules: exact, within and beyond tolerance, unknown references; amount-only
    matches inside and outside the window, and two orders of one amount (ambiguous)."""
    ref, by_amount = books.keyed["reference"], books.keyed["amount"]
    n = 5000
    for k in range(12):
        amount = Decimal(rng.randrange(1000, 90_000)) / 100
        order_id = f"REF-{k}"
        tx.append(_line(ref.bank, "DEBIT", amount, ref.currency, "TRANSACTION", n + k, order_id, "edge"))
        paid = amount + (Decimal("0"), Decimal("-0.03"), Decimal("0.05"), Decimal("1.00"))[k % 4]
        cf.append(_keyed_line(ref.clearing, paid, ref.currency, n + k, {"reference": order_id}))
    cf.append(_keyed_line(ref.clearing, Decimal("5.00"), ref.currency, n + 50, {"reference": "REF-UNKNOWN"}))
    cf.append(_keyed_line(ref.clearing, Decimal("5.00"), ref.currency, n + 51, {}))  # no reference
    for k in range(8):
        amount = Decimal(1000 + 37 * k) / 100
        tx.append(_line(by_amount.bank, "DEBIT", amount, by_amount.currency, "TRANSACTION", n + 100 + k,
                        f"AMT-{k}", "edge"))
        paid = amount + (Decimal("0"), Decimal("0.01"))[k % 2]  # 0.01 is within 0.1 % from 10.00 on
        days = (0, 2, 5)[k % 3]  # the third is outside the 3-day window
        cf.append(NewStagingEntry(by_amount.clearing, "CREDIT", paid, by_amount.currency, "CONFIRMATION",
                                  BASE_DATE + dt.timedelta(days=days, seconds=n + 100 + k), {"line": n + 100 + k}))
    for k in range(2):  # one amount booked twice: ambiguous
        tx.append(_line(by_amount.bank, "DEBIT", Decimal("77.00"), by_amount.currency, "TRANSACTION",
                        n + 200 + k, f"AMT-TWICE-{k}", "edge"))
    cf.append(NewStagingEntry(by_amount.clearing, "CREDIT", Decimal("77.00"), by_amount.currency, "CONFIRMATION",
                              BASE_DATE + dt.timedelta(seconds=n + 200), {"line": n + 200}))


def _keyed_line(account: str, amount: Decimal, currency: str, i: int, metadata: dict[str, Any]) -> NewStagingEntry:
    return NewStagingEntry(account, "CREDIT", amount, currency, "CONFIRMATION", BASE_DATE + dt.timedelta(seconds=i),
                           {"source_file": "edge", "line": i, **metadata})


def add_keyed_orders(db: Database, books: Books, orders: int) -> dict[str, int]:
    """Orders on the amount-only and the end-to-end pairs of create_keyed_books, each confirmed a day
    later by a bank line: of the same amount and no reference (amounts 10.00 apart: one candidate
    each), or carrying the order's end-to-end id. Bookings due now, confirmations with the others.
    Returns the outcomes they add (the scale check explains their look-ups)."""
    if not books.keyed:
        create_keyed_books(db, books)
    bookings, confirmations = [], []
    for kind in ("amount", "end_to_end"):
        pair = books.keyed[kind]
        for k in range(orders):
            amount, e2e = Decimal(100 + 10 * k), {"end_to_end_id": f"E2E-{k:08d}"} if kind == "end_to_end" else {}
            line = _line(pair.bank, "DEBIT", amount, pair.currency, "TRANSACTION", k, f"{kind}-{k:08d}",
                         f"bench-{kind}-orders.csv")
            bookings.append(dataclasses.replace(line, metadata={**line.metadata, **e2e}))
            confirmations.append(NewStagingEntry(pair.clearing, "CREDIT", amount, pair.currency, "CONFIRMATION",
                                                 BASE_DATE + dt.timedelta(days=1, seconds=k), {"line": k, **e2e}))
    with db.begin() as conn:
        insert_staging_entries(conn, bookings)
        later = [created.task_id for created in insert_staging_entries(conn, confirmations)]
        conn.execute(
            sa.text("UPDATE process_tracker SET run_after = CAST(:later AS timestamptz) WHERE task_id = ANY(:ids)"),
            {"later": NOT_YET_DUE, "ids": later},
        )
    return {outcome_key("PROCESSED", None, "NewTransactionGenerated"): 2 * orders,
            outcome_key("PROCESSED", None, "Phase2_Fulfilled"): 2 * orders}


def _batches(lines: list[NewStagingEntry]) -> Iterator[list[NewStagingEntry]]:
    for start in range(0, len(lines), INSERT_BATCH):
        yield lines[start : start + INSERT_BATCH]


def generate(db: Database, entries: int, seed: int = 7, merchants: int = 4, edge_cases: bool = False,
             books: Books | None = None) -> Workload:
    """Books (unless given) + lines in `db`: TRANSACTION lines due now, CONFIRMATION lines not yet due."""
    books = books or create_books(db, merchants)
    if edge_cases and not books.keyed:
        create_keyed_books(db, books)
    transactions, confirmations, workload = plan_lines(books, entries, seed, edge_cases)
    with db.begin() as conn:
        for batch in _batches(transactions):
            insert_staging_entries(conn, batch)
    with db.begin() as conn:
        later = []
        for batch in _batches(confirmations):
            later += [created.task_id for created in insert_staging_entries(conn, batch)]
        conn.execute(
            sa.text("UPDATE process_tracker SET run_after = CAST(:later AS timestamptz) WHERE task_id = ANY(:ids)"),
            {"later": NOT_YET_DUE, "ids": later},
        )
    return workload


RELEASE_SQL = (
    "UPDATE process_tracker SET run_after = now()"
    f" WHERE status IN ('PENDING', 'RETRY') AND run_after = '{NOT_YET_DUE}'::timestamptz"
)
DUE_SQL = (
    "SELECT count(*) FROM process_tracker"
    " WHERE status IN ('PENDING', 'RETRY') AND run_after <= now()"
)

# work still in flight elsewhere, or coming back soon (a retry, a confirmation waiting for its
# order); confirmations not yet released (run_after = infinity) do not count
IN_FLIGHT = (
    "SELECT count(*) FROM process_tracker WHERE status = 'PROCESSING'"
    " OR (status IN ('PENDING', 'RETRY') AND run_after < now() + interval '60 seconds')"
)


RELEASE_LOCK = "SELECT pg_advisory_xact_lock(422608528232)"  # "bench" in ASCII


def release_confirmations(conn: Any) -> int:
    """The settlement file arrives: its lines become due (psycopg autocommit or SQLAlchemy connection).

    Serialised by an advisory lock: when several DAG drivers finish phase one together, one
    releases and the others find nothing left (two concurrent 50,000-row UPDATEs deadlock).
    """
    if isinstance(conn, sa.Connection):
        conn.execute(sa.text(RELEASE_LOCK))
        return conn.execute(sa.text(RELEASE_SQL)).rowcount
    with conn.transaction():
        conn.execute(RELEASE_LOCK)
        return conn.execute(RELEASE_SQL).rowcount


def outcomes(db: Database) -> dict[str, Any]:
    """What the books look like after a drain: outcome counts, tracker statuses, invariants."""
    with db.begin() as conn:
        rows = conn.execute(sa.text(
            "SELECT status, metadata ->> 'error_type' AS error_type, metadata ->> 'match_type' AS match_type,"
            " count(*) AS n FROM staging_entries GROUP BY 1, 2, 3"
        )).all()
        tasks = conn.execute(sa.text("SELECT status, count(*) FROM process_tracker GROUP BY 1")).all()
        ledger_rows = conn.execute(sa.text(
            "SELECT (SELECT count(*) FROM transactions) AS transactions, (SELECT count(*) FROM entries) AS entries"
        )).one()
        totals = conn.execute(sa.text(
            "SELECT currency, sum(CASE WHEN entry_type = 'DEBIT' THEN amount ELSE -amount END) AS net"
            " FROM entries WHERE status <> 'ARCHIVED' GROUP BY currency"
        )).all()
        fee_balances = conn.execute(sa.text(
            "SELECT a.account_id, coalesce(sum(CASE e.entry_type WHEN 'CREDIT' THEN e.amount ELSE -e.amount END), 0)"
            " FROM accounts a LEFT JOIN entries e ON e.account_id = a.account_id AND e.status = 'POSTED'"
            " WHERE a.account_id IN (SELECT fee_account_id FROM recon_rules) GROUP BY 1 ORDER BY 1"
        )).all()
    counts: Counter[str] = Counter()
    for r in rows:
        counts[outcome_key(r.status, r.error_type, r.match_type)] += r.n
    invariants = ledger.check_invariants(db)
    return {
        "staging": dict(sorted(counts.items())),
        "tasks": {r[0]: r[1] for r in tasks},
        "transactions": ledger_rows.transactions,
        "entries": ledger_rows.entries,
        "invariants": vars(invariants),
        "books_balance": invariants.ok and all(r.net == 0 for r in totals),
        "fee_balances": {account: str(balance) for account, balance in fee_balances},
    }


def check(result: dict[str, Any], workload: Workload) -> list[str]:
    """Problems with a drained database (empty when every line ended as the workload says)."""
    problems = []
    if not result["books_balance"]:
        problems.append(f"books do not balance: {result['invariants']}")
    open_tasks = {s: n for s, n in result["tasks"].items() if s not in ("COMPLETED", "FAILED")}
    if open_tasks:
        problems.append(f"tasks not finished: {open_tasks}")
    pending = result["staging"].get("PENDING:-", 0)
    if pending:
        problems.append(f"{pending} staging entries still PENDING")
    if workload.expected is not None and result["staging"] != workload.expected:
        problems.append(f"outcomes {result['staging']} differ from the expected {workload.expected}")
    if workload.fees and _amounts(result["fee_balances"]) != _amounts(workload.fees):
        problems.append(f"fee accounts hold {result['fee_balances']}, the fees booked should be {workload.fees}")
    return problems


def _amounts(balances: dict[str, str]) -> dict[str, Decimal]:
    """Balances compared as numbers (the ledger keeps 4 decimals: 12.3400 is 12.34)."""
    return {account: Decimal(balance) for account, balance in balances.items()}
