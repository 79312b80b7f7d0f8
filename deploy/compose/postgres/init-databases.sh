#!/usr/bin/env bash
# First-start initialisation (postgres image, /docker-entrypoint-initdb.d): one database per
# service in $LINELOOP_DATABASES, each owned by a login role of the same name, so no service
# can touch another's state.
set -euo pipefail

: "${LINELOOP_DATABASES:?space-separated service names}"
: "${LINELOOP_DATABASE_PASSWORD:?password for the service roles}"

for service in ${LINELOOP_DATABASES}; do
    psql --set=ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname postgres \
        --set=service="${service}" --set=password="${LINELOOP_DATABASE_PASSWORD}" <<'SQL'
CREATE ROLE :"service" LOGIN PASSWORD :'password';
CREATE DATABASE :"service" OWNER :"service";
REVOKE ALL ON DATABASE :"service" FROM PUBLIC;
SQL
done
