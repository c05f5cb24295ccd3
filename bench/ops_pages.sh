#!/usr/bin/env bash
# Ops dashboard page benchmark (issue 5, partners). Prints p50/p95 server-side times per page.
#
#  - PARTNERS partners (default 100,000) seeded like bench/token_api.sh: dev IdP grants,
#    `samvault partners import`; then 2 % made at_risk and 0.5 % reconsent_required, and the
#    last refreshes spread over 80 days, so filters and sort orders have something to do;
#  - an admin ops user from `samvault ops-user create --json`, signed in with curl (TOTP code
#    computed by python3: RFC 6238, HMAC-SHA1, 30 s, 6 digits), password changed;
#  - REQUESTS requests (default 200) per page over one keep-alive connection: the partner list
#    with a search term matching 11 of 100,000 partners (a scan of the whole name index), the
#    list filtered by status, the list's second page (a cursor), a partner's page, /ops.
#
# "Server-side" = curl's time_starttransfer - time_pretransfer: from the request sent to the
# first byte of the answer, without connection set-up or the client's own work.
# Targets: partner list with a search term p95 < 100 ms; overview p95 < 200 ms.
#
# Usage: bench/ops_pages.sh   (env: PARTNERS=100000 REQUESTS=200 SAMVAULT_BIN=path)
set -euo pipefail
cd "$(dirname "$0")/.."
PARTNERS=${PARTNERS:-100000}
REQUESTS=${REQUESTS:-200}

if [ -n "${SAMVAULT_BIN:-}" ]; then
  BIN=$SAMVAULT_BIN
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
# Imported grants are due at once; this run measures the pages, not 100,000 rotations.
export SAMVAULT_SCHEDULER=false RUST_LOG=warn

echo "== seeding $PARTNERS partners (dev IdP grants, samvault partners import)"
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
python3 - "$work/bench.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("UPDATE partners SET last_refresh_at = last_refresh_at - (rowid * 7919) % (80 * 86400)")
db.execute("UPDATE partners SET status = 'at_risk' WHERE rowid % 50 = 0")
db.execute("UPDATE partners SET status = 'reconsent_required', status_code = '700082' WHERE rowid % 200 = 1")
db.commit()
PY

creds=$("$BIN" ops-user create --username bench --role admin --json)
"$BIN" serve 2>"$work/serve.log" &
pids+=($!)
until curl -sf "$SV/healthz" >/dev/null; do sleep 0.2; done

echo "== signing in (password + TOTP), changing the password"
jar=$work/cookies
field() { python3 -c 'import re,sys; print(re.search(r"name=\"csrf\" value=\"([^\"]+)\"", sys.stdin.read()).group(1))'; }
csrf=$(curl -sf -c "$jar" -b "$jar" "$SV/ops/signin" | field)
read -r password code < <(printf '%s' "$creds" | python3 -c '
import base64, hashlib, hmac, json, struct, sys, time
c = json.load(sys.stdin)
secret = c["totp_secret"]
key = base64.b32decode(secret + "=" * (-len(secret) % 8))
mac = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
offset = mac[-1] & 15
code = (struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF) % 10**6
print(c["password"], f"{code:06d}")')
status=$(curl -s -o /dev/null -w '%{http_code}' -c "$jar" -b "$jar" --data-urlencode "csrf=$csrf" \
  --data-urlencode username=bench --data-urlencode "password=$password" --data-urlencode "code=$code" "$SV/ops/signin")
[ "$status" = 303 ] || { echo "sign-in answered $status"; exit 1; }
csrf=$(curl -sf -c "$jar" -b "$jar" "$SV/ops/password" | field)
new_password="timing run passphrase $(date +%s%N)"
status=$(curl -s -o /dev/null -w '%{http_code}' -c "$jar" -b "$jar" --data-urlencode "csrf=$csrf" \
  --data-urlencode "current=$password" --data-urlencode "new=$new_password" --data-urlencode "confirm=$new_password" "$SV/ops/password")
[ "$status" = 303 ] || { echo "password change answered $status"; exit 1; }

second_page=$(curl -sf -b "$jar" "$SV/ops/partners" | python3 -c '
import html, re, sys
print(html.unescape(re.search(r"href=\"([^\"]+)\" rel=\"next\"", sys.stdin.read()).group(1)))')
TENANT=00000000-0000-4000-8000-$(printf '%012d' $((PARTNERS / 2)))

measure() { # label, path
  local url=$SV$2 urls=()
  # curl's -o applies to one URL: one per URL, all over one keep-alive connection.
  for _ in $(seq "$REQUESTS"); do urls+=(-o /dev/null "$url"); done
  curl -s -b "$jar" -w '%{http_code} %{time_pretransfer} %{time_starttransfer}\n' "${urls[@]}" |
    python3 -c '
import statistics, sys
label, codes, ms = sys.argv[1], [], []
for line in sys.stdin:
    code, sent, first = line.split()
    codes.append(code); ms.append((float(first) - float(sent)) * 1000)
ms.sort()
bad = sum(c != "200" for c in codes)
p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]
print(f"{label:<32} n={len(ms):<4} p50 {p(0.50):7.1f} ms   p95 {p(0.95):7.1f} ms   max {ms[-1]:7.1f} ms" + (f"   NON-200: {bad}" if bad else ""))
' "$1"
}

echo "== $REQUESTS requests per page, $PARTNERS partners (server-side time)"
measure "list, search (q=tenant-4242)" "/ops/partners?q=tenant-4242"
measure "list, search (no match)" "/ops/partners?q=no-such-partner"
measure "list, status=at_risk" "/ops/partners?status=at_risk"
measure "list, sort=expiry" "/ops/partners?sort=expiry"
measure "list, next page (cursor)" "$second_page"
measure "partner page" "/ops/partners/$TENANT"
measure "overview (/ops)" "/ops"
echo "targets: list with a search term p95 < 100 ms; overview p95 < 200 ms"
