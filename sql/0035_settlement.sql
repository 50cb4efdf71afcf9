-- PSP settlement (issue 15): a rule may name the account a PSP's fees are booked to, and a
-- settlement line that books itself (a refund, a chargeback, a fee, a balance carried between
-- batches) arrives in its own processing mode, so routing it costs the engine no metadata read.
ALTER TABLE recon_rules
    ADD COLUMN fee_account_id text,
    ADD CONSTRAINT recon_rules_fee_account_fk
        FOREIGN KEY (fee_account_id, merchant_id) REFERENCES accounts (account_id, merchant_id);

ALTER TABLE staging_entries DROP CONSTRAINT staging_entries_processing_mode_check;
ALTER TABLE staging_entries ADD CONSTRAINT staging_entries_processing_mode_check
    CHECK (processing_mode IN ('CONFIRMATION', 'TRANSACTION', 'SETTLEMENT'));

-- The Recon view's Settlements section sums a report's lines per batch: only settlement lines are
-- in this index, so other producers' inserts do not pay for it.
CREATE INDEX staging_entries_settlement_batch_idx
    ON staging_entries (account_id, (metadata ->> 'settlement_batch')) WHERE metadata ? 'settlement_batch';
