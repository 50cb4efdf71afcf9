-- The tasks of one staging entry (GET /recon/api/v1/staging-entries/{id}). Open tasks are found by
-- process_tracker_one_open_task_per_entry_uq; this finds the finished ones, which were a sequential
-- scan of the queue. Partial, so a task pays for it once, at its final status change, not at every
-- claim: a full index made the two status updates of 50,000 tasks slower by 15 to 50 percent (the
-- shared 2-core machine, 2026-12-05); this one costs one index entry per finished task.
CREATE INDEX process_tracker_finished_entry_idx ON process_tracker ((payload ->> 'staging_entry_id'))
    WHERE status IN ('COMPLETED', 'FAILED');
