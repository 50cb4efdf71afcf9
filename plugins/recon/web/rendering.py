"""How the Recon view's pages are rendered: the Jinja templates, their filters, Markdown to HTML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from markdown_it import MarkdownIt

from recon import json_encoding
from recon.money import format_money

TEMPLATES_DIR = Path(__file__).parent / "templates"


def ago(seconds: float | None) -> str:
    """A duration for people: '42 s', '5 min', '1.5 h', '2.0 d' (negative: in the future)."""
    if seconds is None:
        return "–"
    seconds = float(seconds)
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 60:
        return f"{sign}{s:.0f} s"
    if s < 3600:
        return f"{sign}{s / 60:.0f} min"
    if s < 86400:
        return f"{sign}{s / 3600:.1f} h"
    return f"{sign}{s / 86400:.1f} d"


def when(value: Any) -> str:
    """A timestamp to the second with its zone; anything else as text."""
    if value is None:
        return "–"
    try:
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except AttributeError:
        return str(value)


def pretty_json(value: Any) -> str:
    """Indented JSON (money exact) for the trigger confs a user may read and edit."""
    return json_encoding.dumps(value, indent=2)


def markdown_html(text: str) -> str:
    """A run summary's Markdown as HTML; raw HTML in the text is not passed through."""
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    autoescape=jinja2.select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["ago"] = ago
templates.filters["when"] = when
templates.filters["tojson_pretty"] = pretty_json
templates.filters["money"] = format_money


def render(template_name: str, context: dict[str, Any]) -> str:
    return templates.get_template(template_name).render(context)
