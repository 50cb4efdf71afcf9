-- Reviewer decisions on manual-review items (issue 16): an append-only, hash-chained audit log.
-- Each row carries the hash of the row before it (prev_hash) and of its own canonical content
-- (row_hash, computed by recon/review.py); `./recon review verify` recomputes the chain.
CREATE TABLE review_decisions (
    seq              bigint PRIMARY KEY CHECK (seq >= 1),  -- the chain's order, gapless
    staging_entry_id text NOT NULL REFERENCES staging_entries (staging_entry_id),
    action           text NOT NULL CHECK (action IN ('accept', 'force-match', 'ignore', 'reopen', 'requeue')),
    reason_code      text NOT NULL,
    note             text NOT NULL,
    actor            text NOT NULL CHECK (length(actor) BETWEEN 1 AND 255),
    decided_at       timestamptz NOT NULL,
    before           jsonb NOT NULL CHECK (jsonb_typeof(before) = 'object'),
    after            jsonb NOT NULL CHECK (jsonb_typeof(after) = 'object'),
    -- a decision imported from a filled-in export: the same row imported again finds it here
    decision_key     text UNIQUE,
    prev_hash        text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    row_hash         text NOT NULL UNIQUE CHECK (row_hash ~ '^[0-9a-f]{64}$')
);
CREATE INDEX review_decisions_entry_idx ON review_decisions (staging_entry_id, seq);

-- Append-only for every role that does not own the schema's triggers: UPDATE, DELETE and TRUNCATE
-- are refused by the database itself, whoever sends them.
CREATE FUNCTION review_decisions_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
        MESSAGE = 'review_decisions is append-only: ' || TG_OP || ' refused';
END $$;
CREATE TRIGGER review_decisions_append_only BEFORE UPDATE OR DELETE ON review_decisions
    FOR EACH ROW EXECUTE FUNCTION review_decisions_refuse_change();
CREATE TRIGGER review_decisions_no_truncate BEFORE TRUNCATE ON review_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION review_decisions_refuse_change();

-- A reopened confirmation may confirm again (a reviewer's force-match, or the engine after a
-- requeue): its earlier, now ARCHIVED, version keeps its source. One live effect per staging entry.
DROP INDEX transactions_source_staging_entry_uq;
CREATE UNIQUE INDEX transactions_source_staging_entry_uq
    ON transactions (source_staging_entry_id)
    WHERE source_staging_entry_id IS NOT NULL AND status <> 'ARCHIVED';
