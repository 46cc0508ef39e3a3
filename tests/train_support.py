"""What the training tests share: tiny models built here (no downloads), LLM-I parquet files, a config.

The text model is a 1-layer Qwen2 with a word-level tokenizer and a chat template; its final norm is
zeroed, so every token is equally likely and a sampled completion often holds one of the two whole-tag
tokens of its small vocabulary: a real ``code`` tag (run by the sandboxed chart tool) and a ``search``
tag (answered by the local image library in ``examples/library``). The vision-language model is a tiny
Llava (CLIP tower + 1-layer Llama) with a processor, whose vocabulary holds an ``edit`` tag on input
image 0 (run by the Pillow editor). Judges are the loopback OpenAI-compatible server of conftest.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "examples" / "library"

CODE_TAG = "<imgen>" + json.dumps(
    {"source": "code", "description": "bars", "params": {"code": "plt.bar([1,2],[2,3])"}}, separators=(",", ":")
) + "</imgen>"
SEARCH_TAG = "<imgen>" + json.dumps(
    {"source": "search", "description": "a lighthouse", "params": {"query": "lighthouse"}}, separators=(",", ":")
) + "</imgen>"
EDIT_TAG = "<imgen>" + json.dumps(
    {"source": "edit", "description": "grey", "params": {"img_index": 0, "prompt": "grayscale"}},
    separators=(",", ":"),
) + "</imgen>"
WORDS = "the sales rose in spring and fell autumn chart of a city river bridge photo".split()
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
VLM_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %} {% endfor %}{% endif %} "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
LLM_REPLY = "Text: 4\nImage: 3"
MLLM_REPLY = "Image Quality: 5\nTask Relevance: 4\nText-Image Relevance: 3"
SYSTEM = "Write an illustrated answer with imgen tags."


def judge_reply(body, n):
    return MLLM_REPLY if "Image Quality" in body["messages"][0]["content"] else LLM_REPLY


def _tokenizer(words, specials, **extra):
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>", **extra
    )
    return fast, vocab


def build_text_model(path: Path, *, hidden_size: int = 16, heads: int = 2) -> Path:
    """A tiny Qwen2 causal LM + tokenizer with a chat template, saved as a model folder.

    The defaults give head_dim 8, which transformers runs anywhere; vLLM's attention kernels want a head
    size it supports (64 is safe everywhere): ``hidden_size=128, heads=2``."""
    import torch
    import transformers

    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    fast, vocab = _tokenizer(WORDS + [CODE_TAG, SEARCH_TAG], specials)
    fast.chat_template = TEMPLATE
    fast.save_pretrained(path)
    config = transformers.Qwen2Config(
        vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=1,
        num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=512, bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"], tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.model.norm.weight.fill_(0.0)  # uniform sampling over the small vocabulary
    model.save_pretrained(path)
    return path


IMAGE_SIZE, PATCH = 28, 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2


def build_vlm(path: Path) -> Path:
    """A tiny Llava folder (processor + weights) whose vocabulary holds an edit tag on input image 0."""
    import torch
    import transformers

    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<image>"]
    fast, vocab = _tokenizer(WORDS + [EDIT_TAG, CODE_TAG], specials, extra_special_tokens={"image_token": "<image>"})
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=fast, patch_size=PATCH, vision_feature_select_strategy="default",
        chat_template=VLM_TEMPLATE, image_token="<image>", num_additional_image_tokens=1)
    processor.save_pretrained(path)
    vision = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH,
                                           projection_dim=16)
    text = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"])
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab["<image>"],
                                      image_seq_length=IMAGE_TOKENS, vision_feature_select_strategy="default",
                                      vision_feature_layer=-1)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config)
    with torch.no_grad():
        model.model.language_model.norm.weight.fill_(0.0)
    model.save_pretrained(path)
    return path


def png_bytes(w: int = 40, h: int = 30, color=(200, 40, 40)) -> bytes:
    from tests.helpers import make_png

    return make_png(w, h, color)


def llmi_rows(n: int = 4, *, with_images: bool = False) -> list[dict]:
    """Rows in the LLM-I release's schema (interleaved; interleaved_mm with an input image)."""
    rows = []
    prompts = ["the sales rose in spring", "a city river bridge", "chart of the sales", "photo of a river"]
    for i in range(n):
        text = prompts[i % len(prompts)] + f" {i}"
        if with_images:
            rows.append({
                "data_source": "interleaved_mm",
                "prompt": [{"role": "user", "content": "<image> " + text}],
                "images": [{"bytes": png_bytes(40, 30, (40 * i % 255, 90, 160)), "path": None}],
                "extra_info": {"image_num": 1, "tools": ["edit"], "split": "train", "question": text, "index": i},
            })
        else:
            rows.append({
                "data_source": "interleaved",
                "prompt": text,
                "extra_info": {"image_num": [1, -1, 2, 99][i % 4], "tools": [["code"], [], ["code", "search"],
                                                                             ["search"]][i % 4],
                               "split": "train", "question": text, "index": i},
            })
    return rows


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_config(path: Path, judge_url: str, *, train: str = "", extra: str = "") -> Path:
    """An llmi.toml: loopback judges, the real chart sandbox, the local library, the Pillow editor."""
    system = path.parent / "system.txt"
    system.write_text(SYSTEM + "\n\n{{TOOLS}}\n", encoding="utf-8")
    path.write_text(f"""
[llm_judge]
base_url = "{judge_url}"
model = "judge-1"
timeout_s = 10
retries = 1
concurrency = 8

[mllm_judge]
base_url = "{judge_url}"
model = "judge-1"
timeout_s = 10
retries = 1
concurrency = 8

[tools.search]
backends = ["local"]

[backends.search.local]
root = "{LIBRARY}"

[tools.code]
backends = ["sandbox"]

[tools.edit]
backends = ["pillow"]

[images]
min_width = 8
min_height = 8

[cache]
enabled = false

[train]
system_prompt = "{system}"
num_generations = 2
per_device_train_batch_size = 4
prompt_batch = 2
max_completion_length = 12
max_prompt_length = 400
learning_rate = 0.001
warmup_steps = 0
save_steps = 1
gradient_checkpointing = false
samples_every = 1
samples_per_page = 3
dataloader_num_workers = 0
disable_tqdm = true
{train}
{extra}
""", encoding="utf-8")
    return path
