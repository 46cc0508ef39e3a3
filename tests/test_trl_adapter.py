"""TRL's real ``GRPOTrainer`` driving :func:`llmi.integrations.trl.reward_function` for two steps on CPU.

A 1-layer Llama and a word-level tokenizer are built here (no downloads). Their vocabulary holds one
complete, valid ``code`` tag as a single token, so sampled completions sometimes ask for an image; the
tags are "run" by an injected executor (one PNG per valid tag), and both judges are the loopback
OpenAI-compatible server of ``tests/conftest.py``. All logits of the model are 0 (its final norm is
zeroed) and a ``sequence_bias`` generation setting makes the tag likely, so both judge paths run. What is checked is the contract with TRL: the reward
function is awaited on TRL's event loop with the decoded completions and the dataset columns
(``image_num``, ``tools``), the MLLM judge is asked exactly for completions that made images, and
TRL logs a finite reward and our ``llmi/...`` metrics. Skipped when trl is not installed (the ``train``
use of llmi; CI may not install it).
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from llmi.config import JudgeSettings, Settings  # noqa: E402
from llmi.document import Document, FailureBlock, ImageBlock, TextBlock  # noqa: E402
from llmi.images import ImageData  # noqa: E402
from llmi.protocol import InvalidTag, ToolCall, parse_response  # noqa: E402
from llmi.integrations.trl import reward_function  # noqa: E402
from tests.helpers import make_png  # noqa: E402

pytestmark = pytest.mark.local_models

TAG = "<imgen>" + json.dumps(
    {"source": "code", "description": "bars", "params": {"code": "plt.bar([1],[2])"}}, separators=(",", ":")
) + "</imgen>"
WORDS = "the sales rose in spring and fell autumn chart of a city river bridge".split() + [TAG]  # no repeats
LLM_REPLY = "Text: 4\nImage: 3"
MLLM_REPLY = "Image Quality: 5\nTask Relevance: 4\nText-Image Relevance: 3"
PNG = ImageData.from_bytes(make_png(6, 6))


def tiny_model_and_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    config = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.norm.weight.fill_(0.0)  # all logits 0: sampling is uniform over the vocabulary
        model.lm_head.weight[vocab["</s>"]].fill_(0.0)
    return model, fast


def executor(calls: list):
    """Runs a response's tags the way the engine lays them out: one slot per tag, an image per valid tag."""

    async def execute(response: str, images: list[ImageData]) -> Document:
        calls.append(response)
        parsed = parse_response(response, len(images))
        blocks = []
        for seg in parsed.segments:
            if isinstance(seg, ToolCall):
                blocks.append(ImageBlock(PNG, seg.source, seg.description))
            elif isinstance(seg, InvalidTag):
                blocks.append(FailureBlock(seg.source or "unknown", seg.reason, seg.kind.value))
            elif type(seg).__name__ == "Text":
                blocks.append(TextBlock(seg.text))
        return Document(blocks=blocks, violations=parsed.violations, input_images=list(images))

    return execute


def test_grpo_trainer_runs_with_the_llmi_reward(tmp_path, judge_server):
    model, tokenizer = tiny_model_and_tokenizer()
    dataset = datasets.Dataset.from_dict(
        {
            "prompt": ["the sales rose in spring", "a city river bridge"] * 2,
            "image_num": [1, -1, 1, -1],
            "tools": [["code"], [], ["code"], []],
        }
    )

    def reply(body, n):
        return MLLM_REPLY if "Image Quality" in body["messages"][0]["content"] else LLM_REPLY

    with judge_server(reply) as (url, server):
        judge = JudgeSettings(base_url=url, model="judge-1", timeout_s=5.0, retries=1, concurrency=4)
        settings = Settings(llm_judge=judge, mllm_judge=judge)
        seen: list[dict] = []
        calls: list[str] = []
        inner = reward_function(settings, impute="group_mean", execute=executor(calls))

        async def llmi_reward(prompts, completions, **kwargs):
            seen.append({"prompts": prompts, "completions": completions, **kwargs})
            return await inner(prompts=prompts, completions=completions, **kwargs)

        args = trl.GRPOConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            max_steps=2,
            per_device_train_batch_size=4,
            num_generations=2,
            max_completion_length=8,
            learning_rate=1e-3,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=0,
            bf16=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
            # all logits are 0; this makes the tag token ~40% likely at each step, so both judges work
            generation_kwargs={"sequence_bias": {(tokenizer.convert_tokens_to_ids(TAG),): 2.5}},
        )
        trainer = trl.GRPOTrainer(
            model=model, reward_funcs=[llmi_reward], args=args, train_dataset=dataset, processing_class=tokenizer
        )
        trainer.train()
        stats = inner.stats()
        asyncio.run_coroutine_threadsafe(inner.aclose(), trainer.async_loop).result(10)
        requests = list(server.requests)

    # called by TRL with the decoded completions and our dataset columns, once per generation batch
    assert seen, "TRL never called the reward function"
    batch = seen[0]
    assert len(batch["completions"]) == len(batch["prompts"]) == 4
    assert all(isinstance(c, str) and c.strip() for c in batch["completions"])
    assert all(set(c.split()) <= set(WORDS) for c in batch["completions"])
    assert sorted(batch["image_num"]) == [-1, -1, 1, 1]
    assert all(t in (["code"], []) for t in batch["tools"])

    # every completion was judged; the MLLM judge exactly for those that made images (≤ 8 tags < 10)
    completions = [c for b in seen for c in b["completions"]]
    with_tag = [c for c in completions if TAG in c]
    llm_requests = [r for r in requests if "Image Quality" not in r["messages"][0]["content"]]
    mllm_requests = [r for r in requests if "Image Quality" in r["messages"][0]["content"]]
    assert with_tag and len(with_tag) < len(completions)
    assert len(llm_requests) == len(completions) and len(mllm_requests) == len(with_tag)
    assert len(calls) == len(with_tag)
    assert stats.samples == len(completions) and stats.scored == len(completions) and stats.dropped == 0
    # the tag's image reached the MLLM judge inside the answer markers
    parts = mllm_requests[0]["messages"][1]["content"]
    assert any(p["type"] == "image_url" for p in parts) and "<<<END ANSWER" in parts[-1]["text"]

    # TRL logged a finite reward in [0, 1] per step, and our component metrics
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert math.isfinite(entry["reward"]) and 0.0 <= entry["reward"] <= 1.0
        assert math.isfinite(entry["llmi/s_num"]) and entry["llmi/dropped_frac"] == 0.0
        assert math.isfinite(entry["rewards/llmi_reward/mean"])
