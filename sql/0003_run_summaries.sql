-- One row per pipeline run (an Airflow DAG run of recon_process_tracker, or a CLI run):
-- what the run's summary task counted, and the backlog it left behind. The Recon view in the
-- Airflow UI draws throughput and the backlog trend from it; the full summary stays in `summary`.
-- Written by recon.monitoring.record_run_summary; a retried summary task overwrites its row.

CREATE TABLE run_summaries (
    dag_id       text NOT NULL,
    run_id       text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    outcome      text NOT NULL CHECK (outcome IN ('success', 'failed')),
    dry_run      boolean NOT NULL DEFAULT false,
    claimed      integer NOT NULL DEFAULT 0 CHECK (claimed >= 0),
    -- tasks that reached a final state in this run: COMPLETED + FAILED
    processed    integer NOT NULL DEFAULT 0 CHECK (processed >= 0),
    -- PENDING + RETRY tasks in the tracker right after the run (due now or later)
    backlog      integer NOT NULL DEFAULT 0 CHECK (backlog >= 0),
    summary      jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(summary) = 'object'),
    PRIMARY KEY (dag_id, run_id)
);
CREATE INDEX run_summaries_recorded_at_idx ON run_summaries (recorded_at DESC);
