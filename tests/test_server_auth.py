"""Keys, the bind rule, per-key rate and concurrency limits (429 + Retry-After), size limits (413) and
upload checks (415) — the pure parts directly, the rest against a running server with the `openai` SDK."""

from __future__ import annotations

import base64
import http.client
import json
import time

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from llmi.errors import ConfigError  # noqa: E402
from llmi.server import create_app  # noqa: E402
from llmi.server.auth import KeyRing, RateLimiter, check_bind, is_loopback_host, load_keys  # noqa: E402

from .helpers import make_png  # noqa: E402
from .server_support import LiveServer, settings_for  # noqa: E402
from .sse_server import Script, SSEServer, split_every  # noqa: E402

KEY_A = "sk-llmi-alpha-0123456789"
KEY_B = "sk-llmi-bravo-0123456789"


# -- pure parts ---------------------------------------------------------------------------------


def test_keys_from_env_and_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"# team keys\nalice {KEY_A}\n\n{KEY_B}  # a comment\n", encoding="utf-8")
    ring = load_keys(f, environ={"LLMI_SERVER_KEYS": "sk-env-key-000000, sk-env-key-111111"})
    assert len(ring) == 4 and ring.enabled
    assert ring.identify(KEY_A) == "alice"
    assert ring.identify(KEY_B).startswith("key-") and KEY_B not in ring.identify(KEY_B)
    assert ring.identify("sk-env-key-111111") is not None
    assert ring.identify("sk-wrong-000000") is None
    f.write_text("a b c\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="keys:1"):
        load_keys(f, environ={})
    with pytest.raises(ConfigError, match="at least 8"):
        load_keys(None, environ={"LLMI_SERVER_KEYS": "short"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_keys(tmp_path / "missing", environ={})


def test_bind_rule():
    none = KeyRing()
    some = KeyRing()
    some.add(KEY_A)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback_host(host) and check_bind(host, keys=none, allow_no_auth=False) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "10.0.0.1"):
        assert not is_loopback_host(host)
        assert "without API keys" in check_bind(host, keys=none, allow_no_auth=False)
        assert check_bind(host, keys=some, allow_no_auth=False) is None
        assert check_bind(host, keys=none, allow_no_auth=True) is None
    assert is_loopback_host("myhost", resolve=lambda h: ["127.0.1.1"])
    assert not is_loopback_host("myhost", resolve=lambda h: ["127.0.1.1", "192.168.0.2"])


def test_rate_limiter_bucket():
    now = [0.0]
    lim = RateLimiter(60, 3, clock=lambda: now[0])  # 1 per second, 3 at once
    assert [lim.take("a") for _ in range(3)] == [None, None, None]
    wait = lim.take("a")
    assert wait == pytest.approx(1.0)
    assert lim.take("b") is None  # per key
    now[0] += 0.5
    assert lim.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert lim.take("a") is None


def test_serve_refuses_a_public_bind_without_keys(monkeypatch):
    from typer.testing import CliRunner

    from llmi.cli import app

    monkeypatch.delenv("LLMI_SERVER_KEYS", raising=False)
    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert r.exit_code == 2
    assert "without API keys" in r.output and "--allow-no-auth" in r.output


# -- against a running server -------------------------------------------------------------------


def _script(n: int, body: dict) -> Script:
    content = body["messages"][-1]["content"]
    if "slow" in str(content):
        return Script(content=split_every("A slow answer that takes a while to write.", 2), delay_s=0.05)
    return Script(content=["Hello."])


@pytest.fixture(scope="module")
def llm():
    with SSEServer(_script) as srv:
        yield srv


def _server(llm, tmp_path, **server):
    keys = KeyRing()
    keys.add(KEY_A, "alice")
    keys.add(KEY_B, "bob")
    settings = settings_for(llm.base_url, server=server)
    return LiveServer(create_app(settings, keys=keys, data_dir=tmp_path))


def _client(srv, key):
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key=key, max_retries=0)


def test_keys_are_required_and_documents_are_per_key(llm, tmp_path):
    with _server(llm, tmp_path) as srv:
        with pytest.raises(openai.AuthenticationError) as err:
            _client(srv, "sk-not-a-key-000").chat.completions.create(
                model="llmi", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 401
        assert httpx.get(srv.base_url + "/v1/models").status_code == 401
        assert httpx.get(srv.base_url + "/api/runs").status_code == 401
        r = _client(srv, KEY_A).chat.completions.create(model="llmi", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "Hello."
        run_id = r.model_extra["llmi"]["run_id"]
        alice = {"Authorization": f"Bearer {KEY_A}"}
        bob = {"Authorization": f"Bearer {KEY_B}"}
        assert [x["id"] for x in httpx.get(srv.base_url + "/api/runs", headers=alice).json()["runs"]] == [run_id]
        assert httpx.get(srv.base_url + "/api/runs", headers=bob).json()["runs"] == []
        assert httpx.get(srv.base_url + f"/api/runs/{run_id}", headers=bob).status_code == 404
        # The page, its assets and the server description need no key; the signed link neither.
        assert httpx.get(srv.base_url + "/").status_code == 200
        assert httpx.get(srv.base_url + "/api/config").json()["auth_required"] is True
        assert httpx.get(r.model_extra["llmi"]["document"]).status_code == 200
        assert httpx.get(srv.base_url + f"/api/runs/{run_id}/document.html").status_code == 401


def test_rate_limit_gives_429_with_retry_after(llm, tmp_path):
    with _server(llm, tmp_path, rate_per_minute=6, burst=2) as srv:
        c = _client(srv, KEY_A)
        for _ in range(2):
            c.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 429
        assert 1 <= int(err.value.response.headers["retry-after"]) <= 10
        assert "rate limit" in str(err.value)
        # another key has its own bucket
        _client(srv, KEY_B).chat.completions.create(model="llmi", messages=[{"role": "user", "content": "hi"}])


def test_concurrency_limit_per_key(llm, tmp_path):
    with _server(llm, tmp_path, max_concurrent_runs=1, busy_retry_after_s=3) as srv:
        c = _client(srv, KEY_A)
        stream = c.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "slow"}], stream=True)
        next(iter(stream))
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "hi"}])
        assert err.value.response.headers["retry-after"] == "3"
        assert "in progress" in str(err.value)
        _client(srv, KEY_B).chat.completions.create(model="llmi", messages=[{"role": "user", "content": "hi"}])
        for _ in stream:
            pass
        deadline = time.monotonic() + 5
        while srv.services.manager.active("alice") and time.monotonic() < deadline:
            time.sleep(0.02)
        c.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "hi"}])


def test_size_limits_and_upload_checks(llm, tmp_path):
    with _server(llm, tmp_path, max_request_bytes=64 * 1024, max_image_bytes=2048, max_images=2) as srv:
        auth = {"Authorization": f"Bearer {KEY_A}"}
        big = {"prompt": "x" * 70_000}
        r = httpx.post(srv.base_url + "/api/runs", json=big, headers=auth)
        assert r.status_code == 413 and "too large" in r.json()["error"]["message"]
        # the same body sent chunked (no Content-Length) is refused while it is read
        host, port = srv.base_url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        body = json.dumps(big).encode()
        conn.request("POST", "/api/runs", body=iter([body[i:i + 8192] for i in range(0, len(body), 8192)]),
                     headers={**auth, "Content-Type": "application/json"}, encode_chunked=True)
        assert conn.getresponse().status == 413
        conn.close()
        # through the SDK
        with pytest.raises(openai.APIStatusError) as err:
            _client(srv, KEY_A).chat.completions.create(model="llmi", messages=[{"role": "user", "content": "x" * 70_000}])
        assert err.value.status_code == 413
        # uploads: type, size, count
        png = make_png(8, 8)
        gif_as_text = base64.b64encode(b"GIF89a not really").decode()
        cases = [
            ([base64.b64encode(b"<svg onload=alert(1)>").decode()], 415),
            (["data:image/svg+xml;base64," + base64.b64encode(b"<svg/>").decode()], 415),
            ([gif_as_text], 400),
            (["not base64 !!"], 400),
            ([base64.b64encode(make_png(200, 200, (1, 2, 3)) + b"\0" * 4000).decode()], 413),
            ([base64.b64encode(png).decode()] * 3, 413),
        ]
        for images, status in cases:
            r = httpx.post(srv.base_url + "/api/runs", json={"prompt": "hi", "images": images}, headers=auth)
            assert r.status_code == status, (images[0][:30], r.text)
            assert r.json()["error"]["message"]
        ok = httpx.post(srv.base_url + "/api/runs", json={"prompt": "hi", "images": [base64.b64encode(png).decode()],
                                                          "stream": True}, headers=auth)
        assert ok.status_code == 200 and '"type": "done"' in ok.text
