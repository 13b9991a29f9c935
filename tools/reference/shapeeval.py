"""ShapeEval: rule-based scorer for ShapeWorld images (see /work/shared/docs/SHAPEWORLD.md).

A small analogue of GenEval (djghosh13/geneval): a detector made of rules instead of a
Mask2Former, and GenEval's clause logic on top of it.

Images may be non-square (height x width x 3); the canvas is read from the image's shape, and
wherever an image_size is taken it is an int n (n x n) or a (height, width) pair, as in
shapeworld.py. The noise area and the edit centre tolerance are fractions of the short side, as
object sizes are; the "where" rule normalises each axis by its own length. The geometric
classifier needs a short side of 48 px or more (objects of 9 px and up; every training canvas
has one). At 48 px it reads ground truth but for ~0.5% of circles, whose 8-11 px
rasterisations can fill their box corners like squares. On square canvases the detector
finds exactly what it found before non-square canvases existed; edit verdicts differ only
where EDIT_SIZE_TOLERANCE_PX decides (box sides under 15 px, so never on 128 px canvases).

  python tools/reference/shapeeval.py --selftest --n 50            # ground truth must score ~1.0
  python tools/reference/shapeeval.py --selftest --n 20 --size 48x96   # height x width
  python tools/reference/shapeeval.py --write-prompts prompts.json --n 50
  python tools/reference/shapeeval.py --images DIR --prompts prompts.json [--out scores.json]

For --images, DIR holds one PNG per prompt, named by the prompt's index: 00017.png or 17.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np

import shapeworld as sw

# A pixel belongs to its nearest reference colour (background or palette) if it lies within
# this RGB distance of it, else to nothing. Half the palette's smallest spacing is 53; a bit
# more tolerates a generator's colour drift, and the nearest colour still decides.
PIXEL_DISTANCE_THRESHOLD = 60.0
# Components smaller than this fraction of the short side squared are noise: the smallest
# object (a 0.19-size star) covers ~0.013 of it (the whole image, on a square canvas).
MIN_AREA_FRACTION = 0.004
# GenEval's POSITION_THRESHOLD: the dead zone is this times the sum of the two sizes.
POSITION_THRESHOLD = 0.1
# Editing: an object is "unchanged" if shape and colour are equal, its box centre moved by at
# most this fraction of the image's short side and its box side changed by at most this ratio
# or by at most EDIT_SIZE_TOLERANCE_PX, whichever allows more (a relative and an absolute
# tolerance, as in numpy's isclose). The absolute one is the rasteriser's own spread: the box
# side of one and the same object varies by up to 3 px with its quarter-pixel phase alone (a
# star's or triangle's tips fall between pixel centres), on any canvas. It decides only for box
# sides under 15 px (0.2 x 15 = 3), i.e. on canvases with a short side under 79 px; there a
# 9-12 px star drawn twice can measure 8 and 11 px.
EDIT_CENTER_TOLERANCE = 0.03
EDIT_SIZE_TOLERANCE = 0.2
EDIT_SIZE_TOLERANCE_PX = 3

_REFERENCE_COLORS = np.array([sw.BACKGROUND] + [sw.PALETTE[c] for c in sw.COLORS], dtype=np.float64)
_PALETTE_ARRAY = _REFERENCE_COLORS[1:]


@dataclasses.dataclass
class Detection:
    """One connected component. Box edges are pixel-edge coordinates, x1/y1 exclusive."""

    shape: str | None  # None: not recognisable as any of the five shapes
    color: str
    area: int
    x0: int
    y0: int
    x1: int
    y1: int
    fill: float  # area / box area
    solidity: float  # area / convex hull area
    symmetry: float  # IoU of the mask with its up-down mirror inside the box
    corners: float  # filled fraction of the box's four corner cells, each 1/4 x 1/4 of it

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def center(self) -> tuple:
        """Box centre, as GenEval uses."""
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


# ---------------------------------------------------------------------------------------------
# Detector


def classify_pixels(image: np.ndarray) -> np.ndarray:
    """Per pixel: palette index 0..9, -1 for background, -2 for no colour within the threshold."""
    pixels = image[..., :3].astype(np.float64)
    distances = np.sqrt(((pixels[:, :, None, :] - _REFERENCE_COLORS) ** 2).sum(-1))
    nearest = distances.argmin(-1)
    labels = nearest - 1
    labels[distances.min(-1) > PIXEL_DISTANCE_THRESHOLD] = -2
    return labels


def connected_components(mask: np.ndarray) -> np.ndarray:
    """8-connected components: each pixel of the mask gets the smallest flat index of its
    component, other pixels get mask.size. Min-propagation plus pointer jumping, numpy only."""
    height, width = mask.shape
    outside = mask.size
    labels = np.where(mask, np.arange(mask.size).reshape(height, width), outside)
    while True:
        padded = np.pad(labels, 1, constant_values=outside)
        windows = [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
        updated = np.where(mask, np.minimum.reduce(windows), outside)
        flat = np.append(updated.ravel(), outside)
        updated = flat[updated]  # pointer jumping: adopt the label of my label's pixel
        if np.array_equal(updated, labels):
            return labels
        labels = updated


def _convex_hull_area(points: np.ndarray) -> float:
    """Andrew's monotone chain, then the shoelace formula."""
    points = sorted(set(map(tuple, points.tolist())))
    if len(points) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in points:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(points):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    return 0.5 * abs(sum(hull[i - 1][0] * hull[i][1] - hull[i][0] * hull[i - 1][1] for i in range(len(hull))))


def _pixel_hull_area(ys: np.ndarray, xs: np.ndarray) -> float:
    """Hull of the pixel squares (not their centres), from each row's outer corners."""
    order = np.argsort(ys, kind="stable")
    ys, xs = ys[order], xs[order]
    rows, starts = np.unique(ys, return_index=True)
    left = np.minimum.reduceat(xs, starts)
    right = np.maximum.reduceat(xs, starts) + 1
    corners = np.concatenate([np.stack([x, y], 1) for x in (left, right) for y in (rows, rows + 1)])
    return _convex_hull_area(corners)


def _corner_fill(box: np.ndarray) -> float:
    """Squares fill their box's corners, circles leave them half empty, crosses empty."""
    height, width = box.shape
    ch, cw = max(1, round(height / 4)), max(1, round(width / 4))
    cells = [box[:ch, :cw], box[:ch, -cw:], box[-ch:, :cw], box[-ch:, -cw:]]
    return float(np.mean([cell.mean() for cell in cells]))


def classify_shape(fill: float, solidity: float, symmetry: float, corners: float, aspect: float) -> str | None:
    """Shape from geometry. Measured on ground truth at 64 and 128 px (fill / solidity / up-down
    symmetry / corners): circle .66-.88/.89-.97/.85-1/.11-.50, square 1/1/1/1,
    triangle .50-.58/.87-.95/.33-.41/.38-.44, star .37-.56/.51-.73/.40-.53/0-.19,
    cross .49-.62/.66-.77/.80-1/0. Thresholds sit in the gaps. Corners rather than fill split
    square from circle because they survive blur (blurred squares drop to fill .74 at 64 px).
    """
    if not 0.6 <= aspect <= 1 / 0.6 or fill < 0.25:
        return None  # elongated or sparse: none of the five shapes
    if symmetry >= 0.68:  # mirror-symmetric top to bottom
        if solidity < 0.83:
            return "cross"
        return "square" if corners >= 0.65 else "circle"
    return "triangle" if solidity >= 0.80 else "star"


def detect(image: np.ndarray) -> list:
    """All components above the minimum area, largest first (a stand-in for confidence).
    The canvas is the image's height x width; the minimum area is a fraction of its short side."""
    labels = classify_pixels(image)
    foreground = labels >= 0
    components = connected_components(foreground)
    ids, counts = np.unique(components[foreground], return_counts=True)
    short = min(foreground.shape)
    min_area = MIN_AREA_FRACTION * (short * short)
    detections = []
    for component, area in zip(ids, counts):
        if area < min_area:
            continue
        member = components == component
        ys, xs = np.nonzero(member)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        box = member[y0:y1, x0:x1]
        mirrored = box[::-1]
        symmetry = float((box & mirrored).sum() / (box | mirrored).sum())
        fill = area / box.size
        corners = _corner_fill(box)
        solidity = area / _pixel_hull_area(ys, xs)
        mean = image[..., :3][member].astype(np.float64).mean(0)
        color = sw.COLORS[int(((_PALETTE_ARRAY - mean) ** 2).sum(1).argmin())]
        shape = classify_shape(fill, solidity, symmetry, corners, (x1 - x0) / (y1 - y0))
        detections.append(Detection(shape, color, int(area), x0, y0, x1, y1, fill, solidity, symmetry, corners))
    detections.sort(key=lambda d: -d.area)
    return detections


def _by_shape(detections: list) -> dict:
    found = {}
    for d in detections:
        if d.shape is not None:
            found.setdefault(d.shape, []).append(d)
    return found


# ---------------------------------------------------------------------------------------------
# GenEval clause logic


def relative_position(a: Detection, b: Detection) -> set:
    """Relations of A to B, GenEval's rule (evaluation/evaluate_images.py, relative_position).

    Centres are box centres; the size of an object along an axis is its box extent along that
    axis in pixels (width for left/right, height for above/below). Per axis, the offset
    A - B shrinks towards zero by the dead zone 0.1 * (size_A + size_B). If both shrunken
    offsets are < 1e-3 px there is no relation; otherwise a relation holds when its shrunken
    offset, divided by the length of the raw offset vector, exceeds 0.5 in its direction
    (x grows right, y grows down).
    """
    (ax, ay), (bx, by) = a.center, b.center
    offset = np.array([ax - bx, ay - by])
    dead_zone = POSITION_THRESHOLD * np.array([a.width + b.width, a.height + b.height])
    revised = np.maximum(np.abs(offset) - dead_zone, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def evaluate_clauses(detections: list, clauses: dict) -> tuple:
    """(correct, reasons): GenEval's `evaluate` with detections ordered by area.

    A group {"class", "count", "color"} matches when at least `count` objects of the class
    (with that colour, if named) are present; its objects are the largest `count` of those.
    A "position" [relation, target group] must hold from every object of the group to every
    object of the target group. An exclude {"class", "count"} fails on `count` or more.
    """
    found = _by_shape(detections)
    reasons = []
    matched_groups = []
    for group in clauses.get("include", []):
        candidates = found.get(group["class"], [])
        if len(candidates) < group["count"]:
            reasons.append(f"expected {group['class']}>={group['count']}, found {len(candidates)}")
            matched_groups.append(None)
            continue
        if "color" in group:
            candidates = [d for d in candidates if d.color == group["color"]]
            if len(candidates) < group["count"]:
                reasons.append(f"expected {group['color']} {group['class']}>={group['count']}, found {len(candidates)}")
                matched_groups.append(None)
                continue
        objects = candidates[: group["count"]]
        if "position" in group:
            relation, target_group = group["position"]
            targets = matched_groups[target_group]
            if targets is None:
                reasons.append(f"no target for {group['class']} to be {relation}")
                matched_groups.append(None)
                continue
            failed = [(o, t) for o in objects for t in targets if relation not in relative_position(o, t)]
            if failed:
                o, t = failed[0]
                reasons.append(f"expected {group['class']} {relation} target, found {sorted(relative_position(o, t))}")
                matched_groups.append(None)
                continue
        matched_groups.append(objects)
    for group in clauses.get("exclude", []):
        present = len(found.get(group["class"], []))
        if present >= group["count"]:
            reasons.append(f"expected {group['class']}<{group['count']}, found {present}")
    return not reasons, reasons


def score_t2i(results: list) -> dict:
    """results: (task, correct) pairs. Task score = fraction correct; overall = mean of six."""
    scores = {}
    for task in sw.TASKS:
        outcomes = [correct for t, correct in results if t == task]
        scores[task] = sum(outcomes) / len(outcomes) if outcomes else 0.0
    scores["overall"] = sum(scores[t] for t in sw.TASKS) / len(sw.TASKS)
    return scores


# ---------------------------------------------------------------------------------------------
# Understanding


def question_type(question: str) -> tuple:
    """(type, shape) of one of the four ShapeWorld question templates."""
    if question == "what shape is this?":
        return "shape", None
    patterns = {
        "color": r"what color is the (\w+)\?",
        "count": r"how many (\w+) are there\?",
        "where": r"where is the (\w+)\?",
    }  # fmt: skip
    singular = {sw.plural(s): s for s in sw.SHAPES}
    for kind, pattern in patterns.items():
        match = re.fullmatch(pattern, question)
        shape = match and (singular.get(match.group(1)) if kind == "count" else match.group(1))
        if shape in sw.SHAPES:
            return kind, shape
    raise ValueError(f"not a ShapeWorld question: {question!r}")


def answer_question(image: np.ndarray, question: str) -> str:
    """The detector's answer; "unknown" when the image does not support one."""
    kind, shape = question_type(question)
    detections = detect(image)
    if kind == "shape":
        recognised = [d for d in detections if d.shape is not None]
        return recognised[0].shape if recognised else "unknown"
    matches = _by_shape(detections).get(shape, [])
    if kind == "count":
        return sw.NUMBER_WORDS.get(len(matches), str(len(matches)))
    if not matches:
        return "unknown"
    if kind == "color":
        return matches[0].color
    return sw.region_of_point(*matches[0].center, image.shape[:2])


# ---------------------------------------------------------------------------------------------
# Editing


def parse_instruction(instruction: str) -> dict:
    patterns = {
        "recolor": r"make the (?P<shape>\w+) (?P<color>\w+)",
        "remove": r"remove the (?P<shape>\w+)",
        "add": r"add an? (?P<color>\w+) (?P<shape>\w+)",
        "move": r"move the (?P<shape>\w+) to the (?P<direction>left|right|top|bottom)",
    }  # fmt: skip
    for kind, pattern in patterns.items():
        match = re.fullmatch(pattern, instruction)
        if not match:
            continue
        edit = {"type": kind, **match.groupdict()}
        if edit["shape"] in sw.SHAPES and edit.get("color", sw.COLORS[0]) in sw.COLORS:
            return edit
    raise ValueError(f"not a ShapeWorld instruction: {instruction!r}")


def _same_place(a: Detection, b: Detection, image_size: int | tuple) -> bool:
    (ax, ay), (bx, by) = a.center, b.center
    near = max(abs(ax - bx), abs(ay - by)) <= EDIT_CENTER_TOLERANCE * sw.short_side(image_size)
    return near and _same_size(a, b)


def _same_size(a: Detection, b: Detection) -> bool:
    """Box sides (the larger of width and height) within EDIT_SIZE_TOLERANCE_PX or within
    EDIT_SIZE_TOLERANCE (ratio) of each other."""
    side_a, side_b = max(a.width, a.height), max(b.width, b.height)
    return abs(side_a - side_b) <= EDIT_SIZE_TOLERANCE_PX or abs(side_a / side_b - 1) <= EDIT_SIZE_TOLERANCE


def edit_success(before: np.ndarray, instruction: str, after: np.ndarray) -> tuple:
    """(success, reason): the instruction's clauses hold in `after` and every other object of
    `before` is unchanged (same shape, colour, place and size), with nothing else added."""
    edit = parse_instruction(instruction)
    image_size = before.shape[:2]
    old = [d for d in detect(before) if d.shape is not None]
    new = [d for d in detect(after) if d.shape is not None]
    target = None
    if edit["type"] != "add":
        targets = [d for d in old if d.shape == edit["shape"]]
        if not targets:
            return False, f"no {edit['shape']} in the source image"
        target = targets[0]
    unmatched = list(new)
    for d in old:
        if d is target:
            continue
        twins = [n for n in unmatched if (n.shape, n.color) == (d.shape, d.color) and _same_place(n, d, image_size)]
        if not twins:
            return False, f"the {d.color} {d.shape} changed"
        unmatched.remove(twins[0])
    expected = 0 if edit["type"] == "remove" else 1
    if len(unmatched) != expected:
        return False, f"expected {expected} changed object(s), found {len(unmatched)}"
    if expected == 0:
        return True, ""
    (changed,) = unmatched
    if changed.shape != edit["shape"]:
        return False, f"changed object is a {changed.shape}"
    if edit["type"] == "recolor":
        ok = changed.color == edit["color"] and _same_place(changed, target, image_size)
    elif edit["type"] == "add":
        ok = changed.color == edit["color"]
    else:  # move
        region = sw.region_of_point(*changed.center, image_size)
        ok = changed.color == target.color and _same_size(changed, target) and region == edit["direction"]
    return ok, "" if ok else f"the {edit['shape']} is not as instructed"


# ---------------------------------------------------------------------------------------------
# Command line


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def load_prompts(path: Path) -> list:
    """A JSON list of eval_prompts() entries, or the same as JSON lines."""
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def score_directory(image_dir: Path, prompts: list) -> tuple:
    """(scores, per-prompt records). A missing image counts as incorrect."""
    results, records = [], []
    for entry in prompts:
        candidates = [Path(image_dir) / f"{entry['index']:05d}.png", Path(image_dir) / f"{entry['index']}.png"]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            correct, reasons = False, ["missing image"]
        else:
            correct, reasons = evaluate_clauses(detect(_load_image(path)), entry["clauses"])
        results.append((entry["task"], correct))
        records.append({**entry, "correct": correct, "reasons": reasons})
    return score_t2i(results), records


def selftest(n: int, image_size: int | tuple, seed: int) -> dict:
    """Detector on ground truth: t2i prompt set, understanding answers, ground-truth edits."""
    results = []
    for entry in sw.eval_prompts(n, seed):
        correct, _ = evaluate_clauses(detect(sw.ground_truth_image(entry, seed, image_size)), entry["clauses"])
        results.append((entry["task"], correct))
    report = {"t2i": score_t2i(results), "understanding": {}, "editing": {}}
    for k, kind in enumerate(sw.QUESTION_TYPES):
        samples = [sw.understanding_sample(k * n + i, seed, image_size, kind) for i in range(n)]
        right = [answer_question(s.image, s.question) == s.answer for s in samples]
        report["understanding"][kind] = sum(right) / n
    for k, kind in enumerate(sw.EDIT_TYPES):
        samples = [sw.edit_sample(k * n + i, seed, image_size, kind) for i in range(n)]
        right = [edit_success(s.image, s.instruction, s.edited_image)[0] for s in samples]
        report["editing"][kind] = sum(right) / n
    return report


def _print_scores(scores: dict) -> None:
    for name, value in scores.items():
        print(f"  {name:<14} {value:.3f}")


def parse_size(text: str) -> int | tuple:
    """--size: "64" for 64 x 64, "48x96" for height 48 and width 96."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0])
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    raise argparse.ArgumentTypeError(f"not a size: {text!r} (use 64 or HxW, e.g. 48x96)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--selftest", action="store_true", help="score ground truth")
    parser.add_argument("--n", type=int, default=50, help="prompts (and samples) per task")
    parser.add_argument("--size", type=parse_size, default=sw.DEFAULT_IMAGE_SIZE,
                        help="canvas for --selftest: side (64) or height x width (48x96)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-prompts", type=Path, help="write the evaluation prompt set as JSON")
    parser.add_argument("--images", type=Path, help="directory of PNGs named by prompt index")
    parser.add_argument("--prompts", type=Path, help="prompt JSON for --images")
    parser.add_argument("--out", type=Path, help="write scores and per-prompt results as JSON")
    args = parser.parse_args(argv)

    if args.write_prompts:
        args.write_prompts.write_text(json.dumps(sw.eval_prompts(args.n, args.seed), indent=1))
        print(f"wrote {6 * args.n} prompts to {args.write_prompts}")
    if args.images:
        prompts = load_prompts(args.prompts) if args.prompts else sw.eval_prompts(args.n, args.seed)
        scores, records = score_directory(args.images, prompts)
        print(f"ShapeEval on {args.images} ({len(prompts)} prompts)")
        _print_scores(scores)
        if args.out:
            args.out.write_text(json.dumps({"scores": scores, "results": records}, indent=1))
    if args.selftest:
        report = selftest(args.n, args.size, args.seed)
        height, width = sw.canvas_size(args.size)
        canvas = f"{height} px" if height == width else f"{height}x{width} px"
        print(f"ShapeEval on ground truth (n={args.n} per task, {canvas}, seed {args.seed})")
        _print_scores(report["t2i"])
        print("understanding (detector answers vs ground truth)")
        _print_scores(report["understanding"])
        print("editing (success on ground-truth edits)")
        _print_scores(report["editing"])
        if args.out:
            args.out.write_text(json.dumps(report, indent=1))
        return 0 if report["t2i"]["overall"] >= 0.99 else 1
    if not (args.write_prompts or args.images):
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
