"""Cursor pagination for every list: opaque keyset cursors.

A page is ``{"items": [...], "next_cursor": "..." | null}``. The cursor holds the sort key of the
page's last item (and the list it belongs to), so the next page starts right after it along an
index, whatever was inserted meanwhile: no OFFSET, no item skipped or repeated. It is opaque to
clients (base64url of JSON) and checked when it comes back: a cursor that was altered or belongs
to another list is a 422 naming ``cursor``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from typing import Annotated, Any, Callable, Generic, Sequence, TypeVar

from fastapi import Query
from pydantic import BaseModel

from recon.web.api.problems import INVALID_INPUT, Problem

DEFAULT_LIMIT = 100
MAX_LIMIT = 1_000

Item = TypeVar("Item")

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"items per page (1 to {MAX_LIMIT})")]
CursorParam = Annotated[str | None, Query(max_length=2_000, description="next_cursor of the previous page")]


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    next_cursor: str | None = None


def encode_cursor(list_name: str, key: Sequence[str | dt.datetime]) -> str:
    values = [v.isoformat() if isinstance(v, dt.datetime) else v for v in key]
    raw = json.dumps({"list": list_name, "after": values}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(list_name: str, cursor: str | None, parts: Sequence[Callable[[str], Any]]) -> tuple | None:
    """The sort key a cursor of `list_name` holds, each part read by its parser (str, timestamp)."""
    if cursor is None:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(data, dict) or data.get("list") != list_name:
            raise ValueError("a cursor of another list")
        values = data["after"]
        if not isinstance(values, list) or len(values) != len(parts) or not all(isinstance(v, str) for v in values):
            raise ValueError("not a cursor")
        return tuple(parse(v) for parse, v in zip(parts, values))
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise Problem(INVALID_INPUT, "cursor is not a next_cursor this list returned", field="cursor") from None


def decode_id_cursor(list_name: str, cursor: str | None) -> str | None:
    """The id a cursor of a list in id order holds (None: the first page)."""
    after = decode_cursor(list_name, cursor, (str,))
    return after[0] if after else None


def timestamp(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("a naive time")
    return value


def page(list_name: str, rows: Sequence[Item], limit: int, key: Callable[[Item], Sequence[str | dt.datetime]]) -> tuple[list[Item], str | None]:
    """The first `limit` of `rows` (fetched as limit + 1) and the cursor after them, if more follow."""
    if len(rows) <= limit:
        return list(rows), None
    shown = list(rows[:limit])
    return shown, encode_cursor(list_name, key(shown[-1]))
