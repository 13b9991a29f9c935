//! PyTorch checkpoints (`torch.save`, zip format) read by the pure-Rust reader
//! (model/src/torch_file.rs, model/src/pickle.rs): every tensor of the fixtures equals what
//! PyTorch saved, nested checkpoints yield their `model`, code-running, legacy and truncated
//! files are refused with one clear line, and mutated files never panic. Fixtures:
//! tools/reference/make_torch_fixtures.py.

use nextflow::model::{pickle, pickle_globals, Weights};
use nextflow_runtime::{DType, Device};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/torch").join(name)
}

fn expected(name: &str) -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The values of `name` as f64, through `get_any` for floats and the raw bytes otherwise.
fn values(w: &Weights, name: &str) -> Vec<f64> {
    let info = w.info(name).unwrap();
    let raw = w.raw(name).unwrap();
    let n = |k: usize| raw.chunks_exact(k).map(|c| c.to_vec()).collect::<Vec<_>>();
    match info.dtype.name() {
        "F32" | "F16" | "BF16" => w.get_any(name, DType::F32, &Device::cpu()).unwrap().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect(),
        "F64" => n(8).iter().map(|c| f64::from_le_bytes(c[..].try_into().unwrap())).collect(),
        "I64" => n(8).iter().map(|c| i64::from_le_bytes(c[..].try_into().unwrap()) as f64).collect(),
        "I32" => n(4).iter().map(|c| i32::from_le_bytes(c[..].try_into().unwrap()) as f64).collect(),
        "I16" => n(2).iter().map(|c| i16::from_le_bytes(c[..].try_into().unwrap()) as f64).collect(),
        "I8" => raw.iter().map(|&b| b as i8 as f64).collect(),
        "U8" | "BOOL" => raw.iter().map(|&b| b as f64).collect(),
        other => panic!("{name}: unexpected dtype {other}"),
    }
}

/// Every tensor of `w` equals `json` (dtype, shape, values), and nothing else is in `w`.
fn check_against(w: &Weights, json: &serde_json::Map<String, serde_json::Value>) {
    let mut names: Vec<&str> = w.names().collect();
    let mut want: Vec<&str> = json.keys().map(String::as_str).collect();
    names.sort();
    want.sort();
    assert_eq!(names, want);
    for (name, e) in json {
        let info = w.info(name).unwrap();
        assert_eq!(info.dtype.name(), e["dtype"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = e["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(info.shape, shape, "{name}");
        let want: Vec<f64> = e["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let got = values(w, name);
        if matches!(info.dtype.name(), "F32" | "F16" | "BF16") {
            let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            let got: Vec<f32> = got.iter().map(|&v| v as f32).collect();
            assert_eq!(got, want, "{name}");
        } else if info.dtype.name() == "F64" {
            // serde_json (without `float_roundtrip`) may parse the last digit one ulp off.
            assert_eq!(got.len(), want.len(), "{name}");
            assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-15 * w.abs()), "{name}: {got:?} != {want:?}");
        } else {
            assert_eq!(got, want, "{name}");
        }
    }
}

#[test]
fn state_dict_tensors_equal_what_pytorch_saved() {
    let w = Weights::open_torch(&fixture("state_dict.pt")).unwrap();
    check_against(&w, &expected("state_dict.json"));
    let notes = w.torch_notes().unwrap();
    assert_eq!(notes.state_dict_key, None);
    assert!(notes.ignored.is_empty());
    assert_eq!(notes.skipped, ["an_int (int)", "nothing (None)", "a_string (str)"]);
    // The transposed, expanded and column views were copied; everything else maps the file.
    let files = w.files();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[1].1, 4 * (15 + 12 + 8));
    // Loads at a shape the model asks for, in every float dtype.
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let t = w.get("seq.0.weight", &[3, 4], dtype, &Device::cpu()).unwrap();
        assert_eq!(t.shape(), &[3, 4]);
    }
    assert!(w.get("seq.0.weight", &[4, 3], DType::F32, &Device::cpu()).is_err());
}

#[test]
fn protocol_4_pickles_load() {
    let w = Weights::open_torch(&fixture("protocol4.pt")).unwrap();
    check_against(&w, &expected("state_protocol4.json"));
}

#[test]
fn nested_checkpoint_yields_its_model() {
    let w = Weights::open_torch(&fixture("nested.pt")).unwrap();
    check_against(&w, &expected("nested.json"));
    let notes = w.torch_notes().unwrap();
    assert_eq!(notes.state_dict_key.as_deref(), Some("model"));
    assert_eq!(notes.ignored, ["optimizer", "step"]);
    assert!(notes.skipped.is_empty());
}

#[test]
fn code_running_checkpoint_is_refused_and_runs_nothing() {
    let canary = Path::new("/tmp/pwned");
    let _ = std::fs::remove_file(canary);
    let path = fixture("malicious.pt");
    let e = Weights::open_torch(&path).err().expect("refused").to_string();
    println!("{e}");
    assert!(e.starts_with(&path.display().to_string()), "{e}");
    assert!(["`posix.system`", "`os.system`", "`nt.system`"].iter().any(|g| e.contains(g)), "{e}");
    assert!(e.contains("wants to run code") && e.contains("refused") && !e.contains('\n'), "{e}");
    let globals = pickle_globals(&path).unwrap();
    assert!(globals.iter().any(|g| g.ends_with(".system")), "{globals:?}");
    assert!(!canary.exists(), "something ran the checkpoint's code");
}

#[test]
fn globals_of_a_state_dict_are_listed() {
    let g = pickle_globals(&fixture("state_dict.pt")).unwrap();
    for want in ["collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter", "torch.FloatStorage", "torch.BFloat16Storage"] {
        assert!(g.iter().any(|x| x == want), "{want} not in {g:?}");
    }
}

#[test]
fn legacy_and_truncated_files_get_clear_errors() {
    let e = Weights::open_torch(&fixture("legacy.pt")).err().unwrap().to_string();
    println!("{e}");
    assert!(e.contains("legacy") && e.contains("before PyTorch 1.6") && e.contains("re-save"), "{e}");
    let e = Weights::open_torch(&fixture("truncated.pt")).err().unwrap().to_string();
    println!("{e}");
    assert!(e.contains("truncated.pt") && e.contains("truncated"), "{e}");
    let e = Weights::open_torch(&fixture("state_dict.json")).err().unwrap().to_string();
    assert!(e.contains("not a PyTorch checkpoint"), "{e}");
}

/// The offset of data.pkl's bytes in a torch zip (the first entry, as torch writes it).
fn pkl_start(bytes: &[u8]) -> usize {
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]) as usize;
    30 + u16_at(26) + u16_at(28)
}

#[test]
fn unknown_opcode_is_named() {
    let e = pickle::parse(b"\x80\x02}\xfe.").unwrap_err();
    assert!(e.contains("offset 3, opcode 0xfe: unknown"), "{e}");
    // The same inside a checkpoint: data.pkl's first opcode after PROTO becomes 0xfe.
    let mut bytes = std::fs::read(fixture("state_dict.pt")).unwrap();
    let at = pkl_start(&bytes);
    assert_eq!(&bytes[at..at + 3], b"\x80\x02c");
    bytes[at + 2] = 0xfe;
    let e = Weights::open_torch_bytes("mutated.pt", bytes).err().unwrap().to_string();
    assert!(e.starts_with("mutated.pt: state_dict/data.pkl:") && e.contains("offset 2, opcode 0xfe: unknown"), "{e}");
}

#[test]
fn mutated_checkpoints_never_panic() {
    let good = std::fs::read(fixture("state_dict.pt")).unwrap();
    let pkl = pkl_start(&good);
    let mut s: u64 = 0x5eed;
    let mut next = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as usize
    };
    let (mut ok, mut err) = (0, 0);
    for i in 0..600 {
        let mut b = good.clone();
        // Half of the mutations hit the pickle, the rest anywhere (storages, zip headers, end records).
        let at = if i % 2 == 0 { pkl + next() % 1869 } else { next() % b.len() };
        match i % 4 {
            0 => b[at] ^= 1 << (next() % 8),
            1 => b.truncate(at),
            2 => b[at..(at + 4).min(good.len())].fill(0xff),
            _ => b[at] = next() as u8,
        }
        let r = std::panic::catch_unwind(|| {
            let w = Weights::open_torch_bytes("mutated.pt", b)?;
            for name in w.names().map(String::from).collect::<Vec<_>>() {
                let info = w.info(&name).unwrap();
                if matches!(info.dtype.name(), "F32" | "F16" | "BF16") {
                    w.get_any(&name, DType::F32, &Device::cpu())?;
                }
                let _ = w.raw(&name);
            }
            Ok::<_, nextflow::model::Error>(())
        });
        match r {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                assert!(!e.to_string().contains('\n'), "{e}");
                err += 1
            }
            Err(_) => panic!("mutation {i} (at {at}) panicked"),
        }
    }
    println!("600 mutations: {ok} loaded, {err} refused");
    assert!(err > 100, "{err}");
}
