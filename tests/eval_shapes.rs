//! `nextflow eval shapes` on the embedded model against the PyTorch reference's score on the
//! same prompts (`tests/golden/nextflow-tiny/eval_shapes.json`, `python
//! tools/reference/make_golden.py eval`): the same 60 prompts (10 per task), the same chunks,
//! seeds and Philox sampler, so the images — and so the verdicts — should be the same; the
//! run fails if the overall score drops more than 0.05 below the reference's.

use std::process::Command;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/nextflow-tiny/eval_shapes.json");

#[test]
fn eval_shapes_scores_like_the_reference() {
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(GOLDEN).unwrap()).unwrap();
    let n = reference["n_per_task"].as_u64().unwrap().to_string();
    let batch = reference["batch"].as_u64().unwrap().to_string();
    let seed = reference["seed"].as_u64().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_nextflow"))
        .args(["eval", "shapes", "--n", &n, "--batch", &batch, "--seed", &seed, "--n-other", "2", "--json", "--device", "cpu"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (a, b) = (ours["t2i"]["overall"].as_f64().unwrap(), reference["t2i"]["overall"].as_f64().unwrap());
    let same = ours["correct"].as_array().unwrap().iter().zip(reference["correct"].as_array().unwrap()).filter(|(x, y)| x == y).count();
    println!("overall: ours {a:.3}, reference {b:.3}; per-image verdicts equal for {same} of {}", reference["correct"].as_array().unwrap().len());
    println!("ours: {}", ours["t2i"]);
    println!("understanding {} editing {}", ours["understanding"], ours["editing"]);
    assert!(a >= b - 0.05, "overall t2i score {a:.3} is more than 0.05 below the reference's {b:.3}");
    for kind in ["shape", "color", "count", "where"] {
        assert!(ours["understanding"][kind].is_number(), "understanding {kind} missing: {}", ours["understanding"]);
    }
    for kind in ["recolor", "remove", "add", "move"] {
        assert!(ours["editing"][kind].is_number(), "editing {kind} missing: {}", ours["editing"]);
    }
}
