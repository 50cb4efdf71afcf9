"""The `recon` command line: database setup, producers, processing and reports.

Every command prints which database it uses (never its password) on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable

from recon import migrations
from recon.db import DatabaseConfigError, default_database, stop_embedded_server
from recon.tracker import ProcessTracker

Command = Callable[[argparse.Namespace], int]


def _announce_database() -> None:
    print(f"recon: database {default_database().display}", file=sys.stderr)


def cmd_db_migrate(args: argparse.Namespace) -> int:
    _announce_database()
    applied = migrations.migrate(default_database())
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def cmd_db_url(args: argparse.Namespace) -> int:
    """Print the resolved URL with its password, for tools that need it (e.g. psql)."""
    db = default_database()
    url = db.url.set(drivername="postgresql")
    print(url.render_as_string(hide_password=args.hide_password))
    return 0


def cmd_db_stop(args: argparse.Namespace) -> int:
    print("embedded PostgreSQL stopped" if stop_embedded_server() else "embedded PostgreSQL was not running")
    return 0


def cmd_tracker_stats(args: argparse.Namespace) -> int:
    _announce_database()
    _print_json_or_table(ProcessTracker(default_database()).stats(), args.json)
    return 0


def cmd_tracker_reap(args: argparse.Namespace) -> int:
    _announce_database()
    result = ProcessTracker(default_database()).reap_expired_leases()
    print(f"rescued {len(result.retried)} task(s) to RETRY, {len(result.failed)} to FAILED")
    return 0


def _print_json_or_table(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    for key, value in data.items():
        print(f"{key:>24}: {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = commands.add_parser("db", help="database: migrate, url, stop").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    db.add_parser("migrate", help="apply pending migrations from sql/").set_defaults(func=cmd_db_migrate)
    url = db.add_parser("url", help="print the database URL the engine uses")
    url.add_argument("--hide-password", action="store_true")
    url.set_defaults(func=cmd_db_url)
    db.add_parser("stop", help="stop the embedded PostgreSQL server").set_defaults(func=cmd_db_stop)

    tracker = commands.add_parser("tracker", help="the Process Tracker queue").add_subparsers(
        dest="tracker_command", required=True, metavar="ACTION"
    )
    stats = tracker.add_parser("stats", help="counts per status and type, oldest due task")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_tracker_stats)
    tracker.add_parser("reap", help="rescue tasks whose lease expired").set_defaults(func=cmd_tracker_reap)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (DatabaseConfigError, ValueError, LookupError) as exc:
        print(f"recon: error: {exc}", file=sys.stderr)
        return 2
