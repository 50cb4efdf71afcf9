"""Errors with a stable ``error_type``: stored in staging metadata and tracker ``last_error``.

Business outcomes (no rule, mismatch, ...) are not exceptions in the engine's hot path; they
are ``ManualReview`` outcomes carrying one of the ``ErrorType`` values. The exceptions here are
for callers of the library (producers, CLI) who pass bad input.
"""

from __future__ import annotations

import enum


class ErrorType(enum.StrEnum):
    NO_RECON_RULE = "NoReconRuleFoundError"
    CURRENCY_MISMATCH = "CurrencyMismatchError"
    DUPLICATE_ORDER = "DuplicateOrderError"
    MISMATCH = "MismatchError"
    AMBIGUOUS_MATCH = "AmbiguousMatchError"
    NO_MATCH = "NoMatchFoundError"
    MISSING_ORDER_ID = "MissingOrderIdError"
    ALREADY_FULFILLED = "AlreadyFulfilledError"
    STAGING_ENTRY_NOT_FOUND = "StagingEntryNotFoundError"
    INVALID_PAYLOAD = "InvalidPayloadError"
    NO_TASK_HANDLER = "NoTaskHandlerError"
    RETRIES_EXHAUSTED = "RetriesExhaustedError"
    UNEXPECTED = "UnexpectedError"


class InvalidInputError(ValueError):
    """Bad input from a producer or the CLI; nothing was written."""

    error_type = "InvalidInputError"


class NotFoundError(LookupError):
    """A referenced merchant, account or rule does not exist."""
