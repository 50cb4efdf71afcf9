"""Tunable knobs, read from the environment once per call so tests and DAG params can vary them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def int_env(name: str, default: int, minimum: int = 0) -> int:
    """An integer setting from the environment; a bad value is an error that names the variable."""
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed attempt is tried again: exponential backoff with jitter, up to max_attempts."""

    max_attempts: int = 5
    base_seconds: int = 10
    max_seconds: int = 3600

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        return cls(
            max_attempts=int_env("RECON_MAX_ATTEMPTS", 5, minimum=1),
            base_seconds=int_env("RECON_RETRY_BASE_SECONDS", 10),
            max_seconds=int_env("RECON_RETRY_MAX_SECONDS", 3600),
        )


def lease_seconds() -> int:
    """How long a claim stays valid before the reaper may rescue it."""
    return int_env("RECON_LEASE_SECONDS", 600, minimum=1)


def matching_window_seconds() -> int:
    """How long an unmatched confirmation waits (in RETRY) for the order it confirms."""
    return int_env("RECON_MATCHING_WINDOW_SECONDS", 0)


def embedded_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data (git-ignored)."""
    return Path(os.environ.get("RECON_EMBEDDED_DIR", PROJECT_ROOT / ".recon" / "pgdata"))
