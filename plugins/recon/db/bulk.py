"""Bulk statement parameters: a chunk's rows as one JSON document.

One json.dumps (C) per statement instead of one array parameter per column: psycopg escapes
every element of a text or jsonb array in Python, which cost more than the statement itself
for a chunk of thousands of rows. Decimal and datetime travel as their exact text forms and
are parsed by the column types (numeric, timestamptz) in ``json_to_recordset``.
"""

from __future__ import annotations

import json
import operator
from dataclasses import fields
from typing import Any, Iterable

from recon.json_encoding import json_scalar


def json_rows(rows: Iterable[Any]) -> str:
    """Dataclass rows as one JSON array of objects, for json_to_recordset()."""
    rows = list(rows)
    if not rows:
        return "[]"
    names = tuple(f.name for f in fields(rows[0]))
    values = operator.attrgetter(*names)
    return json.dumps([dict(zip(names, values(r))) for r in rows], default=json_scalar, separators=(",", ":"))
