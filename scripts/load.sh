#!/usr/bin/env bash
# Load test: in one run, with wrk on loopback, POSTing an MCP tools/call (2026-07-28,
# JSON response) through
#   1. the gateway with every layer on (API key auth, rate limits, sanitize, audit to
#      SQLite, security headers, Origin/Host guard, result redaction, metrics),
#   2. the same gateway with every layer off (`layers.enabled: false`),
#   3. nginx as a plain reverse proxy,
# all in front of the same demo MCP server, and, to show what the audit trail costs on its
# own, a fourth target:
#   4. the gateway with every layer on except the audit trail (`audit.enabled: false`).
# Prints throughput and p50/p99 latency, and
# the CPU time (user + system) the proxy under test and the upstream spent per request:
# on a small machine where wrk, the upstream and the proxy share the cores, throughput
# follows the sum of those, and the CPU figures say which part is whose. On a virtual
# machine it also prints, per round, the share of CPU time the host took (steal), and a
# note when a round had 3% or more: such rounds are slowed by other guests.
#
# Needs wrk and nginx (Debian: apt-get install -y wrk nginx-light). Everything runs as the
# current user on free loopback ports from a temp dir, and is stopped at the end.
# The targets are measured in turn, ROUNDS times (interleaved, so that a noisy
# moment on the machine hits every target alike); the figures are each target's median
# round by throughput.
# Environment: DURATION (default 10s per target and round), ROUNDS (3), CONNECTIONS (32),
# THREADS (2), MCP_GATEWAY_BIN (default: cargo build --release).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"

for tool in wrk nginx curl python3; do
  if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$tool" ]]; then
    echo "load: FAILED: $tool is missing (apt-get install -y wrk nginx-light curl python3)" >&2
    exit 2
  fi
done
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

if [[ -z "${MCP_GATEWAY_BIN:-}" ]]; then
  cargo build -q --release -p mcp-gateway
  TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  MCP_GATEWAY_BIN="$TARGET_DIR/release/mcp-gateway"
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  if [[ -f "$WORK/nginx/nginx.pid" ]]; then kill "$(cat "$WORK/nginx/nginx.pid")" 2>/dev/null || true; fi
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_http() {
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "load: FAILED: $1 did not come up; logs:" >&2
  tail -n 20 "$WORK"/*.log "$WORK"/nginx/*.log >&2 2>/dev/null || true
  exit 1
}

UP="$(free_port)"; ON="$(free_port)"; OFF="$(free_port)"; NG="$(free_port)"; NOAUDIT="$(free_port)"
KEY="$("$MCP_GATEWAY_BIN" keygen)"

"$MCP_GATEWAY_BIN" demo-upstream --addr "127.0.0.1:$UP" >"$WORK/upstream.log" 2>&1 &
UP_PID=$!
PIDS+=($!)

# The gateway with every layer on; $3 is its `audit:` section.
layers_on_config() {
  cat >"$1" <<EOF
server:
  addr: "127.0.0.1:$2"
auth:
  enabled: true
  mode: apikey
  apiKeys:
    - id: load
      key: "\${LOAD_KEY}"
      scopes: ["mcp:tools"]
ratelimit:
  enabled: true
  requests_per_second: 100000
  burst: 100000
sanitization:
  enabled: true
  blocked_patterns: ["DROP TABLE", "rm -rf"]
$3
upstreams:
  - name: demo
    path: /mcp
    url: "http://127.0.0.1:$UP/mcp"
EOF
}
layers_on_config "$WORK/on.yaml" "$ON" "audit:
  enabled: true
  storage: database
  database:
    type: sqlite
    sqlitePath: \"$WORK/audit.db\""
# The same without the audit trail.
layers_on_config "$WORK/noaudit.yaml" "$NOAUDIT" "audit:
  enabled: false"
cat >"$WORK/off.yaml" <<EOF
server:
  addr: "127.0.0.1:$OFF"
layers:
  enabled: false
auth:
  enabled: false
audit:
  enabled: false
upstreams:
  - name: demo
    path: /mcp
    url: "http://127.0.0.1:$UP/mcp"
EOF
LOAD_KEY="$KEY" MCP_GATEWAY_LOG=warn "$MCP_GATEWAY_BIN" --config "$WORK/on.yaml" >"$WORK/on.log" 2>&1 &
ON_PID=$!
PIDS+=($!)
LOAD_KEY="$KEY" MCP_GATEWAY_LOG=warn "$MCP_GATEWAY_BIN" --config "$WORK/noaudit.yaml" >"$WORK/noaudit.log" 2>&1 &
NOAUDIT_PID=$!
PIDS+=($!)
MCP_GATEWAY_LOG=warn "$MCP_GATEWAY_BIN" --config "$WORK/off.yaml" >"$WORK/off.log" 2>&1 &
OFF_PID=$!
PIDS+=($!)

mkdir -p "$WORK/nginx"
NGINX_USER=""
if [[ "$(id -u)" == 0 ]]; then NGINX_USER="user $(id -un) $(id -gn);"; fi
cat >"$WORK/nginx/nginx.conf" <<EOF
$NGINX_USER
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream mcp { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NG;
    location / {
      proxy_pass http://mcp;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:$UP;
      proxy_buffering off;
    }
  }
}
EOF
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon on;' 2>"$WORK/nginx/start.log" || {
  echo "load: FAILED: nginx did not start:" >&2; cat "$WORK/nginx/start.log" >&2; exit 1; }

wait_http "http://127.0.0.1:$UP/healthz"
wait_http "http://127.0.0.1:$ON/healthz"
wait_http "http://127.0.0.1:$OFF/healthz"
wait_http "http://127.0.0.1:$NOAUDIT/healthz"
wait_http "http://127.0.0.1:$NG/healthz"

cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello from wrk"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
wrk.headers["Mcp-Method"] = "tools/call"
wrk.headers["Mcp-Name"] = "echo"
wrk.headers["X-API-Key"] = os.getenv("LOAD_KEY")
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.1f p50_ms=%.3f p99_ms=%.3f requests=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout))
end
EOF

# Check each target answers the call correctly before measuring.
for port in "$ON" "$OFF" "$NG" "$NOAUDIT"; do
  out="$(curl -fsS "http://127.0.0.1:$port/mcp" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2026-07-28' \
    -H 'Mcp-Method: tools/call' -H 'Mcp-Name: echo' -H "X-API-Key: $KEY" \
    -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello from wrk"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}')"
  if [[ "$out" != *'hello from wrk'* ]]; then
    echo "load: FAILED: port $port answered: $out" >&2; exit 1
  fi
done

# CPU time (user + system, in clock ticks) of a process and its children threads.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    if [[ -r "/proc/$pid/stat" ]]; then
      total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    fi
  done
  echo "$total"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))
# On a virtual machine: CPU time the host took from this machine (steal, all CPUs, in
# clock ticks). A run with much of it was slowed by other guests, not by the proxy.
steal_ticks() { awk '/^cpu /{print $9; exit}' /proc/stat; }

run() {
  local label="$1" port="$2"; shift 2
  # $@: the PIDs of the proxy under test (nginx: its workers).
  # A short warm-up, then the measured run.
  LOAD_KEY="$KEY" wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$WORK/post.lua" "http://127.0.0.1:$port/mcp" >/dev/null 2>&1 || true
  local line p0 p1 u0 u1 s0 s1 t0 t1 n
  p0="$(cpu_ticks "$@")"; u0="$(cpu_ticks "$UP_PID")"; s0="$(steal_ticks)"; t0="$(date +%s%N)"
  line="$(LOAD_KEY="$KEY" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$WORK/post.lua" "http://127.0.0.1:$port/mcp" | grep '^RESULT')"
  p1="$(cpu_ticks "$@")"; u1="$(cpu_ticks "$UP_PID")"; s1="$(steal_ticks)"; t1="$(date +%s%N)"
  n="$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$line")"
  # Steal as a share of the machine's CPU time over the run (ticks * tick / (wall * cores)).
  local steal_pct=$(( (s1 - s0) * TICK_US * 100 / ( (t1 - t0) / 1000 * $(nproc) > 0 ? (t1 - t0) / 1000 * $(nproc) : 1 ) ))
  echo "$label $line proxy_cpu_us=$(( (p1 - p0) * TICK_US / (n > 0 ? n : 1) )) upstream_cpu_us=$(( (u1 - u0) * TICK_US / (n > 0 ? n : 1) )) steal_pct=$steal_pct" >>"$WORK/results"
}
NGINX_WORKERS=($(pgrep -P "$(cat "$WORK/nginx/nginx.pid")"))
for _ in $(seq 1 "$ROUNDS"); do
  run gateway_all_layers_on "$ON" "$ON_PID"
  run gateway_all_layers_off "$OFF" "$OFF_PID"
  run nginx_reverse_proxy "$NG" "${NGINX_WORKERS[@]}"
  run gateway_on_but_audit_off "$NOAUDIT" "$NOAUDIT_PID"
done

echo
echo "load: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds"
python3 - "$WORK/results" <<'EOF'
import sys
runs = {}
for line in open(sys.argv[1]):
    label, _, *kv = line.split()
    d = dict(x.split("=") for x in kv)
    runs.setdefault(label, []).append((label, float(d["rps"]), float(d["p50_ms"]), float(d["p99_ms"]), int(d["requests"]), int(d["errors"]), int(d["proxy_cpu_us"]), int(d["upstream_cpu_us"]), int(d["steal_pct"])))
print("each round (req/s, proxy CPU per request, host steal):")
for label, rs in runs.items():
    print(f"  {label:<26} " + "  ".join(f"{r[1]:.0f} req/s, {r[6]} us, {r[8]}%" for r in rs))
steal = max(r[8] for rs in runs.values() for r in rs)
if steal >= 3:
    print(f"load: note: the host took up to {steal}% of this machine's CPU time during a round (steal); figures from such rounds are noisy")
# Each target's median round by throughput (its latency and CPU figures with it).
rows = [sorted(rs, key=lambda r: r[1])[len(rs) // 2] for rs in runs.values()]
print()
print(f"{'target (median round)':<26} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} {'errors':>7} {'proxy CPU us/req':>17} {'upstream CPU us/req':>20}")
for r in rows:
    print(f"{r[0]:<26} {r[1]:>10.0f} {r[2]:>8.2f} {r[3]:>8.2f} {r[4]:>9} {r[5]:>7} {r[6]:>17} {r[7]:>20}")
errors = sum(r[5] for rs in runs.values() for r in rs)
if errors:
    print(f"load: FAILED: {errors} requests failed", file=sys.stderr)
by = {r[0]: r[1] for r in rows}
on, off, ng = by["gateway_all_layers_on"], by["gateway_all_layers_off"], by["nginx_reverse_proxy"]
print()
print(f"all layers on vs all layers off: {100 * (1 - on / off):+.1f}% throughput cost (aim: under 15%)")
print(f"all layers on vs nginx:          {100 * (on / ng - 1):+.1f}% throughput (aim: within 20%)")
na = by["gateway_on_but_audit_off"]
print(f"for comparison, every layer on but the audit trail: {100 * (1 - na / off):+.1f}% cost vs all layers off, {100 * (na / ng - 1):+.1f}% vs nginx")
sys.exit(1 if errors else 0)
EOF
