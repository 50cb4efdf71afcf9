-- The REST API's Idempotency-Key records (recon.web.api.idempotency). A creating POST sent with a
-- key stores its answer in the same database transaction as its effect: the same key and request
-- again gets that answer back and changes nothing; another request under the same key is a 409.
-- Keys are per caller (the Airflow user), so two producers cannot collide or read each other's answers.
CREATE TABLE api_idempotency_keys (
    principal       text NOT NULL CHECK (length(principal) BETWEEN 1 AND 255),
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    -- sha256 of method, path and body: what "the same request" means
    request_hash    text NOT NULL,
    status_code     integer NOT NULL CHECK (status_code BETWEEN 200 AND 299),
    response        json NOT NULL,  -- the answer as it was sent (json keeps its text; nothing queries inside)
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, idempotency_key)
);
-- the maintenance DAG forgets keys past their retention, oldest first
CREATE INDEX api_idempotency_keys_created_at_idx ON api_idempotency_keys (created_at);
