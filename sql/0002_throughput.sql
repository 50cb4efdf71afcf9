-- Throughput of the hot tables (see bench/RESULTS.md for the figures each change bought).
--
-- updated_at stays true on every UPDATE, whoever writes the row, but the per-row PL/pgSQL call
-- is skipped when the statement already set updated_at = now() itself, as every engine and
-- tracker statement does: the WHEN clause is evaluated without entering PL/pgSQL (about 4 µs
-- saved per updated row). Any other value, including leaving updated_at unchanged or setting
-- it to something else, still fires the trigger, which sets now().

DROP TRIGGER merchant_accounts_touch ON merchant_accounts;
DROP TRIGGER accounts_touch ON accounts;
DROP TRIGGER recon_rules_touch ON recon_rules;
DROP TRIGGER staging_entries_touch ON staging_entries;
DROP TRIGGER transactions_touch ON transactions;
DROP TRIGGER entries_touch ON entries;
DROP TRIGGER process_tracker_touch ON process_tracker;

CREATE TRIGGER merchant_accounts_touch BEFORE UPDATE ON merchant_accounts
    FOR EACH ROW WHEN (NEW.updated_at IS DISTINCT FROM now()) EXECUTE FUNCTION recon_touch_updated_at();
CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts
    FOR EACH ROW WHEN (NEW.updated_at IS DISTINCT FROM now()) EXECUTE FUNCTION recon_touch_updated_at();
CREATE TRIGGER recon_rules_touch BEFORE UPDATE ON recon_rules
    FOR EACH ROW WHEN (NEW.updated_at IS DISTINCT FROM now()) EXECUTE FUNCTION recon_touch_updated_at();
CREATE TRIGGER staging_entries_touch BEFORE UPDATE ON staging_entries
    FOR EACH ROW WHEN (NEW.updated_at IS DISTINCT FROM now()) EXECUTE FUNCTION recon_touch_updated_at();
CREATE TRIGGER transactions_touch BEFORE UPDATE ON transactions
    FOR EACH ROW WHEN (NEW.updated_at IS DISTINCT FROM now()) EXECUTE FUNCTION recon_touch_updated_at();
CREATE TRIGGER entries_touch BEFORE UPDATE ON entries
    FOR EACH ROW WHEN (NEW.updated_at IS DISTINCT FROM now()) EXECUTE FUNCTION recon_touch_updated_at();
CREATE TRIGGER process_tracker_touch BEFORE UPDATE ON process_tracker
    FOR EACH ROW WHEN (NEW.updated_at IS DISTINCT FROM now()) EXECUTE FUNCTION recon_touch_updated_at();

-- The queue table churns: every task is updated two or three times and finished rows are
-- pruned. Vacuum and analyze it after 1 to 2 percent of its rows changed instead of the default 20 / 10 percent,
-- so dead claim-index entries are cleaned while a backlog drains and the planner's idea of how
-- many rows are PROCESSING stays current.
ALTER TABLE process_tracker SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 1000
);
