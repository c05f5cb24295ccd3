#!/usr/bin/env bash
# CPV consent benchmark (issue 16): one partner with CUSTOMERS customers, every Partner Center
# call taking PC_LATENCY_MS in the dev IdP's stand-in, which allows 50 calls a second.
#
#  1. `samvault customers sync` lists them (pages of 500).
#  2. `samvault customers consent --partner T` pushes the grants into every one of them, each
#     push verified by a redemption at the customer's authority. The bound is the limit
#     itself, CUSTOMERS / 50 s (100 s for 5,000); target elapsed <= 1.2 x bound. Exactly
#     CUSTOMERS successful consent calls counted by the dev IdP, and no customer left
#     consent_failed.
#
# Usage: bench/customers.sh   (env: CUSTOMERS=5000 PC_LATENCY_MS=20 DB=sqlite|postgres;
#                              SAMVAULT_BIN=target/debug/samvault to skip the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${CUSTOMERS:-5000}
PC_LATENCY_MS=${PC_LATENCY_MS:-20}
DB=${DB:-sqlite}
. scripts/lib.sh
sv_bin

pc_counter() {
  curl -sf "$IDP/_sim/counters" | python3 -c '
import json, sys
pc = json.load(sys.stdin)["partner_center"]
group, key = sys.argv[1], sys.argv[2]
print(pc[group].get(key, 0) if isinstance(pc[group], dict) else pc[group])' "$1" "$2"
}

echo "== one partner, $N customers, ${PC_LATENCY_MS} ms per Partner Center call, $DB"
start_idp --tenants 1 --customers "$N" --pc-latency-ms "$PC_LATENCY_MS"
if [ "$DB" = postgres ]; then
  fresh_pg_db "samvault_bench_$$"
  samvault_env "$PG_URL"
else
  samvault_env "sqlite://$work/bench.db?mode=rwc"
fi
export SAMVAULT_PARTNER_CENTER_URL=$IDP
PARTNER=00000000-0000-4000-8000-000000000001
import_grants 1

start=$(date +%s.%N)
"$BIN" customers sync --partner "$PARTNER"
end=$(date +%s.%N)
python3 -c "print(f'sync: $N customers listed in {$end - $start:.1f} s')"

created=$(pc_counter succeeded consent_create)
throttled=$(pc_counter throttled x)
start=$(date +%s.%N)
"$BIN" customers consent --partner "$PARTNER" || true
end=$(date +%s.%N)
calls=$(( $(pc_counter succeeded consent_create) - created ))
throttled=$(( $(pc_counter throttled x) - throttled ))
"$BIN" customers list --partner "$PARTNER" --json >"$work/customers.json"
python3 - "$start" "$end" "$N" "$calls" "$throttled" "$work/customers.json" <<'PY'
import collections, json, sys
start, end, n, calls, throttled = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
statuses = collections.Counter(c["status"] for c in json.load(open(sys.argv[6])))
bound = n / 50
elapsed = end - start
print(f"consent: {n} customers in {elapsed:.1f} s; bound {bound:.1f} s; ratio {elapsed / bound:.2f} (target <= 1.20)")
print(f"successful consent calls (dev IdP): {calls} (target {n}); throttled answers: {throttled}")
print(f"customers left consent_failed: {statuses.get('consent_failed', 0)} (target 0); statuses: {dict(statuses)}")
PY
