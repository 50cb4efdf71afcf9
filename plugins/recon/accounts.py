"""Merchants, accounts and recon rules: the static set-up the engine books against, and the only
module whose SQL reads or writes ``merchant_accounts``, ``accounts`` and ``recon_rules``."""

from __future__ import annotations

from decimal import Decimal
from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recon.db import Database
from recon.errors import InvalidInputError, NotFoundError
from recon.model import Account, AccountType, ReconRule
from recon.money import parse_balance, parse_currency

_ACCOUNT_COLUMNS = "account_id, merchant_id, account_name, account_type, currency, initial_balance"


def _name(value: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise InvalidInputError(f"{field} must be a non-empty string of at most 255 characters, got {value!r}")
    return value.strip()


def _chosen_id(value: str | None, field: str) -> str | None:
    """An id the caller chose (None: the database generates one); it must be usable as a key."""
    if value is None:
        return None
    if (not isinstance(value, str) or not value or len(value) > 255 or value != value.strip()
            or not value.isprintable()):
        raise InvalidInputError(
            f"{field} must be 1 to 255 printable characters without surrounding spaces, got {value!r}"
        )
    return value


def create_merchant(merchant_name: str, merchant_id: str | None = None, *, db: Database) -> str:
    name = _name(merchant_name, "merchant_name")
    merchant_id = _chosen_id(merchant_id, "merchant_id")
    with db.begin() as conn:
        return conn.execute(
            sa.text(
                "INSERT INTO merchant_accounts (merchant_id, merchant_name)"
                " VALUES (coalesce(:id, recon_new_id('mer')), :name) RETURNING merchant_id"
            ),
            {"id": merchant_id, "name": name},
        ).scalar_one()


def create_account(
    merchant_id: str,
    account_name: str,
    account_type: str,
    currency: str,
    initial_balance: Decimal | str | int = 0,
    account_id: str | None = None,
    *,
    db: Database,
) -> str:
    name = _name(account_name, "account_name")
    account_id = _chosen_id(account_id, "account_id")
    try:
        kind = AccountType(account_type)
    except ValueError:
        raise InvalidInputError(
            f"account_type {account_type!r} must be DEBIT_NORMAL or CREDIT_NORMAL"
        ) from None
    currency = parse_currency(currency)
    balance = parse_balance(initial_balance, field="initial_balance")
    with db.begin() as conn:
        _require_merchant(conn, merchant_id)
        return conn.execute(
            sa.text(
                "INSERT INTO accounts (account_id, merchant_id, account_name, account_type, currency,"
                " initial_balance) VALUES (coalesce(:id, recon_new_id('acc')), :merchant, :name, :type,"
                " :currency, :balance) RETURNING account_id"
            ),
            {"id": account_id, "merchant": merchant_id, "name": name, "type": kind.value,
             "currency": currency, "balance": balance},
        ).scalar_one()


def create_recon_rule(account_one_id: str, account_two_id: str, rule_id: str | None = None, *, db: Database) -> str:
    """A rule maps account_one (where entries arrive) to its contra account_two."""
    rule_id = _chosen_id(rule_id, "rule id")
    if account_one_id == account_two_id:
        raise InvalidInputError(f"a recon rule needs two distinct accounts, got {account_one_id!r} twice")
    with db.begin() as conn:
        one = get_account(account_one_id, conn)
        two = get_account(account_two_id, conn)
        if one.merchant_id != two.merchant_id:
            raise InvalidInputError(
                f"accounts {one.account_id} ({one.merchant_id}) and {two.account_id} ({two.merchant_id})"
                " belong to different merchants"
            )
        if one.currency != two.currency:
            raise InvalidInputError(
                f"accounts {one.account_id} ({one.currency}) and {two.account_id} ({two.currency})"
                " have different currencies"
            )
        existing = conn.execute(
            sa.text("SELECT id FROM recon_rules WHERE account_one_id = :a AND account_two_id = :b"),
            {"a": account_one_id, "b": account_two_id},
        ).scalar()
        if existing:
            raise InvalidInputError(f"recon rule {existing} already maps {account_one_id} to {account_two_id}")
        return conn.execute(
            sa.text(
                "INSERT INTO recon_rules (id, merchant_id, account_one_id, account_two_id)"
                " VALUES (coalesce(:id, recon_new_id('rule')), :m, :a, :b) RETURNING id"
            ),
            {"id": rule_id, "m": one.merchant_id, "a": account_one_id, "b": account_two_id},
        ).scalar_one()


def get_account(account_id: str, conn: Connection) -> Account:
    row = conn.execute(sa.text(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account_id = :id"), {"id": account_id}).first()
    if row is None:
        raise NotFoundError(f"no account with account_id {account_id!r}")
    return Account(**row._mapping)


def list_accounts(conn: Connection, account_ids: Sequence[str] | None = None) -> list[Account]:
    """Accounts (all, or these), by merchant and name."""
    rows = conn.execute(
        sa.text(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts"
            " WHERE CAST(:ids AS text[]) IS NULL OR account_id = ANY(CAST(:ids AS text[]))"
            " ORDER BY merchant_id, account_name, account_id"
        ),
        {"ids": list(account_ids) if account_ids is not None else None},
    )
    return [Account(*r) for r in rows]  # selected in field order


def load_accounts(conn: Connection, account_ids: Sequence[str]) -> dict[str, Account]:
    """The accounts with these ids (unknown ids are left out)."""
    if not account_ids:
        return {}
    rows = conn.execute(sa.text(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account_id = ANY(:ids)"),
                        {"ids": list(account_ids)})
    return {r[0]: Account(*r) for r in rows}  # selected in field order


def load_rules(conn: Connection, account_ids: Sequence[str]) -> list[ReconRule]:
    """Rules with any of these accounts on either side, oldest first (the oldest of an account_one wins)."""
    if not account_ids:
        return []
    rows = conn.execute(
        sa.text(
            "SELECT id, merchant_id, account_one_id, account_two_id FROM recon_rules"
            " WHERE account_one_id = ANY(:ids) OR account_two_id = ANY(:ids) ORDER BY created_at, id"
        ),
        {"ids": list(account_ids)},
    )
    return [ReconRule(*r) for r in rows]  # selected in field order


def _require_merchant(conn: Connection, merchant_id: str) -> None:
    found = conn.execute(
        sa.text("SELECT 1 FROM merchant_accounts WHERE merchant_id = :id"), {"id": merchant_id}
    ).first()
    if not found:
        raise NotFoundError(f"no merchant with merchant_id {merchant_id!r}")
