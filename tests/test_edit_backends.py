"""The HTTP ``edit`` backends against loopback servers speaking each service's wire format
(:mod:`tests.image_services`)."""

from __future__ import annotations

import base64
import json
from email.parser import BytesParser
from email.policy import HTTP

import pytest

from llmi.errors import ToolError, TransientToolError
from llmi.images import ImageData
from llmi.tools import registry
from llmi.tools.base import ToolRequest
from tests.helpers import make_jpeg, make_png
from tests.image_services import (ARK_KEY, KEY, Service, ark_error, ark_ok, assert_no_secret, b64, dead_url,
                                  openai_error, openai_ok, qwen_detail, qwen_ok)


def edit_request(image: ImageData | None, prompt: str = "make the sky purple") -> ToolRequest:
    return ToolRequest(tool="edit", params={"img_index": 0, "prompt": prompt}, description="purple sky",
                       input_image=image)


def source_png(width: int = 40, height: int = 30) -> ImageData:
    return ImageData.from_bytes(make_png(width, height, (20, 120, 220)))


def multipart(req) -> dict[str, tuple[str | None, str | None, bytes]]:
    """``{field: (filename, content_type, payload)}`` of a multipart/form-data request."""
    head = f"Content-Type: {req.headers['content-type']}\r\n\r\n".encode()
    msg = BytesParser(policy=HTTP).parsebytes(head + req.body)
    assert msg.is_multipart()
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        out[name] = (part.get_filename(), part.get_content_type() if part.get_filename() else None,
                     part.get_payload(decode=True))
    return out


def backend(ctx, name: str, **opts):
    cls = registry.get("edit", name)
    return cls(cls.Options(**opts), ctx)


# ------------------------------------------------------------------------------------------------
# OpenAI /images/edits
# ------------------------------------------------------------------------------------------------


async def test_openai_edit_sends_multipart(serve, ctx):
    src = source_png()
    out_png = make_png(40, 30, (200, 20, 200))
    svc = Service(openai_ok(out_png))
    with serve(svc.handle) as base:
        result = await backend(ctx, "openai", base_url=base + "/v1", api_key=KEY,
                               extra_body={"input_fidelity": "high"}).run(edit_request(src))
    req = svc.requests[0]
    assert req.path == "/v1/images/edits" and req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["content-type"].startswith("multipart/form-data; boundary=")
    parts = multipart(req)
    assert parts["image"] == ("image.png", "image/png", src.data)
    assert {k: v[2].decode() for k, v in parts.items() if k != "image"} == {
        "model": "gpt-image-1", "prompt": "make the sky purple", "n": "1", "size": "1024x1024",
        "input_fidelity": "high"}
    assert result.image.data == out_png
    assert result.provenance == {"backend": "edit.openai", "model": "gpt-image-1",
                                 "prompt": "make the sky purple", "input_sha256": src.sha256}


async def test_openai_edit_uploads_jpeg_as_is_but_dalle2_gets_png(serve, ctx):
    jpeg = ImageData.from_bytes(make_jpeg(16, 16))
    svc = Service(openai_ok(make_png()))
    with serve(svc.handle) as base:
        await backend(ctx, "openai", base_url=base + "/v1", api_key=KEY).run(edit_request(jpeg))
        await backend(ctx, "openai", base_url=base + "/v1", api_key=KEY, model="dall-e-2",
                      size="256x256").run(edit_request(jpeg))
    gpt, dalle = multipart(svc.requests[0]), multipart(svc.requests[1])
    assert gpt["image"][:2] == ("image.jpg", "image/jpeg") and gpt["image"][2] == jpeg.data
    assert dalle["image"][:2] == ("image.png", "image/png")
    assert ImageData.from_bytes(dalle["image"][2]).width == 16
    assert dalle["response_format"][2] == b"b64_json"


async def test_openai_edit_failures(serve, ctx):
    png = make_png(32, 32)
    svc = Service(
        openai_error(429, "Rate limit reached for images", "rate_limit_exceeded", "requests",
                     headers={"Retry-After": "12"}),
        openai_error(400, "Invalid image file or mode for image 1, please check your image file.",
                     "invalid_image_file"),
        (200, json.dumps({"created": 1, "data": [{"b64_json": b64(png[:-30])}]}).encode(), {}),
        (200, b"<!DOCTYPE html><html><body>Cloudflare: 524 timeout</body></html>", {"content-type": "text/html"}),
    )
    with serve(svc.handle) as base:
        be = backend(ctx, "openai", base_url=base + "/v1", api_key=KEY)
        errors = []
        for _ in range(4):
            with pytest.raises(ToolError) as err:
                await be.run(edit_request(source_png()))
            errors.append(err.value)
            assert_no_secret(err.value)
    assert isinstance(errors[0], TransientToolError) and errors[0].retry_after == 12.0
    assert [e.kind for e in errors] == ["rate_limited", "http_error", "invalid_image", "bad_response"]


async def test_edit_without_input_image_or_prompt(ctx):
    be = backend(ctx, "openai", base_url=dead_url(), api_key=KEY)
    with pytest.raises(ToolError) as err:
        await be.run(edit_request(None))
    assert err.value.kind == "missing_input"
    with pytest.raises(ToolError) as err:
        await be.run(ToolRequest(tool="edit", params={"img_index": 0, "prompt": "  "}, input_image=source_png()))
    assert err.value.kind == "missing_param"


# ------------------------------------------------------------------------------------------------
# Ark SeedEdit
# ------------------------------------------------------------------------------------------------


async def test_ark_seededit_sends_a_data_uri(serve, ctx):
    src = source_png(24, 24)
    svc = Service(ark_ok(make_png(24, 24), model="doubao-seededit-3-0-i2i-250628"))
    with serve(svc.handle) as base:
        result = await backend(ctx, "ark", base_url=base + "/api/v3", api_key=ARK_KEY, seed=7,
                               guidance_scale=5.5).run(edit_request(src))
    body = svc.json()
    assert svc.requests[0].path == "/api/v3/images/generations"
    assert body["image"] == "data:image/png;base64," + b64(src.data)
    assert {k: v for k, v in body.items() if k != "image"} == {
        "model": "doubao-seededit-3-0-i2i-250628", "prompt": "make the sky purple", "response_format": "b64_json",
        "watermark": False, "size": "adaptive", "seed": 7, "guidance_scale": 5.5}
    assert result.provenance["model"] == "doubao-seededit-3-0-i2i-250628"
    assert result.provenance["input_sha256"] == src.sha256


async def test_ark_seededit_reencodes_unsupported_types_as_png(serve, ctx):
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("P", (12, 12)).save(buf, format="GIF")
    gif = ImageData.from_bytes(buf.getvalue())
    svc = Service(ark_ok(make_png()))
    with serve(svc.handle) as base:
        await backend(ctx, "ark", base_url=base + "/api/v3", api_key=ARK_KEY).run(edit_request(gif))
    uri = svc.json()["image"]
    assert uri.startswith("data:image/png;base64,")
    assert ImageData.from_bytes(base64.b64decode(uri.split(",", 1)[1])).mime == "image/png"


async def test_ark_seededit_errors(serve, ctx):
    svc = Service(
        ark_error(400, "InputImageSensitiveContentDetected", "The request failed because the input image may "
                  "contain sensitive information.", "BadRequest"),
        ark_error(500, "InternalServiceError", "The service encountered an unexpected internal error.",
                  "InternalServerError"),
    )
    with serve(svc.handle) as base:
        be = backend(ctx, "ark", base_url=base + "/api/v3", api_key=ARK_KEY)
        with pytest.raises(ToolError) as policy:
            await be.run(edit_request(source_png()))
        with pytest.raises(TransientToolError) as server:
            await be.run(edit_request(source_png()))
    assert policy.value.kind == "content_policy" and server.value.kind == "server_error"


# ------------------------------------------------------------------------------------------------
# Qwen-Image-Edit servers
# ------------------------------------------------------------------------------------------------


async def test_qwen_edit_request_shape_and_failover(serve, ctx):
    src = source_png(16, 16)
    svc = Service(qwen_ok(make_png(16, 16, (1, 2, 3))))
    with serve(svc.handle) as base:
        be = backend(ctx, "qwen-server", servers=[dead_url(), base], balance="round_robin",
                     num_inference_steps=50, negative_prompt="low quality")
        result = await be.run(edit_request(src))
    req = svc.requests[0]
    assert req.path == "/edit/"
    body = svc.json()
    assert base64.b64decode(body["image_b64"]) == src.data
    assert {k: v for k, v in body.items() if k != "image_b64"} == {
        "prompt": "make the sky purple", "negative_prompt": "low quality", "num_inference_steps": 50}
    assert result.provenance == {"backend": "edit.qwen-server", "model": "Qwen-Image-Edit", "server": base,
                                 "prompt": "make the sky purple", "input_sha256": src.sha256}


async def test_qwen_edit_errors(serve, ctx):
    svc = Service(
        qwen_detail(500, "cannot identify image file <_io.BytesIO object at 0x7f>"),
        qwen_detail(400, "This endpoint is only available in edit mode"),
        (200, json.dumps({"status": "success", "images": []}).encode(), {}),
        (200, json.dumps({"status": "success", "images": ["<html>not base64</html>"]}).encode(), {}),
    )
    with serve(svc.handle) as base:
        be = backend(ctx, "qwen-server", servers=[base])
        kinds = []
        for _ in range(4):
            with pytest.raises(ToolError) as err:
                await be.run(edit_request(source_png()))
            kinds.append(err.value.kind)
    assert kinds == ["server_error", "http_error", "no_result", "bad_response"]


async def test_qwen_edit_probe_wants_edit_mode(serve, ctx):
    svc = Service((200, json.dumps({"status": "ok", "mode": "generation"}).encode(), {}))
    with serve(svc.handle) as base:
        status = await backend(ctx, "qwen-server", servers=[base]).probe()
    assert status.state == "misconfigured" and "generation" in status.detail


def test_edit_options_do_not_take_generation_only_knobs():
    with pytest.raises(Exception):
        registry.get("edit", "qwen-server").Options(servers=["http://x"], height=512)


def test_every_edit_backend_is_registered():
    for name in ("openai", "ark", "qwen-server", "diffusers"):
        cls = registry.get("edit", name)
        assert cls.tool == "edit" and cls.name == name
