#!/usr/bin/env bash
# One prepared check for a lent GPU machine (see the device tool's README): build here,
# carry the binaries, run the kernel tests and benchmarks there, results under $OUT.
#
#   bash scripts/device-check.sh prepare   # here: release test + bench binaries -> device-bin.tar.xz
#   bash scripts/device-check.sh run       # there (device tool, carry ["device-bin.tar.xz"]); a dry run here too
# The binaries are ~230 MB, over the device tool's 64 MiB carry; xz -9e (its 64 MiB window
# shares what the binaries have in common) brings them to ~37 MB (prepare fails if the pack
# outgrows the carry).
#
# `run` exercises every device the machine offers (CUDA, HIP, Vulkan, CPU): the op-coverage
# test (all ops, f32 + f16, cmma where the GPU reports it), sampling identity, model parity
# (Qwen2, NextFlow tiny), the compiler tests, big weights split under an 8 MiB binding limit
# (Qwen2-0.5B shapes on Vulkan against the CPU), the GPU-targets test (every kernel recorded
# on the machine's Vulkan adapter, cmma included where it reports MMA; WGSL/MSL/HLSL/SPIR-V
# through naga; NVRTC/ptxas where the machine has them), the transformer benchmark and `bench kernels`
# (tiny and 7B shapes) on cuda and vulkan, then the tiny model's 128 px generation and a
# 1024² 7B-shaped generation with CFG and random weights (nextflow-7b: 18 scales, 10084
# tokens per image) with the per-stage breakdown (--json), and VAR-d16 / VAR-d30 (256 px, CFG 4,
# random weights: `--config var-dN --random-weights`) per stage. Dry run here: ~8 minutes.
# The VAR parity test runs on the test goldens it finds beside the binaries' repository copy.
set -uo pipefail
cd "$(dirname "$0")/.."
# rope_attention is covered by op_coverage + nextflow_parity, the image and ops benches stay
# home (bench kernels times the model's matmuls instead).
TESTS=(op_coverage sampling qwen2_parity nextflow_parity var_parity compiler big_weights gpu_targets)
BENCHES=(transformer)

case "${1:-}" in
  prepare)
    set -e
    mkdir -p device-bin && rm -f device-bin/*
    {
      cargo test --release --no-run --message-format=json $(printf -- '--test %s ' "${TESTS[@]}")
      cargo bench --no-run --message-format=json $(printf -- '--bench %s ' "${BENCHES[@]}")
    } | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    # The CLI binary comes from the same (test-feature) build, so nothing compiles twice.
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] in (["test"], ["bench"], ["bin"]):
        shutil.copy(m["executable"], "device-bin/" + m["target"]["name"])
'
    strip device-bin/* 2>/dev/null || true
    tar -C device-bin -cf - . | xz -T0 -9e > device-bin.tar.xz
    ls -la device-bin device-bin.tar.xz
    size=$(stat -c %s device-bin.tar.xz)
    [ "$size" -le $((64 * 1024 * 1024)) ] || { echo "error: device-bin.tar.xz is $size bytes, over the 64 MiB carry" >&2; exit 1; }
    ;;
  run)
    OUT="${OUT:-/tmp/device-check}"
    mkdir -p "$OUT"
    bin=device-bin
    if [ -f device-bin.tar.xz ]; then
      mkdir -p "$bin" && xz -dc device-bin.tar.xz | tar -C "$bin" -xf -
    fi
    [ -x "$bin/nextflow" ] || { echo "error: run 'bash scripts/device-check.sh prepare' first and carry device-bin" >&2; exit 1; }
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
    "$bin/nextflow" devices 2>&1 | tee "$OUT/devices.txt"
    status=0
    for t in "${TESTS[@]}"; do
      echo "== test $t"
      timeout 300 "$bin/$t" --nocapture > "$OUT/test-$t.txt" 2>&1 || status=1
      grep -E "op-coverage|SKIPPED|NMSE|sampling|test result|panicked|failures|blocks|^(wgsl|msl|hlsl|spirv|nvrtc|ptxas|hip)|GPU targets" "$OUT/test-$t.txt" | head -40
    done
    for b in "${BENCHES[@]}"; do
      for d in cuda vulkan; do
        echo "== bench $b on $d"
        timeout 150 "$bin/$b" --device "$d" --no-peers > "$OUT/bench-$b-$d.txt" 2>&1
        cat "$OUT/bench-$b-$d.txt"
      done
    done
    for d in cuda vulkan; do
      echo "== bench kernels (tiny and 7B shapes) on $d"
      for c in tiny 7b; do
        timeout 240 "$bin/nextflow" bench kernels --device "$d" --config "$c" --json > "$OUT/bench-kernels-$c-$d.json" 2> "$OUT/bench-kernels-$c-$d.log" || status=1
        tail -2 "$OUT/bench-kernels-$c-$d.log"
      done
    done
    echo "== tiny model, 128 px (embedded weights)"
    for d in cuda vulkan; do
      timeout 120 "$bin/nextflow" generate --device "$d" --prompt "a red circle above a blue square" --out "$OUT/tiny-$d.png" --force --json > "$OUT/tiny-$d.json" 2> "$OUT/tiny-$d.log"
      tail -3 "$OUT/tiny-$d.log"; cat "$OUT/tiny-$d.json"
    done
    echo "== tiny model, warm: 2 warm-up + 5 timed generations per stage (bench image), cpu and cuda"
    for d in cpu cuda; do
      timeout 120 "$bin/nextflow" --device "$d" bench image --warmup 2 --reps 5 > "$OUT/bench-image-$d.txt" 2> "$OUT/bench-image-$d.log" || status=1
      cat "$OUT/bench-image-$d.txt"; tr "\r" "\n" < "$OUT/bench-image-$d.log" | grep -v "^\[" | tail -2
    done
    echo "== nextflow-7b shapes, 1024², CFG, random weights (f16 on cuda)"
    timeout 300 "$bin/nextflow" generate --device cuda --random-weights --config nextflow-7b --prompt "a cat on a mat" \
      --out "$OUT/7b.png" --force --json > "$OUT/7b.json" 2> "$OUT/7b.log" || status=1
    tail -25 "$OUT/7b.log"; cat "$OUT/7b.json"
    echo "== VAR-d16 and VAR-d30 shapes, 256², CFG 4, random weights (f16 on cuda), 1 warm-up + 2 timed images"
    for c in var-d16 var-d30; do
      timeout 240 "$bin/nextflow" generate --device cuda --dtype f16 --random-weights --config "$c" --class 207 -n 3 \
        --out "$OUT/$c-{i}.png" --force --json > "$OUT/$c.json" 2> "$OUT/$c.log" || status=1
      tail -3 "$OUT/$c.log"; python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], [round(sum(r['scales']),1) for r in d['runs_ms']], 'ms scales,', [r['decoder'] for r in d['runs_ms']], 'ms decoder')" "$OUT/$c.json" "$c" || true
    done
    exit $status
    ;;
  *)
    sed -n 2,12p "$0"
    exit 2
    ;;
esac
