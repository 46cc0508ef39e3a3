"""Hostile strings for renderer tests: each tries to run script (set ``window.__pwned``, change the
title, open a dialog) or fetch something, if any layer lets it through."""

from __future__ import annotations

from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
from llmi.images import ImageData
from llmi.protocol import Violation

from .helpers import make_jpeg, make_png

PAYLOADS = [
    "<script>window.__pwned=1;document.title='pwned';alert(1)</script>",
    '<img src=x onerror="window.__pwned=2;alert(2)">',
    '<svg onload="window.__pwned=3"><script>window.__pwned=3</script></svg>',
    '<iframe srcdoc="<script>parent.__pwned=4</script>"></iframe>',
    '<a href="javascript:window.__pwned=5">click</a>',
    "[md link](javascript:window.__pwned=6)",
    '<body onload="window.__pwned=7">',
    '"><script>window.__pwned=8</script>',
    "'><img src=x onerror=window.__pwned=9>",
    "</textarea></title></style><script>window.__pwned=10</script>",
    "<math><mtext><table><mglyph><style><img src=x onerror=window.__pwned=11>",
    '<object data="javascript:window.__pwned=12"></object><embed src="javascript:window.__pwned=12">',
    '<meta http-equiv="refresh" content="0;url=javascript:window.__pwned=13">',
    '<base href="javascript:window.__pwned=14//">',
    '<form action="javascript:window.__pwned=15"><button>go</button></form>',
    '<details open ontoggle="window.__pwned=16">x</details>',
    '<div style="background:url(javascript:window.__pwned=17)">s</div>',
    "<!-- --><script>window.__pwned=18</script>",
    '<a href="data:text/html,<script>alert(19)</script>">data</a>',
    "![img](javascript:window.__pwned=20)",
    '<link rel="stylesheet" href="http://127.0.0.1:9/x.css"><img src="http://127.0.0.1:9/x.png">',
    "&lt;script&gt;window.__pwned=21&lt;/script&gt;",
    "`<script>` in code is fine",
    "<<script>script>window.__pwned=22<</script>/script>",
]

HOSTILE = " ".join(PAYLOADS)


def hostile_provenance() -> dict:
    return {
        "backend": HOSTILE,
        "model": HOSTILE,
        "title": HOSTILE,
        "author": "<img src=x onerror=window.__pwned=30>",
        "license": "<script>window.__pwned=31</script>",
        "page_url": "javascript:window.__pwned=32",
        "source_url": "JaVaScRiPt:window.__pwned=33",
        "query": HOSTILE,
    }


def hostile_document() -> Document:
    """Every untrusted field filled with payloads, plus real images that must still load."""
    text = "\n\n".join(
        ["# Report <script>window.__pwned=40</script>"]
        + PAYLOADS
        + [
            "| a | b |\n|---|--:|\n| <script>x</script> | [x](javascript:y) |",
            "```html\n<script>ok in code</script>\n```",
        ]
    )
    png = ImageData.from_bytes(make_png(64, 48, (10, 160, 90)))
    jpeg = ImageData.from_bytes(make_jpeg(32, 20))
    return Document(
        blocks=[
            TextBlock(text + "\n\n"),
            ImageBlock(image=png, tool="search", description=HOSTILE, provenance=hostile_provenance()),
            TextBlock("Between " + HOSTILE),
            ImageBlock(
                image=jpeg,
                tool="diffusion",
                description='"onerror="window.__pwned=50',
                provenance=hostile_provenance(),
            ),
            ImageBlock(
                image=png,
                tool="edit",
                description=HOSTILE,
                params={"img_index": 0, "prompt": HOSTILE},
                provenance=hostile_provenance(),
            ),
            ImageBlock(
                image=png,
                tool="<script>window.__pwned=51</script>",
                description="x",
                provenance=hostile_provenance(),
            ),
            FailureBlock(
                tool="code", reason=HOSTILE, kind="<b onmouseover=window.__pwned=52>", description=HOSTILE
            ),
            FailureBlock(tool=HOSTILE, reason="x", kind="tool_error"),
        ],
        violations=[Violation(kind="invalid_tag", detail=HOSTILE, tag_index=0, offset=3)],
    )
