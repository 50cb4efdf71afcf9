-- A bank statement line's natural duplicate key (its bank reference, or account + booking date +
-- amount + reference where the bank gives no unique reference), unique per account: a statement
-- loaded twice, or two overlapping statements, ingest no line twice, whoever inserts them
-- (recon.ingest, the library producer, plain SQL). CSV lines have none (their duplicate key is
-- the order id per account and mode, checked by the CSV ingest).

ALTER TABLE staging_entries
    ADD COLUMN natural_key text CHECK (natural_key IS NULL OR length(natural_key) BETWEEN 1 AND 1000);

CREATE UNIQUE INDEX staging_entries_natural_key_uq
    ON staging_entries (account_id, natural_key) WHERE natural_key IS NOT NULL;
