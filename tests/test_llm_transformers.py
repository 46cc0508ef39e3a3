"""The local transformers backend with tiny random models and tokenizers built here (no downloads).

A text-only Llama, and a Llava vision-language model (a 2-layer CLIP vision tower + a 1-layer Llama) with
its processor (a CLIP image processor + a word-level tokenizer with ``<image>`` as a special token + a
chat template), saved with ``save_pretrained`` and loaded back from ``model_path`` as real models are.

``LLMI_TEST_DEVICE`` (default ``cpu``) is the ``[llm] device`` these tests use; ``scripts/gpu_check.sh``
sets it to ``auto`` so that on a GPU machine the same tests run on CUDA.
"""

from __future__ import annotations

import json
import logging
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmi.config import LLMSettings, load_settings  # noqa: E402
from llmi.errors import ConfigError  # noqa: E402
from llmi.llm import create_llm  # noqa: E402
from llmi.llm.transformers_local import TransformersLLM  # noqa: E402

pytestmark = pytest.mark.local_models

DEVICE = os.environ.get("LLMI_TEST_DEVICE", "cpu")

WORDS = ("the sales rose in spring and fell in autumn chart photo of a city river bridge night "
         "<imgen> </imgen> <think> </think> hello world").split()
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% if think %} <think>{% endif %}{% endif %}"
)


def build_model(path, *, template: str = TEMPLATE, first: str | None = None) -> None:
    """A 1-layer Llama. ``first``: a token put at id 0 that the model then writes at every step (its final
    norm is zeroed, so all logits tie at 0 and greedy decoding takes the lowest id)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {t: i for i, t in enumerate(([first] if first else []) + specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = template
    fast.save_pretrained(path)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        # Never pick </s>, so the reply has exactly max_tokens tokens.
        model.lm_head.weight[vocab["</s>"]].fill_(0.0)
        if first:
            model.model.norm.weight.fill_(0.0)
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    build_model(path)
    return path


MSGS = [{"role": "system", "content": "write"}, {"role": "user", "content": "the sales"}]


async def test_streams_tokens_from_a_local_model(model_dir):
    llm = create_llm(LLMSettings(backend="transformers", model_path=str(model_dir), device=DEVICE,
                                 temperature=0, max_tokens=12))
    assert isinstance(llm, TransformersLLM)
    assert not llm.supports_images  # no processor in the folder
    s = llm.stream(MSGS)
    pieces = [d async for d in s]
    assert len(pieces) >= 2  # streamed piece by piece, not one blob at the end
    text = "".join(pieces)
    assert all(w in WORDS or w.startswith("<|") or w in ("<unk>", "<pad>", "<s>") for w in text.split())
    assert s.result.usage["completion_tokens"] == 12
    assert s.result.usage["prompt_tokens"] > 3
    assert s.result.finish_reason == "length"  # a random model never says EOS within 12 tokens: cut at max_tokens
    assert s.result.text == text and s.result.model == str(model_dir)
    # deterministic with temperature 0: the same again
    again = (await llm.complete(MSGS)).text
    assert again == text
    await llm.aclose()


async def test_a_sampling_seed_makes_a_sampled_reply_reproducible(model_dir):
    from llmi.request import Sampling

    llm = create_llm(LLMSettings(backend="transformers", model_path=str(model_dir), device=DEVICE,
                                 temperature=0, max_tokens=16))
    hot = dict(temperature=1.5, top_p=1.0)
    a = await llm.complete(MSGS, sampling=Sampling(seed=7, **hot))
    b = await llm.complete(MSGS, sampling=Sampling(seed=7, **hot))
    others = {(await llm.complete(MSGS, sampling=Sampling(seed=k, **hot))).text for k in (1, 2, 3)}
    await llm.aclose()
    assert a.text == b.text
    assert len(others | {a.text}) > 1  # the seed, not a greedy default, decided the text


async def test_stopping_early_stops_generation(model_dir):
    llm = create_llm(LLMSettings(backend="transformers", model_path=str(model_dir), device=DEVICE,
                                 temperature=0, max_tokens=200))
    gen = llm.stream(MSGS)
    first = await gen.__anext__()
    assert first
    await gen.aclose()  # the generation thread is told to stop and joined
    await llm.aclose()


async def test_template_that_opens_think_starts_in_reasoning(model_dir):
    llm = create_llm(LLMSettings(backend="transformers", model_path=str(model_dir), device=DEVICE,
                                 temperature=0, max_tokens=4,
                                 extra_body={"chat_template_kwargs": {"think": True}}))
    pieces = [d async for d in llm.stream(MSGS)]
    assert pieces[0] == "<think>"
    await llm.aclose()


async def test_missing_model_path_is_a_config_error(tmp_path):
    llm = create_llm(LLMSettings(backend="transformers", model_path=""))
    with pytest.raises(ConfigError, match="model_path"):
        await llm.prepare()
    llm = create_llm(LLMSettings(backend="transformers", model_path=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="not a folder"):
        await llm.prepare()


async def test_the_generate_pipeline_consumes_a_local_model(model_dir, tmp_path):
    from llmi.generation import Trace, agenerate

    settings = load_settings(overrides={"llm": {"backend": "transformers", "model_path": str(model_dir),
                                                "device": DEVICE, "temperature": 0, "max_tokens": 10},
                                        "cache": {"enabled": False}}, environ={})
    trace = Trace()
    doc = await agenerate("the sales", settings=settings, cache=False, trace=trace)
    assert doc.text.strip()
    assert trace.raw_response.strip().startswith(doc.text.strip()[:5])
    assert trace.llm_backend == "transformers" and trace.usage["completion_tokens"] == 10
    assert trace.finish_reason == "length"


# ------------------------------------------------------------------------------------------------
# Vision-language: a tiny Llava and its processor
# ------------------------------------------------------------------------------------------------

#: One vocabulary entry that is a whole edit tag (no spaces: the tokenizer splits on whitespace).
EDIT_TAG = ('<imgen>{"source":"edit","description":"recoloured","params":{"img_index":0,"prompt":"blue"}}'
            "</imgen>")
VLM_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %} {% endfor %}{% endif %} "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
IMAGE_SIZE, PATCH = 28, 14
#: (28/14)^2 = 4 patches; the CLIP tower adds a CLS token that the "default" strategy drops again.
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2


def build_vlm(path, *, first: str | None = None) -> dict[str, int]:
    """A Llava folder: processor (CLIP image processor + word-level tokenizer + template) and weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<image>"]
    vocab = {t: i for i, t in enumerate(([first] if first else []) + specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # <image> must be a special (added) token: the processor writes it IMAGE_TOKENS times with no spaces.
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=fast, patch_size=PATCH, vision_feature_select_strategy="default",
        chat_template=VLM_TEMPLATE, image_token="<image>", num_additional_image_tokens=1)
    processor.save_pretrained(path)
    vision = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH,
                                           projection_dim=16)
    text = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"])
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab["<image>"],
                                      image_seq_length=IMAGE_TOKENS, vision_feature_select_strategy="default",
                                      vision_feature_layer=-1)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config)
    with torch.no_grad():
        model.lm_head.weight[vocab["</s>"]].fill_(0.0)
        if first:
            model.model.language_model.norm.weight.fill_(0.0)
    model.save_pretrained(path)
    return vocab


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llava")
    vocab = build_vlm(path, first=EDIT_TAG)
    return path, vocab


@pytest.fixture(scope="module")
def blind_dir(tmp_path_factory):
    """A text-only model folder that always writes EDIT_TAG."""
    path = tmp_path_factory.mktemp("tiny-llama-edit")
    build_model(path, first=EDIT_TAG)
    return path


def _spy(monkeypatch):
    """Record the tensors each stream hands to ``model.generate`` and the vision tower's input shapes."""
    from llmi.llm import transformers_local as T

    seen: dict[str, list] = {"inputs": [], "vision": []}
    real = T._to_model

    def to_model(inputs, model):
        out = real(inputs, model)
        seen["inputs"].append(out)
        tower = getattr(getattr(model, "model", None), "vision_tower", None)
        if tower is not None and not getattr(tower, "_llmi_spied", False):
            tower.register_forward_hook(lambda mod, args, kw_out: seen["vision"].append(tuple(args[0].shape)))
            tower._llmi_spied = True
        return out

    monkeypatch.setattr(T, "_to_model", to_model)
    return seen


async def test_a_vlm_folder_sees_the_images(vlm_dir, monkeypatch):
    path, vocab = vlm_dir
    seen = _spy(monkeypatch)
    llm = create_llm(LLMSettings(backend="transformers", model_path=str(path), device=DEVICE,
                                 temperature=0, max_tokens=3))
    assert llm.supports_images
    from llmi.images import ImageData
    from tests.helpers import make_png

    images = [ImageData.from_bytes(make_png(40, 30, (200, 10, 10)))]
    s = llm.stream(MSGS, images=images)
    pieces = [d async for d in s]
    assert "".join(pieces).split() == [EDIT_TAG] * 3
    assert s.result.usage["completion_tokens"] == 3
    inputs = seen["inputs"][0]
    # the processor resized and cropped the 40x30 picture to the tower's 28x28 ...
    assert tuple(inputs["pixel_values"].shape) == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert inputs["pixel_values"].device.type == llm._loaded[0].device.type
    # ... wrote one <image> placeholder per image feature, in the last user message ...
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(vocab["<image>"]) == IMAGE_TOKENS
    assert ids.index(vocab["<image>"]) > ids.index(vocab["<|user|>"])
    # ... and the vision tower encoded it (once: the prefill; decoding reuses the cache)
    assert seen["vision"] == [(1, 3, IMAGE_SIZE, IMAGE_SIZE)]
    assert s.result.usage["prompt_tokens"] == len(ids)

    # Two images: two blocks of placeholders, two encodings.
    seen["inputs"].clear(), seen["vision"].clear()
    images.append(ImageData.from_bytes(make_png(20, 50, (10, 10, 200))))
    [d async for d in llm.stream(MSGS, images=images)]
    assert seen["inputs"][0]["input_ids"][0].tolist().count(vocab["<image>"]) == 2 * IMAGE_TOKENS
    assert sum(s[0] for s in seen["vision"]) == 2

    # The same folder without images: the processor's template, text parts only (it is not a causal LM).
    seen["inputs"].clear(), seen["vision"].clear()
    text = "".join([d async for d in llm.stream(MSGS)])
    assert text.split() == [EDIT_TAG] * 3
    assert "pixel_values" not in seen["inputs"][0] and not seen["vision"]
    await llm.aclose()


async def test_a_vlm_folder_with_vision_switched_off_sends_no_images(vlm_dir, monkeypatch):
    path, vocab = vlm_dir
    seen = _spy(monkeypatch)
    llm = create_llm(LLMSettings(backend="transformers", model_path=str(path), device=DEVICE,
                                 temperature=0, max_tokens=2, vision=False))
    assert not llm.supports_images
    from llmi.images import ImageData
    from tests.helpers import make_png

    out = "".join([d async for d in llm.stream(MSGS, images=[ImageData.from_bytes(make_png())])])
    assert out.split() == [EDIT_TAG] * 2
    assert "pixel_values" not in seen["inputs"][0]
    assert vocab["<image>"] not in seen["inputs"][0]["input_ids"][0].tolist() and not seen["vision"]
    await llm.aclose()


async def test_a_broken_model_folder_is_one_short_llm_error(tmp_path):
    from llmi.errors import LLMError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (tmp_path / "processor_config.json").write_text("{}")
    llm = create_llm(LLMSettings(backend="transformers", model_path=str(tmp_path), device=DEVICE))
    with pytest.raises(LLMError, match="cannot load the model") as info:
        [d async for d in llm.stream(MSGS)]
    assert len(str(info.value)) < 800 and "\n" not in str(info.value)


# -- the pipeline: the model writes an edit tag for image 0 ---------------------------------------


def _edit_backend():
    """A stand-in edit tool that records the image it was asked to edit."""
    from llmi.images import ImageData
    from llmi.tools.base import Backend, BackendOptions, ToolResult
    from tests.helpers import make_png

    class LocalTestEdit(Backend):
        tool, name = "edit", "localtest"
        Options = BackendOptions
        inputs: list = []

        async def run(self, request):
            type(self).inputs.append(request.input_image)
            return ToolResult(ImageData.from_bytes(make_png(8, 8, (0, 0, 255))), {"model": "localtest"})

    return LocalTestEdit


@pytest.fixture
def edit_backend():
    from llmi.tools import registry

    cls = _edit_backend()
    registry.register(cls)
    yield cls
    registry.unregister("edit", "localtest")


def _pipeline_settings(path, **llm):
    return load_settings(overrides={
        "llm": {"backend": "transformers", "model_path": str(path), "device": DEVICE, "temperature": 0,
                "max_tokens": 1, **llm},
        "tools": {t: {"backends": ["localtest"] if t == "edit" else []} for t in ("code", "search", "edit", "diffusion")},
        "cache": {"enabled": False}}, environ={})


async def test_the_pipeline_shows_a_vlm_the_image_and_it_edits_it(vlm_dir, edit_backend, monkeypatch):
    from llmi.generation import Trace, agenerate
    from tests.helpers import make_png

    path, vocab = vlm_dir
    seen = _spy(monkeypatch)
    user_png = make_png(30, 30, (9, 200, 9))
    trace = Trace()
    doc = await agenerate("recolour my photo", images=[user_png], settings=_pipeline_settings(path), trace=trace)
    assert trace.sees_images and seen["vision"] == [(1, 3, IMAGE_SIZE, IMAGE_SIZE)]
    assert seen["inputs"][0]["input_ids"][0].tolist().count(vocab["<image>"]) == IMAGE_TOKENS
    assert [b.type for b in doc.slots] == ["image"] and doc.images[0].provenance["backend"] == "localtest"
    assert edit_backend.inputs[0].data == user_png


async def test_a_text_only_model_is_told_it_cannot_see_and_still_edits_by_index(
        blind_dir, edit_backend, monkeypatch, caplog):
    from llmi.generation import Trace, agenerate
    from llmi.llm import transformers_local as T
    from tests.helpers import make_png

    chats = []
    real = T.TransformersLLM._inputs

    def inputs(self, templater, messages, images, *, parts, **kw):
        chats.append((messages, list(images)))
        return real(self, templater, messages, images, parts=parts, **kw)

    monkeypatch.setattr(T.TransformersLLM, "_inputs", inputs)
    user_png = make_png(30, 30, (9, 200, 9))
    trace = Trace()
    with caplog.at_level(logging.WARNING, logger="llmi.generation"):
        doc = await agenerate("recolour my photo", images=[user_png], settings=_pipeline_settings(blind_dir),
                              trace=trace)
    assert not trace.sees_images
    assert any("cannot see images" in r.getMessage() for r in caplog.records)
    messages, sent = chats[0]
    assert sent == []  # nothing image-shaped reached the tokenizer
    assert "cannot see them" in messages[-1]["content"] and "`edit`" in messages[-1]["content"]
    assert [b.type for b in doc.slots] == ["image"] and edit_backend.inputs[0].data == user_png
    assert trace.tool_calls[0].source == "edit" and trace.tool_calls[0].params["img_index"] == 0
