#!/usr/bin/env bash
# Scrapes `/metrics` after a fixed scenario and prints it sorted, with the values that vary
# from run to run normalised, so two builds can be compared with `diff` (an exposition
# change must keep every name, label and value).
#
# Scenario (PostgreSQL, dev IdP, a webhook receiver that answers 204):
#  - two imported grants; the dev IdP revokes the second tenant's consent, so `serve`'s
#    scheduler rotates one grant successfully and classifies the other reconsent_required
#    (one status_changed webhook, delivered);
#  - a consent through the onboarding flow (scripts/consent-demo.sh);
#  - token requests: the consented partner twice (redeemed, then from the cache), the rotated
#    partner (cached by its rotation), the dead grant (refused: reconsent_required) and an
#    unknown partner (refused: partner_not_found).
# Normalised: histogram sums and the per-bucket counts below +Inf (latencies), and
# samvault_min_days_to_expiry (rounded to a whole day).
#
# Usage: SAMVAULT_BIN=target/debug/samvault scripts/metrics-scrape.sh > scrape.txt
#   (without SAMVAULT_BIN, builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
sv_bin >&2
start_idp --tenants 2
fresh_pg_db "samvault_metrics_scrape_$$"
samvault_env "$PG_URL"

# The webhook receiver: accepts every delivery.
hook_port=$(free_port)
python3 - "$hook_port" <<'PY' 2>>"$work/hook.log" &
import http.server, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
PY
pids+=("$!")
export SAMVAULT_WEBHOOK_URL=http://127.0.0.1:$hook_port/hook
export SAMVAULT_WEBHOOK_SECRET=whsec-metrics-scrape-0123456789

T1=00000000-0000-4000-8000-000000000001
T2=00000000-0000-4000-8000-000000000002
T9=00000000-0000-4000-8000-000000000009
import_grants 2
curl -sf -X POST "$IDP/_sim/tenants/$T2/revoke-consent" >/dev/null
start_serve serve

# metric SERIES: its value in the current scrape (empty when absent).
metric() { curl -sf "$SV/metrics" | awk -v s="$1" '$1 == s {print $2}'; }
# wait_metric SERIES VALUE: until SERIES reads VALUE (the scheduler and webhook worker run in
# the background).
wait_metric() {
  local deadline=$((SECONDS + 60))
  until [ "$(metric "$1")" = "$2" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "timed out waiting for $1 = $2" >&2; exit 1; }
    sleep 0.2
  done
}
wait_metric 'samvault_rotations_total{outcome="success"}' 1
wait_metric 'samvault_rotations_total{outcome="reconsent_required"}' 1

scripts/consent-demo.sh jane@contoso.example "$SV" >&2
contoso=$("$BIN" partners list --json | python3 -c '
import json, sys
print(next(p["tenant_id"] for p in json.load(sys.stdin) if p["tenant_id"] not in sys.argv[1:]))' "$T1" "$T2")

create_client scrape >/dev/null
body='{"resource": "https://api.partnercenter.microsoft.com", "purpose": "metrics-scrape"}'
for t in $contoso $contoso $T1 $T2 $T9; do
  curl -s -o /dev/null -w "token $t: %{http_code}\n" -u "$CID:$CSECRET" \
    -H 'content-type: application/json' -d "$body" "$SV/api/v1/partners/$t/token" >&2
done
wait_metric 'samvault_webhook_deliveries_total{outcome="delivered"}' 1
wait_metric samvault_webhook_outbox_pending 0

curl -sf "$SV/metrics" | awk '
  /^samvault_idp_request_duration_seconds_sum/ { $2 = "<sum>" }
  /^samvault_idp_request_duration_seconds_bucket/ && !/le="\+Inf"/ { $2 = "<n>" }
  /^samvault_min_days_to_expiry / { $2 = sprintf("%.0f", $2) }
  { print }' | LC_ALL=C sort
