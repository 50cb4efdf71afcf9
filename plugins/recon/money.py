"""Exact money: amounts are Decimal, positive, with at most the 4 decimals NUMERIC(20,4) holds."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from recon.errors import InvalidInputError

SCALE = 4  # decimals the amount columns hold
MAX_INTEGER_DIGITS = 16  # NUMERIC(20, 4)
_CURRENCY = re.compile(r"[A-Z]{3}")  # fullmatch: `$` would also match before a trailing newline


def parse_amount(value: object, field: str = "amount") -> Decimal:
    """A positive Decimal from a str, int or Decimal; anything inexact or out of range is refused."""
    amount = _parse_decimal(value, field)
    if amount <= 0:
        raise InvalidInputError(f"{field} {_show(value)} must be positive (the side is the entry type)")
    return amount


def parse_balance(value: object, field: str = "balance") -> Decimal:
    """A balance: like an amount, but zero and negative values (an overdrawn account) are allowed."""
    return _parse_decimal(value, field)


def _parse_decimal(value: object, field: str) -> Decimal:
    """An exact Decimal that fits NUMERIC(20, 4), from a str, int or Decimal (never a float)."""
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
            amount = Decimal(text)  # exact: the constructor does not round
        except InvalidOperation:
            raise InvalidInputError(f"{field} {_show(value)} is not a decimal number") from None
    else:
        raise InvalidInputError(f"{field} must be a decimal number, got {type(value).__name__}")
    if not amount.is_finite():
        raise InvalidInputError(f"{field} {_show(value)} is not a finite number")
    if amount.adjusted() >= MAX_INTEGER_DIGITS:
        raise InvalidInputError(f"{field} {_show(value)} is too large (at most {MAX_INTEGER_DIGITS} integer digits)")
    if decimal_places(amount) > SCALE:
        raise InvalidInputError(f"{field} {_show(value)} has more than {SCALE} decimal places")
    return amount


def decimal_places(amount: Decimal) -> int:
    """Decimals that carry a value (trailing zeros do not count), read from the digits as given.

    Never through Decimal.normalize() or arithmetic: both round to the context's 28 significant
    digits, which turned 1.00000000000000000000000000001 into 1 and let it pass.
    """
    _, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int), "a finite Decimal"
    text = "".join(map(str, digits))
    trailing_zeros = len(text) - len(text.rstrip("0"))
    return max(-exponent - trailing_zeros, 0)


def parse_currency(value: object, field: str = "currency") -> str:
    """An ISO 4217 code: exactly three upper-case letters."""
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise InvalidInputError(f"{field} {_show(value)} is not an ISO 4217 code (three upper-case letters)")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


# ISO 4217 minor units that are not 2 (the rest of the world's currencies use cents)
_MINOR_UNITS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0, "RWF": 0,
    "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3, "CLF": 4, "UYW": 4,
}


def minor_units(currency: str) -> int:
    return _MINOR_UNITS.get(currency, 2)


def format_money(amount: Decimal, currency: str) -> str:
    """`13,436,280.03 EUR`: the currency's decimals and digit grouping, for people (exports and JSON
    keep the exact stored value). Digits beyond the currency's decimals are kept, never rounded away."""
    places = max(minor_units(currency), decimal_places(amount))
    return f"{amount:,.{places}f} {currency}"
