"""The engine's errors: one root for everything the library raises on purpose.

Two vocabularies live here:

- ``ErrorType``: the stable names of business outcomes stored in a staging entry's
  ``metadata.error_type`` and the tracker's ``last_error`` (no rule, mismatch, ...). Those are not
  exceptions in the engine's hot path: they are manual-review verdicts.
- ``ReconError`` and its subclasses: raised to callers (producers, the CLI, the DAGs) who asked
  for something that cannot be done. The CLI turns a ``ReconError`` into exit code 2 with its
  message; anything else is a bug and surfaces as one.

``RETRYABLE_ERRORS`` lists the infrastructure errors a second attempt can cure; it feeds both
the DAG's retry policy and the engine's chunk retries.
"""

from __future__ import annotations

import enum


class ErrorType(enum.StrEnum):
    NO_RECON_RULE = "NoReconRuleFoundError"
    CURRENCY_MISMATCH = "CurrencyMismatchError"
    DUPLICATE_ORDER = "DuplicateOrderError"
    MISMATCH = "MismatchError"
    AMBIGUOUS_MATCH = "AmbiguousMatchError"
    SPLIT_MISMATCH = "SplitMismatchError"  # a match group whose sum does not close to the line's amount
    NO_MATCH = "NoMatchFoundError"
    MISSING_ORDER_ID = "MissingOrderIdError"
    ALREADY_FULFILLED = "AlreadyFulfilledError"
    STAGING_ENTRY_NOT_FOUND = "StagingEntryNotFoundError"
    INVALID_PAYLOAD = "InvalidPayloadError"
    NO_TASK_HANDLER = "NoTaskHandlerError"
    RETRIES_EXHAUSTED = "RetriesExhaustedError"
    UNEXPECTED = "UnexpectedError"
    REOPENED = "ReopenedByReviewer"  # a reviewer reopened the match this line had made


class ReconError(Exception):
    """Root of every error the recon library raises on purpose."""


class InvalidInputError(ReconError, ValueError):
    """Bad input from a producer, the CLI or a DAG param; nothing was written.

    ``field`` names the offending input when the raiser knows it (the REST API reports it).
    """

    error_type = "InvalidInputError"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class ConflictError(InvalidInputError):
    """Valid input that conflicts with what exists (an id already taken, an account the ledger
    still refers to); nothing was written."""

    error_type = "ConflictError"


class StaleReviewError(ConflictError):
    """A reviewer's action on an item that changed since they looked (the engine or another
    reviewer got there first); nothing was written."""

    error_type = "StaleReviewError"


class ReviewNotAllowedError(ConflictError):
    """A reviewer's action that does not apply to the item as it is (accept on a line without a
    mismatch, reopen with nothing to reopen, a write-off with no variance account): another action,
    or a change elsewhere first; nothing was written. The REST API answers 409, not 422: the request
    was well formed."""

    error_type = "ReviewNotAllowedError"


class NotFoundError(ReconError, LookupError):
    """A referenced merchant, account, rule or task does not exist."""


class ConfigurationError(ReconError, ValueError):
    """A setting, URL or connection cannot be used as configured."""


class DatabaseConfigError(ConfigurationError):
    """The configured database URL or Airflow connection cannot be used."""


class MigrationError(ReconError):
    """The schema cannot be brought up to date (bad file, edited migration, ...)."""


class LeaseLostError(ReconError):
    """Some tasks of a chunk are no longer leased to this worker: nothing of the chunk is written."""


class LedgerInvariantError(ReconError):
    """The books would not balance: the whole database transaction is rolled back."""


# Import paths, as Airflow's ExceptionRetryPolicy takes them: only errors a second attempt can
# cure (the database went away, timed out, or aborted a transaction for a conflict).
RETRYABLE_ERRORS: tuple[str, ...] = (
    "sqlalchemy.exc.OperationalError",  # psycopg: connection errors, timeouts, serialization, deadlock
    "sqlalchemy.exc.InterfaceError",
    "sqlalchemy.exc.TimeoutError",  # the connection pool
    "psycopg.OperationalError",
    "builtins.ConnectionError",
    "builtins.TimeoutError",
)


def is_retryable(exc: BaseException) -> bool:
    """Is `exc` (or a class it derives from) one of RETRYABLE_ERRORS, or a dropped connection?"""
    for cls in type(exc).__mro__:
        if f"{cls.__module__}.{cls.__qualname__}" in RETRYABLE_ERRORS:
            return True
    # a statement that failed because its connection was lost, whatever the DBAPI error class
    return bool(getattr(exc, "connection_invalidated", False))
