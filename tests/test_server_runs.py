"""The native /api endpoints against a running server: runs and their server-sent events (the JSON form
of the one event stream), documents in every format, render, reward, the store across a restart, and
cancellation when the client goes away (tool calls freed) unless the run is a background one."""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from llmi.server import create_app  # noqa: E402

from . import fakes  # noqa: E402
from .helpers import make_png  # noqa: E402
from .server_support import LiveServer, settings_for, tag  # noqa: E402
from .sse_server import Script, SSEServer, split_every  # noqa: E402

ANSWER = ("# Owls\n\nOwls hunt at night. " + tag("search", "A barn owl", "barn owl")
          + "\n\nSightings per year:\n\n" + tag("code", "Owl sightings", "plt.bar([1], [2])") + "\n\nThe end.")


def _script(n: int, body: dict) -> Script:
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
    if "long" in text:  # a long answer: the client has time to leave
        return Script(content=split_every(ANSWER, 10), delay_s=0.05)
    return Script(content=split_every(ANSWER, 10))


@pytest.fixture(scope="module")
def llm():
    with SSEServer(_script) as srv:
        yield srv


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("server-data")


def _app(llm, data_dir, *, delay=0.05):
    settings = settings_for(llm.base_url, delay=delay, server={"rate_per_minute": 6000, "burst": 1000,
                                                              "max_concurrent_runs": 16})
    return create_app(settings, data_dir=data_dir)


@pytest.fixture(scope="module")
def server(llm, data_dir):
    with LiveServer(_app(llm, data_dir)) as srv:
        yield srv


def sse_events(response: httpx.Response):
    """Parse server-sent events: yields (id, event, data dict)."""
    ident = event = None
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield ident, event, json.loads("\n".join(data))
            ident = event = None
            data = []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                ident = value
            elif field == "event":
                event = value
            elif field == "data":
                data.append(value)


def _run_stream(base, body):
    events = []
    with httpx.stream("POST", base + "/api/runs", json={**body, "stream": True}, timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for ident, name, data in sse_events(r):
            assert name == data["type"]
            events.append((int(ident), data))
    return events


def test_a_run_streams_the_one_event_stream_as_json(server):
    events = _run_stream(server.base_url, {"prompt": "owls"})
    types = [d["type"] for _, d in events]
    assert types[0] == "run_started" and types[-1] == "done"
    assert {"text", "tool_started", "tool_finished", "usage"} <= set(types)
    assert [i for i, _ in events] == list(range(len(events)))  # ids are the positions in the log
    run_id = events[0][1]["run_id"]
    assert all(d["run_id"] == run_id for _, d in events)
    finished = [d for _, d in events if d["type"] == "tool_finished"]
    assert sorted(d["index"] for d in finished) == [0, 1]
    for d in finished:  # images as signed links, never base64 in the stream
        assert "data_base64" not in d["block"] and d["block"]["url"].startswith(f"/images/{run_id}/slot-")
        img = httpx.get(server.base_url + d["block"]["url"], timeout=10)
        assert img.status_code == 200 and img.content.startswith(b"\x89PNG")
    doc = events[-1][1]["document"]
    assert [b["type"] for b in doc["blocks"]] == ["text", "image", "text", "image", "text"]
    assert all("data_base64" not in b for b in doc["blocks"])
    usage = next(d for _, d in events if d["type"] == "usage")
    assert usage["usage"]["prompt_tokens"] == 9 and usage["finish_reason"] == "stop"
    # the text events put together are the document's text
    assert "".join(d["text"] for _, d in events if d["type"] == "text") == "".join(
        b["text"] for b in doc["blocks"] if b["type"] == "text")


def test_follow_a_run_and_resume_with_last_event_id(server):
    r = httpx.post(server.base_url + "/api/runs", json={"prompt": "owls", "options": {"background": True}}, timeout=10)
    assert r.status_code == 201
    info = r.json()
    assert info["status"] == "running" and r.headers["location"] == f"/api/runs/{info['id']}"
    with httpx.stream("GET", server.base_url + info["links"]["events"], timeout=30) as s:
        all_events = [(int(i), d) for i, _, d in sse_events(s)]
    assert all_events[-1][1]["type"] == "done"
    cut = len(all_events) // 2
    with httpx.stream("GET", server.base_url + info["links"]["events"], headers={"Last-Event-ID": str(cut)},
                      timeout=30) as s:
        rest = [(int(i), d) for i, _, d in sse_events(s)]
    assert rest == all_events[cut + 1:]
    got = httpx.get(server.base_url + f"/api/runs/{info['id']}", timeout=10).json()
    assert got["status"] == "done" and got["n_images"] == 2 and got["title"] == "Owls"


def test_documents_in_every_format(server):
    events = _run_stream(server.base_url, {"prompt": "owls"})
    run_id = events[0][1]["run_id"]
    info = httpx.get(server.base_url + f"/api/runs/{run_id}", timeout=10).json()
    links = info["links"]
    html = httpx.get(server.base_url + links["html"] + "&download=1", timeout=10)
    assert html.status_code == 200 and "attachment" in html.headers["content-disposition"]
    assert html.headers["content-security-policy"].startswith("default-src 'none'")
    assert html.text.count("data:image/png;base64,") == 2 and "Owls hunt at night" in html.text
    md = httpx.get(server.base_url + links["md"], timeout=10).text
    assert md.count(f"/images/{run_id}/slot-") == 2 and "# Owls" in md
    z = zipfile.ZipFile(io.BytesIO(httpx.get(server.base_url + links["zip"], timeout=10).content))
    names = z.namelist()
    assert f"llmi-{run_id}.md" in names and sum(n.endswith(".png") for n in names) == 2
    doc = httpx.get(server.base_url + links["json"], timeout=10).json()
    assert sum(1 for b in doc["blocks"] if b.get("data_base64")) == 2  # the lossless contract
    frag = httpx.get(server.base_url + f"/api/runs/{run_id}/fragment", timeout=10).json()["html"]
    assert frag.startswith('<article class="llmi-document">') and frag.count(f'src="/images/{run_id}/slot-') == 2
    # A bad signature is refused; no signature and no key (none configured): the owner "local" reads it.
    assert httpx.get(server.base_url + f"/api/runs/{run_id}/document.html?sig=00", timeout=10).status_code == 403
    assert httpx.get(server.base_url + f"/images/{run_id}/slot-0?sig=00", timeout=10).status_code == 403
    assert httpx.get(server.base_url + f"/images/{run_id}/slot-9?sig={info['token']}", timeout=10).status_code == 404


def test_render_an_already_written_response_with_user_images(server):
    png = base64.b64encode(make_png(40, 30)).decode()
    response = "Before. " + tag("search", "a cat", "cat") + " After."
    r = httpx.post(server.base_url + "/api/render", json={"response": response, "images": [png], "stream": True},
                   timeout=30)
    events = [d for _, _, d in sse_events(r)]
    assert events[-1]["type"] == "done"
    doc = events[-1]["document"]
    assert [b["type"] for b in doc["blocks"]] == ["text", "image", "text"]
    assert doc["input_images"][0]["width"] == 40
    img = httpx.get(server.base_url + doc["input_images"][0]["url"], timeout=10)
    assert img.status_code == 200 and img.content == base64.b64decode(png)
    html = httpx.post(server.base_url + "/api/markdown", json={"text": "**x** <script>alert(1)</script>"}).json()["html"]
    assert "<strong>x</strong>" in html and "<script" not in html


def test_reward_scores_rows(server):
    rows = [{"prompt": "owls", "response": ANSWER, "image_num": 2, "tools": ["search", "code"]},
            {"prompt": "owls", "response": "no images", "image_num": 2, "tools": []},
            {"prompt": "owls"}]
    r = httpx.post(server.base_url + "/api/reward", json={"rows": rows, "judges": False}, timeout=30)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 3
    assert res[0]["s_num"] == 1.0 and res[1]["s_num"] < 1.0
    assert "input" in res[2]["errors"]
    bad = httpx.post(server.base_url + "/api/reward", json={"rows": [{"prompt": "p", "response": "r", "image_num": 0,
                                                                      "tools": [], "images": ["/etc/passwd"]}]})
    assert bad.status_code == 400 and "data: URIs" in bad.json()["error"]["message"]


def _wait(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_a_client_that_disconnects_cancels_the_run_and_frees_its_tool_calls(llm, tmp_path):
    with LiveServer(_app(llm, tmp_path, delay=20.0)) as srv:
        fakes.RECORD.running = 0
        with httpx.stream("POST", srv.base_url + "/api/runs", json={"prompt": "long owls", "stream": True},
                          timeout=30) as r:
            for _, _, d in sse_events(r):
                if d["type"] == "tool_started":
                    run_id = d["run_id"]
                    break
        # The client is gone: the run is cancelled at once, its tool call (20 s) with it.
        assert _wait(lambda: fakes.RECORD.running == 0, 5), fakes.RECORD.running
        assert _wait(lambda: srv.services.manager.find(run_id).status == "cancelled", 5)
        rec = srv.services.store.get(run_id)
        assert _wait(lambda: srv.services.store.get(run_id).status == "cancelled", 5), rec
        # The SDK path: a streamed chat completion closed early does the same.
        import openai

        c = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", max_retries=0)
        stream = c.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "long owls"}],
                                           stream=True)
        for chunk in stream:
            if chunk.choices and "/images/" in (chunk.choices[0].delta.content or ""):
                break
        assert fakes.RECORD.running >= 1
        stream.close()
        assert _wait(lambda: fakes.RECORD.running == 0, 5), fakes.RECORD.running
        c.close()
        # A non-streamed request whose client gives up waiting is cancelled too.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.base_url + "/v1/chat/completions", timeout=1.5,
                       json={"model": "llmi", "messages": [{"role": "user", "content": "long owls"}]})
        assert _wait(lambda: fakes.RECORD.running == 0, 5), fakes.RECORD.running
        assert all(r.status == "cancelled" for r in srv.services.manager._recent.values())


def test_a_background_run_survives_its_client_and_a_restart_keeps_documents(llm, tmp_path):
    with LiveServer(_app(llm, tmp_path, delay=0.3)) as srv:
        with httpx.stream("POST", srv.base_url + "/api/runs",
                          json={"prompt": "owls", "stream": True, "options": {"background": True}}, timeout=30) as r:
            for _, _, d in sse_events(r):
                run_id = d["run_id"]
                break
        run = srv.services.manager.find(run_id)
        assert _wait(lambda: run.finished, 10) and run.status == "done"
        # A non-background run nobody follows is cancelled after the grace period (0.5 s here).
        orphan = httpx.post(srv.base_url + "/api/runs", json={"prompt": "long owls"}, timeout=10).json()
        assert _wait(lambda: srv.services.manager.find(orphan["id"]).status == "cancelled", 5)
        token = run.token
        assert _wait(lambda: srv.services.store.get(run_id).status == "done", 5)
    # A new server on the same data folder: the document, its images and its events are there.
    with LiveServer(_app(llm, tmp_path)) as srv:
        runs = httpx.get(srv.base_url + "/api/runs", timeout=10).json()["runs"]
        assert {r["id"]: r["status"] for r in runs}[run_id] == "done"
        img = httpx.get(srv.base_url + f"/images/{run_id}/slot-1?sig={token}", timeout=10)
        assert img.status_code == 200 and img.content.startswith(b"\x89PNG")
        html = httpx.get(srv.base_url + f"/api/runs/{run_id}/document.html?sig={token}", timeout=10)
        assert html.status_code == 200 and html.text.count("data:image/png;base64,") == 2
        with httpx.stream("GET", srv.base_url + f"/api/runs/{run_id}/events", timeout=10) as s:
            replay = [d["type"] for _, _, d in sse_events(s)]
        assert replay[0] == "run_started" and replay[-1] == "done"
        # An answer from before the restart, sent back as history, reaches the model as its tags again.
        link = f"![A barn owl]({srv.base_url}/images/{run_id}/slot-0?sig={token})"
        r = httpx.post(srv.base_url + "/v1/chat/completions", timeout=30, json={"model": "llmi", "messages": [
            {"role": "user", "content": "owls"}, {"role": "assistant", "content": f"Owls.\n\n{link}\n\nBye."},
            {"role": "user", "content": "more"}]})
        assert r.status_code == 200
        assistant = llm.requests[-1]["messages"][2]["content"]
        assert assistant.startswith("Owls.") and '"query": "barn owl"' in assistant and "/images/" not in assistant


def test_a_run_cut_by_a_restart_is_marked_interrupted(tmp_path):
    from llmi.server.store import RunRecord, Store

    store = Store(tmp_path)
    store.put(RunRecord(id="abc123", owner="local", kind="generate", status="running", created=time.time()))
    assert store.mark_interrupted() == 1
    assert store.get("abc123").status == "interrupted"
    store.close()


def test_tts_option_is_refused_clearly_when_unavailable(server, monkeypatch):
    from llmi.server import runs

    monkeypatch.setattr(runs, "_tts_available", lambda: False)
    r = httpx.post(server.base_url + "/api/runs", json={"prompt": "owls", "options": {"tts": True}}, timeout=10)
    assert r.status_code == 400 and "test-time scaling" in r.json()["error"]["message"]


def test_cancel_and_delete(server):
    info = httpx.post(server.base_url + "/api/runs", json={"prompt": "long owls", "options": {"background": True}},
                      timeout=10).json()
    got = httpx.post(server.base_url + f"/api/runs/{info['id']}/cancel", timeout=10).json()
    assert got["status"] == "cancelled"
    assert httpx.delete(server.base_url + f"/api/runs/{info['id']}", timeout=10).status_code == 204
    assert httpx.get(server.base_url + f"/api/runs/{info['id']}", timeout=10).status_code == 404


def test_a_run_with_test_time_scaling_reports_its_stages(server):
    from llmi.server import runs

    if not runs._tts_available():
        pytest.skip("llmi.tts has no pipeline in this build")
    events = _run_stream(server.base_url, {"prompt": "owls", "options": {"tts": {"n": 2, "stages": "sample,check"}}})
    types = [d["type"] for _, d in events]
    assert "stage" in types and types[-1] == "done", types
    stages = {d["name"] for _, d in events if d["type"] == "stage"}
    assert {"sample", "check"} <= stages
    run_id = events[0][1]["run_id"]
    assert all(d["run_id"] == run_id for _, d in events)
    doc = events[-1][1]["document"]
    assert sum(b["type"] == "image" for b in doc["blocks"]) == 2
    info = httpx.get(server.base_url + f"/api/runs/{run_id}", timeout=10).json()
    assert info["kind"] == "tts" and info["status"] == "done"
    bad = httpx.post(server.base_url + "/api/runs", json={"prompt": "owls", "options": {"tts": {"nn": 2}}})
    assert bad.status_code == 400
