-- Recon Engine schema: merchants, accounts, recon rules, staging entries,
-- the versioned ledger (transactions + entries) and the Process Tracker queue.
--
-- Ids are text with database defaults so producers can INSERT with plain SQL naming only
-- business columns. Money is NUMERIC(20,4): ISO 4217 currencies use at most 4 decimals,
-- and the engine rejects amounts with more instead of rounding them.
-- Enumerations are CHECK constraints on text: readable in psql, easy to extend.

CREATE FUNCTION recon_new_id(prefix text) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT prefix || '_' || replace(gen_random_uuid()::text, '-', '')
$$;

-- Keeps updated_at true on every UPDATE, whoever writes the row.
CREATE FUNCTION recon_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TABLE merchant_accounts (
    merchant_id   text PRIMARY KEY DEFAULT recon_new_id('mer'),
    merchant_name text NOT NULL CHECK (length(merchant_name) BETWEEN 1 AND 255),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    account_id      text PRIMARY KEY DEFAULT recon_new_id('acc'),
    merchant_id     text NOT NULL REFERENCES merchant_accounts (merchant_id),
    account_name    text NOT NULL CHECK (length(account_name) BETWEEN 1 AND 255),
    account_type    text NOT NULL CHECK (account_type IN ('DEBIT_NORMAL', 'CREDIT_NORMAL')),
    currency        char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    initial_balance numeric(20, 4) NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, merchant_id)
);
CREATE INDEX accounts_merchant_idx ON accounts (merchant_id);

CREATE TABLE recon_rules (
    id             text PRIMARY KEY DEFAULT recon_new_id('rule'),
    merchant_id    text NOT NULL REFERENCES merchant_accounts (merchant_id),
    account_one_id text NOT NULL,
    account_two_id text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- both accounts belong to the rule's merchant
    FOREIGN KEY (account_one_id, merchant_id) REFERENCES accounts (account_id, merchant_id),
    FOREIGN KEY (account_two_id, merchant_id) REFERENCES accounts (account_id, merchant_id),
    CHECK (account_one_id <> account_two_id),
    UNIQUE (account_one_id, account_two_id)
);
CREATE INDEX recon_rules_account_two_idx ON recon_rules (account_two_id);

CREATE TABLE staging_entries (
    staging_entry_id text PRIMARY KEY DEFAULT recon_new_id('stg'),
    account_id       text NOT NULL REFERENCES accounts (account_id),
    entry_type       text NOT NULL CHECK (entry_type IN ('DEBIT', 'CREDIT')),
    amount           numeric(20, 4) NOT NULL CHECK (amount > 0),
    currency         char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status           text NOT NULL DEFAULT 'PENDING'
                     CHECK (status IN ('PENDING', 'NEEDS_MANUAL_REVIEW', 'PROCESSED')),
    processing_mode  text NOT NULL CHECK (processing_mode IN ('CONFIRMATION', 'TRANSACTION')),
    effective_date   timestamptz NOT NULL DEFAULT now(),
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    -- the order this line refers to, kept in a column so duplicate and match look-ups use an index
    order_id         text GENERATED ALWAYS AS (metadata ->> 'order_id') STORED,
    discarded_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX staging_entries_status_idx ON staging_entries (status);
CREATE INDEX staging_entries_order_idx ON staging_entries (account_id, order_id, processing_mode);
CREATE INDEX staging_entries_created_at_idx ON staging_entries (created_at);

CREATE TABLE transactions (
    transaction_id          text PRIMARY KEY DEFAULT recon_new_id('txn'),
    logical_transaction_id  text NOT NULL,
    version                 integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    amount                  numeric(20, 4) NOT NULL CHECK (amount > 0),
    currency                char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    merchant_id             text NOT NULL REFERENCES merchant_accounts (merchant_id),
    status                  text NOT NULL CHECK (status IN ('EXPECTED', 'POSTED', 'MISMATCH', 'ARCHIVED')),
    metadata                jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    -- the staging entry whose processing created this version: one ledger effect per entry
    source_staging_entry_id text REFERENCES staging_entries (staging_entry_id),
    discarded_at            timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (logical_transaction_id, version)
);
CREATE UNIQUE INDEX transactions_source_staging_entry_uq
    ON transactions (source_staging_entry_id) WHERE source_staging_entry_id IS NOT NULL;
CREATE INDEX transactions_status_idx ON transactions (status);

CREATE TABLE entries (
    entry_id         text PRIMARY KEY DEFAULT recon_new_id('ent'),
    account_id       text NOT NULL REFERENCES accounts (account_id),
    transaction_id   text NOT NULL REFERENCES transactions (transaction_id),
    entry_type       text NOT NULL CHECK (entry_type IN ('DEBIT', 'CREDIT')),
    amount           numeric(20, 4) NOT NULL CHECK (amount > 0),
    currency         char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status           text NOT NULL CHECK (status IN ('EXPECTED', 'POSTED', 'ARCHIVED')),
    effective_date   timestamptz NOT NULL,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    order_id         text GENERATED ALWAYS AS (metadata ->> 'order_id') STORED,
    -- an EXPECTED entry is fulfilled at most once: enforced by the unique index below
    fulfilled_expected_entry_id text REFERENCES entries (entry_id),
    discarded_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX entries_transaction_idx ON entries (transaction_id);
CREATE INDEX entries_account_status_idx ON entries (account_id, status);
CREATE INDEX entries_expected_order_idx ON entries (account_id, order_id) WHERE status = 'EXPECTED';
CREATE UNIQUE INDEX entries_fulfilled_expected_uq
    ON entries (fulfilled_expected_entry_id) WHERE fulfilled_expected_entry_id IS NOT NULL;

-- The Process Tracker: a durable work queue. A claim is a lease (owner + expiry);
-- run_after is when a PENDING or RETRY task is due.
CREATE TABLE process_tracker (
    task_id               text PRIMARY KEY DEFAULT recon_new_id('task'),
    task_type             text NOT NULL CHECK (task_type IN ('PROCESS_STAGING_ENTRY')),
    payload               jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(payload) = 'object'),
    status                text NOT NULL DEFAULT 'PENDING'
                          CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'RETRY')),
    attempts              integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error            text,
    run_after             timestamptz NOT NULL DEFAULT now(),
    lease_owner           text,
    lease_expires_at      timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    processing_started_at timestamptz,
    completed_at          timestamptz,
    CHECK (status <> 'PROCESSING' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
) WITH (fillfactor = 70);  -- room for HOT updates: every task is updated several times

CREATE INDEX process_tracker_status_idx ON process_tracker (status);
CREATE INDEX process_tracker_task_type_idx ON process_tracker (task_type);
CREATE INDEX process_tracker_created_at_idx ON process_tracker (created_at);
-- the claim path: oldest due PENDING/RETRY task of a type is an index scan in the claim's exact
-- order (run_after, task_id), so a large batch enqueued in one transaction needs no sort
CREATE INDEX process_tracker_claim_idx ON process_tracker (task_type, run_after, task_id)
    WHERE status IN ('PENDING', 'RETRY');
-- the reaper's path
CREATE INDEX process_tracker_lease_idx ON process_tracker (lease_expires_at)
    WHERE status = 'PROCESSING';
-- at most one unfinished task per staging entry
CREATE UNIQUE INDEX process_tracker_one_open_task_per_entry_uq
    ON process_tracker ((payload ->> 'staging_entry_id'))
    WHERE status IN ('PENDING', 'PROCESSING', 'RETRY') AND payload ? 'staging_entry_id';

CREATE TRIGGER merchant_accounts_touch BEFORE UPDATE ON merchant_accounts
    FOR EACH ROW EXECUTE FUNCTION recon_touch_updated_at();
CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts
    FOR EACH ROW EXECUTE FUNCTION recon_touch_updated_at();
CREATE TRIGGER recon_rules_touch BEFORE UPDATE ON recon_rules
    FOR EACH ROW EXECUTE FUNCTION recon_touch_updated_at();
CREATE TRIGGER staging_entries_touch BEFORE UPDATE ON staging_entries
    FOR EACH ROW EXECUTE FUNCTION recon_touch_updated_at();
CREATE TRIGGER transactions_touch BEFORE UPDATE ON transactions
    FOR EACH ROW EXECUTE FUNCTION recon_touch_updated_at();
CREATE TRIGGER entries_touch BEFORE UPDATE ON entries
    FOR EACH ROW EXECUTE FUNCTION recon_touch_updated_at();
CREATE TRIGGER process_tracker_touch BEFORE UPDATE ON process_tracker
    FOR EACH ROW EXECUTE FUNCTION recon_touch_updated_at();
