"""recon.monitoring: every figure of the Recon view equals a count taken directly in SQL."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from recon import ledger, pipeline, staging
from recon.json_encoding import jsonable
from recon.reporting import monitoring, run_summaries
from tests.ui.seed import LEASE_OWNER, MISMATCH_ORDER, RETRY_ERROR, UNMATCHED_ORDER, SeededBooks


def test_queue_counts_equal_the_tracker_table(seeded: SeededBooks) -> None:
    q = monitoring.queue(seeded.db)

    direct = dict(seeded.rows("SELECT status, count(*) FROM process_tracker GROUP BY status"))
    assert {s: n for s, n in q["by_status"].items() if n} == direct
    assert set(q["by_status"]) == {"PENDING", "PROCESSING", "COMPLETED", "FAILED", "RETRY"}
    # the seed covers every status, so no count above is a vacuous zero
    assert all(q["by_status"].values())
    assert q["total"] == seeded.scalar("SELECT count(*) FROM process_tracker")
    per_type = {(t, s): n for t, s, n in seeded.rows(
        "SELECT task_type, status, count(*) FROM process_tracker GROUP BY 1, 2")}
    assert {(t, s): n for t, c in q["by_type"].items() for s, n in c.items() if n} == per_type
    assert q["due_now"] == seeded.scalar(
        "SELECT count(*) FROM process_tracker WHERE status IN ('PENDING', 'RETRY') AND run_after <= now()")
    assert q["due_later"] == seeded.scalar(
        "SELECT count(*) FROM process_tracker WHERE status IN ('PENDING', 'RETRY') AND run_after > now()") == 1
    assert q["oldest_due_at"] == seeded.scalar(
        "SELECT min(run_after) FROM process_tracker WHERE status IN ('PENDING', 'RETRY') AND run_after <= now()")
    assert q["oldest_due_age_seconds"] >= 0


def test_retry_tasks_and_leases_are_listed_with_due_time_and_owner(seeded: SeededBooks) -> None:
    q = monitoring.queue(seeded.db)

    retry = seeded.rows("SELECT task_id, run_after FROM process_tracker WHERE status = 'RETRY' ORDER BY run_after")
    assert [(t["task_id"], t["next_due_at"]) for t in q["retry"]["tasks"]] == [tuple(r) for r in retry]
    assert q["retry"]["count"] == len(retry) == 1
    assert q["retry"]["tasks"][0]["last_error"] == RETRY_ERROR
    assert q["retry"]["tasks"][0]["due_in_seconds"] > 0  # base 600 s backoff: due later, not now

    held = dict(seeded.rows("SELECT lease_owner, count(*) FROM process_tracker WHERE status = 'PROCESSING' GROUP BY 1"))
    assert {o["lease_owner"]: o["tasks"] for o in q["leases"]["owners"]} == held == {LEASE_OWNER: 2}
    assert q["leases"]["held"] == 2 and q["leases"]["expired"] == 0


def test_manual_review_groups_and_entries_equal_the_staging_table(seeded: SeededBooks) -> None:
    mr = monitoring.exceptions(seeded.db)["manual_review"]

    direct = dict(seeded.rows(
        "SELECT metadata ->> 'error_type', count(*) FROM staging_entries"
        " WHERE status = 'NEEDS_MANUAL_REVIEW' GROUP BY 1"))
    assert {g["error_type"]: g["count"] for g in mr["groups"]} == direct
    assert set(direct) == {"MismatchError", "NoMatchFoundError", "NoReconRuleFoundError"}
    assert mr["count"] == sum(direct.values()) == mr["shown"]

    reasons = dict(seeded.rows(
        "SELECT staging_entry_id, metadata ->> 'error' FROM staging_entries WHERE status = 'NEEDS_MANUAL_REVIEW'"))
    assert {e["staging_entry_id"]: e["reason"] for e in mr["entries"]} == reasons
    mismatch = next(e for e in mr["entries"] if e["error_type"] == "MismatchError")
    assert (mismatch["order_id"], mismatch["amount"], mismatch["account_name"]) == (
        MISMATCH_ORDER, Decimal("249.0000"), "PSP clearing USD")
    assert "250" in mismatch["reason"] and "249" in mismatch["reason"]
    # every entry shows the FAILED task a reprocess would requeue
    failed_of_entry = dict(seeded.rows(
        "SELECT payload ->> 'staging_entry_id', task_id FROM process_tracker WHERE status = 'FAILED'"))
    assert {e["staging_entry_id"]: e["task_id"] for e in mr["entries"]} == failed_of_entry


@pytest.mark.parametrize(
    ("filters", "expected_orders"),
    [
        ({"error_type": "NoMatchFoundError"}, {UNMATCHED_ORDER}),
        ({"order_id": MISMATCH_ORDER}, {MISMATCH_ORDER}),
        ({"q": "recon rule"}, {"ORD-2001"}),
        ({"q": "9999"}, {UNMATCHED_ORDER}),
        ({"error_type": "NoMatchFoundError", "order_id": MISMATCH_ORDER}, set()),
        ({"q": "%"}, set()),  # LIKE wildcards are searched literally
    ],
)
def test_manual_review_filters(seeded: SeededBooks, filters: dict, expected_orders: set) -> None:
    mr = monitoring.exceptions(seeded.db, **filters)["manual_review"]
    assert {e["order_id"] for e in mr["entries"]} == expected_orders
    assert mr["count"] == len(expected_orders)
    assert mr["filters"] == filters


def test_manual_review_filter_by_account(seeded: SeededBooks) -> None:
    orphan = seeded.scalar("SELECT account_id FROM accounts WHERE account_name = 'Bank USD without rule'")
    mr = monitoring.exceptions(seeded.db, account_id=orphan)["manual_review"]
    assert [g["error_type"] for g in mr["groups"]] == ["NoReconRuleFoundError"]
    assert [e["account_id"] for e in mr["entries"]] == [orphan]


def test_limit_caps_the_list_not_the_counts(seeded: SeededBooks) -> None:
    ex = monitoring.exceptions(seeded.db, limit=1)
    assert ex["manual_review"]["shown"] == 1 and ex["manual_review"]["count"] == 3
    assert len(ex["failed_tasks"]["tasks"]) == 1
    assert ex["failed_tasks"]["count"] == seeded.scalar("SELECT count(*) FROM process_tracker WHERE status = 'FAILED'")


def test_failed_tasks_carry_last_error(seeded: SeededBooks) -> None:
    failed = monitoring.exceptions(seeded.db)["failed_tasks"]
    direct = dict(seeded.rows("SELECT task_id, last_error FROM process_tracker WHERE status = 'FAILED'"))
    assert {t["task_id"]: t["last_error"] for t in failed["tasks"]} == direct
    assert failed["count"] == len(direct) == 3
    assert any(e.startswith("MismatchError:") for e in direct.values())


def test_ledger_balances_and_mismatch_transactions(seeded: SeededBooks) -> None:
    lg = monitoring.ledger_overview(seeded.db)
    assert lg["balances"] == [vars(b) | {} for b in ledger.balances(db=seeded.db)]
    bank = next(b for b in lg["balances"] if b["account_name"] == "Bank USD")
    assert bank["posted"] == Decimal("1000.00") + Decimal("100.00") + Decimal("250.00") + Decimal("75.25")

    direct = seeded.rows("SELECT transaction_id FROM transactions WHERE status = 'MISMATCH'")
    assert lg["mismatch"]["count"] == len(direct) == 1
    (txn,) = lg["mismatch"]["transactions"]
    assert txn["transaction_id"] == direct[0][0] and txn["order_id"] == MISMATCH_ORDER
    assert "249" in txn["reason"] and txn["confirmation_entry_id"].startswith("stg_")


def test_throughput_lists_recorded_runs_oldest_first(seeded: SeededBooks) -> None:
    tp = monitoring.throughput(seeded.db)
    assert [r["run_id"] for r in tp["runs"]] == ["manual__seed-1", "manual__seed-2"]
    direct = dict(seeded.rows("SELECT run_id, processed FROM run_summaries"))
    assert {r["run_id"]: r["processed"] for r in tp["runs"]} == direct == {"manual__seed-1": 4, "manual__seed-2": 3}
    assert tp["processed_total"] == 7
    assert (tp["backlog_change"], tp["backlog_trend"]) == (0, "flat")


def test_record_run_summary_stores_counts_and_the_backlog_left(books: SeededBooks) -> None:
    summary = {"claimed": 5, "completed": 3, "failed": 1, "retried": 1, "manual_review_by_type": {"X": 1}}
    row = run_summaries.record_run_summary("manual__r1", summary, db=books.db)
    backlog = books.scalar("SELECT count(*) FROM process_tracker WHERE status IN ('PENDING', 'RETRY')")
    assert (row["claimed"], row["processed"], row["backlog"], row["outcome"]) == (5, 4, backlog, "success")
    assert backlog == 4  # 3 PENDING + 1 RETRY in the seed: the backlog figure is not a constant

    # a retried summary task replaces the row of its run
    again = run_summaries.record_run_summary("manual__r1", {**summary, "completed": 4}, outcome="failed", db=books.db)
    assert (again["processed"], again["outcome"]) == (5, "failed")
    assert books.scalar("SELECT count(*) FROM run_summaries WHERE run_id = 'manual__r1'") == 1
    assert run_summaries.run_summary("manual__r1", books.db)["summary"]["completed"] == 4

    dry = run_summaries.record_run_summary("manual__dry", {"dry_run": True, "due": 9, "claimed": 0}, db=books.db)
    assert (dry["dry_run"], dry["processed"], dry["claimed"]) == (True, 0, 0)
    with pytest.raises(ValueError, match="outcome"):
        run_summaries.record_run_summary("manual__r2", summary, outcome="maybe", db=books.db)


def test_backlog_trend_follows_the_recorded_backlog(books: SeededBooks) -> None:
    run_summaries.record_run_summary("manual__before", {"claimed": 0}, db=books.db)  # backlog 4
    summary = pipeline.process_queue(db=books.db)  # drains the 3 PENDING tasks
    run_summaries.record_run_summary("manual__after", summary, db=books.db)
    tp = monitoring.throughput(books.db)
    assert [r["backlog"] for r in tp["runs"]][-2:] == [4, 1]
    assert (tp["backlog_change"], tp["backlog_trend"]) == (-3, "shrinking")


def test_reprocess_conf_of_a_filter_is_the_filter_and_requeues_exactly_those_entries(books: SeededBooks) -> None:
    """The scope travels as the filter, not as the first N task ids (problem 4): every matching entry."""
    conf = monitoring.reprocess_conf({"error_type": "NoMatchFoundError", "account_id": None, "limit": 50})
    assert conf == {"reprocess": {"error_type": "NoMatchFoundError", "exclude_error_types": ["MismatchError"]}}

    scope = conf["reprocess"]
    pipeline.requeue_scope(review=staging.ReviewFilter(error_type=scope["error_type"]),
                           exclude_error_types=scope["exclude_error_types"], db=books.db)

    still = dict(books.rows(
        "SELECT metadata ->> 'error_type', count(*) FROM staging_entries WHERE status = 'NEEDS_MANUAL_REVIEW' GROUP BY 1"))
    assert still == {"MismatchError": 1, "NoReconRuleFoundError": 1}
    assert monitoring.exceptions(books.db)["manual_review"]["count"] == 2


def test_the_view_never_offers_to_reprocess_mismatches_blindly(books: SeededBooks) -> None:
    assert monitoring.reprocess_conf({"error_type": "MismatchError"}) is None
    assert monitoring.reprocess_conf({}) is None  # no filter: the window trigger
    window = monitoring.reprocess_window_conf(7)["reprocess"]
    pipeline.requeue_scope(window["created_from"], window["created_to"],
                           exclude_error_types=window["exclude_error_types"], db=books.db)
    still = dict(books.rows(
        "SELECT metadata ->> 'error_type', count(*) FROM staging_entries WHERE status = 'NEEDS_MANUAL_REVIEW' GROUP BY 1"))
    assert still == {"MismatchError": 1}


def test_window_conf_matches_the_dag_param_format() -> None:
    import datetime as dt

    conf = monitoring.reprocess_window_conf(7, now=dt.datetime(2026, 11, 8, 12, 0, 30, 999, tzinfo=dt.timezone.utc))
    assert conf == {"reprocess": {"created_from": "2026-11-01T12:00:30Z", "created_to": "2026-11-08T12:00:31Z",
                                  "exclude_error_types": ["MismatchError"]}}


def test_summary_markdown_has_counts_rates_and_top_reasons() -> None:
    summary = {
        "claimed": 10, "completed": 7, "failed": 2, "retried": 1, "booked": 4, "matched": 3, "mismatched": 1,
        "manual_review": 2, "waiting": 1, "duration_s": 2.5, "entries_per_s": 3.6,
        "manual_review_by_type": {"NoMatchFoundError": 1, "MismatchError": 1},
    }
    md = run_summaries.summary_markdown(summary, "manual__x")
    assert md.startswith("### Recon run `manual__x`")
    # words a controller reads right: business exceptions are "to review", not failures, and the
    # categories partition the claim (mismatches are part of "to review")
    assert "**10 claimed** · 4 booked · 3 matched · 2 to review · 1 waiting · 1 to retry · 3.6 entries/s in 2.5 s" in md
    assert "failed" not in md and "1 of those to review are mismatches" in md
    assert "| booked | matched | to review | waiting | to retry | already processed |" in md
    assert "| 4 | 3 | 2 | 1 | 1 | 0 |" in md
    assert "Settled without review: 70.0 %" in md
    assert "`MismatchError` × 1, `NoMatchFoundError` × 1" in md

    note = run_summaries.summary_markdown(summary, heading=False)
    assert note.startswith("**10 claimed** · 4 booked") and "###" not in note

    dry = run_summaries.summary_markdown({"dry_run": True, "due": 5, "verdicts": {"book": 5}})
    assert dry.startswith("### Recon run (dry run)")
    assert "**5 due** task(s) decided and validated; dry run, nothing written." in dry and "claimed" not in dry
    assert run_summaries.summary_markdown({"dry_run": True, "due": 5}, heading=False).startswith("**5 due**")


def test_jsonable_keeps_money_exact() -> None:
    value = jsonable({"amount": Decimal("0.1000"), "list": [Decimal("12345678901234.5678")]})
    assert json.loads(json.dumps(value)) == {"amount": "0.1000", "list": ["12345678901234.5678"]}


def test_the_ledger_section_shows_unconfirmed_orders_by_age(seeded: SeededBooks) -> None:
    """Problem 6: ORD-1003 was booked and never confirmed: an open expected leg on the clearing account."""
    unconfirmed = monitoring.ledger_overview(seeded.db)["unconfirmed"]
    assert unconfirmed["age_buckets"] == ["0-1 days", "1-3 days", "3-7 days", "> 7 days"]
    (clearing,) = unconfirmed["accounts"]
    assert clearing["account_id"] == seeded.clearing and clearing["count"] >= 1
    assert sum(b["count"] for b in clearing["buckets"].values()) == clearing["count"]
    assert sum(b["amount"] for b in clearing["buckets"].values()) == clearing["amount"]
