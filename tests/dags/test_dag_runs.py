"""recon_process_tracker end to end with dag.test() on a real recon database (PostgreSQL)."""

from __future__ import annotations

import datetime as dt

import pytest

from recon.reporting import run_summaries
from tests.dags.seed import Seed

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

UTC = dt.timezone.utc


@pytest.fixture
def seed(db_url: str) -> Seed:
    return Seed(db_url)


def states(dag_run, task_id: str) -> list[str]:
    return [state for tid, _, state, _ in dag_run.tis if tid == task_id]


def test_mixed_entries_end_final_with_labelled_chunks(run_dag, seed):
    booked = [seed.stage("acc_bank", "DEBIT", "100.00", "TRANSACTION", f"o-{i}") for i in range(3)]
    duplicate = seed.stage("acc_bank", "DEBIT", "100.00", "TRANSACTION", "o-0")
    no_rule = seed.stage("acc_norule", "DEBIT", "5.00", "TRANSACTION", "o-x")
    first = run_dag({"chunk_size": 2})
    assert first.state == "success"

    confirmations = {
        "match": seed.stage("acc_psp", "CREDIT", "100.00", "CONFIRMATION", "o-1"),
        "mismatch": seed.stage("acc_psp", "CREDIT", "99.00", "CONFIRMATION", "o-2"),
        "unmatched": seed.stage("acc_psp", "CREDIT", "7.00", "CONFIRMATION", "nope"),
    }
    second = run_dag({"chunk_size": 2})
    assert second.state == "success"

    # every task reached a final state; nothing is left leased
    assert seed.task_statuses().keys() <= {"COMPLETED", "FAILED"}
    assert seed.one("SELECT count(*) FROM process_tracker WHERE lease_owner IS NOT NULL")[0] == 0

    assert first.summary["claimed"] == 5 and first.summary["booked"] == 3
    assert first.summary["completed"] + first.summary["failed"] == 5
    assert second.summary["claimed"] == 3 and second.summary["matched"] == 1
    assert second.summary["mismatched"] == 1 and second.summary["manual_review"] == 2

    for staging_id, task_id in booked[1:]:
        assert seed.staging(staging_id)["status"] == "PROCESSED"
        assert seed.task(task_id)["status"] == "COMPLETED"
    # o-0 twice: whichever was processed first is booked, the other is a duplicate
    o_0 = sorted(
        (seed.staging(s)["status"], seed.staging(s)["metadata"].get("error_type"), seed.task(t)["status"])
        for s, t in (booked[0], duplicate)
    )
    assert o_0 == [("NEEDS_MANUAL_REVIEW", "DuplicateOrderError", "FAILED"), ("PROCESSED", None, "COMPLETED")]
    assert seed.staging(no_rule[0])["metadata"]["error_type"] == "NoReconRuleFoundError"
    match = seed.staging(confirmations["match"][0])
    assert match["status"] == "PROCESSED" and match["metadata"]["match_type"] == "Phase2_Fulfilled"
    assert seed.staging(confirmations["mismatch"][0])["metadata"]["error_type"] == "MismatchError"
    assert seed.staging(confirmations["unmatched"][0])["metadata"]["error_type"] == "NoMatchFoundError"
    # o-1 fulfilled: version 1 archived, version 2 posted; o-2 in MISMATCH; o-0 still expected
    txns = dict(seed.all("SELECT logical_transaction_id || ':' || version, status FROM transactions"))
    assert txns == {
        "acc_bank_o-0:1": "EXPECTED",
        "acc_bank_o-1:1": "ARCHIVED",
        "acc_bank_o-1:2": "POSTED",
        "acc_bank_o-2:1": "MISMATCH",
    }

    # 5 tasks in chunks of 2: three mapped instances per step, labelled in the Grid
    for task_id in ("chunk.decide", "chunk.validate", "chunk.run"):
        labels = [label for tid, _, _, label in first.tis if tid == task_id]
        assert labels == ["chunk 1 · 2 tasks", "chunk 2 · 2 tasks", "chunk 3 · 1 task"], task_id
        assert states(first, task_id) == ["success"] * 3
    assert states(first, "write_back") == ["success"] and states(first, "summary") == ["success"]


def test_empty_queue_is_a_successful_run_with_skipped_chunks(run_dag, seed):
    dag_run = run_dag()
    assert dag_run.state == "success"
    assert dag_run.summary["claimed"] == 0 and dag_run.summary["completed"] == 0
    for task_id in ("chunk.decide", "chunk.validate", "chunk.run"):
        assert states(dag_run, task_id) == ["skipped"], task_id
    for task_id in ("reap", "claim", "write_back", "summary"):
        assert states(dag_run, task_id) == ["success"], task_id


def test_chunks_that_never_ran_are_written_back_as_retry(run_dag, seed):
    """The run step of every chunk is marked success without running (as if its worker vanished)."""
    tasks = [seed.stage("acc_bank", "DEBIT", "1.00", "TRANSACTION", f"v-{i}")[1] for i in range(4)]
    dag_run = run_dag({"chunk_size": 3}, mark_success_pattern=r"chunk\.run")

    assert dag_run.state == "failed"  # the summary says chunks did not finish
    assert states(dag_run, "write_back") == ["success"]
    assert states(dag_run, "summary") == ["failed"]
    for task_id in tasks:
        task = seed.task(task_id)
        assert task["status"] == "RETRY" and task["lease_owner"] is None, task
        assert task["last_error"] and task["attempts"] == 1
    assert dag_run.summary["claimed"] == 4 and dag_run.summary["retried"] == 4
    assert seed.one("SELECT count(*) FROM transactions")[0] == 0


def test_a_chunk_whose_run_fails_leaves_its_tasks_retryable(run_dag, seed):
    """A database error inside one chunk's transaction: that chunk's tasks end RETRY, the others finish."""
    good = [seed.stage("acc_bank", "DEBIT", "1.00", "TRANSACTION", f"g-{i}")[1] for i in range(2)]
    bad_entry, bad_task = seed.stage("acc_bank", "DEBIT", "1.00", "TRANSACTION", "bad")
    with seed.connect() as c:
        c.execute(
            """
            CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'disk full (simulated) writing %', NEW.staging_entry_id; END $$;
            """
        )
        c.execute(
            "CREATE TRIGGER refuse_bad BEFORE UPDATE ON staging_entries FOR EACH ROW"
            f" WHEN (NEW.staging_entry_id = '{bad_entry}') EXECUTE FUNCTION refuse_bad()"
        )
    dag_run = run_dag({"chunk_size": 1})

    assert "PROCESSING" not in seed.task_statuses()
    assert seed.task(bad_task)["status"] == "RETRY"
    assert "disk full" in seed.task(bad_task)["last_error"]
    assert seed.staging(bad_entry)["status"] == "PENDING"
    assert [seed.task(t)["status"] for t in good] == ["COMPLETED", "COMPLETED"]
    assert dag_run.summary["retried"] >= 1 and dag_run.summary["completed"] == 2


def test_dry_run_writes_nothing(run_dag, seed):
    seed.stage("acc_bank", "DEBIT", "10.00", "TRANSACTION", "d-1")
    seed.stage("acc_bank", "DEBIT", "10.00", "TRANSACTION", "d-2")
    seed.stage("acc_psp", "CREDIT", "10.00", "CONFIRMATION", "nothing-to-match")
    before = seed.snapshot()
    dag_run = run_dag({"dry_run": True, "chunk_size": 2})

    assert dag_run.state == "success"
    assert seed.snapshot() == before
    assert dag_run.summary["dry_run"] is True and dag_run.summary["due"] == 3
    assert sum(dag_run.summary["verdicts"].values()) == 3
    assert states(dag_run, "chunk.validate") == ["success", "success"]
    assert states(dag_run, "chunk.run") == ["skipped", "skipped"]


def test_a_misspelt_conf_key_fails_the_run_before_anything_is_claimed(run_dag, seed):
    seed.stage("acc_bank", "DEBIT", "10.00", "TRANSACTION", "k-1")
    before = seed.snapshot()
    dag_run = run_dag({"dryrun": True})

    assert dag_run.state == "failed"
    assert states(dag_run, "claim") == ["failed"]
    assert seed.snapshot() == before  # nothing claimed, booked or requeued


def test_a_dry_run_of_a_reprocess_reports_its_scope_and_writes_nothing(run_dag, seed):
    now = dt.datetime.now(UTC)
    _fail_without_rule(seed, "s-1", now)
    _fail_without_rule(seed, "s-2", now)
    run_dag()
    before = seed.snapshot()
    dag_run = run_dag({"dry_run": True, "reprocess": {"error_type": "NoReconRuleFoundError"}})

    assert dag_run.state == "success"
    assert seed.snapshot() == before
    scope = dag_run.summary["reprocess_scope"]
    assert scope["entries"] == 2 and scope["entries_by_error_type"] == {"NoReconRuleFoundError": 2}
    # entry by entry, what decide/validate would make of each (still no rule: the same reason)
    assert [(e["error_type"], e["would"]) for e in scope["preview"]] == [("NoReconRuleFoundError",) * 2] * 2
    assert scope["would"] == {"NoReconRuleFoundError": 2} and scope["preview_not_shown"] == 0
    markdown = run_summaries.summary_markdown(dag_run.summary)
    assert "| entry | now | would be | why |" in markdown
    assert sum(line.startswith("| `") for line in markdown.splitlines()) == 2


def _fail_without_rule(seed: Seed, order_id: str, created_at: dt.datetime) -> tuple[str, str]:
    return seed.stage("acc_norule", "DEBIT", "3.00", "TRANSACTION", order_id, created_at=created_at)


def test_reprocess_window_requeues_and_processes_only_that_scope(run_dag, seed):
    now = dt.datetime.now(UTC)
    last_week = _fail_without_rule(seed, "r-1", now - dt.timedelta(days=3))
    long_ago = _fail_without_rule(seed, "r-2", now - dt.timedelta(days=30))
    run_dag()
    for staging_id, task_id in (last_week, long_ago):
        assert seed.staging(staging_id)["status"] == "NEEDS_MANUAL_REVIEW"
        assert seed.task(task_id)["status"] == "FAILED"

    # fix the rule, then reprocess last week's exceptions
    with seed.connect() as c:
        c.execute("INSERT INTO accounts (account_id, merchant_id, account_name, account_type, currency)"
                  " VALUES ('acc_contra', 'mer_t', 'Contra', 'CREDIT_NORMAL', 'USD')")
        c.execute("INSERT INTO recon_rules (merchant_id, account_one_id, account_two_id)"
                  " VALUES ('mer_t', 'acc_norule', 'acc_contra')")
    window = {"created_from": (now - dt.timedelta(days=7)).isoformat(), "created_to": now.isoformat()}
    dag_run = run_dag({"reprocess": window})

    assert dag_run.state == "success"
    assert seed.staging(last_week[0])["status"] == "PROCESSED"
    assert seed.staging(long_ago[0])["status"] == "NEEDS_MANUAL_REVIEW"
    assert seed.task(long_ago[1])["status"] == "FAILED"
    assert dag_run.summary["claimed"] == 1 and dag_run.summary["booked"] == 1


def test_reprocess_task_ids(run_dag, seed):
    now = dt.datetime.now(UTC)
    chosen = _fail_without_rule(seed, "t-1", now)
    other = _fail_without_rule(seed, "t-2", now)
    run_dag()
    with seed.connect() as c:
        c.execute("INSERT INTO accounts (account_id, merchant_id, account_name, account_type, currency)"
                  " VALUES ('acc_contra', 'mer_t', 'Contra', 'CREDIT_NORMAL', 'USD')")
        c.execute("INSERT INTO recon_rules (merchant_id, account_one_id, account_two_id)"
                  " VALUES ('mer_t', 'acc_norule', 'acc_contra')")
    dag_run = run_dag({"reprocess": {"task_ids": [chosen[1]]}})

    assert dag_run.state == "success"
    assert seed.staging(chosen[0])["status"] == "PROCESSED"
    assert seed.staging(other[0])["status"] == "NEEDS_MANUAL_REVIEW"
    assert seed.task(other[1])["status"] == "FAILED"


def test_chunks_grow_to_respect_max_map_length(run_dag, seed, monkeypatch):
    """With [core] max_map_length = 2, five tasks in chunks of 1 become two chunks, not five."""
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "2")
    tasks = [seed.stage("acc_bank", "DEBIT", "2.00", "TRANSACTION", f"m-{i}")[1] for i in range(5)]
    dag_run = run_dag({"chunk_size": 1})

    assert dag_run.state == "success"
    labels = [label for tid, _, _, label in dag_run.tis if tid == "chunk.run"]
    assert labels == ["chunk 1 · 3 tasks", "chunk 2 · 2 tasks"]
    assert [seed.task(t)["status"] for t in tasks] == ["COMPLETED"] * 5
