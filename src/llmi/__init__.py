"""llmi: tool-augmented interleaved text-image generation.

An LLM writes a document with inline ``<imgen>`` tags; llmi runs each tag with the right tool (web image
search, diffusion, sandboxed chart code, image editing) and assembles an illustrated document.

Importing llmi is cheap: the names below load their modules on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Document": "llmi.document",
    "TextBlock": "llmi.document",
    "ImageBlock": "llmi.document",
    "FailureBlock": "llmi.document",
    "ImageData": "llmi.images",
    "parse_response": "llmi.protocol",
    "StreamParser": "llmi.protocol",
    "Engine": "llmi.engine",
    "Cache": "llmi.cache",
    "Settings": "llmi.config",
    "load_settings": "llmi.config",
    "write_document": "llmi.render",
    "generate": "llmi.generation",
    "agenerate": "llmi.generation",
    "stream": "llmi.generation",
    "GenerationError": "llmi.generation",
    "Request": "llmi.request",
    "Sampling": "llmi.request",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name == "tts":  # a callable package: llmi.tts(request, n=4) runs test-time scaling (docs/tts.md)
        import importlib

        return importlib.import_module("llmi.tts")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmi' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from .cache import Cache
    from .config import Settings, load_settings
    from .document import Document, FailureBlock, ImageBlock, TextBlock
    from .engine import Engine
    from .generation import GenerationError, agenerate, generate, stream
    from .images import ImageData
    from .protocol import StreamParser, parse_response
    from .request import Request, Sampling
    from .render import write_document
