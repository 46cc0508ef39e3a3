"""From checked :class:`~llmi.train.data.TrainRow` values to what a trainer reads.

* the system prompt: llmi's built-in one (for the tools this configuration can run) replaces the
  dataset's, as the release replaced its own (``replace_system_prompt``), or the dataset's is kept;
* the prompt length: TRL 1.16 has no prompt-length option, so ``max_prompt_length`` is applied here,
  counted with the model's tokenizer and chat template (text only; image tokens are not counted);
  an overlong prompt is an error (as the release's ``truncation=error``), cut, or dropped;
* the TRL dataset: ``prompt`` as a chat, ``images`` (PIL, scaled to ``max_image_pixels``) with the
  ``<image>`` placeholders turned into image parts where they stand, and the reward's columns
  ``image_num``, ``tools``, ``split``, ``question`` plus ``row`` (the row's position, for data order).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from .data import IMAGE_PLACEHOLDER, TrainRow, open_image, with_system_prompt
from .errors import TrainDataError

log = logging.getLogger(__name__)

CountTokens = Callable[[TrainRow], int]


@dataclass
class LengthReport:
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    longest: int = 0


def token_counter(processing_class: Any) -> CountTokens:
    """``count(row) -> int``: the prompt's tokens with the generation prompt, through the chat template
    of the tokenizer (or of the processor, for vision-language models), text only."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    templater = processing_class if getattr(tokenizer, "chat_template", None) is None else tokenizer
    if getattr(templater, "chat_template", None) is None:
        raise TrainDataError("the model's tokenizer has no chat template: llmi trains on chat prompts")

    def count(row: TrainRow) -> int:
        messages = [{"role": m["role"], "content": m["content"].replace(IMAGE_PLACEHOLDER, "")} for m in row.prompt]
        if templater is not tokenizer:  # processors want structured content
            messages = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
        text = templater.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


def _cut_user_text(row: TrainRow, keep_fraction: float) -> TrainRow:
    """The row with the end of its last user message cut to ``keep_fraction`` of its characters
    (never cutting an image placeholder)."""
    prompt = list(row.prompt)
    for i in range(len(prompt) - 1, -1, -1):
        if prompt[i]["role"] == "user":
            text = prompt[i]["content"]
            cut = max(0, int(len(text) * keep_fraction))
            last = text.rfind(IMAGE_PLACEHOLDER)
            if last >= 0:
                cut = max(cut, last + len(IMAGE_PLACEHOLDER))
            prompt[i] = {**prompt[i], "content": text[:cut]}
            break
    return replace(row, prompt=tuple(prompt))


def limit_lengths(
    rows: Sequence[TrainRow], count: CountTokens, max_len: int | None, overflow: str = "error"
) -> tuple[list[TrainRow], LengthReport]:
    """Apply ``max_len`` prompt tokens with the ``overflow`` policy (``error``, ``truncate``, ``drop``)."""
    report = LengthReport()
    out: list[TrainRow] = []
    too_long: list[str] = []
    for row in rows:
        n = count(row)
        report.longest = max(report.longest, n)
        if max_len is None or n <= max_len:
            out.append(row)
            report.kept += 1
            continue
        if overflow == "drop":
            report.dropped += 1
            continue
        if overflow == "truncate":
            cut = row
            for _ in range(12):
                cut = _cut_user_text(cut, 0.95 * max_len / n)
                n = count(cut)
                if n <= max_len:
                    break
            if n > max_len:
                too_long.append(f"{row.origin}: {n} tokens even after cutting the user text")
                continue
            out.append(cut)
            report.truncated += 1
            continue
        too_long.append(f"{row.origin}: {n} prompt tokens > max_prompt_length {max_len}")
    if too_long:
        shown = "\n  ".join(too_long[:8])
        raise TrainDataError(
            f"{len(too_long)} prompt(s) over the length limit (set prompt_overflow = 'truncate' or 'drop' in "
            f"[train], or raise max_prompt_length):\n  {shown}",
            problems=too_long,
        )
    if not out:
        raise TrainDataError("every row was dropped by max_prompt_length")
    return out, report


def apply_system_prompt(rows: Sequence[TrainRow], system: str | None) -> list[TrainRow]:
    return [with_system_prompt(r, system) for r in rows]


def _parts(text: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for piece in re.split(f"({re.escape(IMAGE_PLACEHOLDER)})", text):
        if piece == IMAGE_PLACEHOLDER:
            parts.append({"type": "image", "text": None})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts or [{"type": "text", "text": ""}]


#: The blank image a text row gets in a multimodal dataset (the release's 28x28 white one).
PAD_IMAGE_SIZE = 28


def _pad_image():
    from PIL import Image

    return Image.new("RGB", (PAD_IMAGE_SIZE, PAD_IMAGE_SIZE), (255, 255, 255))


def trl_records(rows: Sequence[TrainRow], *, max_pixels: int | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Rows as TRL GRPO dataset records, and whether the dataset is multimodal.

    In a multimodal dataset every message has structured content (one schema for all rows), with an
    image part where each ``<image>`` stood; ``images`` lists the decoded images in that order. TRL 1.16
    cannot batch prompts with images next to prompts without, so a text row there gets one blank 28x28
    image before its user text, as the release did for its text rows in multimodal training
    (``pad_images`` = 1: the reward leaves it out, so it is never an input image of the reward).
    """
    multimodal = any(r.images for r in rows)
    records = []
    for position, row in enumerate(rows):
        pad = 1 if multimodal and not row.images else 0
        if multimodal:
            prompt = [{"role": m["role"], "content": _parts(m["content"])} for m in row.prompt]
            if pad:
                last = max(i for i, m in enumerate(prompt) if m["role"] == "user")
                prompt[last] = {**prompt[last], "content": [{"type": "image", "text": None}] + prompt[last]["content"]}
        else:
            prompt = [dict(m) for m in row.prompt]
        record: dict[str, Any] = {
            "prompt": prompt,
            "image_num": row.image_num,
            "tools": list(row.tools),
            "split": row.split,
            "question": row.question,
            "row": position,
        }
        if multimodal:
            record["images"] = [_pad_image()] if pad else [open_image(ref, max_pixels) for ref in row.images]
            record["pad_images"] = pad
        records.append(record)
    return records, multimodal


def trl_dataset(rows: Sequence[TrainRow], *, max_pixels: int | None = None):
    """A ``datasets.Dataset`` for ``GRPOTrainer`` (see :func:`trl_records`)."""
    import datasets

    records, multimodal = trl_records(rows, max_pixels=max_pixels)
    columns = {k: [r[k] for r in records] for k in records[0]}
    ds = datasets.Dataset.from_dict(columns)
    log.info("training dataset: %d rows%s", len(ds), " (multimodal)" if multimodal else "")
    return ds


def fingerprint(rows: Sequence[TrainRow]) -> str:
    """A digest of the rows' order and content (prompts, constraints, image count): a resumed run must
    see the same data, or "the same data order" means nothing."""
    import hashlib
    import json

    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([list(r.prompt), r.image_num, list(r.tools), r.split, len(r.images)],
                            sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
