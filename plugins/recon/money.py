"""Exact money: amounts are Decimal, positive, with at most the 4 decimals NUMERIC(20,4) holds."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from recon.errors import InvalidInputError

SCALE = 4  # decimals the amount columns hold
MAX_INTEGER_DIGITS = 16  # NUMERIC(20, 4)
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def parse_amount(value: object, field: str = "amount") -> Decimal:
    """A positive Decimal from a str, int or Decimal; anything inexact or out of range is refused."""
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidInputError(
            f"{field} must be given as a string or Decimal (floats are inexact), got {value!r}"
        )
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", text):
            raise InvalidInputError(f"{field} {_show(value)} is not a decimal number")
        try:
            amount = Decimal(text)
        except InvalidOperation:
            raise InvalidInputError(f"{field} {_show(value)} is not a decimal number") from None
    else:
        raise InvalidInputError(f"{field} must be a decimal number, got {type(value).__name__}")
    if not amount.is_finite():
        raise InvalidInputError(f"{field} {_show(value)} is not a finite number")
    if amount <= 0:
        raise InvalidInputError(f"{field} {_show(value)} must be positive (the side is the entry type)")
    if amount.adjusted() >= MAX_INTEGER_DIGITS:
        raise InvalidInputError(f"{field} {_show(value)} is too large (at most {MAX_INTEGER_DIGITS} integer digits)")
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > SCALE:
        raise InvalidInputError(f"{field} {_show(value)} has more than {SCALE} decimal places")
    return amount


def parse_currency(value: object, field: str = "currency") -> str:
    """An ISO 4217 code: exactly three upper-case letters."""
    if not isinstance(value, str) or not _CURRENCY.match(value):
        raise InvalidInputError(f"{field} {_show(value)} is not an ISO 4217 code (three upper-case letters)")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"
