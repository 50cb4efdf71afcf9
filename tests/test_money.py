"""Money is validated exactly: no rounding on the way in, and the database stores what was given."""

from __future__ import annotations

from decimal import Decimal

import pytest

from recon.errors import InvalidInputError
from recon.money import decimal_places, parse_amount, parse_balance, parse_currency
from recon.staging import create_staging_entry
from tests.dags.seed import Seed

# more significant digits than Decimal's default context (28) keeps: normalize() rounded them away
BEYOND_28_DIGITS = [
    "1.00000000000000000000000000001",
    "1.000000000000000000000000000000000000001",
    "9999999999999999.00000000000000000000001",
    "0.00000000000000000000000000001",
]


@pytest.mark.parametrize("text", BEYOND_28_DIGITS)
def test_amounts_with_more_than_4_decimals_are_refused_however_many_digits(text):
    with pytest.raises(InvalidInputError, match="more than 4 decimal places"):
        parse_amount(text)
    with pytest.raises(InvalidInputError, match="more than 4 decimal places"):
        parse_amount(Decimal(text))


@pytest.mark.parametrize("text, places", [
    ("1", 0), ("100", 0), ("1e3", 0), ("1.5", 1), ("1.2300", 2), ("1.0000", 0), ("0.0001", 4),
    ("1.00000000000000000000000000000000", 0), ("1.00000000000000000000000000001", 29), ("12E-5", 5),
])
def test_decimal_places_are_read_from_the_digits_as_given(text, places):
    assert decimal_places(Decimal(text)) == places


@pytest.mark.parametrize("text", ["1.0000", "1.00000000000000000000000000000000", "9999999999999999.9999", "0.0001"])
def test_trailing_zeros_beyond_4_decimals_are_exact_and_accepted(text):
    assert parse_amount(text) == Decimal(text)


def test_zero_and_negative_balances_are_balances_not_amounts():
    assert parse_balance("0.00", "initial_balance") == 0
    assert parse_balance("-12.5", "initial_balance") == Decimal("-12.5")
    with pytest.raises(InvalidInputError, match="initial_balance '-1.00000000000000000000000000001' has more than 4"):
        parse_balance("-1.00000000000000000000000000001", "initial_balance")
    with pytest.raises(InvalidInputError, match="must be positive"):
        parse_amount("0.00")


@pytest.mark.parametrize("value", ["USD\n", "USD\r\n", "\nUSD", "USD ", "usd", "US", "ÀBC"])
def test_currency_is_exactly_three_upper_case_letters(value):
    with pytest.raises(InvalidInputError, match="is not an ISO 4217 code"):
        parse_currency(value)


def test_a_producer_cannot_store_a_silently_rounded_amount(db_url):
    seed = Seed(db_url)
    with pytest.raises(InvalidInputError, match="more than 4 decimal places"):
        create_staging_entry("acc_bank", "DEBIT", "1.00000000000000000000000000001", "USD", "TRANSACTION",
                             metadata={"order_id": "rounded"})
    with pytest.raises(InvalidInputError, match="is not an ISO 4217 code"):
        create_staging_entry("acc_bank", "DEBIT", "1.00", "USD\n", "TRANSACTION", metadata={"order_id": "newline"})
    assert seed.one("SELECT count(*) FROM staging_entries")[0] == 0
    assert seed.one("SELECT count(*) FROM process_tracker")[0] == 0

    create_staging_entry("acc_bank", "DEBIT", "1.00000000000000000000000000000", "USD", "TRANSACTION",
                         metadata={"order_id": "exact"})
    assert seed.one("SELECT amount::text FROM staging_entries")[0] == "1.0000"
