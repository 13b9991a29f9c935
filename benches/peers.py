"""Peer timings for the Rust benchmarks, called once per shape so both run side by side.

    python benches/peers.py info
    python benches/peers.py matmul M K N      # numpy (OpenBLAS) sgemm, GFLOP/s
    python benches/peers.py matmul_wt M K N   # the same with B stored [N, K] (an HF weight)
    python benches/peers.py sdpa B H S D      # torch scaled_dot_product_attention, causal, ms

Prints one number. Dev tooling only: needs numpy (and torch for sdpa), never run by tests.
"""
import sys
import time


def best_of(fn, reps):
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    kind = sys.argv[1]
    if kind == "info":
        import numpy as np
        from threadpoolctl import threadpool_info
        blas = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} threads={i.get('num_threads')}" for i in threadpool_info()]
        print(f"numpy {np.__version__}; " + "; ".join(blas))
        return
    if kind in ("matmul", "matmul_wt"):
        import numpy as np
        m, k, n = map(int, sys.argv[2:5])
        rng = np.random.default_rng(0)
        a = rng.standard_normal((m, k), dtype=np.float32)
        # matmul_wt: B is an HF weight stored [n, k], used transposed.
        b = rng.standard_normal((k, n), dtype=np.float32) if kind == "matmul" else rng.standard_normal((n, k), dtype=np.float32).T
        reps = 3 if m * k * n > 2e9 else 10
        t = best_of(lambda: a @ b, reps)
        print(f"{2 * m * n * k / t / 1e9:.2f}")
        return
    if kind == "sdpa":
        import torch
        b, h, s, d = map(int, sys.argv[2:6])
        torch.manual_seed(0)
        q, k, v = (torch.randn(b, h, s, d) for _ in range(3))
        with torch.inference_mode():
            t = best_of(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), 10)
        print(f"{t * 1e3:.3f}")
        return
    raise SystemExit(f"unknown peer benchmark {kind}")


if __name__ == "__main__":
    main()
