"""What a recon rule's match keys, tolerance and date window mean.

A key pairs a field of the confirmation line with a field of the expected leg it must equal:

    line field:      order_id | metadata.<name> | amount
    expected field:  order_id | metadata.<name> | amount   (of the TRANSACTION line that booked the leg)

Several pairs form a composite key: all must agree. ``amount`` stands alone: such a rule finds
candidates by amount (within the rule's tolerance) on the line's side, for bank lines that carry no
reference. Key values are strings; a line without one of its rule's fields is not looked up under
that rule. Both the database look-ups (``ledger``, ``staging``) and the chunk's own bookings
(``Reservations``) are matched with the same ``Lookup``, so a chunk decides as one task at a time would.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Sequence

from recon.errors import InvalidInputError
from recon.model import DEFAULT_MATCH_KEYS, ExpectedLeg, ReconRule, StagingEntry

ORDER_ID = "order_id"
AMOUNT = "amount"
METADATA = "metadata."
DEFAULT_KEYS = DEFAULT_MATCH_KEYS  # ((ORDER_ID, ORDER_ID),), defined with the rule settings
MAX_KEYS = 5
_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
_LARGEST_AMOUNT = Decimal("9999999999999999.9999")  # numeric(20, 4)
_EXACT = decimal.Context(prec=60)  # tolerance arithmetic never rounds

# look-up kinds: by the indexed order_id column, by metadata containment, by amount range
BY_ORDER, BY_METADATA, BY_AMOUNT = "order", "metadata", "amount"


# ---- rule definitions -----------------------------------------------------------------------------


def parse_match_key(text: str) -> tuple[str, str]:
    """`LINE_FIELD[=EXPECTED_FIELD]` (the CLI's form); the expected field defaults to the line's."""
    line, _, expected = str(text).partition("=")
    return line.strip(), (expected or line).strip()


def check_match_keys(keys: Sequence[Sequence[str]]) -> tuple[tuple[str, str], ...]:
    """The keys as (line field, expected field) pairs, or InvalidInputError naming the bad one."""
    pairs = tuple((str(k[0]), str(k[1])) for k in keys)
    if not pairs:
        raise InvalidInputError("a rule needs at least one match key", field="match_keys")
    if len(pairs) > MAX_KEYS:
        raise InvalidInputError(f"a rule has at most {MAX_KEYS} match keys, got {len(pairs)}", field="match_keys")
    for line, expected in pairs:
        for name, side in ((line, "line"), (expected, "expected")):
            if name not in (ORDER_ID, AMOUNT) and not (name.startswith(METADATA) and _NAME.fullmatch(name[len(METADATA):])):
                raise InvalidInputError(
                    f"unknown {side} field {name!r} in match key {line}={expected}: use order_id, amount or"
                    " metadata.<name> (letters, digits, '_' and '-')", field="match_keys")
        if (line == AMOUNT) != (expected == AMOUNT):
            raise InvalidInputError(f"match key {line}={expected}: amount can only be matched with amount",
                                    field="match_keys")
    if any(line == AMOUNT for line, _ in pairs) and len(pairs) > 1:
        raise InvalidInputError("the amount key stands alone: it cannot be combined with other keys",
                                field="match_keys")
    expected_fields = [expected for _, expected in pairs]
    repeated = sorted({f for f in expected_fields if expected_fields.count(f) > 1})
    if repeated:
        raise InvalidInputError(f"expected field {repeated[0]} appears in more than one match key",
                                field="match_keys")
    return pairs


def check_group_by(value: object) -> str | None:
    """The group key as `metadata.<name>` (None: no grouping), or InvalidInputError naming it."""
    if value is None:
        return None
    name = str(value).strip()
    if not (name.startswith(METADATA) and _NAME.fullmatch(name[len(METADATA):])):
        raise InvalidInputError(
            f"group_by must be metadata.<name> (letters, digits, '_' and '-', at most 100), got {value!r}:"
            " the line's value of that metadata key selects the open expected legs carrying the same value",
            field="group_by")
    return name


def lookup_keys(rule: ReconRule) -> tuple[tuple[str, str], ...]:
    """The keys a confirmation is looked up by: a grouping rule's group key on both sides (its match
    keys do not apply), else its match keys."""
    return ((rule.group_by, rule.group_by),) if rule.group_by else rule.match_keys


def keys_text(keys: Sequence[tuple[str, str]]) -> str:
    """`order_id`, `metadata.reference=order_id`, ...: how the CLI shows a rule's keys."""
    return ", ".join(line if line == expected else f"{line}={expected}" for line, expected in keys)


# ---- look-ups -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lookup:
    """What one rule looks for on its contra account for one confirmation line.

    values: BY_ORDER (order,); BY_METADATA ((name, value), ...) by name; BY_AMOUNT (side, low, high),
    a range that holds every amount the tolerance allows (the exact check is ``within_tolerance``).
    """

    kind: str
    account_id: str
    values: tuple[Any, ...]

    def probe(self) -> dict[str, str]:
        """The metadata an expected leg must contain (BY_METADATA)."""
        return dict(self.values)


def lookup(rule: ReconRule, entry: StagingEntry) -> Lookup | None:
    """The rule's look-up for this line, or None when the line lacks one of the rule's fields."""
    keys = lookup_keys(rule)
    if keys == ((AMOUNT, AMOUNT),):
        low, high = amount_range(rule, entry.amount)
        return Lookup(BY_AMOUNT, rule.account_two_id, (entry.entry_type, low, high))
    values = []
    for line_field, expected_field in keys:
        value = line_value(entry, line_field)
        if value is None:
            return None
        values.append((_expected_name(expected_field), value))
    if len(values) == 1 and values[0][0] == ORDER_ID:
        return Lookup(BY_ORDER, rule.account_two_id, (values[0][1],))
    return Lookup(BY_METADATA, rule.account_two_id, tuple(sorted(values)))


def line_value(entry: StagingEntry, name: str) -> str | None:
    value = entry.order_id if name == ORDER_ID else entry.metadata.get(name[len(METADATA):])
    return value if isinstance(value, str) and value else None


def _expected_name(name: str) -> str:
    """The expected leg's field as a key of its metadata (order_id is metadata.order_id)."""
    return ORDER_ID if name == ORDER_ID else name[len(METADATA):]


def leg_matches(found: Lookup, leg: ExpectedLeg) -> bool:
    """Does this leg (booked earlier in the chunk, with its metadata) answer the look-up?"""
    if leg.account_id != found.account_id:
        return False
    if found.kind == BY_ORDER:
        return leg.order_id == found.values[0]
    if found.kind == BY_METADATA:
        return all(leg.metadata.get(name) == value for name, value in found.values)
    side, low, high = found.values
    return leg.entry_type == side and low <= leg.amount <= high


def describe(found: Lookup, rule: ReconRule) -> str:
    """The look-up in words, for messages: "order 'ORD-1'", "metadata.reference 'R-9'", ..."""
    if found.kind == BY_ORDER:
        field = lookup_keys(rule)[0][0]
        return f"order {found.values[0]!r}" if field == ORDER_ID else f"{field} {found.values[0]!r}"
    if found.kind == BY_METADATA:
        keys = lookup_keys(rule)
        lines = dict(zip((_expected_name(e) for _, e in keys), (line for line, _ in keys)))
        return " and ".join(f"{lines[name]} {value!r}" for name, value in found.values)
    side, low, high = found.values
    window = f" within {rule.date_window_days} days" if rule.date_window_days is not None else ""
    return f"{side} amount between {low} and {high}{window}"


# ---- tolerance and window -------------------------------------------------------------------------


def tolerance(rule: ReconRule, expected: Decimal) -> Decimal:
    """max(amount_tolerance, amount_tolerance_pct % of the expected amount), exact."""
    return max(rule.amount_tolerance, _EXACT.divide(_EXACT.multiply(rule.amount_tolerance_pct, expected), 100))


def within_tolerance(rule: ReconRule, actual: Decimal, expected: Decimal) -> bool:
    return abs(actual - expected) <= tolerance(rule, expected)


def amount_range(rule: ReconRule, actual: Decimal) -> tuple[Decimal, Decimal]:
    """Every expected amount e with |actual - e| <= tolerance(e) lies in this range (to 4 places,
    rounded outwards), so a range scan finds every candidate."""
    pct = _EXACT.divide(rule.amount_tolerance_pct, 100)
    low = min(actual - rule.amount_tolerance, _EXACT.divide(actual, 1 + pct))
    high = max(actual + rule.amount_tolerance, _EXACT.divide(actual, 1 - pct) if pct < 1 else _LARGEST_AMOUNT)
    return (max(low, Decimal(0)).quantize(Decimal("0.0001"), rounding=decimal.ROUND_FLOOR),
            min(high, _LARGEST_AMOUNT).quantize(Decimal("0.0001"), rounding=decimal.ROUND_CEILING))


def in_window(rule: ReconRule, line_date: dt.datetime, leg_date: dt.datetime | None) -> bool:
    """Is the leg's effective_date within ±date_window_days of the line's (no window: always)?"""
    if rule.date_window_days is None or leg_date is None:
        return True
    return abs(leg_date - line_date) <= dt.timedelta(days=rule.date_window_days)


def mismatched_fields(entry: StagingEntry, leg: ExpectedLeg) -> list[dict[str, str]]:
    """Every field in which the line differs from the leg: {"field", "expected", "actual"}."""
    found = []
    if entry.amount != leg.amount:  # Decimal comparison is numeric: 10.5 == 10.50
        found.append({"field": "amount", "expected": str(leg.amount), "actual": str(entry.amount)})
    if entry.currency != leg.currency:
        found.append({"field": "currency", "expected": leg.currency, "actual": entry.currency})
    if entry.entry_type != leg.entry_type:
        found.append({"field": "side", "expected": leg.entry_type, "actual": entry.entry_type})
    return found
