#!/usr/bin/env bash
# Side-by-side time per 128 px image of nextflow-tiny on the CPU: NextFlow-rs vs the PyTorch
# reference (tools/reference/nextflow_ref.py), same schedule (7 scales up to 8x8), CFG 3, top-k 50,
# Philox sampler, seed 0, KV cache, f32.
#
# Usage: tools/bench/tiny_image.sh [ROUNDS]      (default 5)
# Each round runs, alternating: `nextflow generate ... --json --device cpu` (a fresh process; its
# timings exclude loading, but include the process's first-call effects: it is not warmed up), then
# tools/bench/torch_tiny_image.py --runs 1 (a fresh process: one warm-up generation, then one timed).
# The table shows medians over the rounds per stage. Also checks both draw the same image.
# Env: THREADS (2), PROMPT, SEED (0), NEXTFLOW (target/release/nextflow), NEXTFLOW_BENCH_NO_PAUSE=1,
#      WAIT_QUIET=S (wait up to S s for other busy processes, e.g. builds, to finish first).
# The background training (train_transformer.py) is paused while measuring and always resumed.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-5}
THREADS=${THREADS:-2}
PROMPT=${PROMPT:-a red circle above a blue square}
SEED=${SEED:-0}
NEXTFLOW=${NEXTFLOW:-target/release/nextflow}
export OMP_NUM_THREADS=$THREADS
[ -x "$NEXTFLOW" ] || { echo "no $NEXTFLOW (cargo build --release)" >&2; exit 1; }

OUT=$(mktemp -d /tmp/tiny-image-bench.XXXXXX)
. tools/bench/pause_training.sh
wait_quiet
pause_training
report_load
echo "[bench] $NEXTFLOW: $(stat -c '%y' "$NEXTFLOW" | cut -d. -f1), sha256 $(sha256sum "$NEXTFLOW" | cut -c1-16); git $(git rev-parse --short HEAD 2>/dev/null)" >&2

for i in $(seq 1 "$ROUNDS"); do
    echo "[bench] round $i/$ROUNDS: nextflow" >&2
    "$NEXTFLOW" generate --prompt "$PROMPT" --seed "$SEED" --out "$OUT/ours-$i.png" --force --json --device cpu \
        > "$OUT/ours.$i.json" 2> "$OUT/ours.$i.err" || { cat "$OUT/ours.$i.err" >&2; exit 1; }
    echo "[bench] round $i/$ROUNDS: torch" >&2
    extra=(); [ "$i" = 1 ] && extra=(--out "$OUT/torch.png")
    python tools/bench/torch_tiny_image.py --prompt "$PROMPT" --seed "$SEED" --runs 1 --threads "$THREADS" "${extra[@]}" \
        > "$OUT/torch.$i.json" 2> "$OUT/torch.$i.err" || { cat "$OUT/torch.$i.err" >&2; exit 1; }
done
resume_training

python - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
import numpy as np
from PIL import Image
out, rounds = sys.argv[1], int(sys.argv[2])
med = statistics.median
ours = [json.load(open(f"{out}/ours.{i}.json")) for i in range(1, rounds + 1)]
torch_ = [json.load(open(f"{out}/torch.{i}.json")) for i in range(1, rounds + 1)]
o = [r["timings_ms"] for r in ours]
O = {"prefill": med(t["prefill"] for t in o), "decoder": med(t["decoder"] for t in o), "total": med(t["total"] for t in o),
     "scales": [med(t["scales"][k] for t in o) for k in range(len(o[0]["scales"]))]}
T = {"prefill": med(r["prefill_ms"] for r in torch_), "decoder": med(r["decoder_ms"] for r in torch_), "total": med(r["total_ms"] for r in torch_),
     "scales": [med(r["scales_ms"][k] for r in torch_) for k in range(len(torch_[0]["scales_ms"]))],
     "sample": [med(r["scales_sample_ms"][k] for r in torch_) for k in range(len(torch_[0]["scales_ms"]))]}
scales = torch_[0]["scales"]
print(f"\nnextflow-tiny, one 128 px image, prompt {torch_[0]['prompt']!r}, seed {torch_[0]['seed']}, CFG 3, top-k 50, philox; "
      f"CPU, {torch_[0]['threads']} threads; median of {rounds} rounds (ms)")
print(f"{'stage':<22} {'nextflow-rs':>12} {'torch ref':>12} {'speedup':>8}   (torch: of which numpy philox sampling)")
def row(name, a, b, note=""):
    print(f"{name:<22} {a:>12.1f} {b:>12.1f} {b / a if a > 0 else float('inf'):>7.1f}x   {note}")
row("prefill", O["prefill"], T["prefill"])
for k, (h, w) in enumerate(scales):
    row(f"scale {k + 1} ({h}x{w})", O["scales"][k], T["scales"][k], f"({T['sample'][k]:.1f})")
row("scales (sum)", sum(O["scales"]), sum(T["scales"]), f"({sum(T['sample']):.1f})")
row("decoder", O["decoder"], T["decoder"])
row("total", O["total"], T["total"])
print("scale k = its code logits + CFG sampling, then (all but the last) the next input map and its forward")
print(f"\nspeedup ours/torch (total time torch / ours): {T['total'] / O['total']:.2f}x (target >= 2x)")
print("nextflow totals per round (fresh process each, no warm-up):", ", ".join(f"{t['total']:.1f}" for t in o))
print("torch totals per round (after one warm-up in the process):", ", ".join(f"{r['total_ms']:.1f}" for r in torch_),
      "| its warm-up runs:", ", ".join(f"{r['warmup_total_ms']:.1f}" for r in torch_))
print(f"torch {torch_[0]['torch']}")
a = np.asarray(Image.open(f"{out}/torch.png")).astype(int)
b = np.asarray(Image.open(f"{out}/ours-1.png")).astype(int)
d = np.abs(a - b)
print(f"same image? max |diff| {d.max()} /255, mean {d.mean():.2e} (uint8 RGB, ours round 1 vs torch)")
PY
echo "(raw JSON and PNGs in $OUT)"
