"""Bulk writes of a chunk's rows: COPY for plain inserts, one JSON document for the rest.

A chunk writes thousands of rows per statement. Plain inserts go through COPY (``copy_rows``):
PostgreSQL skips the executor's per-row work and psycopg's C writer encodes the rows, which
cut the ledger's inserts by about a third against ``json_to_recordset`` (bench/RESULTS.md).
Statements that join their rows with a table (an UPDATE ... FROM) take them as one JSON
document (``json_rows``): one json.dumps (C) instead of one array parameter per column, which
psycopg would escape element by element in Python. Decimal and datetime travel as their exact
text forms either way and are parsed by the column types (numeric, timestamptz).
"""

from __future__ import annotations

import json
import operator
from dataclasses import fields
from typing import Any, Iterable, Sequence

import psycopg
import sqlalchemy.exc
from sqlalchemy.engine import Connection

from recon.json_encoding import json_scalar


def json_rows(rows: Iterable[Any]) -> str:
    """Dataclass rows as one JSON array of objects, for json_to_recordset()."""
    rows = list(rows)
    if not rows:
        return "[]"
    names = tuple(f.name for f in fields(rows[0]))
    values = operator.attrgetter(*names)
    return json.dumps([dict(zip(names, values(r))) for r in rows], default=json_scalar, separators=(",", ":"))


def copy_statement(table: str, row_type: type) -> str:
    """``COPY table (the row type's fields, in order) FROM STDIN``: the column list cannot drift
    from the dataclass that ``copy_rows`` writes."""
    return f"COPY {table} ({', '.join(f.name for f in fields(row_type))}) FROM STDIN"


def copy_rows(conn: Connection, statement: str, rows: Sequence[Any]) -> None:
    """Write dataclass rows with a ``copy_statement`` in the caller's transaction. A dict field is
    written as JSON (for a jsonb column).

    Errors surface as SQLAlchemy's exception classes, as they do from ``conn.execute``, so the
    retry policy and error handling see one kind of database error whichever way a row was written.
    """
    if not rows:
        return
    values = operator.attrgetter(*(f.name for f in fields(rows[0])))
    dumps = json.JSONEncoder(default=json_scalar, separators=(",", ":")).encode
    try:
        with conn.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([dumps(v) if type(v) is dict else v for v in values(row)])
    except psycopg.Error as exc:
        raise sqlalchemy.exc.DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
