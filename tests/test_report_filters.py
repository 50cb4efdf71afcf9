"""`recon report --merchant/--account/--since` (issue 18, problem 5): each section narrowed to the
scope, bad filters named with exit 2 before anything is read."""

from __future__ import annotations

import datetime as dt
import json

from tests.test_cli_lookups import books  # noqa: F401 (the fixture: a mismatch, a match, two lines without a rule)
from tests.test_cli_inputs import run


def report(capsys, *argv: str) -> dict:
    code, err, out = run(capsys, "report", "--json", *argv)
    assert code == 0, err
    return json.loads(out)


def other_merchant(books, capsys) -> None:  # noqa: F811
    assert run(capsys, "merchant", "create", "Other Ltd", "--id", "mer_o")[0] == 0
    assert run(capsys, "account", "create", "--merchant", "mer_o", "--name", "Other bank", "--type",
               "DEBIT_NORMAL", "--currency", "USD", "--id", "acc_o")[0] == 0
    books.stage("acc_o", "DEBIT", "7.00", "TRANSACTION", "X-1")
    assert run(capsys, "process")[0] == 0


def test_report_by_merchant_and_by_account(db_url, books, capsys):  # noqa: F811
    other_merchant(books, capsys)
    everything = report(capsys)
    assert everything["staging_entries"]["NEEDS_MANUAL_REVIEW"] == 4 and "filter" not in everything

    other = report(capsys, "--merchant", "mer_o")
    assert other["filter"] == {"merchant_id": "mer_o", "account_id": None, "since": None}
    assert other["staging_entries"] == {"PENDING": 0, "PROCESSED": 0, "NEEDS_MANUAL_REVIEW": 1}
    assert [(g["error_type"], g["count"]) for g in other["manual_review"]] == [("NoReconRuleFoundError", 1)]
    assert [(r["currency"], r["amount"]) for r in other["in_review"]] == [("USD", "7.0000")]
    assert [b["account_id"] for b in other["balances"]] == ["acc_o"] and other["transactions"] == {}

    psp = report(capsys, "--account", "acc_psp")
    assert psp["staging_entries"] == {"PENDING": 0, "PROCESSED": 1, "NEEDS_MANUAL_REVIEW": 1}
    assert [(g["error_type"], g["count"]) for g in psp["manual_review"]] == [("MismatchError", 1)]
    assert [(r["currency"], r["count"], r["amount"]) for r in psp["in_review"]] == [("USD", 1, "1150.0000")]
    assert [b["account_id"] for b in psp["balances"]] == ["acc_psp"]
    assert psp["transactions"]["MISMATCH"] == 1

    code, _, text = run(capsys, "report", "--merchant", "mer_t", "--account", "acc_psp")
    assert code == 0 and text.startswith("Filtered: merchant mer_t, account acc_psp")


def test_report_since(db_url, books, capsys):  # noqa: F811
    tomorrow = (dt.date.today() + dt.timedelta(days=2)).isoformat()
    later = report(capsys, "--since", tomorrow)
    assert later["staging_entries"] == {"PENDING": 0, "PROCESSED": 0, "NEEDS_MANUAL_REVIEW": 0}
    assert later["manual_review"] == [] and later["transactions"] == {} and later["unconfirmed"] == []
    assert later["filter"]["since"].startswith(tomorrow)
    earlier = report(capsys, "--since", "2020-01-01")
    assert earlier["staging_entries"] == report(capsys)["staging_entries"]


def test_bad_filters_are_named_with_exit_2(db_url, books, capsys):  # noqa: F811
    other_merchant(books, capsys)
    for argv, message in (
        (("--since", "last tuesday"), "--since 'last tuesday' is not an ISO 8601 date or time"),
        (("--merchant", "mer_nope"), "no merchant with merchant_id 'mer_nope'"),
        (("--account", "acc_nope"), "no account with account_id 'acc_nope'"),
        (("--merchant", "mer_t", "--account", "acc_o"), "account acc_o belongs to merchant mer_o, not mer_t"),
    ):
        code, err, out = run(capsys, "report", *argv)
        assert code == 2 and message in err and out == "", (argv, err)
