#!/usr/bin/env python3
"""Writes a random-weight Qwen2-0.5B-shaped checkpoint (f32, safetensors) for speed benchmarks.

Usage: make_random_qwen2.py [OUT_DIR]   (default /tmp/qwen2-0.5b-random; keep it out of the repo,
it is ~2 GB). transformers Qwen2Config with the Qwen2-0.5B shapes, torch.manual_seed(0), the
model's default init, save_pretrained(safe_serialization=True). With tied embeddings
save_pretrained may omit lm_head.weight; loaders tie it to model.embed_tokens.weight.
"""
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/qwen2-0.5b-random"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        rope_theta=1e6,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        max_position_embeddings=4096,
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(cfg).to(torch.float32).eval()
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {n / 1e6:.1f} M parameters (f32)")


if __name__ == "__main__":
    main()
