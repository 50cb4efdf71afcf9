"""The Recon view in a real browser against a running `airflow standalone`.

Headless Chromium (Debian package, driven by Playwright) logs in through Airflow's login form,
opens "Recon" from the navigation, checks the figures against the database, filters the
manual-review list, reprocesses it with the pre-filled trigger form, follows the link to the
DAG run and opens the run's "Recon summary" tab; then accepts the mismatch from its detail page
(it leaves the list, its decision is in the audit log) and checks that a viewer cannot act. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Iterator

import pytest

from recon import accounts, review
from recon.reporting import monitoring, run_summaries
from tests.ui.airflow_harness import ARTIFACTS, AirflowServer, running_airflow
from tests.ui.seed import SeededBooks

pytestmark = [pytest.mark.slow, pytest.mark.airflow, pytest.mark.browser]

DAG_ID = "recon_process_tracker"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
RUN_TIMEOUT_S = 300
UI_TIMEOUT_MS = 30_000


@pytest.fixture
def standalone(books: SeededBooks, db_url: str, pg_admin_url: str, tmp_path: Path) -> Iterator[AirflowServer]:
    home = tmp_path / "airflow"
    # the rule writes off to a variance account, so a reviewer can accept the seeded mismatch
    variance = accounts.create_account(books.merchant_id, "Write-offs USD", "DEBIT_NORMAL", "USD", db=books.db)
    accounts.update_recon_rule(books.scalar("SELECT id FROM recon_rules"), {"variance_account_id": variance}, db=books.db)
    with running_airflow(["standalone"], home, pg_admin_url, db_url, "recon-view-standalone.log") as server:
        passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
        server.extra["viewer_password"] = passwords["viewer"]
        yield server


def wait_for_run(server: AirflowServer, run_id: str) -> dict:
    run = server.wait_for_run(DAG_ID, run_id, RUN_TIMEOUT_S)
    assert run["state"] == "success", run
    return run


def test_recon_view_in_a_real_browser(standalone: AirflowServer, books: SeededBooks) -> None:
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it, so there a missing browser is a broken CI
        pytest.skip(message)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = standalone

    # a real run through the scheduler: it processes the seeded backlog and records its summary
    server.wait_for_dag(DAG_ID, 180)
    server.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    run_id = server.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {}})["dag_run_id"]
    run = wait_for_run(server, run_id)
    recorded = run_summaries.run_summary(run_id, books.db)
    assert recorded is not None and (recorded["claimed"], recorded["processed"]) == (3, 3)
    # the listener wrote the run's summary as its note, counts first
    assert run["note"] and run["note"].startswith("**3 claimed** · 3 booked"), run

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(UI_TIMEOUT_MS)

            # log in through Airflow's own login form
            page.goto(server.base_url + "/")
            page.wait_for_url(re.compile(r"/auth/login"))
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", server.extra["password"])
            page.click("button[type=submit]")
            page.wait_for_url(re.compile(r"^(?!.*/auth/login)"))

            # open Recon from the navigation: the view is embedded in the Airflow UI
            page.get_by_role("link", name="Recon", exact=True).click()
            page.wait_for_url(re.compile(r"/plugin/recon"))
            frame = page.frame_locator("iframe[title='Recon']")
            for status, n in books.rows("SELECT status, count(*) FROM process_tracker GROUP BY status"):
                expect(frame.get_by_test_id(f"status-{status}")).to_have_text(str(n))
            expect(frame.get_by_test_id("leases-held")).to_have_text(
                str(books.scalar("SELECT count(*) FROM process_tracker WHERE status = 'PROCESSING'")))
            for error_type, n in books.rows(
                "SELECT metadata ->> 'error_type', count(*) FROM staging_entries"
                " WHERE status = 'NEEDS_MANUAL_REVIEW' GROUP BY 1"
            ):
                expect(frame.get_by_test_id(f"review-count-{error_type}")).to_have_text(str(n))
            mismatch_reason = books.scalar(
                "SELECT metadata ->> 'error' FROM staging_entries WHERE metadata ->> 'error_type' = 'MismatchError'")
            expect(frame.get_by_test_id("review-reason").filter(has_text=mismatch_reason)).to_be_visible()
            expect(frame.get_by_test_id("airflow-run-link").filter(has_text=run_id)).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "recon-view.png"))

            # sortable exceptions: by amount, largest first, then smallest first
            amounts = lambda: [float(v) for v in frame.locator("table[data-testid=review-entries] tbody tr")  # noqa: E731
                               .evaluate_all("rows => rows.map(r => r.dataset.amount)")]
            frame.get_by_test_id("sort-amount").click()
            assert amounts() == sorted(amounts(), reverse=True) and len(amounts()) > 1
            frame.get_by_test_id("sort-amount").click()
            assert amounts() == sorted(amounts())

            # open expected legs (orders nobody confirmed) by account and age, with amounts
            expect(frame.get_by_test_id("unconfirmed")).to_be_visible()

            # dark mode (the system's, or Airflow's own theme): the view is not a white page
            page.emulate_media(color_scheme="dark")
            # Airflow's UI switches its theme class a moment later and the view follows it: wait for it
            expect(frame.locator("body")).not_to_have_css("background-color", "rgb(255, 255, 255)")
            background = frame.locator("body").evaluate("b => getComputedStyle(b).backgroundColor")
            assert background != "rgb(255, 255, 255)", background
            page.screenshot(path=str(ARTIFACTS / "recon-view-dark.png"))
            page.emulate_media(color_scheme="light")

            # 800 px: nothing overflows the page; wide tables scroll inside themselves
            page.set_viewport_size({"width": 800, "height": 1200})
            overflow = frame.locator("body").evaluate(
                "b => document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"the view overflows by {overflow} px at 800 px"
            page.screenshot(path=str(ARTIFACTS / "recon-view-800px.png"))
            page.set_viewport_size({"width": 1400, "height": 1400})

            # filter the manual-review list, then reprocess exactly those entries with the pre-filled trigger
            frame.locator("select[name=error_type]").select_option("NoMatchFoundError")
            frame.get_by_role("button", name="Filter").click()
            expect(frame.get_by_test_id("review-count-NoMatchFoundError")).to_have_text("1")
            expect(frame.get_by_test_id("review-count-MismatchError")).to_have_count(0)
            assert len(books.rows(
                "SELECT p.task_id FROM process_tracker p JOIN staging_entries s"
                " ON s.staging_entry_id = p.payload ->> 'staging_entry_id'"
                " WHERE p.status = 'FAILED' AND s.metadata ->> 'error_type' = 'NoMatchFoundError'")) == 1
            reprocess = frame.get_by_test_id("reprocess-these")
            reprocess.locator("summary").click()
            expect(reprocess.locator("textarea[name=conf]")).to_contain_text('"error_type": "NoMatchFoundError"')
            page.screenshot(path=str(ARTIFACTS / "recon-view-reprocess-form.png"))
            reprocess.get_by_role("button", name=re.compile("Trigger")).click()
            result = reprocess.locator("[data-trigger-result]")
            expect(result).to_contain_text("Queued run")
            reprocess_run_id = re.search(r"Queued run (\S+)\.", result.inner_text()).group(1)
            reprocess_run = wait_for_run(server, reprocess_run_id)
            assert reprocess_run["conf"] == {"reprocess": {"error_type": "NoMatchFoundError",
                                                           "exclude_error_types": ["MismatchError"]}}
            # the form's note is kept: the listener never overwrites a note a user wrote
            assert reprocess_run["note"].startswith("Reprocess from the Recon view: NoMatchFoundError")
            again = run_summaries.run_summary(reprocess_run_id, books.db)["summary"]
            assert (again["claimed"], again["manual_review_by_type"]) == (1, {"NoMatchFoundError": 1})

            # follow the link from the view to the Airflow run: it opens in Airflow, not in the frame
            page.reload()
            frame = page.frame_locator("iframe[title='Recon']")
            frame.get_by_test_id("airflow-run-link").filter(has_text=run_id).click()
            page.wait_for_url(re.compile(rf"/dags/{DAG_ID}/runs/{re.escape(urllib.parse.quote(run_id, safe=''))}$"))
            expect(page.get_by_text(run_id).first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "recon-dag-run.png"))

            # the run's own "Recon summary" tab renders the summary the run recorded
            page.get_by_role("tab", name="Recon summary").or_(page.get_by_role("link", name="Recon summary")).first.click()
            summary = page.frame_locator("iframe[title='Recon summary']").get_by_test_id("run-summary")
            expect(summary).to_contain_text("3 claimed")
            expect(summary).to_contain_text("3 booked")
            page.screenshot(path=str(ARTIFACTS / "recon-run-summary-tab.png"))
            page.emulate_media(color_scheme="dark")  # the summary tab is not a white page in dark mode either
            expect(page.frame_locator("iframe[title='Recon summary']").locator("body")).not_to_have_css(
                "background-color", "rgb(255, 255, 255)")
            tab_background = page.frame_locator("iframe[title='Recon summary']").locator("body").evaluate(
                "b => getComputedStyle(b).backgroundColor")
            assert tab_background != "rgb(255, 255, 255)", tab_background
            page.screenshot(path=str(ARTIFACTS / "recon-run-summary-tab-dark.png"))
            page.emulate_media(color_scheme="light")

            # resolve the mismatch from its detail page: accept it with a reason; it leaves the list
            # and its decision appears in the audit log, recorded as the Airflow user
            page.get_by_role("link", name="Recon", exact=True).click()
            frame = page.frame_locator("iframe[title='Recon']")
            frame.get_by_test_id("exceptions-link").click()
            mismatch = books.scalar(
                "SELECT staging_entry_id FROM staging_entries WHERE metadata ->> 'error_type' = 'MismatchError'")
            frame.get_by_test_id(f"open-{mismatch}").click()
            expect(frame.get_by_test_id("mismatched-fields")).to_contain_text("249.0000")
            expect(frame.get_by_test_id("candidate-difference")).to_have_text("-1.0000")
            accept = frame.get_by_test_id("form-accept")
            accept.locator("select[name=reason]").select_option("BANK_FEE")
            accept.locator("input[name=note]").fill("PSP fee withheld")
            page.screenshot(path=str(ARTIFACTS / "recon-exception-detail.png"))
            accept.get_by_role("button", name="Accept").click()
            expect(frame.get_by_test_id("decided")).to_be_visible()
            expect(frame.get_by_test_id(f"open-{mismatch}")).to_have_count(0)
            audit = frame.get_by_test_id("audit-row").filter(has_text=mismatch)
            expect(audit).to_contain_text("BANK_FEE")
            expect(audit).to_contain_text("admin")
            assert books.scalar("SELECT status FROM staging_entries WHERE staging_entry_id = :s", s=mismatch) == "PROCESSED"
            assert review.verify(books.db).ok
            page.screenshot(path=str(ARTIFACTS / "recon-exceptions-after-accept.png"))

            # a viewer reads the detail page but gets no actions, and a 403 when posting one anyway
            unmatched = books.scalar(
                "SELECT staging_entry_id FROM staging_entries WHERE metadata ->> 'error_type' = 'NoMatchFoundError'")
            viewer = browser.new_context()
            viewer_page = viewer.new_page()
            viewer_page.goto(server.base_url + "/")
            viewer_page.wait_for_url(re.compile(r"/auth/login"))
            viewer_page.fill("input[name=username]", "viewer")
            viewer_page.fill("input[name=password]", server.extra["viewer_password"])
            viewer_page.click("button[type=submit]")
            viewer_page.wait_for_url(re.compile(r"^(?!.*/auth/login)"))
            viewer_page.goto(server.base_url + f"/recon/exceptions/{unmatched}")
            expect(viewer_page.get_by_test_id("read-only")).to_be_visible()
            expect(viewer_page.locator("form")).to_have_count(0)
            refused = viewer.request.post(server.base_url + f"/recon/exceptions/{unmatched}/ignore",
                                          form={"reason": "NOT_OURS", "note": "not mine"})
            assert refused.status == 403, refused.text()
            assert books.scalar("SELECT status FROM staging_entries WHERE staging_entry_id = :s",
                                s=unmatched) == "NEEDS_MANUAL_REVIEW"
            viewer.close()

            # without a session: no data, only the login page
            anonymous = browser.new_context()
            response = anonymous.request.get(server.base_url + "/recon/api/overview")
            assert response.status == 401 and "stg_" not in response.text()
            anonymous_page = anonymous.new_page()
            anonymous_page.goto(server.base_url + "/recon/")
            anonymous_page.wait_for_url(re.compile(r"/auth/login"))
            assert "stg_" not in anonymous_page.content()
            anonymous.close()
        finally:
            browser.close()
