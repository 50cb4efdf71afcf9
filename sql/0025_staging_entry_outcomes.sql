-- Every outcome of a staging entry, append-only: the manual-review reason a reprocess replaces in
-- staging_entries.metadata stays here, with the task and run that wrote it (issue 18, problem 1).
-- Written in the statement that changes the entry's status (recon.staging); `entry show` and the
-- Recon view read it. Rows are never updated or deleted (the trigger below refuses it).
CREATE TABLE staging_entry_outcomes (
    outcome_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    staging_entry_id text NOT NULL REFERENCES staging_entries (staging_entry_id),
    status           text NOT NULL CHECK (status IN ('PENDING', 'NEEDS_MANUAL_REVIEW', 'PROCESSED')),
    error_type       text,
    reason           text,
    task_id          text,
    run              text,  -- the lease owner: the Airflow run id (or `cli`) and a claim suffix
    recorded_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX staging_entry_outcomes_entry_idx ON staging_entry_outcomes (staging_entry_id, outcome_id);

CREATE FUNCTION recon_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = TG_TABLE_NAME || ' is append-only: ' || TG_OP || ' refused';
END $$;

CREATE TRIGGER staging_entry_outcomes_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON staging_entry_outcomes
    FOR EACH STATEMENT EXECUTE FUNCTION recon_append_only();
