"""Statement uploads: any format the CLI ingests (CSV, camt.053/054, MT940/942, BAI2), as
multipart/form-data, with the CLI's checks and limits (``recon.ingest.files.ingest_file``).

The file is never held in memory whole: it arrives in a temporary file that spills to disk past
1 MiB (Starlette's multipart parser), is refused past RECON_API_MAX_UPLOAD_BYTES as it arrives
(``limits``), then streams from disk into the ingest on an API write thread. The answer is the
ingest report: 200 when every row was ingested (duplicates are listed, not errors), 207 when some
rows were rejected (each with its row number and reasons; the good rows are ingested). A file that
cannot be ingested at all (bad format, figures that do not add up) is a 422 and changes nothing.
"""

from __future__ import annotations

import hashlib
import os
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from recon.db import Database
from recon.errors import NotFoundError
from recon.ingest.files import ingest_file
from recon.web.access import WRITERS, caller
from recon.web.api.fields import NO_NUL
from recon.web.api.idempotency import IdempotencyKey, request_hash, replayable, run_once
from recon.web.api.problems import INVALID_INPUT, Problem, problem_responses
from recon.web.database import write_recon

router = APIRouter(prefix="/uploads", tags=["uploads"])

FileFormat = Literal["auto", "csv", "camt053", "camt054", "mt940", "mt942", "bai2"]
CHUNK_BYTES = 1024 * 1024


class RejectedRow(BaseModel):
    row_number: int
    errors: list[str]


class DuplicateRow(BaseModel):
    row_number: int
    order_id: str | None
    duplicate_of: str
    natural_key: str | None = None


class IngestReport(BaseModel):
    """What became of the file (README "Statement files"): counts are exact; the lists hold at most
    1,000 rows each."""

    account_id: str
    processing_mode: str
    source_file: str | None
    file_format: str
    rows_read: int
    ingested: int
    rejected_count: int
    duplicate_count: int
    pending_skipped: int
    rejected: list[RejectedRow]
    duplicates: list[DuplicateRow]
    staging_entry_ids: list[str]
    elapsed_seconds: float


def _file_name(upload: UploadFile) -> str | None:
    name = os.path.basename((upload.filename or "").replace("\\", "/")).replace("\x00", "")
    return name[:255] or None


def _sha256(upload: UploadFile) -> str:
    digest = hashlib.sha256()
    upload.file.seek(0)
    while chunk := upload.file.read(CHUNK_BYTES):
        digest.update(chunk)
    upload.file.seek(0)
    return digest.hexdigest()


@router.post("", response_model=IngestReport, dependencies=WRITERS,
             responses={207: {"description": "Some rows were rejected (listed); the others were ingested",
                              "model": IngestReport}, **problem_responses(409)})
async def upload_statement(
    request: Request,
    file: Annotated[UploadFile, File(description="the statement file")],
    account_id: Annotated[str, Form(min_length=1, max_length=255, pattern=NO_NUL)],
    processing_mode: Annotated[Literal["TRANSACTION", "CONFIRMATION"], Form()],
    file_format: Annotated[FileFormat, Form(alias="format")] = "auto",
    principal: str = Depends(caller),
    key: IdempotencyKey = None,
) -> JSONResponse:
    name = _file_name(file)

    def ingest(db: Database) -> tuple[int, dict]:
        try:
            report = ingest_file(file.file, account_id, processing_mode, db=db, file_format=file_format,
                                 source_file=name)
        except NotFoundError as exc:
            raise Problem(INVALID_INPUT, str(exc), field="account_id") from None
        return (207 if report.rejected_count else 200), IngestReport(**report.to_dict()).model_dump(mode="json")

    def once(db: Database) -> JSONResponse:
        fingerprint = request_hash(request.method, request.url.path, {
            "account_id": account_id, "processing_mode": processing_mode, "format": file_format,
            "file_name": name, "file_sha256": _sha256(file)})
        return replayable(run_once(db, principal, key, fingerprint, ingest))

    return await write_recon(once)
