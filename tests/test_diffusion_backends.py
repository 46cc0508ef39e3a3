"""The HTTP ``diffusion`` backends against loopback servers that answer like the real services.

Each fake service (:mod:`tests.image_services`) sends the bodies the real one sends (OpenAI/Ark
``{"data": [...]}`` and ``{"error": {...}}``, the LLM-I recipe's ``{"status": "success", "images": [...]}``
and FastAPI's ``{"detail": ...}``) — and its failures: 429 with ``Retry-After``, 500, slow answers, an
HTML page instead of JSON, a truncated PNG, a URL to download.
"""

from __future__ import annotations

import asyncio
import json
import time
from email.utils import formatdate

import pytest

from llmi.config import FetchSettings
from llmi.errors import ToolError, TransientToolError
from llmi.fetch import SafeFetcher
from llmi.images import ImageData
from llmi.tools import registry
from llmi.tools.base import BackendContext, ToolRequest
from llmi.tools.diffusion.ark import ArkSeedream
from llmi.tools.diffusion.openai import OpenAIImages
from llmi.tools.diffusion.qwen_server import QwenImageServer
from llmi.tools.http import retry_after
from llmi.tools.imagegen import ServerPool, decode_b64_image, redact
from tests.helpers import make_png, send
from tests.image_services import (ARK_KEY, KEY, Service, ark_error, ark_ok, assert_no_secret, b64, dead_url,
                                  openai_error, openai_ok, qwen_detail, qwen_ok)


def request(prompt: str = "a red fox in the snow") -> ToolRequest:
    return ToolRequest(tool="diffusion", params={"prompt": prompt}, description="a fox")


def openai_backend(ctx, base: str, **opts) -> OpenAIImages:
    cls = registry.get("diffusion", "openai")
    return cls(cls.Options(base_url=base + "/v1", api_key=KEY, **opts), ctx)


# ------------------------------------------------------------------------------------------------
# OpenAI Images API
# ------------------------------------------------------------------------------------------------


async def test_openai_gpt_image_success_request_shape(serve, ctx):
    png = make_png(64, 48)
    svc = Service(openai_ok(png))
    with serve(svc.handle) as base:
        result = await openai_backend(ctx, base).run(request())
    req = svc.requests[0]
    assert req.method == "POST" and req.path == "/v1/images/generations"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    body = svc.json()
    assert body == {"model": "gpt-image-1", "prompt": "a red fox in the snow", "n": 1, "size": "1024x1024"}
    assert "response_format" not in body  # GPT image models reject it
    assert (result.image.width, result.image.height, result.image.mime) == (64, 48, "image/png")
    assert result.image.data == png
    assert result.provenance == {"backend": "diffusion.openai", "model": "gpt-image-1",
                                 "prompt": "a red fox in the snow"}


async def test_openai_dalle_asks_for_b64_and_keeps_revised_prompt(serve, ctx):
    svc = Service(openai_ok(make_png(), revised_prompt="A vivid red fox standing in deep snow"))
    with serve(svc.handle) as base:
        result = await openai_backend(ctx, base, model="dall-e-3", quality="hd").run(request())
    body = svc.json()
    assert body["response_format"] == "b64_json" and body["model"] == "dall-e-3" and body["quality"] == "hd"
    assert result.provenance["revised_prompt"] == "A vivid red fox standing in deep snow"


async def test_openai_url_answer_is_downloaded_through_the_safe_fetcher(serve, ctx):
    png = make_png(20, 10)

    def handle(req, handler):
        if req.path.startswith("/files/"):
            send(handler, 200, png, content_type="image/png")
        else:
            host = req.headers["host"]
            body = {"created": 1, "data": [{"url": f"http://{host}/files/img-abc.png"}]}
            send(handler, 200, json.dumps(body).encode())

    with serve(handle) as base:
        result = await openai_backend(ctx, base, model="dall-e-2", response_format="url").run(request())
        assert result.provenance["source_url"] == f"{base}/files/img-abc.png"
    assert result.image.data == png and result.image.width == 20


async def test_url_answer_pointing_at_an_internal_address_is_refused(serve, ctx):
    """The URL comes from a response body: without an allow-list entry the fetcher refuses loopback."""
    body = {"created": 1, "data": [{"url": "http://127.0.0.1:9/secret.png"}]}
    svc = Service((200, json.dumps(body).encode(), {}))
    strict = BackendContext(settings=ctx.settings, http=ctx.http, fetcher=SafeFetcher(FetchSettings()))
    try:
        with serve(svc.handle) as base:
            with pytest.raises(ToolError) as err:
                await openai_backend(strict, base, model="dall-e-2").run(request())
    finally:
        await strict.fetcher.aclose()
    assert err.value.kind == "unsafe_url"


async def test_openai_429_carries_retry_after(serve, ctx):
    svc = Service(openai_error(429, "Rate limit reached for gpt-image-1 in organization org-x on images per "
                                    "minute (IPM): Limit 5, Used 5.", "rate_limit_exceeded", "requests",
                               headers={"Retry-After": "7"}))
    with serve(svc.handle) as base:
        with pytest.raises(TransientToolError) as err:
            await openai_backend(ctx, base).run(request())
    assert err.value.kind == "rate_limited" and err.value.retry_after == 7.0


async def test_openai_429_quota_is_not_retried(serve, ctx):
    svc = Service(openai_error(429, "You exceeded your current quota, please check your plan and billing "
                                    "details.", "insufficient_quota", "insufficient_quota"))
    with serve(svc.handle) as base:
        with pytest.raises(ToolError) as err:
            await openai_backend(ctx, base).run(request())
    assert not isinstance(err.value, TransientToolError) and err.value.kind == "quota_exceeded"


async def test_openai_503_and_500_are_transient(serve, ctx):
    svc = Service(
        (503, b"upstream connect error or disconnect/reset before headers", {"content-type": "text/plain",
                                                                            "Retry-After": "2"}),
        openai_error(500, "The server had an error processing your request.", None, "server_error"),
    )
    with serve(svc.handle) as base:
        backend = openai_backend(ctx, base)
        with pytest.raises(TransientToolError) as first:
            await backend.run(request())
        with pytest.raises(TransientToolError) as second:
            await backend.run(request())
    assert (first.value.kind, first.value.retry_after) == ("unavailable", 2.0)
    assert second.value.kind == "server_error" and "HTTP 500" in str(second.value)


async def test_openai_401_never_echoes_the_key(serve, ctx):
    svc = Service(openai_error(401, "Incorrect API key provided: sk-test-*********CRET. You can find your "
                                    "API key at https://platform.openai.com/account/api-keys.", "invalid_api_key"))
    with serve(svc.handle) as base:
        with pytest.raises(ToolError) as err:
            await openai_backend(ctx, base).run(request())
    assert err.value.kind == "auth_error"
    assert "*" not in str(err.value)
    assert_no_secret(err.value)


async def test_openai_moderation_refusal_is_content_policy(serve, ctx):
    svc = Service(openai_error(400, "Your request was rejected as a result of our safety system.",
                               "moderation_blocked", "image_generation_user_error"))
    with serve(svc.handle) as base:
        with pytest.raises(ToolError) as err:
            await openai_backend(ctx, base).run(request())
    assert err.value.kind == "content_policy" and not isinstance(err.value, TransientToolError)


async def test_openai_other_400_is_a_permanent_http_error(serve, ctx):
    svc = Service(openai_error(400, "Invalid value: '999x999'. Supported values are: '1024x1024', "
                                    "'1024x1536', '1536x1024', and 'auto'.", "invalid_value"))
    with serve(svc.handle) as base:
        with pytest.raises(ToolError) as err:
            await openai_backend(ctx, base, size="999x999").run(request())
    assert err.value.kind == "http_error" and "999x999" in str(err.value)
    assert not isinstance(err.value, TransientToolError)


async def test_timeout_is_transient(serve, ctx):
    svc = Service(("sleep", 1.5, openai_ok(make_png())))
    with serve(svc.handle) as base:
        with pytest.raises(TransientToolError) as err:
            await openai_backend(ctx, base, timeout_s=0.3).run(request())
    assert err.value.kind == "timeout"


async def test_html_page_instead_of_json(serve, ctx):
    page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad gateway</h1></body></html>"
    svc = Service((200, page, {"content-type": "text/html"}))
    with serve(svc.handle) as base:
        with pytest.raises(ToolError) as err:
            await openai_backend(ctx, base).run(request())
    assert err.value.kind == "bad_response" and "html" in str(err.value).lower()


async def test_truncated_png_is_invalid_image(serve, ctx):
    png = make_png(64, 64, (10, 200, 30))
    svc = Service((200, json.dumps({"created": 1, "data": [{"b64_json": b64(png[: len(png) // 2])}]}).encode(), {}))
    with serve(svc.handle) as base:
        with pytest.raises(ToolError) as err:
            await openai_backend(ctx, base).run(request())
    assert err.value.kind == "invalid_image"


@pytest.mark.parametrize(
    "body, kind",
    [
        ({"created": 1, "data": []}, "no_result"),
        ({"created": 1}, "bad_response"),
        ({"created": 1, "data": [{"b64_json": "%%% not base64 %%%"}]}, "bad_response"),
        ({"created": 1, "data": [{"b64_json": b64(b"<html>oops</html>")}]}, "invalid_image"),
        ({"created": 1, "data": [{"revised_prompt": "x"}]}, "bad_response"),
        ({"created": 1, "data": ["not-an-object"]}, "bad_response"),
        ([1, 2, 3], "bad_response"),
    ],
)
async def test_malformed_success_bodies(serve, ctx, body, kind):
    svc = Service((200, json.dumps(body).encode(), {}))
    with serve(svc.handle) as base:
        with pytest.raises(ToolError) as err:
            await openai_backend(ctx, base).run(request())
    assert err.value.kind == kind


async def test_connection_refused_is_transient_and_probe_says_unreachable(ctx):
    backend = openai_backend(ctx, dead_url())
    with pytest.raises(TransientToolError) as err:
        await backend.run(request())
    assert err.value.kind == "connection_error"
    assert (await backend.probe()).state == "unreachable"


async def test_probe_lists_models_with_the_key(serve, ctx):
    svc = Service((200, json.dumps({"object": "list", "data": [{"id": "gpt-image-1", "object": "model"}]}).encode(), {}))
    with serve(svc.handle) as base:
        status = await openai_backend(ctx, base).probe()
    assert status.state == "ok"
    assert svc.requests[0].method == "GET" and svc.requests[0].path == "/v1/models"
    assert svc.requests[0].headers["authorization"] == f"Bearer {KEY}"


async def test_probe_with_a_refused_key_reports_missing_key(serve, ctx):
    svc = Service(openai_error(401, "Incorrect API key provided: sk-test-****CRET.", "invalid_api_key"))
    with serve(svc.handle) as base:
        status = await openai_backend(ctx, base).probe()
    assert status.state == "missing_key" and "CRET" not in status.detail


async def test_missing_key(ctx, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = OpenAIImages(OpenAIImages.Options(base_url=dead_url()), ctx)
    assert backend.status().state == "missing_key"
    assert (await backend.probe()).state == "missing_key"
    with pytest.raises(ToolError) as err:
        await backend.run(request())
    assert err.value.kind == "missing_key" and "OPENAI_API_KEY" in str(err.value)


async def test_key_from_named_environment_variable(serve, ctx, monkeypatch):
    monkeypatch.setenv("MY_IMAGES_KEY", KEY)
    svc = Service(openai_ok(make_png()))
    with serve(svc.handle) as base:
        backend = OpenAIImages(OpenAIImages.Options(base_url=base + "/v1", api_key_env="MY_IMAGES_KEY"), ctx)
        assert backend.status().state == "ok"
        await backend.run(request())
    assert svc.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_options_reject_unknown_keys_and_hide_the_key():
    with pytest.raises(Exception):
        OpenAIImages.Options(modle="gpt-image-1")
    opts = OpenAIImages.Options(api_key=KEY)
    assert KEY not in repr(opts) and KEY not in str(opts.model_dump())


def test_cache_identity_names_model_and_size(ctx):
    backend = OpenAIImages(OpenAIImages.Options(model="gpt-image-1.5", size="1536x1024", api_key=KEY), ctx)
    ident = backend.cache_identity()
    assert ident["model"] == "gpt-image-1.5" and ident["size"] == "1536x1024"
    assert KEY not in json.dumps(ident)


# ------------------------------------------------------------------------------------------------
# Volcengine Ark Seedream
# ------------------------------------------------------------------------------------------------


def ark_backend(ctx, base: str, **opts) -> ArkSeedream:
    cls = registry.get("diffusion", "ark")
    return cls(cls.Options(base_url=base + "/api/v3", api_key=ARK_KEY, **opts), ctx)


async def test_ark_request_shape_and_provenance(serve, ctx):
    svc = Service(ark_ok(make_png(32, 32)))
    with serve(svc.handle) as base:
        result = await ark_backend(ctx, base, seed=42, guidance_scale=2.5,
                                   extra_body={"sequential_image_generation": "disabled"}).run(request("一只猫"))
    req = svc.requests[0]
    assert req.path == "/api/v3/images/generations" and req.headers["authorization"] == f"Bearer {ARK_KEY}"
    assert svc.json() == {"model": "doubao-seedream-4-0-250828", "prompt": "一只猫", "response_format": "b64_json",
                          "watermark": False, "size": "1024x1024", "seed": 42, "guidance_scale": 2.5,
                          "sequential_image_generation": "disabled"}
    assert result.provenance == {"backend": "diffusion.ark", "model": "doubao-seedream-4-0-250828", "prompt": "一只猫"}
    assert result.image.width == 32


async def test_a_runs_seed_reaches_the_service_over_the_configured_one(serve, ctx):
    import dataclasses

    svc = Service(ark_ok(make_png(32, 32)), ark_ok(make_png(32, 32)))
    with serve(svc.handle) as base:
        backend = ark_backend(ctx, base, seed=42)
        await backend.run(dataclasses.replace(request("一只猫"), seed=7))
        await backend.run(request("一只猫"))
    assert [json.loads(r.body)["seed"] for r in svc.requests] == [7, 42]


async def test_ark_rate_limit_and_sensitive_content(serve, ctx):
    svc = Service(
        ark_error(429, "RateLimitExceeded.EndpointIPMExceeded", "Your account has exceeded the images per "
                  "minute limit. Request id: 021757", "TooManyRequests", headers={"Retry-After": "3"}),
        ark_error(400, "InputTextSensitiveContentDetected", "The request failed because the input text may "
                  "contain sensitive information. Request id: 021758", "BadRequest"),
    )
    with serve(svc.handle) as base:
        backend = ark_backend(ctx, base)
        with pytest.raises(TransientToolError) as limited:
            await backend.run(request())
        with pytest.raises(ToolError) as refused:
            await backend.run(request())
    assert (limited.value.kind, limited.value.retry_after) == ("rate_limited", 3.0)
    assert refused.value.kind == "content_policy"
    assert_no_secret(limited.value)


async def test_ark_failed_item_inside_a_200(serve, ctx):
    body = {"model": "doubao-seedream-4-0-250828", "created": 1,
            "data": [{"error": {"code": "OutputImageSensitiveContentDetected",
                                "message": "The generated image may contain sensitive information."}}],
            "usage": {"generated_images": 0}}
    svc = Service((200, json.dumps(body).encode(), {}))
    with serve(svc.handle) as base:
        with pytest.raises(ToolError) as err:
            await ark_backend(ctx, base).run(request())
    assert err.value.kind == "content_policy"


async def test_ark_missing_key_status(ctx, monkeypatch):
    monkeypatch.delenv("ARK_API_KEY", raising=False)
    backend = ArkSeedream(ArkSeedream.Options(), ctx)
    assert backend.options.base_url == "https://ark.cn-beijing.volces.com/api/v3"
    status = backend.status()
    assert status.state == "missing_key" and "ARK_API_KEY" in status.detail


# ------------------------------------------------------------------------------------------------
# Qwen-Image servers (LLM-I recipe)
# ------------------------------------------------------------------------------------------------


def qwen_backend(ctx, servers, **opts) -> QwenImageServer:
    cls = registry.get("diffusion", "qwen-server")
    return cls(cls.Options(servers=list(servers), **opts), ctx)


async def test_qwen_request_shape(serve, ctx):
    svc = Service(qwen_ok(make_png(24, 24)))
    with serve(svc.handle) as base:
        result = await qwen_backend(ctx, [base + "/"], height=512, width=768, num_inference_steps=25,
                                    negative_prompt="blurry").run(request())
    req = svc.requests[0]
    assert req.method == "POST" and req.path == "/generate/"
    assert svc.json() == {"prompt": "a red fox in the snow", "negative_prompt": "blurry",
                          "num_inference_steps": 25, "height": 512, "width": 768}
    assert result.provenance == {"backend": "diffusion.qwen-server", "model": "Qwen-Image", "server": base,
                                 "prompt": "a red fox in the snow"}
    assert result.image.width == 24


async def test_qwen_round_robin_over_servers(serve, ctx):
    a, b = Service(qwen_ok(make_png(8, 8))), Service(qwen_ok(make_png(9, 9)))
    with serve(a.handle) as ua, serve(b.handle) as ub:
        backend = qwen_backend(ctx, [ua, ub], balance="round_robin")
        servers = [(await backend.run(request())).provenance["server"] for _ in range(4)]
    assert servers == [ua, ub, ua, ub]
    assert len(a.requests) == len(b.requests) == 2


async def test_qwen_least_busy_spreads_concurrent_calls(serve, ctx):
    a = Service(("sleep", 0.4, qwen_ok(make_png(8, 8))))
    b = Service(("sleep", 0.4, qwen_ok(make_png(8, 8))))
    with serve(a.handle) as ua, serve(b.handle) as ub:
        backend = qwen_backend(ctx, [ua, ub])
        results = await asyncio.gather(*(backend.run(request(f"p{i}")) for i in range(4)))
    assert sorted(r.provenance["server"] for r in results) == sorted([ua, ua, ub, ub])
    assert backend.pool.busy(ua) == backend.pool.busy(ub) == 0


async def test_qwen_fails_over_to_the_next_server_and_sets_the_dead_one_aside(serve, ctx):
    dead = dead_url()
    svc = Service(qwen_ok(make_png()))
    with serve(svc.handle) as live:
        backend = qwen_backend(ctx, [dead, live], balance="round_robin")
        first = await backend.run(request())
        second = await backend.run(request())
        third = await backend.run(request())
    assert first.provenance["server"] == second.provenance["server"] == third.provenance["server"] == live
    # The dead server was tried once; during its cool-down it goes last, so the live one answers first.
    assert len(svc.requests) == 3


async def test_qwen_all_servers_down_is_transient(ctx):
    backend = qwen_backend(ctx, [dead_url(), dead_url()])
    with pytest.raises(TransientToolError) as err:
        await backend.run(request())
    assert err.value.kind == "connection_error" and "all 2" in str(err.value)


async def test_qwen_server_errors(serve, ctx):
    svc = Service(
        qwen_detail(500, "CUDA out of memory. Tried to allocate 2.00 GiB"),
        qwen_detail(400, "This endpoint is only available in generation mode"),
        qwen_detail(422, [{"type": "missing", "loc": ["body", "prompt"], "msg": "Field required"}]),
        (200, json.dumps({"status": "error", "detail": "pipeline returned nothing"}).encode(), {}),
        (200, json.dumps({"status": "success", "images": [b64(make_png()[:40])]}).encode(), {}),
        ("sleep", 1.0, qwen_ok(make_png())),
    )
    with serve(svc.handle) as base:
        backend = qwen_backend(ctx, [base], timeout_s=0.3)
        kinds = []
        for _ in range(6):
            with pytest.raises(ToolError) as err:
                await backend.run(request())
            kinds.append((err.value.kind, isinstance(err.value, TransientToolError)))
    assert kinds == [("server_error", True), ("http_error", False), ("http_error", False),
                     ("no_result", False), ("invalid_image", False), ("timeout", True)]
    # A read timeout is not a fail-over error: the image may still be computing there.
    assert len(svc.requests) == 6


async def test_qwen_status_and_probe(serve, ctx):
    assert qwen_backend(ctx, []).status().state == "misconfigured"
    assert qwen_backend(ctx, ["gpu1:8000"]).status().state == "misconfigured"
    with pytest.raises(ToolError) as err:
        await qwen_backend(ctx, []).run(request())
    assert err.value.kind == "misconfigured"

    gen = Service((200, json.dumps({"status": "ok", "mode": "generation"}).encode(), {}))
    edit = Service((200, json.dumps({"status": "ok", "mode": "edit"}).encode(), {}))
    with serve(gen.handle) as ug, serve(edit.handle) as ue:
        ok = await qwen_backend(ctx, [ug, dead_url()]).probe()
        wrong = await qwen_backend(ctx, [ue]).probe()
    assert ok.state == "ok" and "1/2" in ok.detail and gen.requests[0].path == "/health"
    assert wrong.state == "misconfigured" and "edit" in wrong.detail
    assert (await qwen_backend(ctx, [dead_url()]).probe()).state == "unreachable"


# ------------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------------


def test_server_pool_orders_least_busy_then_rotation_and_cools_down():
    now = [0.0]
    pool = ServerPool(["http://a/", "http://b", "http://c"], cooldown_s=10, clock=lambda: now[0])
    assert pool.servers == ["http://a", "http://b", "http://c"]
    assert pool.order()[0] == "http://a" and pool.order()[0] == "http://b"
    pool.acquire("http://c")
    assert pool.order()[-1] == "http://c"  # busy goes after idle ones
    pool.release("http://c")
    pool.mark_down("http://a")
    assert pool.order()[-1] == "http://a"
    now[0] = 11.0
    assert "http://a" in pool.order()[:3] and pool.order().count("http://a") == 1


def test_decode_b64_accepts_data_uris_and_wrapped_base64():
    png = make_png(5, 7)
    wrapped = "\n".join(b64(png)[i:i + 76] for i in range(0, len(b64(png)), 76))
    for value in (b64(png), "data:image/png;base64," + b64(png), wrapped, b64(png).rstrip("=")):
        image = decode_b64_image(value, service="svc", max_pixels=10_000)
        assert isinstance(image, ImageData) and (image.width, image.height) == (5, 7)
    with pytest.raises(ToolError) as err:
        decode_b64_image(b64(make_png(200, 200)), service="svc", max_pixels=1000)
    assert err.value.kind == "image_too_large"
    with pytest.raises(ToolError):
        decode_b64_image(None, service="svc", max_pixels=1000)


def test_redact_removes_keys_and_masked_echoes():
    text = f"bad key {KEY} (Incorrect API key provided: sk-proj-abc*****wxyz)"
    out = redact(text, [KEY])
    assert KEY not in out and "wxyz" not in out and "bad key" in out


def test_every_backend_is_registered():
    for name in ("openai", "ark", "qwen-server", "diffusers"):
        cls = registry.get("diffusion", name)
        assert cls.tool == "diffusion" and cls.name == name


def test_retry_after_headers():
    assert retry_after({"retry-after-ms": "250", "retry-after": "7"}) == 0.25  # the precise one wins
    assert retry_after({"retry-after": "7"}) == 7.0
    assert retry_after({"retry-after-ms": "soon", "retry-after": "2"}) == 2.0
    assert 8.0 <= retry_after({"retry-after": formatdate(time.time() + 10, usegmt=True)}) <= 10.0
    assert retry_after({"retry-after": "86400"}) == 300.0  # capped
    assert retry_after({"retry-after": "tomorrow"}) is None
    assert retry_after({}) is None and retry_after(None) is None
