#!/usr/bin/env python3
"""PyTorch reference timing of one 128 px image of nextflow-tiny, per stage.

Usage: torch_tiny_image.py [--prompt P] [--seed 0] [--runs 5] [--threads 2] [--out img.png]

Loads model/assets/nextflow-tiny (config.json + model.safetensors) into tools/reference's
NextFlow + VisualTokenizer exactly as make_golden.load_exported does, then generates with
nextflow_ref.generate's logic (copied here, unchanged in substance, only timed stage by stage):
CFG batch of two (the prompt and <bos> alone), KV cache, the config's sampler (cfg 3 constant,
top-k 50, top-p 1, temperature 1), sampling="philox" (philox_sampler.py: the numpy port of the
Rust engine's CPU sampler, so the same seed draws the same codes as `nextflow generate`).

Stages, as `nextflow generate --json` splits them (model/src/nextflow.rs generate_images):
  prefill   the forward of <bos> words <boi> (both CFG rows)
  scale k   code logits + CFG sampling of scale k, then (k < K-1) the next input map and its forward
  decoder   VisualTokenizer.decode(indices) -> [1, 3, 128, 128]
f32, torch.inference_mode(), torch.set_num_threads(threads); one warm-up, then the median of
`runs` runs per stage (and of the totals). Prints one JSON line:
{"total_ms", "prefill_ms", "scales_ms", "decoder_ms", "scales_sample_ms", ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "reference"))
import nextflow_ref as nf  # noqa: E402
import philox_sampler  # noqa: E402
from config import Config  # noqa: E402

ASSETS = ROOT / "model" / "assets" / "nextflow-tiny"
TRANSFORMER_PREFIXES = ("model.", "lm_head.")


def load_exported(assets: Path) -> tuple:
    """(cfg, tokenizer, model) from config.json + model.safetensors (make_golden.load_exported)."""
    cfg = Config.load(assets / "config.json")
    weights = {k: v.float() for k, v in load_file(assets / "model.safetensors").items()}
    tok = nf.VisualTokenizer(cfg)
    missing, unexpected = tok.load_state_dict({k: v for k, v in weights.items() if not k.startswith(TRANSFORMER_PREFIXES)}, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(("encoder_vqkd.head.", "decode_task_layer.")) for k in missing), missing
    model = nf.NextFlow(cfg)
    model.load_state_dict({k: v for k, v in weights.items() if k.startswith(TRANSFORMER_PREFIXES)}, strict=True)
    return cfg, tok.eval(), model.eval()


def now() -> float:
    return time.perf_counter()


def generate_timed(model, tok, prompt_ids: list, seed: int) -> dict:
    """nextflow_ref.generate(model, tok.quantize, [prompt_ids], cfg.sampler, seed, sampling="philox")
    with timers around each stage; then the decoder. Returns times (ms), indices and the image."""
    cfg, sampler, codebook = model.cfg, model.cfg.sampler, tok.quantize
    scales, mode = cfg.tokenizer.scales, cfg.visual.input_mode
    guided = sampler.cfg_scale != 1.0
    prompts = [prompt_ids]
    rows = list(prompts) + ([[cfg.vocabulary.id("<bos>")]] * len(prompts) if guided else [])
    t = now()
    builders = []
    for prompt in rows:
        builder = nf.SequenceBuilder(cfg, codebook)
        builder.text(list(prompt) + [cfg.vocabulary.id("<boi>")])
        builders.append(builder)
    step = nf.collate([b.tensors() for b in builders])
    boi = torch.tensor([b.position - 1 for b in builders])
    cache = nf.KvCache(len(model.model.layers))
    hidden = model(step, cache)[:, -1:]  # <boi> predicts the 1x1 scale
    prefill_ms = (now() - t) * 1e3
    indices, state, n = [], None, len(prompts)
    scales_ms, sample_ms = [], []
    for k, (h, w) in enumerate(scales):
        t = now()
        logits = model.code_logits(hidden)
        ramp = k / max(len(scales) - 1, 1) if sampler.cfg_schedule == "linear" else 1.0
        weight = 1.0 + (sampler.cfg_scale - 1.0) * ramp
        ts = now()
        uncond = logits[n:].numpy() if guided else None
        idx = torch.from_numpy(philox_sampler.sample(logits[:n].numpy(), uncond, cfg_scale=weight - 1.0, temperature=sampler.temperature,
                                                     top_k=sampler.top_k, top_p=sampler.top_p, seed=seed, scale=k))  # fmt: skip
        sample_ms.append((now() - ts) * 1e3)
        indices.append(idx)
        if k < len(scales) - 1:
            codes = codebook.embed(idx).view(n, h, w, -1).permute(0, 3, 1, 2)
            x, state = nf.next_scale_input(torch.cat([codes] * (len(rows) // n)), state, scales[k + 1], mode)
            batch = nf.map_batch(cfg, x, k + 1, boi + k + 1, block=max(b.n_maps for b in builders) + k)
            hidden = model(batch, cache)[:, -x.shape[-2] * x.shape[-1] :]
        scales_ms.append((now() - t) * 1e3)
    t = now()
    image = tok.decode(indices)
    decoder_ms = (now() - t) * 1e3
    total = prefill_ms + sum(scales_ms) + decoder_ms
    return {"total_ms": total, "prefill_ms": prefill_ms, "scales_ms": scales_ms, "decoder_ms": decoder_ms,
            "scales_sample_ms": sample_ms, "indices": [i[0].tolist() for i in indices], "image": image}  # fmt: skip


def to_rgb8(image: torch.Tensor) -> np.ndarray:
    """[1,3,H,W] in [-1,1] -> [H,W,3] uint8 (round((x+1)*127.5), clamped)."""
    x = ((image[0].clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default="a red circle above a blue square")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--assets", type=Path, default=ASSETS)
    ap.add_argument("--out", type=Path, help="write the image as PNG (needs pillow)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg, tok, model = load_exported(a.assets)
    vocab = cfg.vocabulary
    prompt_ids = [vocab.id("<bos>")] + vocab.encode(a.prompt)
    assert vocab.id("<unk>") not in prompt_ids, f"a word of {a.prompt!r} is not in the vocabulary"
    with torch.inference_mode():
        warm = generate_timed(model, tok, prompt_ids, a.seed)
        runs = [generate_timed(model, tok, prompt_ids, a.seed) for _ in range(a.runs)]
    assert all(r["indices"] == warm["indices"] for r in runs), "seeded generation is not deterministic"
    med = statistics.median
    n_scales = len(runs[0]["scales_ms"])
    if a.out:
        from PIL import Image

        Image.fromarray(to_rgb8(warm["image"])).save(a.out)
    print(json.dumps({
        "impl": "torch", "prompt": a.prompt, "prompt_ids": prompt_ids, "seed": a.seed, "runs": a.runs,
        "total_ms": med(r["total_ms"] for r in runs),
        "prefill_ms": med(r["prefill_ms"] for r in runs),
        "scales_ms": [med(r["scales_ms"][k] for r in runs) for k in range(n_scales)],
        "decoder_ms": med(r["decoder_ms"] for r in runs),
        "scales_sample_ms": [med(r["scales_sample_ms"][k] for r in runs) for k in range(n_scales)],
        "warmup_total_ms": warm["total_ms"],
        "totals_ms": [r["total_ms"] for r in runs],
        "runs_ms": [{k: r[k] for k in ("prefill_ms", "scales_ms", "decoder_ms", "total_ms", "scales_sample_ms")} for r in runs],
        "scales": [list(s) for s in cfg.tokenizer.scales],
        "sampler": {"cfg_scale": cfg.sampler.cfg_scale, "cfg_schedule": cfg.sampler.cfg_schedule, "top_k": cfg.sampler.top_k,
                    "top_p": cfg.sampler.top_p, "temperature": cfg.sampler.temperature, "sampling": "philox"},
        "indices": warm["indices"],
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
