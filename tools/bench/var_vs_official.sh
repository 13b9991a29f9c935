#!/usr/bin/env bash
# VAR-dN (real shapes, random weights) on this CPU: ours vs the official PyTorch code, one
# 256 px image with CFG 4 (top-k 900, top-p 0.95), f32, side by side in one run, per stage
# (each scale, the decoder); medians over REPS images after one warm-up each side.
#
# Usage: tools/bench/var_vs_official.sh [DEPTH] [REPS] [DIR]     (16, 3, /tmp/var-d16-random)
# Needs the official code extracted at $VAR_SRC (default /tmp/var-src):
#   git -C <mirror of FoundationVision/VAR> archive HEAD | tar -x -C /tmp/var-src
# The background training is paused while measuring.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEPTH=${1:-16}
REPS=${2:-3}
DIR=${3:-/tmp/var-d$DEPTH-random}
SRC=${VAR_SRC:-/tmp/var-src}
BIN=${NEXTFLOW:-target/release/nextflow}
export NEXTFLOW_THREADS=${NEXTFLOW_THREADS:-2}
[ -d "$SRC/models" ] || { echo "no official VAR code at $SRC (see the header)" >&2; exit 1; }
[ -f "$DIR/var_d$DEPTH.pth" ] || python3 tools/bench/var_official.py make "$SRC" "$DIR" --depth "$DEPTH"
OUT=$(mktemp -d /tmp/var-vs-official.XXXXXX)
. tools/bench/pause_training.sh
pause_training
report_load
python3 tools/bench/var_official.py time "$SRC" "$DIR" --depth "$DEPTH" --reps "$REPS" > "$OUT/official.json"
"$BIN" --device cpu generate -m "$DIR" --class 207 -n $((REPS + 1)) -o "$OUT/ours-{i}.png" --json --quiet > "$OUT/ours.json"
resume_training
python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
off = json.load(open(f"{out}/official.json"))
ours = json.load(open(f"{out}/ours.json"))["runs_ms"][1:]
med = statistics.median
print(f"VAR on the CPU, one 256px image with CFG, f32; official: torch {off['torch']} ({off['threads']} threads)")
print(f"{'stage (ms)':<14} {'official':>10} {'ours':>10} {'speed-up':>9}")
K = len(off["runs_ms"][0]["scales"])
rows = [(f"scale {k + 1}", (lambda k: lambda r: r["scales"][k])(k)) for k in range(K)]
rows += [("scales (sum)", lambda r: sum(r["scales"])), ("decoder", lambda r: r["decoder"]), ("total", lambda r: sum(r["scales"]) + r["decoder"])]
for name, f in rows:
    o, w = med([f(r) for r in off["runs_ms"]]), med([f(r) for r in ours])
    print(f"{name:<14} {o:>10.1f} {w:>10.1f} {o / w:>8.2f}x")
PY
echo "(raw JSON in $OUT)"
