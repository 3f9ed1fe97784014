"""Starts the demo MCP server and the gateway (as processes, from a config file) for the
Python MCP SDK tests. The binary is $MCP_GATEWAY_BIN, else built with cargo."""

import json
import os
import pathlib
import re
import subprocess
import tempfile
import time

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


class Process:
    """A server process started by `_start`: its `Popen`, its combined stdout and
    stderr log, and the address it printed that it listens on."""

    def __init__(self, name: str, proc: subprocess.Popen, log: pathlib.Path, addr: str):
        self.name, self.proc, self.log, self.addr = name, proc, log, addr

    def state(self) -> str:
        """For failure messages: whether it still runs, the end of its log, and the
        machine's TCP sockets (a client refused while the server runs may have found no
        free local port: `tw` counts the sockets in TIME_WAIT)."""
        code = self.proc.poll()
        status = "still running" if code is None else f"exited with {code}"
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
        tcp = _read_first("/proc/net/sockstat", "TCP:")
        ports = _read_first("/proc/sys/net/ipv4/ip_local_port_range", "")
        return (
            f"{self.name} {status}; sockets: {tcp}; local ports: {ports}; "
            f"the end of its log ({self.log}):\n{tail}"
        )

    def stop(self) -> None:
        if self in _RUNNING:
            _RUNNING.remove(self)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# The servers the fixtures started and have not stopped: a failed test's report ends with
# their state (see `pytest_runtest_makereport`).
_RUNNING: list = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Adds a "servers" section to a failed test's report: whether each server the
    fixtures started still runs, and the end of its log."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _RUNNING:
        report.sections.append(("servers", "\n\n".join(p.state() for p in _RUNNING)))


def _read_first(path: str, prefix: str) -> str:
    """The first line of `path` that starts with `prefix`, or "unknown"."""
    try:
        with open(path) as f:
            return next((line.strip() for line in f if line.startswith(prefix)), "unknown")
    except OSError:
        return "unknown"


_LISTENING = re.compile(r"listening on https?://(\S+?:\d+)")


def _start(name: str, args: list, log: pathlib.Path, **popen) -> Process:
    """Starts `args` listening on port 0 (the kernel picks a free port, and no other
    process can take it between the pick and the bind, as with a port picked here and
    passed on) and waits for the `listening on http://ADDR` line it prints once serving.
    Fails with the log when the process exits first or prints nothing within 60 s."""
    out = open(log, "w")
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **popen)
    out.close()
    process = Process(name, proc, log, "")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = _LISTENING.search(log.read_text(errors="replace"))
        if found:
            process.addr = found[1]
            _RUNNING.append(process)
            return process
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    state = process.state()
    process.stop()
    raise RuntimeError(f"{name} did not print the address it listens on: {state}")


def _gateway_env() -> dict:
    """This environment without the variables the gateway reads as configuration
    (`MCP_AUTH_*`, ContextForge's `MCPGATEWAY_*`)."""
    return {
        k: v for k, v in os.environ.items()
        if k not in ("MCP_AUTH_ENABLED", "MCP_AUTH_MODE", "MCP_AUTH_API_KEY")
        and not k.startswith("MCPGATEWAY_")
    }


@pytest.fixture(scope="session")
def gateway():
    binary = _binary()
    work = tempfile.TemporaryDirectory()
    work_dir = pathlib.Path(work.name)
    procs = []
    try:
        upstream = _start(
            "the demo upstream",
            [binary, "demo-upstream", "--addr", "127.0.0.1:0"],
            work_dir / "upstream.log",
        )
        procs.append(upstream)
        config = work_dir / "gateway.yaml"
        config.write_text(f"""
server:
  addr: "127.0.0.1:0"
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
    sqlitePath: "{work_dir}/audit.db"
upstreams:
  - name: demo
    path: /mcp
    url: "http://{upstream.addr}/mcp"
""")
        env = dict(_gateway_env(), PY_API_KEY=API_KEY, PY_JWT_SECRET=JWT_SECRET)
        gw = _start("the gateway", [binary, "--config", str(config)], work_dir / "gateway.log", env=env)
        procs.append(gw)
        yield {"url": f"http://{gw.addr}/mcp", "audit_db": f"{work_dir}/audit.db"}
    finally:
        for p in procs:
            p.stop()
        work.cleanup()


@pytest.fixture(scope="module")
def demo_gateway():
    """`mcp-gateway` with no arguments but `--addr 127.0.0.1:0` (demo mode: its own demo
    upstream, a fresh API key printed once), in a scratch directory; yields its port, the
    key and the process (for failure messages)."""
    binary = _binary()
    work = tempfile.TemporaryDirectory()
    work_dir = pathlib.Path(work.name)
    gw = _start(
        "the demo gateway",
        [binary, "--addr", "127.0.0.1:0"],
        work_dir / "gateway.log", cwd=work.name, env=_gateway_env(),
    )
    try:
        printed = gw.log.read_text()
        keys = [line.split()[-1] for line in printed.splitlines() if "API key (shown once):" in line]
        assert len(keys) == 1, f"demo mode printed no API key:\n{printed}"
        yield {"port": int(gw.addr.rsplit(":", 1)[1]), "key": keys[0], "process": gw}
    finally:
        gw.stop()
        work.cleanup()
