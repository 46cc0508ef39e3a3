"""`llmi serve`'s /v1 endpoint driven by the real `openai` SDK against a running server (uvicorn on a
loopback port), whose LLM is the loopback OpenAI-compatible server of tests/sse_server.py and whose tools
are the fake backends of tests/fakes.py."""

from __future__ import annotations

import base64
import re
import time

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from llmi.server import create_app  # noqa: E402

from .helpers import loopback_server, make_png, send  # noqa: E402
from .server_support import LiveServer, settings_for, tag  # noqa: E402
from .sse_server import Script, SSEServer, split_every  # noqa: E402

ANSWER = (
    "# Foxes\n\nThe red fox is the largest of the true foxes. "
    + tag("search", "A red fox in the snow", "red fox")
    + "\n\nTheir numbers over time:\n\n"
    + tag("code", "Fox population 2015-2024", "plt.plot([1, 2, 3])")
    + "\n\nThat is all."
)
FAILING = "Here is a picture. " + tag("diffusion", "a [tricky] fox", "FAIL a fox") + " The end."


def _prompt(body: dict) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content


def _script(n: int, body: dict) -> Script:
    p = _prompt(body)
    if "slow" in p:
        return Script(content=split_every(ANSWER, 6), delay_s=0.03)
    if "fail" in p:
        return Script(content=split_every(FAILING, 8))
    if "plain" in p:
        return Script(content=["Just ", "text."])
    if "cut" in p:
        return Script(content=split_every(ANSWER, 9), fail_after=4)
    return Script(content=split_every(ANSWER, 9), delay_s=0.002)


@pytest.fixture(scope="module")
def llm():
    with SSEServer(_script) as srv:
        yield srv


@pytest.fixture(scope="module")
def server(llm, tmp_path_factory):
    from tests import fakes

    settings = settings_for(llm.base_url, delay=0.05, fetch_allow=["127.0.0.1"],
                            server={"rate_per_minute": 6000, "burst": 1000, "max_concurrent_runs": 16})
    # A diffusion prompt starting with FAIL fails (the fake reads its own option; one backend per tool).
    fakes.register_all()
    app = create_app(settings, data_dir=tmp_path_factory.mktemp("server-data"))
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture
def client(server):
    c = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=30)
    yield c
    c.close()


def _links(content: str) -> list[tuple[str, str]]:
    return re.findall(r"!\[((?:[^\]\\]|\\.)*)\]\((http[^)\s]+)\)", content)


def test_models_lists_llmi(client):
    assert [m.id for m in client.models.list().data] == ["llmi"]


def test_streaming_text_arrives_as_it_streams(client, llm):
    t0 = time.perf_counter()
    stream = client.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "slow foxes"}],
                                            stream=True, stream_options={"include_usage": True})
    arrivals: list[tuple[float, str]] = []
    usage = None
    finish = None
    for chunk in stream:
        if chunk.choices:
            if chunk.choices[0].delta.content:
                arrivals.append((time.perf_counter() - t0, chunk.choices[0].delta.content))
            finish = chunk.choices[0].finish_reason or finish
        elif chunk.usage is not None:
            usage = chunk.usage
    content = "".join(t for _, t in arrivals)
    # The LLM takes ~len(ANSWER)/6 * 30 ms to write; the first text came long before the end.
    total = arrivals[-1][0]
    assert total > 0.6
    assert arrivals[0][0] < total / 3, arrivals[:3]
    assert len(arrivals) >= 15
    assert content.startswith("# Foxes\n\nThe red fox")
    assert "<imgen>" not in content
    links = _links(content)
    assert [alt for alt, _ in links] == ["A red fox in the snow", "Fox population 2015-2024"]
    assert finish == "stop"
    assert usage is not None and usage.prompt_tokens == 9 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The image link was sent when its tag closed: before the text after the tag.
    def seen(text: str) -> float:
        so_far = ""
        for t, piece in arrivals:
            so_far += piece
            if text in so_far:
                return t
        raise AssertionError(f"{text!r} never arrived")

    assert seen("/images/") < seen("Their numbers") < seen("That is all")
    # ... and each link answers with the image.
    for _, url in links:
        r = httpx.get(url, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content.startswith(b"\x89PNG")
    # llmi's system prompt went to the LLM, followed by the user's message.
    sent = llm.requests[-1]["messages"]
    assert sent[0]["role"] == "system" and "<imgen>" in sent[0]["content"]
    assert _prompt({"messages": sent}) .endswith("slow foxes")


def test_non_streaming_answer_with_usage_and_images(client):
    r = client.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "foxes"}])
    msg = r.choices[0].message
    assert r.model == "llmi" and r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.prompt_tokens == 9 and r.usage.completion_tokens > 0
    links = _links(msg.content)
    assert len(links) == 2
    sizes = set()
    for _, url in links:
        got = httpx.get(url, timeout=10)
        assert got.status_code == 200 and got.content.startswith(b"\x89PNG")
        sizes.add(got.content)
    assert len(sizes) == 2  # two different images
    extra = r.model_extra["llmi"]
    assert extra["status"] == "done" and r.id == f"chatcmpl-{extra['run_id']}"
    html = httpx.get(extra["document"], timeout=10)
    assert html.status_code == 200 and "Content-Security-Policy" in html.text and "data:image/png;base64," in html.text


def test_a_failed_tool_gives_an_image_stating_the_reason(server, client):
    from tests import fakes

    svc = server.services
    fake = svc.engine.backend("diffusion", "fake")
    old = fake.options
    fake.options = old.model_copy(update={"fail_kind": "permanent"})
    try:
        r = client.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "fail please"}])
    finally:
        fake.options = old
    (alt, url), = _links(r.choices[0].message.content)
    assert alt.startswith("Image failed (diffusion):") and "refused" in alt
    img = httpx.get(url, timeout=10)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.headers["x-llmi-failure"] == "no_result"
    from PIL import Image
    import io

    with Image.open(io.BytesIO(img.content)) as im:
        assert im.width == 480 and im.height > 40
    assert fakes.RECORD.calls  # the fake was really asked


def test_plain_text_answer_has_no_links(client):
    r = client.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "plain"}])
    assert r.choices[0].message.content == "Just text."


def test_data_uri_and_http_images_become_input_images(client, llm, server):
    png = make_png(32, 24, (10, 200, 10))
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    other = make_png(20, 20, (200, 10, 10))

    def handle(req, h):
        send(h, 200, other, "image/png")

    with loopback_server(handle) as url:
        r = client.chat.completions.create(model="llmi", messages=[{"role": "user", "content": [
            {"type": "text", "text": "plain, with images"},
            {"type": "image_url", "image_url": {"url": data_uri}},
            {"type": "image_url", "image_url": {"url": url + "/pic.png"}},
        ]}])
    assert r.choices[0].message.content == "Just text."
    run_id = r.model_extra["llmi"]["run_id"]
    run = server.services.manager.find(run_id)
    assert [(im.width, im.height) for im in run.input_images] == [(32, 24), (20, 20)]
    # The LLM saw both images (the openai backend sends image parts) and was told their indices.
    parts = llm.requests[-1]["messages"][-1]["content"]
    assert sum(1 for p in parts if p.get("type") == "image_url") == 2
    assert "0" in _prompt(llm.requests[-1])


def test_an_internal_image_url_is_refused_by_the_safe_fetcher(llm, tmp_path):
    settings = settings_for(llm.base_url)  # no [fetch] allow: loopback is internal
    app = create_app(settings, data_dir=tmp_path)
    with LiveServer(app) as srv:
        c = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model="llmi", messages=[{"role": "user", "content": [
                {"type": "text", "text": "plain"},
                {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}])
        assert "loopback" in str(err.value) and "allow" in str(err.value)


def test_earlier_answers_go_back_to_the_model_as_tags(client, llm):
    first = client.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "foxes"}])
    answer = first.choices[0].message.content
    client.chat.completions.create(model="llmi", messages=[
        {"role": "user", "content": "foxes"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "plain follow-up"},
    ])
    sent = llm.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assistant = sent[2]["content"]
    assert "/images/" not in assistant
    assert '<imgen>{"source": "search", "description": "A red fox in the snow", "params": {"query": "red fox"}}</imgen>' in assistant
    # A client's own system message is added after llmi's prompt.
    client.chat.completions.create(model="llmi", messages=[
        {"role": "system", "content": "Answer like a pirate."}, {"role": "user", "content": "plain"}])
    system = llm.requests[-1]["messages"][0]["content"]
    assert "<imgen>" in system and system.rstrip().endswith("Answer like a pirate.")


def test_sampling_reaches_the_llm(client, llm):
    client.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "plain"}],
                                   temperature=0.2, top_p=0.5, max_tokens=77, seed=5)
    body = llm.requests[-1]
    assert body.get("temperature") == 0.2 and body.get("top_p") == 0.5 and body.get("seed") == 5
    assert 77 in (body.get("max_tokens"), body.get("max_completion_tokens"))


def test_wrong_model_and_bad_requests(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="last message"):
        client.chat.completions.create(model="llmi", messages=[{"role": "assistant", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "x"}], n=2)


def test_an_unreachable_llm_is_a_502_with_the_reason(tmp_path):
    settings = settings_for("http://127.0.0.1:9/v1")
    app = create_app(settings, data_dir=tmp_path)
    with LiveServer(app) as srv:
        c = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", max_retries=0)
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as err:
                r = c.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "x"}], stream=stream)
                list(r) if stream else None
            assert err.value.status_code == 502
            assert "127.0.0.1:9" in str(err.value)


def test_an_llm_that_fails_part_way_ends_the_stream_with_an_error(client, server):
    stream = client.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "cut short"}],
                                            stream=True)
    got = []
    with pytest.raises(openai.APIError, match="CUDA out of memory"):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert "".join(got).startswith("# Foxes")
    r = client.chat.completions.create(model="llmi", messages=[{"role": "user", "content": "cut short"}])
    assert r.choices[0].finish_reason == "error" and r.choices[0].message.content.startswith("# Foxes")
    assert r.model_extra["llmi"]["status"] == "failed" and "CUDA" in r.model_extra["llmi"]["error"]["message"]
