"""Fixtures for the Rust ShapeEval (model/src/shapeeval.rs, tests/shapeeval.rs).

    OMP_NUM_THREADS=1 python tools/reference/make_shapeeval_fixtures.py   # writes tests/golden/shapeeval/

Writes PNGs (RGB8) and fixtures.json with what the Python reference (shapeeval.py,
shapeworld.py) says about each of them:
  rng           raw PCG64 doubles of sample_rng(seed, kind, index) (SeedSequence + PCG64)
  eval_prompts  eval_prompts(50, 0) and eval_prompts(7, 3), in full
  images        per PNG: size and detect()'s detections (shape, colour, area, box, and the
                IEEE-754 bit patterns of fill, solidity, symmetry and corners)
  t2i           (image, task, prompt, clauses) -> evaluate_clauses' (correct, reasons);
                ground truth of eval_prompts(10, 0) first (gt10_*.png), then wrong pairings,
                perturbed and hand-made images
  t2i_scores    score_t2i over every t2i case, and over the ground-truth cases alone
  understanding (image, question) -> answer_question, plus question_type for valid and
                invalid questions
  instructions  parse_instruction for valid and invalid instructions
  edits         (before, instruction, after) -> edit_success's (success, reason)
Deterministic: numpy Generators seeded by fixed numbers only.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapeeval as se  # noqa: E402
import shapeworld as sw  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "tests" / "golden" / "shapeeval"
SIZE = 128


def bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", float(x)))[0]


class Writer:
    def __init__(self):
        self.images = {}
        self.arrays = {}

    def add(self, name: str, image: np.ndarray) -> str:
        image = np.ascontiguousarray(image[..., :3].astype(np.uint8))
        assert image.shape[0] == image.shape[1], name
        if name in self.images:
            assert np.array_equal(self.arrays[name], image), name
            return name
        Image.fromarray(image, "RGB").save(OUT / name, optimize=True)
        back = np.asarray(Image.open(OUT / name).convert("RGB"))
        assert np.array_equal(back, image)
        dets = se.detect(image)
        self.arrays[name] = image
        self.images[name] = {
            "size": int(image.shape[0]),
            "detections": [
                {
                    "shape": d.shape,
                    "color": d.color,
                    "area": d.area,
                    "box": [d.x0, d.y0, d.x1, d.y1],
                    "bits": [bits(d.fill), bits(d.solidity), bits(d.symmetry), bits(d.corners)],
                }
                for d in dets
            ],
        }
        return name


def box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, edges replicated, rounded half up."""
    padded = np.pad(image.astype(np.int64), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    total = np.zeros(image.shape, dtype=np.int64)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            total += padded[dy : dy + h, dx : dx + w]
    n = (2 * radius + 1) ** 2
    return ((2 * total + n) // (2 * n)).astype(np.uint8)


def obj(shape, color, cx, cy, size):
    return sw.ShapeObject(shape, color, float(cx), float(cy), float(size))


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.png"):
        old.unlink()
    w = Writer()
    fixtures = {"image_size": SIZE}

    # --- RNG ---------------------------------------------------------------------------------
    rng_cases = []
    for seed, kind, index, n in [(0, "eval_prompts", 0, 8), (0, "eval_prompts", 5, 4), (3, "t2i", 12345, 4),
                                 (2**40 + 7, "edit", 2**33 + 1, 4), (0, "eval_ground_truth", 0, 4)]:  # fmt: skip
        rng = sw.sample_rng(seed, kind, index)
        doubles = [float(x) for x in rng.random(n)]
        rng_cases.append({"seed": seed, "kind": kind, "index": index, "doubles": doubles,
                          "bits": [bits(x) for x in doubles]})  # fmt: skip
    fixtures["rng"] = rng_cases

    # --- prompt sets -------------------------------------------------------------------------
    fixtures["eval_prompts"] = [
        {"n_per_task": 50, "seed": 0, "prompts": sw.eval_prompts(50, 0)},
        {"n_per_task": 7, "seed": 3, "prompts": sw.eval_prompts(7, 3)},
    ]
    fixtures["prompt_combination_counts"] = {t: len(sw.prompt_combinations(t)) for t in sw.TASKS}

    t2i = []

    def t2i_case(image_name, entry, note):
        correct, reasons = se.evaluate_clauses(se.detect(w.arrays[image_name]), entry["clauses"])
        t2i.append({"image": image_name, "task": entry["task"], "prompt": entry["prompt"],
                    "clauses": entry["clauses"], "correct": bool(correct), "reasons": reasons, "note": note})  # fmt: skip

    # Ground truth of eval_prompts(10, 0): must score 1.0 (as Python says).
    prompts10 = sw.eval_prompts(10, 0)
    for entry in prompts10:
        name = w.add(f"gt10_{entry['index']:02d}.png", sw.ground_truth_image(entry, 0, SIZE))
        t2i_case(name, entry, "ground truth")
    n_ground_truth = len(t2i)

    # Wrong pairings: ground truth of prompt i scored against prompt j (free: no new PNG).
    pair_rng = np.random.Generator(np.random.PCG64(1234))
    for _ in range(40):
        i, j = (int(k) for k in pair_rng.integers(0, len(prompts10), 2))
        if i != j:
            t2i_case(f"gt10_{i:02d}.png", prompts10[j], f"ground truth of {i} against prompt {j}")

    # Perturbed ground truth from eval_prompts(50, 0): blur, sparse noise, colour drift, 64 px.
    prompts50 = sw.eval_prompts(50, 0)
    perturb_rng = np.random.Generator(np.random.PCG64(99))
    for k, task in enumerate(sw.TASKS):
        for m, radius in enumerate((1, 2)):
            entry = prompts50[50 * k + 10 + m]
            image = sw.ground_truth_image(entry, 0, SIZE)
            name = w.add(f"blur{radius}_{entry['index']:03d}.png", box_blur(image, radius))
            t2i_case(name, entry, f"box blur radius {radius}")
        entry = prompts50[50 * k + 20]
        image = sw.ground_truth_image(entry, 0, SIZE).copy()
        speckle = perturb_rng.random(image.shape[:2]) < 0.02
        image[speckle] = perturb_rng.integers(0, 256, (int(speckle.sum()), 3))
        name = w.add(f"speckle_{entry['index']:03d}.png", image)
        t2i_case(name, entry, "2% random pixels")
    for k in (1, 4, 5):
        entry = prompts50[50 * k + 30]
        image = sw.ground_truth_image(entry, 0, SIZE).astype(np.int64)
        foreground = (image != np.array(sw.BACKGROUND)).any(-1)
        image[foreground] += np.array([38, -41, 29])
        name = w.add(f"drift_{entry['index']:03d}.png", np.clip(image, 0, 255))
        t2i_case(name, entry, "colour drift on objects")
    for k in range(6):
        entry = prompts50[50 * k + 40]
        name = w.add(f"gt64_{entry['index']:03d}.png", sw.ground_truth_image(entry, 0, 64))
        t2i_case(name, entry, "ground truth at 64 px")
    entry = prompts50[50 * 3 + 41]
    image = sw.ground_truth_image(entry, 0, 64).astype(np.int64)
    image += perturb_rng.integers(-12, 13, image.shape)
    name = w.add(f"noise64_{entry['index']:03d}.png", np.clip(image, 0, 255))
    t2i_case(name, entry, "64 px, uniform noise +-12")
    entry = prompts50[50 * 4 + 41]
    image = box_blur(sw.ground_truth_image(entry, 0, 64), 1)
    name = w.add(f"blur64_{entry['index']:03d}.png", image)
    t2i_case(name, entry, "64 px, box blur radius 1")

    # Hand-made scenes.
    def make(task, combination):
        prompt, clauses = sw.make_prompt(task, combination)
        return {"task": task, "prompt": prompt, "clauses": clauses}

    scenes = {
        "white_shapes.png": [obj("star", "white", 34, 40, 34), obj("circle", "white", 92, 38, 30),
                             obj("square", "black", 40, 96, 28), obj("cross", "white", 94, 94, 36)],
        "three_circles.png": [obj("circle", "red", 30, 30, 28), obj("circle", "blue", 96, 34, 32),
                              obj("circle", "green", 60, 96, 26)],
        "touching.png": [obj("square", "red", 40, 64, 30), obj("square", "red", 69, 64, 30),
                         obj("triangle", "yellow", 96, 24, 26)],
        "overlap_colors.png": [obj("circle", "red", 50, 60, 36), obj("circle", "orange", 72, 60, 36),
                               obj("star", "purple", 30, 104, 30)],
        "position_dead_zone.png": [obj("triangle", "green", 40, 64, 30), obj("star", "pink", 86, 48, 30)],
        "position_diagonal.png": [obj("cross", "brown", 36, 36, 30), obj("circle", "blue", 92, 92, 30)],
        "two_stars_colors.png": [obj("star", "red", 36, 64, 36), obj("star", "yellow", 92, 64, 30),
                                 obj("square", "white", 64, 24, 24)],
        "edge_objects.png": [obj("square", "blue", 10, 10, 24), obj("circle", "pink", 118, 64, 30),
                             obj("triangle", "orange", 64, 117, 26)],
    }
    for name, objects in scenes.items():
        w.add(name, sw.render(objects, SIZE))
    image = sw.render([obj("circle", "green", 90, 90, 30)], SIZE)
    image[20:28, 20:28] = sw.PALETTE["red"]  # 64 px: below 0.004 * 128^2 = 65.5
    image[40:49, 20:29] = sw.PALETTE["blue"]  # 81 px: a detection
    image[60:62, 10:60] = sw.PALETTE["black"]  # a line: too elongated
    image[100:120, 10:60] = sw.PALETTE["yellow"]  # a rectangle, aspect 2.5
    image[10:40, 60:110] = (100, 100, 100)  # no palette colour within the threshold
    image[20:30, 70:80] = (96, 160, 96)  # near green (distance ~67): unclassified
    w.add("specks_lines.png", image)
    image = sw.render([obj("square", "purple", 40, 40, 36), obj("cross", "orange", 90, 90, 36)], SIZE)
    image[22:58, 22:40] = sw.PALETTE["pink"]  # half pink, half purple: one component, mean colour
    w.add("two_tone.png", image)
    ring = sw.render([obj("circle", "black", 64, 64, 60)], SIZE)
    ring[sw.shape_mask(obj("circle", "black", 64, 64, 36), SIZE)] = sw.BACKGROUND
    w.add("ring.png", ring)

    hand = [
        ("white_shapes.png", make("colors", ("white", "star"))),
        ("white_shapes.png", make("colors", ("white", "square"))),
        ("white_shapes.png", make("color_attr", ("white", "circle", "black", "square"))),
        ("white_shapes.png", make("position", ("star", "above", "square"))),
        ("white_shapes.png", make("position", ("cross", "right of", "square"))),
        ("white_shapes.png", make("counting", (2, "star"))),
        ("three_circles.png", make("counting", (2, "circle"))),
        ("three_circles.png", make("counting", (3, "circle"))),
        ("three_circles.png", make("counting", (4, "circle"))),
        ("three_circles.png", make("colors", ("green", "circle"))),
        ("three_circles.png", make("colors", ("red", "circle"))),
        ("touching.png", make("two_object", ("square", "triangle"))),
        ("touching.png", make("single_object", ("triangle",))),
        ("overlap_colors.png", make("single_object", ("circle",))),
        ("overlap_colors.png", make("colors", ("purple", "star"))),
        ("position_dead_zone.png", make("position", ("triangle", "left of", "star"))),
        ("position_dead_zone.png", make("position", ("star", "above", "triangle"))),
        ("position_dead_zone.png", make("position", ("star", "right of", "triangle"))),
        ("position_diagonal.png", make("position", ("cross", "above", "circle"))),
        ("position_diagonal.png", make("position", ("cross", "left of", "circle"))),
        ("position_diagonal.png", make("position", ("circle", "below", "cross"))),
        ("two_stars_colors.png", make("colors", ("yellow", "star"))),
        ("two_stars_colors.png", make("color_attr", ("yellow", "star", "white", "square"))),
        ("two_stars_colors.png", make("color_attr", ("red", "star", "yellow", "star"))),
        ("two_stars_colors.png", make("position", ("square", "above", "star"))),
        ("edge_objects.png", make("two_object", ("square", "triangle"))),
        ("edge_objects.png", make("position", ("circle", "right of", "square"))),
        ("specks_lines.png", make("single_object", ("circle",))),
        ("specks_lines.png", make("single_object", ("square",))),
        ("specks_lines.png", make("counting", (2, "square"))),
        ("two_tone.png", make("colors", ("purple", "square"))),
        ("two_tone.png", make("colors", ("pink", "square"))),
        ("ring.png", make("single_object", ("circle",))),
    ]
    for name, entry in hand:
        t2i_case(name, entry, "hand-made")
    fixtures["t2i"] = t2i
    fixtures["t2i_ground_truth_cases"] = n_ground_truth
    fixtures["t2i_scores"] = {
        "all": se.score_t2i([(c["task"], c["correct"]) for c in t2i]),
        "ground_truth": se.score_t2i([(c["task"], c["correct"]) for c in t2i[:n_ground_truth]]),
        "single_object_only": se.score_t2i([(c["task"], c["correct"]) for c in t2i if c["task"] == "single_object"]),
    }

    # --- understanding -----------------------------------------------------------------------
    understanding = []
    for k, kind in enumerate(sw.QUESTION_TYPES):
        for i in range(3):
            sample = sw.understanding_sample(k * 50 + i, 0, SIZE, kind)
            name = w.add(f"und_{kind}_{i}.png", sample.image)
            understanding.append({"image": name, "question": sample.question, "truth": sample.answer})
    for name in ["white_shapes.png", "three_circles.png", "touching.png", "specks_lines.png", "ring.png",
                 "gt10_25.png", "gt10_45.png", "blur2_111.png", "speckle_020.png"]:  # fmt: skip
        for question in ["what shape is this?", "how many circles are there?", "how many squares are there?",
                         "what color is the star?", "where is the circle?", "where is the square?",
                         "what color is the triangle?", "how many stars are there?", "where is the cross?"]:  # fmt: skip
            understanding.append({"image": name, "question": question, "truth": None})
    for case in understanding:
        case["answer"] = se.answer_question(w.arrays[case["image"]], case["question"])
    fixtures["understanding"] = understanding

    questions = ["what shape is this?", "what color is the circle?", "how many stars are there?",
                 "where is the cross?", "what color is the blob?", "how many circless are there?",
                 "where is the square", "what shape is this", "What shape is this?", "how many  stars are there?",
                 "where is the triangle? ", "what color is the circle red?", "how many crosss are there?", ""]  # fmt: skip
    parsed = []
    for question in questions:
        try:
            kind, shape = se.question_type(question)
            parsed.append({"question": question, "type": kind, "shape": shape})
        except ValueError:
            parsed.append({"question": question, "error": True})
    fixtures["question_types"] = parsed

    instructions = ["make the circle red", "make the star white", "remove the cross", "add a blue square",
                    "add an orange triangle", "add an blue square", "add a orange triangle", "move the star to the left",
                    "move the square to the bottom", "move the square to the center", "make the blob red",
                    "make the circle teal", "make the circle  red", "remove the circle please", "add a red circle ",
                    "Remove the cross", "add  a red circle", "move the circle to the  top", "add a red", ""]  # fmt: skip
    parsed = []
    for instruction in instructions:
        try:
            parsed.append({"instruction": instruction, "parsed": se.parse_instruction(instruction)})
        except ValueError:
            parsed.append({"instruction": instruction, "error": True})
    fixtures["instructions"] = parsed

    # --- editing -----------------------------------------------------------------------------
    edits = []
    samples = []
    for k, kind in enumerate(sw.EDIT_TYPES):
        for i in range(2):
            sample = sw.edit_sample(k * 50 + i, 0, SIZE, kind)
            before = w.add(f"edit_{kind}_{i}_before.png", sample.image)
            after = w.add(f"edit_{kind}_{i}_after.png", sample.edited_image)
            samples.append((before, sample.instruction, after))
            edits.append({"before": before, "instruction": sample.instruction, "after": after, "note": "ground truth"})
    for before, instruction, after in samples:
        edits.append({"before": before, "instruction": instruction, "after": before, "note": "no change"})
    for m, (before, instruction, _) in enumerate(samples):
        other = samples[(m + 3) % len(samples)][2]
        edits.append({"before": before, "instruction": instruction, "after": other, "note": "another edit's result"})
    # Hand-made edits: wrong colour, wrong direction, an extra object, a resized object.
    base = [obj("circle", "red", 36, 36, 30), obj("square", "blue", 92, 40, 28), obj("star", "green", 60, 96, 32)]
    variants = {
        "hand_before.png": base,
        "hand_recolor_ok.png": [base[0], obj("square", "yellow", 92, 40, 28), base[2]],
        "hand_recolor_wrong.png": [base[0], obj("square", "orange", 92, 40, 28), base[2]],
        "hand_move_left.png": [obj("circle", "red", 36, 36, 30), base[1], obj("star", "green", 22, 80, 32)],
        "hand_moved_other.png": [obj("circle", "red", 40, 40, 30), base[1], base[2]],
        "hand_add_extra.png": base + [obj("cross", "pink", 100, 100, 24), obj("triangle", "black", 100, 74, 20)],
        "hand_add_ok.png": base + [obj("cross", "pink", 100, 100, 24)],
        "hand_resized.png": [obj("circle", "red", 36, 36, 40), base[1], base[2]],
    }
    for name, objects in variants.items():
        w.add(name, sw.render(objects, SIZE))
    for instruction, after in [
        ("make the square yellow", "hand_recolor_ok.png"), ("make the square yellow", "hand_recolor_wrong.png"),
        ("make the square orange", "hand_recolor_wrong.png"), ("move the star to the left", "hand_move_left.png"),
        ("move the star to the bottom", "hand_move_left.png"), ("move the circle to the top", "hand_moved_other.png"),
        ("add a pink cross", "hand_add_extra.png"), ("add a pink cross", "hand_add_ok.png"),
        ("add a red cross", "hand_add_ok.png"), ("add a pink circle", "hand_add_ok.png"),
        ("remove the triangle", "hand_before.png"), ("remove the circle", "hand_resized.png"),
        ("make the circle red", "hand_resized.png"), ("make the circle blue", "hand_recolor_ok.png"),
    ]:  # fmt: skip
        edits.append({"before": "hand_before.png", "instruction": instruction, "after": after, "note": "hand-made"})
    for case in edits:
        ok, reason = se.edit_success(w.arrays[case["before"]], case["instruction"], w.arrays[case["after"]])
        case["success"], case["reason"] = bool(ok), reason
    fixtures["edits"] = edits

    fixtures["images"] = w.images
    (OUT / "fixtures.json").write_text(json.dumps(fixtures, indent=None, separators=(",", ":")) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(w.images)} images, {len(t2i)} t2i, {len(understanding)} understanding, "
          f"{len(edits)} edit cases to {OUT} ({total / 1024:.0f} KiB)")  # fmt: skip
    print("ground truth t2i:", fixtures["t2i_scores"]["ground_truth"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
