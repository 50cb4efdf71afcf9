-- Indexes for the REST API's keyset-paginated reads (recon.web.api).
--
-- A staging entry with its tasks (GET /staging-entries/{id}): the tracker indexed only open tasks by
-- entry (process_tracker_one_open_task_per_entry_uq), so the task of a processed entry was a
-- sequential scan of the queue. Costs one more index entry per task row version (status changes
-- are not HOT updates: status is indexed already).
CREATE INDEX process_tracker_staging_entry_idx ON process_tracker ((payload ->> 'staging_entry_id'));

-- One account's staging entries in creation order (GET /staging-entries?account_id=...), read a
-- page at a time from where the last page ended.
CREATE INDEX staging_entries_account_created_idx ON staging_entries (account_id, created_at, staging_entry_id);
