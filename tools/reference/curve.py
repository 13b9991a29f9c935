"""The learning curve of the embedded model's training, from the stages' logs, as Markdown.

  python tools/reference/curve.py tools/reference/checkpoints     # {tokenizer,transformer}-log.jsonl
  python tools/reference/curve.py tools/reference/runs --last     # runs/{tokenizer,transformer}/log.jsonl

Rows: the tokenizer's loss and PSNR, the transformer's t2i loss and token accuracy, and every
evaluation (ShapeEval per task, understanding, editing), against CPU-hours of training (process
CPU time of the training steps, all threads, summed over sessions; evaluations not counted).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def logs(folder: Path) -> dict:
    flat = {s: folder / f"{s}-log.jsonl" for s in ("tokenizer", "transformer")}
    if not any(p.exists() for p in flat.values()):
        flat = {s: folder / s / "log.jsonl" for s in ("tokenizer", "transformer")}
    return {s: read(p) for s, p in flat.items()}


def fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def main(argv: list) -> None:
    folder, last = Path(argv[0]), "--last" in argv
    stages = logs(folder)
    out = ["# Learning curve", "", "CPU-hours are process CPU time of training steps (all threads), summed over sessions.", ""]
    tok = [e for e in stages["tokenizer"] if e.get("stage") == "tokenizer"]
    if tok:
        out += ["## Tokenizer", "", "| step | CPU-h | loss | PSNR dB | codes used |", "|---|---|---|---|---|"]
        rows = tok[-1:] if last else tok[:: max(len(tok) // 20, 1)] + tok[-1:]
        out += [f"| {e['step']} | {fmt(e.get('cpu_h', '-'))} | {fmt(e['loss'])} | {fmt(e['psnr'])} | {e['codes_used_window']} |" for e in rows]
        done = [e for e in stages["tokenizer"] if e.get("event") == "done"]
        if done:
            d = done[-1]
            out += ["", f"Held-out reconstructions ({d['images']} images): PSNR {d['psnr']:.2f} dB, ShapeEval {json.dumps(d['shapeeval_reconstruction'])}"]
        out.append("")
    steps = [e for e in stages["transformer"] if "loss" in e and e.get("kind")]
    if steps:
        out += ["## Transformer (training loss, by kind)", "", "| step | CPU-h | kind | loss | token accuracy |", "|---|---|---|---|---|"]
        rows = steps[-1:] if last else steps[:: max(len(steps) // 30, 1)] + steps[-1:]
        out += [f"| {e['step']} | {fmt(e.get('cpu_h', '-'))} | {e['kind']} | {fmt(e['loss'])} | {fmt(e['accuracy'])} |" for e in rows]
        out.append("")
    evals = [e for e in stages["transformer"] if e.get("event") in ("eval_small", "out_of_time", "done", "eval")]
    if evals:
        out += ["## Evaluations", "", "| step | CPU-h | ShapeEval overall | per task | understanding | editing |", "|---|---|---|---|---|---|"]
        for e in evals[-1:] if last else evals:
            report = e.get("eval_small", e)
            t2i = report.get("t2i", {})
            tasks = " ".join(f"{k[:6]} {v:.2f}" for k, v in t2i.items() if k != "overall")
            und = " ".join(f"{k} {v:.2f}" for k, v in report.get("understanding", {}).items())
            edit = " ".join(f"{k} {v:.2f}" for k, v in report.get("editing", {}).items())
            out.append(f"| {e.get('step', '-')} | {fmt(e.get('cpu_h', '-'))} | {fmt(t2i.get('overall', '-'))} | {tasks} | {und} | {edit} |")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
