"""Load benchmark of `nextflow serve` (loopback only, bounded in count and time).

Side by side in one run, on the embedded model with one prompt and distinct seeds:
  - the CLI in a loop: `nextflow generate -p PROMPT -s SEED -o FILE`, one process per image
    (what a shell script without a server does);
  - the server at concurrency 1, 4 and 16 (threads each sending one request at a time):
    images/s, and p50/p99 latency per request;
  - memory: the server's RSS after a warm-up and after --rss-requests more requests
    (flat means within +-10 %).
It prints a table and checks: batched throughput at concurrency 16 >= 2x the CLI loop, and a
flat RSS. Exit status 1 when a check fails. Usage (tools/bench/serve_load.sh pauses the
background training around it):

    python3 tools/bench/serve_load.py --nextflow target/release/nextflow
"""
import argparse
import concurrent.futures as cf
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def post(url, body, timeout=600):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        e.read()
        status = e.code
    return status, time.perf_counter() - t


def run_clients(url, prompt, concurrency, requests, seed0, deadline):
    """`requests` requests from `concurrency` threads: (images/s, latencies, statuses)."""
    seeds = iter(range(seed0, seed0 + requests))
    lock = threading.Lock()
    lat, statuses = [], []

    def worker():
        while time.time() < deadline:
            with lock:
                seed = next(seeds, None)
            if seed is None:
                return
            status, took = post(url, {"prompt": prompt, "seed": seed})
            with lock:
                statuses.append(status)
                if status == 200:
                    lat.append(took)

    t = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        for f in [ex.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t
    return len(lat) / wall, lat, statuses


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nextflow", default="target/release/nextflow")
    ap.add_argument("--prompt", default="a red circle above a blue square")
    ap.add_argument("--cli-runs", type=int, default=16, help="images painted by the CLI loop")
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--rss-requests", type=int, default=1000, help="requests of the memory check")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=900, help="stop sending requests after this long in all")
    args = ap.parse_args()
    deadline = time.time() + args.max_seconds
    env = dict(os.environ, NEXTFLOW_DEVICE="cpu")
    out = tempfile.mkdtemp(prefix="serve-load.")

    # The CLI loop.
    cli_lat = []
    t0 = time.perf_counter()
    for i in range(args.cli_runs):
        t = time.perf_counter()
        subprocess.run([args.nextflow, "-q", "generate", "-p", args.prompt, "-s", str(i), "-o", f"{out}/cli-{i}.png"], env=env, check=True, stdout=subprocess.DEVNULL)
        cli_lat.append(time.perf_counter() - t)
    cli_rate = args.cli_runs / (time.perf_counter() - t0)

    server = subprocess.Popen([args.nextflow, "-q", "serve", "--host", "127.0.0.1", "--port", "0", "--max-batch", str(args.max_batch), "--max-queue", "1024"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        base = "http://" + line.split("http://")[1].split(";")[0].split()[0]
        url = base + "/v1/images/generations"
        post(url, {"prompt": args.prompt, "seed": 0})  # warm-up
        rows = [("CLI loop (one process per image)", 1, cli_rate, percentile(cli_lat, 50), percentile(cli_lat, 99), len(cli_lat), 0)]
        rates = {}
        for c in (1, 4, 16):
            rate, lat, statuses = run_clients(url, args.prompt, c, args.requests, 10_000 * c, deadline)
            rates[c] = rate
            rows.append((f"serve, concurrency {c}", c, rate, percentile(lat, 50), percentile(lat, 99), len(lat), sum(s != 200 for s in statuses)))

        # Memory over many requests: RSS after a warm-up of 100, then after the rest.
        _, _, warm = run_clients(url, args.prompt, 16, 100, 100_000, deadline)
        rss_warm = rss_kib(server.pid)
        rss_max = rss_warm
        done = len(warm)
        stop = threading.Event()

        def sample():
            nonlocal rss_max
            while not stop.wait(0.5):
                rss_max = max(rss_max, rss_kib(server.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        _, _, rest = run_clients(url, args.prompt, 16, args.rss_requests - done, 200_000, deadline)
        stop.set()
        sampler.join()
        done += len(rest)
        rss_end = rss_kib(server.pid)
        metrics = urllib.request.urlopen(base + "/metrics").read().decode()
    finally:
        server.terminate()
        server.wait()

    print(f"nextflow serve load benchmark: {args.prompt!r}, embedded model, CPU ({os.cpu_count()} cores), --max-batch {args.max_batch}")
    print()
    print("| run | concurrency | images/s | p50 latency (s) | p99 latency (s) | images | non-200 |")
    print("|---|---|---|---|---|---|---|")
    for name, c, rate, p50, p99, n, bad in rows:
        print(f"| {name} | {c} | {rate:.2f} | {p50:.3f} | {p99:.3f} | {n} | {bad} |")
    batches = {k: float(v) for k, v in (l.split() for l in metrics.splitlines() if l.startswith("nextflow_batch_images_sum ") or l.startswith("nextflow_batch_images_count "))}
    mean_batch = batches.get("nextflow_batch_images_sum", 0) / max(batches.get("nextflow_batch_images_count", 1), 1)
    print()
    print(f"mean images per forward batch over the run: {mean_batch:.2f}")
    ratio = rates[16] / cli_rate
    drift = (rss_end - rss_warm) / rss_warm
    print(f"batched throughput at concurrency 16 / CLI loop: {ratio:.2f}x (check: >= 2x)")
    print(f"RSS after {len(warm)} warm-up requests {rss_warm / 1024:.1f} MiB, after {done} requests {rss_end / 1024:.1f} MiB ({drift * 100:+.1f} %, max {rss_max / 1024:.1f} MiB; check: within +-10 %)")
    failed = []
    if ratio < 2:
        failed.append("throughput")
    if abs(drift) > 0.10:
        failed.append("RSS")
    if done < args.rss_requests:
        failed.append(f"only {done} of {args.rss_requests} requests within --max-seconds")
    print("result: " + ("PASS" if not failed else "FAIL (" + ", ".join(failed) + ")"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
