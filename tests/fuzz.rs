//! Fuzzing in pure Rust (property tests with `proptest`, no libFuzzer, no C toolchain): every
//! parser that reads input a user or a model directory supplies must return Ok or an error —
//! never panic, abort or hang — on any input.
//!
//! Targets: the safetensors header parser (and tensor conversion), config.json, PNG decoding,
//! the text tokenizer (and streaming detokenisation), NextFlow's prompt words, the chat
//! template, and the CLI argument space (parsing plus every check a command makes before it
//! loads a model).
//!
//! Short mode (CI): `FUZZ_CASES` unset, a few hundred cases per target. Long mode:
//!
//!     FUZZ_CASES=100000 cargo test --release --test fuzz -- --nocapture --test-threads 2
//!
//! Each target prints its case count and time. A watchdog ends the run (exit 3) when one
//! case takes longer than `FUZZ_CASE_LIMIT_S` (default 60 s), printing the case: a hang.

use nextflow::cli::{run, Cli};
use nextflow::model::{Config, Message, NextFlow, StreamDecoder, TextTokenizer, Weights};
use nextflow::shapeeval;
use nextflow::runtime::{DType, Device};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const QWEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/qwen2-tiny");

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}

/// The case running in each target (by name) and since when: the watchdog's view.
static RUNNING: Mutex<Vec<(&'static str, Instant, String)>> = Mutex::new(Vec::new());

fn watchdog() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let limit = std::env::var("FUZZ_CASE_LIMIT_S").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((name, _, case)) = running.iter().find(|(_, t, _)| t.elapsed() > Duration::from_secs(limit)) {
                eprintln!("HANG: fuzz target {name} ran one case for more than {limit} s: {case}");
                std::process::exit(3);
            }
        });
    });
}

/// Runs `body` on `cases()` inputs of `strategy`, under the watchdog; prints count and time.
fn fuzz<S: Strategy>(name: &'static str, strategy: S, body: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    watchdog();
    let n = cases();
    let mut runner = TestRunner::new(RunnerConfig { cases: n, failure_persistence: None, max_shrink_iters: 256, ..RunnerConfig::default() });
    let done = AtomicU64::new(0);
    let start = Instant::now();
    let result = runner.run(&strategy, |value| {
        let case: String = format!("{value:?}").chars().take(300).collect();
        RUNNING.lock().unwrap_or_else(|e| e.into_inner()).push((name, Instant::now(), case));
        body(value);
        RUNNING.lock().unwrap_or_else(|e| e.into_inner()).retain(|(n, _, _)| *n != name);
        done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).retain(|(n, _, _)| *n != name);
    println!("fuzz {name}: {} cases in {:.1} s, 0 panics", done.load(Ordering::Relaxed), start.elapsed().as_secs_f64());
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

/// Bytes with structure: a base input, mutated (flips, truncation, insertion, splices).
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len().max(1);
    prop::collection::vec((0..4u8, 0..len, any::<u8>(), 0..64usize), 0..12).prop_map(move |edits| {
        let mut b = base.clone();
        for (kind, at, byte, n) in edits {
            let at = at.min(b.len());
            match kind {
                0 => {
                    if at < b.len() {
                        b[at] ^= byte | 1;
                    }
                }
                1 => b.truncate(at),
                2 => b.splice(at..at, std::iter::repeat_n(byte, n)).for_each(drop),
                _ => {
                    let end = (at + n).min(b.len());
                    b.drain(at..end);
                }
            }
        }
        b
    })
}

/// Numbers a hostile file would put in a size field.
fn hostile_number() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        (0u64..70).prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (0u32..64).prop_map(|e| serde_json::Value::from(1u64 << e)),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        Just(serde_json::json!("1")),
        Just(serde_json::json!([])),
        Just(serde_json::json!([1, 2])),
    ]
}

// ---- safetensors --------------------------------------------------------------------------

fn header_entry() -> impl Strategy<Value = (String, serde_json::Value)> {
    let dtype = prop_oneof![Just("F32"), Just("F16"), Just("BF16"), Just("I64"), Just("BOOL"), Just("F8"), Just("")];
    let dim = prop_oneof![0u64..9, any::<u64>(), (0u32..64).prop_map(|e| 1u64 << e)];
    ("[a-z.]{1,12}", dtype, prop::collection::vec(dim, 0..4), prop::collection::vec(0u64..200, 0..3), any::<bool>()).prop_map(|(name, dtype, shape, offsets, fit)| {
        // Half the entries get consistent offsets, so parsing goes past the checks to the data.
        let size: Option<u64> = shape.iter().try_fold(4u64, |n, &d| n.checked_mul(d));
        let offsets = match (fit, size) {
            (true, Some(s)) if s < 4096 => vec![0, s],
            _ => offsets,
        };
        (name, serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}))
    })
}

#[test]
fn fuzz_safetensors() {
    let structured = (prop::collection::vec(header_entry(), 0..5), 0usize..4096, any::<i64>()).prop_map(|(entries, data_len, header_len_delta)| {
        let header = serde_json::Value::Object(entries.into_iter().collect()).to_string();
        let declared = if header_len_delta % 7 == 0 { (header.len() as i64).wrapping_add(header_len_delta % 1000) as u64 } else { header.len() as u64 };
        let mut bytes = declared.to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0x3fu8, data_len));
        bytes
    });
    let real = std::fs::read(format!("{QWEN}/model.safetensors")).unwrap()[..4096].to_vec();
    let strategy = prop_oneof![structured, mutated(real), prop::collection::vec(any::<u8>(), 0..64)];
    fuzz("safetensors", strategy, |bytes| {
        if let Ok(w) = Weights::from_bytes("fuzz.safetensors", bytes) {
            let names: Vec<String> = w.names().map(str::to_string).collect();
            for name in names {
                let _ = w.get_any(&name, DType::F32, &Device::cpu());
                let _ = w.get(&name, &[2, 3], DType::F16, &Device::cpu());
            }
        }
    });
}

// ---- config.json ----------------------------------------------------------------------------

/// Every (section, field) path of a config, to mutate one at a time.
fn field_paths(v: &serde_json::Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let serde_json::Value::Object(m) = v {
        for (k, child) in m {
            prefix.push(k.clone());
            out.push(prefix.clone());
            field_paths(child, prefix, out);
            prefix.pop();
        }
    }
}

#[test]
fn fuzz_config_json() {
    let base: serde_json::Value = serde_json::from_str(nextflow::model::embedded::CONFIG).unwrap();
    let qwen: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(format!("{QWEN}/config.json")).unwrap()).unwrap();
    let mut paths = Vec::new();
    field_paths(&base, &mut Vec::new(), &mut paths);
    let mut qwen_paths = Vec::new();
    field_paths(&qwen, &mut Vec::new(), &mut qwen_paths);
    let structured = (any::<bool>(), prop::collection::vec((any::<prop::sample::Index>(), hostile_number()), 1..5)).prop_map(move |(nextflow, edits)| {
        let (mut v, paths) = if nextflow { (base.clone(), &paths) } else { (qwen.clone(), &qwen_paths) };
        for (i, value) in edits {
            let path = i.get(paths);
            let mut at = &mut v;
            for k in &path[..path.len() - 1] {
                at = &mut at[k.as_str()];
            }
            if at.is_object() {
                at[path[path.len() - 1].as_str()] = value;
            }
        }
        v.to_string().into_bytes()
    });
    let text = mutated(nextflow::model::embedded::CONFIG.as_bytes().to_vec());
    fuzz("config.json", prop_oneof![3 => structured, 1 => text], |bytes| {
        let Ok(text) = String::from_utf8(bytes) else { return };
        if let Ok(c) = Config::from_json(&text) {
            // What the CLI derives from a validated config must not overflow or panic.
            let _ = c.transformer_parameters();
            if let Ok(p) = c.parts() {
                for ((h, w), scales) in p.tokenizer.canvases() {
                    let _ = (h * w, scales.iter().map(|[a, b]| a * b).sum::<usize>());
                }
                let _ = (p.tokenizer.tokens(), p.tokenizer.code_dim(), p.vocabulary.size());
            }
        }
    });
}

// ---- PNG ----------------------------------------------------------------------------------

#[test]
fn fuzz_png() {
    let mut rgb = vec![0u8; 32 * 24 * 3];
    for (i, p) in rgb.iter_mut().enumerate() {
        *p = (i * 7 % 251) as u8;
    }
    let dir = std::env::temp_dir().join(format!("nextflow-fuzz-png-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("base.png");
    shapeeval::save_png_rgb(&file, &rgb, (24, 32)).unwrap();
    let base = std::fs::read(&file).unwrap();
    // Headers declaring any size over tiny data (the decompression-bomb shape).
    let declared = (any::<u32>(), any::<u32>(), prop_oneof![Just(0u8), Just(2), Just(3), Just(4), Just(6), any::<u8>()], prop_oneof![Just(8u8), Just(16), Just(1), any::<u8>()]).prop_map(|(w, h, color, depth)| {
        let (w, h) = (w % (1 << 17), h % (1 << 17));
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
        let chunk = |kind: &[u8], data: &[u8]| {
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            let mut c = !0u32;
            for &b in &body {
                c ^= b as u32;
                for _ in 0..8 {
                    c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                }
            }
            let mut out = (data.len() as u32).to_be_bytes().to_vec();
            out.extend(body);
            out.extend((!c).to_be_bytes());
            out
        };
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(chunk(b"IHDR", &ihdr));
        png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]));
        png.extend(chunk(b"IEND", &[]));
        png
    });
    fuzz("png", prop_oneof![2 => mutated(base), 1 => declared, 1 => prop::collection::vec(any::<u8>(), 0..128)], |bytes| {
        if let Ok((rgb, canvas)) = shapeeval::decode_png_canvas(&bytes) {
            assert_eq!(rgb.len(), canvas.height * canvas.width * 3);
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- text tokenizer and prompt words ------------------------------------------------------------

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,200}",
        prop::collection::vec(prop_oneof![Just("<|im_start|>"), Just("<|im_end|>"), Just("<boi>"), Just("<pad>"), Just("red"), Just(" "), Just("\u{FFFD}"), Just("é"), Just("\u{0}"), Just("circle"), Just("🙂")], 0..30).prop_map(|v| v.concat()),
    ]
}

fn embedded_model() -> &'static NextFlow {
    static MODEL: OnceLock<NextFlow> = OnceLock::new();
    MODEL.get_or_init(|| {
        let config = Config::from_json(nextflow::model::embedded::CONFIG).unwrap();
        let w = Weights::from_static(nextflow::model::embedded::NAME, nextflow::model::embedded::WEIGHTS).unwrap();
        let text = TextTokenizer::from_bytes(nextflow::model::embedded::TOKENIZER, None).unwrap();
        NextFlow::from_parts(config, &w, Some(text), DType::F32, &Device::cpu()).unwrap()
    })
}

#[test]
fn fuzz_text_tokenizer() {
    let tok = TextTokenizer::load(std::path::Path::new(QWEN)).unwrap();
    let model = embedded_model();
    let ids = prop::collection::vec(prop_oneof![0u32..310, any::<u32>()], 0..40);
    fuzz("tokenizer", (hostile_text(), ids), |(text, ids)| {
        if let Ok(encoded) = tok.encode(&text, false) {
            let _ = tok.decode(&encoded, false);
        }
        let _ = tok.encode_spans(&text);
        let _ = tok.control_token_in(&text);
        let _ = tok.decode(&ids, true);
        let mut stream = StreamDecoder::new(&tok, true);
        for &id in &ids {
            let _ = stream.push(id);
        }
        let _ = stream.finish();
        // NextFlow's prompt words: a sentence of known words, or one clear error.
        if let Ok(words) = model.encode_words(&text) {
            assert!(words.iter().all(|&w| (w as usize) < model.parts().vocabulary.code_start()));
        }
    });
}

// ---- chat template ------------------------------------------------------------------------------

fn template_piece() -> impl Strategy<Value = String> {
    let n = prop_oneof![0u64..5, any::<u32>().prop_map(u64::from), Just(100_000)];
    prop_oneof![
        Just("{% for m in messages %}".to_string()),
        Just("{% endfor %}".to_string()),
        n.clone().prop_map(|n| format!("{{% for i in range({n}) %}}")),
        Just("{% if add_generation_prompt %}".to_string()),
        Just("{% else %}".to_string()),
        Just("{% endif %}".to_string()),
        Just("{{ m['role'] }}".to_string()),
        Just("{{ m.content }}".to_string()),
        Just("{{ messages[0]['content'] | upper }}".to_string()),
        Just("{{ bos_token }}{{ eos_token }}".to_string()),
        Just("{{ raise_exception('no') }}".to_string()),
        Just("{{ undefined_thing.x }}".to_string()),
        n.clone().prop_map(|n| format!("{{{{ 'x' * {n} }}}}")),
        n.prop_map(|n| format!("{{% set x = range({n}) | list %}}")),
        Just("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}".to_string()),
        Just("{{ messages | tojson }}".to_string()),
        Just("{%".to_string()),
        Just("}}".to_string()),
        "[ -~]{0,12}",
    ]
}

#[test]
fn fuzz_chat_template() {
    let base = std::fs::read_to_string(format!("{QWEN}/tokenizer_config.json")).unwrap();
    let tokenizer_json = std::fs::read(format!("{QWEN}/tokenizer.json")).unwrap();
    let messages = prop::collection::vec((prop_oneof![Just("system"), Just("user"), Just("assistant")], hostile_text()), 0..4);
    fuzz("chat template", (prop::collection::vec(template_piece(), 0..10), messages), |(pieces, messages)| {
        let mut config: serde_json::Value = serde_json::from_str(&base).unwrap();
        config["chat_template"] = pieces.concat().into();
        let tok = TextTokenizer::from_bytes(&tokenizer_json, Some(&config.to_string())).unwrap();
        let messages: Vec<Message> = messages.into_iter().map(|(role, content)| Message { role: role.into(), content }).collect();
        let _ = tok.apply_chat_template(&messages, true);
    });
}

// ---- CLI argument space ----------------------------------------------------------------------

fn flag_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("-1".to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("1e40".to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        Just("4294967297".to_string()),
        Just("".to_string()),
        Just("2:1".to_string()),
        Just("0:0".to_string()),
        Just("a red circle".to_string()),
        Just("<boi>".to_string()),
        Just("/".to_string()),
        Just("/proc/x.png".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("out-{i}.png".to_string()),
        Just("nextflow-7b".to_string()),
        Just("qwen2-0.5b".to_string()),
        Just(QWEN.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f32>().prop_map(|f| f.to_string()),
        "[ -~]{0,20}",
    ]
}

#[test]
fn fuzz_cli_arguments() {
    let commands = ["generate", "understand", "edit", "chat", "inspect", "eval", "bench", "devices", "completions", "serve"];
    let flags = [
        "--prompt", "--negative-prompt", "--size", "--aspect", "--num-images", "--max-batch", "--cfg", "--top-k", "--top-p", "--temperature", "--seed", "--out",
        "--force", "--json", "--model", "--config", "--random-weights", "--dtype", "--image", "--max-new-tokens", "--prompt-ids", "--system", "--greedy",
        "--repetition-penalty", "--logits-out", "--images-out", "--n", "--prompt-seed", "--n-other", "--batch", "--min-overall", "--save-images", "--device",
        "--stats", "--reps", "--warmup", "--import", "--export", "-p", "-o", "--help", "--from-png", "--pad", "--quiet", "-n", "-s", "-m", "-i",
        "bash", "zsh",
    ];
    let arg = prop_oneof![3 => prop::sample::select(flags.to_vec()).prop_map(str::to_string), 3 => flag_value()];
    let argv = (prop::sample::select(commands.to_vec()), any::<bool>(), prop::collection::vec(arg, 0..10));
    let dir = std::env::temp_dir().join(format!("nextflow-fuzz-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let before: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(before.is_empty());
    std::env::set_current_dir(&dir).unwrap();
    fuzz("cli", argv, |(command, shapes, args)| {
        let mut argv = vec!["nextflow".to_string(), command.to_string()];
        if command == "eval" && shapes {
            argv.push("shapes".into());
        }
        argv.extend(args);
        use clap::Parser;
        if let Ok(cli) = Cli::try_parse_from(&argv) {
            let _ = run::preflight(&cli);
        }
    });
    // Checking is read-only: nothing was written.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "preflight wrote files");
}
