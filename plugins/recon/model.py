"""The vocabulary every part of the engine shares: enums and the row types passed between owners.

Each table's SQL lives in its owner module (tracker, staging, accounts, ledger); the rows they
hand to the engine are these frozen types, so a strategy never needs to know which module read
them.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Sequence


class EntryType(enum.StrEnum):
    DEBIT = "DEBIT"
    CREDIT = "CREDIT"

    @property
    def opposite(self) -> "EntryType":
        return EntryType.CREDIT if self is EntryType.DEBIT else EntryType.DEBIT


class ProcessingMode(enum.StrEnum):
    TRANSACTION = "TRANSACTION"
    CONFIRMATION = "CONFIRMATION"
    # a PSP settlement line that books itself (refund, chargeback, fee, balance carried): written
    # only by the settlement report ingest (recon.ingest.settlement_entries), never chosen by a user
    SETTLEMENT = "SETTLEMENT"


class StagingStatus(enum.StrEnum):
    PENDING = "PENDING"
    NEEDS_MANUAL_REVIEW = "NEEDS_MANUAL_REVIEW"
    PROCESSED = "PROCESSED"


class AccountType(enum.StrEnum):
    DEBIT_NORMAL = "DEBIT_NORMAL"
    CREDIT_NORMAL = "CREDIT_NORMAL"


class TaskType(enum.StrEnum):
    PROCESS_STAGING_ENTRY = "PROCESS_STAGING_ENTRY"


class TaskStatus(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    RETRY = "RETRY"


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    merchant_name: str
    created_at: dt.datetime


@dataclass(frozen=True)
class Account:
    account_id: str
    merchant_id: str
    account_name: str
    account_type: str
    currency: str
    initial_balance: Decimal


# a rule without match keys matches a confirmation's order_id to the expected leg's (recon.match_keys)
DEFAULT_MATCH_KEYS: tuple[tuple[str, str], ...] = (("order_id", "order_id"),)


@dataclass(frozen=True)
class RuleSettings:
    """What a recon rule matches on and tolerates: the one definition of a rule's settings, shared by
    ReconRule (a stored rule) and the settings a rule is created or changed with (checked in
    accounts), so a new setting is one field here.

    match_keys: [(field of the confirmation line, field of the expected leg)], all must agree;
    aging_days None means RECON_MATCHING_WINDOW_SECONDS; date_window_days None means no window;
    group_by (`metadata.<name>`) makes a confirmation fulfil every open leg sharing the line's value
    of that key (a match group) instead of matching one leg by match_keys.
    """

    priority: int | None = None  # None in new settings: after every rule already on either account
    match_keys: tuple[tuple[str, str], ...] = DEFAULT_MATCH_KEYS
    amount_tolerance: Decimal = Decimal(0)
    amount_tolerance_pct: Decimal = Decimal(0)
    variance_account_id: str | None = None
    date_window_days: int | None = None
    aging_days: int | None = None
    fee_account_id: str | None = None  # where a PSP settlement's fees are booked (sql/0035)
    group_by: str | None = None


@dataclass(frozen=True)
class RuleAccounts:
    """Which rule maps which accounts: the columns of recon_rules before its settings."""

    id: str
    merchant_id: str
    account_one_id: str
    account_two_id: str


@dataclass(frozen=True)
class ReconRule(RuleSettings, RuleAccounts):
    """A row of recon_rules, in column order (sql/0001, sql/0014, sql/0035, sql/0040): RuleAccounts'
    fields, then RuleSettings' (a dataclass lists the fields of its last base first)."""

    priority: int = 10  # a stored rule always has one

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "ReconRule":
        """From a row selected as accounts.RULE_COLUMNS (match_keys as jsonb)."""
        values = list(row)
        values[5] = tuple((key["line"], key["expected"]) for key in values[5])
        return cls(*values)


@dataclass(frozen=True, slots=True)
class StagingEntry:
    """A statement line as the engine reads it (staging_entries, in column order)."""

    staging_entry_id: str
    account_id: str
    entry_type: str
    amount: Decimal
    currency: str
    status: str
    processing_mode: str
    effective_date: dt.datetime
    metadata: dict[str, Any]
    order_id: str | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ExpectedLeg:
    """An EXPECTED entry waiting to be fulfilled, with its transaction's header."""

    entry_id: str
    account_id: str
    order_id: str
    entry_type: str
    amount: Decimal
    currency: str
    transaction_id: str
    logical_transaction_id: str
    version: int
    merchant_id: str
    transaction_amount: Decimal
    transaction_metadata: dict[str, Any]
    effective_date: dt.datetime | None = None
    # the booked line's metadata (match keys compare against it); empty when read for a look-up the
    # database already matched
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EntryLeg:
    """The columns every view of an ``entries`` row starts with, in column order: PostedLeg here and
    ledger.NewEntry / ledger.LedgerEntry add theirs after these, so a leg's fields are named once.
    (ExpectedLeg keeps its own order: it is read joined with its transaction's header.)"""

    entry_id: str
    account_id: str
    transaction_id: str
    entry_type: str
    amount: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class PostedLeg(EntryLeg):
    """A POSTED entry of a transaction, carried over when the transaction gets a new version."""

    effective_date: dt.datetime
    metadata: dict[str, Any]
