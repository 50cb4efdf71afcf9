-- One bank line, many expected legs (issue 15, item 3). A rule may group the open expected legs on
-- its contra account by one metadata key (`metadata.payout_id`, `metadata.invoice_batch`): a
-- confirmation carrying that key's value fulfils every open leg sharing it, in one transaction,
-- when their sum closes to the line's amount (within the rule's tolerance). NULL: matching as before.
ALTER TABLE recon_rules
    ADD COLUMN group_by text CHECK (group_by ~ '^metadata\.[A-Za-z0-9_-]{1,100}$');

-- A match group: the line, the rule and key value that formed it, its totals, and the one POSTED
-- transaction that fulfilled its legs. line_amount = expected_total + variance (the variance is
-- booked to the rule's variance account). recon_rule_id is kept as text, as the ledger keeps
-- metadata.recon_rule_id: the history outlives a rule deleted later.
CREATE TABLE match_groups (
    match_group_id   text PRIMARY KEY DEFAULT recon_new_id('mgrp'),
    staging_entry_id text NOT NULL REFERENCES staging_entries (staging_entry_id),
    recon_rule_id    text NOT NULL,
    account_id       text NOT NULL REFERENCES accounts (account_id),
    group_by         text NOT NULL,
    group_value      text NOT NULL,
    currency         char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    line_amount      numeric(20, 4) NOT NULL CHECK (line_amount > 0),
    expected_total   numeric(20, 4) NOT NULL CHECK (expected_total > 0),
    variance         numeric(20, 4) NOT NULL,
    transaction_id   text NOT NULL REFERENCES transactions (transaction_id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (line_amount = expected_total + variance)
);
-- each staging entry has one effect; each transaction fulfils one group
CREATE UNIQUE INDEX match_groups_staging_entry_uq ON match_groups (staging_entry_id);
CREATE UNIQUE INDEX match_groups_transaction_uq ON match_groups (transaction_id);
CREATE INDEX match_groups_key_idx ON match_groups (account_id, group_value);

-- One row per expected leg a group fulfilled. allocated_amount is what the leg contributes to the
-- line's amount: its amount, negative for a leg on the other side (a refund netted in a payout);
-- the items of a group sum to its expected_total.
CREATE TABLE match_group_items (
    match_group_id          text NOT NULL REFERENCES match_groups (match_group_id),
    expected_entry_id       text NOT NULL REFERENCES entries (entry_id),
    expected_transaction_id text NOT NULL REFERENCES transactions (transaction_id),
    allocated_amount        numeric(20, 4) NOT NULL CHECK (allocated_amount <> 0),
    PRIMARY KEY (match_group_id, expected_entry_id)
);
-- an expected leg is fulfilled by at most one group
CREATE UNIQUE INDEX match_group_items_expected_entry_uq ON match_group_items (expected_entry_id);
