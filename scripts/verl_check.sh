#!/usr/bin/env bash
# llmi's verl adapter against the real verl 0.9.1, in a virtual environment of its own.
#
#   bash scripts/verl_check.sh          # from anywhere; exit code = pytest's (3 when the install fails)
#
# verl 0.9.1 pins transformers >=5.5.3,<5.11, so it cannot share llmi's main environment (TRL 1.16 wants
# a newer one). This script:
# 1. creates ${VERL_VENV:-/tmp/llmi-verl-venv} (kept and reused while torch, verl, the extras,
#    pyproject.toml and this checkout's path are the same), installs the CPU torch of constraints.txt,
#    verl==0.9.1 with all its declared dependencies (ray[default], tensordict 0.10, hydra, transformers
#    5.10, wandb, ...), then this checkout editable with its `code` and `verl` extras, plus the three
#    modules verl's agent loop imports that verl 0.9.1 lists only under its optional extras (cachetools,
#    fastapi, uvicorn), plus pytest;
# 2. runs tests/test_train_verl.py there with LLMI_REQUIRE_VERL=1: the stand-in tests and the real-verl
#    ones (a missing verl fails instead of skipping), including a local Ray cluster with two reward-loop
#    actors. No GPU, no network beyond the package index (judges are loopback servers).
# Fresh venv with warm pip caches: about 2 minutes to install, under a minute of tests.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV=${VERL_VENV:-/tmp/llmi-verl-venv}
VPY="$VENV/bin/python"
LOG="$VENV.install.log"
TORCH="torch==2.13.0"
VERL="verl==0.9.1"  # as the `verl` extra of pyproject.toml pins it
EXTRA_PKGS="cachetools fastapi uvicorn pytest pytest-asyncio"
# tensordict 0.10 (verl's cap) needs pyvers 0.1, which needs packaging <26; unless told, pip picks the newest
# packaging first and then backtracks through wandb/virtualenv versions for over ten minutes
PIP_HINTS="packaging<26"
STAMP_TEXT="$TORCH|$VERL|$PIP_HINTS|$EXTRA_PKGS|$ROOT|$(sha256sum pyproject.toml constraints.txt | sha256sum | cut -c1-16)"

if [ -x "$VPY" ] && [ "$(cat "$VENV/.llmi-verl-stamp" 2>/dev/null)" = "$STAMP_TEXT" ]; then
  echo "== venv $VENV (cached)"
else
  echo "== venv $VENV (installing; log: $LOG)"
  start=$(date +%s)
  rm -rf "$VENV"
  {
    "$PY" -m venv "$VENV" &&
    timeout 300 "$VPY" -m pip install -c constraints.txt "$TORCH" &&
    timeout 480 "$VPY" -m pip install -c constraints.txt -e "$ROOT[code,verl]" "$VERL" $PIP_HINTS $EXTRA_PKGS
  } >"$LOG" 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then
    grep -v "is ignored: it is neither" "$LOG" | tail -25
    echo "verl_check: the install failed (exit $rc); see $LOG" >&2
    exit 3
  fi
  echo "$STAMP_TEXT" >"$VENV/.llmi-verl-stamp"
  echo "   installed in $(( $(date +%s) - start )) s"
fi

"$VPY" - <<'PYEOF' || { echo "verl_check: verl does not import in $VENV" >&2; exit 3; }
import importlib.metadata as md
import torch, verl
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls  # noqa: F401
print("   " + "  ".join(f"{p} {md.version(p)}" for p in
                        ("verl", "transformers", "ray", "tensordict", "hydra-core", "torch", "llmi")))
assert verl.__version__ == "0.9.1", verl.__version__
PYEOF

echo "== tests/test_train_verl.py with real verl"
LLMI_REQUIRE_VERL=1 timeout 600 "$VPY" -m pytest -q -p no:cacheprovider -rs tests/test_train_verl.py
exit $?
