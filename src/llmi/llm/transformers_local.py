"""A local Hugging Face ``transformers`` model, streamed token by token.

The model folder (``[llm] model_path``) is loaded on first use, in a worker thread so the event loop
keeps serving tool calls meanwhile. Generation runs in a thread too; a :class:`transformers.TextStreamer`
subclass hands each decoded piece to the event loop as soon as it is final, so the tag parser — and the
tools — see the text while the model is still writing. Stopping the stream early (the consumer stops
iterating) tells the generation thread to stop at the next token.

A folder with a processor (``preprocessor_config.json`` / ``processor_config.json``) is treated as a
vision-language model: it is loaded once with ``AutoModelForImageTextToText`` and its processor, whether
or not this run has images — most VLM checkpoints (Llava, Qwen2-VL, ...) cannot be loaded as a plain
causal LM, and loading the weights twice would double the memory. The user's images go into the last
user message as image parts, every message in parts form, as processor templates expect. A folder whose
processor turns out not to belong to an image-text model falls back to the text path. Otherwise the
tokenizer's chat template is applied to plain text messages, and images are never sent (the caller tells
the model it cannot see them; it can still edit them by index).

``[llm] extra_body.chat_template_kwargs`` is passed to ``apply_chat_template`` — the same knob vLLM
reads, e.g. ``{"enable_thinking": false}`` for Qwen3.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

from ..errors import ConfigError, LLMError
from ..request import Sampling
from . import LLMBackend, Message, StreamMeta

if TYPE_CHECKING:  # pragma: no cover
    from ..config import LLMSettings
    from ..images import ImageData

log = logging.getLogger(__name__)

_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_DONE = object()


class TransformersLLM(LLMBackend):
    kind = "transformers"

    def __init__(self, settings: "LLMSettings"):
        super().__init__()
        self.settings = settings
        self.path = Path(settings.model_path).expanduser() if settings.model_path else None
        self.model = str(self.path or "")
        self._loaded: tuple[Any, Any, Any, bool] | None = None  # model, templater, tokenizer, vision
        self._load_lock = asyncio.Lock()

    @property
    def where(self) -> str:
        return str(self.path or "")

    @property
    def starts_in_think(self) -> bool:
        # A template that opens <think> in the prompt is detected per call and "<think>" is yielded first,
        # so the stream itself always shows where reasoning starts.
        return False

    @property
    def is_vlm(self) -> bool:
        return self.path is not None and any((self.path / f).is_file() for f in _PROCESSOR_FILES)

    @property
    def supports_images(self) -> bool:
        if self._loaded is not None and not self._loaded[3]:
            return False  # it had a processor, but its model turned out to be text-only
        if self.settings.vision is not None:
            return bool(self.settings.vision) and self.is_vlm
        return self.is_vlm

    async def prepare(self) -> None:
        if self.path is None:
            raise ConfigError("llm backend 'transformers' needs [llm] model_path (a local model folder)")
        if not self.path.is_dir():
            raise ConfigError(f"[llm] model_path {self.path} is not a folder")
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"llm backend 'transformers' needs torch and transformers ({exc}); pip install 'llmi[local]'"
            ) from None

    # -- loading ---------------------------------------------------------------------------------
    def _device(self) -> str:
        import torch

        if self.settings.device != "auto":
            return self.settings.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _load(self) -> tuple[Any, Any, Any, bool]:
        import transformers

        path = str(self.path)
        model = None
        try:
            if self.is_vlm:
                try:
                    model = transformers.AutoModelForImageTextToText.from_pretrained(path, dtype="auto")
                except ValueError as exc:  # a processor folder whose model is not image-text: use it as text
                    log.info("%s has a processor but no image-text model (%s); loading it as a text model",
                             path, _short(exc))
                if model is not None:
                    processor = transformers.AutoProcessor.from_pretrained(path)
                    tokenizer = getattr(processor, "tokenizer", None)
                    if tokenizer is None or not hasattr(processor, "apply_chat_template"):
                        raise ValueError(f"the processor {type(processor).__name__} has no tokenizer/chat template")
                    vision, templater = True, processor
            if model is None:
                tokenizer = transformers.AutoTokenizer.from_pretrained(path)
                model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype="auto")
                vision, templater = False, tokenizer
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LLMError(f"cannot load the model in {path}: {_short(exc)}") from None
        model.to(self._device())
        model.eval()
        return model, templater, tokenizer, vision

    async def _get(self) -> tuple[Any, Any, Any, bool]:
        async with self._load_lock:
            if self._loaded is None:
                log.info("loading the model in %s", self.path)
                self._loaded = await asyncio.to_thread(self._load)
            return self._loaded

    # -- prompting -------------------------------------------------------------------------------
    def _inputs(
        self, templater: Any, messages: Sequence[Message], images: Sequence["ImageData"], *, parts: bool,
        sampling: Sampling = Sampling(),
    ) -> tuple[Any, bool]:
        kwargs = dict(sampling.over(self.settings).extra_body.get("chat_template_kwargs") or {})
        chat: list[dict[str, Any]] = [dict(m) for m in messages]
        if images:
            pil = [im.to_pil().convert("RGB") for im in images]
            for m in reversed(chat):
                if m["role"] == "user":
                    m["content"] = [{"type": "image", "image": p} for p in pil] + [
                        {"type": "text", "text": m["content"]}
                    ]
                    break
        if parts:  # processors' templates want every message in parts form
            for m in chat:
                if isinstance(m["content"], str):
                    m["content"] = [{"type": "text", "text": m["content"]}]
        try:
            prompt = templater.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, **kwargs)
            inputs = templater.apply_chat_template(
                chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", **kwargs
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise LLMError(f"the chat template of {self.path} failed: {exc}") from None
        # Templates that open <think> in the prompt (Qwen3, DeepSeek-R1) start the reply inside reasoning.
        starts_in_think = isinstance(prompt, str) and prompt.rstrip().endswith("<think>")
        return inputs, starts_in_think

    def _gen_kwargs(self, sampling: Sampling = Sampling()) -> dict[str, Any]:
        s = sampling.over(self.settings)
        kw: dict[str, Any] = {"max_new_tokens": s.max_tokens or 4096}
        if s.temperature:
            kw.update(do_sample=True, temperature=s.temperature)
            if s.top_p is not None:
                kw["top_p"] = s.top_p
        else:
            kw["do_sample"] = False
        for k, v in s.extra_body.items():  # generation knobs such as repetition_penalty, top_k
            if k != "chat_template_kwargs":
                kw[k] = v
        return kw

    # -- streaming -------------------------------------------------------------------------------
    async def _deltas(
        self, messages: Sequence[Message], images: Sequence["ImageData"], sampling: Sampling, meta: StreamMeta
    ) -> AsyncIterator[str]:
        import torch
        import transformers

        await self.prepare()
        model, templater, tokenizer, vision = await self._get()
        send = list(images) if vision and self.supports_images else []
        if images and not send:
            log.info("%s cannot see images; %d image(s) not sent", self.path, len(images))
        inputs, starts_in_think = self._inputs(templater, messages, send, parts=vision, sampling=sampling)
        inputs = _to_model(inputs, model)
        n_prompt = int(inputs["input_ids"].shape[-1])
        gen_kwargs = self._gen_kwargs(sampling)
        seed = sampling.seed

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        counter = {"tokens": 0}

        class _Streamer(transformers.TextStreamer):
            def put(self, value: Any) -> None:
                if not self.next_tokens_are_prompt:
                    counter["tokens"] += int(value.numel())
                super().put(value)

            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    loop.call_soon_threadsafe(queue.put_nowait, text)

        class _Stop(transformers.StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)

        def work() -> None:
            try:
                with torch.inference_mode():
                    if seed is not None:
                        # the process-wide RNG: a seeded sample is reproducible when run on its own
                        transformers.set_seed(seed)
                    model.generate(
                        **inputs,
                        streamer=streamer,
                        stopping_criteria=transformers.StoppingCriteriaList([_Stop()]),
                        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                        **gen_kwargs,
                    )
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            except Exception as exc:  # surfaced to the consumer below
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        meta.model = self.model
        thread = threading.Thread(target=work, name="llmi-transformers-generate", daemon=True)
        thread.start()
        try:
            if starts_in_think:
                yield "<think>"
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, Exception):
                    raise LLMError(f"local generation with {self.path} failed: {type(item).__name__}: {item}")
                yield item
        finally:
            stop.set()
            await asyncio.to_thread(thread.join)
            meta.usage = {
                "prompt_tokens": n_prompt,
                "completion_tokens": counter["tokens"],
                "total_tokens": n_prompt + counter["tokens"],
            }
        meta.finish_reason = "length" if counter["tokens"] >= gen_kwargs["max_new_tokens"] else "stop"

    async def aclose(self) -> None:
        self._loaded = None


def _to_model(inputs: Any, model: Any) -> Any:
    """Move the prompt tensors to the model's device; image tensors also take its dtype (a bf16 model on a
    GPU must not be fed float32 pixels). Integer tensors (ids, masks, grids) keep theirs."""
    out = {}
    for k, v in inputs.items():
        if hasattr(v, "to"):
            v = v.to(model.device, dtype=model.dtype) if v.is_floating_point() else v.to(model.device)
        out[k] = v
    return out


def _short(exc: BaseException, limit: int = 300) -> str:
    """transformers' errors can list every supported config class; keep the first line, capped."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
