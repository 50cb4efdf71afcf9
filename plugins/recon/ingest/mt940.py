"""SWIFT MT940 statements and MT942 interim reports as checked statement lines, read with ``mt-940``.

The ``mt-940`` package splits the tags and reads amounts as Decimal; this module decides what
they mean. Dialects banks send and what is done with them:

- With or without the SWIFT envelope (``{1:...}{2:O940...}{4:`` ... ``-}``), with a bank's
  header lines before the first ``:20:``, CRLF or LF, with or without a final line break;
  comma (standard) or point decimals.
- ``:86:`` structured with ``?NN`` sub-fields (German banks: ``?20``-``?29`` purpose with
  ``EREF+``/``SVWZ+``, ``?31`` IBAN, ``?32``/``?33`` name), structured with ``/CODE/``
  fields (Dutch banks: ``/EREF/``, ``/REMI/``, ``/NAME/``, ``/IBAN/``, ``/CNTP/``), or free text.

Why it is built this way:

- Sides: ``C`` credit, ``D`` debit; ``RC`` (reversal of a credit) is a DEBIT and ``RD`` (reversal
  of a debit) a CREDIT, both with ``reversal: true``.
- MT940: per statement (``:20:`` block), opening balance (``:60F:``/``:60M:``) + lines =
  closing balance (``:62F:``/``:62M:``); a statement without both is refused (truncated file).
- MT942 items are interim: status pending, never booked as final. Where the report gives
  ``:90D:``/``:90C:`` (number and sum of debit/credit items), they must match its lines.
- The text is decoded strictly (``encoding``, UTF-8 unless the caller names another): the
  package itself would fall back to another code page and read garbage.
- Every ``:61:`` must become a line: the package merges a ``:61:`` without a transaction
  type into the one before, so the count of ``:61:`` tags is checked.
- Natural key: statement account + booking date + mark + amount + bank reference (else the
  customer reference), with '#n' for identical lines of one statement.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import mt940

from recon.errors import InvalidInputError
from recon.ingest.statement import (
    BOOKED,
    CREDIT,
    DEBIT,
    PENDING,
    CompositeKeys,
    Statement,
    StatementIntegrityError,
    StatementLine,
    StatementSource,
    amount_key,
    build_line,
    collect_statements,
    compile_order_id_pattern,
    lines_of_checked_statements,
    read_text,
)

# mt-940 logs a tag it cannot parse with the tag's content (statement data) at ERROR level; that
# error becomes our InvalidInputError naming the statement, so its own log lines are kept quiet.
logging.getLogger("mt940").setLevel(logging.CRITICAL)

_WHAT = {"mt940": "MT940", "mt942": "MT942"}
_SIDES = {"C": CREDIT, "D": DEBIT, "RC": DEBIT, "RD": CREDIT}  # RC reverses a credit: money leaves
_NO_REFERENCE = ("NONREF", "NOTPROVIDED")
_STATEMENT_START = re.compile(r"(?m)^(?=:20:)")
_STATEMENT_LINE_TAG = re.compile(r"(?m)^:61:")
_SWIFT_TEXT_BLOCK = re.compile(r"\{4:[ \t]*\n?(.*?)\n-\}", re.DOTALL)
# Dutch banks' structured :86: (ING, ABN AMRO, Rabobank): /CODE/value/CODE/value...
_SLASH_CODES = (
    "TRTP", "EREF", "REMI", "NAME", "IBAN", "BIC", "CNTP", "MARF", "CSID", "PREF", "ORDP", "BENM",
    "ID", "ADDR", "ULTD", "ULTC", "ULTB", "PURP", "RTRN", "ISDT", "SVCL", "CDTRREF", "CDTRREFTP",
)
_SLASH_CODE = re.compile(r"/(" + "|".join(sorted(_SLASH_CODES, key=len, reverse=True)) + r")/")
_PARSER_OPTIONS = mt940.Options(
    applicant_iban=True,  # ?31 is the counterparty's IBAN, not part of its name
    merge_keeps_values=True,
    reversal_sign=True,  # RC is negative, like the debit it is
    case_insensitive_marks=True,
    timezone_offset=True,
    unbounded_details=True,  # never cut :86: silently
    non_swift_free_text=True,
    floor_limit_blank_mark=True,
    strip_bom=True,
    gvc_leading_text=True,
)


# --- Entry points ----------------------------------------------------------------------------


def parse_mt940(
    source: StatementSource,
    *,
    expected_currency: str | None = None,
    order_id_pattern: str | re.Pattern[str] | None = None,
    encoding: str = "utf-8",
) -> list[Statement]:
    """Every statement of an MT940 file, each checked (balances, currency), or InvalidInputError."""
    return collect_statements(_read(source, "mt940", order_id_pattern, encoding), expected_currency)


def parse_mt942(
    source: StatementSource,
    *,
    expected_currency: str | None = None,
    order_id_pattern: str | re.Pattern[str] | None = None,
    encoding: str = "utf-8",
) -> list[Statement]:
    """Every interim report of an MT942 file: lines pending, :90D:/:90C: totals checked."""
    return collect_statements(_read(source, "mt942", order_id_pattern, encoding), expected_currency)


def iter_mt940_lines(
    source: StatementSource,
    *,
    expected_currency: str | None = None,
    order_id_pattern: str | re.Pattern[str] | None = None,
    encoding: str = "utf-8",
) -> Iterator[StatementLine]:
    """The lines of an MT940 file, all of its statements checked before the first line."""
    return lines_of_checked_statements(_read(source, "mt940", order_id_pattern, encoding), expected_currency)


def iter_mt942_lines(
    source: StatementSource,
    *,
    expected_currency: str | None = None,
    order_id_pattern: str | re.Pattern[str] | None = None,
    encoding: str = "utf-8",
) -> Iterator[StatementLine]:
    """The (pending) lines of an MT942 file, all of its reports checked before the first line."""
    return lines_of_checked_statements(_read(source, "mt942", order_id_pattern, encoding), expected_currency)


def _read(
    source: StatementSource, kind: str, order_id_pattern: str | re.Pattern[str] | None, encoding: str
) -> Iterator[StatementLine | Statement]:
    """Each statement's lines, then the statement (lines empty): the stream statement.py checks."""
    pattern = compile_order_id_pattern(order_id_pattern)
    what = _WHAT[kind]
    text = _message_text(read_text(source, what, encoding), what)
    blocks = [block for block in _STATEMENT_START.split(text) if block.startswith(":20:")]
    if not blocks:
        raise InvalidInputError(f"the {what} file has no statement (no line starting with :20:)")
    for number, block in enumerate(blocks, 1):
        parsed = _parse_block(block, what, number)
        yield from _StatementReader(parsed, kind, number, pattern, block).items()


def _message_text(text: str, what: str) -> str:
    """The tag lines: the text blocks of SWIFT messages ({4: ... -}), or the file as it is."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    opened = text.count("{4:")
    if opened == 0:
        return text
    bodies = _SWIFT_TEXT_BLOCK.findall(text)
    if len(bodies) != opened:
        raise InvalidInputError(
            f"the {what} file has {opened} SWIFT message text blocks ({{4:) but {len(bodies)} end with '-}}':"
            " is it truncated?"
        )
    return "\n".join(bodies)


def _parse_block(block: str, what: str, number: int) -> mt940.models.Transactions:
    """One :20: block through mt-940, its errors named with the statement's number."""
    processors = {"post_transaction_details": [_keep_details_apart]}
    try:
        # A StringIO, never a str: the package reads a str that names an existing file.
        return mt940.parse(io.StringIO(block), processors=processors, options=_PARSER_OPTIONS)
    except RuntimeError as exc:  # mt-940 raises (message, tag, value) for a tag that does not fit its pattern
        if len(exc.args) == 3:
            tag, value = exc.args[1], exc.args[2]
            reason = f"tag :{tag.id}: {str(value)[:80]!r} is not a valid {tag.name} tag"
        else:
            reason = str(exc)
        raise InvalidInputError(f"{what} statement {number} ({_first_line(block)}): {reason}") from None
    except ArithmeticError:
        raise InvalidInputError(f"{what} statement {number} ({_first_line(block)}): an amount is not a number") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise InvalidInputError(
            f"{what} statement {number} ({_first_line(block)}): cannot be read ({type(exc).__name__}: {exc})"
        ) from None


def _keep_details_apart(transactions, tag, tag_dict, result) -> dict:
    """The :86: text and its ?NN fields under their own keys, so they never merge with :61:'s
    (the package would append a KREF to the :61: customer reference)."""
    raw = tag_dict["transaction_details"]
    parsed = mt940.processors.transaction_details_post_processor(transactions, tag, dict(tag_dict), dict(result))
    structured = None if "transaction_details" in parsed else parsed
    return {"details_text": raw, "details_fields": structured}


def _first_line(block: str) -> str:
    return block.split("\n", 1)[0][:60]


# --- One statement -------------------------------------------------------------------------


class _StatementReader:
    """One parsed :20: block: its lines, then its Statement with balances (MT940) or totals (MT942)."""

    def __init__(self, parsed, kind: str, number: int, order_id_pattern: re.Pattern[str] | None, block: str):
        self._parsed = parsed
        self._kind = kind
        self._what = _WHAT[kind]
        self._pattern = order_id_pattern
        self._block = block
        data = parsed.data
        reference = (data.get("transaction_reference") or "").strip() or f"number {number}"
        statement_id = reference
        if data.get("statement_number"):
            statement_id += f"/{data['statement_number']}"
            if data.get("sequence_number"):
                statement_id += f"/{data['sequence_number']}"
        self.statement_id = statement_id
        self.account = (data.get("account_identification") or "").strip()
        self._keys = CompositeKeys()

    def where(self) -> str:
        return f"{self._what} statement {self.statement_id}"

    def items(self) -> Iterator[StatementLine | Statement]:
        if not self.account:
            raise InvalidInputError(f"{self.where()} has no account identification (:25:)")
        if self._kind == "mt940":
            opening, closing = self._balances()
            currency = opening.amount.currency
            self._check_balance_currency(closing, "closing", currency)
        else:
            currency = self._interim_currency()
        tags_61 = len(_STATEMENT_LINE_TAG.findall(self._block))
        if tags_61 != len(self._parsed):
            raise InvalidInputError(
                f"{self.where()} has {tags_61} :61: lines but {len(self._parsed)} could be read;"
                " is a :61: missing its transaction type (e.g. NTRF)?"
            )
        lines = [self._line(transaction, k) for k, transaction in enumerate(self._parsed, 1)]
        lines = [line for line in lines if line is not None]
        yield from lines
        if self._kind == "mt940":
            yield Statement(self.statement_id, self.account, currency, _signed(opening), _signed(closing))
        else:
            self._check_item_totals(lines, currency)
            yield Statement(self.statement_id, self.account, currency, None, None)

    def _balances(self):
        """The parsed opening and closing balances (:60F:/:60M:, :62F:/:62M:); both must be there."""
        data = self._parsed.data
        opening = data.get("final_opening_balance") or data.get("intermediate_opening_balance") or data.get("opening_balance")
        closing = data.get("final_closing_balance") or data.get("intermediate_closing_balance") or data.get("closing_balance")
        if opening is None:
            hint = "; is it an MT942 interim report (it has a :34F: floor limit)?" if _floor_limit(data) else ""
            raise InvalidInputError(f"{self.where()} has no opening balance (:60F: or :60M:){hint}")
        if closing is None:
            raise InvalidInputError(f"{self.where()} has no closing balance (:62F: or :62M:); is the file truncated?")
        return opening, closing

    def _interim_currency(self) -> str:
        """An MT942's currency, from its :34F: floor limit; a statement with balances is no MT942."""
        data = self._parsed.data
        if any(name.endswith("_balance") and name != "available_balance" for name in data):
            raise InvalidInputError(
                f"{self.where()} has opening or closing balances (:60F:/:62F:): it is an MT940 statement, not an MT942 report"
            )
        floor_limit = _floor_limit(data)
        if floor_limit is None:
            raise InvalidInputError(f"{self.where()} has no :34F: floor limit, which gives an MT942 report its currency")
        return floor_limit.currency

    def _check_balance_currency(self, balance, name: str, currency: str) -> None:
        if balance.amount.currency != currency:
            raise StatementIntegrityError(
                f"{self.where()}: its {name} balance is in {balance.amount.currency}, but the statement is in {currency}",
                statement_id=self.statement_id, field="currency", expected=currency, found=balance.amount.currency,
            )

    def _check_item_totals(self, lines: list[StatementLine], currency: str) -> None:
        """MT942's :90D:/:90C: (number and sum of debit/credit items) against its lines."""
        for tag, side, total in (
            (":90D:", DEBIT, self._parsed.data.get("sum_debit_entries")),
            (":90C:", CREDIT, self._parsed.data.get("sum_credit_entries")),
        ):
            if total is None:
                continue
            on_side = [line.amount for line in lines if line.entry_type == side]
            found_sum = sum(on_side, Decimal(0))
            expected_sum = abs(total.amount)
            if total.currency != currency or expected_sum != found_sum:
                raise StatementIntegrityError(
                    f"{self.where()}: {tag} gives {expected_sum} {total.currency} of {side.lower()} items,"
                    f" but its {side.lower()} lines add up to {found_sum} {currency}",
                    statement_id=self.statement_id, field=f"{side.lower()}_total", expected=expected_sum, found=found_sum,
                )
            if str(total.number).strip() and int(total.number) != len(on_side):
                raise StatementIntegrityError(
                    f"{self.where()}: {tag} counts {int(total.number)} {side.lower()} items, but it has {len(on_side)}",
                    statement_id=self.statement_id, field=f"{side.lower()}_count", expected=int(total.number),
                    found=len(on_side),
                )

    # --- lines ---

    def _line(self, transaction, number: int) -> StatementLine | None:
        """The :61: (with its :86:) as a line; None for a zero amount, which moves nothing."""
        data = transaction.data
        where = f"{self.where()} line {number}"
        mark = (data.get("status") or "").upper()
        if mark not in _SIDES:
            raise InvalidInputError(f"{where}: debit/credit mark {mark!r} must be C, D, RC or RD")
        currency = data.get("currency")
        if not currency:
            raise InvalidInputError(f"{where}: the :61: comes before the balance that gives its currency")
        amount = abs(data["amount"].amount)
        if amount == 0:
            return None
        value_date = _plain_date(data["date"])
        booking_date = _plain_date(data.get("entry_date") or data["date"])
        details = _Details.of(data.get("details_text"), data.get("details_fields"))
        bank_reference = _reference(data.get("bank_reference"))
        customer_reference = details.customer_reference or _reference(data.get("customer_reference"))
        return build_line(
            amount=amount,
            entry_type=_SIDES[mark],
            currency=currency,
            value_date=value_date,
            booking_date=booking_date,
            status=BOOKED if self._kind == "mt940" else PENDING,
            reversal=mark.startswith("R"),
            natural_key=self._keys.key(
                self.account, booking_date.isoformat(), mark, amount_key(amount), bank_reference or customer_reference
            ),
            position=where,
            statement_id=self.statement_id,
            order_id_pattern=self._pattern,
            end_to_end_id=details.end_to_end_id,
            bank_reference=bank_reference,
            customer_reference=customer_reference,
            remittance=details.remittance,
            bank_transaction_code=(data.get("id") or "").strip() or None,
            counterparty_name=details.counterparty_name,
            counterparty_account=details.counterparty_account,
        )


def _signed(balance) -> Decimal:
    """A parsed :60:/:62: balance as a signed Decimal (a debit balance is negative)."""
    return balance.amount.amount


def _floor_limit(data: dict):
    return data.get("d_floor_limit") or data.get("c_floor_limit")


def _plain_date(value) -> dt.date:
    return dt.date(value.year, value.month, value.day)


def _reference(value: str | None) -> str | None:
    text = (value or "").strip()
    return None if not text or text.upper() in _NO_REFERENCE else text


# --- :86: --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Details:
    """What a :86: says, whichever dialect wrote it."""

    remittance: str | None = None
    end_to_end_id: str | None = None
    customer_reference: str | None = None
    counterparty_name: str | None = None
    counterparty_account: str | None = None

    @classmethod
    def of(cls, text: str | None, fields: dict | None) -> "_Details":
        if fields:
            return cls._from_question_mark_fields(fields)
        text = (text or "").strip()
        if _SLASH_CODE.match(text):
            return cls._from_slash_codes(text)
        return cls(remittance=_one_line(text))

    @classmethod
    def _from_question_mark_fields(cls, fields: dict) -> "_Details":
        """German ?NN sub-fields, as mt-940 split them (purpose = SVWZ+ or ?20-?29)."""
        return cls(
            remittance=_one_line(fields.get("purpose") or fields.get("posting_text")),
            end_to_end_id=_reference(fields.get("end_to_end_reference")),
            customer_reference=_reference(fields.get("customer_reference")),
            counterparty_name=_one_line(fields.get("applicant_name")),
            counterparty_account=(fields.get("applicant_iban") or "").strip() or None,
        )

    @classmethod
    def _from_slash_codes(cls, text: str) -> "_Details":
        """Dutch /CODE/value fields; /CNTP/ is account/BIC/name/city."""
        text = text.replace("\n", "")
        codes: dict[str, str] = {}
        matches = list(_SLASH_CODE.finditer(text))
        for i, match in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
            codes.setdefault(match.group(1), text[match.end() : end].strip("/ "))
        counterparty = codes.get("CNTP", "").split("/")
        remittance = re.sub(r"^(USTD|STRD/[A-Z]*)/+", "", codes.get("REMI", ""))
        return cls(
            remittance=_one_line(remittance),
            end_to_end_id=_reference(codes.get("EREF")),
            counterparty_name=_one_line(codes.get("NAME") or (counterparty[2] if len(counterparty) > 2 else None)),
            counterparty_account=(codes.get("IBAN") or counterparty[0]).strip() or None,
        )


def _one_line(text: str | None) -> str | None:
    if not text:
        return None
    return " ".join(text.split()) or None
