#!/usr/bin/env bash
# Load benchmark of `nextflow serve` against the CLI in a loop (tools/bench/serve_load.py has
# the details): images/s and p50/p99 latency at concurrency 1, 4 and 16, and the server's RSS
# over 1,000 requests. Loopback only; bounded by --max-seconds (900 by default).
#
# Usage: tools/bench/serve_load.sh [serve_load.py options]
# Env: NEXTFLOW (target/release/nextflow), NEXTFLOW_BENCH_NO_PAUSE=1, WAIT_QUIET=S.
# The background training is paused while measuring and always resumed.
set -euo pipefail
cd "$(dirname "$0")/../.."
NEXTFLOW=${NEXTFLOW:-target/release/nextflow}
[ -x "$NEXTFLOW" ] || { echo "no $NEXTFLOW (cargo build --release)" >&2; exit 1; }
. tools/bench/pause_training.sh
wait_quiet
pause_training
report_load
python3 tools/bench/serve_load.py --nextflow "$NEXTFLOW" "$@"
