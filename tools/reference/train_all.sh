#!/usr/bin/env bash
# Train the tiny NextFlow on ShapeWorld, stage after stage; run again to resume where it stopped.
#   nohup bash tools/reference/train_all.sh > tools/reference/runs/train_all.log 2>&1 &
# THREADS=2 uses both cores (the default, 1, leaves one to whoever else works on this machine).
set -euo pipefail
cd "$(dirname "$0")"
THREADS="${THREADS:-1}"
export OMP_NUM_THREADS="$THREADS"
mkdir -p runs
if [ ! -f runs/tokenizer/tokenizer.pt ]; then
  python train_tokenizer.py --out runs/tokenizer --threads "$THREADS" --resume
fi
if [ ! -f runs/transformer/transformer.pt ]; then
  python train_transformer.py --tokenizer runs/tokenizer/tokenizer.pt --out runs/transformer --threads "$THREADS" --resume
fi
echo "done: runs/tokenizer/eval.json runs/transformer/eval.json"
