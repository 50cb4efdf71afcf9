"""The API's field types: money as exact decimal strings, times as RFC 3339 in UTC, ids and filters
that PostgreSQL text can hold.

Requests give amounts as strings ("120.00"), never JSON numbers: a JSON number reaches Python as a
float, which is inexact. Responses give every Decimal as its exact digits, never an exponent.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator, AwareDatetime, Field, PlainSerializer, PlainValidator, WithJsonSchema

from recon.money import parse_amount, parse_balance, parse_currency

# PostgreSQL text cannot hold a NUL: refused as bad input (422), never a database error (500)
NO_NUL = r"^[^\x00]*$"

DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
# an id in a path: printable (the library's ids are), so that the path routes at all (a line break
# in a path matches no route of Airflow's, which answers its own 404 before the API sees it)
ID_IN_PATH = r"^[^\x00-\x1f\x7f]+$"


def _decimal_text(value: Decimal) -> str:
    return format(value, "f")  # never "1E+3"


def _utc_text(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


# ---- in paths and query strings ------------------------------------------------------------------

IdInPath = Annotated[str, Path(min_length=1, max_length=255, pattern=ID_IN_PATH)]
IdFilter = Annotated[str | None, Query(max_length=255, pattern=NO_NUL)]  # only the rows with this id

# ---- in responses ---------------------------------------------------------------------------------

DecimalString = Annotated[
    Decimal,
    PlainSerializer(_decimal_text, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DECIMAL_PATTERN, "examples": ["120.0000"]}),
]
UtcTimestamp = Annotated[
    dt.datetime,
    PlainSerializer(_utc_text, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-11-02T09:30:00Z"]}),
]

# ---- in requests ----------------------------------------------------------------------------------

Text = Annotated[str, Field(min_length=1, max_length=255, pattern=NO_NUL)]
Name = Annotated[str, Field(min_length=1, max_length=255, pattern=NO_NUL, examples=["Bank EUR"])]
Amount = Annotated[
    Decimal,
    PlainValidator(parse_amount),  # exact: a float (a JSON number with a fraction) is refused
    PlainSerializer(_decimal_text, return_type=str),
    WithJsonSchema({"type": "string", "maxLength": 64, "examples": ["120.00"],
                    "description": "a positive decimal as a string: at most 4 decimal places, 16 integer digits"}),
]
Balance = Annotated[
    Decimal,
    PlainValidator(lambda value: parse_balance(value, field="initial_balance")),
    PlainSerializer(_decimal_text, return_type=str),
    WithJsonSchema({"type": "string", "maxLength": 64, "examples": ["0.00"],
                    "description": "a decimal as a string (zero or negative allowed): at most 4 decimal places"}),
]
Currency = Annotated[
    str, Field(min_length=3, max_length=3, examples=["EUR"], description="ISO 4217: three upper-case letters"),
    AfterValidator(parse_currency),
]
EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.timezone.utc)
LATEST = dt.datetime(3000, 1, 1, tzinfo=dt.timezone.utc)


def _plausible(value: dt.datetime) -> dt.datetime:
    """Within 1900-2999 UTC: every time stored must read back as a Python datetime in UTC."""
    try:
        plausible = EARLIEST <= value < LATEST
    except OverflowError:  # year 1 with a positive offset is before year 1 in UTC
        plausible = False
    if not plausible:
        raise ValueError(f"{value.isoformat()} is outside the years 1900 to 2999")
    return value


Timestamp = Annotated[
    AwareDatetime, AfterValidator(_plausible),
    Field(description="RFC 3339 with a time zone, years 1900 to 2999", examples=["2026-11-02T09:30:00Z"]),
]
