-- An order booking's logical_transaction_id was `<account_id>_<order_id>`: account `bank` with order
-- `eu_123` and account `bank_eu` with order `123` both read `bank_eu_123`, and the second line went
-- to review as a DuplicateOrderError (issue 19, item 6). The order id's percent signs and
-- underscores are now percent-encoded (recon.tasks.transaction_creation.order_logical_id), so the
-- last '_' separates account and order. The ids booked before are rewritten to that form, in every
-- version: only orders with a percent sign or an underscore in their id change. Version 1 names the
-- booking line, whose (account, order) gives the id. (No percent sign in this file: the migration
-- runner's driver would read it as a placeholder; chr(37) is one.)
WITH booked AS (
    SELECT t.logical_transaction_id AS old_id,
           s.account_id || '_'
               || replace(replace(s.order_id, chr(37), chr(37) || '25'), '_', chr(37) || '5F') AS new_id
    FROM transactions t
    JOIN staging_entries s ON s.staging_entry_id = t.source_staging_entry_id
    WHERE t.version = 1 AND s.processing_mode = 'TRANSACTION'
      AND (strpos(s.order_id, '_') > 0 OR strpos(s.order_id, chr(37)) > 0)
      AND t.logical_transaction_id = s.account_id || '_' || s.order_id
)
UPDATE transactions t SET logical_transaction_id = b.new_id
FROM booked b
WHERE t.logical_transaction_id = b.old_id;
