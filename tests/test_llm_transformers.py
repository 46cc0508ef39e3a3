"""The local transformers backend with a tiny random Llama and a tokenizer built here (no downloads)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmi.config import LLMSettings, load_settings  # noqa: E402
from llmi.errors import ConfigError  # noqa: E402
from llmi.llm import create_llm  # noqa: E402
from llmi.llm.transformers_local import TransformersLLM  # noqa: E402

pytestmark = pytest.mark.local_models

WORDS = ("the sales rose in spring and fell in autumn chart photo of a city river bridge night "
         "<imgen> </imgen> <think> </think> hello world").split()
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% if think %} <think>{% endif %}{% endif %}"
)


def build_model(path, *, template: str = TEMPLATE) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
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
        bos_token_id=2, eos_token_id=3, pad_token_id=1,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    # Never pick </s>, so the reply has exactly max_tokens tokens.
    with torch.no_grad():
        model.lm_head.weight[3].fill_(0.0)
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    build_model(path)
    return path


MSGS = [{"role": "system", "content": "write"}, {"role": "user", "content": "the sales"}]


async def test_streams_tokens_from_a_local_model(model_dir):
    llm = create_llm(LLMSettings(backend="transformers", model_path=str(model_dir), device="cpu",
                                 temperature=0, max_tokens=12))
    assert isinstance(llm, TransformersLLM)
    assert not llm.supports_images  # no processor in the folder
    pieces = [d async for d in llm.stream(MSGS)]
    assert len(pieces) >= 2  # streamed piece by piece, not one blob at the end
    text = "".join(pieces)
    assert all(w in WORDS or w.startswith("<|") or w in ("<unk>", "<pad>", "<s>") for w in text.split())
    assert llm.usage["completion_tokens"] == 12
    assert llm.usage["prompt_tokens"] > 3
    # deterministic with temperature 0: the same again
    again = "".join([d async for d in llm.stream(MSGS)])
    assert again == text
    await llm.aclose()


async def test_stopping_early_stops_generation(model_dir):
    llm = create_llm(LLMSettings(backend="transformers", model_path=str(model_dir), device="cpu",
                                 temperature=0, max_tokens=200))
    gen = llm.stream(MSGS)
    first = await gen.__anext__()
    assert first
    await gen.aclose()  # the generation thread is told to stop and joined
    await llm.aclose()


async def test_template_that_opens_think_starts_in_reasoning(model_dir):
    llm = create_llm(LLMSettings(backend="transformers", model_path=str(model_dir), device="cpu",
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
                                                "device": "cpu", "temperature": 0, "max_tokens": 10},
                                        "cache": {"enabled": False}}, environ={})
    trace = Trace()
    doc = await agenerate("the sales", settings=settings, cache=False, trace=trace)
    assert doc.text.strip()
    assert trace.raw_response.strip().startswith(doc.text.strip()[:5])
    assert trace.llm_backend == "transformers" and trace.usage["completion_tokens"] == 10
