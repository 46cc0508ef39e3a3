"""``llmi train`` with vLLM generating in the training process (TRL's ``vllm_mode="colocate"``) on a GPU.

Runs only where torch sees a CUDA GPU and ``vllm`` imports (``scripts/gpu_check.sh`` runs it there);
everywhere else it is skipped with the reason. The model is the tiny Qwen2 of the CPU end-to-end test,
widened to head_dim 64 so vLLM's attention kernels take it; vLLM loads it from its folder (config.json,
model.safetensors, tokenizer.json with the chat template). The judges are the loopback server, the tools
are real (chart sandbox, local image library).

``llmi train`` runs in a child process: vLLM sets up torch.distributed and its own global state in the
process that hosts it, and a CUDA crash there must come back as a failed test with the log, not take
pytest down.

Checked: both steps in ``metrics.jsonl`` with the required fields, 8 LLM-judge calls, real tool calls,
``checkpoint-1``/``checkpoint-2`` and a final model that ``from_pretrained`` loads, and that the rollouts
came from vLLM: TRL logs ``sampling/importance_sampling_ratio/*`` and ``sampling/sampling_logp_difference/*``
only when vLLM generated them (they compare vLLM's log-probs with the trained model's), and a small
difference means vLLM sampled from the weights being trained (synced before each generation).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from tests import train_support as ts


def _why_skip() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False); scripts/gpu_check.sh runs it on one"
    for name in ("trl", "transformers"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (pip install 'llmi[train]')"
    try:
        importlib.import_module("vllm")
    except Exception as exc:  # noqa: BLE001 - a broken install (wrong torch, missing CUDA libs) skips alike
        return f"vllm does not import ({type(exc).__name__}: {exc}); pip install a vllm built for torch {torch.__version__}"
    return None


SKIP = _why_skip()
pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.local_models,
              pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

#: Under gpu_check.sh's ``timeout 420``, so a hang fails here with the log instead of being killed.
RUN_TIMEOUT_S = 380
VLLM_METRICS = ("sampling/importance_sampling_ratio/mean", "sampling/sampling_logp_difference/mean")
REQUIRED = ("step", "reward", "s_num", "s_llm", "s_mllm", "r_tool", "judge_error_frac", "completion_length",
            "reward_time_s", "loss", "learning_rate", *(f"tool_success/{s}" for s in ("search", "code")))


def _tail(path, n: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no output)"


def llmi_train(log_path, *args: str) -> None:
    """``llmi train ARGS`` in a child process; fails the test with the end of its output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ts.ROOT / "src"), env.get("PYTHONPATH")) if p)
    env.setdefault("MASTER_ADDR", "127.0.0.1")  # TRL picks a free MASTER_PORT when none is set
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):  # one process; TRL sets them for vLLM itself
        env.pop(key, None)
    cmd = [sys.executable, "-c", "import sys; sys.argv[0] = 'llmi'; from llmi.cli import main; main()", "train", *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ts.ROOT))
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"llmi train --use-vllm ran past {RUN_TIMEOUT_S} s:\n{_tail(log_path)}")
    if rc != 0:
        pytest.fail(f"llmi train --use-vllm exited {rc}:\n{_tail(log_path)}")


def test_two_grpo_steps_generate_with_colocated_vllm(tmp_path):
    import transformers

    from tests.conftest import _judge_server

    model = ts.build_text_model(tmp_path / "tiny-qwen2", hidden_size=128, heads=2)
    data = ts.write_parquet(tmp_path / "train.parquet", ts.llmi_rows(4))
    out = tmp_path / "run"
    with _judge_server(ts.judge_reply) as (url, server):
        cfg = ts.write_config(tmp_path / "llmi.toml", url)
        llmi_train(tmp_path / "train.log", "--model", str(model), "--data", str(data), "--config", str(cfg),
                   "-o", str(out), "--max-steps", "2", "--use-vllm", "--vllm-mode", "colocate",
                   "--set", "vllm_gpu_memory_utilization=0.2", "--set", "vllm_max_model_length=512")
        requests = list(server.requests)

    log_tail = _tail(tmp_path / "train.log", 3000)
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert [l["step"] for l in lines] == [1, 2], log_tail
    for line in lines:
        missing = [k for k in REQUIRED if k not in line]
        assert not missing, missing
        assert line["rollouts"] == 4 and 0.0 <= line["reward"] <= 1.0
        assert line["judge_error_frac"] == 0.0 and line["completion_length"] > 0
        # the rollouts were sampled by vLLM, from the weights being trained
        absent = [k for k in VLLM_METRICS if k not in line]
        assert not absent, f"no {absent} in step {line['step']}: generation did not go through vLLM\n{log_tail}"
        nan = [k for k in VLLM_METRICS if line[k] is None]  # NaN is written as null
        assert not nan, f"{nan} NaN in step {line['step']}: vLLM's log-probs do not match the model's"
        assert math.isfinite(line["sampling/importance_sampling_ratio/mean"])
        assert 0.0 <= line["sampling/sampling_logp_difference/mean"] < 0.5, line
    llm_calls = [r for r in requests if "Image Quality" not in r["messages"][0]["content"]]
    assert len(llm_calls) == 8  # 2 steps x 4 rollouts, one LLM-judge call each
    calls = sum(l["tool_calls/code"] + l["tool_calls/search"] for l in lines)
    made = sum(l["images_per_rollout"] * l["rollouts"] for l in lines)
    assert calls > 0 and made > 0  # sampled tags ran through the real tools

    for step in (1, 2):
        assert (out / f"checkpoint-{step}" / "trainer_state.json").exists()
    final = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert final.config.model_type == "qwen2" and final.config.hidden_size == 128
    run = json.loads((out / "llmi_train.json").read_text())
    trainer = run["resolved"]["trainer"]
    assert trainer["use_vllm"] is True and trainer["vllm_mode"] == "colocate"
    assert trainer["vllm_gpu_memory_utilization"] == 0.2
