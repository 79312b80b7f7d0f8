#!/usr/bin/env bash
# System packages the tests and deployment checks need beyond the venv:
# PostgreSQL (initdb/pg_ctl for the `postgres` test fixtures), docker-compose (offline
# `config` validation of the compose file), kcat (a gateway publishing frames with
# nothing but a Kafka command line, in the ingest tests), chromium (the monitor
# dashboard's test loads the page in headless Chromium) and prometheus (its promtool
# checks and unit-tests the alert rules). Idempotent: installs only what is missing,
# and only when it can (root with apt-get); otherwise says what is missing and why.
set -euo pipefail

missing=()
pg_bin_found() {
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
pg_bin_found || missing+=(postgresql)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
    echo "system-deps: postgresql, docker-compose, kcat, chromium and promtool present"
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: missing ${missing[*]}; install them as root with apt-get (skipping: not root or no apt-get)" >&2
    exit 0
fi

echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system-deps: installed ${missing[*]}"
