#!/usr/bin/env bash
# Load and soak (issue 7, item 6): MINUTES of mixed load against two `samvault serve` replicas
# on one fresh PostgreSQL database, the dev IdP in --strict-rotation mode (a refresh token
# redeemed twice, e.g. by both replicas at once, would show as an IdP error and a lost partner).
#
# scripts/samload.py drives, round-robin over the replicas:
#   token          4 threads of token requests for random partners (most of the load)
#   dashboard      a viewer reading /ops, the partner list (search, filters, sort), partner
#                  pages, the security report, the audit log, integrations, keys
#   ops rotate     an operator pressing "Rotate now" on a random partner twice a second
#   cli rotate     `samvault rotate --partner` every 10 s
#   consent        a new partner consenting through the real flow every second
#   intended 4xx   an unknown partner (404) and a wrong client secret (401), counted apart
# while both schedulers rotate every grant idle SAMVAULT_ROTATE_AFTER (30 s).
#
# Prints requests and p50/p99 per kind, errors, server-side checks and the RSS of each
# replica after warm-up, in the middle and at the end. Exits 1 on any error that was not
# intended, on an IdP error, a partner no longer active, a failed redemption, an ERROR log
# line, a broken audit chain, or an RSS at the end above RSS_FACTOR x its value after warm-up.
#
# Usage: scripts/soak.sh [MINUTES=3]
#   env: PARTNERS=200 ROTATE_AFTER=30s RSS_FACTOR=1.5
#        SAMVAULT_BIN=target/debug/samvault (default: the release binary, built now)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-3}
PARTNERS=${PARTNERS:-200}
. scripts/lib.sh
sv_bin

echo "== dev IdP (strict rotation), fresh PostgreSQL database, $PARTNERS partners"
# Room for one consent a second for MINUTES.
start_idp --strict-rotation --tenants $((PARTNERS + MINUTES * 60 + 100))
fresh_pg_db "samvault_soak_$$"
samvault_env "$PG_URL"
export SAMVAULT_ROTATE_AFTER=${ROTATE_AFTER:-30s}
import_grants "$PARTNERS"
create_client soak --rate-limit 1000000
"$BIN" ops-user create --username soak-viewer --role viewer --json >"$work/viewer.json"
"$BIN" ops-user create --username soak-operator --role operator --json >"$work/operator.json"

start_serve replica-1; SV1=$SV; PID1=$SERVE_PID
start_serve replica-2; SV2=$SV; PID2=$SERVE_PID

echo "== $MINUTES min of mixed load on both replicas"
load=0
python3 scripts/samload.py soak --sv "$SV1,$SV2" --pids "$PID1,$PID2" --auth "$AUTH" --bin "$BIN" \
  --viewer "$work/viewer.json" --operator "$work/operator.json" --summary "$work/summary.json" \
  --seeded "$PARTNERS" --consent-first $((PARTNERS + 1)) --minutes "$MINUTES" \
  --rss-factor "${RSS_FACTOR:-1.5}" || load=1

# What the servers did, from the database and the IdP (both replicas still up).
sql() { psql -tA "$DATABASE_URL" -c "$1"; }
consented=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["consented"])' "$work/summary.json")
partners=$(sql "SELECT COUNT(*) FROM partners")
not_active=$(sql "SELECT COUNT(*) FROM partners WHERE status <> 'active'")
redemptions=$(sql "SELECT string_agg(source || ' ' || n, ', ') FROM (SELECT source, COUNT(*) n FROM rotation_attempts WHERE outcome = 'success' GROUP BY source ORDER BY source) s")
failed_redemptions=$(sql "SELECT COUNT(*) FROM rotation_attempts WHERE outcome <> 'success'")
idp_errors=$(curl -sf "$IDP/_sim/counters" | python3 -c 'import json,sys; print(sum((json.load(sys.stdin).get("errors") or {}).values()))')
refresh_calls=$(idp_counter refresh_token)
log_errors=$(cat "$work/replica-1.log" "$work/replica-2.log" | grep -c ERROR || true)
log_warnings=$(cat "$work/replica-1.log" "$work/replica-2.log" | grep -c WARN || true)
audit=ok
"$BIN" audit verify >"$work/audit.out" 2>&1 || audit="BROKEN: $(tail -1 "$work/audit.out")"

echo "server: partners $partners ($PARTNERS imported + $consented consented), not active $not_active; redemptions $redemptions;" \
  "failed redemptions $failed_redemptions; IdP refresh calls $refresh_calls, IdP errors $idp_errors;" \
  "log lines ERROR $log_errors, WARN $log_warnings; audit chain $audit"
if [ "$load" = 0 ] && [ "$not_active" = 0 ] && [ "$failed_redemptions" = 0 ] && [ "$idp_errors" = 0 ] \
  && [ "$log_errors" = 0 ] && [ "$audit" = ok ] && [ "$partners" = $((PARTNERS + consented)) ]; then
  echo "soak: PASS"
else
  echo "soak: FAIL"
  exit 1
fi
