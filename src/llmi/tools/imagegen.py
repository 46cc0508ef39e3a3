"""What the ``diffusion`` and ``edit`` backends share: talking to image APIs and turning answers into images.

Image services answer in a handful of shapes — OpenAI-style ``{"data": [{"b64_json"} | {"url"}]}``
(OpenAI, Volcengine Ark), the LLM-I recipe's ``{"status": "success", "images": [b64]}`` — and fail in
more: rate limits, HTML error pages from a proxy, a base64 string that decodes to half a PNG. The helpers
here turn each of those into either a validated :class:`~llmi.images.ImageData` or a typed
:class:`~llmi.errors.ToolError`, so every backend file only describes its own request.

Also here: :class:`ServerPool` (several self-hosted servers behind one backend) and the device/dtype
choice for local diffusers pipelines (imports torch only when called).
"""

from __future__ import annotations

from ..redaction import redact  # noqa: F401  (re-exported for the backends)

import asyncio
import base64
import binascii
import gc
import importlib
import inspect
import io
import logging
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import httpx

from ..errors import ToolError, TransientToolError
from ..images import ImageData
from . import http as tool_http

if TYPE_CHECKING:  # pragma: no cover
    from .base import BackendContext

log = logging.getLogger(__name__)

#: Error codes (OpenAI and Ark) meaning "the prompt or image was refused by a safety system".
_POLICY_CODES = {
    "moderation_blocked",
    "content_policy_violation",
    "content_filter",
    "InputTextSensitiveContentDetected",
    "InputImageSensitiveContentDetected",
    "OutputImageSensitiveContentDetected",
    "SensitiveContentDetected",
}
#: Error codes of a 429 that will not go away by waiting (billing), so the engine should not retry.
_QUOTA_CODES = {"insufficient_quota", "billing_hard_limit_reached", "AccountOverdueError", "QuotaExceeded"}

_DATA_URI = re.compile(r"^data:([\w/+.-]+)?(;[\w=.-]+)*;base64,", re.IGNORECASE)


# ------------------------------------------------------------------------------------------------
# Secrets
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------------


def _error_fields(resp: httpx.Response) -> tuple[str, str]:
    """``(code, message)`` of an OpenAI/Ark-style ``{"error": {...}}`` body, or empty strings."""
    try:
        body = resp.json()
    except ValueError:
        return "", ""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = str(err.get("code") or err.get("type") or "")
        return code, str(err.get("message") or "")
    if isinstance(body, dict) and isinstance(body.get("detail"), str):  # FastAPI servers
        return "", body["detail"]
    return "", ""


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    service: str,
    secrets: Iterable[str | None] = (),
    **kwargs: Any,
) -> httpx.Response:
    """One request to an image API, with every failure mapped to a typed tool error.

    Beyond :func:`llmi.tools.http.request`: authentication failures never quote the body (services echo
    the key back, masked or not), safety refusals become ``content_policy`` and exhausted quotas
    ``quota_exceeded`` — neither worth a retry — and any secret is scrubbed from the message.
    """
    try:
        resp = await tool_http.send(client, method, url, service=service, **kwargs)
        return _check_image_response(resp, service)
    except ToolError as exc:
        exc.args = (redact(str(exc), secrets),)
        raise


def _check_image_response(resp: httpx.Response, service: str) -> httpx.Response:
    """:func:`llmi.tools.http.check_response`, after the refusals image services word their own way."""
    code = resp.status_code
    if 200 <= code < 300:
        return resp
    if code in (401, 403):
        raise ToolError(
            f"{service} refused the credentials (HTTP {code}); check the API key and its permissions",
            kind="auth_error",
        )
    err_code, err_msg = _error_fields(resp)
    if err_code in _POLICY_CODES or (code == 400 and "safety system" in err_msg.lower()):
        raise ToolError(f"{service} refused the request on content policy grounds: {err_msg[:200]}",
                        kind="content_policy")
    if code == 429 and err_code in _QUOTA_CODES:
        raise ToolError(f"{service}: quota exhausted: {err_msg[:200]}", kind="quota_exceeded")
    return tool_http.check_response(resp, service)


def json_object(resp: httpx.Response, service: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer; HTML pages, bare images and JSON arrays are ``bad_response``."""
    body = tool_http.json_body(resp, service)
    if not isinstance(body, dict):
        raise ToolError(f"{service} sent JSON that is not an object ({type(body).__name__})", kind="bad_response")
    return body


# ------------------------------------------------------------------------------------------------
# Decoding images from answers
# ------------------------------------------------------------------------------------------------


def decode_b64_image(value: Any, *, service: str, max_pixels: int) -> ImageData:
    """Validate a base64 (or ``data:`` URI) image from a service. No minimum size: generated images
    are whatever size the operator configured."""
    if not isinstance(value, str) or not value.strip():
        raise ToolError(f"{service} sent an empty or non-string image field", kind="bad_response")
    text = _DATA_URI.sub("", value.strip(), count=1)
    text = "".join(text.split())  # some servers wrap base64 at 76 columns
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ToolError(f"{service} sent an image field that is not base64: {exc}", kind="bad_response") from exc
    try:
        return ImageData.from_bytes(raw, max_pixels=max_pixels)
    except ToolError as exc:
        raise ToolError(f"{service} sent an unusable image: {exc}", kind=exc.kind) from exc


def _generated_limits(ctx: "BackendContext"):
    """The configured image limits without the minimum size (that is for searched photos)."""
    return ctx.settings.images.model_copy(update={"min_width": 0, "min_height": 0})


async def image_from_item(item: Any, *, ctx: "BackendContext", service: str) -> tuple[ImageData, str | None]:
    """One ``data[i]`` entry of an OpenAI-style answer → ``(image, source_url or None)``.

    A URL (DALL·E by default, Ark with ``response_format=url``) is downloaded through the safe fetcher:
    it came from a response body, so it is treated like any untrusted URL.
    """
    if not isinstance(item, dict):
        raise ToolError(f"{service} sent a data entry that is not an object", kind="bad_response")
    if isinstance(item.get("error"), dict):  # Ark: a failed image inside a successful answer
        err = item["error"]
        code = str(err.get("code") or "")
        kind = "content_policy" if code in _POLICY_CODES else "no_result"
        raise ToolError(f"{service} could not make the image: {code}: {str(err.get('message', ''))[:200]}", kind=kind)
    if item.get("b64_json"):
        return decode_b64_image(item["b64_json"], service=service, max_pixels=ctx.settings.images.max_pixels), None
    url = item.get("url")
    if isinstance(url, str) and url:
        image, final_url = await ctx.fetcher.fetch_image(url, limits=_generated_limits(ctx))
        return image, str(final_url or url)
    raise ToolError(f"{service} sent a data entry with neither b64_json nor url", kind="bad_response")


async def first_image(body: dict[str, Any], *, ctx: "BackendContext", service: str) -> tuple[ImageData, dict[str, Any]]:
    """The first image of an OpenAI-style ``{"data": [...]}`` answer, plus that entry."""
    data = body.get("data")
    if isinstance(body.get("error"), dict):  # some gateways answer 200 with an error object
        err = body["error"]
        raise ToolError(f"{service} reported an error: {str(err.get('message', err))[:200]}", kind="bad_response")
    if not isinstance(data, list):
        raise ToolError(f"{service} sent no 'data' list (keys: {sorted(body)[:8]})", kind="bad_response")
    if not data:
        raise ToolError(f"{service} returned no image", kind="no_result")
    image, url = await image_from_item(data[0], ctx=ctx, service=service)
    entry = dict(data[0])
    entry.pop("b64_json", None)
    if url:
        entry["url"] = url
    return image, entry


def data_uri(image: ImageData, *, accept: tuple[str, ...] = ("image/png", "image/jpeg")) -> str:
    """``data:<mime>;base64,...`` of ``image``, re-encoded as PNG when the service does not take its type."""
    data, mime = image.data, image.mime
    if mime not in accept:
        data, mime = png_bytes(image), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_bytes(image: ImageData) -> bytes:
    """The image as PNG bytes (as it is when already PNG), for services that take nothing else."""
    if image.mime == "image/png":
        return image.data
    pil = image.to_pil()
    if pil.mode not in ("RGB", "RGBA", "L", "LA"):
        pil = pil.convert("RGBA" if "A" in pil.getbands() else "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def given_fields(options: Any, names: Iterable[str]) -> dict[str, Any]:
    """The named option fields that are set (not ``None``): a request carries only these and leaves the
    others to the service's own defaults."""
    return {name: getattr(options, name) for name in names if getattr(options, name) is not None}


def require_input_image(request) -> ImageData:
    """The image an ``edit`` call works on, or ``missing_input``."""
    if request.input_image is None:
        raise ToolError("edit needs an input image, and none was given", kind="missing_input")
    return request.input_image


def require_prompt(request) -> str:
    """The call's non-blank ``prompt``, or ``missing_param``."""
    prompt = request.params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ToolError("the tool call has no prompt", kind="missing_param")
    return prompt


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


# ------------------------------------------------------------------------------------------------
# Self-hosted server pools
# ------------------------------------------------------------------------------------------------


class ServerPool:
    """Several equivalent servers behind one backend: spread the calls, skip the dead ones.

    ``order()`` gives the servers to try for one call: the least busy first (ties broken round-robin
    so an idle pool still rotates), servers that recently refused connections last. A diffusion server
    handles one image at a time, so "least in flight" is a good proxy for "answers soonest".
    Thread-safe; the state is only counters, so one pool per backend instance is cheap.
    """

    def __init__(self, servers: list[str], *, strategy: str = "least_busy", cooldown_s: float = 30.0,
                 clock=time.monotonic):
        self.servers = [s.rstrip("/") for s in servers]
        self.strategy = strategy
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cursor = 0
        self._busy = {s: 0 for s in self.servers}
        self._down_until: dict[str, float] = {}

    def order(self) -> list[str]:
        with self._lock:
            n = len(self.servers)
            if not n:
                return []
            start = self._cursor
            self._cursor = (self._cursor + 1) % n
            rotated = self.servers[start:] + self.servers[:start]
            now = self._clock()

            def key(pair):
                pos, s = pair
                down = self._down_until.get(s, 0.0) > now
                busy = self._busy[s] if self.strategy == "least_busy" else 0
                return (down, busy, pos)

            return [s for _, s in sorted(enumerate(rotated), key=key)]

    def acquire(self, server: str) -> None:
        with self._lock:
            self._busy[server] += 1

    def release(self, server: str) -> None:
        with self._lock:
            self._busy[server] = max(0, self._busy[server] - 1)

    def mark_down(self, server: str) -> None:
        with self._lock:
            self._down_until[server] = self._clock() + self.cooldown_s

    def mark_up(self, server: str) -> None:
        with self._lock:
            self._down_until.pop(server, None)

    def busy(self, server: str) -> int:
        with self._lock:
            return self._busy[server]


def is_failover_error(exc: ToolError) -> bool:
    """Errors after which the *next* server should be tried at once: nothing was computed."""
    if exc.kind == "connection_error":
        return True
    if exc.kind == "timeout" and isinstance(exc.__cause__, (httpx.ConnectTimeout, httpx.PoolTimeout)):
        return True
    return exc.kind == "unavailable"  # 503: that server is overloaded or starting


# ------------------------------------------------------------------------------------------------
# Local diffusers pipelines
# ------------------------------------------------------------------------------------------------


def pick_device(device: str) -> str:
    """``auto`` → ``cuda`` if a GPU is usable, else ``mps`` on Apple silicon, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str, device: str):
    """``auto`` → bfloat16 on GPUs that support it (float16 otherwise), float32 on CPU."""
    import torch

    if dtype != "auto":
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise ToolError(f"unknown torch dtype {dtype!r} (try float32, float16, bfloat16)", kind="misconfigured")
        return value
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.startswith("mps"):
        return torch.float16
    return torch.float32


def _dtype_keyword() -> str:
    """Recent diffusers call the dtype argument ``dtype`` (``torch_dtype`` is deprecated); older
    releases know only ``torch_dtype``."""
    try:
        utils = importlib.import_module("diffusers.utils.deprecation_utils")
    except ImportError:  # pragma: no cover - old diffusers
        return "torch_dtype"
    return "dtype" if hasattr(utils, "_resolve_dtype") else "torch_dtype"


class DiffusersRunner:
    """One local diffusers pipeline: loaded lazily, once, and run off the event loop.

    Loading a multi-gigabyte pipeline takes seconds to minutes, so it happens in a worker thread on the
    first call (guarded by a lock: concurrent first calls load it once). A pipeline object is not safe to
    call from two threads at once, so calls are serialised by a second lock; several images at once need
    several processes or servers (see the qwen-server backends).
    """

    def __init__(self, *, model_path: str, pipeline_class: str, device: str, dtype: str,
                 allow_download: bool = False, cpu_offload: bool = False, service: str = "diffusers"):
        self.model_path = model_path
        self.pipeline_class = pipeline_class
        self.device_option = device
        self.dtype_option = dtype
        self.allow_download = allow_download
        self.cpu_offload = cpu_offload
        self.service = service
        self.device: str | None = None
        self._pipe = None
        self._load_lock = threading.Lock()
        self._call_lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------------
    def resolve_class(self):
        """The diffusers pipeline class named by ``pipeline_class`` (``auto``: read model_index.json)."""
        import diffusers

        name = self.pipeline_class
        if name in ("", "auto"):
            return diffusers.DiffusionPipeline
        cls = getattr(diffusers, name, None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
            raise ToolError(f"{name!r} is not a diffusers pipeline class", kind="misconfigured")
        return cls

    def _load_sync(self):
        with self._load_lock:
            if self._pipe is not None:
                return self._pipe
            if not self.model_path:
                raise ToolError(f"{self.service}: model_path is not set", kind="misconfigured")
            if not self.allow_download and not Path(self.model_path).expanduser().is_dir():
                raise ToolError(
                    f"{self.service}: model_path {self.model_path!r} is not a local folder "
                    "(set allow_download = true to fetch a Hugging Face id)",
                    kind="misconfigured",
                )
            cls = self.resolve_class()
            device = pick_device(self.device_option)
            dtype = pick_dtype(self.dtype_option, device)
            path = str(Path(self.model_path).expanduser()) if not self.allow_download else self.model_path
            log.info("loading %s from %s on %s (%s)", cls.__name__, path, device, dtype)
            try:
                pipe = cls.from_pretrained(path, **{_dtype_keyword(): dtype},
                                           local_files_only=not self.allow_download)
            except Exception as exc:  # diffusers raises OSError, ValueError, EnvironmentError, ...
                raise ToolError(f"{self.service}: cannot load the pipeline: {type(exc).__name__}: {exc}",
                                kind="model_load_error") from exc
            if self.cpu_offload and device.startswith("cuda"):
                pipe.enable_model_cpu_offload()
            else:
                pipe.to(device)
            if hasattr(pipe, "set_progress_bar_config"):
                pipe.set_progress_bar_config(disable=True)
            self.device = device
            self._pipe = pipe
            return pipe

    # -- inference -------------------------------------------------------------------------------
    def accepted(self, pipe, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` without the ones this pipeline's ``__call__`` does not take (logged, not fatal):
        one options table can then serve Stable Diffusion, Qwen-Image and FLUX pipelines."""
        params = inspect.signature(pipe.__call__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return kwargs
        dropped = sorted(k for k in kwargs if k not in params)
        if dropped:
            log.debug("%s does not take %s; ignored", type(pipe).__name__, ", ".join(dropped))
        return {k: v for k, v in kwargs.items() if k in params}

    def call_sync(self, kwargs: dict[str, Any], seed: int | None) -> ImageData:
        import torch

        pipe = self._load_sync()
        call = {k: v for k, v in kwargs.items() if v is not None}
        if seed is not None:
            gen_device = "cpu" if self.cpu_offload else (self.device or "cpu")
            call["generator"] = torch.Generator(device=gen_device).manual_seed(seed)
        call = self.accepted(pipe, call)
        with self._call_lock:
            try:
                with torch.inference_mode():
                    out = pipe(**call)
            except torch.cuda.OutOfMemoryError as exc:
                raise TransientToolError(f"{self.service}: out of GPU memory", kind="out_of_memory") from exc
            except Exception as exc:  # the pipeline's own errors: bad arguments, shapes, ...
                raise ToolError(f"{self.service}: inference failed: {type(exc).__name__}: {exc}",
                                kind="inference_error") from exc
        nsfw = getattr(out, "nsfw_content_detected", None)
        if nsfw and any(nsfw):
            raise ToolError(f"{self.service}: the safety checker blocked the image", kind="content_policy")
        images = getattr(out, "images", None)
        if not images:
            raise ToolError(f"{self.service}: the pipeline returned no image", kind="no_result")
        first = images[0]
        if not hasattr(first, "save"):  # output_type other than pil
            raise ToolError(f"{self.service}: the pipeline did not return a PIL image", kind="bad_response")
        return ImageData.from_pil(first.convert("RGB") if first.mode not in ("RGB", "RGBA") else first)

    async def __call__(self, kwargs: dict[str, Any], *, seed: int | None = None) -> ImageData:
        """Run the pipeline (loading it first if need be) in a worker thread."""
        return await asyncio.to_thread(self.call_sync, kwargs, seed)

    def close(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is None:
            return
        del pipe
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - best effort
            pass
