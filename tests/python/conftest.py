"""Starts the demo MCP server and the gateway (as processes, from a config file) for the
Python MCP SDK tests. The binary is $MCP_GATEWAY_BIN, else built with cargo."""

import json
import os
import pathlib
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
API_KEY = "Abc123!@#Xyz789!@#PyTest"
JWT_SECRET = "python-sdk-test-secret-0123456789-abcdefgh"


def _binary() -> str:
    env = os.environ.get("MCP_GATEWAY_BIN")
    if env:
        return env
    subprocess.run(["cargo", "build", "-q", "-p", "mcp-gateway"], cwd=ROOT, check=True)
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
    )
    return str(pathlib.Path(meta["target_directory"]) / "debug" / "mcp-gateway")


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _wait(url: str) -> None:
    for _ in range(200):
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@pytest.fixture(scope="session")
def gateway():
    binary = _binary()
    work = tempfile.TemporaryDirectory()
    up_port, gw_port = _free_port(), _free_port()
    procs = []
    try:
        procs.append(subprocess.Popen(
            [binary, "demo-upstream", "--addr", f"127.0.0.1:{up_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        config = pathlib.Path(work.name) / "gateway.yaml"
        config.write_text(f"""
server:
  addr: "127.0.0.1:{gw_port}"
auth:
  enabled: true
  mode: [apikey, jwt]
  apiKeys:
    - id: python-client
      key: "${{PY_API_KEY}}"
      scopes: ["mcp:tools"]
  jwtSecret: "${{PY_JWT_SECRET}}"
  jwtAlgorithm: HS256
ratelimit:
  enabled: true
  requests_per_second: 500
  burst: 1000
audit:
  enabled: true
  database:
    sqlitePath: "{work.name}/audit.db"
upstreams:
  - name: demo
    path: /mcp
    url: "http://127.0.0.1:{up_port}/mcp"
""")
        env = dict(os.environ, PY_API_KEY=API_KEY, PY_JWT_SECRET=JWT_SECRET)
        for k in ("MCP_AUTH_ENABLED", "MCP_AUTH_MODE", "MCP_AUTH_API_KEY"):
            env.pop(k, None)
        log = open(pathlib.Path(work.name) / "gateway.log", "w")
        procs.append(subprocess.Popen(
            [binary, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env,
        ))
        _wait(f"http://127.0.0.1:{up_port}/healthz")
        _wait(f"http://127.0.0.1:{gw_port}/healthz")
        yield {"url": f"http://127.0.0.1:{gw_port}/mcp", "audit_db": f"{work.name}/audit.db"}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        work.cleanup()


@pytest.fixture(scope="module")
def demo_gateway():
    """`mcp-gateway` with no arguments but `--addr` (demo mode: its own demo upstream, a
    fresh API key printed once), in a scratch directory; yields its port and the key."""
    binary = _binary()
    work = tempfile.TemporaryDirectory()
    port = _free_port()
    env = dict(os.environ)
    for k in ("MCP_AUTH_ENABLED", "MCP_AUTH_MODE", "MCP_AUTH_API_KEY"):
        env.pop(k, None)
    out = open(pathlib.Path(work.name) / "stdout.txt", "w+")
    proc = subprocess.Popen(
        [binary, "--addr", f"127.0.0.1:{port}"],
        cwd=work.name, stdout=out, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        _wait(f"http://127.0.0.1:{port}/healthz")
        out.seek(0)
        printed = out.read()
        keys = [line.split()[-1] for line in printed.splitlines() if "API key (shown once):" in line]
        assert len(keys) == 1, f"demo mode printed no API key:\n{printed}"
        yield {"port": port, "key": keys[0]}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()
        work.cleanup()
