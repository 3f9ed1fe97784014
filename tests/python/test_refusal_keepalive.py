"""A refusal must not cost a Python `http.client` its next request on the same
connection. `http.client` writes the head and a file or iterable body in separate
writes; a refusal that comes before the body is read (401 here) must leave the
connection usable, or say `Connection: close`."""

import http.client
import io
import json
import urllib.parse

import pytest

from conftest import API_KEY

HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-11-25",
}


def _list_body() -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}).encode()


@pytest.mark.parametrize("shape", ["file", "chunked"])
def test_the_request_after_a_refusal_is_not_lost(gateway, shape):
    url = urllib.parse.urlsplit(gateway["url"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    lost, closed_with_notice = 0, 0
    body = b"x" * 4000
    for _ in range(50):
        if shape == "file":
            headers = dict(HEADERS, **{"Content-Length": str(len(body))})
            conn.request("POST", url.path, body=io.BytesIO(body), headers=headers)
        else:
            pieces = iter([body[:1000], body[1000:2000], body[2000:]])
            conn.request("POST", url.path, body=pieces, headers=HEADERS, encode_chunked=True)
        r = conn.getresponse()
        r.read()
        assert r.status == 401
        if r.getheader("Connection", "").lower() == "close":
            closed_with_notice += 1
            conn.close()
            continue
        try:
            conn.request("POST", url.path, body=_list_body(), headers=dict(HEADERS, **{"X-API-Key": API_KEY}))
            r2 = conn.getresponse()
            r2.read()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            lost += 1
            conn.close()
    assert lost == 0, f"{lost} of 50 requests after a 401 lost"
    assert closed_with_notice == 0, "small bodies are drained: the connection stays"
