#!/usr/bin/env bash
# Restarts the local PostgreSQL cluster under token load (tests/faults.rs,
# postgres_restart_under_token_load) and prints what integrations saw: requests, failures
# during the outage by status and code, recovery time, failures after recovery, and whether
# any partner changed status.
#
#   scripts/faults-postgres.sh
#
# It restarts the machine's shared PostgreSQL (pg_ctlcluster ... main restart), so other test
# runs using it at that moment see their connections dropped: run it on its own.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export SAMVAULT_TEST_POSTGRES="${SAMVAULT_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}"
mkdir -p target
log=target/faults-postgres.log
set +e
cargo test --test faults postgres_restart_under_token_load -- --ignored --nocapture \
    >"$log" 2>&1
code=$?
set -e
if [ "$code" != 0 ]; then
    tail -n 40 "$log"
fi
echo
echo "PostgreSQL restarted under token load (full output in $log):"
sed -n 's/^faults-postgres: //p' "$log"
exit "$code"
