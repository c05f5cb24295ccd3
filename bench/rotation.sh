#!/usr/bin/env bash
# Rotation benchmark (issue: rotation engine). Prints its figures; takes a few minutes.
#
#  1. One process, SQLite: `samvault rotate --all` over N generated tenants while the dev IdP
#     adds LATENCY_MS to every token call. Target: elapsed <= 1.3 x N x latency / concurrency,
#     and exactly N refresh calls counted by the IdP.
#  2. Two `samvault serve` replicas on one PostgreSQL database rotating the same N tenants:
#     exactly N refresh calls, zero lost grants, the work split between the replicas.
#
# Usage: bench/rotation.sh   (env: TENANTS=10000 LATENCY_MS=50 CONCURRENCY=16)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${TENANTS:-10000}
LATENCY_MS=${LATENCY_MS:-50}
CONCURRENCY=${CONCURRENCY:-16}
. scripts/lib.sh
sv_bin

# A dev IdP adding LATENCY_MS to every token call, and one consented grant per tenant in
# $work/import.jsonl.
start_and_mint() {
  start_idp --tenants "$N" --latency-ms "$LATENCY_MS"
  mint_grants "$N" "$work/import.jsonl"
}

echo "== 1. $N tenants, ${LATENCY_MS} ms per token call, concurrency $CONCURRENCY, SQLite, samvault rotate --all"
start_and_mint
samvault_env "sqlite://$work/bench.db?mode=rwc"
export SAMVAULT_ROTATION_CONCURRENCY=$CONCURRENCY
"$BIN" partners import --file "$work/import.jsonl"
before=$(idp_counter refresh_token)
start=$(date +%s.%N)
"$BIN" rotate --all | tee "$work/rotate.out"
end=$(date +%s.%N)
calls=$(( $(idp_counter refresh_token) - before ))
python3 - "$start" "$end" "$N" "$LATENCY_MS" "$CONCURRENCY" "$calls" <<'PY'
import sys
start, end, n, lat, conc, calls = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
bound = n * lat / 1000 / conc
elapsed = end - start
print(f"rotation: {n} tenants in {elapsed:.1f} s; bound {bound:.1f} s; ratio {elapsed / bound:.2f} (target <= 1.30); refresh calls {calls} (target {n})")
PY
stop_pid "$IDP_PID"

echo "== 2. two serve replicas on one PostgreSQL database, $N tenants, concurrency $CONCURRENCY each"
start_and_mint
fresh_pg_db "samvault_bench_$$"
samvault_env "$PG_URL"
export SAMVAULT_ROTATION_CONCURRENCY=$CONCURRENCY
"$BIN" partners import --file "$work/import.jsonl"
before=$(idp_counter refresh_token)
start=$(date +%s.%N)
for r in 1 2; do
  SAMVAULT_ROTATE_AFTER=7d RUST_LOG=warn,samvault::broker=info start_serve "replica-$r"
done
until [ "$(psql -tA "$DATABASE_URL" -c "SELECT COUNT(*) FROM partners WHERE grant_version >= 2")" -ge "$N" ]; do sleep 0.5; done
end=$(date +%s.%N)
calls=$(( $(idp_counter refresh_token) - before ))
lost=$(psql -tA "$DATABASE_URL" -c "SELECT COUNT(*) FROM partners WHERE status <> 'active'")
r1=$(grep -c "refresh token redeemed" "$work/replica-1.log" || true)
r2=$(grep -c "refresh token redeemed" "$work/replica-2.log" || true)
python3 -c "print(f'replicas: {$N} tenants in {$end - $start:.1f} s; refresh calls {$calls} (target {$N}); lost grants {$lost}; replica 1 {$r1}, replica 2 {$r2}')"
