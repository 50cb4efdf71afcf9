"""`recon review ...` in a subprocess, as a reviewer runs it: list, show, act, export a decision
sheet, import it (a bad row named by its number, the rest applied, a second import changing
nothing), verify the audit chain."""

from __future__ import annotations

import csv
import json

import sqlalchemy as sa

from tests.test_cli import recon


def exceptions(books) -> dict[str, str]:
    """A mismatch and two lines nobody expected: their staging entry ids."""
    mismatch = books.mismatch("o-1", "250.00", "240.00")
    strays = [books.stage(books.clearing, "CREDIT", amount, "CONFIRMATION", order_id=order)[0]
              for order, amount in (("stray-1", "10.00"), ("stray-2", "12.50"))]
    books.process()
    return {"mismatch": mismatch, "stray-1": strays[0], "stray-2": strays[1]}


def test_list_show_accept_and_verify(books, db_url):
    ids = exceptions(books)
    listed = json.loads(recon(db_url, "review", "list", "--json").stdout)
    assert sorted(i["staging_entry_id"] for i in listed) == sorted(ids.values())
    only = json.loads(recon(db_url, "review", "list", "--type", "MismatchError", "--json").stdout)
    assert [i["staging_entry_id"] for i in only] == [ids["mismatch"]]
    assert json.loads(recon(db_url, "review", "list", "--older-than", "1d", "--json").stdout) == []

    shown = recon(db_url, "review", "show", ids["mismatch"]).stdout
    assert "mismatch: amount expected 250.0000, actual 240.0000" in shown
    assert "difference -10.0000  (MISMATCH" in shown

    accepted = recon(db_url, "review", "accept", ids["mismatch"], "--reason", "BANK_FEE", "--note", "PSP fee",
                     "--actor", "alice")
    assert "(audit row #1 by alice)" in accepted.stdout
    again = recon(db_url, "review", "accept", ids["mismatch"], "--reason", "BANK_FEE", check=False)
    assert again.returncode == 2 and "is PROCESSED, no longer in manual review" in again.stderr
    bad = recon(db_url, "review", "ignore", ids["stray-1"], "--reason", "FEE", check=False)
    assert bad.returncode == 2 and "invalid choice: 'FEE'" in bad.stderr
    ignored = recon(db_url, "review", "ignore", ids["stray-1"], "--reason", "NOT_OURS", "--json")
    assert json.loads(ignored.stdout)["actor"]  # the OS user by default

    requeued = recon(db_url, "review", "requeue", "--type", "NoMatchFoundError", "--reason", "DATA_CORRECTION")
    assert requeued.stdout.strip() == "requeued 1 item(s)"
    assert recon(db_url, "review", "verify").stdout.strip() == "audit chain intact: 3 decision(s)"

    with books.db.begin() as conn:
        conn.execute(sa.text("ALTER TABLE review_decisions DISABLE TRIGGER USER"))
        conn.execute(sa.text("UPDATE review_decisions SET reason_code = 'OTHER' WHERE seq = 2"))
        conn.execute(sa.text("ALTER TABLE review_decisions ENABLE TRIGGER USER"))
    broken = recon(db_url, "review", "verify", check=False)
    assert broken.returncode == 1 and "audit chain broken at row 2: row 2 was altered" in broken.stderr


def test_export_decide_import_and_import_again(books, db_url, tmp_path):
    ids = exceptions(books)
    sheet = tmp_path / "exceptions.csv"
    assert "wrote 3 open item(s)" in recon(db_url, "review", "export", str(sheet)).stdout
    rows = list(csv.DictReader(sheet.open()))
    by_id = {r["staging_entry_id"]: r for r in rows}
    assert by_id[ids["mismatch"]]["candidates"] and by_id[ids["mismatch"]]["error_type"] == "MismatchError"
    by_id[ids["mismatch"]].update(decision="accept", reason_code="BANK_FEE", note="fee")
    by_id[ids["stray-1"]].update(decision="ignore", reason_code="NOT_ANY", note="bad code")
    by_id[ids["stray-2"]].update(decision="ignore", reason_code="NOT_OURS", note="other merchant")
    with sheet.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    bad_row = 2 + rows.index(by_id[ids["stray-1"]])

    first = recon(db_url, "review", "import", str(sheet), check=False)
    assert first.returncode == 3
    assert "applied 2, already applied 0, undecided 0, errors 1" in first.stdout
    assert f"row {bad_row}: reason 'NOT_ANY' must be one of" in first.stderr
    assert books.staging(ids["stray-1"]).status == "NEEDS_MANUAL_REVIEW"
    assert books.staging(ids["stray-2"]).status == "PROCESSED"

    second = recon(db_url, "review", "import", str(sheet), check=False)
    assert "applied 0, already applied 2, undecided 0, errors 1" in second.stdout
    assert books.decision_count() == 2
    assert recon(db_url, "review", "verify").stdout.strip() == "audit chain intact: 2 decision(s)"

    missing = recon(db_url, "review", "import", str(tmp_path / "nope.csv"), check=False)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_the_readme_walk_through_resolves_the_demo_mismatch(db, db_url, monkeypatch):
    """What `./recon demo` leaves in review, resolved with the README's commands."""
    from recon import demo, ledger, pipeline

    monkeypatch.setenv("RECON_MATCHING_WINDOW_SECONDS", "0")
    demo.load_demo_data(db)
    pipeline.process_queue(db=db)
    listed = json.loads(recon(db_url, "review", "list", "--type", "MismatchError", "--json").stdout)
    sid = next(i["staging_entry_id"] for i in listed if i["order_id"] == "ORD-1007")
    assert "mismatch: amount expected 99.9000, actual 89.9000" in recon(db_url, "review", "show", sid).stdout
    recon(db_url, "review", "accept", sid, "--reason", "BANK_FEE", "--note", "PSP kept a 10.00 fee")
    report = json.loads(recon(db_url, "report", "--json").stdout)
    balances = {b["account_id"]: b for b in report["balances"]}
    assert balances["acc_demo_variance"]["posted"] == "10.0200"  # 0.02 within tolerance + 10.00 written off
    assert report["invariants"]["ok"] and ledger.check_invariants(db).ok
    assert recon(db_url, "review", "verify").stdout.strip() == "audit chain intact: 1 decision(s)"
