#!/usr/bin/env bash
# Side-by-side text decode speed on the CPU: NextFlow-rs vs PyTorch/transformers vs candle,
# for a random-weight Qwen2-0.5B-shaped checkpoint (f32).
#
# Usage: tools/bench/text_decode.sh [DIR] [RUNS]
#   DIR   checkpoint from tools/bench/make_random_qwen2.py (default /tmp/qwen2-0.5b-random)
#   RUNS  runs per implementation, alternating (default 3); the table shows medians and bests
#         (on a shared machine the best is the better estimate of uncontended speed).
# Env: NEW_TOKENS (64), THREADS (2: torch threads / OMP_NUM_THREADS / RAYON_NUM_THREADS),
#      NEXTFLOW (target/release/nextflow), CANDLE_BENCH (/work/scratch/candle-bench/target/release/candle-bench),
#      NEXTFLOW_BENCH_NO_PAUSE=1 to leave a running train_transformer.py alone,
#      WAIT_QUIET=S to wait up to S s for other busy processes (builds) to finish first.
# The background training is paused (SIGSTOP) while measuring and always resumed (trap).
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-/tmp/qwen2-0.5b-random}
RUNS=${2:-3}
N=${NEW_TOKENS:-64}
THREADS=${THREADS:-2}
NEXTFLOW=${NEXTFLOW:-target/release/nextflow}
CANDLE=${CANDLE_BENCH:-/work/scratch/candle-bench/target/release/candle-bench}
PROMPT=$(seq -s, 1 16)
export OMP_NUM_THREADS=$THREADS
[ -f "$DIR/config.json" ] || { echo "no checkpoint at $DIR (run tools/bench/make_random_qwen2.py $DIR)" >&2; exit 1; }
[ -x "$NEXTFLOW" ] || { echo "no $NEXTFLOW (cargo build --release)" >&2; exit 1; }
HAVE_CANDLE=0; [ -x "$CANDLE" ] && HAVE_CANDLE=1
[ $HAVE_CANDLE = 1 ] || echo "[bench] no candle binary at $CANDLE: skipping candle" >&2

OUT=$(mktemp -d /tmp/text-decode-bench.XXXXXX)
. tools/bench/pause_training.sh
wait_quiet
pause_training
report_load
echo "[bench] $NEXTFLOW: $(stat -c '%y' "$NEXTFLOW" | cut -d. -f1), sha256 $(sha256sum "$NEXTFLOW" | cut -c1-16); git $(git rev-parse --short HEAD 2>/dev/null)" >&2

for i in $(seq 1 "$RUNS"); do
    echo "[bench] run $i/$RUNS: nextflow" >&2
    "$NEXTFLOW" chat --model "$DIR" --prompt-ids "$PROMPT" --greedy --max-new-tokens "$N" --json --device cpu \
        > "$OUT/ours.$i.json"
    echo "[bench] run $i/$RUNS: torch" >&2
    python tools/bench/torch_decode.py "$DIR" --prompt-ids "$PROMPT" --max-new-tokens "$N" --threads "$THREADS" \
        > "$OUT/torch.$i.json" 2> "$OUT/torch.$i.err" || { cat "$OUT/torch.$i.err" >&2; exit 1; }
    if [ $HAVE_CANDLE = 1 ]; then
        echo "[bench] run $i/$RUNS: candle" >&2
        "$CANDLE" "$DIR" --prompt-ids "$PROMPT" --max-new-tokens "$N" > "$OUT/candle.$i.json"
    fi
done
resume_training

python - "$OUT" "$RUNS" "$N" <<'PY'
import json, statistics, sys, glob, os
out, runs, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def load(name):
    rs = []
    for i in range(1, runs + 1):
        p = f"{out}/{name}.{i}.json"
        if os.path.exists(p):
            rs.append(json.loads(open(p).read()))
    return rs
res = {k: load(k) for k in ("ours", "torch", "candle")}
for r in res["ours"]:
    r["prefill_ms"] = len(r["prompt_ids"]) / r["prefill_tokens_per_s"] * 1e3
names = {"ours": "nextflow-rs", "torch": "torch/transformers", "candle": "candle"}
med, best = {}, {}
print(f"\nQwen2-0.5B shapes, random f32 weights, CPU, prompt 16 ids, greedy {n} new tokens, median of {runs}")
print(f"{'impl':<20} {'decode tok/s':>12} {'best':>7} {'(runs)':<26} {'prefill ms':>10} {'best':>7}")
for k, rs in res.items():
    if not rs:
        continue
    d = [r["decode_tokens_per_s"] for r in rs]
    p = [r["prefill_ms"] for r in rs]
    med[k] = statistics.median(d)
    best[k] = max(d)
    print(f"{names[k]:<20} {med[k]:>12.2f} {max(d):>7.2f} {'[' + ', '.join(f'{x:.2f}' for x in d) + ']':<26} {statistics.median(p):>10.1f} {min(p):>7.1f}")
print()
for k in ("torch", "candle"):
    if k in med:
        print(f"ours/{k:<7} decode speed ratio: {med['ours'] / med[k]:.2f}x on medians, {best['ours'] / best[k]:.2f}x on bests")
if res["torch"]:
    t = res["torch"][0]
    print(f"(torch {t.get('torch')}, transformers {t.get('transformers')}, {t.get('threads')} threads)")
def agree(a, b):
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k
ref = res["torch"][0]["ids"] if res["torch"] else None
for k in ("ours", "candle"):
    rs = res[k]
    if not rs or ref is None:
        continue
    ids = rs[0]["ids"]
    same_runs = all(r["ids"] == ids for r in rs)
    a = agree(ids, ref)
    eq = sum(x == y for x, y in zip(ids, ref))
    status = "identical" if ids == ref else f"first {a} of {len(ref)} identical, {eq} equal positionwise"
    print(f"greedy ids {names[k]} vs torch: {status}" + ("" if same_runs else " (ids differ between runs!)"))
if res["ours"] and any(r.get("stopped_by_stop_token") for r in res["ours"]):
    print("note: nextflow stopped on a stop token in some run")
PY
echo "(raw JSON in $OUT)"
