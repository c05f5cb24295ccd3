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
PG_ADMIN=${SAMVAULT_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}

if [ -n "${SAMVAULT_BIN:-}" ]; then
  BIN=$SAMVAULT_BIN   # a binary built elsewhere, e.g. to compare two versions
else
  echo "== building the release binary"
  cargo build --release --quiet
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/samvault
fi
work=$(mktemp -d)
pids=()
pgdb="samvault_bench_$$"
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_idp() {
  IDP_PORT=$(free_port)
  "$BIN" dev-idp --listen "127.0.0.1:$IDP_PORT" --tenants "$N" --latency-ms "$LATENCY_MS" 2>"$work/idp.log" &
  pids+=($!)
  IDP="http://127.0.0.1:$IDP_PORT"
  until curl -sf "$IDP/common/v2.0/.well-known/openid-configuration" >/dev/null; do sleep 0.2; done
}

# Mints one consented (unsigned) grant per generated tenant and writes samvault's import file.
mint() {
  python3 - "$IDP" "$N" >"$work/import.jsonl" <<'PY'
import json, sys, urllib.request
idp, n = sys.argv[1], int(sys.argv[2])
users = [f"admin@tenant-{k}.example" for k in range(1, n + 1)]
req = urllib.request.Request(f"{idp}/_sim/tokens", method="POST",
    data=json.dumps({"users": users, "sign": False}).encode(), headers={"content-type": "application/json"})
grants = json.load(urllib.request.urlopen(req, timeout=600))
for k, g in enumerate(grants, start=1):
    print(json.dumps({"tenant_id": f"00000000-0000-4000-8000-{k:012d}", "refresh_token": g["refresh_token"],
                      "upn": users[k - 1], "mfa": True}))
PY
}

refresh_calls() { curl -sf "$IDP/_sim/counters" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_calls"].get("refresh_token",0))'; }

common_env() {
  export SAMVAULT_AUTHORITY=$IDP SAMVAULT_CLIENT_ID=5a7e3c1d-0000-4000-8000-00000000c0de
  export SAMVAULT_CLIENT_SECRET=samvault-demo-secret SAMVAULT_KEY_PROVIDER=local:$work/bench.key
  export SAMVAULT_ROTATION_CONCURRENCY=$CONCURRENCY RUST_LOG=warn
}

echo "== 1. $N tenants, ${LATENCY_MS} ms per token call, concurrency $CONCURRENCY, SQLite, samvault rotate --all"
start_idp
mint
common_env
export DATABASE_URL="sqlite://$work/bench.db?mode=rwc"
"$BIN" partners import --file "$work/import.jsonl"
before=$(refresh_calls)
start=$(date +%s.%N)
"$BIN" rotate --all | tee "$work/rotate.out"
end=$(date +%s.%N)
calls=$(( $(refresh_calls) - before ))
python3 - "$start" "$end" "$N" "$LATENCY_MS" "$CONCURRENCY" "$calls" <<'PY'
import sys
start, end, n, lat, conc, calls = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
bound = n * lat / 1000 / conc
elapsed = end - start
print(f"rotation: {n} tenants in {elapsed:.1f} s; bound {bound:.1f} s; ratio {elapsed / bound:.2f} (target <= 1.30); refresh calls {calls} (target {n})")
PY
kill "${pids[@]}" 2>/dev/null || true; pids=()

echo "== 2. two serve replicas on one PostgreSQL database, $N tenants, concurrency $CONCURRENCY each"
start_idp
mint
common_env
psql -q "$PG_ADMIN" -c "CREATE DATABASE $pgdb" >/dev/null
export DATABASE_URL="${PG_ADMIN%/*}/$pgdb"
"$BIN" partners import --file "$work/import.jsonl"
before=$(refresh_calls)
start=$(date +%s.%N)
for r in 1 2; do
  port=$(free_port)
  SAMVAULT_LISTEN=127.0.0.1:$port SAMVAULT_PUBLIC_URL=http://127.0.0.1:$port SAMVAULT_ROTATE_AFTER=7d \
    RUST_LOG=warn,samvault::broker=info "$BIN" serve 2>"$work/replica-$r.log" &
  pids+=($!)
done
until [ "$(psql -tA "$DATABASE_URL" -c "SELECT COUNT(*) FROM partners WHERE grant_version >= 2")" -ge "$N" ]; do sleep 0.5; done
end=$(date +%s.%N)
calls=$(( $(refresh_calls) - before ))
lost=$(psql -tA "$DATABASE_URL" -c "SELECT COUNT(*) FROM partners WHERE status <> 'active'")
r1=$(grep -c "refresh token redeemed" "$work/replica-1.log" || true)
r2=$(grep -c "refresh token redeemed" "$work/replica-2.log" || true)
python3 -c "print(f'replicas: {$N} tenants in {$end - $start:.1f} s; refresh calls {$calls} (target {$N}); lost grants {$lost}; replica 1 {$r1}, replica 2 {$r2}')"
