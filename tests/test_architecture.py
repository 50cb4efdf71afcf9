"""The shape the architecture promises, checked on the source: each table's SQL in its owner, no
SQL in the pipeline, the default database only at entry points, no import cycles."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.reliability.sql_scan import looks_like_sql

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "plugins").rglob("*.py"), *(ROOT / "dags").glob("*.py")])

# table -> the one module whose SQL may name it
OWNERS = {
    "process_tracker": "plugins/recon/tracker.py",
    "staging_entries": "plugins/recon/staging.py",
    "staging_entry_outcomes": "plugins/recon/staging.py",
    "merchant_accounts": "plugins/recon/accounts.py",
    "accounts": "plugins/recon/accounts.py",
    "recon_rules": "plugins/recon/accounts.py",
    "transactions": "plugins/recon/ledger.py",
    "entries": "plugins/recon/ledger.py",
    "run_summaries": "plugins/recon/reporting/run_summaries.py",
    "recon_schema_migrations": "plugins/recon/db/migrations.py",
    "api_idempotency_keys": "plugins/recon/web/api/idempotency.py",
    "review_decisions": "plugins/recon/review.py",
    "match_groups": "plugins/recon/match_groups.py",
    "match_group_items": "plugins/recon/match_groups.py",
}
_TABLE_REFERENCE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE|EXISTS)\s+(?:ONLY\s+)?([a-z_][a-z0-9_]*)")

# the only callers of default_database(): the CLI, DAG task bodies, the UI plugin and its web app,
# and the documented library entry points (the tracker's seed API, the library producer)
DEFAULT_DATABASE_CALLERS = {
    "plugins/recon/cli.py", "plugins/recon_ui.py", "plugins/recon/tracker.py", "plugins/recon/staging.py",
    "dags/recon_process_tracker.py", "dags/recon_maintenance.py",
}
DEFAULT_DATABASE_CALLER_FOLDERS = ("plugins/recon/web/",)


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _sql_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants (f-string parts joined) that look like SQL; docstrings are prose."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    parts_of_fstrings = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = " ".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in docstrings and id(node) not in parts_of_fstrings):
            text = node.value
        else:
            continue
        if looks_like_sql(text) or _TABLE_REFERENCE.search(text) and re.search(r"\b(SELECT|UPDATE|DELETE|INSERT)\b", text):
            found.append((node.lineno, text))
    return found


def table_violations(path: str, source: str) -> list[str]:
    """`path:line: table` for each table named in SQL outside its owner module."""
    violations = []
    for line, text in _sql_strings(ast.parse(source)):
        for table in _TABLE_REFERENCE.findall(text):
            owner = OWNERS.get(table)
            if owner is not None and owner != path:
                violations.append(f"{path}:{line}: {table} (owned by {owner})")
    return violations


def test_each_table_is_named_in_sql_only_by_its_owner():
    violations = [v for path in SOURCES for v in table_violations(_relative(path), path.read_text())]
    assert not violations, "SQL on a table outside its owner module:\n" + "\n".join(violations)


def test_the_ownership_check_finds_a_violation():
    """The rule can fail: a pipeline statement on process_tracker is reported, with its line."""
    source = 'import sqlalchemy as sa\n\nQ = sa.text("SELECT task_id FROM process_tracker WHERE status = :s")\n'
    assert table_violations("plugins/recon/pipeline.py", source) == [
        "plugins/recon/pipeline.py:3: process_tracker (owned by plugins/recon/tracker.py)"]
    assert table_violations("plugins/recon/tracker.py", source) == []
    joined = 'Q = f"""UPDATE staging_entries s SET status = x FROM entries e WHERE {w}"""\n'
    assert len(table_violations("plugins/recon/reporting/monitoring.py", joined)) == 2


@pytest.mark.parametrize("module", ["plugins/recon/pipeline.py", "plugins/recon/reporting/monitoring.py",
                                    "plugins/recon/reporting/report.py"])
def test_orchestration_and_read_models_contain_no_sql(module):
    assert _sql_strings(ast.parse((ROOT / module).read_text())) == []


def test_default_database_is_called_only_at_entry_points():
    callers = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name == "default_database":
                    callers.add(_relative(path))
    below = {c for c in callers
             if c not in DEFAULT_DATABASE_CALLERS and not c.startswith(DEFAULT_DATABASE_CALLER_FOLDERS)}
    assert not below, f"default_database() called below the entry points in {sorted(below)}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT / "plugins").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles_between_recon_modules():
    """Module-level imports only (an import inside a function is deferred on purpose)."""
    modules = {_module_name(p): p for p in (ROOT / "plugins" / "recon").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imports = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recon"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                imports.update(t for t in targets if t in modules and t != name)
            elif isinstance(node, ast.Import):
                imports.update(a.name for a in node.names if a.name in modules and a.name != name)
        graph[name] = imports

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in path and len(path) < 20:
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for name in sorted(graph) if (c := cycle_from(name))]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0])
