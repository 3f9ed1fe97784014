#!/usr/bin/env bash
# Runs the Python MCP SDK tests (tests/python) through the gateway, and the READMEs' demo
# commands (curl and Python) against the demo gateway: creates .venv with
# tests/python/requirements.txt when it is missing, builds mcp-gateway, runs pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import mcp, pytest, jwt' >/dev/null 2>&1; then
  python3 -m venv .venv
  .venv/bin/pip install -q -r tests/python/requirements.txt
fi
if [[ -z "${MCP_GATEWAY_BIN:-}" ]]; then
  cargo build -q -p mcp-gateway
  TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  export MCP_GATEWAY_BIN="$TARGET_DIR/debug/mcp-gateway"
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests/python "$@"
