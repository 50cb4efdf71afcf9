"""The exception pages against a running Airflow API server: the ageing buckets, an exception's
detail page, and the reviewer actions as form POSTs, with Airflow's permissions (a viewer reads but
cannot act: no forms, 403 on POST) and the forms' protection against cross-site requests."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from recon import accounts, review
from tests import databases
from tests.ui.airflow_harness import AirflowServer, running_airflow
from tests.ui.seed import MISMATCH_ORDER, SeededBooks, seed_monitoring_books
from recon.db import Database

pytestmark = [pytest.mark.slow, pytest.mark.airflow]


@pytest.fixture(scope="module")
def books(pg_admin_url: str, pg_template: str) -> Iterator[SeededBooks]:
    """The view's seeded books, with a variance account on the rule (the module's tests write)."""
    name = databases.create_test_database(pg_admin_url, pg_template)
    db = Database(databases.libpq_url(pg_admin_url, name), "exception pages database")
    try:
        seeded = seed_monitoring_books(db)
        variance = accounts.create_account(seeded.merchant_id, "Write-offs USD", "DEBIT_NORMAL", "USD", db=db)
        accounts.update_recon_rule(seeded.scalar("SELECT id FROM recon_rules"), {"variance_account_id": variance}, db=db)
        yield seeded
    finally:
        db.dispose()
        databases.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
def server(books: SeededBooks, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowServer]:
    home = tmp_path_factory.mktemp("airflow-exceptions")
    with running_airflow(["api-server"], home, pg_admin_url, books.url, "recon-exceptions-api-server.log") as s:
        yield s


def mismatch_id(books: SeededBooks) -> str:
    return books.scalar("SELECT staging_entry_id FROM staging_entries WHERE order_id = :o AND processing_mode ="
                        " 'CONFIRMATION'", o=MISMATCH_ORDER)


def get_html(server: AirflowServer, path: str, token: str) -> tuple[int, str]:
    status, body = server.request("GET", path, token=token, headers={"Accept": "text/html"})
    return status, body if isinstance(body, str) else json.dumps(body)


def post_form(server: AirflowServer, path: str, fields: dict[str, str], token: str,
              headers: dict[str, str] | None = None) -> tuple[int, str, str | None]:
    """A form POST as a browser sends it; returns the status, the body and a redirect's Location."""
    req = urllib.request.Request(server.base_url + path, data=urllib.parse.urlencode(fields).encode(), method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=30) as resp:
            return resp.status, resp.read().decode(), resp.headers.get("Location")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers.get("Location")


def form_fields(html: str, testid: str) -> dict[str, str]:
    form = re.search(rf'<form[^>]*data-testid="{re.escape(testid)}".*?</form>', html, re.S)
    assert form, f"no form {testid} on the page"
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form.group(0)))


def viewer_token(server: AirflowServer) -> str:
    passwords = json.loads((server.home / "simple_auth_manager_passwords.json.generated").read_text())
    return server.login("viewer", passwords["viewer"])


def test_the_exceptions_page_shows_ageing_buckets_and_open_items(server: AirflowServer, books: SeededBooks) -> None:
    status, html = get_html(server, "/recon/exceptions", server.token)
    assert status == 200, html
    for error_type, n, amount in books.rows(
        "SELECT metadata ->> 'error_type', count(*), sum(amount) FROM staging_entries"
        " WHERE status = 'NEEDS_MANUAL_REVIEW' GROUP BY 1"
    ):  # every seeded line arrived just now: all of them under a day old
        assert f'data-testid="ageing-{error_type}-&lt;1d">{n} · {amount}<' in html
    assert f'data-testid="open-{mismatch_id(books)}"' in html


def test_a_viewer_sees_the_detail_page_without_actions_and_gets_403_on_post(server: AirflowServer, books: SeededBooks) -> None:
    sid = mismatch_id(books)
    token = viewer_token(server)
    status, html = get_html(server, f"/recon/exceptions/{sid}", token)
    assert status == 200, html
    assert 'data-testid="read-only"' in html and "<form" not in html
    assert "amount: expected 250.0000, got 249.0000" in html
    status, body, _ = post_form(server, f"/recon/exceptions/{sid}/accept", {"reason": "BANK_FEE"}, token)
    assert status == 403, body
    assert books.scalar("SELECT count(*) FROM review_decisions") == 0


def test_forged_or_cross_site_posts_are_refused(server: AirflowServer, books: SeededBooks) -> None:
    sid = mismatch_id(books)
    _, html = get_html(server, f"/recon/exceptions/{sid}", server.token)
    fields = {**form_fields(html, "form-accept"), "reason": "BANK_FEE"}
    status, body, _ = post_form(server, f"/recon/exceptions/{sid}/accept", {**fields, "token": "forged"}, server.token)
    assert status == 403 and "token" in body
    status, body, _ = post_form(server, f"/recon/exceptions/{sid}/accept", fields, server.token,
                                headers={"Origin": "https://evil.example"})
    assert status == 403 and "evil.example" in body
    assert books.scalar("SELECT count(*) FROM review_decisions") == 0


def test_an_admin_accepts_the_mismatch_from_the_detail_page(server: AirflowServer, books: SeededBooks) -> None:
    sid = mismatch_id(books)
    status, html = get_html(server, f"/recon/exceptions/{sid}", server.token)
    assert status == 200
    assert 'data-testid="mismatched-fields"' in html and '<td class="num">250.0000</td><td class="num">249.0000</td>' in html
    assert 'data-testid="candidate-difference">-1.0000<' in html
    fields = form_fields(html, "form-accept")

    stale = {**fields, "seen": "2020-01-01T00:00:00+00:00", "reason": "BANK_FEE"}
    status, body, _ = post_form(server, f"/recon/exceptions/{sid}/accept", stale, server.token)
    assert status == 409 and "changed since you looked" in body

    status, body, location = post_form(server, f"/recon/exceptions/{sid}/accept",
                                       {**fields, "reason": "BANK_FEE", "note": "PSP fee"}, server.token)
    assert status == 303 and location.endswith("/recon/exceptions?decided=1"), body
    assert books.scalar("SELECT status FROM staging_entries WHERE staging_entry_id = :s", s=sid) == "PROCESSED"
    (decision,) = books.rows("SELECT action, reason_code, note, actor FROM review_decisions")
    assert tuple(decision) == ("accept", "BANK_FEE", "PSP fee", "admin")
    assert review.verify(books.db).ok

    _, listing = get_html(server, "/recon/exceptions?decided=1", server.token)
    assert f'data-testid="open-{sid}"' not in listing and 'data-testid="audit-row"' in listing
    # the same form again: the item is no longer in review
    status, body, _ = post_form(server, f"/recon/exceptions/{sid}/accept", {**fields, "reason": "BANK_FEE"}, server.token)
    assert status == 409 and "changed since you looked" in body
