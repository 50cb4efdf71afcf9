"""Books and staging entries written with plain SQL, as any producer could."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
import psycopg.rows


class Seed:
    """One merchant with a bank account (entries arrive here) and its contra account."""

    def __init__(self, url: str):
        self.url = url
        with self.connect() as c:
            c.execute("INSERT INTO merchant_accounts (merchant_id, merchant_name) VALUES ('mer_t', 'Acme')")
            c.execute(
                "INSERT INTO accounts (account_id, merchant_id, account_name, account_type, currency) VALUES"
                " ('acc_bank', 'mer_t', 'Bank USD', 'DEBIT_NORMAL', 'USD'),"
                " ('acc_psp', 'mer_t', 'PSP clearing USD', 'CREDIT_NORMAL', 'USD'),"
                " ('acc_norule', 'mer_t', 'Bank without rule', 'DEBIT_NORMAL', 'USD')"
            )
            c.execute(
                "INSERT INTO recon_rules (id, merchant_id, account_one_id, account_two_id)"
                " VALUES ('rule_t', 'mer_t', 'acc_bank', 'acc_psp')"
            )

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def stage(
        self,
        account: str,
        side: str,
        amount: str,
        mode: str,
        order_id: str | None = None,
        created_at: dt.datetime | None = None,
    ) -> tuple[str, str]:
        """A staging entry and its PENDING tracker task in one statement; (staging_entry_id, task_id)."""
        metadata = {"order_id": order_id} if order_id else {}
        with self.connect() as c:
            row = c.execute(
                """
                WITH s AS (
                    INSERT INTO staging_entries
                        (account_id, entry_type, amount, currency, processing_mode, metadata, created_at)
                    VALUES (%s, %s, %s, 'USD', %s, %s::jsonb, coalesce(%s, now()))
                    RETURNING staging_entry_id, created_at
                )
                INSERT INTO process_tracker (task_type, payload, created_at)
                SELECT 'PROCESS_STAGING_ENTRY', jsonb_build_object('staging_entry_id', staging_entry_id), created_at
                FROM s
                RETURNING payload ->> 'staging_entry_id', task_id
                """,
                (account, side, amount, mode, json.dumps(metadata), created_at),
            ).fetchone()
        return row[0], row[1]

    def one(self, sql: str, *params: Any) -> Any:
        with self.connect() as c:
            return c.execute(sql, params).fetchone()

    def all(self, sql: str, *params: Any) -> list[Any]:
        with self.connect() as c:
            return c.execute(sql, params).fetchall()

    def task(self, task_id: str) -> Any:
        with self.connect() as c:
            c.row_factory = psycopg.rows.dict_row
            return c.execute("SELECT * FROM process_tracker WHERE task_id = %s", (task_id,)).fetchone()

    def staging(self, staging_entry_id: str) -> Any:
        with self.connect() as c:
            c.row_factory = psycopg.rows.dict_row
            return c.execute(
                "SELECT * FROM staging_entries WHERE staging_entry_id = %s", (staging_entry_id,)
            ).fetchone()

    def task_statuses(self) -> dict[str, int]:
        return dict(self.all("SELECT status, count(*) FROM process_tracker GROUP BY status"))

    def snapshot(self) -> list[Any]:
        """Every row the engine could write, to compare before and after a run."""
        return [
            self.all(f"SELECT * FROM {table} ORDER BY 1")
            for table in ("process_tracker", "staging_entries", "transactions", "entries")
        ]
