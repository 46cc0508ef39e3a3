"""The one event stream that the CLI, the server, evaluation and test-time scaling all consume.

A run yields, in order of occurrence: :class:`TextEvent` / :class:`ThinkEvent` as the model writes,
:class:`ToolStarted` the moment a tag closes, :class:`ToolFinished` when its image (or failure) is ready
— possibly after later text —, and finally :class:`Done` with the finished document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

if TYPE_CHECKING:  # pragma: no cover
    from .document import Document, FailureBlock, ImageBlock


@dataclass(frozen=True)
class TextEvent:
    text: str
    type: str = "text"


@dataclass(frozen=True)
class ThinkEvent:
    text: str
    type: str = "think"


@dataclass(frozen=True)
class ToolStarted:
    index: int  # the tag's slot (0-based among tags)
    source: str
    description: str
    type: str = "tool_started"


@dataclass(frozen=True)
class ToolFinished:
    index: int
    block: "ImageBlock | FailureBlock"
    elapsed_s: float
    type: str = "tool_finished"

    @property
    def ok(self) -> bool:
        return self.block.type == "image"


@dataclass(frozen=True)
class Done:
    document: "Document"
    type: str = "done"


Event = Union[TextEvent, ThinkEvent, ToolStarted, ToolFinished, Done]
EventHandler = Callable[[Event], None]
