"""The errors of the training path. They sit in llmi's one exception tree (:mod:`llmi.errors`)::

    ConfigError
    ├── RecipeError        an unknown recipe, an unknown recipe field, a value the trainer refuses
    └── JudgeUnreachable   a judge endpoint that is not configured or does not answer before training
    InputError
    └── TrainDataError     a dataset that cannot be trained on (missing image_num/tools, images that do
                           not match the <image> placeholders, a prompt over the length limit, ...)

All of them are raised *before* any model is loaded, so a bad run fails in seconds, not after the
weights of a 30B model have been read.
"""

from __future__ import annotations

from ..errors import ConfigError, InputError


class RecipeError(ConfigError):
    """A recipe or a training option is unknown or invalid; the message names the field."""


class JudgeUnreachable(ConfigError):
    """A judge the reward needs is not configured or does not answer."""


class TrainDataError(InputError):
    """The training data cannot be used; the message names the file, the row and the reason."""

    def __init__(self, message: str, *, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])
