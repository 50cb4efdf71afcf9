"""The recon database: where it is (``resolve``), the embedded server (``embedded``), connections
(``engine``), bulk writes (``bulk``) and the schema (``migrations``)."""

from recon.db.bulk import copy_rows, copy_statement, json_rows
from recon.db.embedded import ensure_database_exists, start_embedded_server, stop_embedded_server
from recon.db.engine import Database, default_database, reset_default_database
from recon.db.resolve import ResolvedDatabase, libpq_url, resolve_database, to_sqlalchemy_url
from recon.errors import DatabaseConfigError

__all__ = [
    "copy_rows",
    "copy_statement",
    "Database",
    "DatabaseConfigError",
    "ResolvedDatabase",
    "default_database",
    "ensure_database_exists",
    "json_rows",
    "libpq_url",
    "reset_default_database",
    "resolve_database",
    "start_embedded_server",
    "stop_embedded_server",
    "to_sqlalchemy_url",
]
