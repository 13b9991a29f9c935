"""Tests of the ShapeWorld generator and the ShapeEval scorer: pytest tools/reference"""

import hashlib
import re

import numpy as np
import pytest

import shapeeval as se
import shapeworld as sw


def _digest(images) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(im).tobytes() for im in images)).hexdigest()


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_bytes():
    for i in range(12):
        a, b = sw.t2i_sample(i, seed=3), sw.t2i_sample(i, seed=3)
        assert a.image.tobytes() == b.image.tobytes() and a.caption == b.caption
        u, v = sw.understanding_sample(i, seed=3), sw.understanding_sample(i, seed=3)
        assert u.image.tobytes() == v.image.tobytes() and (u.question, u.answer) == (v.question, v.answer)
        e, f = sw.edit_sample(i, seed=3), sw.edit_sample(i, seed=3)
        assert e.instruction == f.instruction
        assert e.image.tobytes() == f.image.tobytes() and e.edited_image.tobytes() == f.edited_image.tobytes()


def test_sample_does_not_depend_on_earlier_draws():
    alone = sw.t2i_sample(9).image
    for i in range(9):
        sw.t2i_sample(i)
    assert sw.t2i_sample(9).image.tobytes() == alone.tobytes()


def test_other_seed_other_data():
    assert sw.t2i_sample(0, seed=0).image.tobytes() != sw.t2i_sample(0, seed=1).image.tobytes()


def test_pinned_bytes():
    """Same on any machine: a change here means old datasets and checkpoints no longer match."""
    t2i = _digest(sw.t2i_sample(i).image for i in range(6))
    assert t2i == "d56ea2929123f52e8888f5d6d71aae1cea427712d3c619af4546612648f7c383"
    edits = _digest(sw.edit_sample(i, image_size=64).edited_image for i in range(4))
    assert edits == "4b465d1a113962015177d92d8fabbac4a32cdf7ffb61dbe244d5b4b0b8bfb6de"


def test_eval_prompts_are_fixed_and_use_the_templates():
    prompts = sw.eval_prompts(50)
    assert len(prompts) == 300 and [p["index"] for p in prompts] == list(range(300))
    assert prompts == sw.eval_prompts(50)
    assert [p["prompt"] for p in prompts][::50] == [
        "a square", "a cross and a circle", "three stars", "a blue circle",
        "a square right of a triangle", "a pink square and a yellow cross",
    ]  # fmt: skip
    shape = "(circle|square|triangle|star|cross)"
    color = "(" + "|".join(sw.COLORS) + ")"
    templates = {
        "single_object": f"a {shape}",
        "two_object": f"a {shape} and a {shape}",
        "counting": f"(two|three|four) {shape}s",
        "colors": f"a {color} {shape}",
        "position": f"a {shape} (left of|right of|above|below) a {shape}",
        "color_attr": f"a {color} {shape} and a {color} {shape}",
    }  # fmt: skip
    for task in sw.TASKS:
        mine = [p for p in prompts if p["task"] == task]
        assert len(mine) == 50
        assert all(re.fullmatch(templates[task], p["prompt"]) for p in mine)
    # single_object has 5 distinct prompts: each appears 10 times
    singles = [p["prompt"] for p in prompts if p["task"] == "single_object"]
    assert sorted(singles.count(f"a {s}") for s in sw.SHAPES) == [10] * 5


# ---------------------------------------------------------------------------------------------
# Scoring ground truth


@pytest.mark.parametrize("image_size", [128, 64])
def test_ground_truth_scores_every_task(image_size):
    results = []
    for entry in sw.eval_prompts(50):
        image = sw.ground_truth_image(entry, image_size=image_size)
        results.append((entry["task"], se.evaluate_clauses(se.detect(image), entry["clauses"])[0]))
    scores = se.score_t2i(results)
    for task in sw.TASKS:
        assert scores[task] >= 0.99, (task, scores)
    assert scores["overall"] >= 0.99


@pytest.mark.parametrize("kind", sw.QUESTION_TYPES)
def test_detector_answers_questions(kind):
    samples = [sw.understanding_sample(i, image_size=64, question_type=kind) for i in range(40)]
    right = sum(se.answer_question(s.image, s.question) == s.answer for s in samples)
    assert right / len(samples) >= 0.99


@pytest.mark.parametrize("kind", sw.EDIT_TYPES)
def test_ground_truth_edits_succeed(kind):
    samples = [sw.edit_sample(i, image_size=64, edit_type=kind) for i in range(40)]
    assert all(se.edit_success(s.image, s.instruction, s.edited_image)[0] for s in samples)


def test_wrong_edits_fail():
    sample = sw.edit_sample(0, edit_type="recolor")
    assert not se.edit_success(sample.image, sample.instruction, sample.image)[0]  # nothing done
    sample = next(s for i in range(50) if len((s := sw.edit_sample(i, edit_type="remove")).objects) >= 2)
    everything_removed = sw.render([], sample.image.shape[0])
    assert not se.edit_success(sample.image, sample.instruction, everything_removed)[0]


# ---------------------------------------------------------------------------------------------
# Detector


@pytest.mark.parametrize("image_size", [128, 64])
@pytest.mark.parametrize("shape", sw.SHAPES)
def test_detector_recognises_each_shape_and_color_alone(image_size, shape):
    for color in sw.COLORS:
        for fraction in (sw.MIN_SIZE, sw.MAX_SIZE):
            size = round(fraction * image_size * 4) / 4
            for cx, cy in ((0.5, 0.5), (0.3, 0.7)):
                obj = sw.ShapeObject(shape, color, cx * image_size + 0.25, cy * image_size, size)
                detections = se.detect(sw.render([obj], image_size))
                assert [(d.shape, d.color) for d in detections] == [(shape, color)], obj


def test_empty_canvas_has_no_objects():
    assert se.detect(sw.render([], 128)) == []


def test_counting_is_exact():
    three = [sw.ShapeObject("star", "red", x, 64, 30) for x in (24, 64, 104)]
    detections = se.detect(sw.render(three))
    _, two_stars = sw.make_prompt("counting", (2, "star"))
    _, three_stars = sw.make_prompt("counting", (3, "star"))
    assert not se.evaluate_clauses(detections, two_stars)[0]
    assert se.evaluate_clauses(detections, three_stars)[0]


# ---------------------------------------------------------------------------------------------
# Position rule


def _box(cx: float, cy: float, width: int = 20, height: int = 20) -> se.Detection:
    x0, y0 = int(cx - width / 2), int(cy - height / 2)
    return se.Detection("square", "red", width * height, x0, y0, x0 + width, y0 + height, 1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "offset, relations",
    [
        ((-10, 0), {"left of"}),  # dead zone 0.1 * (20 + 20) = 4 px: 10 > 4
        ((10, 0), {"right of"}),
        ((0, -10), {"above"}),  # y grows downwards
        ((0, 10), {"below"}),
        ((-3, 0), set()),  # inside the dead zone
        ((-4, 0), set()),  # on its edge: the offset must exceed it
        ((-5, 0), set()),  # past the dead zone, but GenEval also wants (5 - 4) / 5 > 0.5
        ((-8, 0), set()),  # (8 - 4) / 8 = 0.5, not above it
        ((-9, 0), {"left of"}),  # (9 - 4) / 9 = 0.56
        ((-30, -30), {"left of", "above"}),  # diagonal: both
        ((-30, -5), {"left of"}),  # 5 - 4 = 1 left vertically: 1 / 30.4 < 0.5
        ((-10, -30), {"above"}),  # (10 - 4) / 31.6 = 0.19 < 0.5: not "left of"
    ],
)
def test_position_dead_zone(offset, relations):
    b = _box(60, 60)
    a = _box(60 + offset[0], 60 + offset[1])
    assert se.relative_position(a, b) == relations


def test_dead_zone_uses_the_sizes_along_the_axis():
    wide = _box(40, 60, width=60, height=10)
    other = _box(50, 60, width=60, height=10)  # dead zone 0.1 * (60 + 60) = 12 > 10
    assert se.relative_position(wide, other) == set()
    tall = _box(60, 40, width=10, height=60)
    # along x the dead zone is 0.1 * (10 + 10) = 2: (12 - 2) / 12 > 0.5
    assert se.relative_position(_box(48, 40, width=10, height=60), tall) == {"left of"}
