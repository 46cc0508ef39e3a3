"""What one run is asked: a :class:`Request` value (prompt, images, earlier turns, sampling, constraints).

Pure, frozen values. Generation (:func:`llmi.generation.stream`), the server, evaluation and test-time
scaling all pass a ``Request`` instead of repeating long keyword lists; a prompt string is accepted
wherever a request is (:meth:`Request.of`). ``to_dict`` / ``from_dict`` give the JSON form (images as
base64), so a request can be logged, sent to a server or stored beside its result and replayed.

:class:`Sampling` holds the per-request sampling knobs. ``None`` means "the backend's configured
default" (``[llm] temperature`` ...), so a request only states what it changes. ``seed`` goes to the
server (``seed`` in the OpenAI request), to a local model's RNG, and to the generative tools
(diffusion, edit) — where it also becomes part of the cache key, so N samples with N seeds are N images.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping, Union

from .images import ImageData

if TYPE_CHECKING:  # pragma: no cover
    from .config import LLMSettings


def new_run_id() -> str:
    """A short random id naming one run in events, traces and logs."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Sampling:
    """Per-request sampling; ``None`` fields fall back to ``[llm]`` in the settings."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    #: Backend knobs merged over ``[llm] extra_body`` (e.g. ``{"top_k": 20}``).
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    def over(self, settings: "LLMSettings") -> "Sampling":
        """This sampling with every unset field taken from ``settings`` (``extra_body`` merged, ours wins)."""
        return Sampling(
            temperature=self.temperature if self.temperature is not None else settings.temperature,
            top_p=self.top_p if self.top_p is not None else settings.top_p,
            max_tokens=self.max_tokens if self.max_tokens is not None else settings.max_tokens,
            seed=self.seed,
            extra_body={**settings.extra_body, **self.extra_body},
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in ("temperature", "top_p", "max_tokens", "seed")
                             if getattr(self, k) is not None}
        if self.extra_body:
            d["extra_body"] = dict(self.extra_body)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Sampling":
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ValueError(f"'sampling' must be an object, not {type(d).__name__}")
        unknown = set(d) - {"temperature", "top_p", "max_tokens", "seed", "extra_body"}
        if unknown:
            raise ValueError(f"unknown sampling field(s): {', '.join(sorted(unknown))}")
        extra = d.get("extra_body") or {}
        if not isinstance(extra, Mapping):
            raise ValueError("'sampling.extra_body' must be an object")
        for k, types in (("temperature", (int, float)), ("top_p", (int, float)), ("max_tokens", int), ("seed", int)):
            v = d.get(k)
            if v is not None and (not isinstance(v, types) or isinstance(v, bool)):
                raise ValueError(f"'sampling.{k}' must be a number, not {type(v).__name__}")
        return cls(temperature=d.get("temperature"), top_p=d.get("top_p"), max_tokens=d.get("max_tokens"),
                   seed=d.get("seed"), extra_body=dict(extra))


@dataclass(frozen=True)
class Request:
    """One run's input.

    ``images``: the user's images (index 0, 1, ... in edits). ``history``: earlier chat turns as OpenAI
    message dicts with ``str`` content, placed between the system prompt and this prompt.
    ``system_prompt``: the full system text (``None``: llmi's built-in prompt for the usable tools).
    ``image_num`` / ``tools``: constraints the request states (how many images, which tools) — ``tools``
    narrows what the system prompt advertises; both travel to the reward and evaluation.
    """

    prompt: str
    images: tuple[ImageData, ...] = ()
    history: tuple[Mapping[str, Any], ...] = ()
    sampling: Sampling = field(default_factory=Sampling)
    system_prompt: str | None = None
    image_num: int | None = None
    tools: tuple[str, ...] | None = None
    run_id: str = field(default_factory=new_run_id)

    def __post_init__(self) -> None:
        # accept lists where tuples are meant, so the value stays immutable and comparable
        if not isinstance(self.images, tuple):
            object.__setattr__(self, "images", tuple(self.images))
        if not isinstance(self.history, tuple):
            object.__setattr__(self, "history", tuple(self.history))
        if self.tools is not None and not isinstance(self.tools, tuple):
            object.__setattr__(self, "tools", tuple(self.tools))

    @classmethod
    def of(cls, prompt_or_request: Union[str, "Request"], **changes: Any) -> "Request":
        """A request from a prompt string, or the given request (with ``changes`` applied)."""
        if isinstance(prompt_or_request, Request):
            return replace(prompt_or_request, **changes) if changes else prompt_or_request
        if not isinstance(prompt_or_request, str):
            raise TypeError(f"a prompt is a str or a Request, not {type(prompt_or_request).__name__}")
        return cls(prompt=prompt_or_request, **changes)

    def replace(self, **changes: Any) -> "Request":
        """A copy with ``changes`` (e.g. ``req.replace(sampling=Sampling(seed=3), run_id=new_run_id())``)."""
        return replace(self, **changes)

    # -- JSON form -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"prompt": self.prompt, "run_id": self.run_id}
        if self.images:
            d["images"] = [{"mime": im.mime, "data_base64": base64.b64encode(im.data).decode("ascii")}
                           for im in self.images]
        if self.history:
            d["history"] = [dict(m) for m in self.history]
        sampling = self.sampling.to_dict()
        if sampling:
            d["sampling"] = sampling
        if self.system_prompt is not None:
            d["system_prompt"] = self.system_prompt
        if self.image_num is not None:
            d["image_num"] = self.image_num
        if self.tools is not None:
            d["tools"] = list(self.tools)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Request":
        """Inverse of :meth:`to_dict`. Raises :class:`ValueError` for a malformed request and
        :class:`~llmi.errors.ToolError` for image bytes that are no usable image."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a request is a JSON object, not {type(d).__name__}")
        prompt = d.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError("a request needs a 'prompt' string")
        images = []
        for i, im in enumerate(d.get("images") or []):
            if not isinstance(im, Mapping) or not isinstance(im.get("data_base64"), str):
                raise ValueError(f"images[{i}] must be an object with 'data_base64'")
            images.append(ImageData.from_bytes(base64.b64decode(im["data_base64"])))
        history = d.get("history") or []
        if not isinstance(history, list) or not all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in history
        ):
            raise ValueError("'history' must be a list of {role, content} objects with string content")
        tools = d.get("tools")
        if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, str) for t in tools)):
            raise ValueError("'tools' must be a list of tool names")
        image_num = d.get("image_num")
        if image_num is not None and (not isinstance(image_num, int) or isinstance(image_num, bool)):
            raise ValueError("'image_num' must be an integer")
        system = d.get("system_prompt")
        if system is not None and not isinstance(system, str):
            raise ValueError("'system_prompt' must be a string")
        kw: dict[str, Any] = {}
        if isinstance(d.get("run_id"), str) and d["run_id"]:
            kw["run_id"] = d["run_id"]
        return cls(prompt=prompt, images=tuple(images), history=tuple(dict(m) for m in history),
                   sampling=Sampling.from_dict(d.get("sampling")), system_prompt=system, image_num=image_num,
                   tools=tuple(tools) if tools is not None else None, **kw)


__all__ = ["Request", "Sampling", "new_run_id"]
