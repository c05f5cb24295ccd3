#!/usr/bin/env bash
# Ops dashboard page benchmark (issue 5, partners). Prints p50/p95 server-side times per page.
#
#  - PARTNERS partners (default 100,000) seeded like bench/token_api.sh: dev IdP grants,
#    `samvault partners import`; then 2 % made at_risk and 0.5 % reconsent_required, and the
#    last refreshes spread over 80 days, so filters and sort orders have something to do;
#  - an admin ops user from `samvault ops-user create --json`, signed in by scripts/samload.py
#    (TOTP code per RFC 6238: HMAC-SHA1, 30 s, 6 digits), password changed;
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

. scripts/lib.sh
sv_bin
start_idp --tenants "$PARTNERS"
samvault_env "sqlite://$work/bench.db?mode=rwc"
# Imported grants are due at once; this run measures the pages, not 100,000 rotations.
export SAMVAULT_SCHEDULER=false

echo "== seeding $PARTNERS partners (dev IdP grants, samvault partners import)"
import_grants "$PARTNERS"
python3 - "$work/bench.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("UPDATE partners SET last_refresh_at = last_refresh_at - (rowid * 7919) % (80 * 86400)")
db.execute("UPDATE partners SET status = 'at_risk' WHERE rowid % 50 = 0")
db.execute("UPDATE partners SET status = 'reconsent_required', status_code = '700082' WHERE rowid % 200 = 1")
db.commit()
PY

"$BIN" ops-user create --username bench --role admin --json >"$work/ops-user.json"
start_serve serve

echo "== signing in (password + TOTP), changing the password"
cookie=$(python3 scripts/samload.py signin --sv "$SV" --creds "$work/ops-user.json")
second_page=$(curl -sf -H "cookie: $cookie" "$SV/ops/partners" | python3 -c '
import html, re, sys
print(html.unescape(re.search(r"href=\"([^\"]+)\" rel=\"next\"", sys.stdin.read()).group(1)))')
TENANT=00000000-0000-4000-8000-$(printf '%012d' $((PARTNERS / 2)))

measure() { # label, path
  local url=$SV$2 urls=()
  # curl's -o applies to one URL: one per URL, all over one keep-alive connection.
  for _ in $(seq "$REQUESTS"); do urls+=(-o /dev/null "$url"); done
  curl -s -H "cookie: $cookie" -w '%{http_code} %{time_pretransfer} %{time_starttransfer}\n' "${urls[@]}" |
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
