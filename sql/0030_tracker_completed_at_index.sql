-- The maintenance prune deletes COMPLETED tasks oldest first, a bounded batch per transaction
-- (ProcessTracker.prune_completed). Partial: open tasks, the claim's hot rows, pay nothing for it.
CREATE INDEX process_tracker_completed_at_idx ON process_tracker (completed_at) WHERE status = 'COMPLETED';
