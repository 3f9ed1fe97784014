#!/usr/bin/env bash
# Runs testssl.sh against mcp-tls's example server (crates/mcp-tls/examples/tls-server.rs)
# on a loopback port and fails if it finds a protocol or cipher weakness.
#
# Usage: crates/mcp-tls/scripts/testssl.sh [extra testssl options]
#
# Needs `testssl` (Debian package `testssl.sh`; installed if missing when run as root) and
# openssl and jq. Takes about a minute on a quiet machine (several when loaded), so it
# is not part of `cargo test`.
#
# What is checked: protocols (-p), cipher categories (-s), forward secrecy (-f), server
# preference (-P), every cipher per protocol (-E) and the vulnerability checks (-U:
# Heartbleed, CCS, ticketbleed, ROBOT, renegotiation, CRIME, BREACH, POODLE, SWEET32,
# FREAK, DROWN, LOGJAM, BEAST, LUCKY13, RC4...). Certificate trust is not judged: the
# example serves a certificate from a CA made on the spot.
#
# The JSON report is kept in $OUT (default target/testssl/), and every finding of
# severity MEDIUM, HIGH or CRITICAL fails the run.
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/target/testssl}
mkdir -p "$OUT"

TESTSSL=$(command -v testssl || command -v testssl.sh || true)
if [ -z "$TESTSSL" ]; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q testssl.sh
    TESTSSL=$(command -v testssl || command -v testssl.sh)
  else
    echo "testssl not found: install the Debian package testssl.sh (apt-get install -y testssl.sh)" >&2
    exit 1
  fi
fi
command -v jq >/dev/null 2>&1 || { [ "$(id -u)" = "0" ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq >/dev/null; }

cargo build -q -p mcp-tls --example tls-server
BIN=$ROOT/target/debug/examples/tls-server
LOG=$OUT/server.log
"$BIN" --addr 127.0.0.1:0 >"$OUT/server.out" 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q '^listening on ' "$OUT/server.out" 2>/dev/null && break
  sleep 0.1
done
ADDR=$(sed -n 's/^listening on //p' "$OUT/server.out")
[ -n "$ADDR" ] || { echo "example server did not start:"; cat "$LOG"; exit 1; }
echo "testing https://$ADDR (server pid $PID); this takes a few minutes"

JSON=$OUT/testssl.json
rm -f "$JSON"
"$TESTSSL" --quiet --color 0 --warnings off --openssl-timeout 10 \
  -p -s -f -P -E -U --jsonfile "$JSON" "$@" "$ADDR" | tee "$OUT/testssl.txt"

echo
echo "== findings of severity MEDIUM or above =="
BAD=$(jq -r '.[] | select(.severity=="MEDIUM" or .severity=="HIGH" or .severity=="CRITICAL")
             | "\(.id)\t\(.severity)\t\(.finding)"' "$JSON")
if [ -n "$BAD" ]; then
  echo "$BAD"
  echo "FAIL: testssl found weaknesses (report: $OUT/testssl.txt)"
  exit 1
fi
echo "(none)"
echo "== protocols offered =="
jq -r '.[] | select(.id|test("^(SSLv2|SSLv3|TLS1|TLS1_1|TLS1_2|TLS1_3)$")) | "\(.id)\t\(.finding)"' "$JSON"
echo "PASS: no protocol or cipher weakness found (report: $OUT/testssl.txt)"
