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
    """Print the resolved URL with its password, for tools that need it (e.g. psql)."""
    url = default_database().url.set(drivername="postgresql")
    print(url.render_as_string(hide_password=args.hide_password))
    return 0


def cmd_db_stop(args: argparse.Namespace) -> int:
    print("embedded PostgreSQL stopped" if stop_embedded_server() else "embedded PostgreSQL was not running")
    return 0


def cmd_tracker_stats(args: argparse.Namespace) -> int:
    from recon.tracker import ProcessTracker

    _announce_database()
    stats = ProcessTracker(default_database()).stats()
    _print(stats, args.json, "\n".join(f"{k:>24}: {v}" for k, v in stats.items()))
    return 0


def cmd_tracker_reap(args: argparse.Namespace) -> int:
    from recon import pipeline

    _announce_database()
    result = pipeline.reap(default_database())
    print(f"rescued {result['retried']} task(s) to RETRY, {result['failed']} to FAILED")
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    from recon import pipeline

    _announce_database()
    result = pipeline.requeue_scope(args.created_from, args.created_to, args.task_id or None, db=default_database())
    print(f"requeued {result['requeued_tasks']} FAILED task(s);"
          f" reopened {result['reopened_entries']} entries from manual review")
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
    for flag, name in (("no_variance_account", "variance_account_id"), ("no_date_window", "date_window_days"),
                       ("default_aging", "aging_days")):
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

    return (f"{rule.id}  {rule.account_one_id} -> {rule.account_two_id}  priority {rule.priority}"
            f"  keys {match_keys.keys_text(rule.match_keys)}{_tolerance_text(rule)}")


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
        f"  match keys         {match_keys.keys_text(rule.match_keys)}",
        f"  amount tolerance   {rule.amount_tolerance} or {rule.amount_tolerance_pct}% of the expected amount",
        f"  variance account   {rule.variance_account_id or '-'}",
        f"  date window        {window}",
        f"  ageing             {aging}",
    ])


# ---- work -----------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    from recon.ingest.files import ingest_file

    _announce_database()
    report = ingest_file(args.file, args.account, args.mode, db=default_database(), file_format=args.format,
                         order_id_pattern=args.order_id_pattern,
                         progress=lambda p: print(f"  {p.line()}", file=sys.stderr))
    _print(report.to_dict(), args.json, "\n".join(report.summary_lines()))
    return 3 if report.rejected_count else 0


def cmd_process(args: argparse.Namespace) -> int:
    from recon import pipeline

    _announce_database()

    def progress(summary: dict[str, Any]) -> None:
        print(f"  {summary['claimed']:,} claimed, {summary['completed']:,} completed,"
              f" {summary['failed']:,} failed, {summary['retried']:,} retried"
              f" ({summary['entries_per_s']:,.0f} entries/s)", file=sys.stderr)

    summary = pipeline.process_queue(batch_size=args.batch_size, chunk_size=args.chunk_size, db=default_database(),
                                     max_batches=args.max_batches, progress=progress)
    _print(summary, args.json, _format_summary(summary))
    return 0


def _format_summary(summary: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {summary[k]:,}" for k in (
        "claimed", "completed", "failed", "retried", "booked", "matched", "mismatched", "manual_review"))
    lines = [f"Run summary: {counts}; {summary['duration_s']}s, {summary['entries_per_s']:,} entries/s"]
    for error_type, n in summary.get("manual_review_by_type", {}).items():
        lines.append(f"  manual review: {error_type} x{n}")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    from recon.reporting.report import build_report, format_report

    _announce_database()
    report = build_report(default_database())
    _print(report, args.json, format_report(report))
    return 0


# ---- review: exceptions --------------------------------------------------------------------


def _older_than(text: str | None) -> Any:
    """'3d', '12h', '90m' or a number of days, as a timedelta."""
    import datetime as dt

    if text is None:
        return None
    units = {"d": "days", "h": "hours", "m": "minutes"}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "d")
    try:
        value = float(number)
    except ValueError:
        raise InvalidInputError(f"--older-than {text!r} must look like 3d, 12h or 90m") from None
    if value < 0:
        raise InvalidInputError(f"--older-than {text!r} must not be negative")
    return dt.timedelta(**{units[unit]: value})


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
    return local_airflow.standalone(port=args.port)


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


def _rule_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--priority", metavar="N", help="lower first; default: after the rules on these accounts")
    parser.add_argument("--match-key", action="append", metavar="LINE_FIELD[=EXPECTED_FIELD]",
                        help="repeatable (all must agree): order_id, amount or metadata.<name>;"
                             " default order_id")
    parser.add_argument("--amount-tolerance", metavar="X", help="absolute, e.g. 0.05")
    parser.add_argument("--amount-tolerance-pct", metavar="P", help="percent of the expected amount")
    parser.add_argument("--variance-account", metavar="ACCOUNT", help="books differences within tolerance")
    parser.add_argument("--date-window-days", metavar="D", help="candidates within ±D days of the line")
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
    url.add_argument("--hide-password", action="store_true")
    url.set_defaults(func=cmd_db_url)
    db.add_parser("stop", help="stop the embedded PostgreSQL server").set_defaults(func=cmd_db_stop)

    tracker = group("tracker", "the Process Tracker queue: stats, reap")
    stats = tracker.add_parser("stats", help="counts per status and type, oldest due task")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_tracker_stats)
    tracker.add_parser("reap", help="rescue tasks whose lease expired").set_defaults(func=cmd_tracker_reap)

    merchant = group("merchant", "merchants")
    create = merchant.add_parser("create", help="create a merchant; prints its id")
    create.add_argument("name")
    create.add_argument("--id", help="merchant_id (default: generated)")
    create.set_defaults(func=cmd_merchant_create)

    account = group("account", "accounts")
    create = account.add_parser("create", help="create an account; prints its id")
    create.add_argument("--merchant", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--type", required=True, choices=["DEBIT_NORMAL", "CREDIT_NORMAL"])
    create.add_argument("--currency", required=True, help="ISO 4217, e.g. USD")
    create.add_argument("--initial-balance", default="0")
    create.add_argument("--id", help="account_id (default: generated)")
    create.set_defaults(func=cmd_account_create)

    rule = group("rule", "recon rules: create, list, show, update, delete")
    create = rule.add_parser("create", help="map account_one (entries arrive) to its contra account_two")
    create.add_argument("--account-one", required=True)
    create.add_argument("--account-two", required=True)
    create.add_argument("--id", help="rule id (default: generated)")
    _rule_arguments(create)
    create.set_defaults(func=cmd_rule_create)
    listing = rule.add_parser("list", help="every rule, in the order confirmations try them")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_rule_list)
    show = rule.add_parser("show", help="one rule's settings")
    show.add_argument("rule_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_rule_show)
    update = rule.add_parser("update", help="change a rule's settings (its accounts stay)")
    update.add_argument("rule_id")
    _rule_arguments(update)
    update.add_argument("--no-variance-account", action="store_true", help="remove the variance account")
    update.add_argument("--no-date-window", action="store_true", help="remove the date window")
    update.add_argument("--default-aging", action="store_true", help="age by RECON_MATCHING_WINDOW_SECONDS again")
    update.set_defaults(func=cmd_rule_update)
    delete = rule.add_parser("delete", help="delete a rule no ledger entry refers to")
    delete.add_argument("rule_id")
    delete.set_defaults(func=cmd_rule_delete)

    ingest = commands.add_parser("ingest", help="ingest a statement file (CSV, camt.053/054, MT940/942, BAI2)")
    ingest.add_argument("file")
    ingest.add_argument("--account", required=True)
    ingest.add_argument("--mode", required=True, choices=["TRANSACTION", "CONFIRMATION"])
    ingest.add_argument("--format", default="auto", choices=ingest_files.FORMATS,
                        help="the file's format (default: detected from its content)")
    ingest.add_argument("--order-id-pattern", default=None,
                        help="regular expression finding an order id in a bank line's remittance text"
                             " (default: RECON_ORDER_ID_PATTERN)")
    ingest.add_argument("--json", action="store_true")
    ingest.set_defaults(func=cmd_ingest)

    process = commands.add_parser("process", help="drain the queue in-process (the DAG's own steps)")
    process.add_argument("--batch-size", type=int, default=settings.batch_size())
    process.add_argument("--chunk-size", type=int, default=settings.chunk_size())
    process.add_argument("--max-batches", type=int, default=None)
    process.add_argument("--json", action="store_true")
    process.set_defaults(func=cmd_process)

    reprocess = commands.add_parser("reprocess", help="requeue FAILED tasks and manual-review entries in scope")
    reprocess.add_argument("--created-from", help="ISO 8601, inclusive")
    reprocess.add_argument("--created-to", help="ISO 8601, exclusive")
    reprocess.add_argument("--task-id", action="append", help="repeatable")
    reprocess.set_defaults(func=cmd_reprocess)

    _add_review_commands(group("review", "exceptions: list, show, act on, export/import, verify the audit log"))

    report = commands.add_parser("report", help="statuses, manual-review reasons, balances, invariants")
    report.add_argument("--json", action="store_true")
    report.set_defaults(func=cmd_report)

    demo = commands.add_parser("demo", help="the main job on demo data: ingest, run the DAG once, report")
    demo.add_argument("--no-airflow", action="store_true", help="process in-process instead of dag.test()")
    demo.set_defaults(func=cmd_demo)

    ui = commands.add_parser("ui", help="Airflow standalone with this project's DAGs and plugins")
    ui.add_argument("--port", type=int, default=8080)
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
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_review_list)
    show = review.add_parser("show", help="an item: the line, its reason, mismatched fields, candidates")
    show.add_argument("staging_entry_id", metavar="STAGING_ENTRY_ID")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_review_show)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
