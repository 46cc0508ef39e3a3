"""A local Hugging Face ``transformers`` model, streamed token by token.

The model folder (``[llm] model_path``) is loaded on first use, in a worker thread so the event loop
keeps serving tool calls meanwhile. Generation runs in a thread too; a :class:`transformers.TextStreamer`
subclass hands each decoded piece to the event loop as soon as it is final, so the tag parser — and the
tools — see the text while the model is still writing. Stopping the stream early (the consumer stops
iterating) tells the generation thread to stop at the next token.

A folder with a processor (``preprocessor_config.json`` / ``processor_config.json``) is treated as a
vision-language model: when the user gives images, it is loaded with ``AutoModelForImageTextToText`` and
its processor, and the images go into the chat as image parts. Otherwise the tokenizer's chat template
is applied to plain text messages.

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
from . import LLMBackend, Message

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
        self._loaded: dict[bool, tuple[Any, Any, Any]] = {}  # vision? -> (model, tokenizer-or-processor, decoder tok)
        self._load_lock = asyncio.Lock()

    @property
    def where(self) -> str:
        return str(self.path or "")

    @property
    def is_vlm(self) -> bool:
        return self.path is not None and any((self.path / f).is_file() for f in _PROCESSOR_FILES)

    @property
    def supports_images(self) -> bool:
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

    def _load(self, vision: bool) -> tuple[Any, Any, Any]:
        import transformers

        path = str(self.path)
        try:
            if vision:
                processor = transformers.AutoProcessor.from_pretrained(path)
                model = transformers.AutoModelForImageTextToText.from_pretrained(path, dtype="auto")
                tokenizer = getattr(processor, "tokenizer", processor)
                templater = processor
            else:
                tokenizer = transformers.AutoTokenizer.from_pretrained(path)
                model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype="auto")
                templater = tokenizer
        except (OSError, ValueError, KeyError) as exc:
            raise LLMError(f"cannot load the model in {path}: {exc}") from None
        model.to(self._device())
        model.eval()
        return model, templater, tokenizer

    async def _get(self, vision: bool) -> tuple[Any, Any, Any]:
        async with self._load_lock:
            if vision not in self._loaded:
                log.info("loading %s model from %s", "vision-language" if vision else "causal LM", self.path)
                self._loaded[vision] = await asyncio.to_thread(self._load, vision)
            return self._loaded[vision]

    # -- prompting -------------------------------------------------------------------------------
    def _inputs(self, templater: Any, messages: Sequence[Message], images: Sequence["ImageData"]) -> tuple[Any, bool]:
        kwargs = dict(self.settings.extra_body.get("chat_template_kwargs") or {})
        chat: list[dict[str, Any]] = [dict(m) for m in messages]
        if images:
            pil = [im.to_pil().convert("RGB") for im in images]
            for m in reversed(chat):
                if m["role"] == "user":
                    m["content"] = [{"type": "image", "image": p} for p in pil] + [
                        {"type": "text", "text": m["content"]}
                    ]
                    break
            # Processors' templates want every message in parts form.
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

    def _gen_kwargs(self) -> dict[str, Any]:
        s = self.settings
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
    async def stream(self, messages: Sequence[Message], *, images: Sequence["ImageData"] = ()) -> AsyncIterator[str]:
        import torch
        import transformers

        await self.prepare()
        vision = bool(images) and self.supports_images
        model, templater, tokenizer = await self._get(vision)
        inputs, starts_in_think = self._inputs(templater, messages, images if vision else ())
        inputs = inputs.to(model.device)
        n_prompt = int(inputs["input_ids"].shape[-1])

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
                    model.generate(
                        **inputs,
                        streamer=streamer,
                        stopping_criteria=transformers.StoppingCriteriaList([_Stop()]),
                        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                        **self._gen_kwargs(),
                    )
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            except Exception as exc:  # surfaced to the consumer below
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        self.usage = None
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
        self.usage = {
            "prompt_tokens": n_prompt,
            "completion_tokens": counter["tokens"],
            "total_tokens": n_prompt + counter["tokens"],
        }

    async def aclose(self) -> None:
        self._loaded.clear()
