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
. scripts/lib.sh
sv_bin
start_idp --tenants "$PARTNERS"
samvault_env "sqlite://$work/bench.db?mode=rwc"
# Imported grants are due for rotation at once; this run measures the token path alone.
export SAMVAULT_SCHEDULER=false

echo "== seeding $PARTNERS partners (dev IdP grants, samvault partners import) and 10 clients"
import_grants "$PARTNERS"
for i in $(seq 1 9); do "$BIN" client create --name "client-$i" --resource "$PARTNER_CENTER" >/dev/null; done
# The highest limit a client may have (1,000,000 a minute, bursts as large): no 429 in 10 s runs.
create_client bench --rate-limit 1000000

start_serve serve
SERVE=$SERVE_PID
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
before=$(idp_counter refresh_token)
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
after=$(idp_counter refresh_token)
echo "burst: IdP refresh calls $((after - before)) (target 1)"
echo "rss: peak $(awk '/VmHWM/ {printf "%.0f MB", $2/1024}' /proc/$SERVE/status) with $PARTNERS partners and 10 clients (target < 150 MB)"
