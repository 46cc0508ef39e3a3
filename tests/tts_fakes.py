"""Loopback servers for the test-time scaling tests: a policy that answers per candidate (by the seed
in the request) and per helper task (by its system prompt), and judges that grade by content.

The policy is :class:`tests.sse_server.SSEServer` (the real streaming wire format); the judges are the
``JudgeServer`` of ``tests/conftest.py`` (non-streaming chat completions).
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.sse_server import Script, split_every

LIBRARY = Path(__file__).resolve().parent.parent / "examples" / "library"

#: Phrases that identify each helper prompt (src/llmi/prompts/tts_*.md, judge_text.md).
HELPERS = {
    "rewrite": "You improve image-search queries",
    "enrich": "You write prompts for a text-to-image model",
    "fix": "You fix Python chart code",
    "polish": "You revise an illustrated document",
    "edit_rewrite": "You rewrite image-editing instructions",
    "pairwise": "You compare two answers",
    "grade": "You grade answers written by an assistant",
}


def tag(source: str, desc: str, **params: Any) -> str:
    return "<imgen>" + json.dumps({"source": source, "description": desc, "params": params}) + "</imgen>"


def system_of(body: dict) -> str:
    msgs = body.get("messages") or []
    return msgs[0].get("content", "") if msgs and isinstance(msgs[0].get("content"), str) else ""


def user_text(body: dict) -> str:
    content = (body.get("messages") or [{}])[-1].get("content", "")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content


def helper_of(body: dict) -> str | None:
    system = system_of(body)
    for name, phrase in HELPERS.items():
        if phrase in system:
            return name
    return None


def between(text: str, what: str) -> str:
    m = re.search(rf"<<<{what} ([0-9a-f]+)>>>\n(.*?)\n<<<END {what} \1>>>", text, re.DOTALL)
    return m.group(2) if m else ""


def policy_script(candidates: dict[int | None, str], helpers: dict[str, Callable[[dict], str]] | None = None,
                  *, delay_s: float = 0.0, first_token_s: float | dict[int, float] = 0.0, chunk: int = 24):
    """``candidates[seed]`` is what the candidate with that seed writes; ``helpers[name](body)`` answers
    a helper task. Records nothing itself: the server keeps the requests."""
    helpers = helpers or {}

    def script(n: int, body: dict) -> Script:
        name = helper_of(body)
        if name is not None and name in helpers:
            text = helpers[name](body)
        elif name is not None:
            raise AssertionError(f"unexpected helper call {name!r}")
        else:
            text = candidates[body.get("seed")]
        first = first_token_s.get(body.get("seed"), 0.0) if isinstance(first_token_s, dict) else first_token_s
        return Script(content=split_every(text, chunk), delay_s=delay_s, first_token_s=first)

    return script


def graded_by_marker(grades: dict[str, tuple[int, int]], default: tuple[int, int] = (2, 2)):
    """An LLM-judge reply function: the first marker word found in the judged answer sets the grades."""

    def reply(body: dict, n: int) -> str:
        answer = between(user_text(body), "ANSWER")
        for word, (t, i) in grades.items():
            if word in answer:
                return f"Text: {t}\nImage: {i}"
        return f"Text: {default[0]}\nImage: {default[1]}"

    return reply


def image_colors(body: dict) -> list[tuple[int, int, int]]:
    """The centre pixel of each image a judge request carries."""
    from PIL import Image

    out = []
    content = (body.get("messages") or [{}])[-1].get("content", "")
    for part in content if isinstance(content, list) else []:
        if isinstance(part, dict) and part.get("type") == "image_url":
            data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
            im = Image.open(io.BytesIO(data)).convert("RGB")
            out.append(im.getpixel((im.width // 2, im.height // 2)))
    return out


def settings_for(llm_url: str, *, judge_url: str | None = None, mllm_url: str | None = None,
                 tts: dict | None = None, tools: dict | None = None, backends: dict | None = None, **extra: Any):
    from llmi.config import load_settings

    over: dict[str, Any] = {
        "llm": {"base_url": llm_url, "model": "test-model", "max_tokens": 2048},
        "tools": tools or {"search": {"backends": ["local"]}, "code": {"backends": ["sandbox"]},
                           "diffusion": {"backends": []}, "edit": {"backends": []}},
        "backends": backends or {"search": {"local": {"root": str(LIBRARY)}}},
        "cache": {"enabled": False},
        "sandbox": {"workers": 1},
        "tts": tts or {},
    }
    for name, url in (("llm_judge", judge_url), ("mllm_judge", mllm_url)):
        if url:
            over[name] = {"base_url": url, "model": "judge-1", "retries": 1, "backoff_s": 0.01,
                          "max_backoff_s": 0.02, "timeout_s": 5}
    over.update(extra)
    return load_settings(overrides=over, environ={})
