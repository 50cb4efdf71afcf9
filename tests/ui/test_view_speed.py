"""The Recon view's reads at the issue's size (200,000 entries, 5,000 exceptions, 2,500 of them
mismatches) on tables autovacuum never analysed, as right after a bulk ingest on a server with
autovacuum off (issue 18, problem 3). Prints each section's time; the bound asserted is generous,
the figures are the point (the issue asks for under 1 s).

Then the page in headless Chromium: the shell paints before any section has loaded, each section
loads on its own, and a filter reloads only the exceptions; the timings are printed."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from recon.reporting import monitoring
from tests.dags.seed import Seed
from tests.ui.view_app import serving, view_app

CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ("queue", "throughput", "exceptions", "ledger")

pytestmark = pytest.mark.slow

ENTRIES, EXCEPTIONS, MISMATCHES = 200_000, 5_000, 2_500
TABLES = ("staging_entries", "process_tracker", "transactions", "entries", "staging_entry_outcomes")

# processed lines and their ledger (an expected leg and a posted one per order, every 4th still open),
# then the exceptions: half of them mismatches pointing at their MISMATCH transaction
_SEED = f"""
INSERT INTO staging_entries (staging_entry_id, account_id, entry_type, amount, currency, status, processing_mode,
                             metadata, created_at)
SELECT 'stg_' || i, 'acc_bank', 'DEBIT', 10 + i % 997, 'USD', 'PROCESSED', 'TRANSACTION',
       jsonb_build_object('order_id', 'O-' || i), now() - (i % 10) * interval '1 day'
FROM generate_series(1, {ENTRIES - EXCEPTIONS}) AS i;

INSERT INTO transactions (transaction_id, logical_transaction_id, amount, currency, merchant_id, status, metadata)
SELECT 'txn_' || i, 'ltx_' || i, 10 + i % 997, 'USD', 'mer_t',
       CASE WHEN i <= {MISMATCHES} THEN 'MISMATCH' WHEN i % 4 = 0 THEN 'EXPECTED' ELSE 'POSTED' END,
       jsonb_build_object('order_id', 'O-' || i)
FROM generate_series(1, {ENTRIES // 2}) AS i;

INSERT INTO entries (account_id, transaction_id, entry_type, amount, currency, status, effective_date, metadata)
SELECT a.account_id, 'txn_' || i, a.side, 10 + i % 997, 'USD',
       CASE WHEN a.account_id = 'acc_psp' AND (i <= {MISMATCHES} OR i % 4 = 0) THEN 'EXPECTED' ELSE 'POSTED' END,
       now() - (i % 10) * interval '1 day', jsonb_build_object('order_id', 'O-' || i)
FROM generate_series(1, {ENTRIES // 2}) AS i
CROSS JOIN (VALUES ('acc_bank', 'DEBIT'), ('acc_psp', 'CREDIT')) AS a(account_id, side);

INSERT INTO staging_entries (staging_entry_id, account_id, entry_type, amount, currency, status, processing_mode,
                             metadata)
SELECT 'stg_x' || i, CASE WHEN i <= {MISMATCHES} THEN 'acc_psp' ELSE 'acc_norule' END, 'CREDIT', 10 + i % 997, 'USD',
       'NEEDS_MANUAL_REVIEW', CASE WHEN i <= {MISMATCHES} THEN 'CONFIRMATION' ELSE 'TRANSACTION' END,
       CASE WHEN i <= {MISMATCHES}
            THEN jsonb_build_object('order_id', 'O-' || i, 'error_type', 'MismatchError',
                                    'error', 'amount: expected 1200.00, got 1150.00', 'matched_transaction_id', 'txn_' || i)
            ELSE jsonb_build_object('order_id', 'N-' || i, 'error_type', 'NoReconRuleFoundError', 'error', 'no rule')
       END
FROM generate_series(1, {EXCEPTIONS}) AS i;

INSERT INTO process_tracker (task_type, payload, status, attempts, last_error, completed_at)
SELECT 'PROCESS_STAGING_ENTRY', jsonb_build_object('staging_entry_id', staging_entry_id),
       CASE WHEN status = 'PROCESSED' THEN 'COMPLETED' ELSE 'FAILED' END, 1,
       CASE WHEN status = 'PROCESSED' THEN NULL ELSE metadata ->> 'error' END, now()
FROM staging_entries;
"""


def test_the_recon_view_answers_at_200000_entries_without_fresh_statistics(db_url, db, monkeypatch):
    Seed(db_url)
    with psycopg.connect(db_url, autocommit=True) as c:
        for table in TABLES:
            c.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")  # noqa: S608 (fixed names)
        c.execute(_SEED)
        assert c.execute("SELECT count(*) FROM staging_entries").fetchone()[0] == ENTRIES
        # nothing analysed these tables: the planner sees what a bulk ingest leaves behind
        assert c.execute("SELECT count(*) FROM pg_stat_user_tables WHERE relname = ANY(%s)"
                         " AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)", (list(TABLES),)
                         ).fetchone()[0] == 0

    sections = {
        "queue": lambda: monitoring.queue(db),
        "throughput": lambda: monitoring.throughput(db),
        "exceptions": lambda: monitoring.exceptions(db),
        "exceptions, filtered": lambda: monitoring.exceptions(db, error_type="MismatchError", account_id="acc_psp"),
        "ledger": lambda: monitoring.ledger_overview(db),
        "settlements": lambda: monitoring.settlements(db),  # none among the seeded entries: the partial index
    }
    timings = {}
    for name, read in sections.items():
        started = time.perf_counter()
        data = read()
        timings[name] = time.perf_counter() - started
        if name == "ledger":
            assert data["mismatch"]["count"] == MISMATCHES
            assert all(t["confirmation_entry_id"] for t in data["mismatch"]["transactions"])
    print("\nRecon view at 200,000 entries, 5,000 exceptions, no statistics: "
          + ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in timings.items()))
    assert max(timings.values()) < 10, timings  # generous: a shared 2-core machine; the figures above matter

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: the page's timings need a browser")
    _page_paints_at_once(view_app(db_url, monkeypatch))


def _page_paints_at_once(app) -> None:
    from playwright.sync_api import sync_playwright

    def loaded(page) -> dict[str, dict[str, int | str]]:
        return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('section[data-section]')]
            .map(s => [s.dataset.section, {state: s.dataset.state, at: Number(s.dataset.loadedMs || 0),
                                           took: Number(s.dataset.tookMs || 0)}]))""")

    with serving(app) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(base + "/recon/", wait_until="domcontentloaded")
            shell_ms = int(page.evaluate("() => document.documentElement.dataset.shellMs"))
            page.wait_for_function("() => [...document.querySelectorAll('section[data-section]')]"
                                   ".every(s => s.dataset.state === 'loaded')")
            first = loaded(page)
            assert all(first[name]["at"] > shell_ms for name in SECTIONS), (shell_ms, first)

            # a filter reloads the exceptions only
            page.select_option("select[name=error_type]", "MismatchError")
            page.click("form[data-filters] button[type=submit]")
            page.wait_for_function("() => document.querySelector('section[data-section=exceptions]').dataset.state"
                                   " === 'loaded' && location.search.includes('MismatchError')")
            page.wait_for_function(f"() => Number(document.querySelector('section[data-section=exceptions]')"
                                   f".dataset.loadedMs) > {first['exceptions']['at']}")
            after = loaded(page)
            assert {n: after[n]["at"] for n in SECTIONS if n != "exceptions"} == \
                   {n: first[n]["at"] for n in SECTIONS if n != "exceptions"}
            assert page.locator("[data-testid=review-count-MismatchError]").inner_text() == str(MISMATCHES)
        finally:
            browser.close()
    print(f"Recon page in Chromium: shell painted at {shell_ms} ms; sections loaded at "
          + ", ".join(f"{n} {first[n]['at']} ms (took {first[n]['took']} ms)" for n in SECTIONS)
          + f"; the MismatchError filter reloaded the exceptions in {after['exceptions']['took']} ms")
