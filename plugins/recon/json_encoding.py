"""JSON for what the engine shows: money as exact strings, times as ISO 8601.

One encoder for the CLI's ``--json`` output and the Recon view, so a figure reads the same in
both. A Decimal becomes its exact text, never a float (``0.1000`` must not turn into
``0.1`` or ``0.1000000000000000055``); a datetime or date becomes ISO 8601.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from decimal import Decimal
from typing import Any, Mapping


def json_scalar(value: Any) -> str:
    """The JSON text of a Decimal or a datetime/date; usable as ``json.dumps(default=...)``.

    Anything else is refused: a silent ``str()`` would hide a value that should not be in JSON.
    """
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.date):  # a datetime is a date too
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of ``value``: Decimals and datetimes converted, through mappings, dataclasses
    and sequences."""
    if isinstance(value, (Decimal, dt.date)):
        return json_scalar(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # rows the CLI prints as JSON
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`jsonable` (``kwargs`` such as ``indent`` go to ``json.dumps``)."""
    return json.dumps(jsonable(value), **kwargs)
