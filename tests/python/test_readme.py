"""The README's commands for the demo gateway, run as written: the shell blocks that talk
to `127.0.0.1:8080` are pasted into one bash session, in order, against `mcp-gateway`
started with no configuration. Only two things are substituted, as a reader would: the
port (8080 -> the one the kernel gave the gateway, so the test never collides with a
gateway already running) and the placeholder `'paste the printed key here'` (-> the key
the gateway printed)."""

import re
import shlex
import subprocess

from conftest import ROOT

PLACEHOLDER = "'paste the printed key here'"


def _demo_blocks(readme: str) -> list[str]:
    text = (ROOT / readme).read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    return [b for b in blocks if "127.0.0.1:8080" in b or "$KEY" in b or PLACEHOLDER in b]


def _run_session(blocks: list[str], demo) -> list[str]:
    """One bash session (cwd = the repository, where the test command made `.venv`);
    returns each block's output."""
    script = []
    for i, block in enumerate(blocks):
        block = block.replace("127.0.0.1:8080", f"127.0.0.1:{demo['port']}")
        block = block.replace(PLACEHOLDER, shlex.quote(demo["key"]))
        # A newline first: curl's output does not end with one.
        script.append(f"printf '\\n=== block {i} ===\\n'\n{block}")
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, (
        f"exit {done.returncode}\n{done.stdout}\n{done.stderr}\n{demo['process'].state()}"
    )
    parts = re.split(r"\n=== block \d+ ===\n", done.stdout)
    assert len(parts) == len(blocks) + 1, done.stdout
    return parts[1:]


def _tool_names_in_list(output: str) -> bool:
    return '"name":"echo"' in output and '"name":"add"' in output


def test_root_readme_commands_work_verbatim(demo_gateway):
    blocks = _demo_blocks("README.md")
    assert len(blocks) == 2, "README.md: expected the curl and the Python block"
    assert PLACEHOLDER in blocks[0]
    curl, python = _run_session(blocks, demo_gateway)
    assert _tool_names_in_list(curl), curl
    lines = python.splitlines()
    assert "'add'" in lines[0] and "'echo'" in lines[0], python
    assert lines[1] == "42", python


def test_gateway_readme_commands_work_verbatim(demo_gateway):
    readme = "examples/gateway/README.md"
    blocks = _demo_blocks(readme)
    assert len(blocks) == 6, f"{readme}: expected 6 demo blocks, found {len(blocks)}"
    assert blocks[0].strip() == f"KEY={PLACEHOLDER}"
    key_only, tools, sse, handshake, visible, python = _run_session(blocks, demo_gateway)
    assert key_only.strip() == ""
    assert _tool_names_in_list(tools), tools

    # Streamed event by event: five progress notifications, then the result.
    events = [line for line in sse.splitlines() if line.startswith("data: ")]
    assert len(events) == 6, sse
    assert all('"notifications/progress"' in e for e in events[:5]), sse
    assert '"counted to 5"' in events[5], sse

    head, _, body = handshake.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 200"), handshake
    assert re.search(r"^mcp-session-id: \S+$", head, re.M | re.I), head
    assert '"protocolVersion":"2025-11-25"' in body, body

    # The layers at work, in the order of the block.
    assert '"code":-32001' in visible and "Authentication required" in visible, visible
    # The rule and the path are named, not the value (the audit rows further down keep
    # the refused arguments, masked for secrets, for the investigation).
    refused = re.search(r'\{"jsonrpc":"2.0","id":3,.*?\}\}\}', visible)
    assert refused, visible
    assert '"rule":"xss"' in refused[0] and "<script>" not in refused[0], refused[0]
    assert '"message":"Origin not allowed"' in visible, visible
    assert "[REDACTED:jwt]" in visible and "eyJ" not in visible, visible
    assert '"kind":"request"' in visible, visible
    assert "mcp_gateway_requests_total{" in visible, visible
    assert visible.rstrip().endswith('{"ready":true}'), visible

    lines = python.splitlines()
    assert "'add'" in lines[0] and "'echo'" in lines[0], python
    assert lines[1] == "42", python
    assert lines[2] == "Hello, operator!", python
    assert lines[3].startswith("Please review this code"), python
