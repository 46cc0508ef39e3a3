"""The four tools in one table: what each takes, how it is taught, credited, weighted and run by default.

Every module that needs a fact about the tools reads it here instead of naming the tools itself:

* :mod:`llmi.protocol` — the exact parameters of a tag (:attr:`ToolSpec.params`) and the order of
  :data:`SOURCES`;
* :mod:`llmi.prompting` — the system prompt's paragraph per usable tool (:attr:`ToolSpec.prompt_file`,
  plus :attr:`ToolSpec.rules_file` for extra rules);
* :mod:`llmi.render.credit` — the caption under an image (:meth:`ToolSpec.credit`);
* :mod:`llmi.reward.rules` — the tool difficulty weight of ``r_tool`` (:attr:`ToolSpec.reward_weight`);
* :mod:`llmi.config` — the default ``[tools.<name>]`` settings (:attr:`ToolSpec.defaults`);
* :mod:`llmi.tools.registry` — which tool names backends may register under.

This module imports nothing from llmi at load time (the protocol and the document model import it);
the credit formatters live with the other rendering code and are looked up when first called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class ToolSpec:
    """One tool. ``params`` maps each parameter a tag must give to its type (no more, no fewer);
    ``prompt_file`` (and ``rules_file``, if any) are files in ``llmi/prompts``; ``reward_weight`` is the
    paper's difficulty weight; ``credit_formatter`` names the function in :mod:`llmi.render.credit` that
    writes the caption; ``defaults`` are the keyword arguments of this tool's default ``ToolSettings``."""

    name: str
    summary: str
    params: Mapping[str, type]
    prompt_file: str
    reward_weight: float
    credit_formatter: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    rules_file: str | None = None

    def credit(self, provenance: Mapping[str, Any], params: Mapping[str, Any]) -> list:
        """The caption parts (:class:`llmi.render.credit.Link` or ``str``) for an image this tool made."""
        from ..render import credit

        return getattr(credit, self.credit_formatter)(provenance, params)


def _spec(**kw: Any) -> ToolSpec:
    kw["params"] = MappingProxyType(dict(kw["params"]))
    kw["defaults"] = MappingProxyType(dict(kw.get("defaults", {})))
    return ToolSpec(**kw)


#: The tools, in protocol order (the order the system prompt lists them in).
TOOLS: Mapping[str, ToolSpec] = MappingProxyType({
    s.name: s
    for s in (
        _spec(
            name="search",
            summary="a real photo found by web or library image search",
            params={"query": str},
            prompt_file="tool_search.md",
            reward_weight=0.2,
            credit_formatter="search_credit",
            defaults={"backends": ["local"], "concurrency": 8, "timeout_s": 60},
        ),
        _spec(
            name="diffusion",
            summary="a new image generated from a text prompt",
            params={"prompt": str},
            prompt_file="tool_diffusion.md",
            reward_weight=0.1,
            credit_formatter="diffusion_credit",
            defaults={"backends": [], "concurrency": 2, "timeout_s": 300},
        ),
        _spec(
            name="code",
            summary="a chart drawn by matplotlib code run in a sandbox",
            params={"code": str},
            prompt_file="tool_code.md",
            reward_weight=0.4,
            credit_formatter="code_credit",
            defaults={"backends": ["sandbox"], "concurrency": 2, "timeout_s": 60, "retries": 0},
        ),
        _spec(
            name="edit",
            summary="an earlier or a user's image changed as a prompt says",
            params={"img_index": int, "prompt": str},
            prompt_file="tool_edit.md",
            reward_weight=0.3,
            credit_formatter="edit_credit",
            defaults={"backends": [], "concurrency": 2, "timeout_s": 300},
            rules_file="edit_rules.md",
        ),
    )
})

#: The tool names, in protocol order.
SOURCES: tuple[str, ...] = tuple(TOOLS)

#: The exact parameter set each source takes, with the expected type of each value.
PARAMS: Mapping[str, Mapping[str, type]] = MappingProxyType({name: s.params for name, s in TOOLS.items()})
