"""Statement files written from figures, for property and size tests: camt.053 and MT940 text.

A GeneratedStatement is what a bank would report; the writers render it the way a bank's file
would, so the parsers are tested on text they never saw, with the expected figures known.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO

CAMT053_NAMESPACE = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.{version:02d}"


@dataclass(frozen=True)
class GeneratedLine:
    side: str  # "CREDIT" or "DEBIT"
    amount: Decimal  # positive
    reversal: bool = False
    pending: bool = False

    @property
    def signed(self) -> Decimal:
        return self.amount if self.side == "CREDIT" else -self.amount


@dataclass(frozen=True)
class GeneratedStatement:
    opening: Decimal
    lines: list[GeneratedLine] = field(default_factory=list)
    currency: str = "EUR"
    account: str = "DE89370400440532013000"
    statement_id: str = "GEN-1"
    day: dt.date = dt.date(2026, 1, 15)

    @property
    def closing(self) -> Decimal:
        return self.opening + sum((line.signed for line in self.lines if not line.pending), Decimal(0))


# --- camt.053 --------------------------------------------------------------------------------


def camt053_text(statement: GeneratedStatement, version: int = 2, batch_size: int = 1) -> bytes:
    """A camt.053 document; `batch_size` > 1 puts consecutive booked lines of one side into batched entries."""
    parts: list[str] = []
    _write_camt053(parts.append, statement, version, batch_size)
    return "".join(parts).encode()


def write_camt053(out: IO[str], statement: GeneratedStatement, version: int = 2) -> None:
    """The same document written piece by piece (for files too large to build in memory)."""
    _write_camt053(out.write, statement, version, 1)


def _write_camt053(write, statement: GeneratedStatement, version: int, batch_size: int) -> None:
    ccy = statement.currency
    write('<?xml version="1.0" encoding="UTF-8"?>\n')
    write(f'<Document xmlns="{CAMT053_NAMESPACE.format(version=version)}"><BkToCstmrStmt>')
    write("<GrpHdr><MsgId>GEN-MSG</MsgId><CreDtTm>2026-01-16T06:00:00</CreDtTm></GrpHdr>")
    write(f"<Stmt><Id>{statement.statement_id}</Id>")
    write(f"<Acct><Id><IBAN>{statement.account}</IBAN></Id><Ccy>{ccy}</Ccy></Acct>")
    write(_camt_balance("OPBD", statement.opening, ccy, statement.day))
    write(_camt_balance("CLBD", statement.closing, ccy, statement.day))
    for number, group in enumerate(_entries(statement.lines, batch_size), 1):
        write(_camt_entry(number, group, ccy, statement.day, version))
    write("</Stmt></BkToCstmrStmt></Document>\n")


def _entries(lines: list[GeneratedLine], batch_size: int) -> list[list[GeneratedLine]]:
    """Lines grouped into entries: consecutive booked, non-reversed lines of one side batch together."""
    entries: list[list[GeneratedLine]] = []
    for line in lines:
        last = entries[-1] if entries else None
        batchable = not line.pending and not line.reversal
        if (
            last is not None and batchable and len(last) < batch_size
            and not last[0].pending and not last[0].reversal and last[0].side == line.side
        ):
            last.append(line)
        else:
            entries.append([line])
    return entries


def _camt_balance(code: str, amount: Decimal, ccy: str, day: dt.date) -> str:
    side = "CRDT" if amount >= 0 else "DBIT"
    return (
        f"<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp><Amt Ccy=\"{ccy}\">{abs(amount):.2f}</Amt>"
        f"<CdtDbtInd>{side}</CdtDbtInd><Dt><Dt>{day.isoformat()}</Dt></Dt></Bal>"
    )


def _camt_entry(number: int, group: list[GeneratedLine], ccy: str, day: dt.date, version: int) -> str:
    first = group[0]
    total = sum((line.amount for line in group), Decimal(0))
    indicator = "CRDT" if first.side == "CREDIT" else "DBIT"
    code = "PDNG" if first.pending else "BOOK"
    status = f"<Sts><Cd>{code}</Cd></Sts>" if version >= 8 else f"<Sts>{code}</Sts>"
    reversal = "<RvslInd>true</RvslInd>" if first.reversal else ""
    booking = "" if first.pending else f"<BookgDt><Dt>{day.isoformat()}</Dt></BookgDt>"
    reference = "" if first.pending else f"<AcctSvcrRef>REF-{number:07d}</AcctSvcrRef>"
    details = []
    for k, line in enumerate(group, 1):
        own_amount = ""
        if len(group) > 1:
            own_amount = (
                f"<Amt Ccy=\"{ccy}\">{line.amount:.2f}</Amt><CdtDbtInd>{indicator}</CdtDbtInd>"
                if version >= 4
                else f"<AmtDtls><TxAmt><Amt Ccy=\"{ccy}\">{line.amount:.2f}</Amt></TxAmt></AmtDtls>"
            )
        party = "Dbtr" if line.side == "CREDIT" else "Cdtr"
        name = f"<Pty><Nm>Party {number}-{k}</Nm></Pty>" if version >= 8 else f"<Nm>Party {number}-{k}</Nm>"
        details.append(
            f"<TxDtls><Refs><EndToEndId>E2E-{number}-{k}</EndToEndId></Refs>{own_amount}"
            f"<RltdPties><{party}>{name}</{party}></RltdPties>"
            f"<RmtInf><Ustrd>Order ORD-{number}-{k}</Ustrd></RmtInf></TxDtls>"
        )
    return (
        f"<Ntry><NtryRef>{number}</NtryRef><Amt Ccy=\"{ccy}\">{total:.2f}</Amt><CdtDbtInd>{indicator}</CdtDbtInd>"
        f"{reversal}{status}{booking}<ValDt><Dt>{day.isoformat()}</Dt></ValDt>{reference}"
        f"<BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>RCDT</Cd><SubFmlyCd>ESCT</SubFmlyCd></Fmly></Domn></BkTxCd>"
        f"<NtryDtls>{''.join(details)}</NtryDtls></Ntry>"
    )


# --- MT940 -----------------------------------------------------------------------------------


def mt940_text(statement: GeneratedStatement, line_end: str = "\r\n") -> bytes:
    """An MT940 statement (pending lines are left out: MT940 lists booked lines only)."""
    day = statement.day.strftime("%y%m%d")
    rows = [
        f":20:{statement.statement_id}",
        f":25:{statement.account}",
        ":28C:1/1",
        f":60F:{_mt_balance(statement.opening, statement.currency, day)}",
    ]
    for number, line in enumerate((line for line in statement.lines if not line.pending), 1):
        if line.reversal:
            mark = "RC" if line.side == "DEBIT" else "RD"
        else:
            mark = "C" if line.side == "CREDIT" else "D"
        rows.append(f":61:{day}{day[2:]}{mark}{_mt_amount(line.amount)}NTRFREF{number}//B{number:06d}")
        rows.append(f":86:Order ORD-{number}")
    rows.append(f":62F:{_mt_balance(statement.closing, statement.currency, day)}")
    return (line_end.join(rows) + line_end).encode()


def _mt_balance(amount: Decimal, currency: str, day: str) -> str:
    return f"{'C' if amount >= 0 else 'D'}{day}{currency}{_mt_amount(abs(amount))}"


def _mt_amount(amount: Decimal) -> str:
    return f"{amount:.2f}".replace(".", ",")
