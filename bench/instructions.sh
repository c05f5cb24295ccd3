#!/usr/bin/env bash
# Instructions and allocations per request in `samvault serve`, under callgrind: the
# deterministic companion of bench/token_api.sh (whose req/s figures move with the machine's
# load). For /healthz, the cached partner token and the cached customer-tenant token: the
# userspace instructions one request costs and how many allocations it makes, averaged over
# REQUESTS requests after a warm-up. Takes a few minutes (valgrind runs ~50× slower).
#
# Usage: bench/instructions.sh   (env: REQUESTS=2000; SAMVAULT_BIN=target/release/samvault to
#   skip the build; ANNOTATE=1 also prints the token run's top functions, inclusive
#   and self; ANNOTATE=DIR also copies the callgrind files there)
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-2000}

command -v valgrind >/dev/null || { echo "== installing valgrind"; apt-get install -y -qq valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }; }
. scripts/lib.sh
sv_bin
start_idp --tenants 2
samvault_env "sqlite://$work/bench.db?mode=rwc"
export SAMVAULT_SCHEDULER=false SAMVAULT_CUSTOMERS=false SAMVAULT_PARTNER_CENTER_URL=$IDP

import_grants 2
T1=00000000-0000-4000-8000-000000000001
CUSTOMER=7b1e0c3a-0000-4000-9000-00000000be01
curl -sf -H 'content-type: application/json' -d "{\"id\": \"$CUSTOMER\"}" "$IDP/_sim/partners/$T1/customers" >/dev/null
"$BIN" customers sync --partner "$T1" >/dev/null
"$BIN" customers consent --partner "$T1" --customer "$CUSTOMER" >/dev/null
create_client bench --rate-limit 1000000 --resource https://graph.microsoft.com \
  --permission tokens:issue --permission customers:issue

# The default log level, as in bench/token_api.sh.
unset RUST_LOG
port=$(free_port)
SV=http://127.0.0.1:$port
SAMVAULT_LISTEN=127.0.0.1:$port SAMVAULT_PUBLIC_URL=$SV valgrind --tool=callgrind \
  --callgrind-out-file="$work/cg.%p" --instr-atstart=no "$BIN" serve 2>>"$work/serve.log" &
pids+=("$!")
wait_url "$SV/healthz" 300
BODY='{"resource": "https://api.partnercenter.microsoft.com", "purpose": "benchmark"}'
CUSTOMER_BODY='{"resource": "https://graph.microsoft.com", "purpose": "benchmark"}'
TOKEN_URL=$SV/api/v1/partners/$T1/token
CUSTOMER_URL=$SV/api/v1/partners/$T1/customers/$CUSTOMER/token

# measure LABEL URL [BODY]: REQUESTS requests over 4 keep-alive connections, counted alone.
measure() {
  local out
  callgrind_control --instr=on >/dev/null
  load "$2" "${3:-}" 50
  # The request log writes what it gathered a second later: each run counts its own writes.
  sleep 2
  callgrind_control --zero >/dev/null
  load "$2" "${3:-}" "$REQUESTS"
  sleep 2
  callgrind_control --dump="$1" >/dev/null
  callgrind_control --instr=off >/dev/null
  out=$work/$1.callgrind
  mv "$(ls -t "$work"/cg.* | head -1)" "$out"
  python3 - "$out" "$1" "$REQUESTS" <<'PY'
import re, sys
path, label, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
text = open(path).read()
total = int(re.search(r"^summary: (\d+)", text, re.M).group(1))
# Calls into Rust's allocator (callgrind compresses a function's name after its first use).
names, callee, calls = {}, "", 0
for line in text.splitlines():
    m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
    if m:
        if m.group(2):
            names[m.group(1)] = m.group(2)
        if line.startswith("cfn="):
            callee = names.get(m.group(1), "")
    elif line.startswith("calls=") and re.search(r"__rust_(alloc|alloc_zeroed|realloc)$", callee):
        calls += int(line.split("=")[1].split()[0])
print(f"  {label:9} {total / n / 1000:7.1f} k instructions per request, {calls / n:5.1f} allocations per request")
PY
}

# load URL BODY N: N requests (POST when BODY is set) with the bench client's credentials.
load() {
  python3 - "$1" "$2" "$3" "$AUTH" <<'PY'
import http.client, sys, threading, urllib.parse
url, body, n, auth = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
u = urllib.parse.urlsplit(url)
def worker(count):
    c = http.client.HTTPConnection(u.hostname, u.port)
    for _ in range(count):
        if body:
            c.request("POST", u.path, body, {"authorization": f"Basic {auth}", "content-type": "application/json"})
        else:
            c.request("GET", u.path)
        r = c.getresponse(); r.read()
        assert r.status == 200, (r.status, url)
threads = [threading.Thread(target=worker, args=(n // 4 + (i < n % 4),)) for i in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
PY
}

echo "== callgrind, $REQUESTS requests each (default log level)"
measure healthz "$SV/healthz"
measure token "$TOKEN_URL" "$BODY"
measure customer "$CUSTOMER_URL" "$CUSTOMER_BODY"
if [ -n "${ANNOTATE:-}" ]; then
  [ -d "$ANNOTATE" ] && cp "$work"/*.callgrind "$ANNOTATE"/
  callgrind_annotate --inclusive=yes "$work/token.callgrind" 2>/dev/null | sed -n '/file:function/,$p' | head -60
  callgrind_annotate "$work/token.callgrind" 2>/dev/null | sed -n '/file:function/,$p' | head -40
fi
