#!/usr/bin/env bash
# Walks the onboarding flow with plain HTTP (curl), as a partner admin's browser would:
# samvault's onboarding page -> the dev IdP's sign-in form -> samvault's callback.
# Usage: scripts/consent-demo.sh [UPN] [SAMVAULT_URL]   (defaults: jane@contoso.example, demo URL)
set -euo pipefail
upn=${1:-jane@contoso.example}
samvault=${2:-http://127.0.0.1:8080}
jar=$(mktemp)
trap 'rm -f "$jar"' EXIT

page=$(curl -sf -c "$jar" -b "$jar" "$samvault/onboard")
csrf=$(printf '%s' "$page" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p')
authorize=$(curl -sf -c "$jar" -b "$jar" -o /dev/null -w '%{redirect_url}' --data-urlencode "csrf=$csrf" "$samvault/onboard/start")
# The dev IdP's form posts the original query back with the user's answers.
callback=$(curl -sf -o /dev/null -w '%{redirect_url}' \
  --data "${authorize#*\?}" --data-urlencode "upn=$upn" --data "mfa=on&consent=accept" "${authorize%%\?*}")
curl -s -c "$jar" -b "$jar" "$callback" | sed -n 's:.*<h1[^>]*>\(.*\)</h1>.*:\1:p'
