"""Train the visual tokenizer on ShapeWorld: first the semantic teacher, then the dual-codebook
MSRQ tokenizer with the teacher frozen; then score 500 held-out reconstructions.

  python tools/reference/train_tokenizer.py --out tools/reference/runs/tokenizer [--resume]

Resumable: the checkpoint (<out>/checkpoint.pt) is written every --checkpoint-minutes; with
--resume training goes on from it (data is a pure function of the step, so the run is the same).
Outputs: <out>/log.jsonl, <out>/tokenizer.pt (final weights + config), <out>/eval.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import nextflow_ref as nf
import shapeeval as se
import shapeworld as sw
import training
from config import Config, apply_overrides

TEACHER_LABELS = len(sw.SHAPES) + len(sw.COLORS)
HELD_OUT_SEED = 1  # training images come from seed 0


def training_images(step: int, batch: int, image_size) -> list:
    """Samples step * batch ... on one canvas (an int n is n x n, else (height, width))."""
    samples = [sw.t2i_sample(step * batch + i, seed=0, image_size=image_size) for i in range(batch)]
    return samples


def teacher_targets(samples: list, image_size: int, grid: int) -> torch.Tensor:
    """[B, 15, G, G]: does shape s / colour c cover more than 5% of the cell? (square canvas)"""
    cell = image_size // grid
    targets = torch.zeros(len(samples), TEACHER_LABELS, grid, grid)
    for b, sample in enumerate(samples):
        for obj in sample.objects:
            cover = sw.shape_mask(obj, image_size).reshape(grid, cell, grid, cell).mean((1, 3)) > 0.05
            cover = torch.from_numpy(cover)
            for label in (sw.SHAPES.index(obj.shape), len(sw.SHAPES) + sw.COLORS.index(obj.color)):
                targets[b, label] = torch.maximum(targets[b, label], cover.float())
    return targets


def train_teacher(tok, args, state, checkpoints, log):
    t = tok.t
    teacher = tok.encoder_vqkd
    opt = torch.optim.AdamW(teacher.parameters(), lr=args.teacher_lr, weight_decay=0.0)
    if state.get("teacher_optimizer"):
        opt.load_state_dict(state["teacher_optimizer"])
    start = time.time()
    while state["teacher_step"] < args.teacher_steps:
        step = state["teacher_step"]
        cpu = time.process_time()
        samples = training_images(10_000_000 + step, args.teacher_batch, t.image_size)
        x, y = training.to_tensor([s.image for s in samples]), teacher_targets(samples, t.image_size, t.grid)
        for group in opt.param_groups:
            group["lr"] = training.learning_rate(step, args.teacher_steps, args.teacher_lr, 50)
        with training.autocast():
            logits = teacher.head(teacher(x)).float()
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["teacher_step"] = step + 1
        state["cpu_s"] = state.get("cpu_s", 0.0) + time.process_time() - cpu
        if step % 50 == 0 or step + 1 == args.teacher_steps:
            accuracy = float(((logits > 0) == (y > 0.5)).float().mean())
            log(stage="teacher", step=step, loss=loss.item(), cell_accuracy=accuracy, cpu_h=state["cpu_s"] / 3600,
                img_per_s=args.teacher_batch * (step + 1 - state.get("teacher_step0", 0)) / (time.time() - start))  # fmt: skip
        if checkpoints.due():
            checkpoints.save({**state, "model": tok.state_dict(), "teacher_optimizer": opt.state_dict()})
    teacher.requires_grad_(False).eval()


def reseed_unused_codes(tok, usage: torch.Tensor, residuals: torch.Tensor, generator) -> int:
    """Codebook-collapse fix: codes unused since the last call take random quantizer inputs."""
    unused = (usage == 0).nonzero().flatten()
    if len(unused):
        picks = residuals[torch.randint(len(residuals), (len(unused),), generator=generator)]
        q = tok.quantize
        with torch.no_grad():
            q.embedding_vqkd.weight[unused] = picks[:, : q.semantic_dim].to(q.embedding_vqkd.weight.dtype)
            q.embedding_vqgan.weight[unused] = picks[:, q.semantic_dim :].to(q.embedding_vqgan.weight.dtype)
    usage.zero_()
    return len(unused)


def make_corruption(args):
    """Indices -> indices with a fraction u ~ U(0, --corrupt) of each image's tokens on the last
    --corrupt-scales scales replaced by tokens of the same scale drawn from the whole batch (the
    scale's code distribution): the decoder learns to use what the coarse scales imply rather
    than trust every fine code, as a transformer's samples will get some of them wrong."""

    def corrupt(indices: list) -> list:
        out = list(indices)
        for k in range(max(len(indices) - args.corrupt_scales, 0), len(indices)):
            idx = indices[k]
            rate = torch.rand(idx.shape[0], 1) * args.corrupt
            shuffled = idx.flatten()[torch.randperm(idx.numel())].view(idx.shape)
            out[k] = torch.where(torch.rand(idx.shape) < rate, shuffled, idx)
        return out

    return corrupt


def train_tokenizer(tok, args, state, checkpoints, log):
    t = tok.t
    params = [p for n, p in tok.named_parameters() if not n.startswith("encoder_vqkd.")]
    if args.decoder_only:  # codes stay as they are, so a transformer trained on them stays valid
        params = [p for n, p in tok.named_parameters() if n.startswith(("decoder.", "post_quant_conv."))]
    corrupt = make_corruption(args) if args.corrupt else None
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    if state.get("optimizer"):
        opt.load_state_dict(state["optimizer"])
    usage = state.get("usage", torch.zeros(t.codebook_size))
    start, first = time.time(), state["step"]
    tok.train()
    tok.encoder_vqkd.eval()
    while state["step"] < args.steps:
        step = state["step"]
        cpu = time.process_time()
        samples = training_images(step, args.batch, training.canvas_of(t, step))
        x = training.to_tensor([s.image for s in samples])
        for group in opt.param_groups:
            group["lr"] = training.learning_rate(step, args.steps, args.lr, 200)
        with training.autocast():
            out = tok(x, corrupt=corrupt)
        recon = out["image"].float()
        mse = F.mse_loss(recon, x)
        semantic = 1 - F.cosine_similarity(out["semantic"].float(), out["teacher"].float(), dim=1).mean()
        loss = mse + F.l1_loss(recon, x) + (0.0 if args.decoder_only else args.semantic_weight * semantic + out["vq_loss"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for idx in out["indices"]:
            usage += torch.bincount(idx.flatten(), minlength=t.codebook_size)
        state["step"] = step + 1
        state["cpu_s"] = state.get("cpu_s", 0.0) + time.process_time() - cpu
        if (step + 1) % args.reseed_every == 0 and step < 0.9 * args.steps and not args.decoder_only:
            generator = torch.Generator().manual_seed(step)
            state["reseeded"] = reseed_unused_codes(tok, usage, out["residuals"], generator)
        if step % 50 == 0 or step + 1 == args.steps:
            log(stage="tokenizer", step=step, cpu_h=state["cpu_s"] / 3600, loss=loss.item(), mse=mse.item(), semantic=semantic.item(),
                vq=out["vq_loss"].item(), psnr=10 * torch.log10(4 / mse).item(), codes_used_window=int((usage > 0).sum()),
                reseeded=state.get("reseeded", 0), lr=opt.param_groups[0]["lr"],
                img_per_s=args.batch * (step + 1 - first) / (time.time() - start))  # fmt: skip
        if checkpoints.due() or step + 1 == args.steps:
            checkpoints.save({**state, "usage": usage, "model": tok.state_dict(), "optimizer": opt.state_dict()})


@torch.no_grad()
def evaluate(tok, n: int, batch: int = 50) -> dict:
    """Reconstructions of n held-out images on the native canvas (and n/5 on each other canvas,
    under "canvases"): PSNR and ShapeEval clauses (spec: >= 0.97)."""
    report = evaluate_canvas(tok, n, (tok.t.image_size, tok.t.image_size), batch)
    others = tok.t.canvases()[1:]
    if others:
        report["canvases"] = {f"{h}x{w}": evaluate_canvas(tok, max(n // 5, 1), (h, w), batch) for h, w in others}
    return report


@torch.no_grad()
def evaluate_canvas(tok, n: int, canvas: tuple, batch: int = 50) -> dict:
    tok.eval()
    t = tok.t
    psnrs, correct, truth, used = [], [], [], torch.zeros(t.codebook_size)
    for start in range(0, n, batch):
        samples = [sw.t2i_sample(i, seed=HELD_OUT_SEED, image_size=canvas) for i in range(start, min(start + batch, n))]
        x = training.to_tensor([s.image for s in samples])
        with training.autocast():
            indices = tok.encode(x)
        for idx in indices:
            used += torch.bincount(idx.flatten(), minlength=t.codebook_size)
        images = training.to_uint8(tok.decode(indices, tok.t.schedule(*canvas)).float())
        for sample, image in zip(samples, images):
            psnrs.append(training.psnr(image, sample.image))
            correct.append((sample.task, se.evaluate_clauses(se.detect(image), sample.clauses)[0]))
            truth.append((sample.task, se.evaluate_clauses(se.detect(sample.image), sample.clauses)[0]))
    return {"images": n, "psnr": float(np.mean(psnrs)), "shapeeval_reconstruction": se.score_t2i(correct),
            "shapeeval_ground_truth": se.score_t2i(truth), "codes_used": int((used > 0).sum())}  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=training.RUNS / "tokenizer")
    parser.add_argument("--config", type=Path, default=None, help="config.json (default: the one beside this file)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--teacher-batch", type=int, default=32)
    parser.add_argument("--teacher-lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--semantic-weight", type=float, default=0.5)
    parser.add_argument("--reseed-every", type=int, default=100)
    parser.add_argument("--eval-images", type=int, default=500)
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--init", type=Path, default=None, help="start from this tokenizer.pt's weights (its teacher is kept and not retrained)")
    parser.add_argument("--init-teacher-only", action="store_true", help="with --init: take only its semantic teacher")
    parser.add_argument("--decoder-only", action="store_true", help="train only the pixel decoder (and post_quant_conv): the codes stay valid")
    parser.add_argument("--corrupt", type=float, default=0.0, help="max fraction of fine-scale tokens the decoder sees replaced (0: off)")
    parser.add_argument("--corrupt-scales", type=int, default=3, help="how many of the finest scales --corrupt touches")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="config overrides, e.g. tokenizer.normalize_codes=false")
    args = parser.parse_args(argv)

    training.set_threads(args.threads)
    cfg = Config.load(args.config) if args.config else Config.load()
    apply_overrides(cfg, args.set)
    checkpoints = training.Checkpoints(args.out / "checkpoint.pt", args.checkpoint_minutes)
    log = training.Log(args.out / "log.jsonl")
    torch.manual_seed(args.seed)
    tok = nf.VisualTokenizer(cfg, TEACHER_LABELS)
    state = {"teacher_step": 0, "step": 0, "args": vars(args) | {"out": str(args.out)}}
    saved = checkpoints.load() if args.resume else None
    if saved:
        tok.load_state_dict(saved.pop("model"))
        state.update(saved)
        log(event="resume", teacher_step=state["teacher_step"], step=state["step"])
    else:
        if args.out.joinpath("log.jsonl").exists():
            args.out.joinpath("log.jsonl").unlink()
        if args.init:
            saved = torch.load(args.init, weights_only=False)
            source = saved["model"]
            if args.init_teacher_only:
                source = {k: v for k, v in source.items() if k.startswith("encoder_vqkd.")}
            rows = source.get("quantize.embedding_vqkd.weight")
            if rows is not None and rows.shape[0] != cfg.tokenizer.codebook_size:
                # A smaller codebook starts from the source's most used codes.
                src = nf.VisualTokenizer(Config(**saved["config"]), TEACHER_LABELS)
                src.load_state_dict(source)
                with torch.no_grad():
                    images = [s.image for s in training_images(20_000_000, 256, cfg.tokenizer.image_size)]
                    used = torch.cat([i.flatten() for i in src.eval().encode(training.to_tensor(images))])
                keep = torch.bincount(used, minlength=rows.shape[0]).argsort(descending=True)[: cfg.tokenizer.codebook_size]
                for name in ("quantize.embedding_vqkd.weight", "quantize.embedding_vqgan.weight"):
                    source[name] = source[name][keep]
                log(event="init_codebook", kept=cfg.tokenizer.codebook_size, of=int(rows.shape[0]))
            tok.load_state_dict(source, strict=not args.init_teacher_only)
            with torch.no_grad():  # start from the rows the source tokenizer used
                q = tok.quantize
                q.embedding_vqkd.weight.copy_(F.normalize(q.embedding_vqkd.weight, dim=-1))
                q.embedding_vqgan.weight.copy_(F.normalize(q.embedding_vqgan.weight, dim=-1))
            state["teacher_step"] = args.teacher_steps
            log(event="init", source=str(args.init))
    state["teacher_step0"] = state["teacher_step"]
    log(event="start", params=sum(p.numel() for p in tok.parameters()), config=cfg.to_dict()["tokenizer"], threads=args.threads)
    train_teacher(tok, args, state, checkpoints, log)
    train_tokenizer(tok, args, state, checkpoints, log)
    torch.save({"config": cfg.to_dict(), "model": tok.state_dict()}, args.out / "tokenizer.pt")
    report = evaluate(tok, args.eval_images)
    (args.out / "eval.json").write_text(json.dumps(report, indent=1))
    log(event="done", **{k: v for k, v in report.items()})


if __name__ == "__main__":
    main()
