#!/usr/bin/env bash
# Side-by-side time per 128 px image of nextflow-tiny on the CPU: NextFlow-rs vs the PyTorch
# reference (tools/reference/nextflow_ref.py), same schedule (7 scales up to 8x8), CFG 3, top-k 50,
# Philox sampler, seed 0, KV cache, f32.
#
# Usage: tools/bench/tiny_image.sh [ROUNDS] [PER_ROUND]      (defaults 5 and 1)
# Each round runs, alternating, two fresh processes that do the same: one warm-up generation, then
# PER_ROUND timed ones — `nextflow bench image --warmup 1 --reps PER_ROUND --json --device cpu`,
# then tools/bench/torch_tiny_image.py --runs PER_ROUND. The table shows, per stage, the median
# and the minimum over all timed runs (on a shared machine the minimum is the better estimate of
# uncontended speed), and each side's warm-up (first generation of a process) totals. Also checks
# both draw the same image (`nextflow generate` writes ours once).
# Env: THREADS (2), PROMPT, SEED (0), NEXTFLOW (target/release/nextflow), NEXTFLOW_BENCH_NO_PAUSE=1,
#      WAIT_QUIET=S (wait up to S s for other busy processes, e.g. builds, to finish first).
# The background training (train_transformer.py) is paused while measuring and always resumed.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-5}
PER=${2:-1}
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
    echo "[bench] round $i/$ROUNDS: nextflow x $PER" >&2
    "$NEXTFLOW" --device cpu bench image --prompt "$PROMPT" --warmup 1 --reps "$PER" --json \
        > "$OUT/ours.$i.json" 2> "$OUT/ours.$i.err" || { cat "$OUT/ours.$i.err" >&2; exit 1; }
    echo "[bench] round $i/$ROUNDS: torch" >&2
    extra=(); [ "$i" = 1 ] && extra=(--out "$OUT/torch.png")
    python tools/bench/torch_tiny_image.py --prompt "$PROMPT" --seed "$SEED" --runs "$PER" --threads "$THREADS" "${extra[@]}" \
        > "$OUT/torch.$i.json" 2> "$OUT/torch.$i.err" || { cat "$OUT/torch.$i.err" >&2; exit 1; }
done
resume_training
"$NEXTFLOW" generate --prompt "$PROMPT" --seed "$SEED" --out "$OUT/ours.png" --force --device cpu 2> "$OUT/ours-png.err" \
    || { cat "$OUT/ours-png.err" >&2; exit 1; }

python - "$OUT" "$ROUNDS" "$PER" <<'PY'
import json, statistics, sys
import numpy as np
from PIL import Image
out, rounds, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
med = statistics.median
ours_ = [json.load(open(f"{out}/ours.{i}.json")) for i in range(1, rounds + 1)]
o = [r for oj in ours_ for r in oj["runs_ms"]]
torch_ = [json.load(open(f"{out}/torch.{i}.json")) for i in range(1, rounds + 1)]
t = [r for tj in torch_ for r in tj["runs_ms"]]
K = len(o[0]["scales"])
def stats(f, xs):
    v = [f(x) for x in xs]
    return med(v), min(v)
rows = [("prefill", lambda x: x["prefill"], lambda x: x["prefill_ms"], None)]
scales = torch_[0]["scales"]
for k, (h, w) in enumerate(scales):
    rows.append((f"scale {k + 1} ({h}x{w})", lambda x, k=k: x["scales"][k], lambda x, k=k: x["scales_ms"][k], lambda x, k=k: x["scales_sample_ms"][k]))
rows += [("scales (sum)", lambda x: sum(x["scales"]), lambda x: sum(x["scales_ms"]), lambda x: sum(x["scales_sample_ms"])),
         ("decoder", lambda x: x["decoder"], lambda x: x["decoder_ms"], None),
         ("total", lambda x: x["total"], lambda x: x["total_ms"], None)]
print(f"\nnextflow-tiny, one 128 px image, prompt {torch_[0]['prompt']!r}, seed {torch_[0]['seed']}, CFG 3, top-k 50, philox; "
      f"CPU, {torch_[0]['threads']} threads; {len(o)} runs each (ms)")
print(f"{'stage':<16} {'ours med':>9} {'torch med':>9} {'speedup':>7} | {'ours min':>9} {'torch min':>9} {'speedup':>7} | torch sampling (med)")
res = {}
for name, fo, ft, fs in rows:
    (om, on), (tm, tn) = stats(fo, o), stats(ft, t)
    res[name] = (om, on, tm, tn)
    samp = f"{stats(fs, t)[0]:.1f}" if fs else ""
    print(f"{name:<16} {om:>9.1f} {tm:>9.1f} {tm / om:>6.2f}x | {on:>9.1f} {tn:>9.1f} {tn / on:>6.2f}x | {samp}")
print("scale k = its code logits + CFG sampling, then (all but the last) the next input map and its forward;")
print("speedup = torch time / ours time (> 1: ours faster)")
om, on, tm, tn = res["total"]
print(f"\nspeedup ours vs torch, total: {tm / om:.2f}x on medians, {tn / on:.2f}x on minima (target >= 2x)")
print("nextflow totals (after one warm-up per process):", ", ".join(f"{x['total']:.1f}" for x in o),
      "| warm-ups:", ", ".join(f"{w['total']:.1f}" for oj in ours_ for w in oj["warmup_ms"]))
print("torch totals (after one warm-up per process):", ", ".join(f"{x['total_ms']:.1f}" for x in t),
      "| warm-ups:", ", ".join(f"{r['warmup_total_ms']:.1f}" for r in torch_))
print(f"torch {torch_[0]['torch']}")
a = np.asarray(Image.open(f"{out}/torch.png")).astype(int)
b = np.asarray(Image.open(f"{out}/ours.png")).astype(int)
d = np.abs(a - b)
print(f"same image? max |diff| {d.max()} /255, mean {d.mean():.2e} (uint8 RGB, ours vs torch)")
PY
echo "(raw JSON and PNGs in $OUT)"
