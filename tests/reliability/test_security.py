"""Security: no string-built SQL with user data; the database password never in output or logs.

The SQL rule is documented in tests/reliability/sql_scan.py; its allowlist names the few constant
fragments it cannot prove constant by itself, each with the reason.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.parse
import uuid

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.reliability import figures
from tests.reliability.helpers import REPO_ROOT, worker_env
from tests.reliability.sql_scan import ALLOWED_FRAGMENTS, scan_source, scan_tree

BAD = '''
import sqlalchemy as sa
from psycopg import sql

def f_string(conn, user):
    conn.execute(sa.text(f"SELECT * FROM accounts WHERE account_name = '{user}'"))  # BAD

def percent(cursor, user):
    cursor.execute("SELECT * FROM accounts WHERE account_name = '%s'" % user)  # BAD

def concatenation(conn, account_id):
    conn.exec_driver_sql("DELETE FROM accounts WHERE account_id = " + account_id)  # BAD

def format_then_text(conn, order_id):
    query = "SELECT * FROM entries WHERE order_id = {}".format(order_id)  # BAD
    conn.execute(sa.text(query))  # BAD

def psycopg_sql_concatenation(cursor, table):
    cursor.execute(sql.SQL("SELECT * FROM " + table))  # BAD

def built_for_later(row):
    return f"UPDATE staging_entries SET status = 'PROCESSED' WHERE staging_entry_id = '{row.id}'"  # BAD

def joined_from_input(conn, columns):
    conn.execute(sa.text(f"SELECT {', '.join(columns)} FROM accounts"))  # BAD
'''

GOOD = '''
import sqlalchemy as sa
from psycopg import sql

_COLUMNS = "account_id, account_name"
_LOCK = " FOR UPDATE"

def bind_parameters(conn, user):
    conn.execute(sa.text(f"SELECT {_COLUMNS} FROM accounts WHERE account_name = :name"), {"name": user})

def constant_switch(conn, lock):
    conn.execute(sa.text("SELECT 1 FROM accounts" + (_LOCK if lock else "")))

def driver_quoted_identifier(conn, name):
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

def constant_list(conn, finished):
    sets = ["status = :status"]
    if finished:
        sets.append("completed_at = now()")
    sets += ["updated_at = now()"]
    conn.execute(sa.text(f"UPDATE process_tracker SET {', '.join(sets)} WHERE task_id = :id"))

def statement_object(conn, statement):
    conn.execute(statement)  # a prepared statement object, not a string: nothing to check here
'''


def test_no_string_built_sql_with_user_data_in_plugins_or_dags():
    violations, files = scan_tree(REPO_ROOT)
    assert files >= 10, f"only {files} files scanned: wrong root?"
    assert not violations, "string-built SQL (use bind parameters):\n  " + "\n  ".join(map(str, violations))


def test_every_allowlisted_fragment_is_still_used_and_needed():
    """An allowlist entry that no longer matches anything, or that the rule no longer needs, goes."""
    for (path, expression), reason in ALLOWED_FRAGMENTS.items():
        source = (REPO_ROOT / path).read_text(encoding="utf-8")
        assert expression in source, f"stale allowlist entry {path}: {expression} ({reason})"
        without = {k: v for k, v in ALLOWED_FRAGMENTS.items() if k != (path, expression)}
        assert scan_source(source, path, allowed=without), f"allowlist entry not needed: {path}: {expression}"


def test_the_rule_catches_string_built_sql_and_accepts_constant_fragments():
    flagged = scan_source(BAD, "bad.py", allowed={})
    bad_lines = [i + 1 for i, line in enumerate(BAD.splitlines()) if line.endswith("# BAD")]
    assert sorted({v.line for v in flagged}) == bad_lines, [str(v) for v in flagged]
    assert {v.part for v in flagged} >= {"user", "account_id", "order_id", "table", "row.id", "columns"}
    assert scan_source(GOOD, "good.py", allowed={}) == []


# ---- credentials --------------------------------------------------------------------------------


@pytest.fixture
def secret_role(db_url, pg_admin_url):
    """A login role with a password on the test server, allowed to use the test database."""
    role = f"recon_sec_{uuid.uuid4().hex[:8]}"
    password = f"Pw-{uuid.uuid4().hex}-s3cr3t!:@/"  # characters a URL must escape
    database = make_url(db_url).database
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    url = make_url(db_url).set(username=role, password=password).render_as_string(hide_password=False)
    try:
        yield role, password, url, database
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _recon(url: str, *args: str) -> subprocess.CompletedProcess:
    env = worker_env(url, "recon-security")
    return subprocess.run([sys.executable, "-m", "recon", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_database_password_never_appears_in_cli_output_or_logs(secret_role, books):
    role, password, url, database = secret_role
    books.stage([books.transaction("sec-1", "1.00"), books.confirmation("nope", "1.00")])
    forms = {password, urllib.parse.quote(password, safe=""), urllib.parse.quote_plus(password),
             urllib.parse.quote(password)}
    wrong_database = make_url(url).set(database=f"{database}_missing").render_as_string(hide_password=False)
    unparsable = url.replace("postgresql://", "postgresql://:bad@", 1)  # not a URL the resolver accepts
    runs = {
        "tracker stats": _recon(url, "-v", "tracker", "stats"),
        "tracker stats --json": _recon(url, "tracker", "stats", "--json"),
        "process -v": _recon(url, "-v", "process", "--json"),
        "tracker reap -v": _recon(url, "-v", "tracker", "reap"),
        "report": _recon(url, "report"),
        "missing database": _recon(wrong_database, "-v", "tracker", "stats"),
        "bad url": _recon(unparsable, "tracker", "stats"),
    }
    figures.record(bad_inputs_tried=2)
    assert runs["tracker stats"].returncode == 0, runs["tracker stats"].stderr
    assert runs["process -v"].returncode == 0, runs["process -v"].stderr
    assert role in runs["tracker stats"].stderr  # the database is named, with its user...
    assert "***" in runs["tracker stats"].stderr  # ...and the password masked
    assert runs["missing database"].returncode != 0 and runs["bad url"].returncode != 0
    for name, run in runs.items():
        for form in forms:
            assert form not in run.stdout, f"password in stdout of {name}"
            assert form not in run.stderr, f"password in stderr of {name}:\n{run.stderr[-2000:]}"


def test_the_password_check_would_see_a_leak(secret_role):
    """`recon db url --show-password` prints the password on purpose (for psql): the check above must notice it."""
    role, password, url, database = secret_role
    shown = _recon(url, "db", "url", "--show-password")
    assert shown.returncode == 0 and urllib.parse.quote(password, safe="") in shown.stdout
    hidden = _recon(url, "db", "url")
    assert urllib.parse.quote(password, safe="") not in hidden.stdout and password not in hidden.stdout

