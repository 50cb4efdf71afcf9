"""Reprocess by scope from the CLI: a filter (error type, account) instead of ids, a dry run that
says what it would reopen, and mismatches left alone when asked (issue 18, problems 1, 2 and 4)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tests.dags.seed import Seed
from tests.test_cli_inputs import run, snapshot


@pytest.fixture
def exceptions(db_url: str, capsys) -> Seed:
    """One mismatch (expected 10.00, got 9.00) and two lines without a rule, processed."""
    seed = Seed(db_url)
    seed.stage("acc_bank", "DEBIT", "10.00", "TRANSACTION", "M-1")
    seed.stage("acc_psp", "CREDIT", "9.00", "CONFIRMATION", "M-1")
    seed.stage("acc_norule", "DEBIT", "12.00", "TRANSACTION", "NR-1")
    seed.stage("acc_norule", "DEBIT", "13.00", "TRANSACTION", "NR-2")
    assert run(capsys, "process")[0] == 0
    return seed


def review_types(seed: Seed) -> list[str]:
    return sorted(r[0] for r in seed.all("SELECT metadata ->> 'error_type' FROM staging_entries"
                                         " WHERE status = 'NEEDS_MANUAL_REVIEW'"))


def window() -> list[str]:
    now = dt.datetime.now(dt.timezone.utc)
    return ["--created-from", (now - dt.timedelta(hours=1)).isoformat(),
            "--created-to", (now + dt.timedelta(hours=1)).isoformat()]


def test_a_dry_run_reports_the_scope_by_error_type_and_writes_nothing(db_url, exceptions, capsys):
    before = snapshot(db_url)
    code, err, out = run(capsys, "reprocess", *window(), "--dry-run", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["entries_by_error_type"] == {"NoReconRuleFoundError": 2, "MismatchError": 1}
    assert result["entries"] == 3 and result["failed_tasks"] == 3  # a business exception FAILs its task
    assert snapshot(db_url) == before
    code, err, out = run(capsys, "reprocess", "--error-type", "MismatchError", "--dry-run")
    assert "reopen 1 entries" in out and "MismatchError: 1" in out


def test_reprocess_by_error_type_reopens_only_that_reason(db_url, exceptions, capsys):
    code, err, out = run(capsys, "reprocess", "--error-type", "NoReconRuleFoundError")
    assert code == 0, err
    assert "requeued 2 FAILED task(s); reopened 2 entries" in out
    assert review_types(exceptions) == ["MismatchError"]
    assert exceptions.one("SELECT count(*) FROM process_tracker WHERE status = 'PENDING'")[0] == 2


def test_reprocess_by_account(db_url, exceptions, capsys):
    code, err, out = run(capsys, "reprocess", "--account", "acc_psp")
    assert code == 0, err
    assert "reopened 1 entries" in out and review_types(exceptions) == ["NoReconRuleFoundError"] * 2


def test_a_window_can_leave_mismatches_alone(db_url, exceptions, capsys):
    code, err, out = run(capsys, "reprocess", *window(), "--exclude-error-type", "MismatchError")
    assert code == 0, err
    assert "requeued 2 FAILED task(s); reopened 2 entries" in out and review_types(exceptions) == ["MismatchError"]
    assert exceptions.one("SELECT count(*) FROM process_tracker WHERE status = 'FAILED'")[0] == 1


def test_a_dry_run_says_what_decide_and_validate_would_make_of_each_entry(db_url, exceptions, capsys):
    before = snapshot(db_url)
    history = exceptions.one("SELECT count(*) FROM staging_entry_outcomes")[0]

    code, err, out = run(capsys, "reprocess", *window(), "--dry-run", "--json")

    assert code == 0, err
    result = json.loads(out)
    by_entry = {e["staging_entry_id"]: (e["error_type"], e["would"]) for e in result["preview"]}
    assert sorted(by_entry.values()) == [("MismatchError", "MismatchError"),  # judged against its leg again
                                         ("NoReconRuleFoundError", "NoReconRuleFoundError"),
                                         ("NoReconRuleFoundError", "NoReconRuleFoundError")]
    assert result["would"] == {"NoReconRuleFoundError": 2, "MismatchError": 1}
    mismatch = next(e for e in result["preview"] if e["would"] == "MismatchError")
    assert "expected" in mismatch["detail"] and mismatch["task_id"]
    assert snapshot(db_url) == before  # the savepoint rolled back: nothing reopened or queued
    assert exceptions.one("SELECT count(*) FROM staging_entry_outcomes")[0] == history

    code, err, out = run(capsys, "reprocess", "--error-type", "MismatchError", "--dry-run")
    assert code == 0, err
    assert "what decide/validate would say now:" in out and "MismatchError: 1" in out
    (line,) = [l for l in out.splitlines() if l.startswith(mismatch["staging_entry_id"])]
    assert line.split()[1:3] == ["MismatchError", "MismatchError"]
