#!/usr/bin/env bash
# Token API benchmark (issue: token broker). Prints its figures; takes a few minutes.
#
#  - cached token requests/s and p50/p99 latency at 64 and 256 connections, against GET /healthz
#    of the same process in the same run (target: token >= 50 % of healthz; p99 < 5 ms at 64);
#  - a cold burst of 500 concurrent requests for one partner (target: exactly 1 IdP refresh);
#  - peak RSS of `samvault serve` with PARTNERS partners and 10 clients (target < 150 MB).
#
# Usage: bench/token_api.sh   (env: PARTNERS=100000 DURATION=10s)
set -euo pipefail
cd "$(dirname "$0")/.."
PARTNERS=${PARTNERS:-100000}
DURATION=${DURATION:-10s}

command -v wrk >/dev/null || { echo "== installing wrk"; apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }; }
if [ -n "${SAMVAULT_BIN:-}" ]; then
  BIN=$SAMVAULT_BIN   # a binary built elsewhere, e.g. to compare two versions
else
  echo "== building the release binary"
  cargo build --release --quiet
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/samvault
fi
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

IDP_PORT=$(free_port); SV_PORT=$(free_port)
IDP=http://127.0.0.1:$IDP_PORT; SV=http://127.0.0.1:$SV_PORT
"$BIN" dev-idp --listen "127.0.0.1:$IDP_PORT" --tenants "$PARTNERS" 2>"$work/idp.log" &
pids+=($!)
until curl -sf "$IDP/common/v2.0/.well-known/openid-configuration" >/dev/null; do sleep 0.2; done

export DATABASE_URL="sqlite://$work/bench.db?mode=rwc" SAMVAULT_AUTHORITY=$IDP
export SAMVAULT_CLIENT_ID=5a7e3c1d-0000-4000-8000-00000000c0de SAMVAULT_CLIENT_SECRET=samvault-demo-secret
export SAMVAULT_KEY_PROVIDER=local:$work/bench.key SAMVAULT_LISTEN=127.0.0.1:$SV_PORT SAMVAULT_PUBLIC_URL=$SV
# Imported grants are due for rotation at once; this run measures the token path alone.
export SAMVAULT_SCHEDULER=false RUST_LOG=warn

echo "== seeding $PARTNERS partners (dev IdP grants, samvault partners import) and 10 clients"
python3 - "$IDP" "$PARTNERS" >"$work/import.jsonl" <<'PY'
import json, sys, urllib.request
idp, n = sys.argv[1], int(sys.argv[2])
for start in range(1, n + 1, 10000):
    users = [f"admin@tenant-{k}.example" for k in range(start, min(n, start + 9999) + 1)]
    req = urllib.request.Request(f"{idp}/_sim/tokens", method="POST",
        data=json.dumps({"users": users, "sign": False}).encode(), headers={"content-type": "application/json"})
    for k, g in enumerate(json.load(urllib.request.urlopen(req, timeout=600)), start=start):
        print(json.dumps({"tenant_id": f"00000000-0000-4000-8000-{k:012d}", "refresh_token": g["refresh_token"],
                          "upn": f"admin@tenant-{k}.example", "mfa": True}))
PY
"$BIN" partners import --file "$work/import.jsonl" >/dev/null
rm -f "$work/import.jsonl"
for i in $(seq 1 9); do "$BIN" client create --name "client-$i" --resource https://api.partnercenter.microsoft.com >/dev/null; done
creds=$("$BIN" client create --name bench --resource https://api.partnercenter.microsoft.com --rate-limit 100000000 --json)
CID=$(printf '%s' "$creds" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])')
CSECRET=$(printf '%s' "$creds" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')
AUTH=$(printf '%s:%s' "$CID" "$CSECRET" | base64 -w0)

"$BIN" serve 2>"$work/serve.log" &
SERVE=$!; pids+=($SERVE)
until curl -sf "$SV/healthz" >/dev/null; do sleep 0.2; done
T1=00000000-0000-4000-8000-000000000001
T2=00000000-0000-4000-8000-000000000002
BODY='{"resource": "https://api.partnercenter.microsoft.com", "purpose": "benchmark"}'
curl -sf -u "$CID:$CSECRET" -H 'content-type: application/json' -d "$BODY" "$SV/api/v1/partners/$T1/token" >/dev/null

cat >"$work/token.lua" <<LUA
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic $AUTH"
LUA

run() { # connections, label, url, [script]
  local out
  if [ -n "${4:-}" ]; then out=$(wrk -t2 -c"$1" -d"$DURATION" --latency -s "$4" "$3"); else out=$(wrk -t2 -c"$1" -d"$DURATION" --latency "$3"); fi
  local rps p50 p99 errors
  rps=$(printf '%s\n' "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(printf '%s\n' "$out" | awk '$1=="50%" {print $2}')
  p99=$(printf '%s\n' "$out" | awk '$1=="99%" {print $2}')
  errors=$(printf '%s\n' "$out" | awk '/Non-2xx/ {print $5}')
  printf '%-8s c=%-4s %10s req/s  p50 %-8s p99 %-8s non-2xx %s\n' "$2" "$1" "$rps" "$p50" "$p99" "${errors:-0}"
  eval "RPS_${2}_$1=$rps"
}
echo "== load (wrk -t2, $DURATION each; client and server share the machine's 2 cores)"
for c in 64 256; do
  run "$c" healthz "$SV/healthz"
  run "$c" token "$SV/api/v1/partners/$T1/token" "$work/token.lua"
done
python3 -c "print(f'cached token / healthz: c=64 {$RPS_token_64 / $RPS_healthz_64:.0%}, c=256 {$RPS_token_256 / $RPS_healthz_256:.0%} (target >= 50%)')"

echo "== cold burst: 500 concurrent requests for one partner"
before=$(curl -sf "$IDP/_sim/counters" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_calls"].get("refresh_token",0))')
python3 - "$SV/api/v1/partners/$T2/token" "$AUTH" "$BODY" <<'PY'
import sys, threading, urllib.request
url, auth, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()
statuses, barrier = [], threading.Barrier(500)
def call():
    req = urllib.request.Request(url, data=body, method="POST", headers={"authorization": f"Basic {auth}", "content-type": "application/json"})
    barrier.wait()
    try:
        statuses.append(urllib.request.urlopen(req, timeout=60).status)
    except urllib.error.HTTPError as e:
        statuses.append(e.code)
threads = [threading.Thread(target=call) for _ in range(500)]
[t.start() for t in threads]; [t.join() for t in threads]
print(f"burst: {statuses.count(200)} of {len(statuses)} answered 200")
PY
after=$(curl -sf "$IDP/_sim/counters" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_calls"].get("refresh_token",0))')
echo "burst: IdP refresh calls $((after - before)) (target 1)"
echo "rss: peak $(awk '/VmHWM/ {printf "%.0f MB", $2/1024}' /proc/$SERVE/status) with $PARTNERS partners and 10 clients (target < 150 MB)"
