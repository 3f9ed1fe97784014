#!/usr/bin/env bash
# TLS handshake cost, side by side with nginx: in one run, new TLS connections (full
# handshakes, no resumption: `openssl s_time -new`) to
#   1. the gateway (TLS on, every layer off; mcp-tls, rustls with aws-lc-rs),
#   2. nginx with `ssl` on the same certificate (OpenSSL),
# each with an ECDSA P-256 and an RSA-2048 certificate. Prints the handshakes per second
# and the server's CPU time (user + system) per handshake, with the ratio gateway/nginx.
# The server's signature is most of that CPU: RSA-2048 costs several times P-256.
#
# Needs nginx and openssl (Debian: apt-get install -y nginx-light openssl). Everything runs
# as the current user on free loopback ports from a temp dir, and is stopped at the end.
# The targets are measured in turn, ROUNDS times (interleaved); the figures are each
# target's median round by CPU per handshake.
# Environment: DURATION (seconds per target and round, default 10), ROUNDS (3), CLIENTS
# (parallel s_time clients, default 2), TLS (1.3 or 1.2, default 1.3),
# MCP_GATEWAY_BIN (default: cargo build --release).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CLIENTS="${CLIENTS:-2}"
TLS="${TLS:-1.3}"
case "$TLS" in
  1.3) TLS_FLAG=-tls1_3 ;;
  1.2) TLS_FLAG=-tls1_2 ;;
  *) echo "load-tls: TLS must be 1.3 or 1.2" >&2; exit 2 ;;
esac

for tool in nginx openssl curl python3; do
  if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$tool" ]]; then
    echo "load-tls: FAILED: $tool is missing (apt-get install -y nginx-light openssl curl python3)" >&2
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
wait_https() {
  for _ in $(seq 1 100); do
    if curl -fsSk -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "load-tls: FAILED: $1 did not come up; logs:" >&2
  tail -n 20 "$WORK"/*.log "$WORK"/nginx/*.log >&2 2>/dev/null || true
  exit 1
}

# Certificates for localhost: ECDSA P-256 and RSA-2048, self-signed.
for kind in ecdsa rsa; do
  case "$kind" in
    ecdsa) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa) newkey=(-newkey rsa:2048) ;;
  esac
  openssl req -x509 "${newkey[@]}" -nodes -days 90 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$WORK/$kind.key" -out "$WORK/$kind.crt" 2>/dev/null
done

UP="$(free_port)"
"$MCP_GATEWAY_BIN" demo-upstream --addr "127.0.0.1:$UP" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)

declare -A PORT GW_PID
mkdir -p "$WORK/nginx"
NGINX_SERVERS=""
for kind in ecdsa rsa; do
  PORT[gateway_$kind]="$(free_port)"
  PORT[nginx_$kind]="$(free_port)"
  cat >"$WORK/gateway_$kind.yaml" <<EOF
server:
  addr: "127.0.0.1:${PORT[gateway_$kind]}"
  tls:
    enabled: true
    certFile: "$WORK/$kind.crt"
    keyFile: "$WORK/$kind.key"
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
  MCP_GATEWAY_LOG=warn "$MCP_GATEWAY_BIN" --config "$WORK/gateway_$kind.yaml" >"$WORK/gateway_$kind.log" 2>&1 &
  GW_PID[$kind]=$!
  PIDS+=($!)
  NGINX_SERVERS+="
  server {
    listen 127.0.0.1:${PORT[nginx_$kind]} ssl;
    ssl_certificate $WORK/$kind.crt;
    ssl_certificate_key $WORK/$kind.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { return 200 \"ok\n\"; }
  }"
done
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
  $NGINX_SERVERS
}
EOF
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon on;' 2>"$WORK/nginx/start.log" || {
  echo "load-tls: FAILED: nginx did not start:" >&2; cat "$WORK/nginx/start.log" >&2; exit 1; }
for target in "${!PORT[@]}"; do
  case "$target" in
    gateway_*) wait_https "https://127.0.0.1:${PORT[$target]}/healthz" ;;
    nginx_*) wait_https "https://127.0.0.1:${PORT[$target]}/" ;;
  esac
done
NGINX_WORKERS=($(pgrep -P "$(cat "$WORK/nginx/nginx.pid")"))

# CPU time (user + system, in clock ticks) of processes (all their threads).
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

# CLIENTS parallel `openssl s_time -new` for DURATION s; prints the connections made.
handshakes() {
  local port="$1" i
  for i in $(seq 1 "$CLIENTS"); do
    openssl s_time -connect "127.0.0.1:$port" -new "$TLS_FLAG" -time "$DURATION" >"$WORK/s_time.$i" 2>&1 &
  done
  wait
  local total=0
  for i in $(seq 1 "$CLIENTS"); do
    n="$(sed -n 's/^\([0-9][0-9]*\) connections in .* real seconds.*/\1/p' "$WORK/s_time.$i" | head -n 1)"
    total=$((total + ${n:-0}))
  done
  echo "$total"
}

run() {
  local label="$1" port="$2"; shift 2
  local c0 c1 n t0 t1
  c0="$(cpu_ticks "$@")"; t0="$(date +%s%N)"
  n="$(handshakes "$port")"
  c1="$(cpu_ticks "$@")"; t1="$(date +%s%N)"
  echo "$label handshakes=$n wall_ms=$(( (t1 - t0) / 1000000 )) cpu_us=$(( (c1 - c0) * TICK_US ))" >>"$WORK/results"
}
for _ in $(seq 1 "$ROUNDS"); do
  for kind in ecdsa rsa; do
    run "gateway_$kind" "${PORT[gateway_$kind]}" "${GW_PID[$kind]}"
    run "nginx_$kind" "${PORT[nginx_$kind]}" "${NGINX_WORKERS[@]}"
  done
done

echo
echo "load-tls: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), TLS $TLS, $CLIENTS x openssl s_time -new for ${DURATION}s, $ROUNDS rounds; $("$NGINX" -v 2>&1); $(openssl version)"
python3 - "$WORK/results" <<'EOF'
import sys
runs = {}
for line in open(sys.argv[1]):
    label, *kv = line.split()
    d = dict(x.split("=") for x in kv)
    n = int(d["handshakes"])
    if n == 0:
        print(f"load-tls: FAILED: {label} made no handshake", file=sys.stderr)
        sys.exit(1)
    runs.setdefault(label, []).append((n / (int(d["wall_ms"]) / 1000), int(d["cpu_us"]) / n))
print("each round (handshakes/s, server CPU us per handshake):")
for label, rs in runs.items():
    print(f"  {label:<14} " + "  ".join(f"{r[0]:.0f}/s {r[1]:.0f} us" for r in rs))
med = {label: sorted(rs, key=lambda r: r[1])[len(rs) // 2] for label, rs in runs.items()}
print()
print(f"{'key':<6} {'gateway /s':>10} {'us/hs':>7} {'nginx /s':>10} {'us/hs':>7} {'gateway/nginx CPU':>18}")
for kind in ("ecdsa", "rsa"):
    g, n = med[f"gateway_{kind}"], med[f"nginx_{kind}"]
    print(f"{kind:<6} {g[0]:>10.0f} {g[1]:>7.0f} {n[0]:>10.0f} {n[1]:>7.0f} {g[1] / n[1]:>17.2f}x")
EOF
