"""The prompts the writing LLM sees: built from package data files in ``llmi/prompts/``.

The system prompt teaches the tag protocol and advertises only the tools this run can actually serve
(:meth:`llmi.engine.Engine.usable_tools`), so a model is never invited to call a tool that would fail
for lack of a backend. The edit indexing rules appear only when ``edit`` is usable.

When no tool is usable, the built-in prompt is the short text-only one (``no_tools.md``): teaching a
tag syntax the model must not use would only cost tokens and invite tags that fail.

A user replaces the built-in system prompt with ``[llm] system_prompt_file`` (or ``--system-prompt``).
Such a file is used as written, except that the placeholders ``{{TOOLS}}`` and ``{{EDIT_RULES}}`` — if
it contains them — are filled in the same way as in the built-in one (with no usable tool, ``{{TOOLS}}``
becomes the last paragraph of ``no_tools.md``, the instruction to write text only).

The note about attached images goes into the user message, because it is about this request: how
many there are, their indices, and — for a model that receives text only — that it cannot see them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from .errors import ConfigError
from .tools.spec import SOURCES, TOOLS

BUILTIN_NAME = "llmi/system.md"


def prompt_file(name: str) -> str:
    """The text of a prompt file shipped in ``llmi/prompts``."""
    return resources.files("llmi").joinpath("prompts", name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class SystemPrompt:
    text: str
    #: ``llmi/system.md`` or the path of the user's file.
    name: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def usable(tools: Sequence[str]) -> list[str]:
    """``tools`` in protocol order, unknown names dropped."""
    return [t for t in SOURCES if t in tools]


def _fill(template: str, tools: Sequence[str]) -> str:
    tools = usable(tools)
    if tools:
        listing = "".join(prompt_file(TOOLS[t].prompt_file) for t in tools)
    else:
        listing = prompt_file("no_tools.md").strip().split("\n\n")[-1]
    rules = [TOOLS[t].rules_file for t in tools if TOOLS[t].rules_file]
    edit_rules = "".join(prompt_file(f) for f in rules if f)
    return template.replace("{{TOOLS}}", listing.rstrip("\n")).replace("{{EDIT_RULES}}", edit_rules.rstrip("\n")).strip() + "\n"


def build_system_prompt(tools: Sequence[str], *, path: str | Path | None = None) -> SystemPrompt:
    """The system prompt advertising ``tools``; ``path`` replaces the built-in template."""
    if path:
        p = Path(path).expanduser()
        try:
            template = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the system prompt file {p}: {exc}") from None
        return SystemPrompt(_fill(template, tools), str(p))
    if not usable(tools):
        return SystemPrompt(prompt_file("no_tools.md").strip() + "\n", BUILTIN_NAME)
    return SystemPrompt(_fill(prompt_file("system.md"), tools), BUILTIN_NAME)


def image_note(n_images: int, *, can_see: bool, edit_usable: bool) -> str:
    """What the user message says about ``n_images`` attached images ('' when there are none)."""
    if n_images <= 0:
        return ""
    rng = "0" if n_images == 1 else f"0 to {n_images - 1}"
    parts = [prompt_file("user_images.md" if can_see else "user_images_blind.md")]
    if edit_usable:
        parts.append(prompt_file("user_images_edit.md"))
    text = " ".join(p.strip() for p in parts)
    return text.replace("{{N}}", str(n_images)).replace("{{RANGE}}", rng)


def build_messages(
    prompt: str, system: SystemPrompt, *, n_images: int = 0, can_see: bool = True, edit_usable: bool = False
) -> list[dict[str, str]]:
    """The chat: the system prompt, then the user's request (with the image note before it)."""
    note = image_note(n_images, can_see=can_see, edit_usable=edit_usable)
    user = f"{note}\n\n{prompt}" if note else prompt
    return [{"role": "system", "content": system.text}, {"role": "user", "content": user}]
