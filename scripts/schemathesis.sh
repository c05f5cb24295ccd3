#!/usr/bin/env bash
# Property-based API testing of the integrations API with schemathesis, driven by the
# OpenAPI document samvault serves at /api/openapi.json.
#
#   scripts/schemathesis.sh
#
# Installs schemathesis (4.x, from PyPI) into target/schemathesis-venv once, builds the
# debug binary, starts `samvault dev-idp` and `samvault serve` on free ports with SQLite in
# a temporary directory, consents jane@contoso.example, creates an API client and runs
# schemathesis with that client's HTTP Basic credentials. Exits non-zero on any finding
# (a 5xx, a status, content type, header or body the document does not describe, a
# schema-invalid request accepted, an operation that ignores authentication).
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 50 per operation), SCHEMATHESIS_MAX_TIME
# (default 120 s, a hard bound on the schemathesis run), SCHEMATHESIS_SEED (random).
# Reports (JUnit XML, NDJSON events) go to target/schemathesis-report.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-50}
max_time=${SCHEMATHESIS_MAX_TIME:-120}
venv="$root/target/schemathesis-venv"
report="$root/target/schemathesis-report"
started_at=$(date +%s)

log() { printf 'schemathesis.sh: %s\n' "$*"; }

# --- schemathesis -----------------------------------------------------------------------
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
    log "installing schemathesis into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4.1,<5'
fi
log "$("$venv/bin/schemathesis" --version)"

# --- samvault ---------------------------------------------------------------------------
cargo build --quiet --bin samvault
bin="$root/target/debug/samvault"

work=$(mktemp -d)
pids=()  # samvault and the dev IdP
runs=() # schemathesis (through timeout) and the tail that shows its output
cleanup() {
    for pid in "${runs[@]}" "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${runs[@]}" "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {
    for _ in $(seq 1 200); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.05
    done
    log "$1 never became ready"
    return 1
}

idp_port=$(free_port)
sv_port=$(free_port)
idp="http://127.0.0.1:$idp_port"
sv="http://127.0.0.1:$sv_port"

export DATABASE_URL="sqlite://$work/samvault.db?mode=rwc"
export SAMVAULT_AUTHORITY="$idp"
export SAMVAULT_CLIENT_ID=5a7e3c1d-0000-4000-8000-00000000c0de
export SAMVAULT_CLIENT_SECRET=samvault-demo-secret
export SAMVAULT_KEY_PROVIDER="local:$work/samvault.key"
export SAMVAULT_LISTEN="127.0.0.1:$sv_port"
export SAMVAULT_PUBLIC_URL="$sv"
export RUST_LOG="info,sqlx=warn"

"$bin" dev-idp --listen "127.0.0.1:$idp_port" >/dev/null 2>"$work/idp.log" &
pids+=($!)
wait_for "$idp/common/v2.0/.well-known/openid-configuration"
"$bin" serve >/dev/null 2>"$work/samvault.log" &
pids+=($!)
wait_for "$sv/healthz"

log "consent: $("$root/scripts/consent-demo.sh" jane@contoso.example "$sv")"
client=$("$bin" client create --name schemathesis --json \
    --resource https://api.partnercenter.microsoft.com --rate-limit 100000)
client_id=$(printf '%s' "$client" | python3 -c 'import json, sys; print(json.load(sys.stdin)["client_id"])')
client_secret=$(printf '%s' "$client" | python3 -c 'import json, sys; print(json.load(sys.stdin)["client_secret"])')

# --- the run ----------------------------------------------------------------------------
rm -rf "$report"
mkdir -p "$report"
seed_args=()
if [ -n "${SCHEMATHESIS_SEED:-}" ]; then
    seed_args=(--seed "$SCHEMATHESIS_SEED")
fi
log "running against $sv/api/openapi.json (max $max_examples examples per operation, ${max_time}s)"
# schemathesis keeps a cache of past crashes (replayed first) in .schemathesis/ of its
# working directory: keep it under target/.
state="$root/target/schemathesis-state"
mkdir -p "$state"
cd "$state"
# The run is bounded twice: by examples per operation and, as a backstop, by wall time.
# It runs in the background so that a signal to this script ends it at once (cleanup).
timeout --signal=INT --kill-after=10 "$max_time" \
    "$venv/bin/schemathesis" --no-color run "$sv/api/openapi.json" \
    --url "$sv" \
    --auth "$client_id:$client_secret" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,ignored_auth \
    --phases examples,coverage,fuzzing \
    --max-examples "$max_examples" \
    --request-timeout 15 \
    --workers 2 \
    --generation-database none \
    --suppress-health-check too_slow \
    --report junit,ndjson --report-dir "$report" \
    --report-junit-path "$report/junit.xml" --report-ndjson-path "$report/events.ndjson" \
    "${seed_args[@]}" >"$report/output.txt" 2>&1 &
run=$!
runs+=("$run")
tail -n +1 -f --pid="$run" "$report/output.txt" 2>/dev/null &
runs+=($!)
status=0
wait "$run" || status=$?
wait "${runs[1]}" 2>/dev/null || true
runs=()
cd "$root"

if [ "$status" -ne 0 ]; then
    problems=$(sed 's/\x1b\[[0-9;]*m//g' "$work/samvault.log" | grep -E ' (WARN|ERROR) ' |
        grep -v " samvault::app: " | tail -n 20 || true)
    if [ -n "$problems" ]; then
        log "warnings and errors in the samvault log:"
        printf '%s\n' "$problems"
    fi
fi

elapsed=$(($(date +%s) - started_at))
summary=$(python3 - "$report/junit.xml" "$report/output.txt" <<'EOF'
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("no report")
    sys.exit(0)
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
cases = [c for s in suites for c in s.iter("testcase")]
bad = [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
generated = ""
for line in open(sys.argv[2], encoding="utf-8", errors="replace"):
    if " generated" in line:
        generated = ", test cases: " + line.strip()
print(f"{len(cases)} operations tested, {len(bad)} with findings" + (f" ({', '.join(bad)})" if bad else "") + generated)
EOF
)
if [ "$status" -eq 0 ]; then
    echo "schemathesis summary: OK, $summary, ${elapsed}s in all"
elif [ "$status" -eq 124 ] || [ "$status" -eq 130 ]; then
    echo "schemathesis summary: TIMED OUT after ${max_time}s, $summary, ${elapsed}s in all"
else
    echo "schemathesis summary: FINDINGS (exit $status), $summary, ${elapsed}s in all; reports in $report"
fi
exit "$status"
