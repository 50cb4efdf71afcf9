"""docs/openapi.json is the API's current OpenAPI document, and the document keeps its promises."""

from __future__ import annotations

import json

from recon.settings import PROJECT_ROOT
from recon.web.api.app import openapi_text
from recon.web.api.problems import PROBLEM_JSON

COMMITTED = PROJECT_ROOT / "docs" / "openapi.json"


def test_the_committed_openapi_document_is_current() -> None:
    assert COMMITTED.read_text() == openapi_text(), "docs/openapi.json is stale: run `./recon api-spec` and commit it"


def test_every_operation_documents_its_errors_as_problems_and_its_security() -> None:
    document = json.loads(openapi_text())
    assert document["servers"] == [{"url": "/recon/api/v1"}]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            errors = {code: r for code, r in operation["responses"].items() if code[0] in "45"}
            assert {"401", "403", "422", "500", "503"} <= set(errors), (method, path)
            assert all(list(r["content"]) == [PROBLEM_JSON] for r in errors.values()), (method, path)
            assert operation.get("security"), (method, path)  # Airflow's bearer token
            if method == "post":  # every creating POST takes an Idempotency-Key
                assert "Idempotency-Key" in {p["name"] for p in operation.get("parameters", [])}, path
