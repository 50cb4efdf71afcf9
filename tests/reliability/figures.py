"""Figures the reliability tests produce, for the README's "Guarantees" section.

Tests add to these counters as they inject faults and check the books; the session writes
them to ``test-artifacts/guarantees.json`` (see conftest.py). Nothing here is hard-coded:
``entries_lost`` and ``entries_booked_twice`` are what ``assert_books_consistent`` counted
in the database at the end of each test.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

# faults_injected            kills, terminated connections, timeouts, deadlocks, restarts, poison raises
# tasks_processed_under_faults  tasks of a faulted run that ended final after recovery
# bad_inputs_tried           malformed payloads, unknown task types, injection strings, ...
# entries_checked            staging entries checked by assert_books_consistent at the end of a test
# entries_lost / entries_booked_twice  violations found by that check (must stay 0)
COUNTERS: Counter[str] = Counter()
DETAILS: dict[str, Any] = {}

HEADLINE = (
    "faults_injected",
    "tasks_processed_under_faults",
    "bad_inputs_tried",
    "entries_checked",
    "entries_lost",
    "entries_booked_twice",
)


def record(**counts: int) -> None:
    COUNTERS.update({k: int(v) for k, v in counts.items()})


def note(key: str, value: Any) -> None:
    """A named detail (e.g. the concurrency size and its duration)."""
    DETAILS[key] = value


def snapshot() -> dict[str, Any]:
    counters = {k: COUNTERS.get(k, 0) for k in HEADLINE}
    counters.update({k: v for k, v in sorted(COUNTERS.items()) if k not in counters})
    return {"figures": counters, "details": dict(sorted(DETAILS.items()))}


def merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    """Add a worker's snapshot (pytest-xdist) to the controller's."""
    for key, value in part.get("figures", {}).items():
        into["figures"][key] = into["figures"].get(key, 0) + value
    into["details"].update(part.get("details", {}))
