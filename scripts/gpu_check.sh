#!/usr/bin/env bash
# One-shot check of llmi's local-model paths on a GPU machine (CUDA), also runnable on a CPU box.
#
#   bash scripts/gpu_check.sh            # from the repo root; .whl/ (prepared beforehand) carried along
#
# 1. Installs, into a private folder, only the carried wheels (.whl/) whose packages the machine lacks
#    (nothing is downloaded: the GPU machine has no network), and writes an llmi dist-info there so the
#    tool registry finds the backends' entry points while the code itself comes from ./src.
# 2. Runs the tiny-random-model tests (transformers LLM + VLM, diffusers pipelines) with
#    LLMI_TEST_DEVICE=auto, which picks cuda when torch sees a GPU.
# 3. Times the local transformers backend streaming 256 tokens, cpu vs cuda, side by side.
# 4. With trl: llmi train's tiny-model tests (2 GRPO steps + resume, a VLM step, LoRA), then, when vllm
#    imports, 2 GRPO steps with vLLM colocated on the GPU (tests/test_train_gpu.py).
# Whole run: under 4 minutes without vllm, up to 7 more with it (each step has its own timeout).
# LLMI_GPU_FORCE_ALL=1 installs every carried wheel (to test the install step on a machine that has them all).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${LLMI_GPU_SITE:-/tmp/llmi-gpu-site}
rm -rf "$SITE" && mkdir -p "$SITE"
status=0

echo "== machine"
$PY - <<'PYEOF'
import platform, torch, transformers
print(f"python {platform.python_version()}  torch {torch.__version__}  transformers {transformers.__version__}")
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PYEOF

echo "== carried wheels"
WHEELS=$($PY - <<'PYEOF'
# A wheel is installed when none of its top-level modules can be imported here, or (for the few that
# pydantic/openai need recent versions of) when the machine's copy is older than the carried one.
import glob, importlib.metadata as md, importlib.util, os, re, zipfile
UPGRADE = {"typing_extensions", "anyio", "h11", "sniffio"}
def vkey(v):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:4])
for whl in sorted(glob.glob(".whl/*.whl")):
    dist, version = whl.split("/")[-1].split("-")[:2]
    tops = set()
    for name in zipfile.ZipFile(whl).namelist():
        first = name.split("/")[0]
        if first.endswith((".dist-info", ".data")):
            continue
        tops.add(first[:-3] if first.endswith(".py") else first)
    missing = not any(importlib.util.find_spec(t) for t in tops if t.isidentifier())
    older = False
    if not missing and dist.lower() in UPGRADE:
        try:
            older = vkey(md.version(dist)) < vkey(version)
        except md.PackageNotFoundError:
            older = True
    if missing or older or os.environ.get("LLMI_GPU_FORCE_ALL"):
        print(whl)
PYEOF
)
if [ -n "$WHEELS" ]; then
  for w in $WHEELS; do  # one by one: a wheel that does not fit this interpreter does not stop the rest
    if $PY -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$SITE" "$w" 2>/dev/null; then
      echo "  installed $(basename "$w")"
    else
      echo "  NOT installed (not for this python/platform?): $(basename "$w")"; status=1
    fi
  done
else
  echo "nothing to install: the machine has every package"
fi
$PY - "$SITE" <<'PYEOF'
# An llmi dist-info with pyproject's entry points, so importlib.metadata finds the backends.
import pathlib, sys, tomllib
proj = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
d = pathlib.Path(sys.argv[1]) / f"llmi-{proj['version']}.dist-info"
d.mkdir(parents=True, exist_ok=True)
(d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: llmi\nVersion: {proj['version']}\n")
lines = []
for group, eps in proj.get("entry-points", {}).items():
    lines.append(f"[{group}]")
    lines += [f"{k} = {v}" for k, v in eps.items()]
(d / "entry_points.txt").write_text("\n".join(lines) + "\n")
PYEOF
export PYTHONPATH="$SITE:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export LLMI_TEST_DEVICE=auto HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
$PY -c "import llmi, pydantic, openai, diffusers; from llmi.tools import registry; print('imports ok from', pydantic.__file__.rsplit('/', 2)[0], '; diffusion backends:', registry.names('diffusion'))" || status=1

echo "== tiny-model tests on device=auto"
timeout 200 $PY -m pytest -q -p no:cacheprovider -m local_models \
  tests/test_llm_transformers.py tests/test_diffusers_local.py tests/test_diffusers_pipelines.py -o addopts="" -rs || status=1

echo "== local transformers backend: 256 tokens, cpu vs cuda"
timeout 60 $PY - <<'PYEOF' || status=1
import asyncio, tempfile, time
import torch, transformers
transformers.utils.logging.disable_progress_bar()
from tokenizers import Tokenizer, models, pre_tokenizers
from llmi.config import LLMSettings
from llmi.llm.transformers_local import TransformersLLM

N = 256
SIZES = {"tiny (16-d, 1 layer)": (16, 1), "small (512-d, 8 layers)": (512, 8)}
WORDS = "the sales rose in spring and fell in autumn chart photo of a city river bridge night".split()
specials = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
vocab = {t: i for i, t in enumerate(specials + WORDS)}

def build(path, hidden, layers):
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                bos_token="<s>", eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    fast.save_pretrained(path)
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=hidden * 2,
                                   num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                                   max_position_embeddings=1024, bos_token_id=2, eos_token_id=3, pad_token_id=1)
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        m.save_pretrained(path)

async def timed(path, device):
    llm = TransformersLLM(LLMSettings(backend="transformers", model_path=path, device=device,
                                      temperature=0, max_tokens=N, extra_body={"min_new_tokens": N}))
    msgs = [{"role": "user", "content": "the sales rose in spring"}]
    [d async for d in llm.stream(msgs)]  # load + warm-up (CUDA context, kernels)
    t0 = time.perf_counter(); first = None
    async for _ in llm.stream(msgs):
        first = first or time.perf_counter() - t0
    total = time.perf_counter() - t0
    n = llm.usage["completion_tokens"]
    await llm.aclose()
    return first, total, n

devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
print(f"{'model':26} {'device':6} {'first':>8} {'total':>8} {'tok/s':>8} {'tokens':>6}")
for label, (hidden, layers) in SIZES.items():
    path = tempfile.mkdtemp(prefix="llmi-bench-")
    build(path, hidden, layers)
    res = {}
    for dev in devices:
        first, total, n = asyncio.run(timed(path, dev))
        res[dev] = n / total
        print(f"{label:26} {dev:6} {first:8.3f} {total:8.3f} {n / total:8.1f} {n:6d}")
    if "cuda" in res:
        print(f"{label:26} cuda/cpu throughput ratio: {res['cuda'] / res['cpu']:.2f}x")
if "cuda" not in devices:
    print("(no CUDA here: cpu only)")
PYEOF

echo "== llmi train: 2 GRPO steps + resume, a VLM step, LoRA (tiny models; cuda when torch sees a GPU)"
if $PY -c "import trl, peft" 2>/dev/null; then
  timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_train_e2e.py -o addopts="" -rs || status=1
  echo "== llmi train --use-vllm --vllm-mode colocate: 2 GRPO steps, vLLM generating on the GPU"
  if timeout 120 $PY -c "import vllm" 2>/dev/null; then
    timeout 420 $PY -m pytest -q -p no:cacheprovider tests/test_train_gpu.py -o addopts="" -rs || status=1
  else
    TORCH_V=$($PY -c "import torch; print(torch.__version__)" 2>/dev/null)
    echo "(vllm does not import here: pip install a vllm release built for this torch ($TORCH_V; TRL 1.16 takes"
    echo " vllm 0.22-0.31; check that 'pip install vllm==X --dry-run' keeps torch) on a machine with network,"
    echo " then rerun; its wheel is too large to carry in .whl/. Skipping the vLLM check.)"
  fi
else
  echo "(trl/peft not on this machine: carry their wheels in .whl/ to run the training check)"
fi

echo "== gpu_check: $([ $status = 0 ] && echo OK || echo FAILED)"
exit $status
