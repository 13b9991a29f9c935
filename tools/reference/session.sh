#!/usr/bin/env bash
# Training of the embedded model across sessions and machines.
#
#   bash tools/reference/session.sh start    # restore committed checkpoints into runs/, train niced in the background
#   bash tools/reference/session.sh status   # where each stage stands (step, CPU-hours, last evaluation)
#   bash tools/reference/session.sh save     # copy the latest checkpoints and the learning curve into checkpoints/
#   bash tools/reference/session.sh stop     # stop the background training (its last checkpoint stays)
#
# checkpoints/ is committed (at most once per session, replacing the previous files, so the
# repository stays small): tokenizer.pt (finished tokenizer, or tokenizer-checkpoint.pt with
# its optimizer while it trains), transformer-checkpoint.pt (model, optimizer, step, CPU
# seconds), curve.jsonl (the learning curve of both stages: loss and ShapeEval against
# CPU-hours, appended from the runs' logs). The recipe is recipe.env beside this file: every
# session trains with the same flags, so a resumed run continues the same schedule.
# Data is a pure function of the step, so a resumed run sees the same samples on any machine.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
CK=checkpoints
RUNS=runs
# shellcheck source=recipe.env
source recipe.env
mkdir -p "$CK" "$RUNS"
if ! python3 -c "import torch, numpy, PIL, safetensors" 2>/dev/null; then
    echo "error: the training needs PyTorch: pip install -r tools/reference/requirements.txt" >&2
    exit 1
fi

step_of() {  # step recorded in a torch checkpoint, or -1
    [ -f "$1" ] || { echo -1; return; }
    python3 - "$1" <<'EOF'
import sys, torch
s = torch.load(sys.argv[1], weights_only=False, map_location="cpu")
print(s.get("step", 1 << 40) if "optimizer" in s else 1 << 40)
EOF
}

restore() {
    mkdir -p "$RUNS/tokenizer" "$RUNS/transformer"
    if [ -f "$CK/tokenizer.pt" ] && [ ! -f "$RUNS/tokenizer/tokenizer.pt" ]; then
        cp "$CK/tokenizer.pt" "$RUNS/tokenizer/tokenizer.pt"
        echo "restored the finished tokenizer"
    elif [ -f "$CK/tokenizer-checkpoint.pt" ] && [ "$(step_of "$CK/tokenizer-checkpoint.pt")" -gt "$(step_of "$RUNS/tokenizer/checkpoint.pt")" ]; then
        cp "$CK/tokenizer-checkpoint.pt" "$RUNS/tokenizer/checkpoint.pt"
        echo "restored the tokenizer checkpoint (step $(step_of "$RUNS/tokenizer/checkpoint.pt"))"
    fi
    if [ -f "$CK/transformer-checkpoint.pt" ] && [ "$(step_of "$CK/transformer-checkpoint.pt")" -gt "$(step_of "$RUNS/transformer/checkpoint.pt")" ]; then
        cp "$CK/transformer-checkpoint.pt" "$RUNS/transformer/checkpoint.pt"
        echo "restored the transformer checkpoint (step $(step_of "$RUNS/transformer/checkpoint.pt"))"
    fi
    for stage in tokenizer transformer; do  # logs continue across sessions
        if [ -f "$CK/$stage-log.jsonl" ] && [ ! -s "$RUNS/$stage/log.jsonl" ]; then
            cp "$CK/$stage-log.jsonl" "$RUNS/$stage/log.jsonl"
        fi
    done
}

train() {  # both stages in order, each resuming from its checkpoint
    if [ ! -f "$RUNS/tokenizer/tokenizer.pt" ]; then
        python3 train_tokenizer.py --config "$CONFIG" --out "$RUNS/tokenizer" --threads "$THREADS" --resume $TOKENIZER_ARGS
    fi
    if [ ! -f "$RUNS/transformer/transformer.pt" ]; then
        # shellcheck disable=SC2086
        python3 train_transformer.py --config "$CONFIG" --tokenizer "$RUNS/tokenizer/tokenizer.pt" --out "$RUNS/transformer" \
            --threads "$THREADS" --resume $TRANSFORMER_ARGS
    fi
}

case "${1:-}" in
start)
    restore
    if pgrep -f "python3 train_(tokenizer|transformer).py" >/dev/null; then
        echo "training is already running"; exit 0
    fi
    nohup nice -n "${NICE:-10}" bash "$HERE/session.sh" train >>"$RUNS/session.log" 2>&1 &
    echo "training in the background (pid $!), log: tools/reference/$RUNS/session.log"
    ;;
train) train ;;
stop) pkill -f "python3 train_(tokenizer|transformer).py" && echo stopped || echo "not running" ;;
save)
    if [ -f "$RUNS/tokenizer/tokenizer.pt" ]; then
        cp "$RUNS/tokenizer/tokenizer.pt" "$CK/tokenizer.pt"; rm -f "$CK/tokenizer-checkpoint.pt"
    elif [ -f "$RUNS/tokenizer/checkpoint.pt" ]; then
        cp "$RUNS/tokenizer/checkpoint.pt" "$CK/tokenizer-checkpoint.pt"
    fi
    [ -f "$RUNS/transformer/checkpoint.pt" ] && cp "$RUNS/transformer/checkpoint.pt" "$CK/transformer-checkpoint.pt"
    for stage in tokenizer transformer; do
        [ -f "$RUNS/$stage/log.jsonl" ] && cp "$RUNS/$stage/log.jsonl" "$CK/$stage-log.jsonl"
    done
    python3 curve.py "$CK" > "$CK/curve.md"
    ls -la "$CK"
    ;;
status) python3 curve.py "$RUNS" --last ;;
*) sed -n '2,16p' "$HERE/session.sh"; exit 2 ;;
esac
