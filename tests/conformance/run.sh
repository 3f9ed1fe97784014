#!/usr/bin/env bash
# Runs the official MCP conformance suite (@modelcontextprotocol/conformance, server
# scenarios, every suite) against the gateway's demo MCP server directly, then through
# the gateway (authentication off: the suite sends no credentials; loopback only).
# The gateway must pass every scenario the upstream passes, and the upstream must pass
# them all. Exits non-zero on any failure, with a summary.
#
# Needs Node >= 22 and the suite: by default from .tools (installed on first run with
#   npm install --prefix .tools node@22 @modelcontextprotocol/conformance
# ), or set CONFORMANCE_NODE / CONFORMANCE_JS. Set MCP_GATEWAY_BIN to use a built binary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TOOLS="$ROOT/.tools"
NODE="${CONFORMANCE_NODE:-$TOOLS/node_modules/node/bin/node}"
JS="${CONFORMANCE_JS:-$TOOLS/node_modules/@modelcontextprotocol/conformance/dist/index.js}"

if [[ ! -x "$NODE" || ! -f "$JS" ]]; then
  echo "conformance: installing node@22 and @modelcontextprotocol/conformance into $TOOLS"
  mkdir -p "$TOOLS"
  npm install --no-audit --no-fund --prefix "$TOOLS" node@22 @modelcontextprotocol/conformance >/dev/null
fi
if [[ ! -x "$NODE" || ! -f "$JS" ]]; then
  echo "conformance: FAILED: node ($NODE) or the suite ($JS) is missing; run: npm install --prefix .tools node@22 @modelcontextprotocol/conformance" >&2
  exit 2
fi
NODE_MAJOR="$("$NODE" -p 'process.versions.node.split(".")[0]')"
if (( NODE_MAJOR < 22 )); then
  echo "conformance: FAILED: Node >= 22 is required, $NODE is $NODE_MAJOR" >&2
  exit 2
fi
export PATH="$(dirname "$NODE"):$PATH"

if [[ -z "${MCP_GATEWAY_BIN:-}" ]]; then
  cargo build -q -p mcp-gateway
  TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  MCP_GATEWAY_BIN="$TARGET_DIR/debug/mcp-gateway"
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Waits for the `listening on http://ADDR` line a server started on port 0 prints once
# it serves (the kernel picks the port at the bind: nothing can take it in between, as it
# could a port picked here and passed on), and prints ADDR. Fails with the log when the
# process exits first or prints nothing within 60 s.
listening_addr() {
  local pid="$1" log="$2" name="$3" addr
  for _ in $(seq 1 600); do
    addr="$(grep -oE 'listening on https?://[^ /]+' "$log" 2>/dev/null | head -1 | sed -E 's#.*://##')"
    if [[ -n "$addr" ]]; then echo "$addr"; return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "conformance: FAILED: $name did not print the address it listens on; its log:" >&2
  tail -40 "$log" >&2
  return 1
}

"$MCP_GATEWAY_BIN" demo-upstream --addr 127.0.0.1:0 >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
UP_ADDR="$(listening_addr $! "$WORK/upstream.log" "the demo upstream")"
cat >"$WORK/gateway.yaml" <<EOF
server:
  addr: "127.0.0.1:0"
auth:
  enabled: false      # the suite sends no credentials; allowed on loopback only
ratelimit:
  enabled: true
  requests_per_second: 1000
  burst: 2000
sanitization:
  enabled: true
  # The suite passes test:// URIs as prompt arguments; the default allows http and https.
  allowed_protocols: [http, https, test]
audit:
  enabled: true
  storage: database
  database:
    type: sqlite
    sqlitePath: "$WORK/audit.db"
upstreams:
  - name: demo
    path: /mcp
    url: "http://$UP_ADDR/mcp"
EOF
"$MCP_GATEWAY_BIN" --config "$WORK/gateway.yaml" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
GW_ADDR="$(listening_addr $! "$WORK/gateway.log" "the gateway")"

run_suite() {
  local label="$1" url="$2"
  echo "conformance: $label: $url"
  (cd "$WORK" && "$NODE" "$JS" server --url "$url" --suite all) >"$WORK/$label.out" 2>&1 || true
  sed -n '/=== SUMMARY ===/,$p' "$WORK/$label.out" | grep -E '^[✓✗] ' \
    | sed -E 's/^([✓✗]) ([^:]+): ([0-9]+) passed, ([0-9]+) failed.*/\2 \3 \4/' >"$WORK/$label.summary"
  if [[ ! -s "$WORK/$label.summary" ]]; then
    echo "conformance: FAILED: no summary from the suite for $label; its output:" >&2
    tail -40 "$WORK/$label.out" >&2
    echo "--- the end of the $label's log" >&2
    tail -20 "$WORK/$label.log" >&2 || true
    return 1
  fi
}

run_suite upstream "http://$UP_ADDR/mcp"
run_suite gateway "http://$GW_ADDR/mcp"

status=0
printf '\n%-36s %-18s %-18s\n' "scenario" "upstream" "gateway"
while read -r name passed failed; do
  g="$(awk -v n="$name" '$1==n {print $2" "$3}' "$WORK/gateway.summary")"
  gp="${g%% *}"; gf="${g##* }"
  up_res="ok ($passed)"; gw_res="ok ($gp)"
  if [[ "$failed" != "0" ]]; then up_res="FAIL ($failed failed)"; status=1; fi
  if [[ -z "$g" ]]; then gw_res="MISSING"; status=1
  elif [[ "$gf" != "0" ]]; then gw_res="FAIL ($gf failed)"; status=1; fi
  printf '%-36s %-18s %-18s\n' "$name" "$up_res" "$gw_res"
done <"$WORK/upstream.summary"
total="$(wc -l <"$WORK/upstream.summary")"
echo
if [[ "$status" == 0 ]]; then
  echo "conformance: OK: all $total scenarios pass against the upstream and through the gateway"
else
  echo "conformance: FAILED (details below)"
  for label in upstream gateway; do
    if grep -q ' [1-9][0-9]*$' "$WORK/$label.summary"; then
      echo "--- $label: failing checks"
      grep -E 'FAILURE|✗' "$WORK/$label.out" | head -40 || true
    fi
  done
  for label in upstream gateway; do
    echo "--- the end of the $label's log"
    tail -20 "$WORK/$label.log" || true
  done
fi
exit "$status"
