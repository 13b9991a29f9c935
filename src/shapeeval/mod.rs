//! ShapeEval: the rule-based scorer of ShapeWorld images (`/work/shared/docs/SHAPEWORLD.md`),
//! a port of `tools/reference/shapeeval.py` with the prompt-set side of
//! `tools/reference/shapeworld.py` (`eval_prompts`, `prompt_combinations`, `make_prompt`,
//! `region_of_point`, the question and instruction templates).
//!
//! Same rules, same thresholds and the same floating-point operations in the same order as the
//! Python reference, so every detection, verdict and answer is equal to Python's; checked
//! against fixtures made by `tools/reference/make_shapeeval_fixtures.py`
//! (`tests/golden/shapeeval/`, `tests/shapeeval.rs`).
//!
//! The evaluation prompt set is computed, not stored: numpy's `SeedSequence` and `PCG64`
//! (the only randomness `eval_prompts` uses) are reproduced bit for bit by [`sample_rng`].
//!
//! Images are RGB8, row-major, height x width x 3 bytes. Wherever a canvas is taken it is a
//! [`Canvas`]: pass a side `n` for n x n or a `(height, width)` pair, as Python's
//! `image_size: int | tuple`. Object sizes, the noise area and the edit centre tolerance are
//! fractions of the short side; the "where" rule normalises each axis by its own length.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod eval_set;

/// What ShapeWorld evaluation refuses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A task, question type, question or instruction outside ShapeWorld's grammar.
    #[error("{0}")]
    Grammar(String),
    /// A PNG that cannot be read or written as an RGB8 image (with the file, when there is one).
    #[error("{}{msg}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Png { path: Option<std::path::PathBuf>, msg: String },
    /// The shipped evaluation set (`model/assets/shapeeval_set.json`) does not read.
    #[error("shapeeval_set.json: {0}")]
    Set(String),
}

fn png_err(path: Option<&Path>, msg: impl ToString) -> Error {
    Error::Png { path: path.map(Path::to_path_buf), msg: msg.to_string() }
}

/// `e` with the file it came from.
fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Png { path: None, msg } => png_err(Some(path), msg),
        e => e,
    }
}

// ---------------------------------------------------------------------------------------------
// The world (shapeworld.py)

/// GenEval's ten colours, in the reference's order (`sw.PALETTE`).
pub const PALETTE: [(&str, [u8; 3]); 10] = [
    ("red", [215, 20, 30]),
    ("orange", [255, 125, 0]),
    ("yellow", [250, 230, 10]),
    ("green", [30, 160, 50]),
    ("blue", [30, 70, 220]),
    ("purple", [135, 40, 185]),
    ("pink", [255, 100, 190]),
    ("brown", [125, 75, 25]),
    ("black", [20, 20, 20]),
    ("white", [255, 255, 255]),
];
pub const BACKGROUND: [u8; 3] = [192, 192, 192];
pub const COLORS: [&str; 10] =
    ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"];
pub const SHAPES: [&str; 5] = ["circle", "square", "triangle", "star", "cross"];
pub const TASKS: [&str; 6] = ["single_object", "two_object", "counting", "colors", "position", "color_attr"];
pub const RELATIONS: [&str; 4] = ["left of", "right of", "above", "below"];
pub const REGIONS: [&str; 5] = ["left", "right", "top", "bottom", "center"];
pub const QUESTION_TYPES: [&str; 4] = ["shape", "color", "count", "where"];
pub const EDIT_TYPES: [&str; 4] = ["recolor", "remove", "add", "move"];
pub const MOVE_WORDS: [&str; 4] = ["left", "right", "top", "bottom"];
pub const DEFAULT_IMAGE_SIZE: usize = 128;
/// Training canvases, (height, width) in px (`sw.ASPECT_SIZES`); [`size_for`] draws one.
pub const ASPECT_SIZES: [(usize, usize); 4] = [(64, 64), (48, 48), (48, 96), (96, 48)];
/// "where is the X?": center if max(|u|, |v|) < CENTER_ZONE, the box centre in units of each
/// axis's own length (u = cx / width - 0.5, v = cy / height - 0.5).
pub const CENTER_ZONE: f64 = 0.15;

/// A canvas of `height` x `width` px (`sw.canvas_size`). `n.into()` is n x n and
/// `(height, width).into()` is height x width, so square callers pass a plain side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Canvas {
    pub height: usize,
    pub width: usize,
}

impl Canvas {
    pub const fn new(height: usize, width: usize) -> Canvas {
        Canvas { height, width }
    }

    pub const fn square(side: usize) -> Canvas {
        Canvas { height: side, width: side }
    }

    /// min(height, width): the unit of object size, noise area and edit centre tolerance
    /// (`sw.short_side`).
    pub fn short_side(&self) -> usize {
        self.height.min(self.width)
    }

    pub fn is_square(&self) -> bool {
        self.height == self.width
    }

    /// height * width.
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }
}

impl From<usize> for Canvas {
    fn from(side: usize) -> Canvas {
        Canvas::square(side)
    }
}

impl From<(usize, usize)> for Canvas {
    /// (height, width), as Python's pairs.
    fn from((height, width): (usize, usize)) -> Canvas {
        Canvas::new(height, width)
    }
}

impl std::fmt::Display for Canvas {
    /// "128" for a square canvas, "48x96" (height x width) otherwise.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_square() {
            write!(f, "{}", self.height)
        } else {
            write!(f, "{}x{}", self.height, self.width)
        }
    }
}

/// `sw.NUMBER_WORDS.get(n, str(n))`.
pub fn number_word(n: usize) -> String {
    match n {
        1 => "one".into(),
        2 => "two".into(),
        3 => "three".into(),
        4 => "four".into(),
        _ => n.to_string(),
    }
}

/// English plural of a shape name: circles, squares, triangles, stars, crosses.
pub fn plural(shape: &str) -> String {
    if ["s", "x", "sh", "ch"].iter().any(|end| shape.ends_with(end)) {
        format!("{shape}es")
    } else {
        format!("{shape}s")
    }
}

fn lookup(options: &[&'static str], name: &str) -> Option<&'static str> {
    options.iter().copied().find(|o| *o == name)
}

/// Answer to "where is the X?" for an object whose box centre is (cx, cy); each axis is
/// normalised by its own length (on 48 x 96, cx = 24 is as far left as cy = 12 is up).
pub fn region_of_point(cx: f64, cy: f64, image_size: impl Into<Canvas>) -> &'static str {
    let canvas = image_size.into();
    let u = cx / canvas.width as f64 - 0.5;
    let v = cy / canvas.height as f64 - 0.5;
    if u.abs().max(v.abs()) < CENTER_ZONE {
        return "center";
    }
    if u.abs() >= v.abs() {
        if u < 0.0 {
            "left"
        } else {
            "right"
        }
    } else if v < 0.0 {
        "top"
    } else {
        "bottom"
    }
}

// ---------------------------------------------------------------------------------------------
// numpy's SeedSequence + PCG64, bit for bit (sw.sample_rng)

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;
const POOL_SIZE: usize = 4;
const PCG_MULTIPLIER: u128 = (2_549_297_995_355_413_924u128 << 64) | 4_865_540_595_714_422_341u128;

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut value = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    value = value.wrapping_mul(*hash_const);
    value ^ (value >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let result = MIX_MULT_L.wrapping_mul(x).wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    result ^ (result >> XSHIFT)
}

/// numpy's `_int_to_uint32_array`: little-endian 32-bit words, `[0]` for zero.
fn int_words(mut n: u64, out: &mut Vec<u32>) {
    if n == 0 {
        out.push(0);
    }
    while n > 0 {
        out.push(n as u32);
        n >>= 32;
    }
}

/// `np.random.SeedSequence(entropy).generate_state(n_words, np.uint32)`.
pub fn seed_sequence_state(entropy: &[u64], n_words: usize) -> Vec<u32> {
    let mut words = Vec::new();
    for &e in entropy {
        int_words(e, &mut words);
    }
    let mut pool = [0u32; POOL_SIZE];
    let mut hash_const = INIT_A;
    for (i, slot) in pool.iter_mut().enumerate() {
        *slot = hashmix(words.get(i).copied().unwrap_or(0), &mut hash_const);
    }
    for i_src in 0..POOL_SIZE {
        for i_dst in 0..POOL_SIZE {
            if i_src != i_dst {
                let h = hashmix(pool[i_src], &mut hash_const);
                pool[i_dst] = mix(pool[i_dst], h);
            }
        }
    }
    for &word in words.iter().skip(POOL_SIZE) {
        for slot in pool.iter_mut() {
            let h = hashmix(word, &mut hash_const);
            *slot = mix(*slot, h);
        }
    }
    let mut hash_const = INIT_B;
    (0..n_words)
        .map(|i| {
            let mut value = pool[i % POOL_SIZE] ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_B);
            value = value.wrapping_mul(hash_const);
            value ^ (value >> XSHIFT)
        })
        .collect()
}

/// numpy's PCG64 bit generator (XSL-RR 128/64), as `np.random.Generator(PCG64(seed_seq))`.
#[derive(Clone, Debug)]
pub struct Pcg64 {
    state: u128,
    inc: u128,
}

impl Pcg64 {
    /// `PCG64(SeedSequence(entropy))` where entropy is a list of non-negative integers.
    pub fn from_entropy(entropy: &[u64]) -> Pcg64 {
        let w = seed_sequence_state(entropy, 8);
        let v: Vec<u64> = (0..4).map(|i| w[2 * i] as u64 | (w[2 * i + 1] as u64) << 32).collect();
        let seed = (v[0] as u128) << 64 | v[1] as u128;
        let seq = (v[2] as u128) << 64 | v[3] as u128;
        let mut rng = Pcg64 { state: 0, inc: (seq << 1) | 1 };
        rng.step();
        rng.state = rng.state.wrapping_add(seed);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULTIPLIER).wrapping_add(self.inc);
    }

    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let rot = (self.state >> 122) as u32;
        (((self.state >> 64) as u64) ^ (self.state as u64)).rotate_right(rot)
    }

    /// `Generator.random()`: a double in [0, 1) from the top 53 bits.
    pub fn random(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }
}

/// `sw._STREAMS`.
pub fn stream_id(kind: &str) -> Option<u64> {
    match kind {
        "t2i" => Some(1),
        "understanding" => Some(2),
        "edit" => Some(3),
        "eval_prompts" => Some(4),
        "eval_ground_truth" => Some(5),
        "aspect" => Some(6),
        _ => None,
    }
}

/// `sw.sample_rng(seed, kind, index)`. Panics on an unknown kind.
pub fn sample_rng(seed: u64, kind: &str, index: u64) -> Pcg64 {
    let stream = stream_id(kind).unwrap_or_else(|| panic!("unknown sample kind {kind:?}"));
    Pcg64::from_entropy(&[seed, stream, index])
}

/// `sw._choice`: one of `options`, uniformly, from one double.
fn choice<T: Copy>(rng: &mut Pcg64, options: &[T]) -> T {
    options[((rng.random() * options.len() as f64) as usize).min(options.len() - 1)]
}

/// `sw.size_for(index, seed)`: the (height, width) canvas of training sample `index`, uniform
/// over [`ASPECT_SIZES`], from the sample's own "aspect" stream.
pub fn size_for(index: u64, seed: u64) -> Canvas {
    choice(&mut sample_rng(seed, "aspect", index), &ASPECT_SIZES).into()
}

/// `sw._shuffled`: items ordered by a stable argsort of `rng.random(len(items))`.
fn shuffled<T: Clone>(rng: &mut Pcg64, items: &[T]) -> Vec<T> {
    let keys: Vec<f64> = (0..items.len()).map(|_| rng.random()).collect();
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| keys[a].partial_cmp(&keys[b]).unwrap());
    order.into_iter().map(|i| items[i].clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// Prompts and clauses (GenEval's six tasks)

/// An include group: at least `count` objects of `class` (with `color`, if named), optionally
/// `position: [relation, index of the target group]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub class: String,
    pub count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<(String, usize)>,
}

/// An exclude group: fewer than `count` objects of `class`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclude {
    pub class: String,
    pub count: usize,
}

/// GenEval-style clauses of a prompt; serialises to the reference's JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clauses {
    #[serde(default)]
    pub include: Vec<Group>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<Exclude>,
}

fn group(class: &str, count: usize) -> Group {
    Group { class: class.into(), count, color: None, position: None }
}

/// One entry of the evaluation prompt set; serialises like Python's dict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalPrompt {
    pub index: usize,
    pub task: String,
    pub prompt: String,
    pub clauses: Clauses,
}

/// The slot values of one evaluation prompt (Python's combination tuples).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combination {
    SingleObject(&'static str),
    TwoObject(&'static str, &'static str),
    Counting(usize, &'static str),
    Colors(&'static str, &'static str),
    /// (shape A, relation, shape B): "a A relation a B".
    Position(&'static str, &'static str, &'static str),
    /// (colour 1, shape A, colour 2, shape B).
    ColorAttr(&'static str, &'static str, &'static str, &'static str),
}

impl Combination {
    pub fn task(&self) -> &'static str {
        match self {
            Combination::SingleObject(..) => "single_object",
            Combination::TwoObject(..) => "two_object",
            Combination::Counting(..) => "counting",
            Combination::Colors(..) => "colors",
            Combination::Position(..) => "position",
            Combination::ColorAttr(..) => "color_attr",
        }
    }
}

/// Every distinct evaluation prompt of a task, in the reference's order.
pub fn prompt_combinations(task: &str) -> Result<Vec<Combination>, Error> {
    let pairs: Vec<(&str, &str)> =
        SHAPES.iter().flat_map(|&a| SHAPES.iter().filter(move |&&b| b != a).map(move |&b| (a, b))).collect();
    Ok(match task {
        "single_object" => SHAPES.iter().map(|&s| Combination::SingleObject(s)).collect(),
        "two_object" => pairs.iter().map(|&(a, b)| Combination::TwoObject(a, b)).collect(),
        "counting" => {
            [2, 3, 4].iter().flat_map(|&n| SHAPES.iter().map(move |&s| Combination::Counting(n, s))).collect()
        }
        "colors" => COLORS.iter().flat_map(|&c| SHAPES.iter().map(move |&s| Combination::Colors(c, s))).collect(),
        "position" => {
            pairs.iter().flat_map(|&(a, b)| RELATIONS.iter().map(move |&r| Combination::Position(a, r, b))).collect()
        }
        "color_attr" => {
            let mut out = Vec::new();
            for &(a, b) in &pairs {
                for &c1 in &COLORS {
                    for &c2 in &COLORS {
                        if c1 != c2 {
                            out.push(Combination::ColorAttr(c1, a, c2, b));
                        }
                    }
                }
            }
            out
        }
        _ => return Err(Error::Grammar(format!("unknown task {task:?}"))),
    })
}

/// (prompt text in the exact evaluation template, clauses).
pub fn make_prompt(combination: &Combination) -> (String, Clauses) {
    match *combination {
        Combination::SingleObject(shape) => {
            (format!("a {shape}"), Clauses { include: vec![group(shape, 1)], exclude: vec![] })
        }
        Combination::TwoObject(a, b) => {
            (format!("a {a} and a {b}"), Clauses { include: vec![group(a, 1), group(b, 1)], exclude: vec![] })
        }
        Combination::Counting(n, shape) => (
            format!("{} {}", number_word(n), plural(shape)),
            Clauses { include: vec![group(shape, n)], exclude: vec![Exclude { class: shape.into(), count: n + 1 }] },
        ),
        Combination::Colors(color, shape) => (
            format!("a {color} {shape}"),
            Clauses { include: vec![Group { color: Some(color.into()), ..group(shape, 1) }], exclude: vec![] },
        ),
        Combination::Position(a, relation, b) => (
            format!("a {a} {relation} a {b}"),
            Clauses {
                include: vec![group(b, 1), Group { position: Some((relation.into(), 0)), ..group(a, 1) }],
                exclude: vec![],
            },
        ),
        Combination::ColorAttr(c1, a, c2, b) => (
            format!("a {c1} {a} and a {c2} {b}"),
            Clauses {
                include: vec![
                    Group { color: Some(c1.into()), ..group(a, 1) },
                    Group { color: Some(c2.into()), ..group(b, 1) },
                ],
                exclude: vec![],
            },
        ),
    }
}

/// The fixed evaluation prompt set: `n_per_task` prompts per task, indexed 0..6n-1, equal to
/// Python's `shapeworld.eval_prompts(n_per_task, seed)`. Each task cycles through a seeded
/// shuffle (PCG64 stream "eval_prompts", index = task number) of all its distinct prompts.
pub fn eval_prompts(n_per_task: usize, seed: u64) -> Vec<EvalPrompt> {
    let mut entries = Vec::with_capacity(6 * n_per_task);
    for (t, task) in TASKS.iter().enumerate() {
        let mut rng = sample_rng(seed, "eval_prompts", t as u64);
        let combinations = shuffled(&mut rng, &prompt_combinations(task).unwrap());
        for j in 0..n_per_task {
            let (prompt, clauses) = make_prompt(&combinations[j % combinations.len()]);
            entries.push(EvalPrompt { index: entries.len(), task: task.to_string(), prompt, clauses });
        }
    }
    entries
}

// ---------------------------------------------------------------------------------------------
// Detector

/// A pixel belongs to its nearest reference colour (background or palette) if it lies within
/// this RGB distance of it, else to nothing.
pub const PIXEL_DISTANCE_THRESHOLD: f64 = 60.0;
/// Components smaller than this fraction of the short side squared are noise (of the image,
/// on a square canvas).
pub const MIN_AREA_FRACTION: f64 = 0.004;
/// GenEval's POSITION_THRESHOLD: the dead zone is this times the sum of the two sizes.
pub const POSITION_THRESHOLD: f64 = 0.1;
/// Editing: "unchanged" = same shape and colour, box centre moved by at most this fraction of
/// the image's short side, box side (the larger of width and height) changed by at most
/// EDIT_SIZE_TOLERANCE (ratio) or by at most EDIT_SIZE_TOLERANCE_PX, whichever allows more.
/// The absolute tolerance is the rasteriser's own spread (up to 3 px with an object's
/// quarter-pixel phase); it decides only for box sides under 15 px.
pub const EDIT_CENTER_TOLERANCE: f64 = 0.03;
pub const EDIT_SIZE_TOLERANCE: f64 = 0.2;
pub const EDIT_SIZE_TOLERANCE_PX: usize = 3;

/// One connected component. Box edges are pixel-edge coordinates, x1/y1 exclusive.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detection {
    /// None: not recognisable as any of the five shapes.
    pub shape: Option<&'static str>,
    pub color: &'static str,
    pub area: usize,
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
    /// area / box area
    pub fill: f64,
    /// area / convex hull area (hull of the pixel squares)
    pub solidity: f64,
    /// IoU of the mask with its up-down mirror inside the box
    pub symmetry: f64,
    /// filled fraction of the box's four corner cells, each 1/4 x 1/4 of it
    pub corners: f64,
}

impl Detection {
    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }

    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }

    /// Box centre, as GenEval uses.
    pub fn center(&self) -> (f64, f64) {
        ((self.x0 + self.x1) as f64 / 2.0, (self.y0 + self.y1) as f64 / 2.0)
    }
}

/// Per pixel: palette index 0..9, -1 for background, -2 for no colour within the threshold.
/// Panics unless `rgb` holds height x width x 3 bytes.
pub fn classify_pixels(rgb: &[u8], canvas: impl Into<Canvas>) -> Vec<i8> {
    let canvas = canvas.into();
    let (height, width) = (canvas.height, canvas.width);
    assert_eq!(rgb.len(), height * width * 3, "expected a {height}x{width} (height x width) RGB8 image");
    let mut reference = [[0i32; 3]; 11];
    reference[0] = BACKGROUND.map(i32::from);
    for (k, (_, c)) in PALETTE.iter().enumerate() {
        reference[k + 1] = c.map(i32::from);
    }
    // sqrt(d2) > 60 exactly when the integer d2 > 3600; argmin on d2 is argmin on its sqrt.
    let limit = (PIXEL_DISTANCE_THRESHOLD * PIXEL_DISTANCE_THRESHOLD) as i32;
    rgb.chunks_exact(3)
        .map(|p| {
            let (mut best, mut best_d) = (0usize, i32::MAX);
            for (k, r) in reference.iter().enumerate() {
                let d: i32 = (0..3).map(|c| (p[c] as i32 - r[c]).pow(2)).sum();
                if d < best_d {
                    best = k;
                    best_d = d;
                }
            }
            if best_d > limit {
                -2
            } else {
                best as i8 - 1
            }
        })
        .collect()
}

/// 8-connected components of `mask`, each as its pixels' flat indices; components ordered by
/// their smallest flat index (the reference's component ids, ascending).
fn connected_components(mask: &[bool], height: usize, width: usize) -> Vec<Vec<usize>> {
    let mut seen = vec![false; mask.len()];
    let mut components = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        let mut pixels = vec![start];
        let mut head = 0;
        while head < pixels.len() {
            let p = pixels[head];
            head += 1;
            let (y, x) = ((p / width) as isize, (p % width) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (ny, nx) = (y + dy, x + dx);
                    if ny < 0 || nx < 0 || ny >= height as isize || nx >= width as isize {
                        continue;
                    }
                    let q = ny as usize * width + nx as usize;
                    if mask[q] && !seen[q] {
                        seen[q] = true;
                        pixels.push(q);
                    }
                }
            }
        }
        components.push(pixels);
    }
    components
}

/// Twice the area of the convex hull of integer points (Andrew's monotone chain + shoelace).
fn convex_hull_area2(points: &mut Vec<(i64, i64)>) -> i64 {
    points.sort_unstable();
    points.dedup();
    if points.len() < 3 {
        return 0;
    }
    fn cross(o: (i64, i64), a: (i64, i64), b: (i64, i64)) -> i64 {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    }
    let mut lower: Vec<(i64, i64)> = Vec::new();
    for &p in points.iter() {
        while lower.len() >= 2 && cross(lower[lower.len() - 2], lower[lower.len() - 1], p) <= 0 {
            lower.pop();
        }
        lower.push(p);
    }
    let mut upper: Vec<(i64, i64)> = Vec::new();
    for &p in points.iter().rev() {
        while upper.len() >= 2 && cross(upper[upper.len() - 2], upper[upper.len() - 1], p) <= 0 {
            upper.pop();
        }
        upper.push(p);
    }
    lower.pop();
    upper.pop();
    lower.extend(upper);
    let hull = lower;
    let n = hull.len();
    let sum: i64 = (0..n).map(|i| hull[(i + n - 1) % n].0 * hull[i].1 - hull[i].0 * hull[(i + n - 1) % n].1).sum();
    sum.abs()
}

/// Shape from geometry (thresholds of the reference, which sit in the gaps between the
/// measured ranges of the five shapes).
pub fn classify_shape(fill: f64, solidity: f64, symmetry: f64, corners: f64, aspect: f64) -> Option<&'static str> {
    if !(0.6..=1.0 / 0.6).contains(&aspect) || fill < 0.25 {
        return None; // elongated or sparse: none of the five shapes
    }
    if symmetry >= 0.68 {
        if solidity < 0.83 {
            return Some("cross");
        }
        return Some(if corners >= 0.65 { "square" } else { "circle" });
    }
    Some(if solidity >= 0.80 { "triangle" } else { "star" })
}

/// All components above the minimum area, largest first (ties: smaller first flat index first).
/// The canvas is height x width; the minimum area is a fraction of its short side squared.
/// Panics unless `rgb` holds height x width x 3 bytes.
pub fn detect(rgb: &[u8], canvas: impl Into<Canvas>) -> Vec<Detection> {
    let canvas = canvas.into();
    let (height, width) = (canvas.height, canvas.width);
    let labels = classify_pixels(rgb, canvas);
    let foreground: Vec<bool> = labels.iter().map(|&l| l >= 0).collect();
    let short = canvas.short_side();
    let min_area = MIN_AREA_FRACTION * (short * short) as f64;
    let mut detections = Vec::new();
    for pixels in connected_components(&foreground, height, width) {
        let area = pixels.len();
        if (area as f64) < min_area {
            continue;
        }
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for &p in &pixels {
            let (y, x) = (p / width, p % width);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
        }
        let (w, h) = (x1 - x0, y1 - y0);
        let mut boxed = vec![false; w * h];
        for &p in &pixels {
            boxed[(p / width - y0) * w + (p % width - x0)] = true;
        }
        // Up-down mirror IoU.
        let (mut inter, mut union) = (0usize, 0usize);
        for r in 0..h {
            for c in 0..w {
                let (a, b) = (boxed[r * w + c], boxed[(h - 1 - r) * w + c]);
                inter += (a && b) as usize;
                union += (a || b) as usize;
            }
        }
        let symmetry = inter as f64 / union as f64;
        let fill = area as f64 / (w * h) as f64;
        // Corner cells: max(1, round(side / 4)), Python's round (half to even).
        let ch = ((h as f64 / 4.0).round_ties_even() as usize).max(1);
        let cw = ((w as f64 / 4.0).round_ties_even() as usize).max(1);
        let cell = |r0: usize, c0: usize| -> f64 {
            let mut n = 0usize;
            for r in r0..r0 + ch {
                for c in c0..c0 + cw {
                    n += boxed[r * w + c] as usize;
                }
            }
            n as f64 / (ch * cw) as f64
        };
        let cells = [cell(0, 0), cell(0, w - cw), cell(h - ch, 0), cell(h - ch, w - cw)];
        let corners = (((cells[0] + cells[1]) + cells[2]) + cells[3]) / 4.0;
        // Hull of the pixel squares, from each row's outer corners.
        let mut rows: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        for &p in &pixels {
            let (y, x) = (p / width, p % width);
            let e = rows.entry(y).or_insert((x, x));
            e.0 = e.0.min(x);
            e.1 = e.1.max(x);
        }
        let mut points = Vec::with_capacity(rows.len() * 4);
        for (&y, &(left, right)) in &rows {
            for x in [left as i64, right as i64 + 1] {
                for yy in [y as i64, y as i64 + 1] {
                    points.push((x, yy));
                }
            }
        }
        let hull_area = 0.5 * convex_hull_area2(&mut points) as f64;
        let solidity = area as f64 / hull_area;
        // Colour: nearest palette colour of the mean (exact integer sums, then one division).
        let mut sums = [0u64; 3];
        for &p in &pixels {
            for c in 0..3 {
                sums[c] += rgb[3 * p + c] as u64;
            }
        }
        let mean = sums.map(|s| s as f64 / area as f64);
        let mut color = 0;
        let mut best = f64::INFINITY;
        for (k, (_, c)) in PALETTE.iter().enumerate() {
            let sq = |i: usize| (c[i] as f64 - mean[i]) * (c[i] as f64 - mean[i]);
            let d = (sq(0) + sq(1)) + sq(2);
            if d < best {
                best = d;
                color = k;
            }
        }
        let shape = classify_shape(fill, solidity, symmetry, corners, w as f64 / h as f64);
        detections.push(Detection {
            shape,
            color: COLORS[color],
            area,
            x0,
            y0,
            x1,
            y1,
            fill,
            solidity,
            symmetry,
            corners,
        });
    }
    detections.sort_by_key(|d| std::cmp::Reverse(d.area)); // stable, as Python's sort
    detections
}

/// Recognised detections of a shape, in detection order.
fn of_shape<'a>(detections: &'a [Detection], shape: &str) -> Vec<&'a Detection> {
    detections.iter().filter(|d| d.shape == Some(shape)).collect()
}

// ---------------------------------------------------------------------------------------------
// GenEval clause logic

/// Relations of A to B, GenEval's rule (evaluation/evaluate_images.py, relative_position), in
/// sorted order ("above" < "below" < "left of" < "right of").
///
/// Centres are box centres; the size of an object along an axis is its box extent along that
/// axis in pixels (width for left/right, height for above/below). Per axis, the offset
/// A - B shrinks towards zero by the dead zone 0.1 * (size_A + size_B). If both shrunken
/// offsets are < 1e-3 px there is no relation; otherwise a relation holds when its shrunken
/// offset, divided by the length of the raw offset vector, exceeds 0.5 in its direction
/// (x grows right, y grows down).
pub fn relative_position(a: &Detection, b: &Detection) -> Vec<&'static str> {
    let ((ax, ay), (bx, by)) = (a.center(), b.center());
    let offset = [ax - bx, ay - by];
    let dead_zone =
        [POSITION_THRESHOLD * (a.width() + b.width()) as f64, POSITION_THRESHOLD * (a.height() + b.height()) as f64];
    let sign = |v: f64| {
        if v > 0.0 {
            1.0
        } else if v < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    let revised: Vec<f64> = (0..2).map(|i| (offset[i].abs() - dead_zone[i]).max(0.0) * sign(offset[i])).collect();
    if revised.iter().all(|r| r.abs() < 1e-3) {
        return vec![];
    }
    let norm = (offset[0] * offset[0] + offset[1] * offset[1]).sqrt();
    let (dx, dy) = (revised[0] / norm, revised[1] / norm);
    let mut relations = Vec::new();
    if dy < -0.5 {
        relations.push("above");
    }
    if dy > 0.5 {
        relations.push("below");
    }
    if dx < -0.5 {
        relations.push("left of");
    }
    if dx > 0.5 {
        relations.push("right of");
    }
    relations
}

/// Python's repr of a list of strings: `['above', 'left of']`.
fn py_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// (correct, reasons): GenEval's `evaluate` with detections ordered by area; reasons are the
/// reference's messages, word for word.
///
/// A group {class, count, color} matches when at least `count` objects of the class (with that
/// colour, if named) are present; its objects are the largest `count` of those. A position
/// [relation, target group] must hold from every object of the group to every object of the
/// target group (a target index that is not an earlier group counts as "no target"). An
/// exclude {class, count} fails on `count` or more.
pub fn evaluate_clauses(detections: &[Detection], clauses: &Clauses) -> (bool, Vec<String>) {
    let mut reasons = Vec::new();
    let mut matched: Vec<Option<Vec<&Detection>>> = Vec::new();
    for g in &clauses.include {
        let mut candidates = of_shape(detections, &g.class);
        if candidates.len() < g.count {
            reasons.push(format!("expected {}>={}, found {}", g.class, g.count, candidates.len()));
            matched.push(None);
            continue;
        }
        if let Some(color) = &g.color {
            candidates.retain(|d| d.color == color);
            if candidates.len() < g.count {
                reasons.push(format!("expected {} {}>={}, found {}", color, g.class, g.count, candidates.len()));
                matched.push(None);
                continue;
            }
        }
        candidates.truncate(g.count);
        let objects = candidates;
        if let Some((relation, target)) = &g.position {
            let targets = match matched.get(*target) {
                Some(Some(t)) => t.clone(),
                _ => {
                    reasons.push(format!("no target for {} to be {}", g.class, relation));
                    matched.push(None);
                    continue;
                }
            };
            let failed = objects
                .iter()
                .flat_map(|o| targets.iter().map(move |t| (*o, *t)))
                .find(|(o, t)| !relative_position(o, t).contains(&relation.as_str()));
            if let Some((o, t)) = failed {
                reasons.push(format!(
                    "expected {} {} target, found {}",
                    g.class,
                    relation,
                    py_list(&relative_position(o, t))
                ));
                matched.push(None);
                continue;
            }
        }
        matched.push(Some(objects));
    }
    for g in &clauses.exclude {
        let present = of_shape(detections, &g.class).len();
        if present >= g.count {
            reasons.push(format!("expected {}<{}, found {}", g.class, g.count, present));
        }
    }
    (reasons.is_empty(), reasons)
}

/// The six task scores and their mean.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskScores {
    pub single_object: f64,
    pub two_object: f64,
    pub counting: f64,
    pub colors: f64,
    pub position: f64,
    pub color_attr: f64,
    pub overall: f64,
}

impl TaskScores {
    /// A score by its name: one of TASKS or "overall".
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "single_object" => self.single_object,
            "two_object" => self.two_object,
            "counting" => self.counting,
            "colors" => self.colors,
            "position" => self.position,
            "color_attr" => self.color_attr,
            "overall" => self.overall,
            _ => return None,
        })
    }
}

/// results: (task, correct) pairs. Task score = fraction correct (0 without results);
/// overall = mean of the six.
pub fn score_t2i<S: AsRef<str>>(results: &[(S, bool)]) -> TaskScores {
    let mut task_scores = [0.0f64; 6];
    for (k, task) in TASKS.iter().enumerate() {
        let (mut n, mut right) = (0usize, 0usize);
        for (t, correct) in results {
            if t.as_ref() == *task {
                n += 1;
                right += *correct as usize;
            }
        }
        task_scores[k] = if n > 0 { right as f64 / n as f64 } else { 0.0 };
    }
    let overall = task_scores.iter().fold(0.0, |acc, s| acc + s) / TASKS.len() as f64;
    let [single_object, two_object, counting, colors, position, color_attr] = task_scores;
    TaskScores { single_object, two_object, counting, colors, position, color_attr, overall }
}

/// Score one image against one prompt entry.
pub fn score_image(rgb: &[u8], canvas: impl Into<Canvas>, entry: &EvalPrompt) -> (bool, Vec<String>) {
    evaluate_clauses(&detect(rgb, canvas), &entry.clauses)
}

// ---------------------------------------------------------------------------------------------
// Understanding

/// The question text of a type ("shape" ignores `shape`).
pub fn make_question(kind: &str, shape: &str) -> Result<String, Error> {
    Ok(match kind {
        "shape" => "what shape is this?".to_string(),
        "color" => format!("what color is the {shape}?"),
        "count" => format!("how many {} are there?", plural(shape)),
        "where" => format!("where is the {shape}?"),
        _ => return Err(Error::Grammar(format!("unknown question type {kind:?}"))),
    })
}

/// (type, shape) of one of the four ShapeWorld question templates; Err for anything else.
pub fn question_type(question: &str) -> Result<(&'static str, Option<&'static str>), Error> {
    if question == "what shape is this?" {
        return Ok(("shape", None));
    }
    // Python: re.fullmatch of "<prefix>(\w+)<suffix>", the word one of SHAPES.
    for (kind, prefix, suffix) in
        [("color", "what color is the ", "?"), ("count", "how many ", " are there?"), ("where", "where is the ", "?")]
    {
        if let Some(middle) = question.strip_prefix(prefix).and_then(|r| r.strip_suffix(suffix)) {
            let shape = if kind == "count" {
                SHAPES.iter().copied().find(|s| plural(s) == middle)
            } else {
                lookup(&SHAPES, middle)
            };
            if let Some(shape) = shape {
                return Ok((kind, Some(shape)));
            }
        }
    }
    Err(Error::Grammar(format!("not a ShapeWorld question: {question:?}")))
}

/// The answer to a question from detections; "unknown" when they do not support one.
/// `canvas` is the image's, for the "where" rule.
pub fn answer_from_detections(
    detections: &[Detection],
    canvas: impl Into<Canvas>,
    question: &str,
) -> Result<String, Error> {
    let (kind, shape) = question_type(question)?;
    if kind == "shape" {
        return Ok(detections.iter().find_map(|d| d.shape).unwrap_or("unknown").to_string());
    }
    let matches = of_shape(detections, shape.unwrap());
    if kind == "count" {
        return Ok(number_word(matches.len()));
    }
    let Some(first) = matches.first() else {
        return Ok("unknown".to_string());
    };
    if kind == "color" {
        return Ok(first.color.to_string());
    }
    let (cx, cy) = first.center();
    Ok(region_of_point(cx, cy, canvas).to_string())
}

/// The detector's answer to a ShapeWorld question; Err if the question is not one.
pub fn answer_question(rgb: &[u8], canvas: impl Into<Canvas>, question: &str) -> Result<String, Error> {
    let canvas = canvas.into();
    question_type(question)?;
    answer_from_detections(&detect(rgb, canvas), canvas, question)
}

// ---------------------------------------------------------------------------------------------
// Editing

/// A parsed edit instruction: kind is one of EDIT_TYPES; `color` for recolor/add,
/// `direction` for move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Edit {
    pub kind: &'static str,
    pub shape: &'static str,
    pub color: Option<&'static str>,
    pub direction: Option<&'static str>,
}

/// `make the {shape} {color}`, `remove the {shape}`, `add a(n) {color} {shape}`,
/// `move the {shape} to the {left,right,top,bottom}`; Err for anything else.
pub fn parse_instruction(instruction: &str) -> Result<Edit, Error> {
    if let Some(rest) = instruction.strip_prefix("make the ") {
        if let Some((s, c)) = rest.split_once(' ') {
            if let (Some(shape), Some(color)) = (lookup(&SHAPES, s), lookup(&COLORS, c)) {
                return Ok(Edit { kind: "recolor", shape, color: Some(color), direction: None });
            }
        }
    }
    if let Some(rest) = instruction.strip_prefix("remove the ") {
        if let Some(shape) = lookup(&SHAPES, rest) {
            return Ok(Edit { kind: "remove", shape, color: None, direction: None });
        }
    }
    if let Some(rest) = instruction.strip_prefix("add an ").or_else(|| instruction.strip_prefix("add a ")) {
        if let Some((c, s)) = rest.split_once(' ') {
            if let (Some(shape), Some(color)) = (lookup(&SHAPES, s), lookup(&COLORS, c)) {
                return Ok(Edit { kind: "add", shape, color: Some(color), direction: None });
            }
        }
    }
    if let Some(rest) = instruction.strip_prefix("move the ") {
        if let Some((s, d)) = rest.split_once(" to the ") {
            if let (Some(shape), Some(direction)) = (lookup(&SHAPES, s), lookup(&MOVE_WORDS, d)) {
                return Ok(Edit { kind: "move", shape, color: None, direction: Some(direction) });
            }
        }
    }
    Err(Error::Grammar(format!("not a ShapeWorld instruction: {instruction:?}")))
}

/// Box sides (the larger of width and height) within EDIT_SIZE_TOLERANCE_PX or within
/// EDIT_SIZE_TOLERANCE (ratio) of each other.
fn same_size(a: &Detection, b: &Detection) -> bool {
    let (side_a, side_b) = (a.width().max(a.height()), b.width().max(b.height()));
    side_a.abs_diff(side_b) <= EDIT_SIZE_TOLERANCE_PX
        || (side_a as f64 / side_b as f64 - 1.0).abs() <= EDIT_SIZE_TOLERANCE
}

fn same_place(a: &Detection, b: &Detection, canvas: Canvas) -> bool {
    let ((ax, ay), (bx, by)) = (a.center(), b.center());
    let near = (ax - bx).abs().max((ay - by).abs()) <= EDIT_CENTER_TOLERANCE * canvas.short_side() as f64;
    near && same_size(a, b)
}

/// (success, reason) from detections of the source and the edited image; the reference's
/// `edit_success`. The instruction's clauses must hold in `after` and every other object of
/// `before` be unchanged (same shape, colour, place and size), with nothing else added.
/// `image_size` is the source image's canvas (the reference's `before.shape[:2]`).
pub fn edit_verdict_from_detections(
    before: &[Detection],
    edit: &Edit,
    after: &[Detection],
    image_size: impl Into<Canvas>,
) -> (bool, String) {
    let image_size = image_size.into();
    let old: Vec<&Detection> = before.iter().filter(|d| d.shape.is_some()).collect();
    let new: Vec<&Detection> = after.iter().filter(|d| d.shape.is_some()).collect();
    let mut target: Option<usize> = None;
    if edit.kind != "add" {
        match old.iter().position(|d| d.shape == Some(edit.shape)) {
            Some(i) => target = Some(i),
            None => return (false, format!("no {} in the source image", edit.shape)),
        }
    }
    let mut unmatched = new.clone();
    for (i, d) in old.iter().enumerate() {
        if Some(i) == target {
            continue;
        }
        let twin =
            unmatched.iter().position(|n| n.shape == d.shape && n.color == d.color && same_place(n, d, image_size));
        match twin {
            Some(j) => {
                unmatched.remove(j);
            }
            None => return (false, format!("the {} {} changed", d.color, d.shape.unwrap())),
        }
    }
    let expected = if edit.kind == "remove" { 0 } else { 1 };
    if unmatched.len() != expected {
        return (false, format!("expected {expected} changed object(s), found {}", unmatched.len()));
    }
    if expected == 0 {
        return (true, String::new());
    }
    let changed = unmatched[0];
    if changed.shape != Some(edit.shape) {
        return (false, format!("changed object is a {}", changed.shape.unwrap()));
    }
    let ok = match edit.kind {
        "recolor" => {
            let target = old[target.unwrap()];
            Some(changed.color) == edit.color && same_place(changed, target, image_size)
        }
        "add" => Some(changed.color) == edit.color,
        _ => {
            let target = old[target.unwrap()];
            let (cx, cy) = changed.center();
            changed.color == target.color
                && same_size(changed, target)
                && Some(region_of_point(cx, cy, image_size)) == edit.direction
        }
    };
    (ok, if ok { String::new() } else { format!("the {} is not as instructed", edit.shape) })
}

/// (success, reason) of an edit: the reference's `edit_success`; Err if the instruction is
/// not a ShapeWorld instruction. Both images are on `canvas` (a side, or (height, width)).
pub fn edit_verdict(
    before: &[u8],
    instruction: &str,
    after: &[u8],
    canvas: impl Into<Canvas>,
) -> Result<(bool, String), Error> {
    let canvas = canvas.into();
    let edit = parse_instruction(instruction)?;
    Ok(edit_verdict_from_detections(&detect(before, canvas), &edit, &detect(after, canvas), canvas))
}

/// Whether `after` is `before` edited as instructed; Err if the instruction is not a
/// ShapeWorld instruction.
pub fn edit_success(before: &[u8], instruction: &str, after: &[u8], canvas: impl Into<Canvas>) -> Result<bool, Error> {
    edit_verdict(before, instruction, after, canvas).map(|(ok, _)| ok)
}

// ---------------------------------------------------------------------------------------------
// PNG

/// A square PNG as RGB8 (alpha dropped, grey expanded, 16-bit reduced to 8): (pixels, side).
/// Err for a non-square PNG; [`load_png_canvas`] reads any canvas.
pub fn load_png_rgb(path: impl AsRef<Path>) -> Result<(Vec<u8>, usize), Error> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| png_err(Some(path), e))?;
    decode_png_rgb(&bytes).map_err(|e| in_file(path, e))
}

/// [`load_png_rgb`] from the bytes of a PNG file.
pub fn decode_png_rgb(bytes: &[u8]) -> Result<(Vec<u8>, usize), Error> {
    let (rgb, canvas) = decode_png_canvas(bytes)?;
    if !canvas.is_square() {
        return Err(png_err(None, format!("{}x{} is not square", canvas.width, canvas.height)));
    }
    Ok((rgb, canvas.width))
}

/// A PNG of any canvas as RGB8, row-major (alpha dropped, grey expanded, 16-bit reduced to 8):
/// (pixels, height x width).
pub fn load_png_canvas(path: impl AsRef<Path>) -> Result<(Vec<u8>, Canvas), Error> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| png_err(Some(path), e))?;
    decode_png_canvas(&bytes).map_err(|e| in_file(path, e))
}

/// Largest input image (pixels): 8192 x 8192.
pub const MAX_IMAGE_PIXELS: u64 = 8192 * 8192;

/// [`load_png_canvas`] from the bytes of a PNG file.
pub fn decode_png_canvas(bytes: &[u8]) -> Result<(Vec<u8>, Canvas), Error> {
    // The decoder's own allocations (metadata chunks) are capped, and the image is checked
    // against MAX_IMAGE_PIXELS from its header, before the pixel buffer is allocated.
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), png::Limits { bytes: 16 << 20 });
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| png_err(None, e))?;
    let (w, h) = (reader.info().width as u64, reader.info().height as u64);
    if w * h > MAX_IMAGE_PIXELS {
        return Err(png_err(None, format!("{w}x{h} is above the {MAX_IMAGE_PIXELS} pixels an input image may have")));
    }
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| png_err(None, e))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(png_err(None, "palette not expanded")),
    };
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let row = &buf[y * info.line_size..y * info.line_size + w * channels];
        for px in row.chunks_exact(channels) {
            if channels < 3 {
                rgb.extend_from_slice(&[px[0]; 3]);
            } else {
                rgb.extend_from_slice(&px[..3]);
            }
        }
    }
    Ok((rgb, Canvas::new(h, w)))
}

/// Write an RGB8 image on `canvas` (a side, or (height, width)) as PNG.
pub fn save_png_rgb(path: impl AsRef<Path>, rgb: &[u8], canvas: impl Into<Canvas>) -> Result<(), Error> {
    let path = path.as_ref();
    let canvas = canvas.into();
    let (height, width) = (canvas.height, canvas.width);
    if rgb.len() != height * width * 3 {
        return Err(png_err(Some(path), format!("{} bytes is not a {height}x{width} (height x width) RGB8 image", rgb.len())));
    }
    let file = std::fs::File::create(path).map_err(|e| png_err(Some(path), e))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| png_err(Some(path), e))?;
    writer.write_image_data(rgb).map_err(|e| png_err(Some(path), e))?;
    writer.finish().map_err(|e| png_err(Some(path), e))
}
