# Shared by the long suites (scripts/crash-loop.sh, scripts/soak.sh) and the benchmarks
# (bench/*.sh): the binary, a work directory cleaned up on exit, free ports, the dev IdP,
# fresh PostgreSQL databases, `samvault serve` processes, seeded grants and API clients.
# Source it from the repository root: `. scripts/lib.sh`.

PG_ADMIN=${SAMVAULT_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
DEMO_CLIENT_ID=5a7e3c1d-0000-4000-8000-00000000c0de
DEMO_CLIENT_SECRET=samvault-demo-secret
PARTNER_CENTER=https://api.partnercenter.microsoft.com

# BIN: $SAMVAULT_BIN (a binary built elsewhere, e.g. target/debug/samvault or another
# version to compare), else the release binary, built now.
sv_bin() {
  if [ -n "${SAMVAULT_BIN:-}" ]; then
    BIN=$SAMVAULT_BIN
  else
    echo "== building the release binary"
    cargo build --release --quiet
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/samvault
  fi
  echo "== binary: $BIN"
}

# $work: a temporary directory; on exit every process in $pids is killed, every database in
# $pg_dbs dropped and $work removed.
work=$(mktemp -d)
pids=()
pg_dbs=()
sv_cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for db in "${pg_dbs[@]}"; do
    psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap sv_cleanup EXIT

# stop_pid PID [SIGNAL=TERM]: signals one of our processes (signal 0: none, just wait for it
# to end), waits for it and forgets it, so the exit trap never signals a recycled PID.
stop_pid() {
  local pid=$1 keep=() p
  [ "${2:-TERM}" = 0 ] || kill -s "${2:-TERM}" "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${pids[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_url URL [SECONDS=60]: until URL answers 2xx; fails after SECONDS.
wait_url() {
  local deadline=$((SECONDS + ${2:-60}))
  until curl -sf -o /dev/null "$1"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "no answer from $1" >&2; return 1; }
    sleep 0.1
  done
}

# start_idp [dev-idp args...]: starts the dev IdP on a free port; sets IDP (its URL), IDP_PID.
start_idp() {
  local port
  port=$(free_port)
  "$BIN" dev-idp --listen "127.0.0.1:$port" "$@" 2>>"$work/idp.log" &
  IDP_PID=$!
  pids+=("$IDP_PID")
  IDP=http://127.0.0.1:$port
  wait_url "$IDP/common/v2.0/.well-known/openid-configuration"
}

# fresh_pg_db NAME: creates a PostgreSQL database dropped on exit; sets PG_URL to it.
fresh_pg_db() {
  PGOPTIONS='-c client_min_messages=warning' psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)"
  psql -q "$PG_ADMIN" -c "CREATE DATABASE $1"
  pg_dbs+=("$1")
  PG_URL=${PG_ADMIN%/*}/$1
}

# samvault_env DATABASE_URL: what every samvault process of a run shares (the dev IdP as the
# authority, the demo app's credentials, one key file).
samvault_env() {
  export DATABASE_URL=$1 SAMVAULT_AUTHORITY=$IDP SAMVAULT_CLIENT_ID=$DEMO_CLIENT_ID
  export SAMVAULT_CLIENT_SECRET=$DEMO_CLIENT_SECRET SAMVAULT_KEY_PROVIDER=local:$work/samvault.key
  export RUST_LOG=${RUST_LOG:-warn}
  # The load scripts consent many partners from one address: far above the onboarding limit.
  export SAMVAULT_ONBOARD_RATE=${SAMVAULT_ONBOARD_RATE:-100000}
}

# start_serve NAME [PORT]: `samvault serve` on PORT (default: a free one), logging to
# $work/NAME.log; waits for /healthz. Sets SERVE_PID and SV (its URL).
start_serve() {
  local port=${2:-$(free_port)}
  SV=http://127.0.0.1:$port
  SAMVAULT_LISTEN=127.0.0.1:$port SAMVAULT_PUBLIC_URL=$SV "$BIN" serve 2>>"$work/$1.log" &
  SERVE_PID=$!
  pids+=("$SERVE_PID")
  wait_url "$SV/healthz"
}

# mint_grants N FILE: one consented grant per generated tenant 1..N, minted by the dev IdP
# (no signing), written as a `samvault partners import` file.
mint_grants() {
  python3 - "$IDP" "$1" >"$2" <<'PY'
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
}

# import_grants N: mints N grants and imports them into $DATABASE_URL (the file, which holds
# refresh tokens in clear, is deleted at once).
import_grants() {
  mint_grants "$1" "$work/import.jsonl"
  "$BIN" partners import --file "$work/import.jsonl" >/dev/null
  rm -f "$work/import.jsonl"
}

# create_client NAME [client create args...]: an API client for Partner Center; sets CID,
# CSECRET and AUTH (the Basic credentials, base64).
create_client() {
  local creds name=$1
  shift
  creds=$("$BIN" client create --name "$name" --resource "$PARTNER_CENTER" "$@" --json)
  CID=$(printf '%s' "$creds" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])')
  CSECRET=$(printf '%s' "$creds" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')
  AUTH=$(printf '%s:%s' "$CID" "$CSECRET" | base64 -w0)
}

# idp_counter KIND: the dev IdP's count of token calls of that grant type.
idp_counter() {
  curl -sf "$IDP/_sim/counters" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_calls"].get(sys.argv[1],0))' "$1"
}
