"""Which scale holds a model back? Diagnostics of a tokenizer, and of a transformer on it.

  python tools/reference/diagnose_scales.py tokenizer --tokenizer T.pt [--n 20]
  python tools/reference/diagnose_scales.py oracle --tokenizer T.pt --transformer C.pt [--n 20] [--top-k K] [--cfg W]

tokenizer: per scale, the norm its codes add to f_hat, the code distribution (most common
code's share, entropy, distinct codes) over 300 held-out images, and ShapeEval of the
eval-prompt ground truths decoded (a) from all scales, (b) from the first k scales with the
rest's codes shuffled among the images and cells of their scale (a model that knows each
scale's code distribution but nothing else there), (c) from the first k scales alone.

oracle: ShapeEval of generations whose first k scales are forced to the ground truth's codes
and the rest sampled by the transformer (k = 0: plain generation). If forcing every scale
but the last leaves the score low, the last scale is what the model cannot predict.
"""

from __future__ import annotations

import argparse

import torch

import nextflow_ref as nf
import shapeeval as se
import shapeworld as sw
import training
from config import Config
from train_transformer import load_tokenizer


def score(prompts, images) -> float:
    results = [(e["task"], se.evaluate_clauses(se.detect(im), e["clauses"])[0]) for e, im in zip(prompts, images)]
    return round(se.score_t2i(results)["overall"], 3)


@torch.no_grad()
def tokenizer_report(tok, cfg, n: int) -> None:
    scales, size = cfg.tokenizer.scales, cfg.tokenizer.image_size
    held_out = [sw.t2i_sample(i, seed=11, image_size=size) for i in range(300)]
    idx = tok.msrq(tok.features(training.to_tensor([s.image for s in held_out])))[0]
    for (h, w), i in zip(scales, idx):
        c = torch.bincount(i.flatten(), minlength=cfg.tokenizer.codebook_size).float()
        p = c[c > 0] / c.sum()
        print(f"{h}x{w}: most common code {float(p.max()):.2f} of cells, entropy {float(-(p * p.log()).sum()):.2f} nats, {int((c > 0).sum())} distinct")
    prompts = sw.eval_prompts(n)
    truth = [sw.ground_truth_image(e, image_size=size) for e in prompts]
    f = tok.features(training.to_tensor(truth))
    idx, _ = tok.msrq(f)
    grid = scales[-1]
    for k, (h, w) in enumerate(scales):
        codes = tok.quantize.embed(idx[k]).view(len(truth), h, w, -1).permute(0, 3, 1, 2)
        print(f"scale {h}x{w} adds |code| {float(nf.bicubic(codes, grid).norm(dim=1).mean()):.2f} per cell (|f| {float(f.norm(dim=1).mean()):.2f})")
    print("ShapeEval of reconstructions:", score(prompts, training.to_uint8(tok.decode(idx))))
    g = torch.Generator().manual_seed(0)
    for k in range(1, len(scales)):
        shuffled = idx[:k] + [i.flatten()[torch.randperm(i.numel(), generator=g)].view(i.shape) for i in idx[k:]]
        prefix = nf.bicubic(tok.decode_codes(idx[:k], scales[:k]), grid)
        print(f"first {k} scales true: rest shuffled {score(prompts, training.to_uint8(tok.decode(shuffled)))}, "
              f"rest absent {score(prompts, training.to_uint8(tok.pixels(prefix).clamp(-1, 1)))}")  # fmt: skip


@torch.no_grad()
def generate_forced(model, tok, cfg, ids: list, true: list, k_true: int, seed: int = 0) -> list:
    """nf.generate (CFG with <bos> alone as the unconditional prompt) with the first k_true
    scales' codes forced to `true`."""
    vocab, scales, sampler, n = cfg.vocabulary, cfg.tokenizer.scales, cfg.sampler, len(ids)
    builders = []
    for p in ids + [[vocab.id("<bos>")]] * n:
        b = nf.SequenceBuilder(cfg, tok.quantize)
        b.text(list(p) + [vocab.id("<boi>")])
        builders.append(b)
    steps = [nf.collate([b.tensors() for b in builders])]
    boi = torch.tensor([b.position - 1 for b in builders])
    cache, g = nf.KvCache(len(model.model.layers)), torch.Generator().manual_seed(seed)
    hidden = model(steps[0], cache)[:, -1:]
    out, state = [], None
    for k, (h, w) in enumerate(scales):
        logits = model.code_logits(hidden)
        logits = logits[n:] + sampler.cfg_scale * (logits[:n] - logits[n:])
        idx = true[k] if k < k_true else nf.sample_top_k_top_p(logits, sampler.top_k, sampler.top_p, sampler.temperature, g)
        out.append(idx)
        if k == len(scales) - 1:
            break
        codes = tok.quantize.embed(idx).view(n, h, w, -1).permute(0, 3, 1, 2)
        x, state = nf.next_scale_input(torch.cat([codes] * 2), state, scales[k + 1], cfg.visual.input_mode)
        steps.append(nf.map_batch(cfg, x, k + 1, boi + k + 1, block=max(b.n_maps for b in builders) + k, n_scales=len(scales)))
        hidden = model(steps[-1], cache)[:, -x.shape[-2] * x.shape[-1] :]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["tokenizer", "oracle"])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--transformer", help="a train_transformer.py checkpoint.pt or transformer.pt (oracle)")
    parser.add_argument("--config", default="tools/reference/configs/shapeworld64.json", help="the transformer's config (oracle)")
    parser.add_argument("--n", type=int, default=20, help="eval prompts per task")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--cfg", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    training.set_threads(args.threads)
    tok_cfg, tok = load_tokenizer(args.tokenizer)
    if args.what == "tokenizer":
        return tokenizer_report(tok, tok_cfg, args.n)
    cfg = Config.load(args.config)
    cfg.tokenizer, cfg.vocabulary.codebook_size = tok_cfg.tokenizer, tok_cfg.tokenizer.codebook_size
    cfg.sampler.top_k = args.top_k if args.top_k is not None else cfg.sampler.top_k
    cfg.sampler.cfg_scale = args.cfg if args.cfg is not None else cfg.sampler.cfg_scale
    model = nf.NextFlow(cfg)
    model.load_state_dict(torch.load(args.transformer, weights_only=False)["model"])
    model.eval()
    prompts = sw.eval_prompts(args.n)
    with torch.no_grad():
        true = tok.encode(training.to_tensor([sw.ground_truth_image(e, image_size=cfg.tokenizer.image_size) for e in prompts]))
    ids = [[cfg.vocabulary.id("<bos>")] + cfg.vocabulary.encode(e["prompt"]) for e in prompts]
    for k in range(len(cfg.tokenizer.scales)):
        images = training.to_uint8(tok.decode(generate_forced(model, tok, cfg, ids, true, k)))
        print(f"first {k} scales forced to the truth: ShapeEval {score(prompts, images)}")


if __name__ == "__main__":
    main()
