"""Taking back a wrong ingest: a file's entries that no task has started on are deleted with their
tasks, as if the file had never been ingested; entries already processed (booked, matched or in
review) stay, and are named, because only review actions may undo an effect on the books."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from recon import staging
from recon.db import Database
from recon.errors import NotFoundError
from recon.tracker import ProcessTracker


@dataclass
class VoidReport:
    source_file: str
    account_id: str | None
    voided: list[str] = field(default_factory=list)
    already_processed: list[tuple[str, str]] = field(default_factory=list)  # (staging_entry_id, status)

    def to_dict(self) -> dict:
        return {"source_file": self.source_file, "account_id": self.account_id, "voided": self.voided,
                "already_processed": [{"staging_entry_id": i, "status": s} for i, s in self.already_processed]}

    def summary_lines(self) -> list[str]:
        lines = [f"voided {len(self.voided):,} entries of {self.source_file} (their tasks cancelled);"
                 f" {len(self.already_processed):,} already processed"]
        if self.already_processed:
            lines.append("already processed (use the review actions for these):")
            lines += [f"  {entry_id} {status}" for entry_id, status in self.already_processed]
        return lines


def void_ingest(file_or_id: str, account_id: str | None = None, *, db: Database) -> VoidReport:
    """Void the ingest of a file, named by its path or base name, or by the id of one of its entries
    (then only that file on that entry's account)."""
    with db.begin() as conn:
        source = staging.source_of(conn, file_or_id)
        source_file, account_id = source if source else (os.path.basename(file_or_id), account_id)
        rows = staging.file_entries(conn, source_file, account_id)
        if not rows:
            where = f" on account {account_id}" if account_id else ""
            raise NotFoundError(f"no staging entries were ingested from a file named {source_file!r}{where}")
        report = VoidReport(source_file, account_id)
        pending = [r.staging_entry_id for r in rows if r.status == "PENDING"]
        cancelled = set(ProcessTracker(db).cancel_unstarted(pending, conn))
        report.voided = staging.delete_unprocessed(conn, [i for i in pending if i in cancelled])
        voided = set(report.voided)
        report.already_processed = [(r.staging_entry_id, r.status) for r in rows if r.staging_entry_id not in voided]
    return report
