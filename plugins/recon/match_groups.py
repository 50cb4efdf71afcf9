"""Match groups (N:1): one confirmation line that fulfilled several expected legs sharing a key
value of its rule's ``group_by``; the only module whose SQL reads or writes ``match_groups`` and
``match_group_items`` (sql/0040).

A group is written with the ledger effect it describes (``ledger.book_group_fulfilment`` adds it to
the chunk's LedgerBatch, whose flush inserts it after the transactions), so the group, its balanced
transaction and the line's status commit together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recon.db import copy_rows, copy_statement


@dataclass(frozen=True, slots=True)
class MatchGroup:
    """A row of match_groups: line_amount = expected_total + variance."""

    match_group_id: str
    staging_entry_id: str
    recon_rule_id: str
    account_id: str
    group_by: str
    group_value: str
    currency: str
    line_amount: Decimal
    expected_total: Decimal  # the items' sum
    variance: Decimal
    transaction_id: str


@dataclass(frozen=True, slots=True)
class GroupItem:
    """A row of match_group_items: an expected leg of a group and what it contributes to the line's
    amount (negative for a leg on the other side, e.g. a refund netted in a payout)."""

    match_group_id: str
    expected_entry_id: str
    expected_transaction_id: str
    allocated_amount: Decimal


# the dataclasses' fields, in order, for the reads (a literal: SQL is built from constants only)
_GROUP_COLUMNS = ("match_group_id, staging_entry_id, recon_rule_id, account_id, group_by, group_value, currency,"
                  " line_amount, expected_total, variance, transaction_id")
_ITEM_COLUMNS = "match_group_id, expected_entry_id, expected_transaction_id, allocated_amount"

_COPY_GROUPS = copy_statement("match_groups", MatchGroup)
_COPY_ITEMS = copy_statement("match_group_items", GroupItem)


def insert(conn: Connection, groups: Sequence[MatchGroup], items: Sequence[GroupItem]) -> None:
    """Write these groups and their items (two COPYs for a chunk, as the ledger's rows). The unique
    index on an item's expected entry refuses a leg a second group would fulfil."""
    copy_rows(conn, _COPY_GROUPS, groups)
    copy_rows(conn, _COPY_ITEMS, items)


def groups_of_entries(conn: Connection, staging_entry_ids: Sequence[str]) -> dict[str, MatchGroup]:
    """The group each of these staging entries formed."""
    if not staging_entry_ids:
        return {}
    rows = conn.execute(sa.text(f"SELECT {_GROUP_COLUMNS} FROM match_groups WHERE staging_entry_id = ANY(:ids)"),
                        {"ids": list(staging_entry_ids)})
    return {r.staging_entry_id: MatchGroup(*r) for r in rows}


def items_of_groups(conn: Connection, match_group_ids: Sequence[str]) -> dict[str, list[GroupItem]]:
    """The items of these groups, each group's in expected entry id order."""
    items: dict[str, list[GroupItem]] = {g: [] for g in match_group_ids}
    if match_group_ids:
        for r in conn.execute(sa.text(f"SELECT {_ITEM_COLUMNS} FROM match_group_items"
                                      " WHERE match_group_id = ANY(:ids) ORDER BY expected_entry_id"),
                              {"ids": list(match_group_ids)}):
            items[r.match_group_id].append(GroupItem(*r))
    return items
