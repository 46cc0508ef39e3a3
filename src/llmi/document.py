"""The interleaved document: an ordered list of text, image and failure blocks.

Pure values. Every ``<imgen>`` tag in a response gets exactly one slot (an image or a failure), so the
image index an ``edit`` refers to is stable whatever failed. JSON (``to_dict``/``from_dict``) is the
lossless, machine-readable contract; its key names are part of the public interface.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Union

from .images import ImageData
from .protocol import SOURCES, THINK_CLOSE, THINK_OPEN, Violation, starts_in_think


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
    #: The tag's slot (0-based among the response's tags), ``None`` for a block not made from a tag.
    slot: int | None = None
    #: The tool call that made it, as written: ``{"source", "description", "params"}``.
    call: dict[str, Any] | None = None
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
    #: The tag's slot (0-based among the response's tags).
    slot: int | None = None
    #: The valid tool call that failed (``{"source", "description", "params"}``); ``None`` for a tag that
    #: is no valid call, whose payload is kept in ``raw`` instead.
    call: dict[str, Any] | None = None
    raw: str = ""
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
    """Blocks in reading order, the protocol violations found in the response, and the user's images.

    ``meta`` holds what the steps that made the document report about it (JSON-able values, one key per
    reporter, e.g. ``"tts"``: test-time scaling's cost per stage); empty for a plain generation. The
    editing methods keep it; the JSON form writes it under ``meta`` and shows each entry in ``stats``
    next to the tool counts."""

    blocks: list[Block] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    input_images: list[ImageData] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

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

    # -- editing (pure: each returns a new document) ----------------------------------------------
    def with_slot(self, slot: int, block: "ImageBlock | FailureBlock") -> "Document":
        """A new document with slot ``slot`` (0-based among the tags) holding ``block`` (its ``slot`` set).
        :class:`IndexError` when the document has no such slot."""
        if not isinstance(block, (ImageBlock, FailureBlock)):
            raise TypeError(f"a slot holds an ImageBlock or a FailureBlock, not {type(block).__name__}")
        if block.slot != slot:
            block = replace(block, slot=slot)
        blocks = list(self.blocks)
        seen = -1
        for i, b in enumerate(blocks):
            if isinstance(b, TextBlock):
                continue
            seen += 1
            if seen == slot:
                blocks[i] = block
                return Document(blocks=blocks, violations=list(self.violations), input_images=list(self.input_images),
                                meta=dict(self.meta))
        raise IndexError(f"the document has {seen + 1} slot(s), no slot {slot}")

    def with_text(self, index: int, text: str) -> "Document":
        """A new document with block ``index`` (a :class:`TextBlock`) replaced by ``text``."""
        if not isinstance(self.blocks[index], TextBlock):
            raise TypeError(f"block {index} is not a text block")
        blocks = list(self.blocks)
        blocks[index] = TextBlock(text)
        return Document(blocks=blocks, violations=list(self.violations), input_images=list(self.input_images),
                        meta=dict(self.meta))

    def to_response(self) -> str:
        """The tagged response this document stands for: the text, and one ``<imgen>{json}</imgen>`` per
        slot (its call; the payload as written for a tag that was no valid call, left open if it was
        unclosed). Parsing it with :func:`llmi.protocol.parse_response` gives the same text, the same calls
        in the same slots and the same invalid-tag kinds."""
        import json

        out: list[str] = []
        for b in self.blocks:
            if isinstance(b, TextBlock):
                out.append(b.text)
                continue
            call = b.call if b.call is not None else _call_of(b)
            if call is None and b.kind == "unclosed_tag":  # type: ignore[union-attr]
                # left open, as written: what follows an unclosed tag is the next tag or the end
                out.append(f"<imgen>{b.raw}")  # type: ignore[union-attr]
            elif call is None:
                out.append(f"<imgen>{b.raw}</imgen>")  # type: ignore[union-attr]
            else:
                payload = {"source": call["source"], "description": call.get("description", ""),
                           "params": call.get("params", {})}
                # "<" escaped: a description holding "</imgen>" or "<think>" must not end the tag early
                text = json.dumps(payload, ensure_ascii=False).replace("<", "\\u003c")
                out.append("<imgen>" + text + "</imgen>")
        response = "".join(out)
        if starts_in_think(response):
            # a "</think>" kept as text (inside a code fence) would make a re-reading take everything
            # before it as reasoning; an empty think block first says the reply starts with the answer
            response = THINK_OPEN + THINK_CLOSE + response
        return response

    # -- JSON contract ---------------------------------------------------------------------------
    def to_dict(self, *, image_paths: list[str] | None = None, image_data: bool = True) -> dict[str, Any]:
        """The JSON form. Images are inline base64 unless ``image_paths`` gives one path per image
        (``image_data=False`` leaves both out: a light form for progress streams, not readable back).
        The user's images (``input_images``) are always inline. ``meta`` is written when it is not empty,
        and each of its entries is shown in ``stats`` too (the tool counts keep their keys)."""
        blocks = []
        paths = iter(image_paths) if image_paths is not None else None
        for b in self.blocks:
            if isinstance(b, ImageBlock):
                blocks.append(block_to_dict(b, image_path=next(paths) if paths is not None else None,
                                            image_data=image_data))
            else:
                blocks.append(block_to_dict(b))
        stats: dict[str, Any] = dict(self.stats)
        for key, value in self.meta.items():
            stats.setdefault(key, value)
        d: dict[str, Any] = {
            "blocks": blocks,
            "stats": stats,
            "violations": [asdict(v) for v in self.violations],
        }
        if self.meta:
            d["meta"] = self.meta
        if self.input_images:
            d["input_images"] = [
                {"mime": im.mime, "width": im.width, "height": im.height,
                 **({"data_base64": base64.b64encode(im.data).decode("ascii")} if image_data else {})}
                for im in self.input_images
            ]
        return d

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
        blocks = [block_from_dict(b, f"blocks[{i}]", base_dir=base_dir) for i, b in enumerate(raw_blocks)]
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
        raw_inputs = d.get("input_images", [])
        if not isinstance(raw_inputs, list):
            raise ValueError(f"'input_images' must be a list, not {type(raw_inputs).__name__}")
        inputs = []
        for i, im in enumerate(raw_inputs):
            where = f"input_images[{i}]"
            if not isinstance(im, dict):
                raise ValueError(f"{where} must be an object, not {type(im).__name__}")
            inputs.append(ImageData.from_bytes(_b64(_field(im, "data_base64", str, where), where)))
        meta = _field(d, "meta", dict, "document", {})
        return cls(blocks=blocks, violations=violations, input_images=inputs, meta=dict(meta))


def _call_of(b: "ImageBlock | FailureBlock") -> dict[str, Any] | None:
    """The call of a block made before blocks kept theirs (a valid tool and params), else None."""
    if b.tool in SOURCES and b.params and not (isinstance(b, FailureBlock) and b.raw):
        return {"source": b.tool, "description": b.description, "params": b.params}
    return None


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text)
    except ValueError as exc:  # binascii.Error
        raise ValueError(f"{where}.data_base64 is not base64: {exc}") from None


def block_to_dict(b: Block, *, image_path: str | None = None, image_data: bool = True) -> dict[str, Any]:
    """One block's JSON form (what :meth:`Document.to_dict` lists under ``blocks``)."""
    if isinstance(b, TextBlock):
        return {"type": "text", "text": b.text}
    if isinstance(b, ImageBlock):
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
        if image_path is not None:
            d["path"] = image_path
        elif image_data:
            d["data_base64"] = base64.b64encode(b.data).decode("ascii")
    else:
        d = {
            "type": "failure",
            "tool": b.tool,
            "reason": b.reason,
            "kind": b.kind,
            "description": b.description,
            "params": b.params,
            "elapsed_s": round(b.elapsed_s, 4),
        }
        if b.raw:
            d["raw"] = b.raw
    if b.slot is not None:
        d["slot"] = b.slot
    if b.call is not None:
        d["call"] = b.call
    return d


def block_from_dict(b: Any, where: str = "block", *, base_dir: str | None = None) -> Block:
    """Inverse of :func:`block_to_dict` (the errors of :meth:`Document.from_dict`)."""
    if not isinstance(b, dict):
        raise ValueError(f"{where} must be an object, not {type(b).__name__}")
    t = b.get("type")
    if t == "text":
        return TextBlock(_field(b, "text", str, where))
    if t not in ("image", "failure"):
        raise ValueError(f"{where}: unknown block type {t!r}")
    slot = _field(b, "slot", (int, type(None)), where, None)
    call = _field(b, "call", (dict, type(None)), where, None)
    if t == "image":
        if "data_base64" in b:
            img = ImageData.from_bytes(_b64(_field(b, "data_base64", str, where), where))
        else:
            img = ImageData.from_file(_inside(base_dir or ".", _field(b, "path", str, where)))
        return ImageBlock(
            image=img,
            tool=_field(b, "tool", str, where),
            description=_field(b, "description", str, where, ""),
            params=_field(b, "params", dict, where, {}),
            provenance=_field(b, "provenance", dict, where, {}),
            elapsed_s=_field(b, "elapsed_s", (int, float), where, 0.0),
            slot=slot,
            call=call,
        )
    return FailureBlock(
        tool=_field(b, "tool", str, where),
        reason=_field(b, "reason", str, where),
        kind=_field(b, "kind", str, where, "tool_error"),
        description=_field(b, "description", str, where, ""),
        params=_field(b, "params", dict, where, {}),
        elapsed_s=_field(b, "elapsed_s", (int, float), where, 0.0),
        slot=slot,
        call=call,
        raw=_field(b, "raw", str, where, ""),
    )


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
