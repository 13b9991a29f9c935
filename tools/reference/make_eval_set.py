"""The understanding and editing evaluation inputs of train_transformer.py, as data for Rust.

    OMP_NUM_THREADS=1 python tools/reference/make_eval_set.py [--n-per-type 20]
        # writes model/assets/shapeeval_set.json

ShapeWorld images are rendered only in Python, so `nextflow eval shapes` (Rust) reads the
samples that train_transformer.evaluate_understanding / evaluate_editing use from this file
(src/shapeeval/eval_set.rs embeds it). Sample choice is theirs exactly: question type k of
sw.QUESTION_TYPES takes sw.understanding_sample(k * n + i, EVAL_SEED, image_size, kind) and
edit type k of sw.EDIT_TYPES takes sw.edit_sample(k * n + i, EVAL_SEED, image_size, kind),
i < n, with image_size the tokenizer.image_size of the shipped model (model/assets/nextflow-tiny/config.json;
rerun after every export). (train_transformer's
evaluate() calls evaluate_understanding with 2 * n and evaluate_editing with n, n = 10 for its
small evaluation, 50 for the final one; a file made with --n-per-type m holds the samples of a
call with n_per_type = m.)

Output: {"generator", "seed", "n_per_type", "image_size",
         "understanding": [{"type", "question", "answer", "png"}],
         "editing": [{"type", "instruction", "png"}]}
with "png" the base64 of an RGB8 PNG of the (source) image. Deterministic: reruns give the same
bytes. Each understanding answer is checked against shapeeval.answer_question (the detector
agrees with the ground truth) and each PNG is checked to decode to the rendered image.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapeeval as se  # noqa: E402
import shapeworld as sw  # noqa: E402
from config import Config  # noqa: E402

EVAL_SEED = 7  # train_transformer.EVAL_SEED (not imported: that module needs torch)
OUT = Path(__file__).resolve().parents[2] / "model" / "assets" / "shapeeval_set.json"


def png_base64(image: np.ndarray) -> str:
    image = np.ascontiguousarray(image[..., :3].astype(np.uint8))
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, "PNG", optimize=True)
    data = buf.getvalue()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), image)
    return base64.b64encode(data).decode("ascii")


MODEL_CONFIG = Path(__file__).resolve().parents[2] / "model" / "assets" / "nextflow-tiny" / "config.json"


def make(n_per_type: int) -> dict:
    size = Config.load(MODEL_CONFIG).tokenizer.image_size  # the shipped model's native canvas
    understanding, editing = [], []
    for k, kind in enumerate(sw.QUESTION_TYPES):
        for i in range(n_per_type):
            s = sw.understanding_sample(k * n_per_type + i, EVAL_SEED, size, kind)
            assert s.question_type == kind
            detected = se.answer_question(s.image, s.question)
            assert detected == s.answer, (kind, i, s.question, s.answer, detected)
            understanding.append({"type": kind, "question": s.question, "answer": s.answer,
                                  "png": png_base64(s.image)})  # fmt: skip
    for k, kind in enumerate(sw.EDIT_TYPES):
        for i in range(n_per_type):
            s = sw.edit_sample(k * n_per_type + i, EVAL_SEED, size, kind)
            assert s.edit_type == kind
            editing.append({"type": kind, "instruction": s.instruction, "png": png_base64(s.image)})
    return {"generator": "tools/reference/make_eval_set.py: shapeworld.understanding_sample / edit_sample "
                         "as train_transformer.evaluate_understanding / evaluate_editing",
            "seed": EVAL_SEED, "n_per_type": n_per_type, "image_size": size,
            "understanding": understanding, "editing": editing}  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-per-type", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    data = make(args.n_per_type)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{args.out}: {args.out.stat().st_size} bytes, {len(data['understanding'])} understanding, "
          f"{len(data['editing'])} editing ({args.n_per_type} per type)")  # fmt: skip


if __name__ == "__main__":
    main()
