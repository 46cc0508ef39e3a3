"""The OpenAI-compatible backend against a loopback server that streams SSE like vLLM / OpenAI."""

from __future__ import annotations

import socket
import time

import pytest

from llmi.config import LLMSettings
from llmi.errors import LLMError, LLMUnreachable
from llmi.images import ImageData
from llmi.llm import create_llm
from llmi.llm import openai_compat
from llmi.llm.openai_compat import OpenAICompatLLM

from .helpers import make_png
from .sse_server import Script, SSEServer, split_every

MSGS = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Write."}]


def llm_for(srv: SSEServer, **kw) -> OpenAICompatLLM:
    return create_llm(LLMSettings(base_url=srv.base_url, **kw))


async def streamed(llm, **kw):
    """(the streamed text, the call's LLMResult)."""
    out = []
    s = llm.stream(MSGS, **kw)
    async for d in s:
        out.append(d)
    return "".join(out), s.result


async def collect(llm, **kw) -> str:
    return (await streamed(llm, **kw))[0]


async def test_streams_deltas_usage_and_sends_the_request():
    text = 'Hello <imgen>{"source": "code"}</imgen> world'
    with SSEServer(Script(content=split_every(text, 3))) as srv:
        llm = llm_for(srv, model="m1", temperature=0.2, top_p=0.9, max_tokens=77,
                      extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        s = llm.stream(MSGS)
        pieces = [d async for d in s]
        await llm.aclose()
    assert "".join(pieces) == text
    assert len(pieces) == len(split_every(text, 3))  # no buffering: one delta per chunk
    assert s.result.text == text and s.result.finish_reason == "stop" and s.result.model == "m1"
    assert s.result.usage == {"prompt_tokens": 9, "completion_tokens": len(pieces), "total_tokens": 9 + len(pieces)}
    body = srv.requests[0]
    assert body["model"] == "m1" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.2 and body["top_p"] == 0.9 and body["max_tokens"] == 77
    assert body["chat_template_kwargs"] == {"enable_thinking": False}  # extra_body is merged into the body
    assert body["messages"] == MSGS


async def test_uses_the_only_listed_model_and_refuses_to_guess_among_many():
    with SSEServer(Script(content=["ok"]), models=["only-one"]) as srv:
        llm = llm_for(srv)
        assert await collect(llm) == "ok"
        assert llm.model == "only-one" and srv.requests[0]["model"] == "only-one"
        await llm.aclose()
    with SSEServer(Script(content=["ok"]), models=["a", "b"]) as srv:
        llm = llm_for(srv)
        with pytest.raises(LLMError, match=r"serves 2 models \(a, b\).*--model"):
            await collect(llm)
        await llm.aclose()


async def test_reasoning_content_becomes_a_think_block():
    with SSEServer(Script(reasoning=["Let me ", "think."], content=["Answer", "."])) as srv:
        llm = llm_for(srv, model="m")
        assert await collect(llm) == "<think>Let me think.</think>Answer."
        await llm.aclose()


async def test_images_are_sent_as_image_parts_unless_the_model_is_text_only():
    img = ImageData.from_bytes(make_png())
    with SSEServer(Script(content=["ok"])) as srv:
        llm = llm_for(srv, model="m")
        assert llm.supports_images
        await collect(llm, images=[img, img])
        user = srv.requests[0]["messages"][-1]["content"]
        assert user[0] == {"type": "text", "text": "Write."}
        assert [p["type"] for p in user[1:]] == ["image_url", "image_url"]
        assert user[1]["image_url"]["url"].startswith("data:image/png;base64,iVBOR")
        await llm.aclose()

        blind = llm_for(srv, model="m", vision=False)
        assert not blind.supports_images
        await collect(blind, images=[img])
        assert srv.requests[1]["messages"][-1]["content"] == "Write."
        await blind.aclose()


async def test_unreachable_server_names_the_url_and_how_to_start_one():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    llm = create_llm(LLMSettings(base_url=f"http://127.0.0.1:{port}/v1", model="m"))
    with pytest.raises(LLMUnreachable) as info:
        await collect(llm)
    msg = str(info.value)
    assert f"http://127.0.0.1:{port}/v1" in msg
    assert "vllm serve" in msg and "ollama serve" in msg and "LLMI_BASE_URL" in msg
    # also when listing models to pick one
    llm2 = create_llm(LLMSettings(base_url=f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(LLMUnreachable):
        await llm2.prepare()


async def test_401_names_the_key_variable_and_never_shows_the_key():
    with SSEServer(Script(content=["ok"]), api_key="right-key") as srv:
        llm = llm_for(srv, model="m", api_key="sk-wrong-secret-123")
        with pytest.raises(LLMError) as info:
            await collect(llm)
        assert "401" in str(info.value) and "LLMI_API_KEY" in str(info.value)
        assert "sk-wrong-secret-123" not in str(info.value)
        assert "sk-" not in str(info.value) and "-123" not in str(info.value)  # not even the masked echo
        assert len(srv.requests) == 0  # refused before the body was read into requests
        ok = llm_for(srv, model="m", api_key="right-key")
        assert await collect(ok) == "ok"
        await llm.aclose()
        await ok.aclose()


async def test_429_is_retried_honoring_retry_after(monkeypatch):
    monkeypatch.setattr(openai_compat, "BACKOFF_S", 0.01)
    script = lambda n, body: Script(status=429, retry_after="0.2") if n < 2 else Script(content=["fine"])  # noqa: E731
    with SSEServer(script) as srv:
        llm = llm_for(srv, model="m")
        assert await collect(llm) == "fine"
        assert len(srv.requests) == 3
        gaps = [b - a for a, b in zip(srv.request_times, srv.request_times[1:])]
        assert all(g >= 0.18 for g in gaps), gaps  # waited as told
        await llm.aclose()


async def test_429_gives_up_after_a_few_retries(monkeypatch):
    monkeypatch.setattr(openai_compat, "BACKOFF_S", 0.01)
    with SSEServer(Script(status=429)) as srv:
        llm = llm_for(srv, model="m")
        with pytest.raises(LLMError, match="rate-limiting"):
            await collect(llm)
        assert len(srv.requests) == 1 + openai_compat.RETRIES
        await llm.aclose()


async def test_500_is_retried_and_400_is_not(monkeypatch):
    monkeypatch.setattr(openai_compat, "BACKOFF_S", 0.01)
    script = lambda n, body: Script(status=500) if n == 0 else Script(content=["ok"])  # noqa: E731
    with SSEServer(script) as srv:
        llm = llm_for(srv, model="m")
        assert await collect(llm) == "ok"
        await llm.aclose()
    with SSEServer(Script(status=400)) as srv:
        llm = llm_for(srv, model="m")
        with pytest.raises(LLMError, match="400"):
            await collect(llm)
        assert len(srv.requests) == 1
        await llm.aclose()


@pytest.mark.parametrize("fail", ["error", "error-old", "drop"])
async def test_failure_mid_stream_raises_after_the_text_already_given(fail):
    with SSEServer(Script(content=["one ", "two ", "three"], fail_after=2, fail=fail)) as srv:
        llm = llm_for(srv, model="m")
        got = []
        with pytest.raises(LLMError) as info:
            async for d in llm.stream(MSGS):
                got.append(d)
        assert got == ["one ", "two "]
        if fail != "drop":
            assert "CUDA out of memory" in str(info.value)
        else:
            assert "dropped" in str(info.value)
        assert len(srv.requests) == 1  # never retried once text was streamed
        await llm.aclose()


async def test_stream_without_finish_reason_is_reported_as_cut():
    with SSEServer(Script(content=["half"], finish_reason=None, done=False)) as srv:
        llm = llm_for(srv, model="m")
        with pytest.raises(LLMError, match="ended before the model finished"):
            await collect(llm)
        await llm.aclose()


async def test_first_chunk_without_role_and_no_done_marker_still_work():
    with SSEServer(Script(content=["a", "b"], role_chunk=False, done=False)) as srv:
        llm = llm_for(srv, model="m")
        assert await collect(llm) == "ab"
        await llm.aclose()


async def test_timeout_is_an_llm_error(monkeypatch):
    monkeypatch.setattr(openai_compat, "RETRIES", 0)
    with SSEServer(Script(content=["late"])) as srv:
        orig = srv._handle

        def slow(h):  # the server takes longer to answer than the client waits
            time.sleep(1.0)
            orig(h)

        srv._handle = slow
        llm = llm_for(srv, model="m", timeout_s=0.3)
        t0 = time.perf_counter()
        with pytest.raises(LLMError, match="did not answer within 0.3 s"):
            await collect(llm)
        assert time.perf_counter() - t0 < 0.9
        await llm.aclose()


async def test_openai_key_from_the_environment_goes_only_to_openai(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-secret-for-openai-only")
    with SSEServer(Script(content=["ok"])) as srv:
        llm = llm_for(srv, model="m")
        assert await collect(llm) == "ok"
        await llm.aclose()
        assert srv.headers[0]["authorization"] == "Bearer EMPTY"
    assert create_llm(LLMSettings(base_url="https://api.openai.com/v1"))._api_key() == "sk-env-secret-for-openai-only"


def test_messages_and_traces_show_the_server_without_credentials():
    llm = create_llm(LLMSettings(base_url="https://user:pw@gateway.example/v1?api-key=SECRET"))
    assert llm.where == "https://gateway.example/v1"


# ------------------------------------------------------------------------------------------------
# Real servers' dialects
# ------------------------------------------------------------------------------------------------

DIALECTS = {
    # vLLM / SGLang with --reasoning-parser: reasoning_content deltas, usage chunk after the finish chunk
    "vllm-reasoning": dict(style="vllm", reasoning_key="reasoning_content"),
    "vllm-new-reasoning": dict(style="vllm", reasoning_key="reasoning"),
    # Ollama: role in every delta, reasoning in `reasoning`, finish chunk with empty content, maybe no usage
    "ollama": dict(style="ollama", reasoning_key="reasoning"),
    "ollama-old-no-usage": dict(style="ollama", reasoning_key="reasoning", usage=False),
    # llama.cpp: null content in the first delta, usage and timings inside the finish chunk
    "llamacpp": dict(style="llamacpp"),
    # Azure OpenAI: a leading chunk with no choices (prompt filter results), filter results in choices
    "azure": dict(style="azure"),
    # finish_reason riding on the last content delta
    "finish-on-last-delta": dict(style="ollama", finish_with_last=True),
}


@pytest.mark.parametrize("dialect", list(DIALECTS))
async def test_each_servers_stream_dialect_gives_the_same_text(dialect):
    kw = DIALECTS[dialect]
    with SSEServer(Script(reasoning=["Plan ", "it."], content=["# Title", "\n\nBody", "."], **kw)) as srv:
        llm = llm_for(srv, model="m")
        text, result = await streamed(llm)
        assert text == "<think>Plan it.</think># Title\n\nBody."
        assert result.text == "# Title\n\nBody." and result.reasoning == "Plan it."
        assert result.finish_reason == "stop"
        if kw.get("usage", True):
            assert result.usage == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
        else:
            assert result.usage is None  # nothing reported, nothing invented
        await llm.aclose()


async def test_ollama_model_listing_picks_the_only_model():
    listing = [{"id": "qwen3:8b", "object": "model", "created": 1746000000, "owned_by": "library"}]
    with SSEServer(Script(content=["ok"], style="ollama"), models=listing) as srv:
        llm = llm_for(srv)
        assert await collect(llm) == "ok"
        assert llm.model == "qwen3:8b" and srv.requests[0]["model"] == "qwen3:8b"
        await llm.aclose()


async def test_azure_v1_endpoint_with_the_key_and_the_deployment_as_model():
    """Azure's v1 API: base URL .../openai/v1/, the deployment name as model, no api-version; the SDK
    sends the key as a Bearer token, which that endpoint accepts (as it accepts `api-key`)."""
    with SSEServer(Script(content=["Hi"], style="azure"), api_key="azure-secret", key_header="api-key") as srv:
        base = srv.base_url.removesuffix("/v1") + "/openai/v1/"
        llm = create_llm(LLMSettings(base_url=base, model="my-gpt4o-deployment", api_key="azure-secret"))
        assert await collect(llm) == "Hi"
        await llm.aclose()
    assert srv.paths == ["/openai/v1/chat/completions"]  # no ?api-version=
    assert srv.headers[0]["authorization"] == "Bearer azure-secret"
    assert srv.requests[0]["model"] == "my-gpt4o-deployment"


async def test_a_listing_of_many_models_asks_for_one_by_name():
    catalog = [{"id": f"gpt-{i}", "object": "model", "created": 1, "capabilities": {"chat_completion": True},
                "lifecycle_status": "generally-available"} for i in range(14)]
    with SSEServer(Script(content=["x"]), models=catalog) as srv:
        llm = llm_for(srv)
        with pytest.raises(LLMError, match=r"serves 14 models \(gpt-0, .* \.\.\.\); choose one with --model"):
            await collect(llm)
        await llm.aclose()


def _unsupported(param: str, code: str, message: str) -> Script:
    return Script(status=400, error_body={"error": {"message": message, "type": "invalid_request_error",
                                                    "param": param, "code": code}})


async def test_reasoning_models_that_refuse_max_tokens_and_temperature_get_an_adapted_request():
    """OpenAI/Azure o-series and GPT-5 answer 400 for max_tokens and for a non-default temperature."""

    def script(n: int, body: dict) -> Script:
        if "max_tokens" in body:
            return _unsupported("max_tokens", "unsupported_parameter", "Unsupported parameter: 'max_tokens' is not "
                                "supported with this model. Use 'max_completion_tokens' instead.")
        if "temperature" in body:
            return _unsupported("temperature", "unsupported_value", "Unsupported value: 'temperature' does not "
                                "support 0.7 with this model. Only the default (1) value is supported.")
        return Script(content=["fine"])

    with SSEServer(script) as srv:
        llm = llm_for(srv, model="o-model", temperature=0.7, max_tokens=500)
        assert await collect(llm) == "fine"
        assert len(srv.requests) == 3
        final = srv.requests[-1]
        assert final["max_completion_tokens"] == 500 and "max_tokens" not in final and "temperature" not in final
        assert await collect(llm) == "fine"  # remembered: the next request is right the first time
        assert len(srv.requests) == 4
        await llm.aclose()


async def test_other_400s_are_not_retried_even_with_a_param():
    bad = _unsupported("messages", "invalid_value", "Invalid value for 'messages'.")
    with SSEServer(bad) as srv:
        llm = llm_for(srv, model="m")
        with pytest.raises(LLMError, match="400.*Invalid value"):
            await collect(llm)
        assert len(srv.requests) == 1
        await llm.aclose()


async def test_a_null_error_field_in_a_chunk_is_not_an_error():
    with SSEServer(Script(content=["a", "b"], chunk_extra={"error": None})) as srv:
        llm = llm_for(srv, model="m")
        assert await collect(llm) == "ab"
        await llm.aclose()


@pytest.mark.parametrize("reason", ["length", "content_filter"])
async def test_a_cut_response_is_reported_with_its_finish_reason(reason, caplog):
    with SSEServer(Script(content=["half a sen"], finish_reason=reason)) as srv:
        llm = llm_for(srv, model="m", max_tokens=3)
        with caplog.at_level("WARNING", logger="llmi.llm.openai_compat"):
            text, result = await streamed(llm)
        assert text == "half a sen"
        assert result.finish_reason == reason
        assert ("max_tokens" if reason == "length" else "content filter") in caplog.text
        await llm.aclose()


# ------------------------------------------------------------------------------------------------
# Each call returns its own result: one instance, many concurrent streams
# ------------------------------------------------------------------------------------------------


async def test_concurrent_streams_on_one_instance_keep_their_own_usage_and_finish_reason():
    import asyncio

    n = 6

    def script(_n, body):
        i = int(body["messages"][-1]["content"].split()[-1])
        # request i streams i+1 deltas slowly (so the streams interleave) and stops for its own reason
        return Script(content=[f"r{i}."] * (i + 1), delay_s=0.02, finish_reason="length" if i % 2 else "stop")

    with SSEServer(script) as srv:
        llm = llm_for(srv, model="m")

        async def one(i):
            s = llm.stream([{"role": "user", "content": f"request {i}"}])
            text = "".join([d async for d in s])
            return i, text, s.result

        results = await asyncio.gather(*(one(i) for i in range(n)))
        await llm.aclose()
    starts = sorted(srv.request_times)
    assert starts[-1] - starts[0] < 0.1  # all were open at once (the longest stream takes 0.12 s)
    for i, text, result in results:
        assert text == f"r{i}." * (i + 1) == result.text
        assert result.finish_reason == ("length" if i % 2 else "stop")
        assert result.usage == {"prompt_tokens": 9, "completion_tokens": i + 1, "total_tokens": 10 + i}
    assert not hasattr(llm, "usage") and not hasattr(llm, "finish_reason")  # nothing per call on the instance


async def test_complete_drains_a_stream_and_sampling_overrides_the_settings():
    from llmi.request import Sampling

    with SSEServer(Script(reasoning=["hm"], content=["Hel", "lo"])) as srv:
        llm = llm_for(srv, model="m", temperature=0.7, max_tokens=100, extra_body={"top_k": 5, "min_p": 0.1})
        result = await llm.complete(MSGS, sampling=Sampling(temperature=0.0, seed=42, extra_body={"top_k": 20}))
        plain = await llm.complete(MSGS)
        await llm.aclose()
    assert result.text == "Hello" and result.reasoning == "hm" and result.finish_reason == "stop"
    assert result.raw == "<think>hm</think>Hello"
    seeded, default = srv.requests
    assert seeded["seed"] == 42 and seeded["temperature"] == 0.0 and seeded["max_tokens"] == 100
    assert seeded["top_k"] == 20 and seeded["min_p"] == 0.1  # request knobs merged over [llm] extra_body
    assert "seed" not in default and default["temperature"] == 0.7 and default["top_k"] == 5
    assert plain.text == "Hello"


async def test_a_broken_stream_still_has_a_result_with_what_arrived():
    with SSEServer(Script(content=["a", "b", "c"], fail_after=2)) as srv:
        llm = llm_for(srv, model="m")
        s = llm.stream(MSGS)
        got = []
        with pytest.raises(LLMError, match="CUDA out of memory"):
            async for d in s:
                got.append(d)
        await llm.aclose()
    assert got == ["a", "b"] and s.result.text == "ab" and s.result.finish_reason is None


async def test_reading_the_result_before_the_end_is_an_error():
    with SSEServer(Script(content=["a", "b"])) as srv:
        llm = llm_for(srv, model="m")
        s = llm.stream(MSGS)
        with pytest.raises(RuntimeError, match="not finished"):
            s.result  # noqa: B018
        assert await anext(s) == "a"
        await s.aclose()  # closing early ends it: the result holds what was read
        assert s.result.text == "a" and s.result.finish_reason is None
        await llm.aclose()


def test_split_reasoning_reads_think_blocks_like_the_protocol():
    from llmi.llm import split_reasoning

    assert split_reasoning("<think>a</think>b<think>c</think>d") == ("bd", "ac")
    assert split_reasoning("plan</think>Hi") == ("Hi", "plan")  # the template opened <think>
    assert split_reasoning("x<think>unclosed") == ("x", "unclosed")
    assert split_reasoning("no reasoning") == ("no reasoning", "")


def test_llm_backends_come_from_the_registry():
    from llmi import llm as llm_pkg
    from llmi.errors import ConfigError
    from llmi.llm.transformers_local import TransformersLLM

    assert {"openai", "transformers"} <= set(llm_pkg.names())
    assert llm_pkg.get("openai") is OpenAICompatLLM and llm_pkg.get("transformers") is TransformersLLM

    class Echo(llm_pkg.LLMBackend):
        kind = "echo-test"

        def __init__(self, settings):
            super().__init__()
            self.model = "echo"

        async def _deltas(self, messages, images, sampling, meta):
            meta.finish_reason = "stop"
            for word in messages[-1]["content"].split():
                yield word

    llm_pkg.register(Echo)
    try:
        backend = create_llm(LLMSettings(backend="echo-test"))
        assert isinstance(backend, Echo) and "echo-test" in llm_pkg.names()
    finally:
        llm_pkg.unregister("echo-test")
    with pytest.raises(ConfigError, match=r"unknown llm backend 'nope'.*openai.*transformers"):
        create_llm(LLMSettings(backend="nope"))
