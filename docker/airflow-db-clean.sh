#!/bin/bash
# Airflow's own housekeeping for this project, outside task code: `airflow db clean` of the runs,
# task instances, XComs and logs of the recon DAGs only (other DAGs of the installation are not
# ours to prune), older than RECON_AIRFLOW_RETENTION_DAYS (7), in transactions of at most
# RECON_AIRFLOW_CLEAN_BATCH_SIZE (1000) rows, then again every RECON_AIRFLOW_CLEAN_INTERVAL_SECONDS
# (86400). It runs where Airflow's metadata credentials already are (the compose service
# airflow-db-clean, or the scheduler host: `docker/airflow-db-clean.sh --once` from cron).
# Airflow keeps the newest run of every DAG; nothing is archived.
set -euo pipefail

retention_days="${RECON_AIRFLOW_RETENTION_DAYS:-7}"
batch_size="${RECON_AIRFLOW_CLEAN_BATCH_SIZE:-1000}"
interval="${RECON_AIRFLOW_CLEAN_INTERVAL_SECONDS:-86400}"
dag_ids="${RECON_AIRFLOW_CLEAN_DAG_IDS:-recon_process_tracker,recon_maintenance}"

for name in retention_days batch_size interval; do
  if ! [[ "${!name}" =~ ^[1-9][0-9]*$ ]]; then
    echo "airflow-db-clean: $name must be a positive integer, got '${!name}'" >&2
    exit 2
  fi
done

while true; do
  before="$(date -u -d "-${retention_days} days" +%Y-%m-%dT%H:%M:%S+00:00)"
  echo "airflow-db-clean: DAGs $dag_ids, before $before, batches of $batch_size"
  airflow db clean --dag-ids "$dag_ids" --clean-before-timestamp "$before" \
    --batch-size "$batch_size" --skip-archive --yes \
    || { status=$?; [[ "${1:-}" == "--once" ]] && exit "$status"; echo "airflow-db-clean: failed ($status); next try in ${interval} s" >&2; }
  [[ "${1:-}" == "--once" ]] && exit 0
  sleep "$interval"
done
