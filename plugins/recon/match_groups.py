"""Match groups (N:1): one confirmation line that fulfilled several expected legs sharing a key
value of its rule's ``group_by``; the only module whose SQL reads or writes ``match_groups`` and
``match_group_items`` (sql/0040).

A group is written with the ledger effect it describes (``ledger.book_group_fulfilment`` adds it to
the chunk's LedgerBatch, whose flush inserts it after the transactions), so the group, its balanced
transaction and the line's status commit together or not at all.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recon.db import json_rows


@dataclass(frozen=True, slots=True)
class GroupItem:
    """An expected leg of a group and what it contributes to the line's amount (negative for a leg
    on the other side, e.g. a refund netted in a payout)."""

    expected_entry_id: str
    expected_transaction_id: str
    allocated_amount: Decimal


@dataclass(frozen=True, slots=True)
class MatchGroup:
    match_group_id: str
    staging_entry_id: str
    recon_rule_id: str
    account_id: str
    group_by: str
    group_value: str
    currency: str
    line_amount: Decimal
    expected_total: Decimal  # the items' sum; line_amount - expected_total = variance
    variance: Decimal
    transaction_id: str
    items: list[GroupItem] = field(default_factory=list)
    created_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class _ItemRow:
    match_group_id: str
    expected_entry_id: str
    expected_transaction_id: str
    allocated_amount: Decimal


@dataclass(frozen=True, slots=True)
class _GroupRow:
    match_group_id: str
    staging_entry_id: str
    recon_rule_id: str
    account_id: str
    group_by: str
    group_value: str
    currency: str
    line_amount: Decimal
    expected_total: Decimal
    variance: Decimal
    transaction_id: str


_GROUP_COLUMNS = ("match_group_id, staging_entry_id, recon_rule_id, account_id, group_by, group_value, currency,"
                  " line_amount, expected_total, variance, transaction_id")

_INSERT_GROUPS = sa.text(
    f"""
    INSERT INTO match_groups ({_GROUP_COLUMNS})
    SELECT {_GROUP_COLUMNS}
    FROM json_to_recordset(CAST(:rows AS json)) AS r(
        match_group_id text, staging_entry_id text, recon_rule_id text, account_id text, group_by text,
        group_value text, currency text, line_amount numeric, expected_total numeric, variance numeric,
        transaction_id text)
    """
)

_INSERT_ITEMS = sa.text(
    """
    INSERT INTO match_group_items (match_group_id, expected_entry_id, expected_transaction_id, allocated_amount)
    SELECT match_group_id, expected_entry_id, expected_transaction_id, allocated_amount
    FROM json_to_recordset(CAST(:rows AS json)) AS r(
        match_group_id text, expected_entry_id text, expected_transaction_id text, allocated_amount numeric)
    """
)


def insert(conn: Connection, groups: Sequence[MatchGroup]) -> None:
    """Write these groups and their items (two statements for a chunk). The unique index on an
    item's expected entry refuses a leg a second group would fulfil."""
    if not groups:
        return
    columns = [f.name for f in fields(_GroupRow)]
    conn.execute(_INSERT_GROUPS, {"rows": json_rows(_GroupRow(**{c: getattr(g, c) for c in columns}) for g in groups)})
    conn.execute(_INSERT_ITEMS, {"rows": json_rows(
        _ItemRow(g.match_group_id, i.expected_entry_id, i.expected_transaction_id, i.allocated_amount)
        for g in groups for i in g.items)})


def groups_of_entries(conn: Connection, staging_entry_ids: Sequence[str]) -> dict[str, MatchGroup]:
    """The group each of these staging entries formed, with its items in entry id order."""
    if not staging_entry_ids:
        return {}
    rows = conn.execute(sa.text(f"SELECT {_GROUP_COLUMNS}, created_at FROM match_groups"
                                " WHERE staging_entry_id = ANY(:ids)"), {"ids": list(staging_entry_ids)}).all()
    groups = {r.match_group_id: MatchGroup(*r[:11], items=[], created_at=r.created_at) for r in rows}
    if groups:
        for item in conn.execute(sa.text(
                "SELECT match_group_id, expected_entry_id, expected_transaction_id, allocated_amount"
                " FROM match_group_items WHERE match_group_id = ANY(:ids) ORDER BY expected_entry_id"),
                {"ids": list(groups)}):
            groups[item.match_group_id].items.append(GroupItem(*item[1:]))
    return {g.staging_entry_id: g for g in groups.values()}
