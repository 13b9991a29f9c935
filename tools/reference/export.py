"""Export the trained tiny NextFlow: config.json, model.safetensors (f32), tokenizer.json.

  python tools/reference/export.py --tokenizer tools/reference/runs/tokenizer/tokenizer.pt \\
      --transformer tools/reference/runs/transformer/transformer.pt --out model/assets/nextflow-tiny

model.safetensors holds both parts under their checkpoint names, which do not collide:
transformer `model.*`, `lm_head.weight` (HF Qwen2 names); tokenizer `encoder_vqkd.features.*`,
`encode_task_layer.*`, `encoder.*`, `quant_conv.*`, `quantize.embedding_{vqkd,vqgan}.weight`,
`post_quant_conv.*`, `decoder.*` (spec §2.6). Training-only weights (the teacher's label head,
decode_task_layer) are left out. tokenizer.json is a `tokenizers` WordLevel model whose ids are
the vocabulary's (specials, words, then `<code_N>` for the visual codes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from config import Config

TRAINING_ONLY = ("encoder_vqkd.head.", "decode_task_layer.")


def tokenizer_json(cfg: Config) -> dict:
    v = cfg.vocabulary
    names = v.specials + v.words + [f"<code_{i}>" for i in range(v.codebook_size)]
    added = [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, name in enumerate(names) if name.startswith("<")]  # fmt: skip
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},  # \w+|[^\w\s]+ : words, and ? , : on their own
        "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {name: i for i, name in enumerate(names)}, "unk_token": "<unk>"},
    }  # fmt: skip


def export(tokenizer_path: Path, transformer_path: Path, out: Path) -> dict:
    tok = torch.load(tokenizer_path, weights_only=False)
    transformer = torch.load(transformer_path, weights_only=False)
    cfg = Config(**transformer["config"])
    tensors = {name: t.float().contiguous() for name, t in transformer["model"].items()}
    for name, t in tok["model"].items():
        if not name.startswith(TRAINING_ONLY):
            assert name not in tensors, name
            tensors[name] = t.float().contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    cfg.save(out / "config.json")
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json(cfg), indent=1) + "\n")
    sizes = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    return {"tensors": len(tensors), "parameters": sum(t.numel() for t in tensors.values()), "bytes": sizes}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--transformer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    report = export(args.tokenizer, args.transformer, args.out)
    total = sum(report["bytes"].values())
    print(json.dumps(report | {"total_mb": round(total / 2**20, 2)}, indent=1))
    assert total <= 25 * 2**20, "the export must stay within 25 MB"


if __name__ == "__main__":
    main()
