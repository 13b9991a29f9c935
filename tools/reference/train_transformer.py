"""Train the unified NextFlow transformer on ShapeWorld with a frozen tokenizer, then evaluate.

  python tools/reference/train_transformer.py --tokenizer tools/reference/runs/tokenizer/tokenizer.pt \\
      --out tools/reference/runs/transformer [--resume]

Sequences (one kind per batch, 6:2:2 over steps; spec §4.2-4.5 layout, see SequenceBuilder):
  t2i            <bos> caption <boi> maps 1..K-1              loss on the K scales' codes
  understanding  <bos> <boi> maps 1..K <eoi> question answer <eos>   loss on answer, <eos>
  editing        <bos> <boi> source maps 1..K <eoi> instruction <boi> maps 1..K-1
Visual losses use the scale reweighting of spec §4.4 (alpha 0.9). Captions and instructions are
dropped with p=0.1 so the same model gives the unconditional half of CFG.
Resumable (<out>/checkpoint.pt every --checkpoint-minutes); data is a pure function of the step.
Outputs: <out>/log.jsonl, <out>/transformer.pt, <out>/eval.json (ShapeEval, understanding, editing).
  python tools/reference/train_transformer.py ... --eval-only   # evaluate <out>/transformer.pt
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

DEFAULT_MIX = "t2i:6,understanding:2,edit:2"  # kinds by step % 10


def kinds_of(mix: str) -> list:
    """"t2i:6,understanding:2,edit:2" -> the kind of each step modulo the total weight."""
    kinds = []
    for part in mix.split(","):
        name, _, count = part.partition(":")
        assert name in ("t2i", "understanding", "edit"), f"unknown kind {name!r} in --mix"
        kinds += [name] * int(count or 1)
    return kinds


EVAL_SEED = 7  # understanding and editing test samples; t2i uses the fixed eval prompt set


def load_tokenizer(path: Path) -> tuple:
    saved = torch.load(path, weights_only=False)
    cfg = Config(**saved["config"])
    tok = nf.VisualTokenizer(cfg)
    tok.load_state_dict(saved["model"])
    return cfg, tok.eval().requires_grad_(False)


def encode(tok, images: list) -> list:
    """Per image, its list of per-scale index tensors."""
    with training.autocast():
        indices = tok.encode(training.to_tensor(images))
    return [[idx[b] for idx in indices] for b in range(len(images))]


def make_batch(kind: str, step: int, args, cfg, tok, alpha: float) -> dict:
    """Training sequences of one kind on one canvas (training.canvas_of: the native one half the
    time, else another schedule of the config); sample i of step s is ShapeWorld sample
    s * batch + i."""
    vocab, size = cfg.vocabulary, training.canvas_of(cfg.tokenizer, step, args.seed)
    scales = cfg.tokenizer.schedule(*size)
    weights = nf.scale_weights(scales, alpha)
    rng = np.random.default_rng([args.seed, step])
    drop = rng.random(args.batch) < args.drop_prob
    sequences = []
    first = step * args.batch
    bos, eos = [vocab.id("<bos>")], [vocab.id("<eos>")]
    if kind == "t2i":
        rich = rng.random(args.batch) < args.rich_caption_prob
        samples = [sw.t2i_sample(first + i, seed=args.seed, image_size=size, rich_caption=bool(rich[i])) for i in range(args.batch)]
        for sample, codes, dropped in zip(samples, encode(tok, [s.image for s in samples]), drop):
            b = nf.SequenceBuilder(cfg, tok.quantize)
            b.text(bos + ([] if dropped else vocab.encode(sample.caption)))
            b.image(codes, generate=True, weights=weights, scales=scales)
            sequences.append(b.tensors())
    elif kind == "understanding":
        samples = [sw.understanding_sample(first + i, seed=args.seed, image_size=size) for i in range(args.batch)]
        for sample, codes in zip(samples, encode(tok, [s.image for s in samples])):
            b = nf.SequenceBuilder(cfg, tok.quantize)
            b.text(bos)
            b.image(codes, generate=False, scales=scales)
            b.text(vocab.encode(sample.question))
            b.text(vocab.encode(sample.answer) + eos, loss=True)
            sequences.append(b.tensors())
    else:
        samples = [sw.edit_sample(first + i, seed=args.seed, image_size=size) for i in range(args.batch)]
        codes = encode(tok, [s.image for s in samples] + [s.edited_image for s in samples])
        for i, (sample, dropped) in enumerate(zip(samples, drop)):
            b = nf.SequenceBuilder(cfg, tok.quantize)
            b.text(bos)
            b.image(codes[i], generate=False, scales=scales)
            b.text([] if dropped else vocab.encode(sample.instruction))
            b.image(codes[len(samples) + i], generate=True, weights=weights, scales=scales)
            sequences.append(b.tensors())
    return nf.collate(sequences, vocab.id("<pad>"))


def loss_of(model, batch) -> tuple:
    """Weighted cross-entropy over the rows that have targets (full vocabulary, one head)."""
    hidden = model(batch)
    rows = batch["targets"] >= 0
    logits = model.lm_head(hidden[rows]).float()
    losses = F.cross_entropy(logits, batch["targets"][rows], reduction="none")
    weights = batch["weights"][rows]
    return (losses * weights).sum() / weights.sum(), float((logits.argmax(-1) == batch["targets"][rows]).float().mean())


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_t2i(model, tok, cfg, n_per_task: int, seed: int, out_dir: Path | None, chunk: int = 50, canvas=None) -> dict:
    """ShapeEval of generations on a canvas (default: the native one), eval_prompts(n_per_task)."""
    prompts = sw.eval_prompts(n_per_task)
    vocab, results = cfg.vocabulary, []
    scales = cfg.tokenizer.schedule(*canvas) if canvas else None
    for start in range(0, len(prompts), chunk):
        entries = prompts[start : start + chunk]
        ids = [[vocab.id("<bos>")] + vocab.encode(e["prompt"]) for e in entries]
        images = training.to_uint8(tok.decode(nf.generate(model, tok.quantize, ids, seed=seed + start, scales=scales), scales))
        for entry, image in zip(entries, images):
            results.append((entry["task"], se.evaluate_clauses(se.detect(image), entry["clauses"])[0]))
            if out_dir is not None:
                from PIL import Image

                out_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(out_dir / f"{entry['index']:05d}.png")
    return se.score_t2i(results)


@torch.no_grad()
def evaluate_understanding(model, tok, cfg, n_per_type: int) -> dict:
    """Exact match of the most likely word after the question (every answer is one word)."""
    vocab, scores = cfg.vocabulary, {}
    words = torch.arange(len(vocab.specials), vocab.code_start)
    for k, kind in enumerate(sw.QUESTION_TYPES):
        samples = [sw.understanding_sample(k * n_per_type + i, EVAL_SEED, cfg.tokenizer.image_size, kind) for i in range(n_per_type)]
        sequences = []
        for sample, codes in zip(samples, encode(tok, [s.image for s in samples])):
            b = nf.SequenceBuilder(cfg, tok.quantize)
            b.text([vocab.id("<bos>")])
            b.image(codes, generate=False)
            b.text(vocab.encode(sample.question))
            sequences.append(b.tensors())
        hidden = model(nf.collate(sequences, vocab.id("<pad>")))[:, -1]
        answers = words[model.lm_head(hidden)[:, words].argmax(-1)]
        scores[kind] = float(np.mean([vocab.decode([int(a)]) == s.answer for a, s in zip(answers, samples)]))
    return scores


@torch.no_grad()
def evaluate_editing(model, tok, cfg, n_per_type: int, seed: int) -> dict:
    vocab, scores = cfg.vocabulary, {}
    for k, kind in enumerate(sw.EDIT_TYPES):
        samples = [sw.edit_sample(k * n_per_type + i, EVAL_SEED, cfg.tokenizer.image_size, kind) for i in range(n_per_type)]
        codes = encode(tok, [s.image for s in samples])
        prefixes, unconditional = [], []
        for sample, source in zip(samples, codes):
            for text, group in ((vocab.encode(sample.instruction), prefixes), ([], unconditional)):
                b = nf.SequenceBuilder(cfg, tok.quantize)
                b.text([vocab.id("<bos>")])
                b.image(source, generate=False)
                b.text(text)
                group.append(b)
        images = training.to_uint8(tok.decode(nf.generate(model, tok.quantize, prefixes, seed=seed, uncond_prompts=unconditional)))
        scores[kind] = float(np.mean([se.edit_success(s.image, s.instruction, im)[0] for s, im in zip(samples, images)]))
    scores["overall"] = float(np.mean(list(scores.values())))
    return scores


def evaluate(model, tok, cfg, args, out_dir=None, small=False) -> dict:
    model.eval()
    n = args.eval_small_n if small else args.eval_per_task
    kinds = set(kinds_of(args.mix))
    report = {"t2i": evaluate_t2i(model, tok, cfg, n, args.seed, out_dir)}
    if not small:  # dynamic resolution: every other canvas the config offers
        report["t2i_canvases"] = {f"{h}x{w}": evaluate_t2i(model, tok, cfg, n, args.seed, None, canvas=(h, w))
                                  for h, w in cfg.tokenizer.canvases()[1:]}  # fmt: skip
    if "understanding" in kinds:
        report["understanding"] = evaluate_understanding(model, tok, cfg, 2 * n)
    if "edit" in kinds:
        report["editing"] = evaluate_editing(model, tok, cfg, n, args.seed)
    report["sampler"] = cfg.sampler.__dict__
    model.train()
    return report


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, default=training.RUNS / "tokenizer" / "tokenizer.pt")
    parser.add_argument("--config", type=Path, default=None, help="backbone/visual/sampler from here (default: config.json)")
    parser.add_argument("--out", type=Path, default=training.RUNS / "transformer")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--scale-alpha", type=float, default=0.9, help="spec §4.4 reweighting exponent")
    parser.add_argument("--drop-prob", type=float, default=0.1, help="caption / instruction dropout for CFG")
    parser.add_argument("--rich-caption-prob", type=float, default=0.25)
    parser.add_argument("--eval-every", type=int, default=1000, help="small ShapeEval every N steps (0: off)")
    parser.add_argument("--eval-per-task", type=int, default=50)
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--mix", default=DEFAULT_MIX, help="kinds of step and their weights")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="config overrides (backbone, visual, sampler)")
    parser.add_argument("--minutes", type=float, default=0, help="stop after this many CPU-minutes of training steps in this process (trials; 0: off)")
    parser.add_argument("--eval-small-n", type=int, default=10, help="prompts per task of the periodic evaluation")
    args = parser.parse_args(argv)
    kinds = kinds_of(args.mix)

    training.set_threads(args.threads)
    tok_cfg, tok = load_tokenizer(args.tokenizer)
    cfg = Config.load(args.config) if args.config else Config.load()
    cfg.tokenizer, cfg.vocabulary.codebook_size = tok_cfg.tokenizer, tok_cfg.tokenizer.codebook_size
    apply_overrides(cfg, args.set)
    torch.manual_seed(args.seed)
    model = nf.NextFlow(cfg)
    log = training.Log(args.out / "log.jsonl")
    if args.eval_only:
        model.load_state_dict(torch.load(args.out / "transformer.pt", weights_only=False)["model"])
        report = evaluate(model, tok, cfg, args, args.out / "eval_images")
        (args.out / "eval.json").write_text(json.dumps(report, indent=1))
        log(event="eval", **report)
        return
    checkpoints = training.Checkpoints(args.out / "checkpoint.pt", args.checkpoint_minutes)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    state = {"step": 0, "cpu_s": 0.0}  # cpu_s: process CPU time of training steps, over all sessions
    saved = checkpoints.load() if args.resume else None
    if saved:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state["step"], state["cpu_s"] = saved["step"], saved.get("cpu_s", 0.0)
        log(event="resume", step=state["step"], cpu_h=state["cpu_s"] / 3600)
    elif args.out.joinpath("log.jsonl").exists():
        args.out.joinpath("log.jsonl").unlink()
    log(event="start", params=sum(p.numel() for p in model.parameters()), threads=args.threads,
        args={k: str(v) for k, v in vars(args).items()}, config=cfg.to_dict() | {"vocabulary": "..."})  # fmt: skip
    model.train()
    start, samples_seen, cpu_at_start = time.time(), 0, state["cpu_s"]
    while state["step"] < args.steps:
        step = state["step"]
        cpu = time.process_time()
        kind = kinds[step % len(kinds)]
        batch = make_batch(kind, step, args, cfg, tok, args.scale_alpha)
        for group in opt.param_groups:
            group["lr"] = training.learning_rate(step, args.steps, args.lr, args.warmup)
        with training.autocast():
            loss, accuracy = loss_of(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        samples_seen += args.batch
        state["step"] = step + 1
        state["cpu_s"] += time.process_time() - cpu
        if step % 10 == 0 or step < 10:
            log(step=step, kind=kind, loss=loss.item(), accuracy=accuracy, length=int(batch["ids"].shape[1]), train_s=time.time() - start,
                cpu_h=state["cpu_s"] / 3600, lr=opt.param_groups[0]["lr"], samples_per_s=samples_seen / (time.time() - start))  # fmt: skip
        if args.eval_every and (step + 1) % args.eval_every == 0:
            paused = time.time()
            report = evaluate(model, tok, cfg, args, small=True)
            start += time.time() - paused  # train_s and --minutes count training only
            log(event="eval_small", step=step + 1, train_s=time.time() - start, cpu_h=state["cpu_s"] / 3600, **report)
        out_of_time = args.minutes and state["cpu_s"] - cpu_at_start >= args.minutes * 60
        if checkpoints.due() or step + 1 == args.steps or out_of_time:
            checkpoints.save({**state, "model": model.state_dict(), "optimizer": opt.state_dict()})
        if out_of_time:
            log(event="out_of_time", step=state["step"], minutes=args.minutes, cpu_h=state["cpu_s"] / 3600,
                **({"eval_small": evaluate(model, tok, cfg, args, small=True)} if args.eval_every else {}))  # fmt: skip
            return
    torch.save({"config": cfg.to_dict(), "model": model.state_dict()}, args.out / "transformer.pt")
    report = evaluate(model, tok, cfg, args, args.out / "eval_images")
    (args.out / "eval.json").write_text(json.dumps(report, indent=1))
    log(event="done", step=state["step"], cpu_h=state["cpu_s"] / 3600, **report)


if __name__ == "__main__":
    main()
