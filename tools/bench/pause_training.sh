# Sourced by the bench scripts: pauses the background training (python train_tokenizer.py or train_transformer.py)
# while timing, and always resumes it (normal exit, error, Ctrl-C, TERM, HUP).
# It signals only the pids found at pause time, by pid (SIGSTOP/SIGCONT; nothing is killed).
# NEXTFLOW_BENCH_NO_PAUSE=1 leaves the training alone.
TRAIN_PIDS=""
resume_training() {
    if [ -n "$TRAIN_PIDS" ]; then
        kill -CONT $TRAIN_PIDS 2>/dev/null || true
        echo "[bench] resumed training (pids $TRAIN_PIDS)" >&2
        TRAIN_PIDS=""
    fi
}
pause_training() {
    [ "${NEXTFLOW_BENCH_NO_PAUSE:-0}" = 1 ] && return 0
    TRAIN_PIDS=$(pgrep -f 'python[^ ]* [^ ]*train_(tokenizer|transformer)' | grep -vx "$$" | tr '\n' ' ' || true)
    if [ -n "$TRAIN_PIDS" ]; then
        kill -STOP $TRAIN_PIDS 2>/dev/null || true
        echo "[bench] paused training (pids $TRAIN_PIDS)" >&2
    fi
}
trap resume_training EXIT
trap 'resume_training; exit 130' INT
trap 'resume_training; exit 143' TERM
trap 'resume_training; exit 129' HUP

# What else is using the CPU right now (after the pause): the figures are only as good as this.
report_load() {
    echo "[bench] loadavg: $(cut -d' ' -f1-3 /proc/loadavg); other processes above 10% CPU (5 s sample):" >&2
    top -b -d 5 -n 2 -w 200 2>/dev/null | awk '/^top -/{n++} n==2 && $1 ~ /^[0-9]+$/ && $9+0 > 10 {printf "[bench]   pid %s %s%% %s\n", $1, $9, $12}' >&2 || true
}

# WAIT_QUIET=S: before measuring, wait up to S seconds for no other process above 20% CPU
# (this machine is shared: builds of other checkouts skew the figures, torch's most of all).
wait_quiet() {
    local limit=${WAIT_QUIET:-0} waited=0
    while [ "$waited" -lt "$limit" ]; do
        busy=$(ps -eo pid=,pcpu=,args= | awk -v me=$$ '$2 > 20 && $1 != me && $0 !~ /train_(tokenizer|transformer)/' | wc -l)
        [ "$busy" = 0 ] && return 0
        sleep 10; waited=$((waited + 10))
    done
    [ "$limit" -gt 0 ] && echo "[bench] still busy after ${limit} s: measuring anyway" >&2
    return 0
}
