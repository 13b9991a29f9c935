//! The CLI as a new user meets it: every subcommand's help (snapshots: short flags, defaults,
//! examples), each JSON report's schema (snapshots), PNG metadata that paints its image again
//! byte for byte, JPEG / WebP / non-square inputs, logs without carriage returns, completions.

use clap::CommandFactory;
use nextflow::cli::Cli;
use std::path::Path;

#[path = "common/cli.rs"]
mod cli_common;
use cli_common::{nextflow, scratch};

fn ok(args: &[&str]) -> (String, String) {
    let (code, stdout, stderr) = nextflow(args);
    assert_eq!(code, 0, "nextflow {args:?} failed: {stderr}");
    (stdout, stderr)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every command path: ["generate"], ["eval", "shapes"], ...
fn command_paths(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let mut path = prefix.clone();
        path.push(sub.get_name().to_string());
        if sub.has_subcommands() {
            command_paths(sub, path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_subcommand_help_has_defaults_and_examples() {
    let mut root = Cli::command();
    root.build();
    let mut paths = Vec::new();
    command_paths(&root, Vec::new(), &mut paths);
    assert!(paths.len() >= 9, "{paths:?}");
    let mut missing = Vec::new();
    insta::assert_snapshot!("help_nextflow", root.clone().render_long_help().to_string());
    for path in paths {
        let mut cmd = root.clone();
        for name in &path {
            cmd = cmd.find_subcommand(name).unwrap().clone();
        }
        let help = cmd.render_long_help().to_string();
        assert!(help.contains("Examples:\n  nextflow"), "`{}` has no examples:\n{help}", path.join(" "));
        // Every option has help text; one that takes a value shows its default.
        for arg in cmd.get_arguments().filter(|a| !a.is_positional() && !a.is_hide_set()) {
            let name = arg.get_long().unwrap_or("?");
            let text = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            if text.is_empty() {
                missing.push(format!("`{}` --{name} has no help text", path.join(" ")));
            }
            let takes_value = arg.get_action().takes_values();
            if takes_value && name != "help" {
                let shown = !arg.get_default_values().is_empty() || text.contains("[default:") || text.contains("[required") || arg.is_required_set();
                if !shown {
                    missing.push(format!("`{}` --{name} shows no default: {text}", path.join(" ")));
                }
            }
        }
        insta::assert_snapshot!(format!("help_{}", path.join("_")), help);
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn short_flags_work() {
    let dir = scratch("short");
    let out = dir.join("a.png");
    ok(&["generate", "-p", "a red circle", "-o", s(&out), "-n", "1", "-s", "4", "-q"]);
    assert!(out.exists());
    let (stdout, _) = ok(&["inspect", "-m", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/qwen2-tiny")]);
    assert!(stdout.contains("Qwen2"), "{stdout}");
}

#[test]
fn json_schemas_are_stable() {
    for (name, schema) in nextflow::cli::report::schemas() {
        insta::assert_json_snapshot!(format!("schema_{}", name.replace(' ', "_")), schema);
    }
}

/// Keys every report starts with.
fn assert_meta(v: &serde_json::Value) {
    for key in ["nextflow", "model", "device", "dtype"] {
        assert!(v[key].is_string(), "no `{key}` in {v}");
    }
}

#[test]
fn reports_carry_model_device_dtype_and_version() {
    let dir = scratch("json");
    let img = dir.join("g.png");
    let (stdout, _) = ok(&["generate", "-p", "a red circle", "-o", s(&img), "--json"]);
    let g: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_meta(&g);
    assert_eq!(g["nextflow"], env!("CARGO_PKG_VERSION"));
    let (stdout, _) = ok(&["understand", "-i", s(&img), "-p", "what color is the circle?", "--json"]);
    let u: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_meta(&u);
    assert!(u["timings_ms"]["encode"].is_number() && u["prompt"].is_string(), "{u}");
    let (stdout, _) = ok(&["edit", "-i", s(&img), "-p", "make the circle green", "-o", s(&dir.join("e.png")), "--json"]);
    let e: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_meta(&e);
    assert!(e["prompt"].is_string() && e["timings_ms"]["encode"].is_number() && e["images"][0]["seed"].is_number(), "one spelling: {e}");
    for args in [&["devices", "--json"][..], &["inspect", "--json"]] {
        let (stdout, _) = ok(args);
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["nextflow"], env!("CARGO_PKG_VERSION"), "{args:?}");
    }
}

#[test]
fn a_png_paints_itself_again_from_its_metadata() {
    let dir = scratch("from-png");
    let first = dir.join("first.png");
    ok(&["generate", "-p", "two stars", "--negative-prompt", "a circle", "-s", "11", "--cfg", "2.5", "--top-k", "20", "-o", s(&first)]);
    let text = nextflow::cli::images::read_parameters(&first).unwrap();
    assert!(text.starts_with("two stars\nNegative prompt: a circle\nSteps: 7, Sampler: next-scale, CFG scale: 2.5, Seed: 11, Size: 128x128, Model hash: "), "{text}");
    let again = dir.join("again.png");
    ok(&["generate", "--from-png", s(&first), "-o", s(&again)]);
    assert_eq!(std::fs::read(&first).unwrap(), std::fs::read(&again).unwrap(), "--from-png must paint the same bytes");
    // Flags the PNG decides are refused beside it, and a PNG without parameters is refused.
    let (code, _, stderr) = nextflow(&["generate", "--from-png", s(&first), "-s", "3", "-o", s(&dir.join("x.png"))]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--seed") && stderr.contains("--from-png"), "{stderr}");
    let bare = dir.join("bare.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(&bare).unwrap();
    let (code, _, stderr) = nextflow(&["generate", "--from-png", s(&bare), "-o", s(&dir.join("y.png"))]);
    assert_ne!(code, 0);
    assert!(stderr.contains("parameters"), "{stderr}");
}

#[test]
fn jpeg_webp_and_non_square_images_go_through_understand_and_edit() {
    let dir = scratch("inputs");
    let png = dir.join("g.png");
    ok(&["generate", "-p", "a blue square", "-o", s(&png), "-q"]);
    let square = image::open(&png).unwrap().to_rgb8();
    // A wide canvas: the picture in the middle, background on both sides.
    let mut wide = image::RgbImage::from_pixel(256, 128, *square.get_pixel(0, 0));
    image::imageops::overlay(&mut wide, &square, 64, 0);
    let wide_png = dir.join("wide.png");
    wide.save(&wide_png).unwrap();
    let jpeg = dir.join("photo.jpg");
    image::DynamicImage::ImageRgb8(square.clone()).save_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap();
    let webp = dir.join("pic.webp");
    image::DynamicImage::ImageRgb8(square.clone()).save_with_format(&webp, image::ImageFormat::WebP).unwrap();
    let answer = |path: &Path, extra: &[&str]| -> String {
        let mut args = vec!["understand", "-i", s(path), "-p", "what color is the square?", "--json"];
        args.extend_from_slice(extra);
        let (stdout, stderr) = ok(&args);
        if path != png.as_path() && extra.is_empty() && path != webp.as_path() {
            assert!(stderr.contains("note:") || path == jpeg.as_path(), "{stderr}");
        }
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["answer"].as_str().unwrap().to_string()
    };
    let truth = answer(&png, &[]);
    assert_eq!(answer(&wide_png, &[]), truth, "centre crop of a wide image keeps the picture");
    answer(&wide_png, &["--pad"]);
    assert_eq!(answer(&jpeg, &[]), truth, "a JPEG of the same picture");
    assert_eq!(answer(&webp, &[]), truth, "a WebP of the same picture");
    for (i, input) in [&wide_png, &jpeg, &webp].into_iter().enumerate() {
        let out = dir.join(format!("edited-{i}.png"));
        ok(&["edit", "-i", s(input), "-p", "make the square green", "-o", s(&out), "-q"]);
        assert!(out.exists());
        assert!(nextflow::cli::images::read_parameters(&out).unwrap().contains("Edit of: "));
    }
    // Not an image at all: one clear error naming the file, before the model loads.
    let junk = dir.join("notes.jpg");
    std::fs::write(&junk, b"hello").unwrap();
    let (code, _, stderr) = nextflow(&["understand", "-i", s(&junk), "-p", "what?"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("notes.jpg") && !stderr.contains("loading"), "{stderr}");
}

#[test]
fn a_log_has_one_line_per_stage_and_no_carriage_returns() {
    let dir = scratch("log");
    let (_, stderr) = ok(&["generate", "-p", "a red circle", "-o", s(&dir.join("a.png"))]);
    assert!(!stderr.contains('\r'), "carriage return in a log: {stderr:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines[0].starts_with("loading nextflow-tiny"), "{stderr}");
    assert!(lines[1].starts_with("model: nextflow-tiny") && lines[1].contains("loaded in"), "{stderr}");
    for k in 1..=7 {
        assert!(lines[1 + k].starts_with(&format!("scale {k}/7 ")), "{stderr}");
    }
    assert!(lines[9].starts_with("time: prefill"), "{stderr}");
    assert_eq!(lines.len(), 10, "{stderr}");
    let (_, quiet) = ok(&["generate", "-p", "a red circle", "-o", s(&dir.join("b.png")), "--quiet"]);
    assert!(quiet.is_empty(), "--quiet printed: {quiet}");
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let (stdout, _) = ok(&["completions", shell]);
        assert!(stdout.contains("nextflow") && stdout.contains("generate") && stdout.contains("num-images"), "{shell}: {stdout:.200}");
    }
}

#[test]
fn built_in_config_names_are_accepted_everywhere() {
    for name in ["7b", "nextflow-7b"] {
        let (stdout, _) = ok(&["inspect", "--config", name]);
        assert!(stdout.contains("3584"), "{stdout}");
    }
    let (stdout, _) = ok(&["inspect", "--config", "tiny", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(v["memory"]["kv_positions"].as_u64().unwrap() <= v["backbone"]["context"].as_u64().unwrap());
}
