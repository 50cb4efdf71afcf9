#!/bin/bash
# First start of the PostgreSQL container: one database and one user for Airflow's metadata,
# one for the recon engine. The recon user is no superuser: it owns only the schema `recon`
# in the database `recon` (and may not create objects in `public`).
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v airflow_password="$AIRFLOW_DB_PASSWORD" -v recon_password="$RECON_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE recon LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'recon_password';
CREATE DATABASE recon;
REVOKE ALL ON DATABASE recon FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE recon TO recon;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
GRANT ALL ON DATABASE airflow TO airflow;
SQL

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname recon <<'SQL'
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA recon AUTHORIZATION recon;
ALTER ROLE recon IN DATABASE recon SET search_path = recon;
SQL
