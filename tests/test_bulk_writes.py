"""recon.db.copy_rows: a chunk's rows written with COPY arrive exactly, and a bad row fails the
whole write with the same SQLAlchemy error an INSERT raises, leaving nothing behind."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.exc

from recon.db import copy_rows, copy_statement
from recon.ledger import NewEntry


@dataclass(frozen=True, slots=True)
class ProbeRow:
    probe_id: str
    amount: Decimal
    booked_at: dt.datetime
    document: dict[str, Any]
    parent_id: str | None = None


@pytest.fixture
def probe_tables(db):
    with db.begin() as conn:
        conn.execute(sa.text("CREATE TABLE probe_parents (parent_id text PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO probe_parents VALUES ('p1')"))
        conn.execute(sa.text(
            "CREATE TABLE probes (probe_id text PRIMARY KEY, amount numeric(20, 4) NOT NULL,"
            " booked_at timestamptz NOT NULL, document jsonb NOT NULL,"
            " parent_id text REFERENCES probe_parents (parent_id))"
        ))
    return db


def test_copy_statement_lists_the_row_type_fields_in_order():
    assert copy_statement("probes", ProbeRow) == (
        "COPY probes (probe_id, amount, booked_at, document, parent_id) FROM STDIN")
    assert copy_statement("entries", NewEntry).startswith("COPY entries (entry_id, account_id, transaction_id,")


def test_rows_arrive_exactly(probe_tables):
    booked_at = dt.datetime(2026, 12, 5, 9, 30, 15, 123456, tzinfo=dt.timezone.utc)
    rows = [
        ProbeRow("a", Decimal("0.1000"), booked_at, {"fee": Decimal("1.25"), "note": "tab\there, \\ and \"quotes\""}, "p1"),
        ProbeRow("b", Decimal("12345678901234.5678"), booked_at, {"nested": {"list": [1, "x", None]}}),
    ]
    with probe_tables.begin() as conn:
        copy_rows(conn, copy_statement("probes", ProbeRow), rows)
    with probe_tables.begin() as conn:
        stored = conn.execute(sa.text("SELECT * FROM probes ORDER BY probe_id")).all()
    assert [tuple(r) for r in stored] == [
        ("a", Decimal("0.1000"), booked_at, {"fee": "1.25", "note": "tab\there, \\ and \"quotes\""}, "p1"),
        ("b", Decimal("12345678901234.5678"), booked_at, {"nested": {"list": [1, "x", None]}}, None),
    ]


def test_a_bad_row_raises_the_insert_error_and_writes_nothing(probe_tables):
    now = dt.datetime.now(dt.timezone.utc)
    rows = [ProbeRow("ok", Decimal("1"), now, {}, "p1"), ProbeRow("orphan", Decimal("2"), now, {}, "no-such-parent")]
    with pytest.raises(sqlalchemy.exc.IntegrityError, match="probes_parent_id_fkey"):
        with probe_tables.begin() as conn:
            conn.execute(sa.text("INSERT INTO probe_parents VALUES ('p2')"))
            copy_rows(conn, copy_statement("probes", ProbeRow), rows)
    with probe_tables.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM probes")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM probe_parents")).scalar_one() == 1


def test_nothing_to_write_sends_nothing(probe_tables):
    with probe_tables.begin() as conn:
        copy_rows(conn, "COPY no_such_table (x) FROM STDIN", [])  # never sent: no error
