"""The in-domain test set (``test.parquet`` / ``test_mm.parquet`` of the LLM-I training data): the hybrid
reward with the evaluation image-count rule, reported as the mean reward and each of its components.

Rows are the verl format the LLM-I recipe trains on: ``prompt`` (a chat: a list of ``{"role", "content"}``,
or a string), ``data_source`` (``interleaved`` / ``interleaved_mm``), ``extra_info`` with ``image_num``
(-1 none, 0 any, 99 at least one, N exactly N), ``tools`` (the tools the task needs), ``split`` and
``question``, and for the multimodal set ``images`` (``{"bytes", "path"}`` entries). A JSON list or JSONL
with the same columns (or flat ``prompt``/``image_num``/``tools``/``images`` keys) is read as well.

Judging is :class:`llmi.reward.scoring.RewardScorer` — the same rules and judge prompts as ``llmi reward``
— on the finished document, with the split forced to ``test`` (the binary image-count rule of
evaluation). Both judge roles (the text judge reading the raw response, the image judge reading the
document) are asked through ``[eval_judge]``, and their answers are stored in the run folder like every
other benchmark's. The LLM-I recipe's judges were Qwen3-235B-A22B-Instruct (text) and Qwen2.5-VL-72B-Instruct
(images); a different judge gives different rewards.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

from ..document import Document
from ..errors import InputError
from ..reward.judges import (
    JudgeFailure,
    llm_judge_messages,
    load_prompt,
    mllm_judge_messages,
    parse_llm_scores,
    parse_mllm_scores,
)
from .base import (
    Benchmark,
    CallFailed,
    Item,
    JudgeCalls,
    Judged,
    Output,
    Verdict,
    image_markers,
    read_jsonl,
    resolve_image_ref,
)
from .stats import mean_ci, rounded

log = logging.getLogger(__name__)

COMPONENTS = ("s_num", "s_llm", "s_mllm", "r_tool", "text", "image", "quality", "task_rel", "text_image_rel")


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a parquet file (pyarrow), a JSON list or a JSONL file."""
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError("reading parquet needs pyarrow: pip install pyarrow (or give a JSONL file)") from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise InputError(f"{path} is not a readable parquet file: {exc}") from None
    return [r for _, r in read_jsonl(path) if isinstance(r, dict)]


def _question(prompt: Any) -> tuple[str, str | None]:
    """(the user's request, the row's own system prompt if it has one) from a chat or a string."""
    if isinstance(prompt, str):
        return prompt, None
    system, user = None, ""
    for m in prompt or []:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if m.get("role") == "system":
            system = str(content or "")
        elif m.get("role", "user") == "user":
            user = str(content or "")
    return user, system


_JSON_NOTE = ("\n\nGive your answer as one JSON object whose keys are the output labels above and whose values are "
              "the scores.")


def _json_mode(messages: list[dict[str, Any]], calls: JudgeCalls) -> list[dict[str, Any]]:
    """With ``[eval_judge] json_mode`` the endpoint must be asked for JSON in words too (OpenAI refuses a JSON
    response format otherwise); the reward's score parser reads ``{"Text": 4, "Image": 3}`` as well."""
    settings = getattr(calls.judge, "settings", None)
    if not getattr(settings, "json_mode", False):
        return messages
    last = dict(messages[-1])
    if isinstance(last["content"], str):
        last["content"] += _JSON_NOTE
    else:
        last["content"] = list(last["content"]) + [{"type": "text", "text": _JSON_NOTE}]
    return messages[:-1] + [last]


class _CachedLLMJudge:
    """The reward's text judge, asked through the run's stored judge calls."""

    def __init__(self, calls: JudgeCalls):
        self.calls = calls
        self.client = calls.judge.client
        self.prompt = load_prompt("judge_text")

    async def score(self, question: str, response: str) -> tuple[float, float]:
        messages = _json_mode(llm_judge_messages(self.prompt, question, response), self.calls)
        got = await self.calls.ask("llm_judge", messages, parse_llm_scores)
        if isinstance(got, CallFailed):
            raise JudgeFailure(got.error, kind=got.error.split(":", 1)[0])
        return tuple(got)  # type: ignore[return-value]


class _CachedMLLMJudge:
    def __init__(self, calls: JudgeCalls):
        self.calls = calls
        self.client = calls.judge.client
        self.prompt = load_prompt("judge_images")

    async def score(self, question: str, document: Document, input_images: Any = ()) -> tuple[float, float, float]:
        messages = _json_mode(mllm_judge_messages(self.prompt, question, document, list(input_images)), self.calls)
        got = await self.calls.ask("mllm_judge", messages, parse_mllm_scores)
        if isinstance(got, CallFailed):
            raise JudgeFailure(got.error, kind=got.error.split(":", 1)[0])
        return tuple(got)  # type: ignore[return-value]


class LLMITest(Benchmark):
    name = "llmi-test"
    title = "LLM-I in-domain test set"
    scale = (0.0, 1.0)
    published_judge = "Qwen3-235B-A22B-Instruct-2507 (text) + Qwen2.5-VL-72B-Instruct (images)"

    def describe_score(self) -> str:
        return "mean hybrid reward R = 0.2·S_num + 0.3·S_mllm·S_num + 0.5·S_llm (0–1), binary image-count rule"

    def load(self) -> list[Item]:
        if self.data is None:
            raise InputError("llmi-test needs --data (test.parquet, test_mm.parquet, or a JSONL with the same columns)")
        items = [self.item(n, row) for n, row in enumerate(read_table(self.data))]
        if len({i.id for i in items}) < len(items):
            # extra_info.index repeats (files concatenated, or an index per source): the row number is the id
            log.warning("%s: extra_info.index is not unique; items are numbered by row instead", self.data)
            for n, i in enumerate(items):
                i.id = str(n)
        return items

    def item(self, n: int, row: dict[str, Any], base: Path | None = None) -> Item:
        """An item from a row; relative image paths are read from ``base``'s folder (default: the data file's)."""
        extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
        question, system = _question(row.get("prompt"))
        question = str(extra.get("question") or question)
        image_num = extra.get("image_num", row.get("image_num", 0))
        tools = extra.get("tools", row.get("tools")) or []
        images = row.get("images") or extra.get("images") or []
        if isinstance(images, (str, bytes, dict)):
            images = [images]
        images = [resolve_image_ref(r, base or self.data) for r in images]  # paths are relative to the data file
        # verl's rows (and llmi's own) put one <image> where each input image stands
        question, _ = image_markers(question, 0)
        rid = extra.get("index", row.get("id", n))
        if isinstance(rid, float) and rid.is_integer():
            rid = int(rid)
        if rid is None or (isinstance(rid, float) and math.isnan(rid)):  # a null / NaN index
            rid = n
        return Item(id=str(rid), prompt=question, images=images,
                    category=str(row.get("data_source") or extra.get("category") or ""),
                    image_num=int(image_num) if isinstance(image_num, (int, float)) else 0,
                    tools=tuple(str(t) for t in tools if isinstance(t, str)),
                    raw={"system_prompt": system, **{k: v for k, v in row.items() if k != "images"}})

    def request(self, item: Item, *, sampling: Any = None) -> Any:
        from .base import make_request

        system = item.raw.get("system_prompt") if self.options.get("use_row_system_prompt") else None
        return make_request(item.prompt, images=item.images, sampling=sampling, image_num=item.image_num,
                            tools=item.tools or None, system_prompt=system)

    async def judge(self, item: Item, document: Document, calls: JudgeCalls) -> Judged:
        from ..reward import RewardConfig
        from ..reward.scoring import RewardScorer, Sample

        response = calls.response  # the raw response with its tags, as the text judge reads it
        if not response:
            response = document.to_response() if hasattr(document, "to_response") else _response_of(document)
        sample = Sample(prompt=item.prompt, response=response, image_num=item.image_num or 0, tools=list(item.tools),
                        split="test", input_images=item.input_images(), document=document)
        scorer = RewardScorer(self.settings, config=RewardConfig(), llm_judge=_CachedLLMJudge(calls),  # type: ignore[arg-type]
                              mllm_judge=_CachedMLLMJudge(calls))  # type: ignore[arg-type]
        async with scorer:
            result = await scorer.score(sample)
        r = result.to_dict()
        verdicts = [
            Verdict("llm_judge", None if result.text is None else (result.text + (result.image or 0)) / 2,
                    f"text {result.text}, image tags {result.image}", error=r["errors"].get("llm_judge"),
                    label="text judge (text, image tags; 1-5)"),
        ]
        if result.mllm in ("judged", "error"):
            scores = [s for s in (result.quality, result.task_rel, result.text_image_rel) if s is not None]
            verdicts.append(Verdict("mllm_judge", sum(scores) / 3 if len(scores) == 3 else None,
                                    f"quality {result.quality}, task relevance {result.task_rel}, "
                                    f"text-image relevance {result.text_image_rel}", error=r["errors"].get("mllm_judge"),
                                    label="image judge (quality, task, text-image; 1-5)"))
        scores = {k: r.get(k) for k in COMPONENTS}
        return Judged(score=r["score"], scores=scores, verdicts=verdicts,
                      extra={"reward": r, "image_rule": result.s_num == 1.0 if result.s_num is not None else None})

    def aggregate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [r for r in rows if "error" not in r]
        out: dict[str, Any] = {
            "score": rounded(mean_ci([r.get("score") for r in ok])),
            "components": {c: rounded(mean_ci([(r.get("scores") or {}).get(c) for r in ok])) for c in COMPONENTS},
            "items": len(ok),
            "items_scored": sum(1 for r in ok if r.get("score") is not None),
            "dropped": sum(1 for r in ok if r.get("score") is None),
        }
        cats: dict[str, list] = {}
        for r in ok:
            cats.setdefault(r.get("category") or "", []).append(r.get("score"))
        out["by_category"] = {c: rounded(mean_ci(v)) for c, v in sorted(cats.items())}
        return out

    def read_outputs(self, path: Path, items: list[Item] | None) -> Iterable[Output]:
        """Rollouts as ``llmi reward`` reads them (``{"prompt", "response", "image_num", "tools", ...}``) or rows of
        the test set with a ``response``: matched to ``--data`` items by ``id`` or prompt; the tags are run."""
        by_id = {i.id: i for i in items or []}
        by_prompt = {i.prompt: i for i in items or []}
        for n, row in enumerate(read_table(path)):
            response = row.get("response")
            if not isinstance(response, str):
                continue
            item = by_id.get(str(row.get("id"))) if row.get("id") is not None else None
            question, _ = _question(row.get("prompt"))
            item = item or by_prompt.get(image_markers(question, 0)[0]) or by_prompt.get(question)
            if item is None:
                if items:
                    continue
                item = self.item(n, row, base=path)
            doc = Document.from_dict(row["document"]) if isinstance(row.get("document"), dict) else None
            yield Output(item=item, document=doc, response=response)  # type: ignore[arg-type]


def _response_of(document: Document) -> str:
    """The tagged response a document came from, when the document cannot say (before ``to_response``)."""
    from ..document import FailureBlock, ImageBlock, TextBlock

    out = []
    for b in document.blocks:
        if isinstance(b, TextBlock):
            out.append(b.text)
        elif isinstance(b, (ImageBlock, FailureBlock)) and b.tool != "input":
            out.append("<imgen>" + json.dumps({"source": b.tool, "description": b.description, "params": b.params},
                                              ensure_ascii=False) + "</imgen>")
    return "".join(out)
