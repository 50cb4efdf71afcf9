"""One row per pipeline run (table ``run_summaries``, migration 0003): what the run's summary task
counted and the backlog it left. The only module whose SQL reads or writes ``run_summaries``.

The Recon view draws throughput and the backlog trend from these rows; each run's "Recon
summary" tab and its run note render one with :func:`summary_markdown`.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Mapping

import sqlalchemy as sa

from recon import ledger, settings
from recon.db import Database
from recon.errors import InvalidInputError
from recon.money import format_money
from recon.tracker import ProcessTracker

_RECORD_RUN = sa.text(
    """
    INSERT INTO run_summaries (dag_id, run_id, outcome, dry_run, claimed, processed, backlog, summary)
    VALUES (:dag_id, :run_id, :outcome, :dry_run, :claimed, :processed, :backlog, CAST(:summary AS jsonb))
    ON CONFLICT (dag_id, run_id) DO UPDATE SET
        recorded_at = now(), outcome = EXCLUDED.outcome, dry_run = EXCLUDED.dry_run,
        claimed = EXCLUDED.claimed, processed = EXCLUDED.processed, backlog = EXCLUDED.backlog,
        summary = EXCLUDED.summary
    RETURNING dag_id, run_id, recorded_at, outcome, dry_run, claimed, processed, backlog, summary
    """
)

_RUN_COLUMNS = "dag_id, run_id, recorded_at, outcome, dry_run, claimed, processed, backlog, summary"

_RECENT_RUNS = sa.text(
    f"""
    SELECT {_RUN_COLUMNS} FROM run_summaries
    WHERE dag_id = :dag_id
    ORDER BY recorded_at DESC, run_id DESC
    LIMIT :limit
    """
)

_ONE_RUN = sa.text(f"SELECT {_RUN_COLUMNS} FROM run_summaries WHERE dag_id = :dag_id AND run_id = :run_id")


def record_run_summary(
    run_id: str,
    summary: Mapping[str, Any],
    *,
    dag_id: str = settings.DAG_ID,
    outcome: str = "success",
    db: Database,
) -> dict[str, Any]:
    """Store one run's summary (as returned by ``pipeline.summarize``) with the backlog it left.

    ``outcome`` is ``"failed"`` when the run is about to fail (a chunk did not finish).
    Recording the same run again (a retried summary task) replaces its row.
    """
    if outcome not in ("success", "failed"):
        raise InvalidInputError(f"outcome must be 'success' or 'failed', got {outcome!r}")
    if not run_id:
        raise InvalidInputError("run_id must be a non-empty string")
    dry_run = bool(summary.get("dry_run", False))
    summary = dict(summary)
    claimed = 0 if dry_run else int(summary.get("claimed", 0) or 0)
    processed = 0 if dry_run else int(summary.get("completed", 0) or 0) + int(summary.get("failed", 0) or 0)
    with db.begin() as conn:
        if not dry_run:  # the money still expected when the run ended: the state it left, like the backlog
            summary["amounts"] = {**(summary.get("amounts") or {}), "unconfirmed": {
                currency: str(amount) for currency, amount in ledger.open_expected_totals(conn).items()}}
        row = conn.execute(
            _RECORD_RUN,
            {
                "dag_id": dag_id,
                "run_id": run_id,
                "outcome": outcome,
                "dry_run": dry_run,
                "claimed": claimed,
                "processed": processed,
                "backlog": ProcessTracker(db).backlog(conn),
                "summary": json.dumps(dict(summary), default=str),
            },
        ).one()
    return dict(row._mapping)


def recent_runs(db: Database, limit: int = 30, dag_id: str = settings.DAG_ID) -> list[dict[str, Any]]:
    """The latest recorded runs, newest first."""
    with db.begin() as conn:
        rows = conn.execute(_RECENT_RUNS, {"dag_id": dag_id, "limit": limit}).all()
    return [dict(r._mapping) for r in rows]


def run_summary(run_id: str, db: Database, dag_id: str = settings.DAG_ID) -> dict[str, Any] | None:
    with db.begin() as conn:
        row = conn.execute(_ONE_RUN, {"dag_id": dag_id, "run_id": run_id}).first()
    return dict(row._mapping) if row else None


def outcome_words(summary: dict[str, Any]) -> list[tuple[str, int]]:
    """A run's claimed tasks as a controller reads them, categories that partition the claim:
    a business exception is "to review" (its task is FAILED in the queue, which is not a failure of
    the run), mismatches are part of it, and only what no category explains is a failure."""
    to_review = int(summary.get("manual_review", 0))
    return [
        ("booked", int(summary.get("booked", 0))),
        ("matched", int(summary.get("matched", 0))),
        ("to review", to_review),
        ("waiting", int(summary.get("waiting", 0))),
        ("to retry", int(summary.get("retried", 0))),
        ("already processed", int(summary.get("already_processed", 0)) + int(summary.get("not_owned", 0))),
        ("failed", max(int(summary.get("failed", 0)) - to_review, 0)),
    ]


# the money rows of a run's summary, in a controller's order: what the run did, then what is left open
AMOUNT_WORDS = (("booked", "booked"), ("matched", "matched"), ("to_review", "to review"),
                ("unconfirmed", "unconfirmed (still expected)"))


def money_lines(amounts: Mapping[str, Mapping[str, str]]) -> list[str]:
    """A Markdown table of the run's money per currency: each with its decimals, grouped."""
    currencies = sorted({c for by_currency in amounts.values() for c in by_currency})
    if not currencies:
        return []
    lines = ["", "| money | " + " | ".join(currencies) + " |", "| --- |" + " ---: |" * len(currencies)]
    for key, word in AMOUNT_WORDS:
        by_currency = amounts.get(key) or {}
        if by_currency:
            lines.append(f"| {word} | " + " | ".join(
                format_money(Decimal(by_currency[c]), c) if c in by_currency else "–" for c in currencies) + " |")
    return lines


def _preview_lines(scope: Mapping[str, Any]) -> list[str]:
    """What decide/validate would make of each entry of a reprocess dry run: totals, then a table."""
    would = scope.get("would") or {}
    preview = scope.get("preview") or []
    if not would and not preview:
        return []
    lines = ["", "Would become: " + ", ".join(f"`{k}` × {v}" for k, v in would.items())]
    if preview:
        lines += ["", "| entry | now | would be | why |", "| --- | --- | --- | --- |"]
        lines += [f"| `{e.get('staging_entry_id') or e.get('task_id')}` | {e.get('error_type')} | {e.get('would')}"
                  f" | {_cell(e.get('detail') or '')} |" for e in preview]
    if scope.get("preview_not_shown"):
        lines += ["", f"… and {scope['preview_not_shown']} more entries (the claim task's log lists each)."]
    return lines


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(summary: Mapping[str, Any], run_id: str | None = None, heading: bool = True) -> str:
    """A short Markdown summary of one run: counts, rates and the top manual-review reasons.

    Without ``heading`` the first line is the counts line (what a collapsed run note shows).
    """
    s = dict(summary)
    title = f"Recon run `{run_id}`" if run_id else "Recon run"
    if s.get("dry_run"):
        lines = [f"### {title} (dry run)", ""] if heading else []
        lines.append(f"**{s.get('due', 0)} due** task(s) decided and validated; dry run, nothing written.")
        verdicts = s.get("verdicts") or {}
        if verdicts:
            lines += ["", "Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))]
        scope = s.get("reprocess_scope")
        if scope:
            by_type = ", ".join(f"`{k}` × {v}" for k, v in scope.get("entries_by_error_type", {}).items())
            lines += ["", f"Reprocess scope: {scope.get('failed_tasks', 0)} FAILED task(s) and"
                          f" {scope.get('entries', 0)} entries in review would be queued again"
                          + (f" ({by_type})" if by_type else "") + "."]
            lines += _preview_lines(scope)
    else:
        claimed = int(s.get("claimed", 0) or 0)
        words = [(w, n) for w, n in outcome_words(s) if n or w != "failed"]
        lines = [f"### {title}", ""] if heading else []
        lines += [
            f"**{claimed} claimed** · " + " · ".join(f"{n} {word}" for word, n in words if n)
            + f" · {s.get('entries_per_s', 0)} entries/s in {s.get('duration_s', 0)} s",
            "",
            "| " + " | ".join(word for word, _ in words) + " |",
            "|" + " ---: |" * len(words),
            "| " + " | ".join(str(n) for _, n in words) + " |",
        ]
        if s.get("mismatched"):
            lines += ["", f"{s['mismatched']} of those to review are mismatches (amount or currency differs)."]
        if claimed:
            settled = int(s.get("booked", 0) or 0) + int(s.get("matched", 0) or 0)
            lines += ["", f"Settled without review: {100 * settled / claimed:.1f} % of claimed tasks"
                          " (booked or matched)."]
        lines += money_lines(s.get("amounts") or {})
    reasons = s.get("manual_review_by_type") or {}
    if reasons:
        top = sorted(reasons.items(), key=lambda kv: (-int(kv[1]), kv[0]))[:5]
        lines += ["", "To review, top reasons: " + ", ".join(f"`{k}` × {v}" for k, v in top)]
    return "\n".join(lines) + "\n"
