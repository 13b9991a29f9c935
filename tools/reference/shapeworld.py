"""ShapeWorld: the synthetic world of /work/shared/docs/SHAPEWORLD.md.

Flat-filled shapes (circle, square, triangle, star, cross) in GenEval's ten colours on a flat
light-grey canvas. Every sample is a pure function of (seed, kind, index): its numpy Generator
is seeded from those three numbers only, so sample i is the same on any machine and does not
depend on which samples were drawn before it.

Canvases may be non-square. Wherever an `image_size` is taken it is either an int n (an n x n
canvas) or a (height, width) pair; images are height x width x 3 arrays. Lengths (object size,
border, gap) are fractions of the short side min(height, width); x runs over the width, y over
the height; the "where" rule uses each axis normalised by its own length. A square canvas gives
exactly the samples (bytes, captions, random draws) it gave before non-square canvases existed.
ASPECT_SIZES lists the canvases used for training and size_for(index, seed) picks one per
sample from a random stream of its own, so choosing sizes leaves every other stream untouched.

Determinism across machines: randomness comes only from PCG64 raw doubles (`rng.random()`,
whose stream numpy keeps stable), coordinates are quantised to 1/4 px, and the rasteriser
uses only + - * / and comparisons (IEEE-exact everywhere); star vertices use sqrt-based
closed forms instead of sin/cos, whose last bit differs between libms.

Kinds of sample:
  t2i_sample            (image, caption) for GenEval's six tasks
  understanding_sample  (image, question, answer) for four question types
  edit_sample           (image, instruction, edited image) for four instruction types
  eval_prompts          the fixed seeded evaluation prompt set with GenEval-style clauses
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Far apart in RGB (smallest pairwise distance 106, between orange/yellow and red/brown;
# white and pink are 109 and 112 from the background), so nearest-colour classification
# has a wide margin.
PALETTE = {
    "red": (215, 20, 30),
    "orange": (255, 125, 0),
    "yellow": (250, 230, 10),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (135, 40, 185),
    "pink": (255, 100, 190),
    "brown": (125, 75, 25),
    "black": (20, 20, 20),
    "white": (255, 255, 255),
}
BACKGROUND = (192, 192, 192)
COLORS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "star", "cross")
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
REGIONS = ("left", "right", "top", "bottom", "center")
QUESTION_TYPES = ("shape", "color", "count", "where")
EDIT_TYPES = ("recolor", "remove", "add", "move")

DEFAULT_IMAGE_SIZE = 128
MAX_OBJECTS = 4

# Training canvases, (height, width) in px: 1:1 at two sizes, and 1:2 and 2:1 at about the pixel
# count of 64 x 64 (4608 vs 4096), i.e. token grids of 8x8, 6x6, 6x12 and 12x6 at 8 px per token.
# Every short side is >= 48 px, so the smallest object is >= 9 px across and ShapeEval's
# geometric classifier serves all of them. size_for() draws one per sample index, uniformly.
ASPECT_SIZES = ((64, 64), (48, 48), (48, 96), (96, 48))

# Geometry, as fractions of the canvas's short side min(height, width). An object of size s is
# inscribed in an s x s box (its bounding box, up to the star's 0.95 s height); 0.19..0.30 keeps
# a star's arms >= 2 px wide at 64 px and leaves room for four objects.
MIN_SIZE = 0.19
MAX_SIZE = 0.30
BORDER = 0.04  # empty margin between any box and the image edge
GAP = 0.04  # empty margin between any two boxes: shapes never touch or overlap
STAR_INNER_RATIO = 0.45  # inner / outer radius; solidity ~0.56, far from the cross's 0.71
CROSS_ARM = 1 / 3  # arm thickness / size

# "where is the X?" rule, on the box centre in units of each axis's own length, u = cx / width
# - 0.5 and v = cy / height - 0.5 in [-0.5, 0.5] (v grows downwards): center if
# max(|u|, |v|) < CENTER_ZONE, else the dominant axis decides.
CENTER_ZONE = 0.15
# Generated answers keep clear of the rule's boundaries so that a detector off by a pixel or
# two still agrees: center within 0.05; other regions at |u| >= 0.22 with |v| <= 0.5 |u|.
_CENTER_PLACEMENT = 0.05
_SIDE_PLACEMENT = 0.22
# A "position" pair is placed with perpendicular offset <= 0.3 x the offset along the axis, so
# GenEval's direction test (> 0.5 after the dead zone) holds with margin.
_RELATION_SLOPE = 0.3

_STREAMS = {"t2i": 1, "understanding": 2, "edit": 3, "eval_prompts": 4, "eval_ground_truth": 5, "aspect": 6}


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One object: centre (cx, cy) and size in pixels; its box is size x size around the centre.
    x runs over the canvas width, y down its height."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    def moved(self, cx: float, cy: float) -> ShapeObject:
        return dataclasses.replace(self, cx=cx, cy=cy)


@dataclasses.dataclass
class T2ISample:
    task: str
    caption: str
    clauses: dict
    objects: list
    image: np.ndarray


@dataclasses.dataclass
class UnderstandingSample:
    question_type: str
    question: str
    answer: str
    objects: list
    image: np.ndarray


@dataclasses.dataclass
class EditSample:
    edit_type: str
    instruction: str
    objects: list
    edited_objects: list
    image: np.ndarray
    edited_image: np.ndarray


# ---------------------------------------------------------------------------------------------
# Randomness


def sample_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    """The Generator of sample `index` of `kind`: independent of every other sample."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _STREAMS[kind], index])))


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(rng.random())


def _choice(rng: np.random.Generator, options):
    options = list(options)
    return options[min(int(rng.random() * len(options)), len(options) - 1)]


def _shuffled(rng: np.random.Generator, items: list) -> list:
    order = np.argsort(rng.random(len(items)), kind="stable")
    return [items[i] for i in order]


def _quantise(x: float) -> float:
    """Quarter-pixel grid: exact in binary floating point."""
    return round(x * 4) / 4


# ---------------------------------------------------------------------------------------------
# Canvases


def canvas_size(image_size: int | tuple) -> tuple:
    """(height, width) of a canvas given as an int n (n x n) or as a (height, width) pair."""
    if isinstance(image_size, (tuple, list)):
        height, width = image_size
    else:
        height = width = image_size
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f"bad canvas size {image_size!r}")
    return height, width


def short_side(image_size: int | tuple) -> int:
    """min(height, width): the unit of object size, border and gap."""
    return min(canvas_size(image_size))


def size_for(index: int, seed: int = 0, sizes=ASPECT_SIZES) -> tuple:
    """The (height, width) canvas of training sample `index`, uniform over `sizes`.

    Drawn from its own stream ("aspect"), so a data loader can do
    t2i_sample(i, seed, size_for(i, seed)) and sample i's content stream is the one it always was.
    """
    return canvas_size(_choice(sample_rng(seed, "aspect", index), sizes))


# ---------------------------------------------------------------------------------------------
# Rendering

_SQRT5 = math.sqrt(5.0)
_COS36 = (1 + _SQRT5) / 4
_SIN36 = math.sqrt(10 - 2 * _SQRT5) / 4
_COS72 = (_SQRT5 - 1) / 4
_SIN72 = math.sqrt(10 + 2 * _SQRT5) / 4
# Unit pentagram, point up (y down): outer vertex, inner vertex, ... clockwise from the top.
_STAR_OUTER = [(0.0, -1.0), (_SIN72, -_COS72), (_SIN36, _COS36), (-_SIN36, _COS36), (-_SIN72, -_COS72)]
_STAR_INNER = [(_SIN36, -_COS36), (_SIN72, _COS72), (0.0, 1.0), (-_SIN72, _COS72), (-_SIN36, -_COS36)]


def _polygon(obj: ShapeObject) -> list:
    half = obj.size / 2
    cx, cy = obj.cx, obj.cy
    if obj.shape == "square":
        return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if obj.shape == "triangle":  # upright isosceles, base = height = size
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if obj.shape == "cross":  # plus sign
        a = obj.size * CROSS_ARM / 2
        return [
            (cx - a, cy - half), (cx + a, cy - half), (cx + a, cy - a), (cx + half, cy - a),
            (cx + half, cy + a), (cx + a, cy + a), (cx + a, cy + half), (cx - a, cy + half),
            (cx - a, cy + a), (cx - half, cy + a), (cx - half, cy - a), (cx - a, cy - a),
        ]  # fmt: skip
    if obj.shape == "star":
        # Width 2 R sin72 = size; the star is shifted so that its bounding box is centred.
        outer = obj.size / (2 * _SIN72)
        inner = outer * STAR_INNER_RATIO
        centre_y = cy + outer * (1 - _COS36) / 2
        points = []
        for (ox, oy), (ix, iy) in zip(_STAR_OUTER, _STAR_INNER):
            points.append((cx + outer * ox, centre_y + outer * oy))
            points.append((cx + inner * ix, centre_y + inner * iy))
        return points
    raise ValueError(f"no polygon for shape {obj.shape!r}")


def _fill_polygon(mask: np.ndarray, vertices: list, xs: np.ndarray, ys: np.ndarray) -> None:
    """Even-odd rule on pixel centres, in place."""
    inside = np.zeros(mask.shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(vertices, vertices[1:] + vertices[:1]):
        if y1 == y2:
            continue
        spans_row = (y1 > ys) != (y2 > ys)
        x_cross = x1 + (ys - y1) * (x2 - x1) / (y2 - y1)
        inside ^= spans_row & (xs < x_cross)
    mask |= inside


def shape_mask(obj: ShapeObject, image_size: int | tuple) -> np.ndarray:
    """Boolean height x width mask of the pixels whose centres lie inside the shape."""
    height, width = canvas_size(image_size)
    xs = np.arange(width, dtype=np.float64)[None, :] + 0.5
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5
    mask = np.zeros((height, width), dtype=bool)
    if obj.shape == "circle":
        radius = obj.size / 2
        mask |= (xs - obj.cx) ** 2 + (ys - obj.cy) ** 2 <= radius * radius
    else:
        _fill_polygon(mask, _polygon(obj), xs, ys)
    return mask


def render(objects: list, image_size: int | tuple = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """uint8 RGB image, height x width x 3 (image_size: int n for n x n, or (height, width))."""
    image = np.empty(canvas_size(image_size) + (3,), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj in objects:
        image[shape_mask(obj, image_size)] = PALETTE[obj.color]
    return image


# ---------------------------------------------------------------------------------------------
# Placement


def region_of_point(cx: float, cy: float, image_size: int | tuple) -> str:
    """Answer to "where is the X?" for an object whose box centre is (cx, cy).

    Each axis is normalised by its own length: on a 48 x 96 (height x width) canvas, cx = 24 (a
    quarter of the width) is as far left as cy = 12 (a quarter of the height) is up.
    """
    height, width = canvas_size(image_size)
    u = cx / width - 0.5
    v = cy / height - 0.5
    if max(abs(u), abs(v)) < CENTER_ZONE:
        return "center"
    if abs(u) >= abs(v):
        return "left" if u < 0 else "right"
    return "top" if v < 0 else "bottom"


def _boxes_apart(a: ShapeObject, b: ShapeObject, gap: float) -> bool:
    """Boxes separated by at least `gap` along some axis."""
    reach = (a.size + b.size) / 2 + gap
    return max(abs(a.cx - b.cx), abs(a.cy - b.cy)) >= reach


def _place(rng, image_size: int | tuple, placed: list, shape: str, color: str, size: float, propose, tries: int = 100):
    """Rejection-sample a centre from propose(rng) -> (cx, cy) that fits and overlaps nothing."""
    height, width = canvas_size(image_size)
    short = min(height, width)
    low = BORDER * short + size / 2
    high_x, high_y = width - low, height - low
    for _ in range(tries):
        cx, cy = propose(rng)
        cx, cy = _quantise(cx), _quantise(cy)
        if not (low <= cx <= high_x and low <= cy <= high_y):
            continue
        candidate = ShapeObject(shape, color, cx, cy, size)
        if all(_boxes_apart(candidate, other, GAP * short) for other in placed):
            return candidate
    return None


def _random_size(rng, image_size: int | tuple) -> float:
    """An object size in px: MIN_SIZE..MAX_SIZE of the short side, on the quarter-pixel grid."""
    return _quantise(_uniform(rng, MIN_SIZE, MAX_SIZE) * short_side(image_size))


def _anywhere(image_size: int | tuple, size: float):
    height, width = canvas_size(image_size)
    low = BORDER * min(height, width) + size / 2
    return lambda rng: (_uniform(rng, low, width - low), _uniform(rng, low, height - low))


def _in_region(image_size: int | tuple, size: float, region: str):
    """Proposals well inside `region` of the where-rule (see _CENTER_PLACEMENT)."""
    height, width = canvas_size(image_size)
    short = min(height, width)
    length = width if region in ("left", "right") else height  # the axis that decides the region
    # Farthest |u| (or |v|) a box centre can take. short / length is exactly 1 on a square
    # canvas, which keeps this the expression it was there.
    reach = 0.5 - BORDER * (short / length) - size / (2 * length)

    def propose(rng):
        if region == "center":
            u, v = (_uniform(rng, -_CENTER_PLACEMENT, _CENTER_PLACEMENT) for _ in range(2))
        else:
            along = _uniform(rng, _SIDE_PLACEMENT, max(reach, _SIDE_PLACEMENT))
            across = _uniform(rng, -0.5 * along, 0.5 * along)
            sign = -1 if region in ("left", "top") else 1
            u, v = (sign * along, across) if region in ("left", "right") else (across, sign * along)
        return (0.5 + u) * width, (0.5 + v) * height

    return propose


def _related_to(image_size: int | tuple, size: float, relation: str, target: ShapeObject):
    """Proposals for an object `relation` the target, clear of GenEval's dead zone."""
    height, width = canvas_size(image_size)
    nearest = (size + target.size) / 2 + GAP * min(height, width)
    # the canvas's length along the relation's axis; proposals off the canvas are rejected by _place
    farthest = width if relation in ("left of", "right of") else height

    def propose(rng):
        along = _uniform(rng, nearest, farthest)
        across = _uniform(rng, -_RELATION_SLOPE * along, _RELATION_SLOPE * along)
        sign = -1 if relation in ("left of", "above") else 1
        if relation in ("left of", "right of"):
            return target.cx + sign * along, target.cy + across
        return target.cx + across, target.cy + sign * along

    return propose


def _scene(rng, image_size: int | tuple, requests: list, attempts: int = 200) -> list:
    """Objects for requests (shape, color or None, proposal factory or None), in order.

    A factory is called as factory(size, placed) -> propose; None means anywhere.
    Restarts from scratch when an object finds no room (always the same way for a seed). Over
    60,000 scenes of every kind, the training canvases (square or not) needed at most 10 restarts.
    """
    for _ in range(attempts):
        placed = []
        for shape, color, factory in requests:
            size = _random_size(rng, image_size)
            color = color or _choice(rng, COLORS)
            propose = factory(size, placed) if factory else _anywhere(image_size, size)
            obj = _place(rng, image_size, placed, shape, color, size, propose)
            if obj is None:
                break
            placed.append(obj)
        else:
            return placed
    height, width = canvas_size(image_size)
    raise RuntimeError(f"no room for {requests} at {height}x{width} px")


# ---------------------------------------------------------------------------------------------
# Text-to-image prompts (GenEval's six tasks) and their clauses
#
# Clauses follow GenEval's evaluation metadata: `include` lists groups {"class", "count",
# optional "color", optional "position": [relation, index of the target group]}; `exclude`
# lists {"class", "count"} meaning "fewer than count of this class".


def plural(shape: str) -> str:
    """English plural of a shape name: circles, squares, triangles, stars, crosses."""
    return shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s")


def prompt_combinations(task: str) -> list:
    """Every distinct evaluation prompt of a task, as tuples of its slot values."""
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    if task == "single_object":
        return [(s,) for s in SHAPES]
    if task == "two_object":
        return pairs
    if task == "counting":
        return [(n, s) for n in (2, 3, 4) for s in SHAPES]
    if task == "colors":
        return [(c, s) for c in COLORS for s in SHAPES]
    if task == "position":
        return [(a, r, b) for a, b in pairs for r in RELATIONS]
    if task == "color_attr":
        return [(c1, a, c2, b) for a, b in pairs for c1 in COLORS for c2 in COLORS if c1 != c2]
    raise ValueError(f"unknown task {task!r}")


def make_prompt(task: str, combination: tuple) -> tuple:
    """(prompt text in the exact evaluation template, clauses)."""
    if task == "single_object":
        (shape,) = combination
        return f"a {shape}", {"include": [{"class": shape, "count": 1}]}
    if task == "two_object":
        a, b = combination
        return f"a {a} and a {b}", {"include": [{"class": a, "count": 1}, {"class": b, "count": 1}]}
    if task == "counting":
        n, shape = combination
        clauses = {"include": [{"class": shape, "count": n}], "exclude": [{"class": shape, "count": n + 1}]}
        return f"{NUMBER_WORDS[n]} {plural(shape)}", clauses
    if task == "colors":
        color, shape = combination
        return f"a {color} {shape}", {"include": [{"class": shape, "count": 1, "color": color}]}
    if task == "position":
        a, relation, b = combination
        include = [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}]
        return f"a {a} {relation} a {b}", {"include": include}
    if task == "color_attr":
        c1, a, c2, b = combination
        include = [{"class": a, "count": 1, "color": c1}, {"class": b, "count": 1, "color": c2}]
        return f"a {c1} {a} and a {c2} {b}", {"include": include}
    raise ValueError(f"unknown task {task!r}")


def scene_for_clauses(rng, clauses: dict, image_size: int | tuple = DEFAULT_IMAGE_SIZE) -> list:
    """Exactly the objects the clauses name; unnamed colours are random."""
    requests = []
    first_of_group = []  # index in `requests` of each include group's first object
    for group in clauses["include"]:
        first_of_group.append(len(requests))
        factory = None
        if "position" in group:
            relation, target_group = group["position"]
            target_index = first_of_group[target_group]

            def factory(size, placed, relation=relation, target_index=target_index):
                return _related_to(image_size, size, relation, placed[target_index])

        for _ in range(group["count"]):
            requests.append((group["class"], group.get("color"), factory))
    return _scene(rng, image_size, requests)


def describe(objects: list, image_size: int | tuple) -> str:
    """Richer training caption: every object with its colour and region."""
    where = {"left": "on the left", "right": "on the right", "top": "at the top",
             "bottom": "at the bottom", "center": "in the center"}  # fmt: skip
    parts = [f"a {o.color} {o.shape} {where[region_of_point(o.cx, o.cy, image_size)]}" for o in objects]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def t2i_sample(index: int, seed: int = 0, image_size: int | tuple = DEFAULT_IMAGE_SIZE,
               task: str | None = None, rich_caption: bool = False) -> T2ISample:  # fmt: skip
    """A training (image, caption) pair; the caption is the evaluation template unless rich.

    image_size may be (height, width), e.g. size_for(index, seed) for a mix of aspect ratios;
    the rich caption's regions follow the per-axis where-rule of region_of_point.
    """
    rng = sample_rng(seed, "t2i", index)
    task = task or _choice(rng, TASKS)
    prompt, clauses = make_prompt(task, _choice(rng, prompt_combinations(task)))
    objects = scene_for_clauses(rng, clauses, image_size)
    caption = f"{prompt}: {describe(objects, image_size)}" if rich_caption else prompt
    return T2ISample(task, caption, clauses, objects, render(objects, image_size))


def eval_prompts(n_per_task: int = 50, seed: int = 0) -> list:
    """The fixed evaluation prompt set: n_per_task prompts per task, indexed 0..6n-1.

    Each task cycles through a seeded shuffle of all its distinct prompts, so small tasks
    (single_object has 5) repeat every prompt equally often and large ones sample without
    replacement.
    """
    entries = []
    for task in TASKS:
        rng = sample_rng(seed, "eval_prompts", TASKS.index(task))
        combinations = _shuffled(rng, prompt_combinations(task))
        for j in range(n_per_task):
            prompt, clauses = make_prompt(task, combinations[j % len(combinations)])
            entries.append({"index": len(entries), "task": task, "prompt": prompt, "clauses": clauses})
    return entries


def ground_truth_objects(entry: dict, seed: int = 0, image_size: int | tuple = DEFAULT_IMAGE_SIZE) -> list:
    """A scene that satisfies an evaluation prompt, seeded by the prompt's index."""
    return scene_for_clauses(sample_rng(seed, "eval_ground_truth", entry["index"]), entry["clauses"], image_size)


def ground_truth_image(entry: dict, seed: int = 0, image_size: int | tuple = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    return render(ground_truth_objects(entry, seed, image_size), image_size)


# ---------------------------------------------------------------------------------------------
# Understanding: (image, question, answer)


def _others(rng, count: int, excluded_shape: str) -> list:
    """Requests for `count` objects of any shape but `excluded_shape`, anywhere."""
    shapes = [s for s in SHAPES if s != excluded_shape]
    return [(_choice(rng, shapes), None, None) for _ in range(count)]


def understanding_sample(index: int, seed: int = 0, image_size: int | tuple = DEFAULT_IMAGE_SIZE,
                         question_type: str | None = None) -> UnderstandingSample:  # fmt: skip
    rng = sample_rng(seed, "understanding", index)
    question_type = question_type or _choice(rng, QUESTION_TYPES)
    shape = _choice(rng, SHAPES)
    if question_type == "shape":
        objects = _scene(rng, image_size, [(shape, None, None)])
        question, answer = "what shape is this?", shape
    elif question_type == "color":
        n_others = _choice(rng, range(MAX_OBJECTS))
        objects = _scene(rng, image_size, [(shape, None, None)] + _others(rng, n_others, shape))
        question, answer = f"what color is the {shape}?", objects[0].color
    elif question_type == "count":
        count = _choice(rng, range(1, MAX_OBJECTS + 1))
        n_others = _choice(rng, range(MAX_OBJECTS - count + 1))
        objects = _scene(rng, image_size, [(shape, None, None)] * count + _others(rng, n_others, shape))
        question, answer = f"how many {plural(shape)} are there?", NUMBER_WORDS[count]
    elif question_type == "where":
        region = _choice(rng, REGIONS)
        n_others = _choice(rng, range(MAX_OBJECTS))

        def factory(size, placed):
            return _in_region(image_size, size, region)

        objects = _scene(rng, image_size, [(shape, None, factory)] + _others(rng, n_others, shape))
        question, answer = f"where is the {shape}?", region
    else:
        raise ValueError(f"unknown question type {question_type!r}")
    return UnderstandingSample(question_type, question, answer, objects, render(objects, image_size))


# ---------------------------------------------------------------------------------------------
# Editing: (image, instruction, edited image)

_MOVE_WORDS = ("left", "right", "top", "bottom")


def edit_sample(index: int, seed: int = 0, image_size: int | tuple = DEFAULT_IMAGE_SIZE,
                edit_type: str | None = None) -> EditSample:  # fmt: skip
    """The named shape occurs exactly once in the source (not at all for "add")."""
    rng = sample_rng(seed, "edit", index)
    edit_type = edit_type or _choice(rng, EDIT_TYPES)
    shape = _choice(rng, SHAPES)
    color = _choice(rng, COLORS)
    if edit_type == "add":
        n_before = _choice(rng, range(MAX_OBJECTS))
        for _ in range(200):
            before = _scene(rng, image_size, _others(rng, n_before, shape))
            size = _random_size(rng, image_size)
            added = _place(rng, image_size, before, shape, color, size, _anywhere(image_size, size))
            if added is not None:
                break
        else:
            raise RuntimeError("no room to add")
        return EditSample(edit_type, f"add a {color} {shape}", before, before + [added],
                          render(before, image_size), render(before + [added], image_size))  # fmt: skip

    n_others = _choice(rng, range(MAX_OBJECTS))
    if edit_type == "recolor":
        old_color = _choice(rng, [c for c in COLORS if c != color])
        before = _scene(rng, image_size, [(shape, old_color, None)] + _others(rng, n_others, shape))
        after = [dataclasses.replace(before[0], color=color)] + before[1:]
        instruction = f"make the {shape} {color}"
    elif edit_type == "remove":
        before = _scene(rng, image_size, [(shape, None, None)] + _others(rng, n_others, shape))
        after = before[1:]
        instruction = f"remove the {shape}"
    elif edit_type == "move":
        direction = _choice(rng, _MOVE_WORDS)
        for _ in range(200):
            before = _scene(rng, image_size, [(shape, None, None)] + _others(rng, n_others, shape))
            target = before[0]
            if region_of_point(target.cx, target.cy, image_size) == direction:
                continue  # already there: the instruction would be a no-op
            propose = _in_region(image_size, target.size, direction)
            moved = _place(rng, image_size, before[1:], shape, target.color, target.size, propose)
            if moved is not None:
                break
        else:
            raise RuntimeError("no room to move")
        after = [moved] + before[1:]
        instruction = f"move the {shape} to the {direction}"
    else:
        raise ValueError(f"unknown edit type {edit_type!r}")
    return EditSample(edit_type, instruction, before, after, render(before, image_size), render(after, image_size))
