#!/usr/bin/env python3
"""Peer benchmark: transformers Qwen2ForCausalLM on CPU, f32, greedy decode with the KV cache.

Usage: torch_decode.py DIR [--prompt-ids 1,2,...] [--max-new-tokens 64] [--threads 2]
Prefill the prompt (its argmax is the first generated token), then a manual greedy loop of
single-token forwards over past_key_values. Prints one JSON line:
{"decode_tokens_per_s", "prefill_ms", "ids", ...}; decode tok/s counts the max_new_tokens - 1
single-token steps (the first token comes out of the prefill), as nextflow chat --json does.
"""
import argparse
import inspect
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch
import transformers
from transformers import Qwen2ForCausalLM


# transformers 5.x renamed past_key_values to cache (the old name warns); accept either.
CACHE_KW = "cache" if "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters else "past_key_values"


def _cache(out):
    return getattr(out, "cache", None) if CACHE_KW == "cache" else out.past_key_values


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default="/tmp/qwen2-0.5b-random")
    ap.add_argument("--prompt-ids", default=",".join(str(i) for i in range(1, 17)))
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa (the transformers default) or eager")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    prompt = [int(x) for x in a.prompt_ids.split(",")]

    t = time.perf_counter()
    model = Qwen2ForCausalLM.from_pretrained(a.dir, dtype=torch.float32, attn_implementation=a.attn).eval()
    load_ms = (time.perf_counter() - t) * 1e3

    with torch.inference_mode():
        t0 = time.perf_counter()
        # logits_to_keep=1: only the last row's logits, as generate() does.
        out = model(input_ids=torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
        past = _cache(out)
        nxt = int(out.logits[0, -1].argmax())
        prefill_ms = (time.perf_counter() - t0) * 1e3
        ids = [nxt]
        t1 = time.perf_counter()
        for _ in range(a.max_new_tokens - 1):
            out = model(input_ids=torch.tensor([[nxt]]), use_cache=True, **{CACHE_KW: past})
            past = _cache(out)
            nxt = int(out.logits[0, -1].argmax())
            ids.append(nxt)
        decode_s = time.perf_counter() - t1
    steps = a.max_new_tokens - 1
    print(json.dumps({
        "impl": "torch",
        "decode_tokens_per_s": steps / decode_s if steps else 0.0,
        "prefill_ms": prefill_ms,
        "load_ms": load_ms,
        "decode_steps": steps,
        "ids": ids,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "attn_implementation": a.attn,
    }))


if __name__ == "__main__":
    main()
