"""The reward's tag validity follows the LLM-I release: a lenient reading is an invalid tag by default.

``RewardConfig.lenient_tags`` (TOML ``[reward] lenient_tags``) switches to the lenient reading. Rule parts
only (``judges=False``): the tags, the images counted, ``r_attempt``/``r_success``.
"""

from __future__ import annotations

import json

import pytest

from llmi.config import load_settings
from llmi.document import Document, FailureBlock, ImageBlock, TextBlock
from llmi.images import ImageData
from llmi.protocol import InvalidTag, TagErrorKind, ToolCall, parse_response
from llmi.reward import RewardConfig, RewardScorer, Sample
from llmi.reward.rules import reward_reading, unrewarded_slots
from tests import fakes
from tests.helpers import make_png

PNG = ImageData.from_bytes(make_png(6, 6))
CODE = {"source": "code", "description": "Sales", "params": {"code": "plt.bar([1, 2], [3, 4])"}}
SEARCH = {"source": "search", "description": "Tower", "params": {"query": "Eiffel tower"}}
FENCED_CODE = "<imgen>```json\n" + json.dumps(CODE) + "\n```</imgen>"
STRICT_SEARCH = "<imgen>" + json.dumps(SEARCH) + "</imgen>"
EDIT_OF_SLOT_0 = '<imgen>{"source": "edit", "description": "Bluer", "params": {"img_index": 0, "prompt": "blue"}}</imgen>'
RELEASE_CODE = "<imgen>{'source': 'code', 'description': 'EV', 'params': {'code': 'plt.plot(x, marker='o')'}}</imgen>"


def every_call_succeeds(calls: list[str] | None = None):
    """An injected executor that, like a lenient renderer, gives every valid-looking call an image."""

    async def execute(response: str, images: list[ImageData]) -> Document:
        parsed = parse_response(response, len(images))
        blocks = []
        for seg in parsed.segments:
            if isinstance(seg, ToolCall):
                blocks.append(ImageBlock(PNG, seg.source, seg.description, seg.params))
            elif isinstance(seg, InvalidTag):
                blocks.append(FailureBlock(seg.source or "unknown", seg.reason, seg.kind.value))
            elif type(seg).__name__ == "Text":
                blocks.append(TextBlock(seg.text))
        if calls is not None:
            calls.append(response)
        return Document(blocks=blocks, violations=parsed.violations, input_images=list(images))

    return execute


async def score(sample: Sample, config: RewardConfig | None = None, **kw):
    async with RewardScorer(config=config, judges=False, **kw) as scorer:
        return await scorer.score(sample)


def test_reward_reading_and_unrewarded_slots_are_pure_rules():
    parsed = parse_response(FENCED_CODE + STRICT_SEARCH + EDIT_OF_SLOT_0)
    strict = reward_reading(parsed)
    assert [type(s).__name__ for s in strict.slots] == ["InvalidTag", "ToolCall", "ToolCall"]
    assert strict.slots[0].kind is TagErrorKind.LENIENT
    assert unrewarded_slots(strict) == {0, 2}  # the lenient tag and the edit that builds on it
    assert unrewarded_slots(strict, n_input_images=1) == {0}  # with a user image, index 0 is that image
    assert reward_reading(parsed, RewardConfig(lenient_tags=True)) is parsed
    assert unrewarded_slots(parsed) == frozenset()


async def test_by_default_a_lenient_tag_is_invalid_for_the_reward():
    sample = Sample(prompt="Q", response="Sales.\n" + FENCED_CODE + "\nTower.\n" + STRICT_SEARCH,
                    image_num=2, tools=["code", "search"])
    r = await score(sample, execute=every_call_succeeds())
    assert (r.n_tags, r.n_valid_tags, r.n_images) == (2, 1, 1)
    assert r.s_num == 0.5
    assert r.r_attempt == pytest.approx(0.2 / 0.6) and r.r_success == pytest.approx(0.2 / 0.6)
    assert [v["kind"] for v in r.violations] == ["lenient_fence"]


async def test_lenient_tags_option_counts_the_lenient_reading():
    sample = Sample(prompt="Q", response="Sales.\n" + FENCED_CODE + "\nTower.\n" + STRICT_SEARCH,
                    image_num=2, tools=["code", "search"])
    r = await score(sample, RewardConfig(lenient_tags=True), execute=every_call_succeeds())
    assert (r.n_tags, r.n_valid_tags, r.n_images) == (2, 2, 2)
    assert r.s_num == 1.0 and r.r_attempt == 1.0 and r.r_success == 1.0
    assert [v["kind"] for v in r.violations] == ["lenient_fence"]  # still reported


async def test_the_release_code_layout_is_valid_for_the_reward():
    sample = Sample(prompt="Q", response="EV sales.\n" + RELEASE_CODE, image_num=1, tools=["code"])
    r = await score(sample, execute=every_call_succeeds())
    assert (r.n_valid_tags, r.n_images, r.r_attempt, r.violations) == (1, 1, 1.0, [])


async def test_a_pre_executed_document_does_not_count_images_of_lenient_slots():
    response = FENCED_CODE + STRICT_SEARCH + EDIT_OF_SLOT_0
    document = await every_call_succeeds()(response, [])
    assert len(document.images) == 3
    sample = Sample(prompt="Q", response=response, image_num=3, tools=["code", "search", "edit"], document=document)
    r = await score(sample)
    assert (r.n_valid_tags, r.n_images) == (2, 1)  # search only: the edit built on the lenient chart
    assert r.r_attempt == pytest.approx((0.2 + 0.3) / 0.9) and r.r_success == pytest.approx(0.2 / 0.9)
    r = await score(sample, RewardConfig(lenient_tags=True))
    assert (r.n_valid_tags, r.n_images) == (3, 3) and r.r_success == pytest.approx(1.0)


@pytest.fixture
def fake_tools():
    fakes.register_all()
    fakes.RECORD.__init__()
    tools = {t: {"backends": ["fake"], "retries": 0, "backoff_s": 0.01} for t in ("search", "diffusion", "code", "edit")}
    return load_settings(overrides={"tools": tools, "cache": {"enabled": False}}, environ={})


async def test_the_engine_does_not_run_a_tag_the_reward_counts_invalid(fake_tools):
    sample = Sample(prompt="Q", response=FENCED_CODE + STRICT_SEARCH + EDIT_OF_SLOT_0, image_num=3,
                    tools=["code", "search", "edit"])
    r = await score(sample, settings=fake_tools)
    assert [c[0] for c in fakes.RECORD.calls] == ["search"]  # no chart drawn, no edit of a missing chart
    assert (r.n_valid_tags, r.n_images) == (2, 1)
    fakes.RECORD.__init__()
    r = await score(sample, RewardConfig(lenient_tags=True), settings=fake_tools)
    assert sorted(c[0] for c in fakes.RECORD.calls) == ["code", "edit", "search"]
    assert (r.n_valid_tags, r.n_images) == (3, 3)


async def test_lenient_tags_is_settable_in_the_toml_reward_table(tmp_path):
    path = tmp_path / "llmi.toml"
    path.write_text("[reward]\nlenient_tags = true\n")
    settings = load_settings(path, environ={})
    assert settings.reward.lenient_tags is True and settings.reward.to_config().lenient_tags is True
    (tmp_path / "plain.toml").write_text("[reward]\nw_tool = 0.1\n")
    assert load_settings(tmp_path / "plain.toml", environ={}).reward.to_config().lenient_tags is False
    sample = Sample(prompt="Q", response=FENCED_CODE, image_num=1, tools=["code"])
    async with RewardScorer(settings, judges=False, execute=every_call_succeeds()) as scorer:
        r = await scorer.score(sample)
    assert (r.n_valid_tags, r.n_images) == (1, 1)
