"""The one JSON encoder of the CLI and the Recon view: money exact, times ISO 8601."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from recon import json_encoding


def test_money_stays_an_exact_string_at_any_depth() -> None:
    value = {"balances": [{"posted": Decimal("12345678901234.5678")}], "pair": (Decimal("0.1000"), 3)}
    assert json.loads(json_encoding.dumps(value)) == {
        "balances": [{"posted": "12345678901234.5678"}],
        "pair": ["0.1000", 3],
    }


def test_times_are_iso_8601() -> None:
    at = dt.datetime(2026, 11, 8, 12, 0, 30, tzinfo=dt.timezone.utc)
    assert json_encoding.jsonable({"at": at, "day": at.date()}) == {
        "at": "2026-11-08T12:00:30+00:00",
        "day": "2026-11-08",
    }


def test_the_bulk_scalar_form_refuses_what_json_cannot_hold() -> None:
    assert json.dumps([Decimal("1.50")], default=json_encoding.json_scalar) == '["1.50"]'
    with pytest.raises(TypeError, match="set"):
        json_encoding.json_scalar({1})
