"""PSP settlement reports (Adyen settlement details, Stripe itemized payouts) become staging entries
on the PSP clearing account, each in the processing mode that books it.

The parsers (``recon.ingest.adyen``, ``recon.ingest.stripe``) hand over checked ``SettlementLine``
values; ``SettlementReport`` checks every batch when the last line is read. Lines are written as
they are read, inside the file's one database transaction, so a report that does not add up (a
line's gross - fees != net, a batch whose lines do not sum to its payout) rolls the whole file
back: nothing is ingested.

Sides are the PSP statement's, as for bank statements: money arriving on the merchant's balance
at the PSP is a CREDIT on the clearing account, money leaving it a DEBIT. Per line kind:

    payment (Adyen Settled, Stripe charge)   CONFIRMATION, CREDIT at gross, order_id = the order:
                                             fulfils the order's expected leg through the rule whose
                                             account_two is the clearing account; its fees are booked
                                             in the same transaction (clearing -> the rule's fee account)
    refund, chargeback, chargeback reversal  SETTLEMENT, at gross, order_id = the original order: the
                                             order account (that rule's account_one) gives the money
                                             back or gets it again; fees as above
    fee, other                               SETTLEMENT: fee lines move their fee from clearing to the
                                             fee account; other lines (adjustments) likewise, at gross
    payout (Adyen MerchantPayout, the Stripe TRANSACTION, DEBIT at the amount paid, metadata
      payout; synthesised at Σ net when a   payout_reference: the rule whose account_one is the
      Stripe report lists its lines only)    clearing account books the EXPECTED leg on the bank,
                                             which the bank statement line then fulfils
    balance to / from another batch          SETTLEMENT: the "to" line moves the carried balance
                                             between the two batches' clearing legs; the "from" line
                                             is its other end and books nothing. A batch that carries
                                             its balance forward expects nothing on the bank.

Each entry's metadata names its batch (settlement_batch), kind, PSP type and references, gross,
fee_total, fees by component and net (decimal strings); the other cells of the report line stay
under report_fields. The duplicate key is the line's reference + PSP type + batch: a report
ingested again ingests nothing twice.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from typing import BinaryIO

from sqlalchemy.engine import Connection

from recon import accounts
from recon.errors import InvalidInputError
from recon.ingest.adyen import read_adyen_settlement
from recon.ingest.bank_statement import BATCH_ROWS, NaturalKeyBatch
from recon.ingest.report import IngestReport, Pacing, Progress
from recon.ingest.settlement import (
    FORMAT_ADYEN,
    FORMAT_STRIPE,
    Flow,
    LineKind,
    SettlementBatch,
    SettlementLine,
    SettlementReport,
)
from recon.ingest.stripe import read_stripe_payouts
from recon.model import EntryType, ProcessingMode
from recon.staging import NewStagingEntry

FORMATS = (FORMAT_ADYEN, FORMAT_STRIPE)
_READERS: dict[str, Callable[[BinaryIO, str], SettlementReport]] = {
    FORMAT_ADYEN: read_adyen_settlement,
    FORMAT_STRIPE: read_stripe_payouts,
}
_OTHER_BATCH = re.compile(r"\bbatch\s+(\S+)", re.IGNORECASE)


def ingest_settlement_report(stream: BinaryIO, account_id: str, conn: Connection, report: IngestReport, *,
                             progress: Callable[[Progress], None] | None = None,
                             progress_every: int = 50_000) -> None:
    """Read a settlement report of `report.file_format` into the clearing account `account_id`, on
    `conn` (the caller's transaction: an error leaves nothing written)."""
    clearing = accounts.get_account(account_id, conn)
    lines = _READERS[report.file_format](stream, clearing.currency)
    writer = NaturalKeyBatch(conn, report)
    pacing = Pacing(report, progress, progress_every, BATCH_ROWS, time.monotonic() - report.elapsed_seconds)
    payout_dates: dict[str, dt.datetime] = {}
    kinds: set[LineKind] = set()
    fees = False
    for line in lines:
        report.rows_read += 1
        kinds.add(line.kind)
        fees = fees or bool(line.fee_total)
        entry = settlement_entry(line, account_id, report.source_file, report.file_format)
        if entry is None:
            report.pending_skipped += 1  # no money moved (a zero line): nothing to book
        else:
            writer.add(report.rows_read, entry)
        payout_dates[line.batch_id] = _payout_date(line, payout_dates.get(line.batch_id))
        pacing.after_row(writer)
    for batch in lines.batches:  # read to the end: every batch checked
        if not batch.payout_stated and batch.payout:
            kinds.add(LineKind.PAYOUT)
            report.rows_read += 1  # the payout the report implies counts as a row of it
            writer.add(report.rows_read, _payout_of_listed_batch(batch, account_id, payout_dates[batch.batch_id],
                                                                 report.source_file, report.file_format))
    writer.flush()
    _require_rules(conn, account_id, kinds, fees)


def settlement_entry(line: SettlementLine, account_id: str, source_file: str | None,
                     file_format: str) -> NewStagingEntry | None:
    """The staging entry of one checked line (None when it moves no money)."""
    mode, amount = ProcessingMode.SETTLEMENT, line.gross
    extra: dict[str, str] = {}
    if line.kind is LineKind.PAYMENT and line.gross:  # (a payment of 0 that cost a fee books only its fee)
        mode = ProcessingMode.CONFIRMATION
    elif line.kind is LineKind.PAYOUT:
        mode, amount = ProcessingMode.TRANSACTION, abs(line.net)
        extra["payout_reference"] = line.line_reference if file_format == FORMAT_ADYEN else line.batch_id
    elif line.kind in (LineKind.BALANCE_TO_NEXT_BATCH, LineKind.BALANCE_FROM_PREVIOUS_BATCH):
        amount = abs(line.net)
        other = _OTHER_BATCH.search(line.line_reference)
        extra["other_batch"] = other.group(1) if other else "unknown"
    if not amount:
        amount = abs(line.fee_total)  # a fee line: its amount is the fee
    if not amount:
        return None
    # the side the line moves the clearing account: in is a CREDIT, out a DEBIT (statement sides);
    # a payment's or refund's gross gives it, a payout's, a transfer's or a fee's net
    by_gross = line.gross and mode is not ProcessingMode.TRANSACTION and "other_batch" not in extra
    money_in = line.flow is Flow.IN if by_gross else line.net > 0
    metadata = {
        **({"order_id": line.order_id} if line.order_id and line.kind is not LineKind.PAYOUT else {}),
        "settlement_batch": line.batch_id, "settlement_kind": line.kind.value, "psp_type": line.psp_type,
        "psp_format": file_format, "psp_line_reference": line.line_reference,
        **({"psp_reference": line.psp_reference} if line.psp_reference else {}),
        "gross": str(line.signed_gross), "fee_total": str(line.fee_total), "net": str(line.net),
        "fees": {name: str(value) for name, value in line.fees.items()},
        **extra,
        **({"report_fields": line.metadata} if line.metadata else {}),
        **({"source_file": source_file} if source_file else {}),
    }
    return NewStagingEntry(
        account_id=account_id, entry_type=(EntryType.CREDIT if money_in else EntryType.DEBIT).value, amount=amount,
        currency=line.currency, processing_mode=mode.value, effective_date=line.booked_at, metadata=metadata,
        natural_key=natural_key(line.line_reference, line.psp_type, line.batch_id),
    )


def natural_key(line_reference: str, psp_type: str, batch_id: str) -> str:
    """The report line's duplicate key per clearing account: its reference, PSP type and batch."""
    return f"{line_reference}|{psp_type}|{batch_id}"


def _payout_of_listed_batch(batch: SettlementBatch, account_id: str, paid_on: dt.datetime,
                            source_file: str | None, file_format: str) -> NewStagingEntry:
    """The payout of a batch the report lists by its lines only (a Stripe automatic payout): Σ net."""
    assert batch.payout is not None
    return NewStagingEntry(
        account_id=account_id, entry_type=(EntryType.DEBIT if batch.payout > 0 else EntryType.CREDIT).value,
        amount=abs(batch.payout), currency=batch.currency, processing_mode=ProcessingMode.TRANSACTION.value,
        effective_date=paid_on,
        metadata={"settlement_batch": batch.batch_id, "settlement_kind": LineKind.PAYOUT.value, "psp_type": "payout",
                  "psp_format": file_format, "psp_line_reference": batch.batch_id, "payout_reference": batch.batch_id,
                  "gross": str(-batch.payout), "fee_total": "0", "net": str(-batch.payout), "fees": {},
                  "payout_stated": False, **({"source_file": source_file} if source_file else {})},
        natural_key=natural_key(batch.batch_id, "payout", batch.batch_id),
    )


def _payout_date(line: SettlementLine, so_far: dt.datetime | None) -> dt.datetime:
    """When a batch's payout is due: Stripe's automatic_payout_effective_at, else its latest line."""
    stated = line.metadata.get("automatic_payout_effective_at")
    if stated:
        try:
            when = dt.datetime.fromisoformat(stated)
            return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
        except ValueError:
            pass
    return max(line.booked_at, so_far) if so_far else line.booked_at


def _require_rules(conn: Connection, account_id: str, kinds: set[LineKind], fees: bool) -> None:
    """Refuse (before commit) a report whose lines no rule could book: payments and refunds need a
    rule with the clearing account as account_two (and its fee account when the report has fees),
    payouts a rule with it as account_one (to the bank)."""
    rules = accounts.load_rules(conn, [account_id])
    to_clearing = next((r for r in rules if r.account_two_id == account_id), None)
    hint = "; nothing was ingested"
    if kinds - {LineKind.PAYOUT, LineKind.BALANCE_FROM_PREVIOUS_BATCH, LineKind.BALANCE_TO_NEXT_BATCH}:
        if to_clearing is None:
            raise InvalidInputError(
                f"no recon rule has the clearing account {account_id} as account_two: create one from the orders"
                f" account, e.g. `recon rule create --account-one ORDERS --account-two {account_id}"
                f" --fee-account FEES`{hint}", field="account")
        if fees and to_clearing.fee_account_id is None:
            raise InvalidInputError(
                f"the report charges fees but rule {to_clearing.id} ({to_clearing.account_one_id} ->"
                f" {account_id}) has no fee account: `recon rule update {to_clearing.id} --fee-account FEES`{hint}",
                field="account")
    if LineKind.PAYOUT in kinds and not any(r.account_one_id == account_id for r in rules):
        raise InvalidInputError(
            f"the report pays out to the bank but no recon rule has the clearing account {account_id} as"
            f" account_one: `recon rule create --account-one {account_id} --account-two BANK ...`{hint}",
            field="account")
