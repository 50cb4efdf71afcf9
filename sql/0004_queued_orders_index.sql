-- Which confirmed orders are still queued as TRANSACTION lines (recon.tasks.context._queued_orders)
-- is asked for every order of a chunk of confirmations. Through staging_entries_order_idx the
-- planner probed by order only (the account comes from a join with recon_rules) and walked every
-- account's part of the index: 450 ms for a chunk of 10,000 confirmations. This index holds only
-- the lines still waiting to be booked, so the question costs well under a millisecond, and it
-- stays small because a line leaves it once processed.
CREATE INDEX staging_entries_queued_transaction_idx ON staging_entries (account_id, order_id)
    WHERE processing_mode = 'TRANSACTION' AND status = 'PENDING';
