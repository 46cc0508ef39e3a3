#!/usr/bin/env bash
# Launch the LLM-I recipe on a Ray cluster with verl 0.9.1 and llmi's reward manager (see README.md).
set -euo pipefail
cd "$(dirname "$0")"
: "${RAY_ADDRESS:?set RAY_ADDRESS to the dashboard of the Ray head, e.g. http://head:8265}"
RECIPE="${RECIPE:-llmi-grpo}"
MODEL="${MODEL:-Qwen/Qwen3-4B-Instruct-2507}"
TRAIN="${TRAIN:-/shared/llmi/train.parquet}"
VAL="${VAL:-/shared/llmi/test.parquet}"
RUN_DIR="${RUN_DIR:-/shared/runs/${RECIPE}}"
NNODES="${NNODES:-2}"
NGPUS_PER_NODE="${NGPUS_PER_NODE:-8}"

llmi train --backend verl --recipe "$RECIPE" --model "$MODEL" --config llmi.toml \
    --data "$TRAIN" --val-data "$VAL" --output-dir "$RUN_DIR" \
    --set nnodes="$NNODES" --set gpus_per_node="$NGPUS_PER_NODE" --submit
