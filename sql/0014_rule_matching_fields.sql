-- Matching rules grow (issue 13): priority, match keys, amount tolerance booked to a variance
-- account, a date window for candidates, and how long an unmatched confirmation waits.
-- Existing rules keep today's behaviour exactly: key order_id = order_id, no tolerance, no
-- window, the ageing of RECON_MATCHING_WINDOW_SECONDS (aging_days NULL), and priorities in the
-- order "oldest first" that decided between rules sharing an account until now.
ALTER TABLE recon_rules
    ADD COLUMN priority             integer,
    ADD COLUMN match_keys           jsonb NOT NULL
        DEFAULT '[{"line": "order_id", "expected": "order_id"}]'::jsonb
        CHECK (jsonb_typeof(match_keys) = 'array' AND jsonb_array_length(match_keys) > 0),
    ADD COLUMN amount_tolerance     numeric(20, 4) NOT NULL DEFAULT 0 CHECK (amount_tolerance >= 0),
    ADD COLUMN amount_tolerance_pct numeric(9, 4) NOT NULL DEFAULT 0 CHECK (amount_tolerance_pct >= 0),
    ADD COLUMN variance_account_id  text,
    ADD COLUMN date_window_days     integer CHECK (date_window_days >= 0),
    ADD COLUMN aging_days           integer CHECK (aging_days >= 0);

UPDATE recon_rules AS r SET priority = ordered.n * 10
FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM recon_rules) AS ordered
WHERE r.id = ordered.id;

ALTER TABLE recon_rules
    ALTER COLUMN priority SET NOT NULL,
    ADD CONSTRAINT recon_rules_variance_account_fk
        FOREIGN KEY (variance_account_id, merchant_id) REFERENCES accounts (account_id, merchant_id),
    ADD CONSTRAINT recon_rules_tolerance_needs_variance_account
        CHECK ((amount_tolerance = 0 AND amount_tolerance_pct = 0) OR variance_account_id IS NOT NULL);

-- A rule inserted without a priority (plain SQL, or no --priority) goes after every rule already
-- applying to either of its accounts, so the older rule keeps winning as it did before priorities.
CREATE FUNCTION recon_rules_default_priority() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.priority IS NULL THEN
        SELECT coalesce(max(priority), 0) + 10 INTO NEW.priority FROM recon_rules
        WHERE account_one_id = NEW.account_one_id OR account_two_id = NEW.account_two_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER recon_rules_default_priority BEFORE INSERT ON recon_rules
    FOR EACH ROW EXECUTE FUNCTION recon_rules_default_priority();

-- A tie in priority between rules applying to the same account and mode is refused: TRANSACTION
-- lines are routed by account_one, CONFIRMATION lines by account_two.
CREATE UNIQUE INDEX recon_rules_account_one_priority_uq ON recon_rules (account_one_id, priority);
CREATE UNIQUE INDEX recon_rules_account_two_priority_uq ON recon_rules (account_two_id, priority);
