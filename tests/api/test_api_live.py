"""The REST API in a real Airflow (`airflow standalone`): Airflow's own tokens and permissions, books,
entries and files posted through the API, the DAG run through REST API v2, balances and grouped
transactions read back, idempotent replay, the problem shape of every error, and schemathesis.

One server for the whole module (starting Airflow is the slow part). Its users are the simple auth
manager's: admin (ADMIN), viewer (VIEWER: may read runs, not edit the DAG) and producer (USER: may
edit the DAG). The recon database is the module's own; RECON_ORDER_ID_PATTERN lets the camt.053
statement's remittance text carry the order ids it confirms.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import schemathesis

from recon import pipeline
from recon.db import Database
from recon.settings import DAG_ID, PROJECT_ROOT
from recon.web.api.app import openapi_text
from recon.web.api.problems import PROBLEM_JSON, TYPE_PREFIX
from tests import databases
from tests.api.fuzzing import fuzz
from tests.ui.airflow_harness import AirflowServer, dag_run_path, running_airflow

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

DATA = Path(__file__).resolve().parents[1] / "data"
API = "/recon/api/v1"
LIMIT_BYTES = 256 * 1024  # small body and upload limits, so the 413s cost little to provoke
RUN_TIMEOUT_S = 240
SCHEMATHESIS_EXAMPLES = 15  # per operation and mode (valid, invalid): bounded, so CI stays lean


@pytest.fixture(scope="module")
def recon_db(pg_admin_url: str, pg_template: str) -> Iterator[Database]:
    name = databases.create_test_database(pg_admin_url, pg_template)
    db = Database(databases.libpq_url(pg_admin_url, name), "the API tests' recon database")
    try:
        yield db
    finally:
        db.dispose()
        databases.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
def airflow(recon_db: Database, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowServer]:
    url = recon_db.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with running_airflow(
        ["standalone"], tmp_path_factory.mktemp("airflow-api"), pg_admin_url, url, "recon-api-standalone.log",
        extra_env={
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer,producer:user",
            "RECON_ORDER_ID_PATTERN": r"ORD-\d+",
            "RECON_API_MAX_BODY_BYTES": str(LIMIT_BYTES),
            "RECON_API_MAX_UPLOAD_BYTES": str(LIMIT_BYTES),
        },
    ) as server:
        yield server


def token(airflow: AirflowServer, user: str) -> str:
    passwords = json.loads((airflow.home / "simple_auth_manager_passwords.json.generated").read_text())
    return airflow.login(user, passwords[user])


@pytest.fixture(scope="module")
def clients(airflow: AirflowServer) -> Iterator[dict[str, httpx.Client]]:
    """An HTTP client of the API per role, and one without credentials."""
    made = {"anonymous": httpx.Client(base_url=airflow.base_url + API, timeout=60)}
    for user in ("admin", "viewer", "producer"):
        made[user] = httpx.Client(base_url=airflow.base_url + API, timeout=60,
                                  headers={"Authorization": f"Bearer {token(airflow, user)}"})
    yield made
    for client in made.values():
        client.close()


def assert_problem(response: httpx.Response, status: int, slug: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON, response.headers
    body = response.json()
    assert (body["type"], body["status"]) == (TYPE_PREFIX + slug, status), body
    assert body["title"] and body["detail"] and body["request_id"] == response.headers["x-request-id"], body
    if field is not None:
        assert body["field"] == field, body
    return body


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


# ---- auth ---------------------------------------------------------------------------------------------


def test_each_role_gets_what_airflow_gives_it(clients: dict[str, httpx.Client], recon_db: Database) -> None:
    anonymous, viewer, producer = clients["anonymous"], clients["viewer"], clients["producer"]
    for method, path in (("GET", "/merchants"), ("GET", "/tracker/stats"), ("POST", "/merchants")):
        response = anonymous.request(method, path, json={"merchant_name": "Nobody"} if method == "POST" else None)
        body = assert_problem(response, 401, "unauthenticated")
        assert set(body) <= {"type", "title", "status", "detail", "instance", "request_id"}  # nothing else
    assert_problem(anonymous.get("/merchants", headers={"Authorization": "Bearer not-a-jwt"}), 403, "forbidden")

    assert viewer.get("/merchants").status_code == 200
    assert_problem(viewer.post("/merchants", json={"merchant_name": "Viewer Ltd"}), 403, "forbidden")
    merchant = created(producer.post("/merchants", json={"merchant_name": "Producer Ltd"}))
    assert clients["admin"].get(f"/merchants/{merchant['merchant_id']}").json() == merchant
    assert [m["merchant_name"] for m in viewer.get("/merchants").json()["items"]] == ["Producer Ltd"]


# ---- the whole path: books, entries and files through the API, the DAG through REST API v2 -------------


def run_dag(airflow: AirflowServer) -> dict[str, Any]:
    """One run of the recon DAG, triggered through REST API v2 and waited for; its summary."""
    airflow.wait_for_dag(DAG_ID, 180)
    assert airflow.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})["is_paused"] is False
    run_id = airflow.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None})["dag_run_id"]
    run = airflow.wait_for_run(DAG_ID, run_id, RUN_TIMEOUT_S)
    assert run["state"] == "success", airflow.log_tail()
    return airflow.call("GET", f"{dag_run_path(DAG_ID, run_id)}/taskInstances/summary/xcomEntries/return_value")["value"]


def upload(client: httpx.Client, account: str, mode: str, path: Path, key: str | None = None) -> httpx.Response:
    return client.post("/uploads", data={"account_id": account, "processing_mode": mode},
                       files={"file": (path.name, path.read_bytes())},
                       headers={"Idempotency-Key": key} if key else None)


def test_books_entries_and_files_go_through_the_dag_and_read_back(
    airflow: AirflowServer, clients: dict[str, httpx.Client]
) -> None:
    api, viewer = clients["producer"], clients["viewer"]
    merchant = created(api.post("/merchants", json={"merchant_name": "Three-way GmbH"}))["merchant_id"]

    def account(name: str, kind: str, currency: str) -> str:
        return created(api.post("/accounts", json={"merchant_id": merchant, "account_name": name,
                                                   "account_type": kind, "currency": currency}))["account_id"]

    orders_eur, bank_eur = account("Orders EUR", "DEBIT_NORMAL", "EUR"), account("Bank EUR", "CREDIT_NORMAL", "EUR")
    orders_usd, psp_usd = account("Orders USD", "DEBIT_NORMAL", "USD"), account("PSP USD", "CREDIT_NORMAL", "USD")
    created(api.post("/rules", json={"account_one_id": orders_eur, "account_two_id": bank_eur}))
    created(api.post("/rules", json={"account_one_id": orders_usd, "account_two_id": psp_usd}))

    # orders booked by a producer: ORD-1001 is confirmed by the bank statement below, ORD-77 is not
    batch = created(api.post("/staging-entries/batch", headers={"Idempotency-Key": str(uuid.uuid4())}, json={"entries": [
        {"account_id": orders_eur, "entry_type": "DEBIT", "amount": "1250.00", "currency": "EUR",
         "processing_mode": "TRANSACTION", "metadata": {"order_id": "ORD-1001"}},
        {"account_id": orders_eur, "entry_type": "DEBIT", "amount": "77.70", "currency": "EUR",
         "processing_mode": "TRANSACTION", "metadata": {"order_id": "ORD-77"}},
    ]}))
    assert len(batch["created"]) == 2 and batch["duplicates"] == []
    csv = upload(api, orders_usd, "TRANSACTION", DATA / "valid.csv")
    assert csv.status_code == 200 and csv.json()["ingested"] == 4, csv.text
    mixed = upload(api, orders_usd, "TRANSACTION", DATA / "mixed.csv")
    assert mixed.status_code == 207 and mixed.json()["rejected_count"] > 0, mixed.text

    first_run = run_dag(airflow)
    assert first_run["booked"] == 2 + 4 + mixed.json()["ingested"], first_run

    statement = DATA / "statements" / "camt053_v2.xml"
    key = str(uuid.uuid4())
    camt = upload(api, bank_eur, "CONFIRMATION", statement, key)
    assert camt.status_code == 200 and camt.json()["file_format"] == "camt053", camt.text
    replay = upload(api, bank_eur, "CONFIRMATION", statement, key)
    assert replay.json() == camt.json() and replay.headers["idempotent-replayed"] == "true"
    second_run = run_dag(airflow)
    assert second_run["claimed"] == camt.json()["ingested"] and second_run["matched"] >= 1, second_run

    # the order's entry was booked, the statement line fulfilled its expected leg
    order_entry = viewer.get(f"/staging-entries/{batch['created'][0]['staging_entry_id']}").json()
    assert order_entry["outcome"]["match_type"] == "NewTransactionGenerated"
    assert [t["status"] for t in order_entry["tasks"]] == ["COMPLETED"]
    lines = viewer.get("/staging-entries", params={"account_id": bank_eur, "order_id": "ORD-1001"}).json()["items"]
    assert [(e["status"], e["metadata"]["match_type"]) for e in lines] == [("PROCESSED", "Phase2_Fulfilled")]

    grouped = {t["logical_transaction_id"]: t for t in
               viewer.get("/transactions", params={"account_id": bank_eur}).json()["items"]}
    fulfilled = next(t for t in grouped.values() if t["versions"][0]["metadata"].get("order_id") == "ORD-1001")
    assert [(v["version"], v["status"]) for v in fulfilled["versions"]] == [(1, "ARCHIVED"), (2, "POSTED")]
    waiting = next(t for t in grouped.values() if t["versions"][0]["metadata"].get("order_id") == "ORD-77")
    assert [v["status"] for v in waiting["versions"]] == ["EXPECTED"]

    balances = {a["account_name"]: (a["posted"], a["pending"], a["available"])
                for a in viewer.get("/accounts", params={"merchant_id": merchant}).json()["items"]}
    assert balances["Orders EUR"] == ("1327.7000", "1327.7000", "1327.7000")
    assert balances["Bank EUR"] == ("1250.0000", "1327.7000", "1250.0000")  # ORD-77 still expected
    stats = viewer.get("/tracker/stats").json()
    assert stats["by_status"]["PENDING"] == 0 and stats["by_status"]["PROCESSING"] == 0


# ---- conventions through Airflow ------------------------------------------------------------------------


def test_a_replayed_key_returns_the_first_answer_and_another_body_is_refused(clients: dict[str, httpx.Client]) -> None:
    api = clients["producer"]
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = api.post("/merchants", json={"merchant_name": "Once Ltd"}, headers=key)
    again = api.post("/merchants", json={"merchant_name": "Once Ltd"}, headers=key)
    assert first.status_code == again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert_problem(api.post("/merchants", json={"merchant_name": "Twice Ltd"}, headers=key), 409, "idempotency-key-reused")
    names = [m["merchant_name"] for m in api.get("/merchants", params={"limit": 1000}).json()["items"]]
    assert names.count("Once Ltd") == 1 and "Twice Ltd" not in names


def test_every_error_answers_the_problem_shape_with_its_status(clients: dict[str, httpx.Client]) -> None:
    api = clients["producer"]
    merchant = created(api.post("/merchants", json={"merchant_name": "Errors Ltd", "merchant_id": "mer-errors"}))
    good_account = {"merchant_id": merchant["merchant_id"], "account_name": "A", "account_type": "DEBIT_NORMAL",
                    "currency": "EUR"}
    cases = [
        (api.post("/merchants", content=b"{", headers={"Content-Type": "application/json"}), 400, "malformed-json", "body"),
        (api.get("/staging-entries/stg_missing"), 404, "not-found", None),
        (api.get("/no-such-thing"), 404, "not-found", None),
        (api.delete("/merchants"), 405, "method-not-allowed", None),
        (api.post("/merchants", json={"merchant_name": "x", "merchant_id": "mer-errors"}), 409, "conflict", "merchant_id"),
        (api.post("/staging-entries/batch", json={"entries": [{"amount": "1" * 100}] * 4000}), 413, "body-too-large", "body"),
        (api.post("/uploads", data={"account_id": "a", "processing_mode": "TRANSACTION"},
                  files={"file": ("big.csv", b"x" * (LIMIT_BYTES + 1))}), 413, "upload-too-large", "file"),
        (api.post("/accounts", json={**good_account, "initial_balance": 0.1}), 422, "invalid-input", "initial_balance"),
        (api.post("/accounts", json={**good_account, "merchant_id": "mer-none"}), 422, "invalid-input", "merchant_id"),
        (api.get("/merchants", params={"cursor": "bm90LWEtY3Vyc29y"}), 422, "invalid-input", "cursor"),
        (api.get("/merchants", params={"limit": 100_000}), 422, "invalid-input", "limit"),
    ]
    for response, status, slug, field in cases:
        assert_problem(response, status, slug, field)
    assert "262,144 bytes (RECON_API_MAX_BODY_BYTES)" in cases[5][0].json()["detail"]


# ---- review: Airflow's users decide, and are recorded -------------------------------------------------------


def processed(airflow: AirflowServer, viewer: httpx.Client, recon_db: Database, staging_entry_id: str) -> None:
    """Process the queue here (the DAG may take the line first: either is fine) until the line is done."""
    pipeline.process_queue(db=recon_db)
    airflow.wait_for(f"staging entry {staging_entry_id} processed", lambda: viewer.get(
        f"/staging-entries/{staging_entry_id}").json()["status"] != "PENDING", RUN_TIMEOUT_S)


def test_reviewers_act_as_themselves_and_a_viewer_only_reads(
    airflow: AirflowServer, clients: dict[str, httpx.Client], recon_db: Database
) -> None:
    api, viewer, anonymous = clients["producer"], clients["viewer"], clients["anonymous"]
    merchant = created(api.post("/merchants", json={"merchant_name": "Review Ltd"}))["merchant_id"]
    orders, psp, fees = (created(api.post("/accounts", json={
        "merchant_id": merchant, "account_name": name, "account_type": kind, "currency": "USD"}))["account_id"]
        for name, kind in (("Orders", "DEBIT_NORMAL"), ("PSP", "CREDIT_NORMAL"), ("Fees", "DEBIT_NORMAL")))
    created(api.post("/rules", json={"account_one_id": orders, "account_two_id": psp, "variance_account_id": fees}))
    line = {"entry_type": "DEBIT", "currency": "USD", "metadata": {"order_id": "ORD-R1"}}
    order = created(api.post("/staging-entries", json={**line, "account_id": orders, "amount": "100.00",
                                                       "processing_mode": "TRANSACTION"}))
    processed(airflow, viewer, recon_db, order["staging_entry_id"])
    sid = created(api.post("/staging-entries", json={**line, "account_id": psp, "entry_type": "CREDIT",
                                                     "amount": "97.50", "processing_mode": "CONFIRMATION"}))["staging_entry_id"]
    processed(airflow, viewer, recon_db, sid)

    assert_problem(anonymous.get("/exceptions"), 401, "unauthenticated")
    assert_problem(anonymous.post(f"/exceptions/{sid}/accept", json={"reason": "BANK_FEE"}), 401, "unauthenticated")
    [item] = viewer.get("/exceptions", params={"account_id": psp}).json()["items"]
    assert (item["staging_entry_id"], item["error_type"], item["amount"]) == (sid, "MismatchError", "97.5000")
    seen = viewer.get(f"/exceptions/{sid}").json()["seen"]
    assert_problem(viewer.post(f"/exceptions/{sid}/accept", json={"reason": "BANK_FEE"}), 403, "forbidden")

    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"reason": "BANK_FEE", "note": "the PSP kept 2.50", "seen": seen}
    decision = created(api.post(f"/exceptions/{sid}/accept", json=body, headers=key))
    assert (decision["actor"], decision["after"]["variance"]["amount"]) == ("producer", "2.5000")
    replay = api.post(f"/exceptions/{sid}/accept", json=body, headers=key)
    assert replay.json() == decision and replay.headers["idempotent-replayed"] == "true"
    assert_problem(api.post(f"/exceptions/{sid}/accept", json=body), 409, "review-stale")
    assert_problem(api.post("/exceptions/stg_nope/ignore", json={"reason": "NOT_OURS"}), 404, "not-found")
    detail = viewer.get(f"/exceptions/{sid}").json()
    assert detail["status"] == "PROCESSED" and [(d["action"], d["actor"]) for d in detail["decisions"]] == [
        ("accept", "producer")]


# ---- the README's curl examples, as written ----------------------------------------------------------------


def readme_api_script() -> str:
    """The bash blocks of the README's REST API section, in order."""
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text[text.index("### The REST API"):]
    section = section[:section.index("\n### ", 1)]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, re.S))


def test_the_readmes_curl_examples_work_as_written(
    airflow: AirflowServer, clients: dict[str, httpx.Client], recon_db: Database
) -> None:
    """Run as a user would with `./recon ui` (its address and password file replaced by this server's);
    then what the examples did, read back. With `./recon ui` due work starts the DAG within seconds;
    this module's Airflow runs only the runs a test triggers, so a thread here processes the queue
    every second instead, while the examples wait for the engine."""
    script = readme_api_script()
    assert "Idempotency-Key" in script and "/exceptions/$LINE/accept" in script
    script = script.replace("http://localhost:8080", airflow.base_url).replace(
        ".recon/airflow/simple_auth_manager_passwords.json.generated",
        str(airflow.home / "simple_auth_manager_passwords.json.generated"))
    stop, failures = threading.Event(), []

    def engine() -> None:
        while not stop.wait(1):
            try:
                pipeline.process_queue(db=recon_db)
            except Exception as exc:  # reported below, not lost in the thread
                failures.append(exc)
                return

    worker = threading.Thread(target=engine, daemon=True)
    worker.start()
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script + '\necho "README: $M $BANK $LINE"'],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=2 * RUN_TIMEOUT_S)
    finally:
        stop.set()
        worker.join(60)
    assert not failures, failures
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    merchant, bank, line = done.stdout.strip().splitlines()[-1].split()[1:]

    admin = clients["admin"]
    books = {a["account_name"]: a for a in admin.get("/accounts", params={"merchant_id": merchant}).json()["items"]}
    assert set(books) == {"Orders EUR", "Bank EUR", "Bank fees EUR"}
    assert abs(Decimal(books["Bank fees EUR"]["posted"])) == Decimal("5")  # the write-off, once
    statement = admin.get("/staging-entries", params={"account_id": bank, "processing_mode": "CONFIRMATION"}).json()
    assert len(statement["items"]) > 1  # the uploaded statement's lines and ORD-1005's
    item = admin.get(f"/exceptions/{line}").json()
    assert (item["status"], item["match_type"]) == ("PROCESSED", "ForceMatched")
    assert [(d["action"], d["actor"]) for d in item["decisions"]] == [
        ("force-match", "admin"), ("reopen", "admin"), ("accept", "admin")]


# ---- schemathesis: generated requests against the live API ----------------------------------------------


def test_generated_requests_get_no_500_and_answers_that_match_the_schema(
    airflow: AirflowServer, clients: dict[str, httpx.Client]
) -> None:
    """schemathesis, valid and invalid requests for every operation as admin (who may write), through
    Airflow: no 5xx, and every answer's status, media type, headers and body as the schema says."""
    schema = schemathesis.openapi.from_url(airflow.base_url + API + "/openapi.json")
    sent = fuzz(schema, SCHEMATHESIS_EXAMPLES, base_url=airflow.base_url + API,
                headers={"Authorization": clients["admin"].headers["Authorization"]})
    document = json.loads(openapi_text())
    assert set(sent) == {f"{method.upper()} {path}" for path, ops in document["paths"].items() for method in ops}
    assert all(n > 0 for n in sent.values()), sent
