"""A bounded schemathesis run over every operation of an OpenAPI schema (schemathesis's own pytest
integration needs a private attribute pytest 9 removed, so the run drives its strategies directly)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def routable(case: Any) -> bool:
    """A path with a line break never reaches the API: Airflow's router (a Starlette Mount) matches no
    route for it and answers its own 404, outside the API's schema."""
    values = [str(v).lower() for v in (case.path_parameters or {}).values()]
    return not any(c in v for v in values for c in ("\r", "\n", "%0a", "%0d"))


def fuzz(schema: Any, max_examples: int, **call: Any) -> dict[str, int]:
    """Valid and invalid requests for each operation, each answer checked: no 5xx, and status, media
    type, headers and body as the schema documents them. Raises on the first failing operation with
    the reproducing request; returns the requests sent per operation."""
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        sent[label] = 0
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode).filter(routable))
            def check(case: Any) -> None:
                sent[label] += 1
                case.call_and_validate(checks=CHECKS, **call)

            check()
    return sent
