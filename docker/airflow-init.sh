#!/bin/bash
# One-shot init service: check the secrets, migrate Airflow's metadata and the recon schema,
# create the recon_db connection and the admin password; the long-running services start after
# it succeeds.
set -euo pipefail

echo "airflow-init: checking the secrets (weak or known values stop the deployment here)"
python -m recon.compose_secrets --check

echo "airflow-init: migrating Airflow's metadata database"
airflow db migrate

echo "airflow-init: migrating the recon database (sql/)"
python -m recon db migrate

echo "airflow-init: connection recon_db"
airflow connections delete recon_db >/dev/null 2>&1 || true
airflow connections add recon_db --conn-uri "$RECON_DB_CONN_URI"

echo "airflow-init: pool ${RECON_CHUNK_POOL_SLOTS:-4} slot(s) for the chunk tasks (about 420 MiB each)"
airflow pools set recon_chunks "${RECON_CHUNK_POOL_SLOTS:-4}" "recon chunk tasks: one slot needs about 420 MiB on its worker"

echo "airflow-init: admin password for the UI (simple auth manager)"
mkdir -p "$(dirname "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")"
python - <<'PY'
import json, os
path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
with open(path, "w") as f:
    json.dump({"admin": os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
os.chmod(path, 0o600)
PY
echo "airflow-init: done"
