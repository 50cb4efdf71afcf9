-- Has this order's expected entry already been fulfilled? (recon.tasks.context._fulfilled_orders,
-- asked for the unmatched confirmations of every chunk.) No index led with (account_id, order_id)
-- for fulfilling entries, so the planner scanned the whole entries table: the scale check's plans
-- showed a parallel sequential scan of entries once the ledger held a few hundred thousand rows.
-- Only fulfilling entries are indexed: one index entry per fulfilment.
CREATE INDEX entries_fulfilling_order_idx ON entries (account_id, order_id)
    WHERE fulfilled_expected_entry_id IS NOT NULL;
