#!/usr/bin/env bash
# Runs every test of the suite on a fresh Debian machine with Rust.
#
# 1. Installs what the tests need and the machine lacks: redis-server, PostgreSQL,
#    openssl, curl, pebble (ACME test server), a Python venv with the `mcp` SDK, pytest and
#    urllib3 (.venv; urllib3 for the URL rule's differential test), Node 22, the MCP
#    conformance suite and the reference MCP server @modelcontextprotocol/server-everything
#    from the npm registry (.tools; Node for the differential test too; the gateway's
#    tests run server-everything as a third-party upstream).
# 2. Checks formatting, lints and docs (cargo fmt --check, clippy -D warnings, clippy of
#    each feature of every library crate alone and with none (cargo hack --each-feature;
#    cargo-hack is installed when missing), cargo doc -D warnings).
# 3. Runs the Rust tests of every crate (unit, integration over real sockets, doc tests).
#    Tests that need redis-server or PostgreSQL start their own on free loopback ports and
#    stop them after (crates/mcp-testkit).
# 4. Runs the Python MCP client tests (and the READMEs' demo commands, curl and Python,
#    as written, against the demo gateway) and the MCP conformance suite.
#
# Disk: a clean run needs about 3 GB under target/ (the dev profile keeps line tables only;
# see Cargo.toml). The free space is printed first and a warning given under 3 GB.
#
# 5. Builds the fuzz targets (fuzz/, FUZZING.md) and runs each over its seed corpus
#    once (scripts/fuzz.sh --check), so CI keeps them building and their seeds passing.
#
# Environment: SKIP_INSTALL=1 skips step 1 (the tests then fail, never skip, when
# something is missing). SKIP_LINT=1 skips step 2. SKIP_FUZZ=1 skips step 5.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# A clean run builds once, so incremental artifacts (gigabytes) would only fill the disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

step() { printf '\n==> %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

install_prereqs() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v cc >/dev/null 2>&1 || missing+=(gcc) # aws-lc-sys (rustls's crypto provider) compiles C; no cmake needed
  command -v c++ >/dev/null 2>&1 || missing+=(g++) # libFuzzer, for the fuzz targets
  command -v pebble >/dev/null 2>&1 || [ -x /usr/bin/pebble ] || missing+=(pebble)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then
    step "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  # The Debian postgresql package starts a cluster on port 5432; the tests use their own.
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import mcp, pytest, urllib3' >/dev/null 2>&1; then
    step "creating the Python venv (.venv) with the mcp SDK, pytest and urllib3"
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    if [ -f tests/python/requirements.txt ]; then
      .venv/bin/pip install -q -r tests/python/requirements.txt
    else
      .venv/bin/pip install -q mcp pytest urllib3
    fi
  fi
  if [ ! -x .tools/node_modules/.bin/conformance ] || [ ! -x .tools/node_modules/node/bin/node ] \
      || [ ! -f .tools/node_modules/@modelcontextprotocol/server-everything/dist/index.js ]; then
    step "installing Node 22, the MCP conformance suite and server-everything (.tools)"
    mkdir -p .tools
    (cd .tools && npm install --no-audit --no-fund --loglevel=error \
        "node@22" "@modelcontextprotocol/conformance" \
        "@modelcontextprotocol/server-everything" >/dev/null)
  fi
}

step "disk"
mkdir -p target
free_kb=$(df -Pk target | awk 'NR==2 {print $4}')
echo "free under target/: $((free_kb / 1024)) MB"
if [ "${free_kb:-0}" -lt 3000000 ]; then
  echo "warning: a clean run needs about 3 GB under target/; the build may stop with 'No space left on device'"
fi

if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  step "prerequisites"
  install_prereqs
fi

if [ "${SKIP_LINT:-0}" != "1" ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy (all targets, all features, -D warnings)"
  cargo clippy --workspace --all-targets --all-features -- -D warnings
  step "cargo hack clippy (each feature of every library crate alone, -D warnings)"
  # A library user may take any one feature, or none (default-features = false): each
  # must build without a warning. cargo-hack is installed from crates.io when missing.
  command -v cargo-hack >/dev/null 2>&1 || cargo install cargo-hack --locked
  cargo hack --each-feature --no-dev-deps clippy \
    -p mcp-core -p mcp-auth -p mcp-ratelimit -p mcp-sanitize -p mcp-audit -p mcp-tls \
    -- -D warnings
  step "cargo doc (every crate, all features, -D warnings: broken or private doc links)"
  RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
fi

step "cargo test (every crate, all features)"
# A failing test must not stop the run here (set -e): the suites below still run, and
# the summary reports every part.
set +e
cargo test --workspace --all-features --no-fail-fast 2>&1 | tee target/cargo-test.log
rust_status=${PIPESTATUS[0]}
set -e

extra_status=0
if [ -f tests/python/run.sh ]; then
  step "Python MCP client tests (real mcp SDK through the gateway; the READMEs' demo commands)"
  bash tests/python/run.sh || extra_status=1
fi
fuzz_status=0
if [ "${SKIP_FUZZ:-0}" != "1" ]; then
  step "fuzz targets: build, each over its seed corpus once (scripts/fuzz.sh --check; FUZZING.md)"
  bash scripts/fuzz.sh --check || fuzz_status=1
fi
if [ -f tests/conformance/run.sh ]; then
  step "MCP conformance suite (upstream directly and through the gateway)"
  bash tests/conformance/run.sh || extra_status=1
fi

step "summary"
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' target/cargo-test.log | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' target/cargo-test.log | awk '{s+=$1} END {print s+0}')
if [ "$rust_status" != "0" ] || [ "$extra_status" != "0" ] || [ "$fuzz_status" != "0" ]; then
  echo "FAILED (cargo test exit ${rust_status}, Python/conformance suites $([ $extra_status = 0 ] && echo ok || echo failed), fuzz targets $([ $fuzz_status = 0 ] && echo ok || echo failed))"
  echo "rust: ${passed} passed, ${failed} failed"
  exit 1
fi
echo "Python MCP SDK tests and conformance suite: ok"
echo "rust: ${passed} passed, ${failed} failed"
