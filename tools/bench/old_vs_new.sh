#!/usr/bin/env bash
# No-regression check of an engine change, side by side in one run on the CPU: two nextflow
# binaries (OLD, e.g. built from main before the change, and NEW) alternate, round by round,
# on the same two jobs:
#   1. tiny images: `bench image --warmup 1 --reps PER --json` (embedded nextflow-tiny, 128 px,
#      CFG, the README prompt), per stage;
#   2. text decode: `chat --greedy --max-new-tokens N` on a random Qwen2-0.5B-shaped checkpoint
#      (tools/bench/make_random_qwen2.py), decode tokens/s and prefill ms.
# The table shows medians and minima (best for decode) over the runs of each, and NEW/OLD
# ratios; it also checks both write the same image (pixel data) and the same greedy ids.
#
# Usage: tools/bench/old_vs_new.sh OLD NEW [ROUNDS] [DIR]     (ROUNDS 9; DIR /tmp/qwen2-0.5b-random)
# Env: PER (3 images per process and round), NEW_TOKENS (64), NEXTFLOW_THREADS (2),
#      NEXTFLOW_BENCH_NO_PAUSE=1, WAIT_QUIET=S.
# The background training is paused (SIGSTOP) while measuring and always resumed.
set -euo pipefail
cd "$(dirname "$0")/../.."
OLD=$1
NEW=$2
ROUNDS=${3:-9}
DIR=${4:-/tmp/qwen2-0.5b-random}
N=${NEW_TOKENS:-64}
PER=${PER:-3}
export NEXTFLOW_THREADS=${NEXTFLOW_THREADS:-2}
PROMPT="a red circle above a blue square"
IDS=$(seq -s, 1 16)
for b in "$OLD" "$NEW"; do [ -x "$b" ] || { echo "no binary $b" >&2; exit 1; }; done
[ -f "$DIR/config.json" ] || { echo "no checkpoint at $DIR (python tools/bench/make_random_qwen2.py $DIR)" >&2; exit 1; }

OUT=$(mktemp -d /tmp/old-vs-new.XXXXXX)
. tools/bench/pause_training.sh
wait_quiet
pause_training
report_load
for b in "$OLD" "$NEW"; do echo "[bench] $b: sha256 $(sha256sum "$b" | cut -c1-16)" >&2; done
for i in $(seq 1 "$ROUNDS"); do
    for side in old new; do
        bin=$OLD; [ $side = new ] && bin=$NEW
        echo "[bench] round $i/$ROUNDS: $side image, text" >&2
        "$bin" --device cpu bench image --prompt "$PROMPT" --warmup 1 --reps "$PER" --json > "$OUT/$side.image.$i.json" 2> "$OUT/$side.err"
        "$bin" --device cpu chat --model "$DIR" --prompt-ids "$IDS" --greedy --max-new-tokens "$N" --json > "$OUT/$side.text.$i.json" 2>> "$OUT/$side.err"
    done
done
resume_training
for side in old new; do
    bin=$OLD; [ $side = new ] && bin=$NEW
    "$bin" --device cpu generate --prompt "$PROMPT" --seed 0 --out "$OUT/$side.png" --force 2>> "$OUT/$side.err"
done

python3 - "$OUT" "$ROUNDS" "$N" <<'PY'
import json, statistics, sys
import numpy as np
from PIL import Image
out, rounds, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
load = lambda side, job: [json.load(open(f"{out}/{side}.{job}.{i}.json")) for i in range(1, rounds + 1)]
img = {s: [run for r in load(s, "image") for run in r["runs_ms"]] for s in ("old", "new")}
txt = {s: load(s, "text") for s in ("old", "new")}
med = statistics.median
print(f"\nold vs new, CPU, {rounds} alternating rounds: {len(img['old'])} images and {rounds} decodes per side")
print(f"{'tiny image (ms)':<22} {'old median':>10} {'new median':>10} {'new/old':>8} {'old min':>9} {'new min':>9} {'new/old':>8}")
K = len(img["old"][0]["scales"])
rows = [("prefill", lambda r: r["prefill"])] + [(f"scale {k + 1}", (lambda k: lambda r: r["scales"][k])(k)) for k in range(K)]
rows += [("scales (sum)", lambda r: sum(r["scales"])), ("decoder", lambda r: r["decoder"]), ("total", lambda r: r["total"])]
for name, f in rows:
    o, w = [f(r) for r in img["old"]], [f(r) for r in img["new"]]
    print(f"{name:<22} {med(o):>10.2f} {med(w):>10.2f} {med(w) / med(o):>8.3f} {min(o):>9.2f} {min(w):>9.2f} {min(w) / min(o):>8.3f}")
print(f"\n{'text decode':<22} {'old median':>10} {'new median':>10} {'new/old':>8} {'old best':>9} {'new best':>9} {'new/old':>8}")
d = {s: [r["tokens_per_s"]["decode"] for r in txt[s]] for s in txt}
p = {s: [r["timings_ms"]["prefill"] for r in txt[s]] for s in txt}
print(f"{'decode tok/s':<22} {med(d['old']):>10.2f} {med(d['new']):>10.2f} {med(d['new']) / med(d['old']):>8.3f} {max(d['old']):>9.2f} {max(d['new']):>9.2f} {max(d['new']) / max(d['old']):>8.3f}")
print(f"{'prefill ms':<22} {med(p['old']):>10.2f} {med(p['new']):>10.2f} {med(p['new']) / med(p['old']):>8.3f} {min(p['old']):>9.2f} {min(p['new']):>9.2f} {min(p['new']) / min(p['old']):>8.3f}")
a, b = (np.asarray(Image.open(f"{out}/{s}.png").convert("RGB")) for s in ("old", "new"))
print(f"\nimage old vs new: {'identical' if a.shape == b.shape and (a == b).all() else 'DIFFERENT'} ({a.shape[1]}x{a.shape[0]})")
ids = {s: [r["ids"] for r in txt[s]] for s in txt}
same = all(x == ids["old"][0] for x in ids["old"] + ids["new"])
print(f"greedy ids old vs new: {'identical' if same else 'DIFFERENT'} ({len(ids['old'][0])} tokens, every run)")
PY
echo "(raw JSON in $OUT)"
