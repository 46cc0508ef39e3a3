"""``samples/step-N.html``: a few rollouts of one step rendered as illustrated documents, each with its
reward breakdown, so a researcher looks at what the policy writes (pure: values in, one page out)."""

from __future__ import annotations

import html
from typing import Sequence

from ..render.html import CONTENT_SECURITY_POLICY, render_html_fragment, stylesheet
from .reward import Rollout

_EXTRA_CSS = """
.llmi-sample { border-top: 3px solid #ccc; margin-top: 2.5em; padding-top: 1em; }
.llmi-reward { border-collapse: collapse; font: 13px/1.4 system-ui, sans-serif; margin: .5em 0 1em; }
.llmi-reward td, .llmi-reward th { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
.llmi-reward th { background: #f4f4f4; }
.llmi-errors { color: #a00; font: 13px system-ui, sans-serif; }
"""

_FIELDS = ("score", "s_num", "s_llm", "s_mllm", "r_tool", "text", "image", "quality", "task_rel", "text_image_rel")


def pick(rollouts: Sequence[Rollout], n: int) -> list[Rollout]:
    """Up to ``n`` rollouts, spread over prompts: the best and the worst of each prompt's group in turn,
    so a page shows what the reward prefers and what it punishes."""
    groups: dict[object, list[Rollout]] = {}
    for r in rollouts:
        groups.setdefault(r.row if r.row is not None else r.question, []).append(r)
    ordered: list[Rollout] = []
    for group in groups.values():
        ranked = sorted(group, key=lambda r: (r.result.score is None, -(r.result.score or 0.0)))
        ordered.append(ranked[0])
        if len(ranked) > 1:
            ordered.append(ranked[-1])
    return ordered[:n]


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _needs(r: Rollout) -> str:
    """What the row asks for: its image-count rule and the tools it needs."""
    from .data import image_rule

    if r.image_num is None:
        return ""
    return f" · asks for images: {image_rule(r.image_num)}, tools: {', '.join(r.tools) or 'none'}"


def samples_page(step: int, rollouts: Sequence[Rollout], *, n: int = 4, origins: Sequence[str] | None = None) -> str:
    """The HTML page for ``step`` showing up to ``n`` of ``rollouts``; ``origins[row]`` names a row's
    file and line."""
    parts = []
    for k, r in enumerate(pick(rollouts, n), 1):
        d = r.result.to_dict()
        head = "".join(f"<th>{f}</th>" for f in _FIELDS)
        row = "".join(f"<td>{_fmt(d.get(f))}</td>" for f in _FIELDS)
        errors = "".join(f"<li>{html.escape(k2)}: {html.escape(v)}</li>" for k2, v in r.result.errors.items())
        violations = ", ".join(sorted({v["kind"] for v in r.result.violations}))
        where = ""
        if origins is not None and r.row is not None and 0 <= r.row < len(origins) and origins[r.row]:
            where = f" ({origins[r.row]})"
        meta = (f"row {r.row}{where}{_needs(r)} · wrote {r.result.n_tags} tag(s), {r.result.n_images or 0} "
                f"image(s) · {len(r.completion)} chars" + (f", {r.completion_tokens} tokens" if r.completion_tokens else ""))
        parts.append(
            f'<section class="llmi-sample"><h2>Sample {k}</h2><p>{html.escape(meta)}</p>'
            f'<table class="llmi-reward"><tr>{head}</tr><tr>{row}</tr></table>'
            + (f'<ul class="llmi-errors">{errors}</ul>' if errors else "")
            + (f"<p>format violations: {html.escape(violations)}</p>" if violations else "")
            + (render_html_fragment(r.document, prompt=r.question) if r.document is not None
               else f"<pre>{html.escape(r.completion)}</pre>")
            + "</section>"
        )
    body = "\n".join(parts) or "<p>No rollouts were recorded for this step.</p>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CONTENT_SECURITY_POLICY)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>llmi train: step {step}</title>\n<style>\n{stylesheet()}{_EXTRA_CSS}</style>\n</head>\n"
        f'<body>\n<main class="llmi-page">\n<h1 class="llmi-title">Step {step}: {len(rollouts)} rollouts, '
        f"{min(n, len(rollouts))} shown</h1>\n{body}\n</main>\n</body>\n</html>\n"
    )
