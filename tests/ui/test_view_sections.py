"""The Recon view's page is a shell that needs no database, and each section comes from its JSON
endpoint with its rendering (issue 18, problem 3); the figures equal the database."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.ui.seed import SeededBooks
from tests.ui.view_app import view_app


@pytest.fixture
def client(seeded: SeededBooks, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    return TestClient(view_app(seeded.url, monkeypatch))


def test_the_shell_names_its_sections_and_reads_no_figures(client: TestClient, monkeypatch) -> None:
    monkeypatch.setenv("RECON_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nowhere")  # the shell never asks
    from recon.web import database
    monkeypatch.setattr(database, "_database", None)
    response = client.get("/recon/?error_type=MismatchError")
    assert response.status_code == 200
    for name in ("queue", "throughput", "exceptions", "ledger"):
        assert f'data-section="{name}" data-src="/recon/api/{name}" data-state="loading"' in response.text
    assert "stg_" not in response.text and "Loading…" in response.text
    assert client.get("/recon/?limit=0").status_code == 422  # the filters are still checked


def test_each_section_comes_with_its_html(client: TestClient, seeded: SeededBooks) -> None:
    queue = client.get("/recon/api/queue?html=1").json()
    for state, n in seeded.rows("SELECT status, count(*) FROM process_tracker GROUP BY status"):
        assert queue["by_status"][state] == n and f'data-testid="status-{state}">{n}<' in queue["html"]
    exceptions = client.get("/recon/api/exceptions?html=1").json()
    for error_type, n in seeded.rows("SELECT metadata ->> 'error_type', count(*) FROM staging_entries"
                                     " WHERE status = 'NEEDS_MANUAL_REVIEW' GROUP BY 1"):
        assert f'data-testid="review-count-{error_type}">{n}<' in exceptions["html"]
    assert "amount: expected 250.0000, got 249.0000" in exceptions["html"]
    assert 'action="/api/v2/dags/recon_process_tracker/dagRuns"' in exceptions["html"]  # the window trigger
    throughput = client.get("/recon/api/throughput?html=1").json()
    assert 'href="/dags/recon_process_tracker/runs/manual__seed-2"' in throughput["html"]
    ledger = client.get("/recon/api/ledger?html=1").json()
    assert 'data-testid="balances"' in ledger["html"] and "USD" in ledger["html"]
    assert "html" not in client.get("/recon/api/ledger").json()  # plain JSON unless asked


def test_a_filter_narrows_the_exceptions_section_and_offers_its_reprocess(client: TestClient) -> None:
    filtered = client.get("/recon/api/exceptions?html=1&error_type=NoMatchFoundError").json()
    assert filtered["manual_review"]["count"] == 1
    assert 'data-testid="review-count-NoMatchFoundError">1<' in filtered["html"]
    assert "review-count-MismatchError" not in filtered["html"]
    assert 'data-testid="reprocess-these"' in filtered["html"] and 'data-filters' in filtered["html"]
