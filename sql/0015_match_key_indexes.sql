-- Look-ups of the matching rules (issue 13). A confirmation finds its expected legs by the rule's
-- keys: order_id keeps entries_expected_order_idx; keys on the booked line's metadata probe this
-- index with `metadata @> '{"reference": "..."}'` (jsonb_path_ops: one hash per key and value,
-- the smallest GIN opclass); amount-only rules scan the amount index within the tolerance's range.
-- Both hold open EXPECTED legs only, so they stay as small as the open expectations.
CREATE INDEX entries_expected_metadata_idx ON entries USING gin (metadata jsonb_path_ops)
    WHERE status = 'EXPECTED';
CREATE INDEX entries_expected_amount_idx ON entries (account_id, amount) WHERE status = 'EXPECTED';
