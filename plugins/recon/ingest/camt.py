"""camt.053 statements and camt.054 notifications (ISO 20022 XML) as checked statement lines.

Versions ``.001.02`` to ``.001.13`` of both, chosen by the document's namespace. What differs
between them is read either way: an entry's status is text (``<Sts>BOOK</Sts>``, up to v7)
or a code (``<Sts><Cd>BOOK</Cd></Sts>``, v8 on); a party's name is ``Dbtr/Nm`` or, from v8,
``Dbtr/Pty/Nm``; a transaction's own amount is ``TxDtls/Amt`` or, in v2,
``TxDtls/AmtDtls/TxAmt/Amt``.

Why it is built this way:

- Hostile XML is refused, never expanded or fetched: defusedxml's parser with DTDs, entity
  declarations and external references forbidden (billion laughs, XXE). ISO 20022 messages
  are UTF-8 and have no DTD, so a real statement never hits these refusals.
- Bounded memory: ``iterparse`` events; each entry is read when its element ends and then
  cleared, so a 100,000-entry statement needs the memory of one entry, not of the file.
- One line per money movement: an entry that batches several transactions
  (``NtryDtls/TxDtls`` with their own amounts) gives one line per transaction, keeping the
  entry's ``AcctSvcrRef`` as ``bank_reference``; their amounts must add up to the entry's.
- Pending entries (``PDNG``, and ``FUTR``/``INFO``, which are not booked either) are lines with
  status pending: never in a balance, never booked as final by a caller.
- Reversals (``RvslInd`` true) keep the side ``CdtDbtInd`` gives (ISO 20022's usage rule: that
  already is the reversal's own direction) and carry ``reversal: true``.
- camt.053: per statement, opening booked balance (OPBD, or PRCD, or the first ITBD of a
  paginated statement) + booked lines = closing booked balance (CLBD, or the last ITBD).
- Natural key: the entry's ``AcctSvcrRef`` (with the transaction's own reference or number
  for a batch); without one, account + booking date + side + amount + end-to-end id, with
  '#n' for identical lines of one statement.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import iterparse

from recon.errors import InvalidInputError
from recon.ingest.statement import (
    BOOKED,
    CREDIT,
    DEBIT,
    DETECT_BYTES,
    PENDING,
    CompositeKeys,
    Statement,
    StatementIntegrityError,
    StatementLine,
    StatementSource,
    amount_key,
    build_line,
    checked_lines,
    collect_statements,
    compile_order_id_pattern,
    open_utf8_stream,
)

# --- Limits (each one is named in the error it causes) ------------------------------------
MAX_TEXT_CHARS = 1_000  # per element read (ISO 20022 texts are at most 500 characters)
MAX_ENTRY_ELEMENTS = 250_000  # XML elements in one <Ntry>: the memory one entry may take

SUPPORTED_VERSIONS = range(2, 14)  # camt.05x.001.02 ... .001.13
_NAMESPACE = re.compile(r"^\{urn:iso:std:iso:20022:tech:xsd:camt\.(\d{3})\.001\.(\d{2})\}(\w+)$")
# message element -> (format, the element of one statement or notification)
_MESSAGES = {"BkToCstmrStmt": ("camt053", "Stmt"), "BkToCstmrDbtCdtNtfctn": ("camt054", "Ntfctn")}
_FORMAT_NAMES = {"camt053": "camt.053 statement", "camt054": "camt.054 notification"}
_STATUSES = {"BOOK": BOOKED, "PDNG": PENDING, "FUTR": PENDING, "INFO": PENDING}
_SIDES = {"CRDT": CREDIT, "DBIT": DEBIT}
_OPENING_CODES = ("OPBD", "PRCD")
_INTERIM_CODE = "ITBD"
_CLOSING_CODE = "CLBD"
_AMOUNT = re.compile(r"^[0-9]{1,18}(\.[0-9]{1,5})?$")
_NOT_PROVIDED = "NOTPROVIDED"
_XML_DECLARED_ENCODING = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")


class UnsafeXmlError(InvalidInputError):
    """XML that could expand without bound or read files and URLs: refused before any of it is used."""

    error_type = "UnsafeXmlError"


# --- Entry points ----------------------------------------------------------------------------


def parse_camt053(
    source: StatementSource,
    *,
    expected_currency: str | None = None,
    order_id_pattern: str | re.Pattern[str] | None = None,
) -> list[Statement]:
    """Every statement of a camt.053 file, each checked (balances, currency), or InvalidInputError."""
    return collect_statements(_read(source, "camt053", order_id_pattern), expected_currency)


def parse_camt054(
    source: StatementSource,
    *,
    expected_currency: str | None = None,
    order_id_pattern: str | re.Pattern[str] | None = None,
) -> list[Statement]:
    """Every notification of a camt.054 file (no balances: currency and batch sums are checked)."""
    return collect_statements(_read(source, "camt054", order_id_pattern), expected_currency)


def iter_camt053_lines(
    source: StatementSource,
    *,
    expected_currency: str | None = None,
    order_id_pattern: str | re.Pattern[str] | None = None,
) -> Iterator[StatementLine]:
    """The lines of a camt.053 file as a stream (bounded memory); each statement is checked when
    it ends, so a caller must write the lines in one transaction and roll back on an error."""
    return checked_lines(_read(source, "camt053", order_id_pattern), expected_currency)


def iter_camt054_lines(
    source: StatementSource,
    *,
    expected_currency: str | None = None,
    order_id_pattern: str | re.Pattern[str] | None = None,
) -> Iterator[StatementLine]:
    """The lines of a camt.054 file as a stream (see iter_camt053_lines)."""
    return checked_lines(_read(source, "camt054", order_id_pattern), expected_currency)


def _read(
    source: StatementSource, expected_format: str, order_id_pattern: str | re.Pattern[str] | None
) -> Iterator[StatementLine | Statement]:
    """Each statement's lines, then the statement (lines empty): the stream statement.py checks."""
    pattern = compile_order_id_pattern(order_id_pattern)
    what = _FORMAT_NAMES[expected_format]
    with open_utf8_stream(source, what) as stream:
        _refuse_declared_encoding(stream.peek(DETECT_BYTES)[:DETECT_BYTES])
        reader = _DocumentReader(expected_format, pattern)
        try:
            yield from reader.items(stream)
        except DTDForbidden as exc:
            declaration = f"<!DOCTYPE {exc.name}" + (f' SYSTEM "{exc.sysid}"' if exc.sysid else "") + ">"
            raise UnsafeXmlError(
                f"the {what} file has a document type declaration ({declaration[:120]}): refused unread, as DTD"
                " entities can expand without bound (billion laughs) or read files and URLs (external"
                " entities); ISO 20022 messages never have one"
            ) from None
        except (EntitiesForbidden, ExternalReferenceForbidden) as exc:  # only reachable with a DTD
            raise UnsafeXmlError(f"the {what} file declares XML entities ({type(exc).__name__}): refused unread") from None
        except ParseError as exc:
            line, column = exc.position
            raise InvalidInputError(
                f"the {what} file is not well-formed XML at line {line}, column {column}"
                f" ({_expat_reason(exc)}); is it truncated?"
            ) from None


def _refuse_declared_encoding(head: bytes) -> None:
    match = _XML_DECLARED_ENCODING.match(head.removeprefix(b"\xef\xbb\xbf"))
    if match and match.group(1).decode().lower() not in ("utf-8", "utf8"):
        raise InvalidInputError(
            f"the XML declares encoding {match.group(1).decode()!r}: ISO 20022 messages are UTF-8;"
            " ask the bank for UTF-8 or convert the file"
        )


def _expat_reason(exc: ParseError) -> str:
    return str(exc).split(":", 1)[0]


# --- The document --------------------------------------------------------------------------


class _DocumentReader:
    """Walks the iterparse events: Document / message / Stmt|Ntfctn / their children.

    Depths: 1 Document, 2 BkToCstmrStmt, 3 GrpHdr or Stmt, 4 a statement's Id, Acct, Bal,
    Ntry, ...; each depth-4 element is handled when it ends and then dropped.
    """

    def __init__(self, expected_format: str, order_id_pattern: re.Pattern[str] | None):
        self._expected_format = expected_format
        self._order_id_pattern = order_id_pattern
        self._namespace = ""
        self._statement_tag = ""
        self._statement_count = 0

    def items(self, stream) -> Iterator[StatementLine | Statement]:
        events = iterparse(
            stream, events=("start", "end"), forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
        depth = 0
        message: Element | None = None
        statement: _StatementReader | None = None
        statement_element: Element | None = None
        child_elements = 0  # inside the statement's current child (an entry, mostly)
        child_name = ""
        for event, element in events:
            if event == "start":
                depth += 1
                if depth == 1:
                    self._document(element)
                elif depth == 2:
                    self._message(element)
                    message = element
                elif depth == 3 and element.tag == self._statement_tag:
                    self._statement_count += 1
                    statement = _StatementReader(self, self._statement_count)
                    statement_element = element
                elif depth == 4:
                    child_elements = 0
                    child_name = element.tag.removeprefix(self._namespace)
                elif depth > 4 and statement is not None:
                    child_elements += 1
                    if child_elements > MAX_ENTRY_ELEMENTS:
                        raise InvalidInputError(
                            f"{statement.where()}: a {child_name} element holds more than {MAX_ENTRY_ELEMENTS:,}"
                            " XML elements (MAX_ENTRY_ELEMENTS); ask the bank to split the batch"
                        )
                continue
            if depth == 4 and statement is not None and statement_element is not None:
                yield from statement.child(element)
                statement_element.clear()  # the child is read: drop it
            elif depth == 3 and message is not None:
                if statement is not None:
                    yield statement.finish()
                    statement, statement_element = None, None
                message.clear()  # GrpHdr or the finished statement
            depth -= 1
        if self._statement_count == 0:
            name = self._statement_tag.removeprefix(self._namespace) or "statement"
            raise InvalidInputError(f"the {_FORMAT_NAMES[self._expected_format]} file has no {name}")

    def _document(self, element: Element) -> None:
        match = _NAMESPACE.match(element.tag)
        if match is None or match.group(3) != "Document":
            raise InvalidInputError(
                f"the XML's root element is {element.tag!r}, not an ISO 20022 camt Document"
                " (namespace urn:iso:std:iso:20022:tech:xsd:camt.053.001.NN or camt.054.001.NN)"
            )
        message, version = match.group(1), int(match.group(2))
        found = f"camt{message}"
        if found != self._expected_format:
            raise InvalidInputError(
                f"the file is a camt.{message} document, not a {_FORMAT_NAMES[self._expected_format]}"
                + (f"; read it as {found}" if found in _FORMAT_NAMES else "")
            )
        if version not in SUPPORTED_VERSIONS:
            raise InvalidInputError(
                f"camt.{message}.001.{version:02d} is not supported (versions .001.{SUPPORTED_VERSIONS[0]:02d}"
                f" to .001.{SUPPORTED_VERSIONS[-1]:02d})"
            )
        self._namespace = element.tag[: element.tag.index("}") + 1]

    def _message(self, element: Element) -> None:
        name = element.tag.removeprefix(self._namespace)
        known = _MESSAGES.get(name)
        if known is None or known[0] != self._expected_format:
            raise InvalidInputError(
                f"the Document holds a {name!r} message, not the"
                f" {_FORMAT_NAMES[self._expected_format]}'s {_expected_message(self._expected_format)}"
            )
        self._statement_tag = self._namespace + known[1]

    # --- element helpers shared by statements and entries ---

    @property
    def order_id_pattern(self) -> re.Pattern[str] | None:
        return self._order_id_pattern

    @property
    def is_statement(self) -> bool:
        return self._expected_format == "camt053"

    def path(self, path: str) -> str:
        return _namespaced(self._namespace, path)

    def text(self, element: Element | None, path: str, where: str) -> str | None:
        """The stripped text at `path` under `element`, None when absent or empty."""
        if element is None:
            return None
        found = element.find(self.path(path))
        if found is None or found.text is None:
            return None
        text = found.text.strip()
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidInputError(
                f"{where}: {path} is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,} (MAX_TEXT_CHARS)"
            )
        return text or None

    def texts(self, element: Element | None, path: str, where: str) -> list[str]:
        if element is None:
            return []
        values = []
        for found in element.iterfind(self.path(path)):
            text = (found.text or "").strip()
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidInputError(
                    f"{where}: {path} is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,} (MAX_TEXT_CHARS)"
                )
            if text:
                values.append(text)
        return values

    def amount(self, element: Element, path: str, where: str) -> tuple[Decimal, str] | None:
        """(amount, currency) at `path`; None when absent."""
        found = element.find(self.path(path))
        if found is None:
            return None
        text = (found.text or "").strip()
        currency = found.get("Ccy", "")
        if not _AMOUNT.match(text):
            raise InvalidInputError(f"{where}: {path} {text[:40]!r} is not an ISO 20022 amount (e.g. 1234.56)")
        if not re.fullmatch(r"[A-Z]{3}", currency):
            raise InvalidInputError(f"{where}: {path} has currency (Ccy) {currency[:40]!r}, not an ISO 4217 code")
        try:
            return Decimal(text), currency
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
            raise InvalidInputError(f"{where}: {path} {text!r} is not a decimal number") from None

    def side(self, element: Element, path: str, where: str, default: str | None = None) -> str:
        code = self.text(element, path, where)
        if code is None and default is not None:
            return default
        if code not in _SIDES:
            raise InvalidInputError(f"{where}: {path} {code!r} must be CRDT or DBIT")
        return _SIDES[code]

    def date(self, element: Element, path: str, where: str) -> dt.date | dt.datetime | None:
        """A date choice (``Dt`` or ``DtTm``) at `path`; None when absent."""
        day = self.text(element, f"{path}/Dt", where)
        if day is not None:
            try:
                return dt.date.fromisoformat(day[:10])
            except ValueError:
                raise InvalidInputError(f"{where}: {path}/Dt {day[:40]!r} is not a date (YYYY-MM-DD)") from None
        moment = self.text(element, f"{path}/DtTm", where)
        if moment is not None:
            try:
                return dt.datetime.fromisoformat(moment)
            except ValueError:
                raise InvalidInputError(
                    f"{where}: {path}/DtTm {moment[:40]!r} is not an ISO 8601 date and time"
                ) from None
        return None

    def bank_transaction_code(self, element: Element | None, where: str) -> str | None:
        """Domain-family-subfamily (e.g. PMNT-RCDT-ESCT), else the proprietary code."""
        if element is None:
            return None
        domain = self.text(element, "Domn/Cd", where)
        family = self.text(element, "Domn/Fmly/Cd", where)
        sub_family = self.text(element, "Domn/Fmly/SubFmlyCd", where)
        if domain:
            return "-".join(code for code in (domain, family, sub_family) if code)
        return self.text(element, "Prtry/Cd", where)


@lru_cache(maxsize=512)
def _namespaced(namespace: str, path: str) -> str:
    return "/".join(step if step == "." else namespace + step for step in path.split("/"))


def _expected_message(expected_format: str) -> str:
    return next(name for name, (fmt, _) in _MESSAGES.items() if fmt == expected_format)


# --- One statement --------------------------------------------------------------------------


class _StatementReader:
    """One Stmt (or Ntfctn): its header children, then its entries, read as they end."""

    def __init__(self, document: _DocumentReader, number: int):
        self._doc = document
        self._number = number
        self.statement_id = ""
        self.account = ""
        self.currency: str | None = None
        self._balances: list[tuple[str, Decimal]] = []  # (type code, signed amount), in file order
        self._entry_count = 0
        self._keys = CompositeKeys()

    def where(self) -> str:
        return f"statement {self.statement_id or f'number {self._number}'}"

    def child(self, element: Element) -> Iterator[StatementLine]:
        name = element.tag.removeprefix(self._doc.path(""))
        if name == "Id":
            self.statement_id = self._doc.text(element, ".", self.where()) or ""
        elif name == "Acct":
            self._account(element)
        elif name == "Bal":
            self._balance(element)
        elif name == "Ntry":
            self._entry_count += 1
            yield from self._entry_lines(element, self._entry_count)

    def finish(self) -> Statement:
        """The Statement, its balances chosen and checked for presence and currency."""
        if not self.statement_id:
            raise InvalidInputError(f"{self.where()} has no Id")
        if not self.account:
            raise InvalidInputError(f"{self.where()} has no account (Acct/Id/IBAN or Acct/Id/Othr/Id)")
        if self.currency is None:
            raise InvalidInputError(f"{self.where()} has no currency (Acct/Ccy, a balance or an entry)")
        opening = closing = None
        if self._doc.is_statement:
            opening, closing = self._opening_and_closing()
        return Statement(self.statement_id, self.account, self.currency, opening, closing)

    # --- header ---

    def _account(self, element: Element) -> None:
        where = self.where()
        self.account = (
            self._doc.text(element, "Id/IBAN", where) or self._doc.text(element, "Id/Othr/Id", where) or ""
        )
        currency = self._doc.text(element, "Ccy", where)
        if currency is not None:
            self._set_currency(currency, "Acct/Ccy")

    def _balance(self, element: Element) -> None:
        where = f"{self.where()} balance {len(self._balances) + 1}"
        code = self._doc.text(element, "Tp/CdOrPrtry/Cd", where) or self._doc.text(element, "Tp/CdOrPrtry/Prtry", where)
        found = self._doc.amount(element, "Amt", where)
        if code is None or found is None:
            raise InvalidInputError(f"{where}: a balance needs Tp/CdOrPrtry/Cd and Amt")
        amount, currency = found
        side = self._doc.side(element, "CdtDbtInd", where)
        self._set_currency(currency, f"balance {code}")
        self._balances.append((code, amount if side == CREDIT else -amount))

    def _set_currency(self, currency: str, source: str) -> None:
        if self.currency is None:
            self.currency = currency
        elif currency != self.currency:
            raise StatementIntegrityError(
                f"{self.where()}: {source} is in {currency}, but the statement is in {self.currency}",
                statement_id=self.statement_id, field="currency", expected=self.currency, found=currency,
            )

    def _opening_and_closing(self) -> tuple[Decimal, Decimal]:
        codes = [code for code, _ in self._balances]
        opening_at = next((i for i, code in enumerate(codes) if code in _OPENING_CODES), None)
        if opening_at is None:
            opening_at = next((i for i, code in enumerate(codes) if code == _INTERIM_CODE), None)
        closing_at = next((i for i, code in enumerate(codes) if code == _CLOSING_CODE), None)
        if closing_at is None:
            interim = [i for i, code in enumerate(codes) if code == _INTERIM_CODE and i != opening_at]
            closing_at = interim[-1] if interim else None
        if opening_at is None:
            raise InvalidInputError(
                f"{self.where()} has no opening booked balance (Bal of type OPBD, PRCD or ITBD; found"
                f" {', '.join(codes) or 'none'}): its entries cannot be checked"
            )
        if closing_at is None:
            raise InvalidInputError(
                f"{self.where()} has no closing booked balance (Bal of type CLBD or a second ITBD; found"
                f" {', '.join(codes) or 'none'}): its entries cannot be checked"
            )
        return self._balances[opening_at][1], self._balances[closing_at][1]

    # --- entries ---

    def _entry_lines(self, entry: Element, number: int) -> Iterator[StatementLine]:
        doc = self._doc
        where = f"{self.where()} entry {number}"
        found = doc.amount(entry, "Amt", where)
        if found is None:
            raise InvalidInputError(f"{where} has no Amt")
        amount, currency = found
        self._set_currency(currency, f"entry {number}'s Amt")
        side = doc.side(entry, "CdtDbtInd", where)
        value_date = doc.date(entry, "ValDt", where) or doc.date(entry, "BookgDt", where)
        if value_date is None:
            raise InvalidInputError(f"{where} has neither a value date (ValDt) nor a booking date (BookgDt)")
        head = _EntryHead(
            where=where,
            amount=amount,
            currency=currency,
            side=side,
            reversal=(doc.text(entry, "RvslInd", where) or "").lower() in ("true", "1"),
            status=self._status(entry, where),
            booking_date=_day(doc.date(entry, "BookgDt", where)),
            value_date=value_date,
            bank_reference=doc.text(entry, "AcctSvcrRef", where),
            bank_transaction_code=doc.bank_transaction_code(entry.find(doc.path("BkTxCd")), where),
            additional_info=doc.text(entry, "AddtlNtryInf", where),
        )
        transactions = entry.findall(doc.path("NtryDtls/TxDtls"))
        if len(transactions) > 1:
            amounts = [self._transaction_amount(tx, f"{where} transaction {k}", side) for k, tx in enumerate(transactions, 1)]
            if all(tx_amount is not None for tx_amount in amounts):
                self._check_batch(head, amounts)  # type: ignore[arg-type]
                for k, (tx, amount_and_side) in enumerate(zip(transactions, amounts), 1):
                    line = self._line(head, tx, amount_and_side, f"{where} transaction {k}", batch_number=k)  # type: ignore[arg-type]
                    if line is not None:
                        yield line
                return
            if any(tx_amount is not None for tx_amount in amounts):
                raise InvalidInputError(
                    f"{where} batches {len(transactions)} transactions but only some have their own amount"
                )
        # One transaction, or a batch without amounts of its own: one line for the entry's amount.
        only = transactions[0] if len(transactions) == 1 else None
        line = self._line(head, only, (amount, side), where, batch_number=None)
        if line is not None:
            yield line

    def _status(self, entry: Element, where: str) -> str:
        code = (
            self._doc.text(entry, "Sts/Cd", where)
            or self._doc.text(entry, "Sts/Prtry", where)
            or self._doc.text(entry, "Sts", where)
        )
        if code not in _STATUSES:
            raise InvalidInputError(f"{where}: status (Sts) {code!r} must be BOOK, PDNG, FUTR or INFO")
        return _STATUSES[code]

    def _transaction_amount(self, tx: Element, where: str, entry_side: str) -> tuple[Decimal, str] | None:
        """(amount, side) of a batched transaction, None when it has no amount of its own."""
        found = self._doc.amount(tx, "Amt", where) or self._doc.amount(tx, "AmtDtls/TxAmt/Amt", where)
        if found is None:
            return None
        amount, currency = found
        if currency != self.currency:
            raise StatementIntegrityError(
                f"{where}: its amount is in {currency}, but the statement is in {self.currency}",
                statement_id=self.statement_id, field="currency", expected=self.currency, found=currency,
            )
        return amount, self._doc.side(tx, "CdtDbtInd", where, default=entry_side)

    def _check_batch(self, head: "_EntryHead", amounts: list[tuple[Decimal, str]]) -> None:
        total = sum((a if side == CREDIT else -a for a, side in amounts), Decimal(0))
        entry_amount = head.amount if head.side == CREDIT else -head.amount
        if total != entry_amount:
            raise StatementIntegrityError(
                f"{head.where}: its {len(amounts)} transactions add up to {total:+} {head.currency},"
                f" but the entry's amount is {entry_amount:+} {head.currency}",
                statement_id=self.statement_id, field="entry_amount", expected=entry_amount, found=total,
            )

    def _line(
        self,
        head: "_EntryHead",
        tx: Element | None,
        amount_and_side: tuple[Decimal, str],
        where: str,
        batch_number: int | None,
    ) -> StatementLine | None:
        """The line of one transaction (or of the whole entry); None for a zero amount, which moves nothing."""
        doc = self._doc
        amount, side = amount_and_side
        if amount == 0:
            return None
        end_to_end_id = doc.text(tx, "Refs/EndToEndId", where)
        if end_to_end_id == _NOT_PROVIDED:
            end_to_end_id = None
        tx_reference = doc.text(tx, "Refs/AcctSvcrRef", where)
        # The counterparty pays us on a credit and is paid on a debit; a reversal lists the
        # original transaction's parties, so its counterparty is on the other side.
        original_side = side if not head.reversal else (DEBIT if side == CREDIT else CREDIT)
        counterparty = "Dbtr" if original_side == CREDIT else "Cdtr"
        tx_code = tx.find(doc.path("BkTxCd")) if tx is not None else None
        remittance = (
            " ".join(doc.texts(tx, "RmtInf/Ustrd", where))
            or " ".join(doc.texts(tx, "RmtInf/Strd/CdtrRefInf/Ref", where) + doc.texts(tx, "RmtInf/Strd/AddtlRmtInf", where))
            or doc.text(tx, "AddtlTxInf", where)
            or (head.additional_info if batch_number is None else None)
        )
        return build_line(
            amount=amount,
            entry_type=side,
            currency=head.currency,
            value_date=head.value_date,
            booking_date=head.booking_date,
            status=head.status,
            reversal=head.reversal,
            natural_key=self._natural_key(head, side, amount, end_to_end_id, tx_reference, batch_number),
            position=where,
            statement_id=self.statement_id,
            order_id_pattern=doc.order_id_pattern,
            end_to_end_id=end_to_end_id,
            bank_reference=head.bank_reference or tx_reference,
            remittance=remittance or None,
            bank_transaction_code=doc.bank_transaction_code(tx_code, where) or head.bank_transaction_code,
            counterparty_name=doc.text(tx, f"RltdPties/{counterparty}/Nm", where)
            or doc.text(tx, f"RltdPties/{counterparty}/Pty/Nm", where),
            counterparty_account=doc.text(tx, f"RltdPties/{counterparty}Acct/Id/IBAN", where)
            or doc.text(tx, f"RltdPties/{counterparty}Acct/Id/Othr/Id", where),
        )

    def _natural_key(
        self,
        head: "_EntryHead",
        side: str,
        amount: Decimal,
        end_to_end_id: str | None,
        tx_reference: str | None,
        batch_number: int | None,
    ) -> str:
        """AcctSvcrRef (+ the transaction's own reference or number in a batch); else the line's figures."""
        if head.bank_reference:
            if batch_number is None:
                return head.bank_reference
            return f"{head.bank_reference}/{tx_reference or batch_number}"
        day = head.booking_date or _day(head.value_date)
        # NtryRef is left out: it numbers entries within one statement, not across statements.
        return self._keys.key(self.account, day, side, amount_key(amount), end_to_end_id or tx_reference)


@dataclass(frozen=True)
class _EntryHead:
    """What an entry says for all of its transactions."""

    where: str
    amount: Decimal
    currency: str
    side: str
    reversal: bool
    status: str
    booking_date: dt.date | None
    value_date: dt.date | dt.datetime
    bank_reference: str | None
    bank_transaction_code: str | None
    additional_info: str | None


def _day(value: dt.date | dt.datetime | None) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    return value
