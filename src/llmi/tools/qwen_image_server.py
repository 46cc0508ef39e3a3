"""A small reference server speaking the LLM-I recipe's Qwen-Image protocol, on any diffusers pipeline.

    python -m llmi.tools.qwen_image_server --model /models/Qwen-Image --mode generation --port 8000
    python -m llmi.tools.qwen_image_server --model /models/Qwen-Image-Edit --mode edit --port 8100

Endpoints (the same as the recipe's FastAPI server, so either can sit behind the ``qwen-server``
backends): ``POST /generate/``, ``POST /edit/``, ``GET /health``, ``GET /info``. One process serves one
pipeline on one device and runs one image at a time; start one process per GPU (``CUDA_VISIBLE_DEVICES``)
and list them all in ``servers``. Only the standard library plus torch/diffusers: no web framework needed.

It binds to 127.0.0.1 by default and has no authentication: put it behind your own proxy before exposing
it to a network.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import ToolError, TransientToolError
from ..images import ImageData
from .imagegen import DiffusersRunner

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024
#: Request fields passed to the pipeline, with their types (others are ignored, as the recipe does).
GENERATE_FIELDS = {"negative_prompt": str, "height": int, "width": int, "num_inference_steps": int,
                   "guidance_scale": float, "true_cfg_scale": float, "seed": int}
EDIT_FIELDS = {"negative_prompt": str, "num_inference_steps": int, "guidance_scale": float,
               "true_cfg_scale": float, "seed": int}


class BadRequest(Exception):
    pass


def parse_request(body: bytes, mode: str) -> tuple[dict[str, Any], int | None]:
    """Pipeline keyword arguments and seed from a request body; :class:`BadRequest` if unusable."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("'prompt' must be a non-empty string")
    kwargs: dict[str, Any] = {"prompt": prompt}
    for key, typ in (EDIT_FIELDS if mode == "edit" else GENERATE_FIELDS).items():
        value = data.get(key)
        if value is None:
            continue
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise BadRequest(f"'{key}' must be {typ.__name__}")
        if typ is int and key != "seed" and value <= 0:
            raise BadRequest(f"'{key}' must be positive")
        kwargs[key] = value
    if mode == "edit":
        raw = data.get("image_b64")
        if not isinstance(raw, str) or not raw:
            raise BadRequest("'image_b64' must be a non-empty base64 string")
        try:
            image = ImageData.from_bytes(base64.b64decode(raw, validate=False))
        except (ValueError, ToolError) as exc:
            raise BadRequest(f"'image_b64' is not a usable image: {exc}") from exc
        kwargs["image"] = image.to_pil().convert("RGB")
    return kwargs, kwargs.pop("seed", None)


def make_handler(runner: DiffusersRunner, mode: str, defaults: dict[str, Any]):
    endpoint = "/edit/" if mode == "edit" else "/generate/"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            log.info("%s " + fmt, self.address_string(), *args)

        def reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.rstrip("/") == "/health":
                self.reply(200, {"status": "ok", "mode": mode})
            elif self.path.rstrip("/") == "/info":
                self.reply(200, {"mode": mode, "model_path": runner.model_path, "available_endpoints": [endpoint]})
            else:
                self.reply(404, {"detail": "Not Found"})

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY:
                self.close_connection = True
                self.reply(413, {"detail": f"body larger than {MAX_BODY} bytes"})
                return
            body = self.rfile.read(length)
            if self.path not in ("/generate/", "/edit/", "/generate", "/edit"):
                self.reply(404, {"detail": "Not Found"})
                return
            if self.path.rstrip("/") != endpoint.rstrip("/"):
                self.reply(400, {"detail": f"This endpoint is only available in {'edit' if mode == 'generation' else 'generation'} mode"})
                return
            try:
                kwargs, seed = parse_request(body, mode)
                image = runner.call_sync({**defaults, **kwargs}, seed)
            except BadRequest as exc:
                self.reply(422, {"detail": str(exc)})
                return
            except TransientToolError as exc:
                self.reply(503, {"detail": str(exc)})
                return
            except ToolError as exc:
                self.reply(500, {"detail": str(exc)})
                return
            self.reply(200, {"status": "success", "images": [base64.b64encode(image.data).decode("ascii")]})

    return Handler


def make_server(runner: DiffusersRunner, *, mode: str, host: str = "127.0.0.1", port: int = 8000,
                defaults: dict[str, Any] | None = None) -> ThreadingHTTPServer:
    if mode not in ("generation", "edit"):
        raise ValueError("mode must be 'generation' or 'edit'")
    server = ThreadingHTTPServer((host, port), make_handler(runner, mode, dict(defaults or {})))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m llmi.tools.qwen_image_server", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="local diffusers pipeline folder")
    ap.add_argument("--mode", choices=("generation", "edit"), default="generation")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--pipeline-class", default="auto")
    ap.add_argument("--cpu-offload", action="store_true")
    ap.add_argument("--steps", type=int, default=None, help="default num_inference_steps")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    runner = DiffusersRunner(model_path=args.model, pipeline_class=args.pipeline_class, device=args.device,
                             dtype=args.dtype, cpu_offload=args.cpu_offload, service="qwen_image_server")
    runner._load_sync()  # fail at start-up, not on the first request
    defaults = {"num_inference_steps": args.steps} if args.steps else {}
    server = make_server(runner, mode=args.mode, host=args.host, port=args.port, defaults=defaults)
    log.info("serving %s (%s mode) on http://%s:%d", args.model, args.mode, args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":  # pragma: no cover
    main()
