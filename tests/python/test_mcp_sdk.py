"""The official Python MCP SDK (PyPI `mcp`) as a real client, through the gateway, with
an API key and with a JWT (HS256), in the legacy handshake mode (2025-11-25) and in the
stateless 2026-07-28 mode."""

import time

import anyio
import httpx2
import jwt
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import API_KEY, JWT_SECRET


def _headers(kind: str) -> dict:
    if kind == "apikey":
        return {"X-API-Key": API_KEY}
    token = jwt.encode(
        {"sub": "python-jwt-user", "exp": int(time.time()) + 600, "scope": "mcp:tools"},
        JWT_SECRET,
        algorithm="HS256",
    )
    return {"Authorization": f"Bearer {token}"}


async def _session(url: str, kind: str, mode: str):
    http = httpx2.AsyncClient(headers=_headers(kind), timeout=30)
    client = Client(streamable_http_client(url, http_client=http), mode=mode)
    return http, client


@pytest.mark.parametrize("kind", ["apikey", "jwt"])
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
def test_tools_resources_prompts(gateway, kind, mode):
    async def scenario():
        http, client = await _session(gateway["url"], kind, mode)
        async with http, client as c:
            session = c.session
            if mode == "legacy":
                assert session.initialize_result is not None
                assert session.initialize_result.protocol_version == "2025-11-25"
            else:
                # 2026-07-28: no handshake; auto mode discovers the modern revision.
                assert session.discover_result is not None
                assert "2026-07-28" in session.discover_result.supported_versions

            tools = await c.list_tools()
            names = {t.name for t in tools.tools}
            assert {"echo", "add", "slow_count"} <= names

            r = await c.call_tool("add", {"a": 20, "b": 22})
            assert r.content[0].text == "42"
            r = await c.call_tool("echo", {"message": "through the gateway"})
            assert r.content[0].text == "through the gateway"

            progress = []

            async def on_progress(p, total, message):
                progress.append(p)

            r = await c.call_tool(
                "slow_count", {"count": 3, "delay_ms": 20}, progress_callback=on_progress
            )
            assert r.content[0].text == "counted to 3"
            assert progress == [1.0, 2.0, 3.0]

            resources = await c.list_resources()
            assert any(str(x.uri) == "test://static-text" for x in resources.resources)
            rr = await c.read_resource("test://static-text")
            assert rr.contents[0].text == "This is the content of the static text resource."
            rr = await c.read_resource("test://template/77/data")
            assert '"id":"77"' in rr.contents[0].text

            prompts = await c.list_prompts()
            assert any(p.name == "code_review" for p in prompts.prompts)
            p = await c.get_prompt("test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
            assert p.messages[0].content.text == "Prompt with arguments: arg1='a', arg2='b'"

    anyio.run(scenario)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_without_credentials_the_client_is_refused(gateway, mode):
    async def scenario():
        http = httpx2.AsyncClient(timeout=30)
        client = Client(streamable_http_client(gateway["url"], http_client=http), mode=mode)
        async with http:
            with pytest.raises(BaseException) as info:
                async with client as c:
                    await c.list_tools()
            text = repr(info.value)
            assert "401" in text or "Authentication" in text or "Unauthorized" in text, text

    anyio.run(scenario)


def test_blocked_argument_is_refused_to_the_sdk(gateway):
    async def scenario():
        http, client = await _session(gateway["url"], "apikey", "2026-07-28")
        async with http, client as c:
            with pytest.raises(MCPError) as info:
                await c.call_tool("echo", {"message": "<script>alert(1)</script>"})
            assert info.value.error.code == -32602

    anyio.run(scenario)
