//! ShapeEval against the Python reference (tools/reference/shapeeval.py, shapeworld.py).
//!
//! Fixtures: `tests/golden/shapeeval/` (PNGs + fixtures.json), made by
//! `OMP_NUM_THREADS=1 python tools/reference/make_shapeeval_fixtures.py`. Every detection
//! (shape, colour, area, box and the bit patterns of fill, solidity, symmetry and corners),
//! every verdict, answer, parse and reason must equal Python's; the evaluation prompt sets
//! (computed in Rust through numpy's SeedSequence + PCG64) must equal Python's entry for entry.
//! Needs `pub mod shapeeval;` in model/src/lib.rs.

use std::collections::HashMap;

use nextflow_model::shapeeval as se;

use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/shapeeval");

fn fixtures() -> Value {
    let text = std::fs::read_to_string(format!("{DIR}/fixtures.json")).expect("fixtures.json");
    serde_json::from_str(&text).unwrap()
}

struct Images(HashMap<String, (Vec<u8>, usize)>);

impl Images {
    fn new() -> Images {
        Images(HashMap::new())
    }

    fn get(&mut self, name: &str) -> &(Vec<u8>, usize) {
        self.0.entry(name.to_string()).or_insert_with(|| se::load_png_rgb(format!("{DIR}/{name}")).unwrap())
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn opt_str(v: &Value) -> Option<&str> {
    v.as_str()
}

#[test]
fn rng_matches_numpy_pcg64() {
    let fx = fixtures();
    for case in fx["rng"].as_array().unwrap() {
        let mut rng = se::sample_rng(case["seed"].as_u64().unwrap(), s(&case["kind"]), case["index"].as_u64().unwrap());
        for bits in case["bits"].as_array().unwrap() {
            let x = rng.random();
            assert_eq!(x.to_bits(), bits.as_u64().unwrap(), "{case}");
        }
    }
}

#[test]
fn eval_prompts_match_python() {
    let fx = fixtures();
    let counts = &fx["prompt_combination_counts"];
    for task in se::TASKS {
        assert_eq!(se::prompt_combinations(task).unwrap().len() as u64, counts[task].as_u64().unwrap(), "{task}");
    }
    assert!(se::prompt_combinations("nope").is_err());
    for set in fx["eval_prompts"].as_array().unwrap() {
        let (n, seed) = (set["n_per_task"].as_u64().unwrap() as usize, set["seed"].as_u64().unwrap());
        let ours = se::eval_prompts(n, seed);
        let theirs = set["prompts"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len());
        assert_eq!(ours.len(), 6 * n);
        for (a, b) in ours.iter().zip(theirs) {
            assert_eq!(serde_json::to_value(a).unwrap(), *b, "eval_prompts({n}, {seed}) entry {}", a.index);
            let parsed: se::EvalPrompt = serde_json::from_value(b.clone()).unwrap();
            assert_eq!(&parsed, a);
        }
    }
}

#[test]
fn detections_match_python() {
    let fx = fixtures();
    let mut images = Images::new();
    let mut n_detections = 0;
    let table = fx["images"].as_object().unwrap();
    for (name, info) in table {
        let (rgb, size) = images.get(name).clone();
        assert_eq!(size as u64, info["size"].as_u64().unwrap(), "{name}");
        let ours = se::detect(&rgb, size);
        let theirs = info["detections"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}: {ours:?}");
        for (d, t) in ours.iter().zip(theirs) {
            assert_eq!(d.shape, opt_str(&t["shape"]), "{name}: {d:?} vs {t}");
            assert_eq!(d.color, s(&t["color"]), "{name}: {d:?} vs {t}");
            assert_eq!(d.area as u64, t["area"].as_u64().unwrap(), "{name}");
            let bx: Vec<usize> = t["box"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!([d.x0, d.y0, d.x1, d.y1].to_vec(), bx, "{name}");
            let bits: Vec<u64> = t["bits"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(
                [d.fill.to_bits(), d.solidity.to_bits(), d.symmetry.to_bits(), d.corners.to_bits()].to_vec(),
                bits,
                "{name}: fill/solidity/symmetry/corners {d:?}"
            );
            n_detections += 1;
        }
    }
    assert!(table.len() >= 100 && n_detections >= 250, "{} images, {n_detections} detections", table.len());
    eprintln!("detections: {} images, {n_detections} detections, all equal", table.len());
}

#[test]
fn t2i_verdicts_match_python() {
    let fx = fixtures();
    let mut images = Images::new();
    let cases = fx["t2i"].as_array().unwrap();
    let mut results = Vec::new();
    for case in cases {
        let (rgb, size) = images.get(s(&case["image"])).clone();
        let clauses: se::Clauses = serde_json::from_value(case["clauses"].clone()).unwrap();
        let (correct, reasons) = se::evaluate_clauses(&se::detect(&rgb, size), &clauses);
        let want: Vec<&str> = case["reasons"].as_array().unwrap().iter().map(s).collect();
        assert_eq!(correct, case["correct"].as_bool().unwrap(), "{case}: {reasons:?}");
        assert_eq!(reasons, want, "{case}");
        results.push((s(&case["task"]).to_string(), correct));
    }
    let n_wrong = results.iter().filter(|r| !r.1).count();
    assert!(cases.len() >= 150 && n_wrong >= 30, "{} cases, {n_wrong} incorrect", cases.len());
    let close = |a: f64, b: &Value| (a - b.as_f64().unwrap()).abs() <= 1e-12;
    let n_gt = fx["t2i_ground_truth_cases"].as_u64().unwrap() as usize;
    for (name, subset) in [
        ("all", results.clone()),
        ("ground_truth", results[..n_gt].to_vec()),
        ("single_object_only", results.iter().filter(|r| r.0 == "single_object").cloned().collect()),
    ] {
        let ours = se::score_t2i(&subset);
        let theirs = &fx["t2i_scores"][name];
        for key in se::TASKS.iter().chain(["overall"].iter()) {
            assert!(close(ours.get(key).unwrap(), &theirs[*key]), "{name} {key}: {ours:?} vs {theirs}");
        }
    }
    eprintln!("t2i: {} cases ({n_wrong} incorrect), all verdicts and reasons equal", cases.len());
}

/// The first cases are the ground truth of eval_prompts(10, 0), rendered by Python: the Rust
/// prompt set must name the same prompts and the Rust scorer must give 1.0 on all six tasks.
#[test]
fn ground_truth_of_eval_prompts_scores_one() {
    let fx = fixtures();
    let mut images = Images::new();
    let prompts = se::eval_prompts(10, 0);
    let cases = fx["t2i"].as_array().unwrap();
    assert_eq!(fx["t2i_ground_truth_cases"].as_u64().unwrap() as usize, prompts.len());
    let mut results = Vec::new();
    for (entry, case) in prompts.iter().zip(cases) {
        assert_eq!(s(&case["image"]), format!("gt10_{:02}.png", entry.index));
        assert_eq!(entry.prompt, s(&case["prompt"]));
        assert_eq!(entry.task, s(&case["task"]));
        let (rgb, size) = images.get(s(&case["image"])).clone();
        let (correct, reasons) = se::score_image(&rgb, size, entry);
        assert!(correct, "{}: {reasons:?}", entry.prompt);
        results.push((entry.task.clone(), correct));
    }
    let scores = se::score_t2i(&results);
    assert_eq!(scores.overall, 1.0, "{scores:?}");
}

#[test]
fn understanding_matches_python() {
    let fx = fixtures();
    let mut images = Images::new();
    let cases = fx["understanding"].as_array().unwrap();
    for case in cases {
        let (rgb, size) = images.get(s(&case["image"])).clone();
        let answer = se::answer_question(&rgb, size, s(&case["question"])).unwrap();
        assert_eq!(answer, s(&case["answer"]), "{case}");
        if let Some(truth) = opt_str(&case["truth"]) {
            assert_eq!(answer, truth, "{case}");
        }
    }
    let parsed = fx["question_types"].as_array().unwrap();
    for case in parsed {
        let q = s(&case["question"]);
        match se::question_type(q) {
            Ok((kind, shape)) => {
                assert_eq!(kind, s(&case["type"]), "{case}");
                assert_eq!(shape, opt_str(&case["shape"]), "{case}");
                assert_eq!(se::make_question(kind, shape.unwrap_or("")).unwrap(), q);
            }
            Err(_) => assert!(case["error"].as_bool().unwrap(), "{case}"),
        }
    }
    assert!(se::answer_question(&vec![192; 3 * 64 * 64], 64, "what is this?").is_err());
    eprintln!("understanding: {} answers, {} question parses, all equal", cases.len(), parsed.len());
}

#[test]
fn editing_matches_python() {
    let fx = fixtures();
    let mut images = Images::new();
    let parsed = fx["instructions"].as_array().unwrap();
    for case in parsed {
        match se::parse_instruction(s(&case["instruction"])) {
            Ok(edit) => {
                let p = &case["parsed"];
                assert!(p.is_object(), "{case}: {edit:?}");
                assert_eq!(edit.kind, s(&p["type"]), "{case}");
                assert_eq!(edit.shape, s(&p["shape"]), "{case}");
                assert_eq!(edit.color, opt_str(&p["color"]), "{case}");
                assert_eq!(edit.direction, opt_str(&p["direction"]), "{case}");
            }
            Err(_) => assert!(case["error"].as_bool().unwrap(), "{case}"),
        }
    }
    let cases = fx["edits"].as_array().unwrap();
    for case in cases {
        let (before, size) = images.get(s(&case["before"])).clone();
        let (after, _) = images.get(s(&case["after"])).clone();
        let (ok, reason) = se::edit_verdict(&before, s(&case["instruction"]), &after, size).unwrap();
        assert_eq!(ok, case["success"].as_bool().unwrap(), "{case}: {reason}");
        assert_eq!(reason, s(&case["reason"]), "{case}");
        assert_eq!(se::edit_success(&before, s(&case["instruction"]), &after, size).unwrap(), ok);
    }
    eprintln!("editing: {} instruction parses, {} edit verdicts, all equal", parsed.len(), cases.len());
}

#[test]
fn png_round_trip() {
    let (rgb, size) = se::load_png_rgb(format!("{DIR}/gt10_00.png")).unwrap();
    let path = std::env::temp_dir().join(format!("shapeeval_roundtrip_{}.png", std::process::id()));
    se::save_png_rgb(&path, &rgb, size).unwrap();
    let (back, side) = se::load_png_rgb(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!((back, side), (rgb, size));
    assert!(se::save_png_rgb(&path, &[0; 5], 2).is_err());
}
