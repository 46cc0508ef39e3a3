"""The server attacked as a hostile client and a hostile model would, on loopback only: keys and who may
read what (signed links included), the Host / cross-site rules, limits (sizes, uploads, concurrency,
rates, runs that never end, followers that never read), the headers of every response, and the OpenAI
endpoint's answers to malformed requests. One test per finding, plus the checks that held.

Every server here is uvicorn on 127.0.0.1 (tests/server_support.py) with the loopback LLM of
tests/sse_server.py; no other address is ever contacted.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import logging
import socket
import time
import zlib

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from llmi.server import create_app  # noqa: E402
from llmi.server.auth import HostCheck, KeyRing, check_bind, host_check_for, host_of  # noqa: E402

from .helpers import loopback_server, make_png, send  # noqa: E402
from .server_support import LiveServer, settings_for, tag  # noqa: E402
from .sse_server import Script, SSEServer, split_every  # noqa: E402

KEY_A = "sk-sec-alpha-0123456789abcdef"
KEY_B = "sk-sec-bravo-0123456789abcdef"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}

ANSWER = "# Owls\n\nOwls hunt at night. " + tag("search", "A barn owl", "barn owl") + "\n\nThe end."


def _script(n: int, body: dict) -> Script:
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
    if "endless" in text:  # a model that does not stop
        return Script(content=["word "] * 400, delay_s=0.002)
    if "slow" in text:
        return Script(content=split_every("A slow answer that takes a while. " * 4, 4), delay_s=0.05)
    if "bulky" in text:  # big deltas, quickly: fills a follower's socket that never reads
        return Script(content=["x" * 16384] * 150, delay_s=0.01)
    return Script(content=split_every(ANSWER, 12))


@pytest.fixture(scope="module")
def llm():
    with SSEServer(_script) as srv:
        yield srv


def _keys() -> KeyRing:
    ring = KeyRing()
    ring.add(KEY_A, "alice")
    ring.add(KEY_B, "bob")
    return ring


def _server(llm, tmp_path, *, keys: KeyRing | None = None, fetch_allow=None, **server) -> LiveServer:
    opts = {"rate_per_minute": 6000, "burst": 1000, "max_concurrent_runs": 16, **server}
    settings = settings_for(llm.base_url, server=opts, fetch_allow=fetch_allow)
    return LiveServer(create_app(settings, keys=keys or KeyRing(), data_dir=tmp_path))


def _b64png(w: int = 8, h: int = 8) -> str:
    return base64.b64encode(make_png(w, h)).decode()


def _is_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def _finished_run(srv: LiveServer, headers: dict, **body) -> dict:
    """Start a background run and wait until it is stored; its description (id, token, links)."""
    r = httpx.post(srv.base_url + "/api/runs", json={"prompt": "owls", "options": {"background": True}, **body},
                   headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    info = r.json()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        cur = httpx.get(srv.base_url + f"/api/runs/{info['id']}", headers=headers).json()
        if cur["status"] != "running" and srv.services.store.get(info["id"]).status != "running":
            return {**info, **cur}
        time.sleep(0.05)
    raise AssertionError("the run did not finish")


def _done_document(srv: LiveServer, headers: dict, run_id: str) -> dict:
    """The ``done`` event's document (images as the signed links the server hands out)."""
    text = httpx.get(srv.base_url + f"/api/runs/{run_id}/events", headers=headers).text
    done = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and '"done"' in line]
    return done[-1]["document"]


def _raw(base_url: str, data: bytes, *, timeout: float = 5.0) -> bytes:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out and b"content-length: " in out.lower():
                    head, _, body = out.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        break
        except TimeoutError:
            pass
    return out


# ------------------------------------------------------------------------------------------------
# Host names (DNS rebinding) and cross-site requests
# ------------------------------------------------------------------------------------------------


def test_host_rule_parts():
    assert host_of("127.0.0.1:8080") == "127.0.0.1" and host_of("[::1]:80") == "::1"
    assert host_of("LocalHost.:8080") == "localhost" and host_of("user@evil.example:1") == "evil.example"
    check = HostCheck(["llmi.example.org", "https://ignored.example"])
    for ok in ("127.0.0.1:1", "127.9.9.9", "[::1]:5", "localhost:8080", "app.localhost", "LLMI.example.org:443"):
        assert check(ok), ok
    for bad in ("evil.example", "127.0.0.1.evil.example", "localhost.evil.example", "0.0.0.0", "10.0.0.1",
                "[::ffff:127.0.0.1]", "", "2130706433"):
        assert not check(bad), bad
    none = KeyRing()
    assert host_check_for(keys=_keys(), allow_no_auth=False, bind_host="0.0.0.0", public_url="", allowed_hosts=[]) is None
    assert host_check_for(keys=none, allow_no_auth=True, bind_host="0.0.0.0", public_url="", allowed_hosts=[]) is None
    rule = host_check_for(keys=none, allow_no_auth=False, bind_host="127.0.0.1", public_url="https://docs.example:8443/x",
                          allowed_hosts=["box.lan"])
    assert rule("docs.example") and rule("box.lan:8080") and not rule("evil.example")


def test_keyless_server_refuses_foreign_host_names(llm, tmp_path):
    """Finding (high): without keys the server answered any Host, so a web page whose DNS name is rebound
    to 127.0.0.1 could read every document and spend the LLM and tools from the user's browser."""
    with _server(llm, tmp_path, allowed_hosts=["box.lan"]) as srv:
        run = _finished_run(srv, {})
        port = srv.base_url.rsplit(":", 1)[1]
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.nip.io:{port}", f"attacker.localhost.evil:{port}"):
            for method, path in (("GET", "/api/runs"), ("GET", f"/api/runs/{run['id']}/document.json"),
                                 ("GET", "/"), ("POST", "/api/runs")):
                r = httpx.request(method, srv.base_url + path, headers={"Host": host}, json={"prompt": "x"})
                err = _is_error(r, 403, "host_not_allowed")
                assert "allowed_hosts" in err["message"]
                assert r.headers["x-content-type-options"] == "nosniff"
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"box.lan:{port}", "[::1]"):
            assert httpx.get(srv.base_url + "/api/runs", headers={"Host": host}).status_code == 200, host
        # The links a client gets are built from its Host: a foreign one never gets that far.
        assert srv.services.manager.active("local") == 0
    # With keys, any name works (a key is needed whatever the name).
    with _server(llm, tmp_path / "k", keys=_keys()) as srv:
        assert httpx.get(srv.base_url + "/api/runs", headers={"Host": "llmi.example.org", **A}).status_code == 200
        assert httpx.get(srv.base_url + "/api/runs", headers={"Host": "llmi.example.org"}).status_code == 401


def test_cross_site_browser_requests_that_change_things_are_refused(llm, tmp_path):
    """Finding (medium): another site's page could POST to the keyless loopback server from the user's
    browser (a body-less POST such as cancel needs no preflight). Browsers say where a request comes from
    in Sec-Fetch-Site; cross-site and same-site (another port) writes are refused, reads are not."""
    with _server(llm, tmp_path) as srv:
        run = _finished_run(srv, {})
        for site in ("cross-site", "same-site"):
            for method, path, body in (("POST", "/api/runs", {"prompt": "x"}),
                                       ("POST", f"/api/runs/{run['id']}/cancel", None),
                                       ("DELETE", f"/api/runs/{run['id']}", None),
                                       ("POST", "/v1/chat/completions", {"model": "llmi", "messages": []})):
                r = httpx.request(method, srv.base_url + path, json=body, headers={"Sec-Fetch-Site": site})
                _is_error(r, 403, "cross_site_request")
        assert srv.services.store.get(run["id"]) is not None  # not deleted
        # Reads from other sites keep working: a chat front-end shows the signed images.
        slot = next(b for b in _done_document(srv, {}, run["id"])["blocks"] if b["type"] != "text")["url"]
        img = httpx.get(srv.base_url + slot, headers={"Sec-Fetch-Site": "cross-site"})
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        # The page itself (same-origin) and non-browser clients (no header) can write.
        ok = httpx.post(srv.base_url + "/api/runs", json={"prompt": "owls", "stream": True},
                        headers={"Sec-Fetch-Site": "same-origin"})
        assert ok.status_code == 200 and '"type": "done"' in ok.text


def test_forwarded_headers_do_not_bypass_limits(llm, tmp_path):
    """Checked, held: limits are per key (or the one local user), never per client address, so
    X-Forwarded-For / X-Real-IP from a loopback client change nothing."""
    with _server(llm, tmp_path, rate_per_minute=1, burst=2) as srv:
        codes = []
        for i in range(3):
            r = httpx.post(srv.base_url + "/api/render", json={"response": "hi"},
                           headers={"X-Forwarded-For": f"203.0.113.{i}", "X-Real-IP": f"198.51.100.{i}"})
            codes.append(r.status_code)
        assert codes == [201, 201, 429]


# ------------------------------------------------------------------------------------------------
# Keys and who reads what
# ------------------------------------------------------------------------------------------------


def test_key_lookup_takes_the_same_steps_for_any_key(monkeypatch):
    """Checked, held: a key is compared in constant time on its SHA-256 against every stored key, whether
    it matches the first, the last or none (no early exit that times out which prefix is right)."""
    import hmac

    from llmi.server import auth

    ring = KeyRing()
    for i in range(5):
        ring.add(f"sk-sec-key-{i}-0123456789", f"k{i}")
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((len(a), len(b))) or real(a, b))
    for key, ident in (("sk-sec-key-0-0123456789", "k0"), ("sk-sec-key-4-0123456789", "k4"), ("sk-nope-00000000", None),
                       ("x" * 10_000, None)):
        calls.clear()
        assert ring.identify(key) == ident
        assert calls == [(32, 32)] * 5


def test_keys_are_exact_and_never_echoed_or_logged(llm, tmp_path, caplog):
    for name in ("llmi", "uvicorn", "uvicorn.access", "uvicorn.error"):
        caplog.set_level(logging.DEBUG, logger=name)
    with _server(llm, tmp_path, keys=_keys()) as srv:
        url = srv.base_url + "/api/runs"
        wrong = [KEY_A[:-1], KEY_A + "x", KEY_A.upper(), " " + KEY_A[1:], KEY_A.replace("alpha", "alphb"), KEY_B[::-1]]
        for key in wrong:
            r = httpx.get(url, headers={"Authorization": f"Bearer {key}"})
            err = _is_error(r, 401, "invalid_api_key")
            assert key not in r.text and KEY_A not in r.text
        for header in (f"Basic {KEY_A}", f"Token {KEY_A}", KEY_A, "Bearer", f"Bearer{KEY_A}"):
            assert httpx.get(url, headers={"Authorization": header}).status_code == 401, header
        for query in (f"?api_key={KEY_A}", f"?key={KEY_A}", f"?token={KEY_A}"):
            assert httpx.get(url + query).status_code == 401
        assert httpx.get(url, headers={"Authorization": f"bearer   {KEY_A}"}).status_code == 200
        assert err["type"] == "invalid_request_error"
        c = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=KEY_A, max_retries=0)
        c.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "owls"}])
        listed = httpx.get(url, headers=A).text
        assert KEY_A not in listed and KEY_B not in listed
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert KEY_A not in logged and KEY_B not in logged
    for f in tmp_path.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert KEY_A.encode() not in data and KEY_B.encode() not in data, f


def test_one_key_cannot_reach_another_keys_runs(llm, tmp_path):
    """Checked, held: every per-run route answers 404 to another key (no existence leak) and 401 to no key;
    a signed link is the only way in without the owner's key."""
    with _server(llm, tmp_path, keys=_keys()) as srv:
        run = _finished_run(srv, A, images=[_b64png()])
        rid = run["id"]
        reads = [f"/api/runs/{rid}", f"/api/runs/{rid}/events", f"/api/runs/{rid}/fragment",
                 f"/api/runs/{rid}/slots/0", *[f"/api/runs/{rid}/document.{f}" for f in ("html", "md", "json", "zip")],
                 f"/images/{rid}/slot-0", f"/images/{rid}/input-0"]
        for path in reads:
            assert httpx.get(srv.base_url + path, headers=B).status_code == 404, path
            assert httpx.get(srv.base_url + path).status_code == 401, path
            assert httpx.get(srv.base_url + path, headers=A).status_code == 200, path
        for method, path in (("POST", f"/api/runs/{rid}/cancel"), ("DELETE", f"/api/runs/{rid}")):
            assert httpx.request(method, srv.base_url + path, headers=B).status_code == 404
        assert httpx.get(srv.base_url + "/api/runs", headers=B).json()["runs"] == []
        assert srv.services.store.get(rid) is not None
        # Guessing ids: other shapes are 404 before any lookup.
        for bad in ("..", "%2e%2e", "a" * 65, "x.y", "run id"):
            assert httpx.get(srv.base_url + f"/api/runs/{bad}/document.json", headers=A).status_code == 404


def test_an_image_link_opens_that_image_only(llm, tmp_path):
    """Finding (medium): image links were signed with the run's token, the same one that opens the run's
    document and the user's uploaded images. An image link travels (a chat front-end's page, a shared
    conversation), so one image URL gave away the whole answer and the user's photos. Image links now
    carry a signature of their own; the run's token still opens everything (links written before)."""
    with _server(llm, tmp_path, keys=_keys()) as srv:
        run = _finished_run(srv, A, images=[_b64png(12, 12)])
        rid, token = run["id"], run["token"]
        doc = _done_document(srv, A, rid)
        slot_url = next(b for b in doc["blocks"] if b["type"] != "text")["url"]
        input_url = doc["input_images"][0]["url"]
        image_sig = slot_url.split("sig=")[1]
        assert image_sig != token and input_url.split("sig=")[1] not in (token, image_sig)
        assert httpx.get(srv.base_url + slot_url).status_code == 200
        assert httpx.get(srv.base_url + input_url).status_code == 200
        for path in (f"/images/{rid}/input-0", f"/images/{rid}/slot-1", *[f"/api/runs/{rid}/document.{f}"
                                                                              for f in ("html", "md", "json", "zip")]):
            r = httpx.get(srv.base_url + path + f"?sig={image_sig}")
            _is_error(r, 403, "bad_signature")
        # The run's own token still opens its images (links written before image signatures).
        assert httpx.get(srv.base_url + f"/images/{rid}/slot-0?sig={token}").status_code == 200
        # A chat answer's links restore to tags with the new signatures (the model sees its own protocol).
        c = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=KEY_A, max_retries=0)
        first = c.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "owls"}])
        link_sig = first.choices[0].message.content.split("sig=")[1].split(")")[0]
        assert link_sig != first.model_extra["llmi"]["document"].split("sig=")[1]
        from llmi.server.openai_api import _restorer  # the unit the chat endpoint uses

        class _Req:
            app = srv.app

        restored = _restorer(_Req())(first.choices[0].message.content)
        assert "<imgen>" in restored and "/images/" not in restored
        assert srv.services.manager.image_token_ok(first.model_extra["llmi"]["run_id"], "slot-0", link_sig)


def test_forged_and_swapped_signatures_are_refused(llm, tmp_path):
    with _server(llm, tmp_path, keys=_keys()) as srv:
        one = _finished_run(srv, A)
        two = _finished_run(srv, B)
        for sig in (two["token"], "", "0" * 32, one["token"].upper(), one["token"][:31], one["token"] + "0", "%00"):
            r = httpx.get(srv.base_url + f"/api/runs/{one['id']}/document.json?sig={sig}")
            assert r.status_code == 403, sig
            r = httpx.get(srv.base_url + f"/images/{one['id']}/slot-0?sig={sig}")
            assert r.status_code == 403, sig
        # A wrong signature with another key's bearer falls back to ownership: still no access.
        assert httpx.get(srv.base_url + f"/api/runs/{one['id']}/document.json?sig={two['token']}",
                         headers=B).status_code == 404


# ------------------------------------------------------------------------------------------------
# Limits
# ------------------------------------------------------------------------------------------------


def test_concurrency_cap_holds_for_requests_that_arrive_together(llm, tmp_path):
    """Finding (medium): the cap on runs in progress was checked before the request's images were read
    and counted only once the run started, so requests arriving together all passed it (12 at once with a
    cap of 2 started 11 background runs). A place is now taken at admission."""
    png = _b64png(300, 300)
    with _server(llm, tmp_path, max_concurrent_runs=2, busy_retry_after_s=7) as srv:
        async def burst():
            async with httpx.AsyncClient(base_url=srv.base_url, timeout=30) as c:
                body = {"prompt": "slow", "images": [png], "options": {"background": True}}
                return await asyncio.gather(*[c.post("/api/runs", json=body) for _ in range(10)])

        answers = asyncio.run(burst())
        codes = sorted(r.status_code for r in answers)
        assert codes == [201, 201] + [429] * 8, codes
        busy = [r for r in answers if r.status_code == 429]
        assert all(r.headers["retry-after"] == "7" and r.json()["error"]["code"] == "too_many_runs" for r in busy)
        assert srv.services.manager.active("local") <= 2
        # A request refused after admission (a bad image) gives its place back.
        for r in answers:
            if r.status_code == 201:
                httpx.post(srv.base_url + f"/api/runs/{r.json()['id']}/cancel")
        assert srv.services.manager.active("local") == 0
        for _ in range(3):
            _is_error(httpx.post(srv.base_url + "/api/runs", json={"prompt": "x", "images": ["!!"]}), 400)
        assert srv.services.manager.active("local") == 0
        assert srv.services.manager._reserved == {}


def test_runs_that_never_end_are_bounded(llm, tmp_path):
    """Finding (medium): a run had no time limit and its event log no size limit, so a model that never
    stops (or a tool that never answers) in a background run grew memory until the process died."""
    with _server(llm, tmp_path, max_run_events=120) as srv:
        r = httpx.post(srv.base_url + "/api/runs", json={"prompt": "endless", "stream": True}, timeout=30)
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
        assert len(events) <= 122
        assert events[-1]["type"] == "error" and events[-1]["kind"] == "too_many_events"
        rid = events[0]["run_id"]
        deadline = time.monotonic() + 10
        while srv.services.store.get(rid).status == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.services.store.get(rid).status == "failed"
    with _server(llm, tmp_path / "t", max_run_s=0.4) as srv:
        run = _finished_run(srv, {}, prompt="slow")
        assert run["status"] == "cancelled" and "time limit" in run["error"]
        events = httpx.get(srv.base_url + f"/api/runs/{run['id']}/events").text
        assert '"kind": "time_limit"' in events


def test_render_and_reward_cap_the_tags_one_request_runs(llm, tmp_path):
    """Finding (medium): /api/render (and each /api/reward row) ran every tag of the text it was sent —
    a 200 000-character response is thousands of tool calls (paid image generation) for one request."""
    one = tag("search", "an owl", "owl")
    with _server(llm, tmp_path, max_tags=3) as srv:
        err = _is_error(httpx.post(srv.base_url + "/api/render", json={"response": one * 4}), 413, "too_many_tags")
        assert "4 image tags" in err["message"]
        assert httpx.post(srv.base_url + "/api/render", json={"response": one * 3}).status_code == 201
        row = {"prompt": "p", "response": one * 4, "image_num": 4, "tools": ["search"]}
        _is_error(httpx.post(srv.base_url + "/api/reward", json={"rows": [row]}), 413, "too_many_tags")


def test_reward_errors_are_answered_not_swallowed(llm, tmp_path):
    """Finding (low): an exception while scoring (judges asked for, no judge configured) was swallowed
    and answered 200 with no results."""
    row = {"prompt": "p", "response": "Owls.", "image_num": 0, "tools": []}
    with _server(llm, tmp_path) as srv:
        err = _is_error(httpx.post(srv.base_url + "/api/reward", json={"rows": [row], "judges": True}), 400,
                        "judges_unavailable")
        assert err["param"] == "judges"
        ok = httpx.post(srv.base_url + "/api/reward", json={"rows": [row, row]}, timeout=30)
        assert ok.status_code == 200 and len(ok.json()["results"]) == 2


def test_markdown_endpoint_has_its_own_rate(llm, tmp_path):
    """Finding (low): /api/markdown (CPU-bound: a 200 000-character text takes seconds) had no rate limit.
    It has its own bucket, ten times the work rate, so the page still converts every block."""
    with _server(llm, tmp_path, rate_per_minute=6, burst=1) as srv:
        codes = [httpx.post(srv.base_url + "/api/markdown", json={"text": "*hi*"}).status_code for _ in range(11)]
        assert codes == [200] * 10 + [429]
        r = httpx.post(srv.base_url + "/api/markdown", json={"text": "*hi*"})
        assert 1 <= int(r.headers["retry-after"]) <= 10


def test_body_limits_hold_against_lies_and_encodings(llm, tmp_path):
    with _server(llm, tmp_path, max_request_bytes=4096) as srv:
        # Announced too large: refused before a byte of the body is sent.
        head = (b"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 999999999\r\n\r\n")
        out = _raw(srv.base_url, head)
        assert out.startswith(b"HTTP/1.1 413") and b"request_too_large" in out
        # Announced small, more sent: the rest is not part of this body (the JSON is cut: 400), no crash.
        body = json.dumps({"prompt": "x" * 50}).encode()
        out = _raw(srv.base_url, b"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 10\r\nConnection: close\r\n\r\n" + body)
        assert out.startswith(b"HTTP/1.1 400")
        # Two Content-Length headers, or Content-Length with chunked: refused by the HTTP layer.
        out = _raw(srv.base_url, b"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
                   b"Content-Length: 99999\r\n\r\nhello")
        assert out.startswith(b"HTTP/1.1 400")
        # Chunked, no length: counted while read.
        big = json.dumps({"prompt": "y" * 8000}).encode()
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 1000]), big[i:i + 1000]) for i in range(0, len(big), 1000))
        out = _raw(srv.base_url, b"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 413")
        # Compressed bodies are not inflated (no gzip/deflate bomb): 400, never 500.
        bomb = gzip.compress(json.dumps({"prompt": "z" * 3_000_000}).encode())
        assert len(bomb) < 4096
        for encoding, data in (("gzip", bomb), ("deflate", zlib.compress(b'{"prompt": "hi"}'))):
            r = httpx.post(srv.base_url + "/api/runs", content=data,
                           headers={"Content-Type": "application/json", "Content-Encoding": encoding})
            _is_error(r, 400)
        assert httpx.get(srv.base_url + "/healthz").json() == {"status": "ok"}


def _bomb_png(width: int, height: int) -> str:
    """A PNG whose header claims ``width`` x ``height`` pixels, with almost no data (a decompression bomb
    is refused on its header, so the data never matters)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return base64.b64encode(data).decode()


def test_uploads_are_checked_by_content_size_and_count(llm, tmp_path):
    from PIL import Image

    def png_of(img) -> str:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    with _server(llm, tmp_path, max_images=3) as srv:
        url = srv.base_url + "/api/runs"
        # A decompression bomb (30000 x 30000 pixels in ~100 KB) and a 20000-pixel-wide strip: refused by
        # their header before decoding (the strip passed before: data uploads skipped max_width/max_height).
        for ref in (_bomb_png(30000, 30000), png_of(Image.new("RGB", (20000, 2)))):
            err = _is_error(httpx.post(url, json={"prompt": "x", "images": [ref]}), 413, "image_too_large")
            assert "too large" in err["message"]
        svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'
        for ref in (base64.b64encode(svg).decode(), "data:image/svg+xml;base64," + base64.b64encode(svg).decode(),
                    "data:text/html;base64," + base64.b64encode(b"<script>alert(1)</script>").decode(),
                    base64.b64encode(b"%PDF-1.4 not an image").decode()):
            _is_error(httpx.post(url, json={"prompt": "x", "images": [ref]}), 415)
        for ref in ("file:///etc/passwd", "/etc/passwd", "data:image/png,notbase64"):
            _is_error(httpx.post(url, json={"prompt": "x", "images": [ref]}), 400)
        # A polyglot (a real PNG with HTML after it) is accepted as the PNG it is, and served as one.
        poly = base64.b64encode(make_png(4, 4) + b"<html><script>alert(1)</script></html>").decode()
        run = _finished_run(srv, {}, images=[poly])
        doc = _done_document(srv, {}, run["id"])
        img = httpx.get(srv.base_url + doc["input_images"][0]["url"])
        assert img.headers["content-type"] == "image/png" and img.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in img.headers["content-security-policy"]
        # Many image parts in one chat: counted over the whole conversation.
        part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64png()}}
        msgs = [{"role": "user", "content": [part, part]}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "and"}, part, part]}]
        r = httpx.post(srv.base_url + "/v1/chat/completions", json={"model": "llmi", "messages": msgs})
        assert _is_error(r, 413, "too_many_images")


def test_image_urls_go_through_the_safe_fetcher(llm, tmp_path):
    """Checked, held: http image URLs to internal addresses are refused, and so is a redirect from an
    admitted address to one that is not."""
    inner_hits: list[str] = []

    def inner(req, h):
        inner_hits.append(req.path)
        send(h, 200, make_png(4, 4), "image/png")

    with loopback_server(inner) as inner_url:
        def outer(req, h):
            send(h, 302, b"", "text/plain", headers={"Location": inner_url + "/secret.png"})

        with loopback_server(outer) as outer_url:
            admitted = outer_url.removeprefix("http://")
            with _server(llm, tmp_path, fetch_allow=[admitted]) as srv:
                for url in (inner_url + "/x.png", "http://169.254.169.254/latest/meta-data/", "http://[::1]:1/x.png",
                            "http://0x7f000001/x.png", "http://localhost:1/x.png", outer_url + "/to-inner"):
                    body = {"model": "llmi", "messages": [{"role": "user", "content": [
                        {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": url}}]}]}
                    r = httpx.post(srv.base_url + "/v1/chat/completions", json=body, timeout=20)
                    err = _is_error(r, 400)
                    assert "refused" in err["message"] or "cannot fetch" in err["message"], err
                    r = httpx.post(srv.base_url + "/api/runs", json={"prompt": "x", "images": [url]}, timeout=20)
                    _is_error(r, 400)
    assert inner_hits == []


def test_a_follower_that_never_reads_holds_nothing_up(llm, tmp_path):
    """Checked, held: a follower that stops reading blocks only its own connection; the run goes on, is
    stored, and the server keeps answering (events live in one log per run, not per follower)."""
    with _server(llm, tmp_path, heartbeat_s=0.2) as srv:
        r = httpx.post(srv.base_url + "/api/runs", json={"prompt": "bulky", "options": {"background": True}})
        rid = r.json()["id"]
        host, port = srv.base_url.removeprefix("http://").split(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, int(port)))
        s.sendall(f"GET /api/runs/{rid}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        try:
            deadline = time.monotonic() + 20
            followed = 0
            while srv.services.store.get(rid).status == "running" and time.monotonic() < deadline:
                t0 = time.monotonic()
                assert httpx.get(srv.base_url + "/healthz", timeout=5).status_code == 200
                assert time.monotonic() - t0 < 2
                run = srv.services.manager.find(rid)
                followed = max(followed, run.followers if run is not None else 0)
                time.sleep(0.05)
            assert followed == 1  # it was following while the run went on
            assert srv.services.store.get(rid).status == "done"
            assert len(srv.services.manager.find(rid).events) > 150  # all of it, though the follower read little
        finally:
            s.close()


# ------------------------------------------------------------------------------------------------
# Headers, content types, files
# ------------------------------------------------------------------------------------------------


def test_every_response_has_nosniff_and_a_policy(llm, tmp_path, monkeypatch):
    with _server(llm, tmp_path, rate_per_minute=1, burst=1, max_request_bytes=2048) as srv:
        run = _finished_run(srv, {})
        links = run["links"]
        checks = {
            "/": ("text/html", "script-src 'self'"),
            "/static/app.js": ("text/javascript", "default-src 'none'"),
            "/static/style.css": ("text/css", "default-src 'none'"),
            "/static/document.css": ("text/css", "default-src 'none'"),
            links["html"]: ("text/html", "sandbox"),
            links["md"]: ("text/markdown", "default-src 'none'"),
            links["json"]: ("application/json", "default-src 'none'"),
            links["zip"]: ("application/zip", "default-src 'none'"),
            "/openapi.json": ("application/json", "default-src 'none'"),
            "/nope": ("application/json", "default-src 'none'"),
            "/static/../server.sqlite": ("application/json", "default-src 'none'"),
            f"/api/runs/{run['id']}/document.exe": ("application/json", "default-src 'none'"),
        }
        for path, (ctype, policy) in checks.items():
            r = httpx.get(srv.base_url + path)
            assert r.headers["content-type"].startswith(ctype), (path, r.headers["content-type"])
            assert r.headers["x-content-type-options"] == "nosniff", path
            assert policy in r.headers["content-security-policy"], path
            assert r.headers["referrer-policy"] == "no-referrer", path
        html = httpx.get(srv.base_url + links["html"])
        csp = html.headers["content-security-policy"]
        assert "script-src" not in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        for fmt in ("html", "md", "json"):
            d = httpx.get(srv.base_url + links[fmt] + "&download=1").headers["content-disposition"]
            assert d == f'attachment; filename="llmi-{run["id"]}.{fmt}"'
        # Error answers from every layer: 405, 413 (middleware), 429, 500.
        errors = [httpx.request("PUT", srv.base_url + "/api/runs"),
                  httpx.post(srv.base_url + "/api/runs", content=b"x" * 4000, headers={"Content-Type": "application/json"}),
                  httpx.post(srv.base_url + "/api/render", json={"response": "hi"})]
        assert [e.status_code for e in errors] == [405, 413, 429]

        def broken(*a, **k):
            raise RuntimeError("secret internal detail /work/data")

        monkeypatch.setattr(srv.services.store, "list", broken)
        errors.append(httpx.get(srv.base_url + "/api/runs"))
        for e in errors:
            assert e.headers["x-content-type-options"] == "nosniff" and "content-security-policy" in e.headers
            assert e.json()["error"]["message"]
        err = _is_error(errors[-1], 500, "internal_error")
        assert "secret" not in errors[-1].text and "Traceback" not in errors[-1].text
        assert err["type"] == "server_error"


def test_no_route_serves_the_data_folder(llm, tmp_path):
    with _server(llm, tmp_path) as srv:
        run = _finished_run(srv, {})
        secret = (tmp_path / "secret").read_bytes()
        paths = ["/secret", "/server.sqlite", "/runs", f"/runs/{run['id']}/document.json",
                 "/static/..%2fsecret", "/static/%2e%2e/%2e%2e/secret", "/static/..%5csecret", "/static/app.js%00.png",
                 f"/images/{run['id']}/..%2f..%2fsecret", f"/images/{run['id']}/slot-0.json",
                 f"/images/{run['id']}/events", f"/images/..%2F{run['id']}/slot-0",
                 f"/api/runs/{run['id']}%2f..%2f..%2fsecret/document.json",
                 f"/api/runs/{run['id']}/document.json/../../secret"]
        for path in paths:
            r = httpx.get(srv.base_url + path + f"?sig={run['token']}")
            assert r.status_code in (403, 404), (path, r.status_code)
            assert secret not in r.content and b"SQLite format" not in r.content
        raw = _raw(srv.base_url, b"GET /../../secret HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert b" 404 " in raw.split(b"\r\n")[0] and secret not in raw


def test_event_ids_from_clients_are_parsed_safely(llm, tmp_path):
    """Finding (low): a Last-Event-ID of 5000 digits, a non-ASCII digit or a negative number was a 500
    (int() overflow / ValueError) or a stream cut part-way (a negative index)."""
    with _server(llm, tmp_path) as srv:
        run = _finished_run(srv, {})
        whole = httpx.get(srv.base_url + f"/api/runs/{run['id']}/events").text
        assert whole.startswith("id: 0\n")
        for value in ("9" * 5000, "\u00b2".encode("latin-1"), "-99", "1e3", "0x10", "-", "-1"):
            r = httpx.get(srv.base_url + f"/api/runs/{run['id']}/events", headers={"Last-Event-ID": value})
            assert r.status_code == 200 and r.text == whole, value
        tail = httpx.get(srv.base_url + f"/api/runs/{run['id']}/events", headers={"Last-Event-ID": "2"}).text
        assert tail.startswith("id: 3\n") and whole.endswith(tail)
        far = httpx.get(srv.base_url + f"/api/runs/{run['id']}/events", headers={"Last-Event-ID": "999999999999"})
        assert far.status_code == 200 and far.text == ""


def test_signatures_are_kept_out_of_access_logs():
    """Finding (low): with -v, uvicorn's access log wrote every signed link's sig= (a key to the document)."""
    from llmi.server.app import RedactSignatures

    rec = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                            ("127.0.0.1:5", "GET", "/images/abc/slot-0?sig=0123abcd&x=1", "1.1", 200), None)
    assert RedactSignatures().filter(rec)
    assert "0123abcd" not in rec.getMessage() and "sig=-&x=1" in rec.getMessage()


def test_serve_limits_connections_and_redacts_logs(monkeypatch, tmp_path):
    """llmi serve hands uvicorn a connection cap ([server] max_connections) and the log filter."""
    import uvicorn
    from typer.testing import CliRunner

    from llmi.cli import app
    from llmi.server.app import RedactSignatures

    seen = {}

    def fake_run(self, sockets=None):
        seen["limit"] = self.config.limit_concurrency
        seen["filtered"] = any(isinstance(f, RedactSignatures) for f in logging.getLogger("uvicorn.access").filters)
        for s in sockets or ():
            seen["addr"] = s.getsockname()[0]
            s.close()

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.delenv("LLMI_SERVER_KEYS", raising=False)
    cfg = tmp_path / "llmi.toml"
    cfg.write_text("[server]\nmax_connections = 77\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["serve", "--config", str(cfg), "--port", "0", "--data-dir", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert seen == {"limit": 77, "filtered": True, "addr": "127.0.0.1"}
    # Addresses that are not loopback, however written, need keys.
    for host in ("", "0", "::ffff:127.0.0.1", "0.0.0.0"):
        assert check_bind(host, keys=KeyRing(), allow_no_auth=False), host
        r = CliRunner().invoke(app, ["serve", "--host", host, "--port", "0", "--data-dir", str(tmp_path / "d")])
        assert r.exit_code == 2 and "without API keys" in r.output, (host, r.output)


# ------------------------------------------------------------------------------------------------
# The OpenAI endpoint and malformed requests
# ------------------------------------------------------------------------------------------------


def test_openai_endpoint_answers_malformed_requests_in_its_error_shape(llm, tmp_path):
    """Finding (low): `tools` / `functions` were silently ignored (a client asking for a tool call got
    prose); now 400 unsupported_parameter. The rest held: every malformed body is a 4xx in the OpenAI
    error shape, never a 500."""
    user = [{"role": "user", "content": "owls"}]
    cases = [
        ({"model": "llmi", "messages": user, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({"model": "llmi", "messages": user, "functions": [{"name": "f", "parameters": {}}]}, 400, "functions"),
        ({"model": "llmi", "messages": user, "n": 2}, 400, "n"),
        ({"model": "llmi", "messages": user, "n": "two"}, 400, None),
        ({"model": "gpt-4o", "messages": user}, 404, None),
        ({"model": "llmi", "messages": "owls"}, 400, None),
        ({"model": "llmi"}, 400, None),
        ({"messages": user}, 400, None),
        ({"model": ["llmi"], "messages": user}, 400, None),
        ({"model": "llmi", "messages": [{"role": "user", "content": {"text": "x"}}]}, 400, None),
        ({"model": "llmi", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400, None),
        ({"model": "llmi", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, 400, None),
        ({"model": "llmi", "messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}, *user]}, 400, None),
        ({"model": "llmi", "messages": [{"role": "wizard", "content": "x"}]}, 400, None),
        ({"model": "llmi", "messages": [{"role": "assistant", "content": "x"}]}, 400, None),
        ({"model": "llmi", "messages": []}, 400, None),
        ({"model": "llmi", "messages": user, "temperature": 9}, 400, None),
        ({"model": "llmi", "messages": user, "max_tokens": -1}, 400, None),
        ({"model": "llmi", "messages": user, "stream": "yes please"}, 400, None),
        ({"model": "llmi", "messages": user, "llmi": {"unknown": 1}}, 400, None),
        ({"model": "llmi", "messages": [{"role": "user", "content": "x" * 10}] * 30000}, 413, None),
        ([1, 2, 3], 400, None),
        ("llmi", 400, None),
    ]
    with _server(llm, tmp_path) as srv:
        url = srv.base_url + "/v1/chat/completions"
        for body, status, param in cases:
            r = httpx.post(url, json=body, timeout=30)
            err = _is_error(r, status)
            if param:
                assert err["param"] == param and err["code"] == "unsupported_parameter", err
        for raw in (b"", b"{", b"\xff\xfe", b"null", b'{"model": "llmi", "messages": [' + b"[" * 5000 + b"]" * 5000 + b"]}"):
            r = httpx.post(url, content=raw, headers={"Content-Type": "application/json"})
            _is_error(r, 400)
        # The SDK sees typed errors with the messages.
        c = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="any", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="function calling"):
            c.chat.completions.create(model="llmi", messages=user,
                                      tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            c.chat.completions.create(model="gpt-4o", messages=user)
        # Explicitly no tool use, or an empty list: fine.
        ok = c.chat.completions.create(model="llmi", messages=user, tools=[{"type": "function", "function": {
            "name": "f", "parameters": {}}}], tool_choice="none")
        assert "Owls" in ok.choices[0].message.content
        assert "Owls" in c.chat.completions.create(model="llmi", messages=user, extra_body={"tools": []}).choices[0].message.content
        assert httpx.get(srv.base_url + "/v1/models/gpt-4o").json()["error"]["code"] == "model_not_found"


# ------------------------------------------------------------------------------------------------
# Rendered documents in a real browser
# ------------------------------------------------------------------------------------------------


@pytest.mark.browser
def test_served_documents_run_nothing_and_fetch_nothing_outside(browser, tmp_path):
    """Checked, held: the document download (HTML), opened as a page from the server's own origin, and the
    Markdown / JSON views of a hostile answer run no script and load nothing from elsewhere; .md and .json
    show as text, never as HTML."""
    from .helpers import Watch
    from .hostile import HOSTILE

    hits: list[str] = []

    def evil(req, h):
        hits.append(req.path)
        send(h, 200, b"<script>parent.__pwned=1</script>", "text/html")

    with loopback_server(evil) as evil_url:
        hostile = (f"# Hostile <script>window.__pwned=1</script>\n\n{HOSTILE}\n\n![t]({evil_url}/md.png) "
                   f"<img src=\"{evil_url}/raw.png\"> [x]({evil_url}/click) <style>body{{background:url({evil_url}/css)}}"
                   f"</style> [d](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==) "
                   f"<svg><image href=\"{evil_url}/svg\"/></svg> "
                   + tag("search", f"<img src={evil_url}/alt onerror=window.__pwned=2>", "owl") + " end.")
        with SSEServer(Script(content=split_every(hostile, 50))) as llm, _server(llm, tmp_path) as srv:
            run = _finished_run(srv, {}, prompt=f"<script>window.__pwned=3</script><img src={evil_url}/prompt>")
            page = browser.new_page()
            try:
                watch = Watch(page)
                for fmt in ("html", "md", "json"):
                    page.goto(srv.base_url + run["links"][fmt], wait_until="load")
                    page.wait_for_timeout(200)
                    assert page.evaluate("() => window.__pwned") is None, fmt
                    assert page.evaluate("() => document.querySelectorAll('script, iframe, object, svg').length") == 0
                    if fmt == "html":  # the document itself: its images are data: URIs, nothing else loads
                        assert page.locator("h1").count() >= 1
                    else:  # shown as text: the page holds no element the answer wrote
                        assert page.evaluate("() => document.querySelectorAll('img, a').length") == 0
                        assert "<script>" in page.inner_text("body")
                assert watch.dialogs == [] and watch.errors == []
                outside = [u for u in watch.requests if not u.startswith((srv.base_url, "data:"))]
                assert outside == []
            finally:
                page.close()
    assert hits == []


class _CliServer(LiveServer):
    """The app under uvicorn with the settings ``llmi serve`` gives it (:func:`llmi.cli.serve.uvicorn_config`)."""

    def __init__(self, app, server_settings):
        super().__init__(app)
        self.server_settings = server_settings

    def __enter__(self):
        import threading

        import uvicorn

        from llmi.cli.serve import uvicorn_config

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        config = uvicorn_config(self.app, self.server_settings)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except (TimeoutError, ConnectionResetError):
        return False


def test_connections_that_send_slowly_are_closed(llm, tmp_path):
    """Finding (medium): uvicorn keeps a connection that never sends a request (or sends its headers or
    body a byte at a time) open forever, so a few hundred such connections take every connection the
    server allows (slowloris). llmi serve's protocol gives each request a deadline to arrive in full;
    streamed answers are not limited by it."""
    settings = settings_for(llm.base_url, server={"request_timeout_s": 0.6, "rate_per_minute": 6000, "burst": 1000})
    app = create_app(settings, keys=KeyRing(), data_dir=tmp_path)
    with _CliServer(app, settings.server) as srv:
        host, port = srv.base_url.removeprefix("http://").split(":")
        idle = socket.create_connection((host, int(port)))
        partial = socket.create_connection((host, int(port)))
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        trickle = socket.create_connection((host, int(port)))
        trickle.sendall(b"POST /api/markdown HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{")
        t0 = time.monotonic()
        try:
            for s in (idle, partial, trickle):
                assert _closed_within(s, 5)
            assert time.monotonic() - t0 < 4
        finally:
            for s in (idle, partial, trickle):
                s.close()
        # Ordinary use is untouched: a kept-alive connection with pauses, and a stream longer than the deadline.
        with httpx.Client(base_url=srv.base_url) as c:
            assert c.get("/healthz").status_code == 200
            time.sleep(0.3)
            assert c.get("/healthz").status_code == 200
            t0 = time.monotonic()
            r = c.post("/api/runs", json={"prompt": "slow", "stream": True}, timeout=30)
            assert r.status_code == 200 and '"type": "done"' in r.text
            assert time.monotonic() - t0 > 0.6


def test_the_data_folder_is_private(llm, tmp_path):
    """Finding (low): the data folder and its index (every prompt, title and owner) were created with the
    umask's mode (0755 / 0644 here), readable by every local user; now 0700 / 0600."""
    import stat

    root = tmp_path / "data"
    with _server(llm, root) as srv:
        _finished_run(srv, {}, images=[_b64png()])
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(root) == 0o700 and mode(root / "runs") == 0o700
    for name in ("server.sqlite", "secret"):
        assert mode(root / name) == 0o600, name
    for f in (root / "runs").rglob("*"):
        if f.is_file():
            assert mode(f) & 0o077 == 0, f


def test_test_time_scaling_candidates_are_capped(llm, tmp_path):
    """Finding (low): a request could ask for 64 test-time-scaling candidates (64 LLM streams and their
    tools) in one run's place; [server] max_tts_n bounds what a request may ask for."""
    from llmi.server.runs import _tts_available

    if not _tts_available():
        pytest.skip("llmi.tts is not installed")
    with _server(llm, tmp_path, max_tts_n=4) as srv:
        err = _is_error(httpx.post(srv.base_url + "/api/runs", json={"prompt": "x", "options": {"tts": {"n": 5}}}),
                        400, "too_many_candidates")
        assert "at most 4" in err["message"]
        r = httpx.post(srv.base_url + "/v1/chat/completions", json={
            "model": "llmi", "messages": [{"role": "user", "content": "x"}], "llmi": {"tts": {"n": 64}}})
        _is_error(r, 400, "too_many_candidates")
        assert srv.services.manager.active("local") == 0


def test_finished_runs_leave_memory_by_size_and_stored_images_are_not_decoded(llm, tmp_path, monkeypatch):
    """Finding (medium): the last 64 finished runs stayed in memory with all their images (8 uploads of
    16 MiB each allowed per run: gigabytes), and each request for a stored run's input image decoded every
    input of that run (seconds of CPU per request, for anyone holding one image link). Now a byte budget
    ([server] keep_in_memory_mb) applies, a run leaves memory only once stored, and stored inputs are
    served as their files."""
    big = _b64png(300, 300)
    with _server(llm, tmp_path, keep_in_memory_mb=0.001) as srv:
        run = _finished_run(srv, {}, images=[big, big])
        deadline = time.monotonic() + 5
        while srv.services.manager.find(run["id"]) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.services.manager.find(run["id"]) is None  # 2 x 300x300 images > 1 KB: gone from memory
        doc = _done_document(srv, {}, run["id"])

        def no_decode(*a, **k):
            raise AssertionError("a stored image was decoded to be served")

        monkeypatch.setattr(srv.services.store, "load_inputs", no_decode)
        monkeypatch.setattr(srv.services.store, "load_document", no_decode)
        for url in [im["url"] for im in doc["input_images"]]:
            r = httpx.get(srv.base_url + url)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert r.content == base64.b64decode(big)
        r = httpx.get(srv.base_url + doc["input_images"][0]["url"].replace("input-0", "input-7"))
        assert r.status_code in (403, 404)
    with _server(llm, tmp_path / "roomy") as srv:
        run = _finished_run(srv, {}, images=[big])
        time.sleep(0.2)
        assert srv.services.manager.find(run["id"]) is not None  # within the default budget: kept


def test_a_deleted_run_stays_deleted(llm, tmp_path):
    """Finding (medium): deleting a run in progress cancelled it and removed its files, but the save that
    follows every run's end then wrote them back — the index row, the document, the user's images (9 of
    10 runs deleted this way came back in the list)."""
    png = _b64png(200, 200)
    with _server(llm, tmp_path) as srv:
        ids = []
        for _ in range(4):
            r = httpx.post(srv.base_url + "/api/runs", json={"prompt": "slow", "images": [png, png],
                                                             "options": {"background": True}})
            ids.append(r.json()["id"])
        time.sleep(0.15)
        for rid in ids:
            assert httpx.delete(srv.base_url + f"/api/runs/{rid}").status_code == 204
        time.sleep(0.5)  # any save still under way would have written by now
        assert [x["id"] for x in httpx.get(srv.base_url + "/api/runs").json()["runs"]] == []
        for rid in ids:
            assert srv.services.store.get(rid) is None and not (tmp_path / "runs" / rid).exists()
            assert httpx.get(srv.base_url + f"/api/runs/{rid}").status_code == 404


def test_the_llm_key_never_reaches_clients_or_files(tmp_path):
    """Checked, held: an upstream LLM that echoes the server's own LLM key in its error gets it masked
    before the message reaches a chat client, the event stream or the stored run."""
    from llmi.config import Settings

    secret = "sk-proj-UPSTREAMSECRET0123456789abcdef"
    body = {"error": {"message": f"Incorrect API key provided: {secret}. Bearer {secret}", "type": "x",
                      "code": "invalid_api_key"}}
    with SSEServer(Script(status=401, error_body=body)) as llm:
        base = settings_for(llm.base_url).model_dump()
        settings = Settings.model_validate({**base, "llm": {**base["llm"], "api_key": secret}})
        with LiveServer(create_app(settings, keys=KeyRing(), data_dir=tmp_path)) as srv:
            r = httpx.post(srv.base_url + "/v1/chat/completions", timeout=30,
                           json={"model": "llmi", "messages": [{"role": "user", "content": "hi"}]})
            err = _is_error(r, 502)
            assert "refused the API key" in err["message"] and secret not in r.text
            r = httpx.post(srv.base_url + "/api/runs", json={"prompt": "hi", "stream": True}, timeout=30)
            assert '"type": "error"' in r.text and secret not in r.text
    assert not any(secret.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_slot_numbers_are_bounded(llm, tmp_path):
    """Finding (low): /api/runs/{id}/slots/-1 answered the last slot (a negative index into the list)."""
    with _server(llm, tmp_path) as srv:
        run = _finished_run(srv, {})
        assert httpx.get(srv.base_url + f"/api/runs/{run['id']}/slots/0").status_code == 200
        for n in ("-1", "-2", "1000000", "99999999999999999999999", "1e3"):
            _is_error(httpx.get(srv.base_url + f"/api/runs/{run['id']}/slots/{n}"), 400)
        _is_error(httpx.get(srv.base_url + f"/api/runs/{run['id']}/slots/5"), 404, "not_found")
