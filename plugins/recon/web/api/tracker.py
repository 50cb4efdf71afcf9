"""The Process Tracker's figures: tasks per status and type, the oldest due task, leases held."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from recon.tracker import ProcessTracker
from recon.web.access import READERS
from recon.web.database import read_recon

router = APIRouter(prefix="/tracker", tags=["tracker"])


class TrackerStats(BaseModel):
    by_status: dict[str, int]
    by_type: dict[str, dict[str, int]]
    total: int
    oldest_due_age_seconds: float | None
    leases_held: int


@router.get("/stats", response_model=TrackerStats, dependencies=READERS)
async def tracker_stats() -> TrackerStats:
    return TrackerStats(**await read_recon(lambda db: ProcessTracker(db).stats()))
