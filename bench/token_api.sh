#!/usr/bin/env bash
# Token API benchmark (issue 14, the hot path). Prints its figures; takes a few minutes.
#
#  - the cached token against GET /healthz of the same `samvault serve`, at the DEFAULT log
#    level, 64 connections: ROUNDS rounds, each a healthz run, a partner token run and a
#    customer-tenant token run (a customer of partner 1), so all see the same machine load.
#    Per round: token req/s ÷ healthz req/s and token p99 ÷ healthz p99, for both tokens.
#    Targets, on the median of the rounds, for the partner token: req/s ratio >= 0.65 and p99
#    ratio <= 1.5 (the customer token's ratios are printed beside them);
#  - a cold burst of 500 concurrent requests for one partner (target: exactly 1 IdP refresh);
#  - peak RSS of `samvault serve` with PARTNERS partners and 10 clients (target < 150 MB).
#
# Usage: bench/token_api.sh   (env: PARTNERS=100000 DURATION=10s ROUNDS=3 CONNECTIONS=64;
#   SAMVAULT_BIN=target/release/samvault to skip the build; RUST_LOG, if set, is passed on to
#   `serve` instead of the default level)
set -euo pipefail
cd "$(dirname "$0")/.."
PARTNERS=${PARTNERS:-100000}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
SERVE_RUST_LOG=${RUST_LOG:-}

command -v wrk >/dev/null || { echo "== installing wrk"; apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }; }
. scripts/lib.sh
sv_bin
start_idp --tenants "$PARTNERS"
samvault_env "sqlite://$work/bench.db?mode=rwc"
# Imported grants are due for rotation at once; this run measures the token path alone (and
# no customer work runs in the background).
export SAMVAULT_SCHEDULER=false SAMVAULT_CUSTOMERS=false SAMVAULT_PARTNER_CENTER_URL=$IDP

echo "== seeding $PARTNERS partners (dev IdP grants, samvault partners import) and 10 clients"
import_grants "$PARTNERS"
for i in $(seq 1 9); do "$BIN" client create --name "client-$i" --resource "$PARTNER_CENTER" >/dev/null; done
# One customer of partner 1, consented, for the customer-tenant token.
T1=00000000-0000-4000-8000-000000000001
CUSTOMER=7b1e0c3a-0000-4000-9000-00000000be01
curl -sf -H 'content-type: application/json' -d "{\"id\": \"$CUSTOMER\"}" "$IDP/_sim/partners/$T1/customers" >/dev/null
"$BIN" customers sync --partner "$T1" >/dev/null
"$BIN" customers consent --partner "$T1" --customer "$CUSTOMER" >/dev/null
# The highest limit a client may have is 1,000,000 a minute, bursts as large: a fresh client
# for each timed run (see `run`), so no run meets a 429, whatever its rate.
new_client() {
  create_client "bench-$1" --rate-limit 1000000 --resource https://graph.microsoft.com \
    --permission tokens:issue --permission customers:issue 2>>"$work/cli.log"
}
new_client warm-up

# The service logs at its default level unless the caller chose one (the seeding above ran at
# lib.sh's `warn`).
if [ -n "$SERVE_RUST_LOG" ]; then export RUST_LOG=$SERVE_RUST_LOG; else unset RUST_LOG; fi
echo "== serve at log level: ${RUST_LOG:-default}"
start_serve serve
SERVE=$SERVE_PID
T2=00000000-0000-4000-8000-000000000002
BODY='{"resource": "https://api.partnercenter.microsoft.com", "purpose": "benchmark"}'
CUSTOMER_BODY='{"resource": "https://graph.microsoft.com", "purpose": "benchmark"}'
CUSTOMER_URL=$SV/api/v1/partners/$T1/customers/$CUSTOMER/token
curl -sf -u "$CID:$CSECRET" -H 'content-type: application/json' -d "$BODY" "$SV/api/v1/partners/$T1/token" >/dev/null
curl -sf -u "$CID:$CSECRET" -H 'content-type: application/json' -d "$CUSTOMER_BODY" "$CUSTOMER_URL" >/dev/null

# lua FILE BODY: a wrk script posting BODY with the client's credentials.
lua() {
  cat >"$1" <<LUA
wrk.method = "POST"
wrk.body = '$2'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic $AUTH"
LUA
}

# serve_cpu_ticks: the CPU time `serve` has used (user + system), in clock ticks.
serve_cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVE/stat"; }

# run LABEL URL [BODY]: one wrk run at $CONNECTIONS (a POST of BODY, when given, by a client of
# its own); prints its line, sets RPS and P99_US. Any answer other than 2xx voids the figures.
run() {
  local out
  if [ -n "${3:-}" ]; then
    new_client "$1-$RANDOM$RANDOM"
    lua "$work/run.lua" "$3"
    # Its first request checks the secret the slow way; the run measures the cached path.
    curl -sf -u "$CID:$CSECRET" -H 'content-type: application/json' -d "$3" "$2" >/dev/null
  fi
  local cpu_before requests
  cpu_before=$(serve_cpu_ticks)
  if [ -n "${3:-}" ]; then
    out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/run.lua" "$2")
  else
    out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$2")
  fi
  requests=$(printf '%s\n' "$out" | awk '/requests in/ {print $1}')
  CPU_NS=$(( ($(serve_cpu_ticks) - cpu_before) * 1000000 / $(getconf CLK_TCK) * 1000 / requests ))
  local p50 p99 errors
  RPS=$(printf '%s\n' "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(printf '%s\n' "$out" | awk '$1=="50%" {print $2}')
  p99=$(printf '%s\n' "$out" | awk '$1=="99%" {print $2}')
  errors=$(printf '%s\n' "$out" | awk '/Non-2xx/ {print $5}')
  P99_US=$(printf '%s\n' "$p99" | awk '/us$/ {print $1+0; next} /ms$/ {print $1*1000; next} /s$/ {print $1*1000000}')
  printf '  %-8s %10s req/s  p50 %-8s p99 %-8s serve CPU %s.%03d us/request  non-2xx %s\n' \
    "$1" "$RPS" "$p50" "$p99" $((CPU_NS / 1000)) $((CPU_NS % 1000)) "${errors:-0}"
  [ -z "$errors" ] || { echo "a run answered non-2xx: its figures are not the token path's" >&2; exit 1; }
}

echo "== $ROUNDS rounds at $CONNECTIONS connections (wrk -t2, $DURATION each; client and server share the machine's cores)"
rounds=()
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  run healthz "$SV/healthz"
  healthz_rps=$RPS healthz_p99=$P99_US
  run token "$SV/api/v1/partners/$T1/token" "$BODY"
  token_rps=$RPS token_p99=$P99_US
  run customer "$CUSTOMER_URL" "$CUSTOMER_BODY"
  rounds+=("$healthz_rps $healthz_p99 $token_rps $token_p99 $RPS $P99_US")
done
printf '%s\n' "${rounds[@]}" | python3 -c '
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.stdin if line.strip()]
rps = [t / h for h, _, t, _, _, _ in rows]
p99 = [tp / hp for _, hp, _, tp, _, _ in rows]
crps = [c / h for h, _, _, _, c, _ in rows]
cp99 = [cp / hp for _, hp, _, _, _, cp in rows]
for i, (r, p, cr, cp) in enumerate(zip(rps, p99, crps, cp99), 1):
    print(f"round {i}: token/healthz req/s {r:.2f}, p99 {p:.2f}; customer/healthz req/s {cr:.2f}, p99 {cp:.2f}")
r, p = statistics.median(rps), statistics.median(p99)
verdict = "PASS" if r >= 0.65 and p <= 1.5 else "FAIL"
print(f"median of {len(rows)}: token/healthz req/s {r:.2f} (target >= 0.65), p99 {p:.2f} (target <= 1.5): {verdict}")
cr, cp = statistics.median(crps), statistics.median(cp99)
print(f"median of {len(rows)}: customer token/healthz req/s {cr:.2f}, p99 {cp:.2f} (cached customer-tenant token)")
'

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
