"""Merchants, accounts and recon rules: the static set-up the engine books against, and the only
module whose SQL reads or writes ``merchant_accounts``, ``accounts`` and ``recon_rules``."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from decimal import Decimal
from typing import Sequence

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recon import match_keys
from recon.db import Database
from recon.errors import ConflictError, InvalidInputError, NotFoundError
from recon.model import Account, AccountType, Merchant, ReconRule, RuleSettings
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
        created = conn.execute(
            sa.text(
                "INSERT INTO merchant_accounts (merchant_id, merchant_name)"
                " VALUES (coalesce(:id, recon_new_id('mer')), :name)"
                " ON CONFLICT (merchant_id) DO NOTHING RETURNING merchant_id"
            ),
            {"id": merchant_id, "name": name},
        ).scalar()
    if created is None:
        raise ConflictError(f"merchant_id {merchant_id!r} is already taken", field="merchant_id")
    return created


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
        created = conn.execute(
            sa.text(
                "INSERT INTO accounts (account_id, merchant_id, account_name, account_type, currency,"
                " initial_balance) VALUES (coalesce(:id, recon_new_id('acc')), :merchant, :name, :type,"
                " :currency, :balance) ON CONFLICT (account_id) DO NOTHING RETURNING account_id"
            ),
            {"id": account_id, "merchant": merchant_id, "name": name, "type": kind.value,
             "currency": currency, "balance": balance},
        ).scalar()
    if created is None:
        raise ConflictError(f"account_id {account_id!r} is already taken", field="account_id")
    return created


def _parse_settings(settings: RuleSettings) -> RuleSettings:
    """The settings with parsed values, or InvalidInputError naming the first bad one."""
    tolerance = _non_negative(settings.amount_tolerance, "amount_tolerance")
    pct = _non_negative(settings.amount_tolerance_pct, "amount_tolerance_pct", most=Decimal(100))
    if (tolerance or pct) and settings.variance_account_id is None:
        raise InvalidInputError("an amount tolerance needs a variance account (variance_account_id) to book"
                                " the difference to", field="variance_account_id")
    keys = match_keys.check_match_keys(settings.match_keys)
    group_by = match_keys.check_group_by(settings.group_by)
    if group_by is not None and keys != match_keys.DEFAULT_KEYS:
        # a grouping rule looks confirmations up by its group key alone: other keys would be ignored
        raise InvalidInputError(
            f"group_by {group_by} replaces the match keys, so a rule cannot have both (match keys"
            f" {match_keys.keys_text(keys)}): leave the match keys at the default order_id", field="group_by")
    return replace(
        settings,
        priority=None if settings.priority is None else _whole(settings.priority, "priority", 1_000_000),
        match_keys=keys, group_by=group_by,
        amount_tolerance=tolerance, amount_tolerance_pct=pct,
        variance_account_id=_chosen_id(settings.variance_account_id, "variance_account_id"),
        date_window_days=None if settings.date_window_days is None else _whole(settings.date_window_days, "date_window_days", 3660),
        aging_days=None if settings.aging_days is None else _whole(settings.aging_days, "aging_days", 3660),
        fee_account_id=_chosen_id(settings.fee_account_id, "fee_account_id"),
    )


def _settings_of(rule: ReconRule) -> RuleSettings:
    """A stored rule's settings, without its id and accounts."""
    return RuleSettings(**{f.name: getattr(rule, f.name) for f in fields(RuleSettings)})


def _whole(value: object, field: str, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise InvalidInputError(f"{field} must be a whole number from 0 to {most}, got {value!r}", field=field)
    number = int(value)
    if number > most:
        raise InvalidInputError(f"{field} must be a whole number from 0 to {most}, got {value!r}", field=field)
    return number


def _non_negative(value: object, field: str, most: Decimal | None = None) -> Decimal:
    number = parse_balance(value, field=field)
    if number < 0 or (most is not None and number > most):
        bound = f" and at most {most}" if most is not None else ""
        raise InvalidInputError(f"{field} must be at least 0{bound}, got {value!r}", field=field)
    return number


def create_recon_rule(account_one_id: str, account_two_id: str, rule_id: str | None = None,
                      settings: RuleSettings = RuleSettings(), *, db: Database) -> str:
    """A rule maps account_one (where TRANSACTION lines arrive) to its contra account_two (where
    their confirmations arrive), with what confirmations are matched on and tolerated."""
    rule_id = _chosen_id(rule_id, "rule id")
    settings = _parse_settings(settings)
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
        _lock_rules(conn)
        existing = conn.execute(
            sa.text("SELECT id FROM recon_rules WHERE account_one_id = :a AND account_two_id = :b"),
            {"a": account_one_id, "b": account_two_id},
        ).scalar()
        if existing:
            raise ConflictError(f"recon rule {existing} already maps {account_one_id} to {account_two_id}")
        _check_settings(conn, one.account_id, two, settings, rule_id=None)
        created = conn.execute(
            sa.text(
                "INSERT INTO recon_rules (id, merchant_id, account_one_id, account_two_id, priority, match_keys,"
                " amount_tolerance, amount_tolerance_pct, variance_account_id, date_window_days, aging_days,"
                " fee_account_id, group_by)"
                " VALUES (coalesce(:id, recon_new_id('rule')), :m, :a, :b, :priority, CAST(:keys AS jsonb),"
                " :tolerance, :pct, :variance, :window, :aging, :fee, :group_by)"
                " ON CONFLICT (id) DO NOTHING RETURNING id"
            ),
            {"id": rule_id, "m": one.merchant_id, "a": account_one_id, "b": account_two_id,
             **_settings_params(settings)},
        ).scalar()
    if created is None:
        raise ConflictError(f"rule id {rule_id!r} is already taken", field="rule_id")
    return created


def update_recon_rule(rule_id: str, changes: dict[str, object], *, db: Database) -> ReconRule:
    """Change some of a rule's settings (names of RuleSettings fields); its accounts stay. Checked
    as on creation; the rule row is locked, so two changes of one rule take turns."""
    unknown = sorted(set(changes) - {f.name for f in fields(RuleSettings)})
    if unknown:
        raise InvalidInputError(f"unknown rule setting(s): {', '.join(unknown)}", field=unknown[0])
    with db.begin() as conn:
        _lock_rules(conn)
        rule = get_rule(rule_id, conn)
        settings = _parse_settings(replace(_settings_of(rule), **changes))  # type: ignore[arg-type]
        if settings.priority is None:
            raise InvalidInputError("priority cannot be removed from a rule", field="priority")
        _check_settings(conn, rule.account_one_id, get_account(rule.account_two_id, conn), settings, rule_id=rule.id)
        conn.execute(
            sa.text(
                "UPDATE recon_rules SET priority = :priority, match_keys = CAST(:keys AS jsonb),"
                " amount_tolerance = :tolerance, amount_tolerance_pct = :pct, variance_account_id = :variance,"
                " date_window_days = :window, aging_days = :aging, fee_account_id = :fee, group_by = :group_by,"
                " updated_at = now()"
                " WHERE id = :id"
            ),
            {"id": rule.id, **_settings_params(settings)},
        )
        return get_rule(rule.id, conn)


def _lock_rules(conn: Connection) -> None:
    """Rule changes take turns (a transaction-scoped lock), so the tie check sees every other
    change; the engine only reads rules and never waits for it."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended('recon_rules', 0))"))


def _check_settings(conn: Connection, account_one_id: str, two: Account, settings: RuleSettings,
                    rule_id: str | None) -> None:
    """What the accounts decide: the variance account (same merchant and currency as the contra
    account, neither of the rule's own accounts) and no priority tie on either account."""
    for field, name in (("variance_account_id", "variance account"), ("fee_account_id", "fee account")):
        _check_side_account(conn, getattr(settings, field), field, name, account_one_id, two)
    if settings.priority is not None:
        tie = conn.execute(
            sa.text("SELECT id FROM recon_rules WHERE priority = :p AND id IS DISTINCT FROM :id"
                    " AND (account_one_id = :one OR account_two_id = :two) ORDER BY id LIMIT 1"),
            {"p": settings.priority, "id": rule_id, "one": account_one_id, "two": two.account_id},
        ).scalar()
        if tie:
            raise ConflictError(f"priority {settings.priority} is taken by rule {tie}, which applies to the same"
                                " account: choose another priority", field="priority")


def _check_side_account(conn: Connection, account_id: str | None, field: str, name: str, account_one_id: str,
                        two: Account) -> None:
    """A variance or fee account: same merchant and currency as the contra account, neither of the
    rule's own accounts (a leg booked there must not look like a line of the rule)."""
    if account_id is None:
        return
    side = get_account(account_id, conn)
    if side.account_id in (account_one_id, two.account_id):
        raise InvalidInputError(f"{name} {side.account_id} must differ from the rule's accounts", field=field)
    if side.merchant_id != two.merchant_id:
        raise InvalidInputError(f"{name} {side.account_id} belongs to merchant {side.merchant_id},"
                                f" not {two.merchant_id}", field=field)
    if side.currency != two.currency:
        raise InvalidInputError(f"{name} {side.account_id} is in {side.currency}, the contra account"
                                f" {two.account_id} in {two.currency}", field=field)


def _settings_params(settings: RuleSettings) -> dict[str, object]:
    return {"priority": settings.priority,
            "keys": json.dumps([{"line": line, "expected": expected} for line, expected in settings.match_keys]),
            "tolerance": settings.amount_tolerance, "pct": settings.amount_tolerance_pct,
            "variance": settings.variance_account_id, "window": settings.date_window_days,
            "aging": settings.aging_days, "fee": settings.fee_account_id, "group_by": settings.group_by}


def list_rules(conn: Connection) -> list[ReconRule]:
    """Every rule, by merchant, contra account and (priority, id): the order confirmations try them."""
    rows = conn.execute(sa.text(f"SELECT {_RULE_COLUMNS} FROM recon_rules ORDER BY merchant_id, account_two_id,"
                                " priority, id"))
    return [ReconRule.from_row(r) for r in rows]


def require_rule_for_mode(conn: Connection, account_id: str, mode: str) -> None:
    """Lines of `mode` on this account can be processed only if a rule names the account on that
    side: TRANSACTION lines arrive on a rule's account_one, CONFIRMATION lines on its account_two.
    Refused up front: every line would otherwise fail later as NoReconRuleFoundError."""
    get_account(account_id, conn)  # NotFoundError for an unknown account
    sides = conn.execute(
        sa.text("SELECT coalesce(bool_or(account_one_id = :a), false) AS account_one,"
                " coalesce(bool_or(account_two_id = :a), false) AS account_two"
                " FROM recon_rules WHERE account_one_id = :a OR account_two_id = :a"),
        {"a": account_id},
    ).one()._mapping
    side, other, other_mode = (("account_one", "account_two", "CONFIRMATION") if mode == "TRANSACTION"
                               else ("account_two", "account_one", "TRANSACTION"))
    if sides[side]:
        return
    hint = (f"it is a rule's {other}: its lines are {other_mode} lines" if sides[other]
            else f"create a rule with --{side.replace('_', '-')} {account_id} first")
    raise InvalidInputError(f"account {account_id} is no recon rule's {side}, so {mode} lines on it could never"
                            f" be processed ({hint}); nothing was read or written", field="mode")


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
    """Rules with any of these accounts on either side, by (priority, id): the first applicable one wins."""
    if not account_ids:
        return []
    rows = conn.execute(
        sa.text(
            f"SELECT {_RULE_COLUMNS} FROM recon_rules"
            " WHERE account_one_id = ANY(:ids) OR account_two_id = ANY(:ids) ORDER BY priority, id"
        ),
        {"ids": list(account_ids)},
    )
    return [ReconRule.from_row(r) for r in rows]  # selected in field order


def _require_merchant(conn: Connection, merchant_id: str) -> None:
    get_merchant(merchant_id, conn)


# ---- reads and changes for the REST API: one page at a time, in key order ---------------------------


def get_merchant(merchant_id: str, conn: Connection) -> Merchant:
    row = conn.execute(
        sa.text("SELECT merchant_id, merchant_name, created_at FROM merchant_accounts WHERE merchant_id = :id"),
        {"id": merchant_id},
    ).first()
    if row is None:
        raise NotFoundError(f"no merchant with merchant_id {merchant_id!r}")
    return Merchant(*row)


def merchants_page(conn: Connection, after: str | None, limit: int) -> list[Merchant]:
    """Merchants in id order after `after` (None: from the start), at most `limit`."""
    rows = conn.execute(
        sa.text(
            "SELECT merchant_id, merchant_name, created_at FROM merchant_accounts"
            " WHERE CAST(:after AS text) IS NULL OR merchant_id > :after ORDER BY merchant_id LIMIT :limit"
        ),
        {"after": after, "limit": limit},
    )
    return [Merchant(*r) for r in rows]


def accounts_page(conn: Connection, merchant_id: str | None, after: str | None, limit: int) -> list[Account]:
    """Accounts (of one merchant, or all) in id order after `after`, at most `limit`."""
    rows = conn.execute(
        sa.text(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts"
            " WHERE (CAST(:merchant AS text) IS NULL OR merchant_id = :merchant)"
            " AND (CAST(:after AS text) IS NULL OR account_id > :after)"
            " ORDER BY account_id LIMIT :limit"
        ),
        {"merchant": merchant_id, "after": after, "limit": limit},
    )
    return [Account(*r) for r in rows]  # selected in field order


def rename_account(account_id: str, account_name: str, *, db: Database) -> Account:
    name = _name(account_name, "account_name")
    with db.begin() as conn:
        row = conn.execute(
            sa.text(f"UPDATE accounts SET account_name = :name WHERE account_id = :id RETURNING {_ACCOUNT_COLUMNS}"),
            {"id": account_id, "name": name},
        ).first()
    if row is None:
        raise NotFoundError(f"no account with account_id {account_id!r}")
    return Account(*row)


# what refers to an account, by the table the database names in a foreign key violation
_REFERRERS = {"entries": "ledger entries", "staging_entries": "staging entries", "recon_rules": "recon rules"}


def delete_account(account_id: str, *, db: Database) -> None:
    """Delete an account nothing refers to. Its foreign keys decide, in the same statement, so an
    entry booked concurrently either waits for the delete (and fails) or makes it fail."""
    try:
        with db.begin() as conn:
            deleted = conn.execute(
                sa.text("DELETE FROM accounts WHERE account_id = :id RETURNING account_id"), {"id": account_id}
            ).first()
    except sa.exc.IntegrityError as exc:
        if not isinstance(exc.orig, psycopg.errors.ForeignKeyViolation):
            raise
        table = exc.orig.diag.table_name or "another table"
        raise ConflictError(
            f"account {account_id} cannot be deleted: {_REFERRERS.get(table, table)} refer to it"
        ) from None
    if deleted is None:
        raise NotFoundError(f"no account with account_id {account_id!r}")


_RULE_COLUMNS = (
    "id, merchant_id, account_one_id, account_two_id, priority, match_keys, amount_tolerance,"
    " amount_tolerance_pct, variance_account_id, date_window_days, aging_days, fee_account_id, group_by"
)


def delete_recon_rule(rule_id: str, *, db: Database) -> None:
    """Delete a rule no ledger row refers to (an expected leg names the rule that booked it in its
    metadata.recon_rule_id). The rule row is locked first, so two changes of one rule take turns."""
    from recon import ledger  # here, not at the top: the ledger reads accounts for its balances

    with db.begin() as conn:
        found = conn.execute(sa.text("SELECT id FROM recon_rules WHERE id = :id FOR UPDATE"), {"id": rule_id}).first()
        if found is None:
            raise NotFoundError(f"no recon rule with id {rule_id!r}")
        if ledger.rule_is_referenced(conn, rule_id):
            raise ConflictError(f"recon rule {rule_id} is referenced by ledger entries (metadata.recon_rule_id)"
                                " and cannot be deleted")
        conn.execute(sa.text("DELETE FROM recon_rules WHERE id = :id"), {"id": rule_id})


def get_rule(rule_id: str, conn: Connection) -> ReconRule:
    row = conn.execute(sa.text(f"SELECT {_RULE_COLUMNS} FROM recon_rules WHERE id = :id"), {"id": rule_id}).first()
    if row is None:
        raise NotFoundError(f"no recon rule with id {rule_id!r}")
    return ReconRule.from_row(row)


def rules_page(conn: Connection, merchant_id: str | None, after: str | None, limit: int) -> list[ReconRule]:
    """Rules (of one merchant, or all) in id order after `after`, at most `limit`."""
    rows = conn.execute(
        sa.text(
            f"SELECT {_RULE_COLUMNS} FROM recon_rules"
            " WHERE (CAST(:merchant AS text) IS NULL OR merchant_id = :merchant)"
            " AND (CAST(:after AS text) IS NULL OR id > :after) ORDER BY id LIMIT :limit"
        ),
        {"merchant": merchant_id, "after": after, "limit": limit},
    )
    return [ReconRule.from_row(r) for r in rows]
