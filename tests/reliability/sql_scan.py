"""An AST rule against string-built SQL with user data, used by test_security.py.

The rule
--------
A *string-built* expression is an f-string with placeholders, ``%`` formatting, ``+``
concatenation, ``str.format`` or ``str.join``. It is checked when

(a) it reaches a SQL sink: ``sa.text(...)`` / ``sqlalchemy.text(...)`` / ``text(...)``,
    psycopg's ``sql.SQL(...)``, or the first argument of ``.execute`` / ``.executemany`` /
    ``.exec_driver_sql`` (directly or through a name bound to it); or
(b) its literal text looks like SQL (a statement keyword such as SELECT/UPDATE/DROP and a clause
    keyword such as FROM/SET/WHERE/TABLE), wherever it is built.

Such an expression passes only if every interpolated part is a *constant fragment*:

- a literal (string, number, None);
- a name bound, in its module or in the enclosing function, only to constant fragments (a list
  counts when it is built only from constant fragments: literal, ``append``, ``extend``, ``+=``);
- a conditional expression, concatenation, f-string, ``%``/``format`` or ``sep.join(...)`` made of
  constant fragments;
- psycopg's composition objects ``sql.Identifier`` / ``sql.Literal`` / ``sql.Placeholder`` (quoted by
  the driver), and ``sql.SQL`` / ``sa.text`` of a constant fragment;
- an expression listed in ``ALLOWED_FRAGMENTS`` with the reason it cannot carry user data.

Anything else (a function parameter, an attribute, a call result, a subscript, a loop variable)
may carry user data as far as the rule can tell, and is reported with file and line. Values
belong in bind parameters (``:name`` with a parameter dict), never in the SQL text.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# (path relative to the scanned root's parent, expression as ast.unparse prints it) -> why it is safe
ALLOWED_FRAGMENTS: dict[tuple[str, str], str] = {
    ("plugins/recon/tracker.py", "_FIELD_NAMES"):
        "the field names of the Task dataclass (tracker.py's column list), fixed in code",
    ("plugins/recon/db/migrations.py", "migration.sql"):
        "the text of a migration file in this repository's sql/ directory, not input",
    ("plugins/recon/staging.py", "tracker.INSERT_TASKS_FOR_NEW_ENTRIES"):
        "the tracker's constant INSERT fragment for the tasks of new entries (tracker.py owns process_tracker)",
}

_STATEMENT = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|DROP|ALTER|TRUNCATE|GRANT|REVOKE)\b")
_CLAUSE = re.compile(r"\b(FROM|INTO|SET|WHERE|TABLE|DATABASE|VALUES|ROLE|RETURNING|SCHEMA)\b")
_EXECUTE = {"execute", "executemany", "exec_driver_sql"}
_DRIVER_QUOTED = {"Identifier", "Literal", "Placeholder"}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    expression: str
    part: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.part!r} interpolated into SQL: {self.expression[:160]}"


def looks_like_sql(text: str) -> bool:
    return bool(_STATEMENT.search(text) and _CLAUSE.search(text))


def _literal_text(node: ast.AST) -> str:
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _is_built(node: ast.AST) -> bool:
    """Does this expression build a string from parts?"""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return True
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join")


def _is_text_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Name) and f.id == "text") or (
        isinstance(f, ast.Attribute) and f.attr == "text" and isinstance(f.value, ast.Name)
        and f.value.id in ("sa", "sqlalchemy"))


def _is_sql_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "SQL"


class _Scope:
    """Name bindings of a module or a function body (not descending into nested functions)."""

    def __init__(self, body: list[ast.stmt], params: set[str], parent: "_Scope | None"):
        self.params = params
        self.parent = parent
        self.bindings: dict[str, list[ast.AST | None]] = {}  # None: bound to something unknowable
        for stmt in body:
            self._collect(stmt)

    def _bind(self, target: ast.AST, value: ast.AST | None) -> None:
        if isinstance(target, ast.Name):
            self.bindings.setdefault(target.id, []).append(value)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._bind(element, None)

    def _collect(self, node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            if not isinstance(node, ast.Lambda):
                self.bindings.setdefault(node.name, []).append(None)
            return
        if isinstance(node, ast.Assign):
            for target in node.targets:
                self._bind(target, node.value)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            self._bind(node.target, node.value)
        elif isinstance(node, ast.AugAssign):
            self._bind(node.target, node.value)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            self._bind(node.target, None)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            self._bind(node.optional_vars, None)
        elif isinstance(node, ast.NamedExpr):
            self._bind(node.target, node.value)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                self.bindings.setdefault((alias.asname or alias.name).split(".")[0], []).append(None)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name) and node.func.attr in ("append", "extend", "insert")):
            self.bindings.setdefault(node.func.value.id, []).extend(node.args[-1:] or [None])
        for child in ast.iter_child_nodes(node):
            self._collect(child)

    def lookup(self, name: str) -> list[ast.AST | None] | None:
        if name in self.params:
            return [None]
        if name in self.bindings:
            return self.bindings[name]
        return self.parent.lookup(name) if self.parent else None


class _Checker:
    def __init__(self, path: str, allowed: dict[tuple[str, str], str]):
        self.path = path
        self.allowed = {expr for (p, expr) in allowed if p == path}

    def unsafe_part(self, node: ast.AST, scope: _Scope, seen: frozenset[str] = frozenset()) -> ast.AST | None:
        """The first part of `node` that is not a constant fragment, or None when all are."""
        if ast.unparse(node) in self.allowed:
            return None
        if isinstance(node, ast.Constant):
            return None
        if isinstance(node, ast.JoinedStr):
            return next((p for v in node.values if isinstance(v, ast.FormattedValue)
                         if (p := self.unsafe_part(v.value, scope, seen))), None)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
            return self.unsafe_part(node.left, scope, seen) or self.unsafe_part(node.right, scope, seen)
        if isinstance(node, ast.IfExp):
            return self.unsafe_part(node.body, scope, seen) or self.unsafe_part(node.orelse, scope, seen)
        if isinstance(node, (ast.Tuple, ast.List)):
            return next((p for e in node.elts if (p := self.unsafe_part(e, scope, seen))), None)
        if isinstance(node, ast.Call):
            f = node.func
            parts = list(node.args) + [k.value for k in node.keywords]
            if isinstance(f, ast.Attribute) and f.attr in _DRIVER_QUOTED:
                return None  # psycopg quotes identifiers and literals itself
            if isinstance(f, ast.Attribute) and f.attr in ("join", "format"):
                parts = [f.value, *parts]
            elif not (_is_text_call(node) or _is_sql_call(node)):
                return node
            return next((p for e in parts if (p := self.unsafe_part(e, scope, seen))), None)
        if isinstance(node, ast.Name):
            if node.id in seen:
                return None
            values = scope.lookup(node.id)
            if not values:
                return node  # a builtin, an import or unknown: not provably constant
            for value in values:
                if value is None:
                    return node
                if self.unsafe_part(value, scope, seen | {node.id}):
                    return node
            return None
        return node  # attributes, subscripts, calls of anything else: may carry user data

    def check(self, node: ast.AST, scope: _Scope, found: list[Violation]) -> None:
        part = self.unsafe_part(node, scope)
        if part is not None:
            found.append(Violation(self.path, node.lineno, ast.unparse(node), ast.unparse(part)))

    def stringish(self, node: ast.AST, scope: _Scope) -> bool:
        """Is this a string expression (as opposed to a statement object passed to execute)?"""
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str)
        if isinstance(node, ast.JoinedStr) or _is_built(node):
            return True
        if isinstance(node, ast.Name):
            return any(v is not None and self.stringish(v, scope) for v in (scope.lookup(node.id) or []))
        return False


def _functions(scope_node: ast.AST, scope: _Scope) -> Iterator[tuple[ast.AST, _Scope]]:
    """Every node of the module with the scope it is evaluated in."""
    for child in ast.iter_child_nodes(scope_node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = child.args
            params = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
            params |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
            body = child.body if isinstance(child.body, list) else [ast.Expr(child.body)]
            inner = _Scope(body, params, scope)
            for default in [*args.defaults, *args.kw_defaults]:
                if default is not None:
                    yield from _with_scope(default, scope)
            for stmt in body:
                yield from _with_scope(stmt, inner)
        else:
            yield from _with_scope(child, scope)


def _with_scope(node: ast.AST, scope: _Scope) -> Iterator[tuple[ast.AST, _Scope]]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        yield from _functions(ast.Module(body=[node], type_ignores=[]), scope)
        return
    yield node, scope
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _functions(ast.Module(body=[child], type_ignores=[]), scope)
        else:
            yield from _with_scope(child, scope)


def scan_source(source: str, path: str, allowed: dict[tuple[str, str], str] | None = None) -> list[Violation]:
    tree = ast.parse(source, filename=path)
    checker = _Checker(path, ALLOWED_FRAGMENTS if allowed is None else allowed)
    module_scope = _Scope(tree.body, set(), None)
    found: list[Violation] = []
    for node, scope in _functions(tree, module_scope):
        if not isinstance(node, ast.expr):
            continue
        if _is_text_call(node) or _is_sql_call(node):
            if node.args:
                checker.check(node.args[0], scope, found)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _EXECUTE
              and node.args and (node.func.attr == "exec_driver_sql" or checker.stringish(node.args[0], scope))):
            checker.check(node.args[0], scope, found)
        elif _is_built(node) and looks_like_sql(_literal_text(node)):
            checker.check(node, scope, found)
    return sorted(set(found), key=lambda v: (v.path, v.line, v.expression))


def scan_tree(root: Path, folders: tuple[str, ...] = ("plugins", "dags")) -> tuple[list[Violation], int]:
    """Scan every .py file under root/<folder>; return the violations and the number of files."""
    violations: list[Violation] = []
    files = 0
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            files += 1
            rel = path.relative_to(root).as_posix()
            violations += scan_source(path.read_text(encoding="utf-8"), rel)
    return violations, files
