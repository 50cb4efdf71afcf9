"""The raw SQL bound: the engine's writes as hand-written set-based statements, no framework.

Per batch: one committed claim (an ``UPDATE ... FOR UPDATE SKIP LOCKED`` lease, as the engine
does), then one transaction that classifies every claimed line in SQL and writes all of the
batch's effects with one statement per kind: new transactions, their entries (a settled
payment's fee legs among them), archived and MISMATCH versions, staging statuses and metadata
with their outcome history, tracker statuses. psycopg only, no SQLAlchemy, no Python per row.
Business outcomes equal the engine's on the benchmark's workload (the benchmark checks them);
rows are not locked beyond what the statements themselves lock, as a single writer needs no
more: it is a bound, not an engine.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

OWNER = "bench-raw-sql"

CLAIM = """
WITH claimed AS (
    UPDATE process_tracker SET status = 'PROCESSING', attempts = attempts + 1, processing_started_at = now(),
           completed_at = NULL, last_error = NULL, lease_owner = %(owner)s,
           lease_expires_at = now() + interval '10 minutes', updated_at = now()
    WHERE task_id = ANY(ARRAY(
        SELECT task_id FROM process_tracker
        WHERE task_type = 'PROCESS_STAGING_ENTRY' AND status IN ('PENDING', 'RETRY') AND run_after <= now()
        ORDER BY run_after, task_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
    RETURNING task_id, payload ->> 'staging_entry_id' AS staging_entry_id, run_after
)
SELECT task_id, staging_entry_id FROM claimed ORDER BY run_after, task_id
"""

# the claimed lines, in claim order, with their account
LOAD = """
CREATE TEMP TABLE w ON COMMIT DROP AS
SELECT c.n, c.task_id, s.staging_entry_id, s.account_id, s.entry_type, s.amount, s.currency, s.processing_mode,
       s.effective_date, s.metadata, s.order_id, a.merchant_id, a.currency AS account_currency
FROM unnest(%(tasks)s::text[], %(entries)s::text[]) WITH ORDINALITY AS c(task_id, staging_entry_id, n)
JOIN staging_entries s ON s.staging_entry_id = c.staging_entry_id
JOIN accounts a ON a.account_id = s.account_id
WHERE s.status = 'PENDING'
"""

CLASSIFY_TRANSACTIONS = """
CREATE TEMP TABLE tx ON COMMIT DROP AS
WITH base AS (
    SELECT w.*, r.id AS rule_id, r.account_two_id AS contra_id,
           -- recon.tasks.transaction_creation.order_logical_id (chr(37): a percent sign is a placeholder here)
           coalesce(w.account_id || '_' || replace(replace(w.order_id, chr(37), chr(37) || '25'), '_', chr(37) || '5F'),
                    w.staging_entry_id) AS logical_id,
           CASE WHEN r.id IS NULL THEN 'NoReconRuleFoundError'
                WHEN w.account_currency <> w.currency OR ca.currency <> w.currency THEN 'CurrencyMismatchError'
           END AS pre_error
    FROM w
    LEFT JOIN LATERAL (SELECT id, account_two_id FROM recon_rules r WHERE r.account_one_id = w.account_id
                       ORDER BY priority, id LIMIT 1) r ON true
    LEFT JOIN accounts ca ON ca.account_id = r.account_two_id
    WHERE w.processing_mode = 'TRANSACTION'
), ranked AS (
    SELECT base.*, row_number() OVER (PARTITION BY logical_id, pre_error IS NULL ORDER BY n) AS k FROM base
)
SELECT ranked.*, 'txn_' || replace(gen_random_uuid()::text, '-', '') AS transaction_id,
       coalesce(pre_error, CASE WHEN k > 1 OR EXISTS (SELECT 1 FROM transactions x
                                                     WHERE x.logical_transaction_id = ranked.logical_id)
                                THEN 'DuplicateOrderError' END) AS error_type
FROM ranked
"""

INSERT_BOOKED_TRANSACTIONS = """
INSERT INTO transactions (transaction_id, logical_transaction_id, version, amount, currency, merchant_id, status,
                          metadata, source_staging_entry_id)
SELECT transaction_id, logical_id, 1, amount, currency, merchant_id, 'EXPECTED',
       metadata || jsonb_build_object('source_staging_entry_id', staging_entry_id), staging_entry_id
FROM tx WHERE error_type IS NULL
"""

INSERT_BOOKED_ENTRIES = """
INSERT INTO entries (account_id, transaction_id, entry_type, amount, currency, status, effective_date, metadata)
SELECT account_id, transaction_id, entry_type, amount, currency, 'POSTED', effective_date,
       metadata || jsonb_build_object('source_staging_entry_id', staging_entry_id)
FROM tx WHERE error_type IS NULL
UNION ALL
SELECT contra_id, transaction_id, CASE entry_type WHEN 'DEBIT' THEN 'CREDIT' ELSE 'DEBIT' END, amount, currency,
       'EXPECTED', effective_date,
       metadata || jsonb_build_object('source_staging_entry_id', staging_entry_id, 'recon_rule_id', rule_id)
FROM tx WHERE error_type IS NULL
"""

CLASSIFY_CONFIRMATIONS = """
CREATE TEMP TABLE cf ON COMMIT DROP AS
WITH keyed AS (
    -- the benchmark's rules: the account's first rule, one key on the expected order_id, an
    -- absolute tolerance
    SELECT w.*, r.id IS NOT NULL AS has_rule, r.amount_tolerance, r.variance_account_id, r.by_order_id,
           r.fee_account_id, coalesce(nullif(w.metadata ->> 'fee_total', '')::numeric, 0) AS fee,
           CASE WHEN r.line_field = 'order_id' THEN w.order_id ELSE w.metadata ->> substr(r.line_field, 10) END
               AS key_value
    FROM w
    LEFT JOIN LATERAL (SELECT id, match_keys -> 0 ->> 'line' AS line_field, amount_tolerance, variance_account_id,
                              fee_account_id,
                              match_keys = '[{"line": "order_id", "expected": "order_id"}]'::jsonb AS by_order_id
                       FROM recon_rules WHERE account_two_id = w.account_id ORDER BY priority, id LIMIT 1) r ON true
    WHERE w.processing_mode = 'CONFIRMATION'
), base AS (
    -- a line in another currency than its account takes no leg: it does not count among the key's lines
    SELECT keyed.*, row_number() OVER (PARTITION BY account_id, key_value, currency = account_currency ORDER BY n)
        AS k FROM keyed
), matched AS (
    SELECT base.*, leg.*
    FROM base
    LEFT JOIN LATERAL (
        SELECT count(*) OVER () AS candidates, e.entry_id AS leg_entry_id, e.entry_type AS leg_side,
               e.amount AS leg_amount, e.currency AS leg_currency, t.transaction_id AS old_transaction_id,
               t.logical_transaction_id, t.version, t.amount AS transaction_amount,
               t.metadata AS transaction_metadata
        FROM entries e JOIN transactions t ON t.transaction_id = e.transaction_id
        WHERE e.account_id = base.account_id AND e.order_id = base.key_value AND e.status = 'EXPECTED'
          AND t.status NOT IN ('ARCHIVED', 'MISMATCH') AND t.merchant_id = base.merchant_id
        LIMIT 1) leg ON base.key_value IS NOT NULL
), decided AS (
    SELECT matched.*,
           CASE WHEN NOT has_rule THEN 'NoReconRuleFoundError'
                WHEN currency <> account_currency THEN 'CurrencyMismatchError'
                WHEN key_value IS NULL THEN 'MissingOrderIdError'
                WHEN candidates > 1 THEN 'AmbiguousMatchError'
                WHEN candidates = 1 AND k > 1 THEN
                     CASE WHEN by_order_id THEN 'AlreadyFulfilledError' ELSE 'NoMatchFoundError' END
                WHEN candidates IS NULL THEN
                     CASE WHEN by_order_id AND EXISTS (
                              SELECT 1 FROM entries f WHERE f.account_id = matched.account_id
                              AND f.order_id = matched.order_id AND f.fulfilled_expected_entry_id IS NOT NULL)
                          THEN 'AlreadyFulfilledError' ELSE 'NoMatchFoundError' END
                WHEN currency <> leg_currency THEN 'CurrencyMismatchError'
                WHEN abs(amount - leg_amount) > amount_tolerance OR entry_type <> leg_side THEN 'MismatchError'
                WHEN fee <> 0 AND fee_account_id IS NULL THEN 'NoReconRuleFoundError'  -- a fee with nowhere to go
           END AS error_type
    FROM matched
)
SELECT decided.*, 'txn_' || replace(gen_random_uuid()::text, '-', '') AS new_transaction_id,
       CASE error_type
           WHEN 'MismatchError' THEN concat_ws('; ',
               CASE WHEN amount <> leg_amount THEN format('amount: expected %%s, got %%s', leg_amount, amount) END,
               CASE WHEN entry_type <> leg_side THEN format('side: expected %%s, got %%s', leg_side, entry_type) END)
           ELSE format('%%s for order %%L on account %%s', error_type, order_id, account_id)
       END AS error
FROM decided
"""

INSERT_FULFILLED_TRANSACTIONS = """
INSERT INTO transactions (transaction_id, logical_transaction_id, version, amount, currency, merchant_id, status,
                          metadata, source_staging_entry_id)
SELECT new_transaction_id, logical_transaction_id, version + 1, transaction_amount, leg_currency, merchant_id, 'POSTED',
       transaction_metadata || jsonb_build_object('evolved_from_transaction_id', old_transaction_id,
                                                  'fulfilled_expected_entry_id', leg_entry_id),
       staging_entry_id
FROM cf WHERE error_type IS NULL
"""

INSERT_FULFILLED_ENTRIES = """
INSERT INTO entries (account_id, transaction_id, entry_type, amount, currency, status, effective_date, metadata,
                     fulfilled_expected_entry_id)
SELECT account_id, new_transaction_id, entry_type, amount, currency, 'POSTED', effective_date,
       metadata || jsonb_build_object('source_staging_entry_id', staging_entry_id,
                                      'fulfilled_expected_entry_id', leg_entry_id),
       leg_entry_id
FROM cf WHERE error_type IS NULL
UNION ALL
SELECT e.account_id, cf.new_transaction_id, e.entry_type, e.amount, e.currency, 'POSTED', e.effective_date,
       e.metadata || jsonb_build_object('derived_from_entry_id', e.entry_id), NULL
FROM cf JOIN entries e ON e.transaction_id = cf.old_transaction_id AND e.status = 'POSTED'
WHERE cf.error_type IS NULL
UNION ALL  -- a difference within tolerance: to the variance account, on the side that balances
SELECT variance_account_id, new_transaction_id,
       CASE WHEN amount < leg_amount THEN entry_type WHEN entry_type = 'DEBIT' THEN 'CREDIT' ELSE 'DEBIT' END,
       abs(amount - leg_amount), currency, 'POSTED', effective_date,
       jsonb_build_object('source_staging_entry_id', staging_entry_id, 'variance_of_expected_entry_id', leg_entry_id), NULL
FROM cf WHERE error_type IS NULL AND amount <> leg_amount
UNION ALL  -- a PSP settled payment's fee: clearing -> fee account (recon.ledger.book_pair's sides)
SELECT v.account_id, new_transaction_id, v.side, abs(fee), currency, 'POSTED', effective_date,
       jsonb_build_object('source_staging_entry_id', staging_entry_id, 'fee_of_staging_entry_id', staging_entry_id,
                          'settlement_batch', metadata -> 'settlement_batch')
           || CASE WHEN order_id IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('order_id', order_id) END, NULL
FROM cf CROSS JOIN LATERAL (VALUES (CASE WHEN fee > 0 THEN fee_account_id ELSE account_id END, 'CREDIT'),
                                   (CASE WHEN fee > 0 THEN account_id ELSE fee_account_id END, 'DEBIT'))
    AS v(account_id, side)
WHERE error_type IS NULL AND fee <> 0
"""

ARCHIVE = """
WITH archived AS (
    UPDATE transactions SET status = 'ARCHIVED', discarded_at = now(), updated_at = now()
    WHERE transaction_id = ANY(ARRAY(SELECT old_transaction_id FROM cf WHERE error_type IS NULL))
    RETURNING transaction_id
)
UPDATE entries SET status = 'ARCHIVED', discarded_at = now(), updated_at = now()
WHERE transaction_id = ANY(ARRAY(SELECT transaction_id FROM archived))
"""

MARK_MISMATCH = """
UPDATE transactions SET status = 'MISMATCH', updated_at = now()
WHERE transaction_id = ANY(ARRAY(SELECT old_transaction_id FROM cf WHERE error_type = 'MismatchError'))
"""

OUTCOMES = """
CREATE TEMP TABLE outcome ON COMMIT DROP AS
SELECT task_id, staging_entry_id, error_type,
       format('%%s for order %%L on account %%s', error_type, order_id, account_id) AS error,
       CASE WHEN error_type IS NULL
            THEN jsonb_build_object('created_transaction_id', transaction_id, 'match_type', 'NewTransactionGenerated')
            ELSE jsonb_build_object('error', format('%%s for order %%L on account %%s', error_type, order_id,
                                                    account_id), 'error_type', error_type) END AS patch
FROM tx
UNION ALL
SELECT task_id, staging_entry_id, error_type, error,
       CASE WHEN error_type IS NULL
            THEN jsonb_build_object('matched_transaction_id', old_transaction_id, 'matched_entry_id', leg_entry_id,
                                    'evolved_transaction_id', new_transaction_id, 'match_type',
                                    CASE WHEN amount = leg_amount THEN 'Phase2_Fulfilled' ELSE 'FulfilledWithTolerance' END)
                 || CASE WHEN amount = leg_amount THEN '{}'::jsonb
                         ELSE jsonb_build_object('variance', amount - leg_amount,
                                                 'variance_account_id', variance_account_id) END
                 || CASE WHEN fee = 0 THEN '{}'::jsonb
                         ELSE jsonb_build_object('fee', fee::text, 'fee_account_id', fee_account_id) END
            WHEN error_type = 'MismatchError'
            THEN jsonb_build_object('error', error, 'error_type', error_type,
                                    'matched_transaction_id', old_transaction_id, 'matched_entry_id', leg_entry_id)
            ELSE jsonb_build_object('error', error, 'error_type', error_type) END
FROM cf
"""

# with the row each status change adds to the entry's outcome history (staging_entry_outcomes),
# as the engine writes it
UPDATE_STAGING = """
WITH changed AS (
    UPDATE staging_entries s SET
        status = CASE WHEN o.error_type IS NULL THEN 'PROCESSED' ELSE 'NEEDS_MANUAL_REVIEW' END,
        metadata = s.metadata || o.patch,
        discarded_at = CASE WHEN o.error_type IS NULL THEN now() ELSE s.discarded_at END,
        updated_at = now()
    FROM outcome o WHERE s.staging_entry_id = o.staging_entry_id
    RETURNING s.staging_entry_id, s.status, o.error_type, o.error, o.task_id
)
INSERT INTO staging_entry_outcomes (staging_entry_id, status, error_type, reason, task_id, run)
SELECT staging_entry_id, status, error_type, error, task_id, %(owner)s FROM changed
"""

UPDATE_TRACKER = """
UPDATE process_tracker t SET
    status = CASE WHEN o.error_type IS NULL THEN 'COMPLETED' ELSE 'FAILED' END,
    last_error = CASE WHEN o.error_type IS NULL THEN NULL ELSE o.error_type || ': ' || o.error END,
    completed_at = now(), lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
FROM outcome o WHERE t.task_id = o.task_id AND t.status = 'PROCESSING' AND t.lease_owner = %(owner)s
"""

PROCESS_BATCH = (
    LOAD, CLASSIFY_TRANSACTIONS, INSERT_BOOKED_TRANSACTIONS, INSERT_BOOKED_ENTRIES, CLASSIFY_CONFIRMATIONS,
    INSERT_FULFILLED_TRANSACTIONS, INSERT_FULFILLED_ENTRIES, ARCHIVE, MARK_MISMATCH, OUTCOMES, "ANALYZE outcome",
    UPDATE_STAGING, UPDATE_TRACKER,
)


def drain(conn: psycopg.Connection, batch_size: int) -> dict[str, Any]:
    """Claim and process batches until nothing is due (`conn` in autocommit mode)."""
    processed = batches = 0
    started = time.perf_counter()
    while True:
        claimed = conn.execute(CLAIM, {"owner": OWNER, "limit": batch_size}).fetchall()
        if not claimed:
            break
        params = {"tasks": [r[0] for r in claimed], "entries": [r[1] for r in claimed], "owner": OWNER}
        with conn.transaction():
            for statement in PROCESS_BATCH:
                conn.execute(statement, params if "%(" in statement else None)
        processed += len(claimed)
        batches += 1
    return {"processed": processed, "batches": batches, "seconds": time.perf_counter() - started}
