"""Why does text-to-image not learn? Teacher-forced diagnostics of a trained model.

  python tools/reference/diagnose_t2i.py [--assets model/assets/nextflow-tiny] [--n 96]
  python tools/reference/diagnose_t2i.py --tokenizer runs/tokenizer/tokenizer.pt --transformer runs/x/checkpoint.pt

For n held-out t2i samples it reports, per scale, the teacher-forced loss and accuracy with the
caption and with the caption dropped (the unconditional prompt). A model that uses its caption
has a clearly lower loss with it on the coarse scales, where layout and colour are decided; equal
numbers mean the caption does not reach the image tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import nextflow_ref as nf
import shapeworld as sw
import training
from config import Config

HELD_OUT_SEED = 11


def load(args):
    if args.tokenizer:
        saved = torch.load(args.tokenizer, weights_only=False)
        cfg = Config(**saved["config"])
        tok = nf.VisualTokenizer(cfg)
        tok.load_state_dict(saved["model"])
        tsaved = torch.load(args.transformer, weights_only=False)
        if "config" in tsaved:
            cfg = Config(**tsaved["config"])
        else:
            log = [json.loads(x) for x in (Path(args.transformer).parent / "log.jsonl").read_text().splitlines()]
            start = [e for e in log if e.get("event") == "start"][-1]["config"]
            cfg = Config(**{**start, "vocabulary": saved["config"]["vocabulary"] | {"codebook_size": start["tokenizer"]["codebook_size"]}})
        model = nf.NextFlow(cfg)
        model.load_state_dict(tsaved["model"])
        return cfg, tok.eval(), model.eval()
    from make_golden import load_exported

    return load_exported(Path(args.assets))


@torch.no_grad()
def per_scale(model, tok, cfg, samples, drop: bool) -> tuple:
    """(loss per scale, accuracy per scale) teacher-forced over samples."""
    vocab, scales = cfg.vocabulary, cfg.tokenizer.scales
    weights = [1.0] * len(scales)
    with training.autocast():
        codes = tok.encode(training.to_tensor([s.image for s in samples]))
    sequences = []
    for b, sample in enumerate(samples):
        builder = nf.SequenceBuilder(cfg, tok.quantize)
        builder.text([vocab.id("<bos>")] + ([] if drop else vocab.encode(sample.caption)))
        builder.image([c[b] for c in codes], generate=True, weights=weights)
        sequences.append(builder.tensors())
    batch = nf.collate(sequences, vocab.id("<pad>"))
    hidden = model(batch)
    targets = batch["targets"]
    losses, accs = [], []
    # Rows with targets are, per sequence, <boi> then the maps in order: split them by scale sizes.
    sizes = [h * w for h, w in scales]
    rows = targets >= 0
    logits = model.lm_head(hidden[rows]).float().view(len(samples), sum(sizes), -1)
    t = targets[rows].view(len(samples), sum(sizes))
    offset = 0
    for n in sizes:
        lg, tg = logits[:, offset : offset + n], t[:, offset : offset + n]
        losses.append(float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1))))
        accs.append(float((lg.argmax(-1) == tg).float().mean()))
        offset += n
    return losses, accs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", default="model/assets/nextflow-tiny")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--transformer", default=None)
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    training.set_threads(args.threads)
    cfg, tok, model = load(args)
    samples = [sw.t2i_sample(i, seed=HELD_OUT_SEED, image_size=cfg.tokenizer.image_size) for i in range(args.n)]
    report = {}
    for drop in (False, True):
        losses, accs = per_scale(model, tok, cfg, samples, drop)
        report["uncond" if drop else "cond"] = {"loss": [round(x, 3) for x in losses], "acc": [round(x, 3) for x in accs]}
    print(json.dumps({"scales": [f"{h}x{w}" for h, w in cfg.tokenizer.scales], **report}, indent=1))


if __name__ == "__main__":
    main()
