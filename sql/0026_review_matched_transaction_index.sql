-- The Recon view's MISMATCH panel finds, per MISMATCH transaction, the confirmation waiting for
-- review that matched it (metadata.matched_transaction_id). Without an index that was a nested loop
-- over every review entry per transaction: 16.6 s at 200,000 entries with stale statistics (bulk
-- ingests leave them stale until autovacuum comes by, and it may be off). Partial: only entries in
-- review carry the key the panel looks for, so the engine's PENDING -> PROCESSED writes pay nothing.
CREATE INDEX staging_entries_review_matched_transaction_idx
    ON staging_entries ((metadata ->> 'matched_transaction_id'))
    WHERE status = 'NEEDS_MANUAL_REVIEW';
