"""The interleaved document: an ordered list of text, image and failure blocks.

Pure values. Every ``<imgen>`` tag in a response gets exactly one slot (an image or a failure), so the
image index an ``edit`` refers to is stable whatever failed. JSON (``to_dict``/``from_dict``) is the
lossless, machine-readable contract; its key names are part of the public interface.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from typing import Any, Union

from .images import ImageData
from .protocol import SOURCES, Violation


@dataclass(frozen=True)
class TextBlock:
    text: str
    type: str = field(default="text", init=False)


@dataclass(frozen=True)
class ImageBlock:
    """An image produced by a tool (or given by the user, ``tool == "input"``)."""

    image: ImageData
    tool: str
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    #: Where it came from: ``backend``, ``model``, ``source_url``, ``page_url``, ``title``, ``license``,
    #: ``author``, ``cached`` ... — free-form, JSON-serialisable, shown as a credit line.
    provenance: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    type: str = field(default="image", init=False)

    @property
    def data(self) -> bytes:
        return self.image.data

    @property
    def mime(self) -> str:
        return self.image.mime

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


@dataclass(frozen=True)
class FailureBlock:
    """A tag that produced no image. ``kind`` is a reason code, ``reason`` the human-readable text."""

    tool: str
    reason: str
    kind: str = "tool_error"
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    type: str = field(default="failure", init=False)


Block = Union[TextBlock, ImageBlock, FailureBlock]


def _inside(base_dir: str, rel: str) -> str:
    """``base_dir/rel``, refusing absolute paths and ``..`` that leave ``base_dir`` (symlinks included)."""
    import os

    if not isinstance(rel, str) or os.path.isabs(rel):
        raise ValueError(f"image path {rel!r} must be relative to the document")
    base = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(base, rel))
    if os.path.commonpath([base, path]) != base:
        raise ValueError(f"image path {rel!r} leaves the document's folder")
    return path


@dataclass
class Document:
    """Blocks in reading order, the protocol violations found in the response, and the user's images."""

    blocks: list[Block] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    input_images: list[ImageData] = field(default_factory=list)

    # -- views -----------------------------------------------------------------------------------
    @property
    def slots(self) -> list[ImageBlock | FailureBlock]:
        """One entry per tag, in order (what ``img_index - n_input_images`` addresses)."""
        return [b for b in self.blocks if not isinstance(b, TextBlock)]

    @property
    def images(self) -> list[ImageBlock]:
        return [b for b in self.blocks if isinstance(b, ImageBlock)]

    @property
    def failures(self) -> list[FailureBlock]:
        return [b for b in self.blocks if isinstance(b, FailureBlock)]

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.blocks if isinstance(b, TextBlock))

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """Per tool: how many tags asked for it and how many produced an image."""
        out: dict[str, dict[str, int]] = {}
        for b in self.slots:
            if b.tool not in SOURCES:
                continue
            s = out.setdefault(b.tool, {"total": 0, "success": 0})
            s["total"] += 1
            s["success"] += isinstance(b, ImageBlock)
        return out

    # -- JSON contract ---------------------------------------------------------------------------
    def to_dict(self, *, image_paths: list[str] | None = None) -> dict[str, Any]:
        """The JSON form. Images are inline base64 unless ``image_paths`` gives one path per image."""
        blocks = []
        paths = iter(image_paths) if image_paths is not None else None
        for b in self.blocks:
            if isinstance(b, TextBlock):
                blocks.append({"type": "text", "text": b.text})
            elif isinstance(b, ImageBlock):
                d: dict[str, Any] = {
                    "type": "image",
                    "tool": b.tool,
                    "mime": b.mime,
                    "width": b.width,
                    "height": b.height,
                    "description": b.description,
                    "params": b.params,
                    "provenance": b.provenance,
                    "elapsed_s": round(b.elapsed_s, 4),
                }
                if paths is not None:
                    d["path"] = next(paths)
                else:
                    d["data_base64"] = base64.b64encode(b.data).decode("ascii")
                blocks.append(d)
            else:
                blocks.append(
                    {
                        "type": "failure",
                        "tool": b.tool,
                        "reason": b.reason,
                        "kind": b.kind,
                        "description": b.description,
                        "params": b.params,
                        "elapsed_s": round(b.elapsed_s, 4),
                    }
                )
        return {
            "blocks": blocks,
            "stats": self.stats,
            "violations": [asdict(v) for v in self.violations],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, base_dir: str | None = None) -> "Document":
        """Inverse of :meth:`to_dict`. ``path`` entries are read relative to ``base_dir`` and must stay
        inside it; image bytes are validated (type and size come from the bytes, not from the JSON).

        Raises only :class:`ValueError` for a malformed document (wrong shape or types, unknown block type,
        a path leaving ``base_dir``), :class:`~llmi.errors.ToolError` for image bytes that are no usable
        image, and :class:`OSError` for an image file that cannot be read.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a document is a JSON object with a 'blocks' list, not {type(d).__name__}")
        raw_blocks = d.get("blocks", [])
        if not isinstance(raw_blocks, list):
            raise ValueError(f"'blocks' must be a list, not {type(raw_blocks).__name__}")
        blocks: list[Block] = []
        for i, b in enumerate(raw_blocks):
            where = f"blocks[{i}]"
            if not isinstance(b, dict):
                raise ValueError(f"{where} must be an object, not {type(b).__name__}")
            t = b.get("type")
            if t == "text":
                blocks.append(TextBlock(_field(b, "text", str, where)))
            elif t == "image":
                if "data_base64" in b:
                    img = ImageData.from_bytes(base64.b64decode(_field(b, "data_base64", str, where)))
                else:
                    img = ImageData.from_file(_inside(base_dir or ".", _field(b, "path", str, where)))
                blocks.append(
                    ImageBlock(
                        image=img,
                        tool=_field(b, "tool", str, where),
                        description=_field(b, "description", str, where, ""),
                        params=_field(b, "params", dict, where, {}),
                        provenance=_field(b, "provenance", dict, where, {}),
                        elapsed_s=_field(b, "elapsed_s", (int, float), where, 0.0),
                    )
                )
            elif t == "failure":
                blocks.append(
                    FailureBlock(
                        tool=_field(b, "tool", str, where),
                        reason=_field(b, "reason", str, where),
                        kind=_field(b, "kind", str, where, "tool_error"),
                        description=_field(b, "description", str, where, ""),
                        params=_field(b, "params", dict, where, {}),
                        elapsed_s=_field(b, "elapsed_s", (int, float), where, 0.0),
                    )
                )
            else:
                raise ValueError(f"{where}: unknown block type {t!r}")
        raw_violations = d.get("violations", [])
        if not isinstance(raw_violations, list):
            raise ValueError(f"'violations' must be a list, not {type(raw_violations).__name__}")
        violations = []
        for i, v in enumerate(raw_violations):
            if not isinstance(v, dict):
                raise ValueError(f"violations[{i}] must be an object, not {type(v).__name__}")
            try:
                violations.append(Violation(**v))
            except TypeError as exc:
                raise ValueError(f"violations[{i}]: {exc}") from exc
        return cls(blocks=blocks, violations=violations)


_REQUIRED = object()


def _field(block: dict[str, Any], key: str, types: type | tuple[type, ...], where: str, default: Any = _REQUIRED) -> Any:
    """``block[key]`` checked against ``types`` (a bool is not a number), or ``default`` when absent."""
    if key not in block:
        if default is _REQUIRED:
            raise ValueError(f"{where} has no {key!r}")
        return default
    value = block[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))):
        expected = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise ValueError(f"{where}.{key} must be {expected}, not {type(value).__name__}")
    return value
