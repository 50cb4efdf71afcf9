-- Wake the pipeline when the Process Tracker changes.
--
-- Every statement that inserts or updates process_tracker rows sends ONE notification on the
-- channel `recon_due_work` (recon.settings.DUE_WORK_CHANNEL) when its transaction commits: a
-- producer's bulk insert of 100,000 tasks costs one NOTIFY, not 100,000, and PostgreSQL folds
-- identical notifications of one transaction into one. Nothing is sent for a rolled-back
-- transaction. The listener (recon.due_work_trigger, in Airflow's triggerer) then asks the
-- tracker what is due; the payload only says which kind of statement woke it.
--
-- Inserts are new work from any producer, plain SQL included. Updates matter too: a requeue
-- or a release of held-back tasks makes work due, a claim shows that a run made progress
-- (so the next run of a backlog can be queued at once), and a RETRY outcome sets the run_after
-- the listener sleeps until.

CREATE FUNCTION recon_notify_due_work() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('recon_due_work', TG_OP);
    RETURN NULL;
END
$$;

CREATE TRIGGER process_tracker_notify_due_work
    AFTER INSERT OR UPDATE ON process_tracker
    FOR EACH STATEMENT EXECUTE FUNCTION recon_notify_due_work();
