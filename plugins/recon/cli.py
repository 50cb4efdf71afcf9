"""The `recon` command line: set-up, ingestion, processing, reports, the demo and the local UI.

Every command that touches the database says which one on stderr (never its password).
Exit codes: 0 success, 2 bad input or configuration (a ``ReconError``: the message names what
was wrong), 3 a CSV had rejected rows (the valid rows were ingested; for `review import`, rows whose
decision was refused, the others applied), 1 the demo's books did not
balance or its DAG run failed, or a bug (its traceback with ``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import sqlalchemy.exc

from recon import json_encoding, settings
from recon.db import default_database, migrations, reset_default_database, stop_embedded_server
from recon.db.engine import describe_error
from recon.errors import InvalidInputError, ReconError


def _announce_database() -> None:
    print(f"recon: database {default_database().display}", file=sys.stderr)


def _print(data: Any, as_json: bool, text: str) -> None:
    print(json_encoding.dumps(data, indent=2) if as_json else text)


# ---- db and tracker -------------------------------------------------------------------------


def cmd_db_migrate(args: argparse.Namespace) -> int:
    _announce_database()
    applied = migrations.migrate(default_database())
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def cmd_db_url(args: argparse.Namespace) -> int:
    """Print the resolved URL; the password only on request (a terminal is often shared or recorded)."""
    url = default_database().url.set(drivername="postgresql")
    print(url.render_as_string(hide_password=not args.show_password))
    return 0


def cmd_db_stop(args: argparse.Namespace) -> int:
    print("embedded PostgreSQL stopped" if stop_embedded_server() else "embedded PostgreSQL was not running")
    return 0


def cmd_tracker_stats(args: argparse.Namespace) -> int:
    from recon.tracker import ProcessTracker

    _announce_database()
    stats = ProcessTracker(default_database()).stats()
    _print(stats, args.json, _format_stats(stats))
    return 0


def _format_stats(stats: dict[str, Any]) -> str:
    """The queue for people: counts with grouping, one line per task type, ages in words."""
    def counts(by_status: dict[str, int]) -> str:
        return ", ".join(f"{n:,} {status}" for status, n in by_status.items() if n) or "none"

    age = stats["oldest_due_age_seconds"]
    lines = [f"tasks: {stats['total']:,} ({counts(stats['by_status'])})"]
    lines += [f"  {task_type}: {counts(by_status)}" for task_type, by_status in sorted(stats["by_type"].items())]
    lines.append("oldest due task: " + ("none due" if age is None else f"waiting {_duration(age)}"))
    lines.append(f"leases held: {stats['leases_held']:,} (tasks being processed now)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    return " ".join(f"{n} {unit}" for n, unit in parts if n) or "0 s"


def cmd_tracker_reap(args: argparse.Namespace) -> int:
    from recon import pipeline

    _announce_database()
    result = pipeline.reap(default_database())
    print(f"rescued {result['retried']} task(s) to RETRY, {result['failed']} to FAILED")
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    from recon import pipeline

    if not (args.created_from or args.created_to or args.task_id is not None or args.error_type or args.account):
        raise InvalidInputError("reprocess needs a scope: --created-from and/or --created-to, --task-id,"
                                " --error-type or --account")
    _announce_database()
    from recon.staging import ReviewFilter

    result = pipeline.requeue_scope(args.created_from, args.created_to, args.task_id, db=default_database(),
                                    review=ReviewFilter(error_type=args.error_type, account_id=args.account),
                                    exclude_error_types=args.exclude_error_type or (), dry_run=args.dry_run)
    if args.dry_run:
        lines = [f"dry run: would requeue {result['failed_tasks']:,} FAILED task(s) and reopen"
                 f" {result['entries']:,} entries from review; nothing written"]
        lines += [f"  {error_type}: {n:,}" for error_type, n in result["entries_by_error_type"].items()]
        lines += ["what decide/validate would say now:"]
        lines += [f"  {outcome}: {n:,}" for outcome, n in result["would"].items()]
        lines += ["", f"{'STAGING ENTRY':<30} {'NOW':<24} {'WOULD BE':<24} WHY"]
        lines += [f"{e['staging_entry_id'] or e['task_id']:<30} {e['error_type']:<24} {e['would']:<24} {e['detail']}"
                  for e in result["preview"]]
        _print(result, args.json, "\n".join(lines))
        return 0
    _print(result, args.json, f"requeued {result['requeued_tasks']:,} FAILED task(s);"
                              f" reopened {result['reopened_entries']:,} entries from review")
    return 0


# ---- set-up ---------------------------------------------------------------------------------


def cmd_merchant_create(args: argparse.Namespace) -> int:
    from recon import accounts

    _announce_database()
    print(accounts.create_merchant(args.name, merchant_id=args.id, db=default_database()))
    return 0


def cmd_account_create(args: argparse.Namespace) -> int:
    from recon import accounts

    _announce_database()
    print(accounts.create_account(args.merchant, args.name, args.type, args.currency,
                                  args.initial_balance, account_id=args.id, db=default_database()))
    return 0


def cmd_rule_create(args: argparse.Namespace) -> int:
    from recon import accounts

    _announce_database()
    settings = accounts.RuleSettings(**_rule_changes(args))
    print(accounts.create_recon_rule(args.account_one, args.account_two, rule_id=args.id, settings=settings,
                                     db=default_database()))
    return 0


def cmd_rule_list(args: argparse.Namespace) -> int:
    from recon import accounts

    _announce_database()
    with default_database().begin() as conn:
        rules = accounts.list_rules(conn)
    _print([_rule_dict(r) for r in rules], args.json,
           "\n".join(_rule_line(r) for r in rules) if rules else "no recon rules")
    return 0


def cmd_rule_show(args: argparse.Namespace) -> int:
    from recon import accounts

    _announce_database()
    with default_database().begin() as conn:
        rule = accounts.get_rule(args.rule_id, conn)
    _print(_rule_dict(rule), args.json, _rule_text(rule))
    return 0


def cmd_rule_update(args: argparse.Namespace) -> int:
    from recon import accounts
    from recon.errors import InvalidInputError

    changes = _rule_changes(args)
    if not changes:
        raise InvalidInputError("nothing to change: give at least one setting (see `recon rule update --help`)")
    _announce_database()
    print(_rule_text(accounts.update_recon_rule(args.rule_id, changes, db=default_database())))
    return 0


def cmd_rule_delete(args: argparse.Namespace) -> int:
    from recon import accounts

    _announce_database()
    accounts.delete_recon_rule(args.rule_id, db=default_database())
    print(f"deleted recon rule {args.rule_id}")
    return 0


def _rule_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The rule settings given on the command line (RuleSettings field names), checked by accounts."""
    from recon import match_keys

    changes: dict[str, Any] = {}
    if args.match_key:
        changes["match_keys"] = tuple(match_keys.parse_match_key(k) for k in args.match_key)
    for name in ("priority", "amount_tolerance", "amount_tolerance_pct", "date_window_days", "aging_days"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.variance_account is not None:
        changes["variance_account_id"] = args.variance_account
    if args.group_by is not None:
        changes["group_by"] = args.group_by
    if args.fee_account is not None:
        changes["fee_account_id"] = args.fee_account
    for flag, name in (("no_variance_account", "variance_account_id"), ("no_date_window", "date_window_days"),
                       ("default_aging", "aging_days"), ("no_group_by", "group_by"),
                       ("no_fee_account", "fee_account_id")):
        if getattr(args, flag, False):
            changes[name] = None
    return changes


def _rule_dict(rule: Any) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(rule)
    data["match_keys"] = [{"line": line, "expected": expected} for line, expected in rule.match_keys]
    return data


def _rule_line(rule: Any) -> str:
    from recon import match_keys

    keys = f"group by {rule.group_by}" if rule.group_by else f"keys {match_keys.keys_text(rule.match_keys)}"
    fees = f"  fees -> {rule.fee_account_id}" if rule.fee_account_id else ""
    return (f"{rule.id}  {rule.account_one_id} -> {rule.account_two_id}  priority {rule.priority}"
            f"  {keys}{_tolerance_text(rule)}{fees}")


def _tolerance_text(rule: Any) -> str:
    if not (rule.amount_tolerance or rule.amount_tolerance_pct):
        return ""
    return (f"  tolerance max({rule.amount_tolerance}, {rule.amount_tolerance_pct}%)"
            f" -> {rule.variance_account_id}")


def _rule_text(rule: Any) -> str:
    from recon import match_keys

    window = f"±{rule.date_window_days} days" if rule.date_window_days is not None else "none"
    aging = f"{rule.aging_days} days after effective_date" if rule.aging_days is not None else (
        f"RECON_MATCHING_WINDOW_SECONDS ({settings.matching_window_seconds()} s) after arrival")
    return "\n".join([
        f"rule {rule.id} (merchant {rule.merchant_id})",
        f"  account_one        {rule.account_one_id}",
        f"  account_two        {rule.account_two_id}",
        f"  priority           {rule.priority}",
        f"  match keys         {'- (grouped)' if rule.group_by else match_keys.keys_text(rule.match_keys)}",
        f"  group by           {rule.group_by or '-'}",
        f"  amount tolerance   {rule.amount_tolerance} or {rule.amount_tolerance_pct}% of the expected amount",
        f"  variance account   {rule.variance_account_id or '-'}",
        f"  date window        {window}",
        f"  ageing             {aging}",
        f"  fee account        {rule.fee_account_id or '-'}",
    ])


# ---- look-ups and exports -------------------------------------------------------------------

_PAGE = 1_000  # keyset pages: a list of any length never holds more than this per query


def _all_pages(fetch: Any, key: Any) -> list[Any]:
    """Every row of a keyset-paged read (fetch(conn, after, limit)), page after page."""
    rows: list[Any] = []
    with default_database().begin() as conn:
        while page := fetch(conn, key(rows[-1]) if rows else None, _PAGE):
            rows += page
            if len(page) < _PAGE:
                break
    return rows


def cmd_merchant_list(args: argparse.Namespace) -> int:
    from recon import accounts

    _announce_database()
    merchants = _all_pages(accounts.merchants_page, lambda m: m.merchant_id)
    _print(merchants, args.json, "\n".join(f"{m.merchant_id}  {m.merchant_name}" for m in merchants))
    return 0


def cmd_merchant_show(args: argparse.Namespace) -> int:
    from recon import accounts

    _announce_database()
    with default_database().begin() as conn:
        merchant = accounts.get_merchant(args.merchant_id, conn)
        listed = accounts.accounts_page(conn, merchant.merchant_id, None, _PAGE)
    data = {"merchant": merchant, "accounts": listed}
    text = [f"{merchant.merchant_id}  {merchant.merchant_name} (created {merchant.created_at:%Y-%m-%d %H:%M} UTC)"]
    text += [f"  {a.account_id}  {a.account_name}  {a.account_type} {a.currency}" for a in listed]
    _print(data, args.json, "\n".join(text))
    return 0


def cmd_account_list(args: argparse.Namespace) -> int:
    from recon import accounts

    _announce_database()
    listed = _all_pages(lambda c, after, n: accounts.accounts_page(c, args.merchant, after, n), lambda a: a.account_id)
    _print(listed, args.json, "\n".join(f"{a.account_id}  {a.merchant_id}  {a.account_name}  {a.account_type}"
                                       f" {a.currency}" for a in listed))
    return 0


def cmd_account_show(args: argparse.Namespace) -> int:
    from recon import accounts, ledger
    from recon.money import format_money

    _announce_database()
    with default_database().begin() as conn:
        account = accounts.get_account(args.account_id, conn)
        (balance,) = ledger.balances_of(conn, [account])
    text = [f"{account.account_id}  {account.account_name} ({account.merchant_id}), {account.account_type}"
            f" {account.currency}"]
    text += [f"  {name:>15}: {format_money(getattr(balance, name), account.currency)}"
             for name in ("initial_balance", "posted", "pending", "available")]
    _print({"account": account, "balance": balance}, args.json, "\n".join(text))
    return 0


def cmd_entry_show(args: argparse.Namespace) -> int:
    """A staging entry by id, or every entry of an order id, each with its outcome history."""
    from recon import staging
    from recon.errors import NotFoundError
    from recon.money import format_money

    _announce_database()
    with default_database().begin() as conn:
        found = staging.get_staging_entry(conn, args.id_or_order)
        entries = [found] if found is not None else staging.entries_of_order(conn, args.id_or_order)
        if not entries:
            raise NotFoundError(f"no staging entry with staging_entry_id or order_id {args.id_or_order!r}")
        shown = [{"entry": e, "history": [dict(h._mapping) for h in staging.outcome_history(conn, e.staging_entry_id)]}
                 for e in entries]
    text = []
    for item in shown:
        e = item["entry"]
        text += [f"{e.staging_entry_id}  {e.status}  {e.processing_mode} {e.entry_type}"
                 f" {format_money(e.amount, e.currency)} on {e.account_id}, order {e.order_id or '-'}",
                 f"  ingested {e.created_at:%Y-%m-%d %H:%M:%S} UTC from {e.metadata.get('source_file', '-')}"]
        if e.metadata.get("error"):
            text.append(f"  now: {e.metadata.get('error_type')}: {e.metadata['error']}")
        text += [f"  {h['recorded_at']:%Y-%m-%d %H:%M:%S}  {h['status']:<19} {h['error_type'] or ''}"
                 f" {h['reason'] or ''}  (task {h['task_id'] or '-'}, run {h['run'] or '-'})" for h in item["history"]]
    _print(shown, args.json, "\n".join(text))
    return 0


def cmd_transaction_show(args: argparse.Namespace) -> int:
    from recon import ledger
    from recon.errors import NotFoundError
    from recon.money import format_money

    _announce_database()
    with default_database().begin() as conn:
        found = ledger.logical_transaction(conn, args.transaction_id)
    if found is None:
        raise NotFoundError(f"no transaction with transaction_id or logical_transaction_id {args.transaction_id!r}")
    text = [f"logical transaction {found.logical_transaction_id}: {len(found.versions)} version(s)"]
    for v in found.versions:
        text.append(f"  v{v.version} {v.transaction_id}  {v.status}  {format_money(v.amount, v.currency)}"
                    f"  from staging entry {v.source_staging_entry_id or '-'} at {v.created_at:%Y-%m-%d %H:%M:%S}")
        text += [f"      {e.entry_type:<6} {format_money(e.amount, e.currency):>22} {e.status:<9} {e.account_id}"
                 f" {e.entry_id}" for e in v.entries]
    _print(found, args.json, "\n".join(text))
    return 0


_EXPORT_COLUMNS = {
    "review": ("staging_entry_id", "account_id", "order_id", "entry_type", "amount", "currency",
               "processing_mode", "error_type", "reason", "created_at", "updated_at"),
    "unconfirmed": ("entry_id", "account_id", "order_id", "entry_type", "amount", "currency", "transaction_id",
                    "effective_date", "age_days"),
}


def _csv_cell(value: Any) -> Any:
    """Exact text for money and times, as the JSON forms; nothing for NULL."""
    if value is None:
        return ""
    return value if isinstance(value, (str, int)) else json_encoding.json_scalar(value)


def cmd_exceptions_export(args: argparse.Namespace) -> int:
    """Every open exception as CSV or JSON, streamed (no cap, constant memory): the entries in
    review, or the unconfirmed orders (open expected legs) with their age."""
    import csv

    from recon import ledger, staging
    from recon.pipeline import parse_time

    where = staging.ReviewFilter(error_type=args.error_type, account_id=args.account)
    since = parse_time(args.since)
    columns = _EXPORT_COLUMNS[args.kind]
    _announce_database()
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    count = 0
    try:
        with default_database().begin() as conn:
            rows = (staging.stream_review_entries(conn, where, since) if args.kind == "review"
                    else ledger.stream_open_expected(conn, args.account))
            if args.format == "csv":
                writer = csv.writer(out)
                writer.writerow(columns)
                for count, row in enumerate(rows, 1):
                    writer.writerow([_csv_cell(v) for v in row])
            else:
                out.write("[")
                for count, row in enumerate(rows, 1):
                    out.write(("\n" if count == 1 else ",\n") + json_encoding.dumps(dict(zip(columns, row))))
                out.write("\n]\n")
    finally:
        if args.output:
            out.close()
    print(f"recon: exported {count:,} {'open exception(s)' if args.kind == 'review' else 'unconfirmed leg(s)'}",
          file=sys.stderr)
    return 0


# ---- work -----------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    from recon.ingest.files import dry_run_ingest, ingest_file

    _announce_database()
    source = sys.stdin.buffer if args.file == "-" else args.file
    ingest = dry_run_ingest if args.dry_run else ingest_file
    report = ingest(source, args.account, args.mode, db=default_database(), file_format=args.format,
                    order_id_pattern=args.order_id_pattern, source_file=args.name,
                    progress=lambda p: print(f"  {p.line()}", file=sys.stderr))
    _print(report.to_dict(), args.json, "\n".join(report.summary_lines()))
    if args.dry_run:
        print("recon: dry run: parsed and checked, nothing written", file=sys.stderr)
    if report.rejected_count:
        return 3
    if report.duplicate_count and not report.ingested:
        print("recon: nothing new: every row was ingested before", file=sys.stderr)
        return 4
    return 0


def cmd_ingest_void(args: argparse.Namespace) -> int:
    """`recon ingest void FILE_OR_ID`: take back a wrong ingest (see recon.ingest.void)."""
    from recon.ingest.void import void_ingest

    _announce_database()
    report = void_ingest(args.file_or_id, args.account, db=default_database())
    _print(report.to_dict(), args.json, "\n".join(report.summary_lines()))
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    from recon import pipeline

    _announce_database()

    def progress(summary: dict[str, Any]) -> None:
        print(f"  {summary['claimed']:,} claimed, {summary['completed']:,} completed,"
              f" {summary['manual_review']:,} to review, {summary['retried']:,} to retry"
              f" ({summary['entries_per_s']:,.0f} entries/s)", file=sys.stderr)

    summary = pipeline.process_queue(batch_size=args.batch_size, chunk_size=args.chunk_size, db=default_database(),
                                     max_batches=args.max_batches, progress=progress)
    _print(summary, args.json, _format_summary(summary))
    return 0


def _format_summary(summary: dict[str, Any]) -> str:
    from recon.money import format_money
    from recon.reporting.run_summaries import AMOUNT_WORDS, outcome_words

    parts = ", ".join(f"{n:,} {word}" for word, n in outcome_words(summary) if n or word in ("booked", "matched"))
    mismatched = summary.get("mismatched", 0)
    lines = [f"Run summary: {summary['claimed']:,} claimed: {parts}"
             + (f" ({mismatched:,} of them mismatches)" if mismatched else "")
             + f"; {summary['duration_s']}s, {summary['entries_per_s']:,} entries/s"]
    for error_type, n in summary.get("manual_review_by_type", {}).items():
        lines.append(f"  to review: {error_type} x{n:,}")
    lines += [f"  money {word}: " + ", ".join(format_money(Decimal(a), c) for c, a in summary["amounts"][key].items())
              for key, word in AMOUNT_WORDS if summary.get("amounts", {}).get(key)]
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    from recon.reporting.report import ReportFilter, build_report, format_report

    where = ReportFilter.parse(args.merchant, args.account, args.since)  # checked before the database
    _announce_database()
    report = build_report(default_database(), where)
    _print(report, args.json, format_report(report))
    return 0


# ---- review: exceptions --------------------------------------------------------------------


def _older_than(text: str | None) -> Any:
    """'3d', '12h', '90m' or a number of days, as a timedelta."""
    from recon.review import parse_age

    return parse_age(text, "--older-than")


def _review_database(args: argparse.Namespace) -> Any:
    """The database the review commands work on: the resolved one, or with --demo the one
    `./recon demo` filled (as `./recon ui --demo`)."""
    if args.demo:
        from recon import demo

        os.environ["RECON_DATABASE_URL"] = demo.existing_demo_database()
        reset_default_database()
    _announce_database()
    return default_database()


def cmd_review_list(args: argparse.Namespace) -> int:
    from recon import staging

    if args.limit < 1:
        raise InvalidInputError(f"--limit must be at least 1, got {args.limit}")
    with _review_database(args).begin() as conn:
        items = staging.open_items(conn, args.type, args.account, _older_than(args.older_than), args.limit)
    rows = [{k: v for k, v in vars(i).items() if k != "metadata"} for i in items]
    text = "\n".join(f"{i.staging_entry_id}  {i.error_type:<24} {i.account_id}  {i.order_id or '-':<12}"
                     f" {i.entry_type:<6} {i.amount:>12} {i.currency}  {i.reason or ''}" for i in items)
    _print(rows, args.json, text or "no open items")
    return 0


def cmd_review_show(args: argparse.Namespace) -> int:
    from recon import review

    item = review.show(_review_database(args), args.staging_entry_id)
    lines = [f"{item['staging_entry_id']}: {item['status']} {item['error_type'] or item['match_type'] or ''}",
             f"  line:   {item['processing_mode']} {item['entry_type']} {item['amount']} {item['currency']}"
             f" on {item['account_id']}, order {item['order_id'] or '-'}",
             f"  reason: {item['reason'] or '-'}",
             f"  seen:   {item['seen']}  (pass as --seen to refuse the action if it changes meanwhile)"]
    for field in item["mismatched_fields"]:
        lines.append(f"  mismatch: {field['field']} expected {field['expected']}, actual {field['actual']}")
    lines.append("  candidate expected entries:" if item["candidates"] else "  candidate expected entries: none")
    for c in item["candidates"]:
        lines.append(f"    {c['entry_id']}  {c['entry_type']} {c['amount']} {c['currency']}  difference"
                     f" {c['difference']}  ({c['transaction_status']}, transaction {c['transaction_id']})")
    for d in item["decisions"]:
        lines.append(f"  decision #{d['seq']}: {d['action']} {d['reason_code']} by {d['actor']} at {d['decided_at']}"
                     f" - {d['note']}")
    _print(item, args.json, "\n".join(lines))
    return 0


def cmd_review_act(args: argparse.Namespace) -> int:
    from recon import review

    db = _review_database(args)
    if args.action == "requeue" and args.staging_entry_id is None:
        outcomes = review.requeue_matching(db, reason=args.reason, note=args.note, actor=args.actor,
                                           error_type=args.type, account_id=args.account,
                                           older_than=_older_than(args.older_than))
        print(f"requeued {len(outcomes)} item(s)")
        return 0
    if args.staging_entry_id is None:
        raise InvalidInputError(f"{args.action} needs a STAGING_ENTRY_ID (or, for requeue, a filter)")
    outcome = review.act(db, args.action, args.staging_entry_id, reason=args.reason, note=args.note,
                         actor=args.actor, seen=args.seen, expected_entry_id=getattr(args, "expected", None))
    d = outcome.decision
    _print(vars(d), args.json, f"{d.action} {d.staging_entry_id}: {json_encoding.dumps(d.after)}"
                               f" (audit row #{d.seq} by {d.actor})")
    return 0


def cmd_review_verify(args: argparse.Namespace) -> int:
    from recon import review

    result = review.verify(_review_database(args))
    if result.ok:
        print(f"audit chain intact: {result.rows} decision(s)")
        return 0
    print(f"recon: audit chain broken at row {result.first_broken_seq}: {result.problem}", file=sys.stderr)
    return 1


def cmd_review_export(args: argparse.Namespace) -> int:
    from recon import review

    n = review.export_csv(_review_database(args), args.file, args.type, args.account, _older_than(args.older_than))
    print(f"wrote {n} open item(s) to {args.file}: fill in decision (one of {', '.join(review.ACTIONS)}),"
          f" reason_code, note (expected_entry_id for force-match), then `recon review import`")
    return 0


def cmd_review_import(args: argparse.Namespace) -> int:
    from recon import review

    report = review.import_csv(_review_database(args), args.file, actor=args.actor)
    print(f"applied {len(report.applied)}, already applied {len(report.already_applied)},"
          f" undecided {report.undecided}, errors {len(report.errors)}")
    for number, message in report.errors:
        print(f"  row {number}: {message}", file=sys.stderr)
    return 3 if report.errors else 0


# ---- demo and local Airflow -----------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Migrate, load the demo data, run the DAG once through Airflow, print summary and report."""
    from recon import demo

    demo_url = demo.fresh_demo_database()
    os.environ["RECON_DATABASE_URL"] = demo_url  # the DAG's tasks resolve the same database
    reset_default_database()
    db = default_database()
    print(f"recon: demo database {db.display}", file=sys.stderr)
    reports = demo.load_demo_data(db)
    for report in reports.values():
        print("\n".join(report.summary_lines()))
    print()
    if args.no_airflow:
        from recon import pipeline

        summary = pipeline.process_queue(db=db)
    else:
        from recon import local_airflow

        print("recon: running DAG recon_process_tracker once through Airflow (dag.test)...", file=sys.stderr)
        try:
            summary = local_airflow.run_dag_once()
        except local_airflow.AirflowSetupError as exc:
            print(f"recon: error: {exc}", file=sys.stderr)
            return 1
    print(_format_summary(summary))
    print()
    from recon.reporting.report import build_report, format_report

    report = build_report(db)
    print(format_report(report))
    return 0 if report["invariants"]["ok"] else 1


def cmd_ui(args: argparse.Namespace) -> int:
    from recon import local_airflow

    if args.demo:
        from recon import demo

        os.environ["RECON_DATABASE_URL"] = demo.existing_demo_database()
        print(f"recon: the UI works on the demo database {demo.DEMO_DATABASE}", file=sys.stderr)
    return local_airflow.standalone(port=args.port, host=args.host)


def cmd_compose_env(args: argparse.Namespace) -> int:
    """Strong random secrets for docker compose into .env (existing values kept)."""
    from recon import compose_secrets

    return compose_secrets.main(["--file", str(args.file)])


def cmd_airflow(args: argparse.Namespace) -> int:
    """Any `airflow` command with this project's configuration (e.g. `dags list`)."""
    from recon import local_airflow

    return local_airflow.airflow_cli(args.airflow_args)


def cmd_api_spec(args: argparse.Namespace) -> int:
    """Write the REST API's OpenAPI document (docs/openapi.json), or check that it is current."""
    from recon.web.api.app import openapi_text

    text = openapi_text()
    if args.check:
        if not args.output.exists() or args.output.read_text() != text:
            print(f"recon: error: {args.output} is not current: run `./recon api-spec`", file=sys.stderr)
            return 1
        print(f"{args.output} is current")
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


# ---- parser ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: `recon <command>: error: ...`, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _json_or_text(command: argparse.ArgumentParser, func: Any) -> None:
    """A command that prints its result: as text for people, or with --json the same data for
    programs (``_print`` chooses)."""
    command.add_argument("--json", action="store_true")
    command.set_defaults(func=func)


def _rule_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--priority", metavar="N", help="lower first; default: after the rules on these accounts")
    parser.add_argument("--match-key", action="append", metavar="LINE_FIELD[=EXPECTED_FIELD]",
                        help="repeatable (all must agree): order_id, amount or metadata.<name>;"
                             " default order_id")
    parser.add_argument("--amount-tolerance", metavar="X", help="absolute, e.g. 0.05")
    parser.add_argument("--amount-tolerance-pct", metavar="P", help="percent of the expected amount")
    parser.add_argument("--variance-account", metavar="ACCOUNT", help="books differences within tolerance")
    parser.add_argument("--date-window-days", metavar="D", help="candidates within ±D days of the line")
    parser.add_argument("--group-by", metavar="metadata.NAME",
                        help="N:1: a confirmation fulfils every open expected leg carrying its value of this"
                             " key when their sum equals its amount (within tolerance); replaces --match-key")
    parser.add_argument("--fee-account", metavar="ACCOUNT",
                        help="books the fees of PSP settlement lines confirmed on account_two")
    parser.add_argument("--aging-days", metavar="D",
                        help="an unmatched line waits D days after its effective_date (default:"
                             " RECON_MATCHING_WINDOW_SECONDS after arrival)")


def build_parser() -> argparse.ArgumentParser:
    from recon.ingest import files as ingest_files

    parser = _Parser(prog="recon", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def group(name: str, help: str) -> argparse._SubParsersAction:
        return commands.add_parser(name, help=help).add_subparsers(dest=f"{name}_action", required=True,
                                                                   metavar="ACTION")

    db = group("db", "database: migrate, url, stop")
    db.add_parser("migrate", help="apply pending migrations from sql/").set_defaults(func=cmd_db_migrate)
    url = db.add_parser("url", help="print the database URL the engine uses")
    url.add_argument("--show-password", action="store_true", help="include the password (e.g. for psql)")
    url.add_argument("--hide-password", action="store_true", help=argparse.SUPPRESS)  # the default now
    url.set_defaults(func=cmd_db_url)
    db.add_parser("stop", help="stop the embedded PostgreSQL server").set_defaults(func=cmd_db_stop)

    tracker = group("tracker", "the Process Tracker queue: stats, reap")
    stats = tracker.add_parser("stats", help="counts per status and type, oldest due task")
    _json_or_text(stats, cmd_tracker_stats)
    tracker.add_parser("reap", help="rescue tasks whose lease expired").set_defaults(func=cmd_tracker_reap)

    merchant = group("merchant", "merchants")
    create = merchant.add_parser("create", help="create a merchant; prints its id")
    create.add_argument("name")
    create.add_argument("--id", help="merchant_id (default: generated)")
    create.set_defaults(func=cmd_merchant_create)

    listing = merchant.add_parser("list", help="every merchant")
    _json_or_text(listing, cmd_merchant_list)
    show = merchant.add_parser("show", help="a merchant and its accounts")
    show.add_argument("merchant_id")
    _json_or_text(show, cmd_merchant_show)

    account = group("account", "accounts")
    create = account.add_parser("create", help="create an account; prints its id")
    create.add_argument("--merchant", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--type", required=True, choices=["DEBIT_NORMAL", "CREDIT_NORMAL"])
    create.add_argument("--currency", required=True, help="ISO 4217, e.g. USD")
    create.add_argument("--initial-balance", default="0")
    create.add_argument("--id", help="account_id (default: generated)")
    create.set_defaults(func=cmd_account_create)

    listing = account.add_parser("list", help="every account (of a merchant)")
    listing.add_argument("--merchant", help="only this merchant's accounts")
    _json_or_text(listing, cmd_account_list)
    show = account.add_parser("show", help="an account and its balances")
    show.add_argument("account_id")
    _json_or_text(show, cmd_account_show)

    entry = group("entry", "staging entries")
    show = entry.add_parser("show", help="a staging entry (by id, or every entry of an order id) with its history")
    show.add_argument("id_or_order", metavar="STAGING_ENTRY_ID_OR_ORDER_ID")
    _json_or_text(show, cmd_entry_show)

    transaction = group("transaction", "ledger transactions")
    show = transaction.add_parser("show", help="a transaction with every version and its entries")
    show.add_argument("transaction_id", help="any version's transaction_id, or the logical_transaction_id")
    _json_or_text(show, cmd_transaction_show)

    exceptions = group("exceptions", "the open exceptions (entries in manual review)")
    export = exceptions.add_parser("export", help="every open exception as CSV or JSON, streamed (no cap)")
    export.add_argument("--format", choices=["csv", "json"], default="csv")
    export.add_argument("--kind", choices=sorted(_EXPORT_COLUMNS), default="review",
                        help="review: entries in manual review (default); unconfirmed: open expected legs with age")
    export.add_argument("--error-type", help="only this reason, e.g. MismatchError")
    export.add_argument("--account", help="only this account_id")
    export.add_argument("--since", help="only entries created at or after this ISO 8601 time")
    export.add_argument("--output", "-o", help="write to this file (default: standard output)")
    export.set_defaults(func=cmd_exceptions_export)

    rule = group("rule", "recon rules: create, list, show, update, delete")
    create = rule.add_parser("create", help="map account_one (entries arrive) to its contra account_two")
    create.add_argument("--account-one", required=True)
    create.add_argument("--account-two", required=True)
    create.add_argument("--id", help="rule id (default: generated)")
    _rule_arguments(create)
    create.set_defaults(func=cmd_rule_create)
    listing = rule.add_parser("list", help="every rule, in the order confirmations try them")
    _json_or_text(listing, cmd_rule_list)
    show = rule.add_parser("show", help="one rule's settings")
    show.add_argument("rule_id")
    _json_or_text(show, cmd_rule_show)
    update = rule.add_parser("update", help="change a rule's settings (its accounts stay)")
    update.add_argument("rule_id")
    _rule_arguments(update)
    update.add_argument("--no-variance-account", action="store_true", help="remove the variance account")
    update.add_argument("--no-date-window", action="store_true", help="remove the date window")
    update.add_argument("--default-aging", action="store_true", help="age by RECON_MATCHING_WINDOW_SECONDS again")
    update.add_argument("--no-group-by", action="store_true", help="match one expected leg by the match keys again")
    update.add_argument("--no-fee-account", action="store_true", help="remove the fee account")
    update.set_defaults(func=cmd_rule_update)
    delete = rule.add_parser("delete", help="delete a rule no ledger entry refers to")
    delete.add_argument("rule_id")
    delete.set_defaults(func=cmd_rule_delete)

    ingest = commands.add_parser("ingest", help="ingest a statement file (CSV, camt.053/054, MT940/942, BAI2) or a"
                                                " PSP settlement report (Adyen, Stripe)")
    ingest.add_argument("file", help="the file, or - for standard input")
    ingest.add_argument("--dry-run", action="store_true", help="parse and check, report as usual, write nothing")
    ingest.add_argument("--name", help="the name stored as each entry's source_file (default: the file's name;"
                                       " give one for standard input, to void it later)")
    ingest.add_argument("--account", required=True)
    ingest.add_argument("--mode", choices=["TRANSACTION", "CONFIRMATION"],
                        help="required, except for a PSP settlement report (each line's type gives its mode)")
    ingest.add_argument("--format", default="auto", choices=ingest_files.FORMATS,
                        help="the file's format (default: detected from its content)")
    ingest.add_argument("--order-id-pattern", default=None,
                        help="regular expression finding an order id in a bank line's remittance text"
                             " (default: RECON_ORDER_ID_PATTERN)")
    _json_or_text(ingest, cmd_ingest)

    void = commands.add_parser("ingest-void", help="`ingest void FILE_OR_ID`: discard a file's entries not yet"
                               " processed (their tasks cancelled); names those already processed")
    void.add_argument("file_or_id", help="the file (path or name) or the staging_entry_id of one of its lines")
    void.add_argument("--account", help="only the file's entries on this account")
    _json_or_text(void, cmd_ingest_void)

    process = commands.add_parser("process", help="drain the queue in-process (the DAG's own steps)")
    process.add_argument("--batch-size", type=int, default=settings.batch_size())
    process.add_argument("--chunk-size", type=int, default=settings.chunk_size())
    process.add_argument("--max-batches", type=int, default=None)
    _json_or_text(process, cmd_process)

    reprocess = commands.add_parser("reprocess", help="requeue FAILED tasks and manual-review entries in scope")
    reprocess.add_argument("--created-from", help="ISO 8601, inclusive")
    reprocess.add_argument("--created-to", help="ISO 8601, exclusive")
    reprocess.add_argument("--task-id", action="append", help="repeatable")
    reprocess.add_argument("--error-type", help="only entries in review for this reason, e.g. NoReconRuleFoundError")
    reprocess.add_argument("--account", help="only entries of this account_id")
    reprocess.add_argument("--exclude-error-type", action="append", metavar="ERROR_TYPE",
                           help="leave entries in review for this reason alone (repeatable)")
    reprocess.add_argument("--dry-run", action="store_true", help="say what would be reopened; write nothing")
    _json_or_text(reprocess, cmd_reprocess)

    _add_review_commands(group("review", "exceptions: list, show, act on, export/import, verify the audit log"))

    report = commands.add_parser("report", help="statuses, manual-review reasons, balances, invariants")
    report.add_argument("--merchant", help="only this merchant's accounts (merchant_id)")
    report.add_argument("--account", help="only this account (account_id)")
    report.add_argument("--since", help="only entries and transactions created since (ISO 8601 date or time)")
    _json_or_text(report, cmd_report)

    demo = commands.add_parser("demo", help="the main job on demo data: ingest, run the DAG once, report")
    demo.add_argument("--no-airflow", action="store_true", help="process in-process instead of dag.test()")
    demo.set_defaults(func=cmd_demo)

    ui = commands.add_parser("ui", help="Airflow standalone with this project's DAGs and plugins")
    ui.add_argument("--port", type=int, default=8080)
    ui.add_argument("--host", default=None,
                    help="interface to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every one)")
    ui.add_argument("--demo", action="store_true", help="watch the demo database that ./recon demo filled")
    ui.set_defaults(func=cmd_ui)

    compose_env = commands.add_parser("compose-env", help="generate the docker compose secrets into .env")
    compose_env.add_argument("--file", type=Path, default=settings.PROJECT_ROOT / ".env",
                             help="the .env file (default: .env next to docker-compose.yaml)")
    compose_env.set_defaults(func=cmd_compose_env)

    api_spec = commands.add_parser("api-spec", help="write the REST API's OpenAPI document (docs/openapi.json)")
    api_spec.add_argument("--output", type=Path, default=settings.PROJECT_ROOT / "docs" / "openapi.json")
    api_spec.add_argument("--check", action="store_true", help="exit 1 unless the file is current")
    api_spec.set_defaults(func=cmd_api_spec)

    airflow = commands.add_parser("airflow", help="run an airflow CLI command with this project's configuration")
    airflow.add_argument("airflow_args", nargs=argparse.REMAINDER, metavar="ARGS")
    airflow.set_defaults(func=cmd_airflow)
    return parser


def _add_review_commands(review: argparse._SubParsersAction) -> None:
    from recon.review import ACTIONS, REASON_CODES

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--type", help="error_type, e.g. MismatchError")
        p.add_argument("--account", help="account_id")
        p.add_argument("--older-than", help="created before this long ago: 3d, 12h, 90m")

    listing = review.add_parser("list", help="open manual-review items, oldest first")
    filters(listing)
    listing.add_argument("--limit", type=int, default=1000)
    _json_or_text(listing, cmd_review_list)
    show = review.add_parser("show", help="an item: the line, its reason, mismatched fields, candidates")
    show.add_argument("staging_entry_id", metavar="STAGING_ENTRY_ID")
    _json_or_text(show, cmd_review_show)
    helps = {"accept": "fulfil the mismatched expected entry at the line's amount; the difference to the"
                       " rule's variance account",
             "force-match": "fulfil a named open expected entry with this line",
             "ignore": "PROCESSED with no ledger effect (match_type Ignored)",
             "reopen": "undo a match or mismatch: the expected entry EXPECTED again, the line back in review",
             "requeue": "back to the queue (one item, or every item matching a filter)"}
    for action in ACTIONS:
        p = review.add_parser(action, help=helps[action])
        p.add_argument("staging_entry_id", metavar="STAGING_ENTRY_ID", nargs="?" if action == "requeue" else None)
        p.add_argument("--reason", required=True, choices=REASON_CODES)
        p.add_argument("--note", default="")
        p.add_argument("--actor", default=None, help="who decides (default: the OS user)")
        p.add_argument("--seen", help="the item's `seen` from `review show`: refuse if it changed since")
        p.add_argument("--json", action="store_true")
        if action == "force-match":
            p.add_argument("--expected", required=True, metavar="ENTRY_ID", help="the open expected entry")
        if action == "requeue":
            filters(p)
        p.set_defaults(func=cmd_review_act, action=action)
    verify = review.add_parser("verify", help="recompute the audit log's hash chain; names the first broken row")
    verify.set_defaults(func=cmd_review_verify)
    export = review.add_parser("export", help="open items to CSV with a decision column to fill in")
    export.add_argument("file", type=Path, metavar="FILE.csv")
    filters(export)
    export.set_defaults(func=cmd_review_export)
    imported = review.add_parser("import", help="apply the filled-in decisions of an export, row by row")
    imported.add_argument("file", type=Path, metavar="FILE.csv")
    imported.add_argument("--actor", default=None, help="who decides (default: the OS user)")
    imported.set_defaults(func=cmd_review_import)
    for command in review.choices.values():
        command.add_argument("--demo", action="store_true", help="work on the database `./recon demo` filled")
def _subcommand_words(argv: list[str]) -> list[str]:
    """`ingest void X` is the command `ingest-void X` (`ingest FILE` takes a file as its first word)."""
    words = [i for i, a in enumerate(argv) if not a.startswith("-")]
    if len(words) >= 2 and argv[words[0]] == "ingest" and argv[words[1]] == "void" and words[1] == words[0] + 1:
        return [*argv[: words[0]], "ingest-void", *argv[words[1] + 1:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_subcommand_words(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except ReconError as exc:  # bad input or configuration: the message says what to fix
        print(f"recon: error: {exc}", file=sys.stderr)
        return 2
    except sqlalchemy.exc.OperationalError as exc:  # unreachable server, missing database, a timeout, ...
        print(f"recon: error: cannot use the database ({describe_error(exc)})", file=sys.stderr)
        return 2
    except sqlalchemy.exc.ProgrammingError as exc:
        if "does not exist" in str(exc.orig):
            print(f"recon: error: {str(exc.orig).splitlines()[0]} -- run `./recon db migrate` first",
                  file=sys.stderr)
            return 2
        return _bug(exc, args.debug)
    except Exception as exc:  # a bug, not bad input: say so, with the traceback on request
        return _bug(exc, args.debug)


def _bug(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc)
    else:
        print(f"recon: unexpected error (a bug; rerun with --debug for the traceback):"
              f" {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1
