"""Reliability tests: crashes, database faults, concurrency, poison tasks, bad input, invariants.

Every test asserts on the database at the end (helpers.assert_books_consistent). The figures
they produce (faults injected, tasks processed under faults, bad inputs tried, entries lost,
entries booked twice) are written to test-artifacts/guarantees.json at the end of the session
and summarised in one line, for the README's "Guarantees" section.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from recon.db import Database
from tests import databases
from tests.reliability import figures
from tests.reliability.helpers import ENGINE_SETTINGS, REPO_ROOT, Books, make_books

ARTIFACT = REPO_ROOT / "test-artifacts" / "guarantees.json"
_HERE = Path(__file__).parent
_outcomes: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": []}
_merged: dict[str, Any] | None = None  # the controller's merge of xdist workers' figures


@pytest.fixture(autouse=True)
def engine_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENGINE_SETTINGS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def books(db: Database) -> Books:
    return make_books(db)


@pytest.fixture
def second_db(pg_admin_url: str, pg_template: str) -> Iterator[Database]:
    """Another fresh migrated database, e.g. for a one-at-a-time reference run of the same input."""
    name = databases.create_test_database(pg_admin_url, pg_template)
    database = Database(databases.libpq_url(pg_admin_url, name), "second")
    try:
        yield database
    finally:
        database.dispose()
        databases.drop_database(pg_admin_url, name)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not Path(str(report.fspath)).resolve().is_relative_to(_HERE):
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _outcomes[report.outcome].append(report.nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist controller: collect a worker's figures and outcomes."""
    global _merged
    part = getattr(node, "workeroutput", {}).get("recon_guarantees")
    if not part:
        return
    _merged = _merged or {"figures": {}, "details": {}}
    figures.merge(_merged, part)
    for key, ids in part.get("outcomes", {}).items():
        _outcomes[key].extend(ids)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    snapshot = figures.snapshot()
    if hasattr(config, "workerinput"):  # an xdist worker: hand the figures to the controller
        config.workeroutput["recon_guarantees"] = {**snapshot, "outcomes": _outcomes}
        return
    if _merged is not None:
        figures.merge(_merged, snapshot)
        snapshot = _merged
    ran = sum(len(v) for v in _outcomes.values())
    if not ran:
        return
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": "tests/reliability (pytest)",
        "tests": {k: len(v) for k, v in _outcomes.items()},
        "failed_tests": _outcomes["failed"],
        "all_passed": not _outcomes["failed"] and not _outcomes["skipped"],
        **snapshot,
    }
    ARTIFACT.write_text(json.dumps(document, indent=2, default=str) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ARTIFACT.exists() or not any(_outcomes.values()):
        return
    data = json.loads(ARTIFACT.read_text())
    f = data["figures"]
    terminalreporter.write_line(
        "reliability guarantees: {faults_injected} faults injected, {tasks_processed_under_faults} tasks"
        " processed under faults, {bad_inputs_tried} bad inputs tried, {entries_checked} entries checked,"
        " {entries_lost} lost, {entries_booked_twice} booked twice -> ".format(**f)
        + os.path.relpath(ARTIFACT, REPO_ROOT)
    )
