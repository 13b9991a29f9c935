//! `nextflow bench kernels`: times every candidate kernel at the shapes a model runs, prints a
//! table, and saves the winners in the autotune cache, from which `generate` and `chat` (every
//! matmul, attention and norm node of their plans) take their kernels. With weights (the embedded model,
//! `--model DIR`, `--random-weights`) the shapes are traced from real runs of the model: one
//! generation per canvas it was trained on, with its CFG batch, and a short text reply; a
//! built-in config without weights gives its projections at decode and small prefill rows.
//!
//! `nextflow bench image`: times whole text-to-image generations in one process (warm-up
//! runs first), per stage: prefill, each scale, decoder.

use nextflow_compiler::autotune::{self, AttentionShape, MatmulShape, NormKind, NormShape, Traced, TuneEntry};
use nextflow_compiler::serde_json;
use nextflow_compiler::{Graph, Options};
use nextflow_ops::matmul::matmul_with;
use nextflow_ops::{AttentionOptions, Epilogue, Mask};
use nextflow_runtime::{DType, Device, Tensor};
use std::path::PathBuf;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWhat {
    /// Every candidate kernel of every op family at the config's shapes.
    Kernels,
    /// Whole text-to-image generations, per stage (prefill, each scale, decoder), after
    /// warm-up runs: the embedded nextflow-tiny, `--model DIR`, or `--config 7b
    /// --random-weights`.
    Image,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(value_enum, default_value = "kernels")]
    pub what: BenchWhat,
    /// A built-in model: `tiny` (the embedded nextflow-tiny: `kernels` times the shapes its
    /// runs trace), `7b` (NextFlow-7B: hidden 3584, 28/4 heads of 128, intermediate 18944,
    /// vocab 152064) or `0.5b` (Qwen2-0.5B). These two ship no weights: `kernels` times their
    /// projections at decode and small prefill rows, or with `--random-weights` the shapes
    /// their runs trace. `--model DIR` traces that checkpoint instead.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Machine-readable output: one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// Timed runs per candidate (after one warm-up run); for `image`, timed generations.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// `image`: untimed generations before the timed ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// The prompt of the generations (`kernels`: the traced runs, whose prefill rows it sets).
    #[arg(short, long, default_value = "a red circle above a blue square")]
    pub prompt: String,
    /// A checkpoint directory instead of the embedded model or --config: `kernels` times the
    /// shapes its runs trace [default: none].
    #[arg(short, long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Random weights of the --config shapes (needed for 7b, which ships none); `kernels`
    /// then traces their runs.
    #[arg(long)]
    pub random_weights: bool,
    /// Time again even where the cache already holds a winner.
    #[arg(long)]
    pub retune: bool,
    /// Time weights above this many MB (or above the device's buffer limit) on a slice of
    /// their output columns, which keeps software devices and the CPU within minutes.
    #[arg(long, default_value_t = 300)]
    pub max_weight_mb: usize,
    /// Write the cache to this file after the run (ship a warm cache) [default: not written].
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Merge this cache file into the user's cache before the run [default: none].
    #[arg(long)]
    pub import: Option<PathBuf>,
    /// Let --export replace an existing file.
    #[arg(long)]
    pub force: bool,
}

/// `bench kernels --json`.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct KernelsReport {
    pub nextflow: &'static str,
    /// The config whose shapes were timed.
    pub model: String,
    pub device: String,
    /// What `--device` takes for it.
    pub device_spec: String,
    /// The autotune cache file.
    pub cache: String,
    /// Shapes timed now, and reused from the cache.
    pub timed: usize,
    pub reused: usize,
    pub notes: Vec<String>,
    pub rows: Vec<Row>,
}

/// `bench image --json`.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct ImageBenchReport {
    #[serde(flatten)]
    pub meta: super::report::Meta,
    pub prompt: String,
    pub scales: Vec<[usize; 2]>,
    pub sampler: super::report::Sampler,
    pub seed: u64,
    pub warmup_ms: Vec<RunTimes>,
    pub runs_ms: Vec<RunTimes>,
    /// Per stage (prefill, each scale, scales (sum), decoder, total) over the timed runs.
    pub median_ms: std::collections::BTreeMap<String, f64>,
    pub min_ms: std::collections::BTreeMap<String, f64>,
}

/// One generation's stage times in ms.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct RunTimes {
    pub prefill: f64,
    pub scales: Vec<f64>,
    pub decoder: f64,
    pub total: f64,
}

#[derive(Clone)]
struct ModelShapes {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    inter: usize,
    vocab: usize,
    rows: Vec<usize>,
    context: usize,
}

impl ModelShapes {
    /// A config's shapes at `rows` new rows per step over `context` keys.
    fn of(config: &nextflow_model::Config, rows: Vec<usize>, context: usize) -> ModelShapes {
        let b = &config.backbone;
        ModelShapes {
            hidden: b.hidden_size,
            heads: b.num_attention_heads,
            kv_heads: b.num_key_value_heads,
            head_dim: b.head_dim(),
            inter: b.intermediate_size,
            vocab: config.vocab_size,
            rows,
            context,
        }
    }
}

/// The `ModelArgs` of the bench flags (`--model`, else the `--config` name).
fn model_args(args: &BenchArgs) -> super::ModelArgs {
    let tiny = matches!(args.config.to_ascii_lowercase().as_str(), "tiny" | "nextflow-tiny");
    // The embedded model is what `tiny` names unless random weights are asked for.
    let config = match (&args.model, tiny && !args.random_weights) {
        (Some(_), _) | (None, true) => None,
        (None, false) => Some(if tiny { "nextflow-tiny".to_string() } else { args.config.clone() }),
    };
    super::ModelArgs { model: args.model.clone(), config, random_weights: args.random_weights, dtype: super::DTypeArg::Auto, force: args.force }
}

/// The kernels the model's runs ask for (key → largest shape), traced from one
/// generation of `--prompt` per canvas the model was trained on (CFG batch as its sampler
/// sets it) and a short text reply; for a text model, the prompt's prefill and 8 decode
/// steps.
fn traced(args: &BenchArgs, margs: &super::ModelArgs, config: &nextflow_model::Config, device: &Device) -> BoxResult<std::collections::BTreeMap<String, Traced>> {
    use nextflow_model::text::{self, TextOptions};
    use std::ops::ControlFlow;
    let (result, seen) = autotune::trace(device, || -> BoxResult<()> {
        if config.model_type == nextflow_model::ModelType::NextFlow {
            let (model, _) = super::run::load_nextflow(margs, device)?;
            for (_, scales) in model.parts().tokenizer.canvases() {
                let opts = nextflow_model::ImageOptions { scales: Some(scales), ..model.default_image_options() };
                model.text_to_image(&args.prompt, None, 1, &opts, &mut |_, _, _| {})?;
            }
            let reply = TextOptions { max_new_tokens: 4, ..Default::default() };
            model.reply(None, &args.prompt, &reply, &mut |_| ControlFlow::Continue(()))?;
        } else {
            let m = super::run::load_text(margs, device, 4096)?;
            let message = nextflow_model::Message { role: "user".into(), content: args.prompt.clone() };
            let ids = if m.tokenizer.is_some() { m.prompt_ids(&[message])? } else { (1..=8).collect() };
            let opts = TextOptions { max_new_tokens: 8, ..Default::default() };
            text::generate(&m.transformer, &ids, &opts, &mut |_| ControlFlow::Continue(()))?;
        }
        Ok(())
    });
    result?;
    Ok(seen)
}

/// A random `[batch, m, n]` operand (batch 1: `[m, n]`) of `dtype`.
fn operand(batch: usize, m: usize, n: usize, scale: f64, dtype: DType, device: &Device) -> BoxResult<Tensor> {
    let t = if batch == 1 { random(&[m, n], scale, device)? } else { random(&[batch, m, n], scale, device)? };
    Ok(if dtype == DType::F32 { t } else { nextflow_ops::cast(&t, dtype)? })
}

/// One case per traced key.
fn traced_cases(seen: &std::collections::BTreeMap<String, Traced>, device: &Device) -> BoxResult<Vec<Case>> {
    seen.values()
        .map(|t| match t {
            Traced::Matmul(s) => matmul_case("", s, device),
            Traced::Attention(s) => attention_case(s, device),
            Traced::Norm(s) => norm_case(s, device),
        })
        .collect()
}

/// The candidates of one norm shape on random rows (GroupNorm: one channel per group).
fn norm_case(s: &NormShape, device: &Device) -> BoxResult<Case> {
    let x = operand(1, s.rows, s.n, 1.0, s.dtype, device)?;
    let r = operand(1, s.rows, s.n, 1.0, s.dtype, device)?;
    let w = operand(1, 1, s.n, 1.0, s.dtype, device)?.reshape(&[s.n])?;
    let per_group = operand(1, 1, s.rows, 1.0, s.dtype, device)?.reshape(&[s.rows])?;
    let kind = s.kind;
    let candidates = autotune::norm_candidates(device)
        .into_iter()
        .map(|(cname, kernel)| {
            let (x, r, w, per_group) = (x.clone(), r.clone(), w.clone(), per_group.clone());
            let f: Box<dyn Fn() -> BoxResult<()>> = Box::new(move || {
                match kind {
                    NormKind::Rms => drop(nextflow_ops::rms_norm_with(&x, &w, 1e-6, kernel)?),
                    NormKind::AddRms => drop(nextflow_ops::add_rms_norm_with(&x, &r, &w, 1e-6, kernel)?),
                    NormKind::Group => drop(nextflow_ops::group_norm_with(&x.unsqueeze(0)?, x.shape()[0], &per_group, &per_group, 1e-6, true, kernel)?),
                }
                Ok(())
            });
            (cname, f)
        })
        .collect();
    Ok(Case {
        family: "norm",
        shape: format!("{:?} {} rows of {} {}", s.kind, s.rows, s.n, s.dtype),
        key: s.key(device),
        flops: 5.0 * (s.rows * s.n) as f64,
        bytes: s.dtype.size() as f64 * (2 * s.rows * s.n) as f64,
        candidates,
    })
}


/// The candidates of one attention shape on random operands (the newest `sq` of `skv` keys,
/// block-causal: the queries see every earlier key and each other).
fn attention_case(s: &AttentionShape, device: &Device) -> BoxResult<Case> {
    let (q, k, v) = (
        operand(s.batch * s.heads, s.sq, s.head_dim, 1.0, s.dtype, device)?.reshape(&[s.batch, s.heads, s.sq, s.head_dim])?,
        operand(s.batch * s.kv_heads, s.skv, s.head_dim, 1.0, s.dtype, device)?.reshape(&[s.batch, s.kv_heads, s.skv, s.head_dim])?,
        operand(s.batch * s.kv_heads, s.skv, s.head_dim, 1.0, s.dtype, device)?.reshape(&[s.batch, s.kv_heads, s.skv, s.head_dim])?,
    );
    let segments: Vec<usize> = [s.skv - s.sq, s.sq].into_iter().filter(|&n| n > 0).collect();
    let opts = AttentionOptions { mask: Some(Mask::Segments(segments)), ..Default::default() };
    let candidates = autotune::attention_candidates(device)
        .into_iter()
        .map(|(cname, kernel)| {
            let (q, k, v, opts) = (q.clone(), k.clone(), v.clone(), opts.clone());
            let f: Box<dyn Fn() -> BoxResult<()>> = Box::new(move || Ok(drop(nextflow_ops::attention_with(&q, &k, &v, &opts, kernel)?)));
            (cname, f)
        })
        .collect();
    let lanes = if s.batch > 1 { format!("{} x ", s.batch) } else { String::new() };
    Ok(Case {
        family: "attention",
        shape: format!("{lanes}{} queries x {} keys, {}/{} heads of {} {}", s.sq, s.skv, s.heads, s.kv_heads, s.head_dim, s.dtype),
        key: s.key(device),
        flops: 4.0 * (s.batch * s.heads * s.sq * s.skv * s.head_dim) as f64,
        bytes: s.dtype.size() as f64 * (s.batch * (2 * s.heads * s.sq + 2 * s.kv_heads * s.skv) * s.head_dim) as f64,
        candidates,
    })
}

/// The candidates of one matmul shape (`name`: what it is, for the table) on random operands
/// of its shapes, layout and epilogue.
fn matmul_case(name: &str, s: &MatmulShape, device: &Device) -> BoxResult<Case> {
    let a = operand(s.batch, s.m, s.k, 1.0, s.dtype, device)?;
    let b = if s.b_transposed { operand(1, s.n, s.k, 0.05, s.dtype, device)?.transpose(0, 1)? } else { operand(1, s.k, s.n, 0.05, s.dtype, device)? };
    let bias = if s.bias { Some(operand(1, 1, s.n, 0.1, s.dtype, device)?.reshape(&[s.n])?) } else { None };
    let residual = if s.residual { Some(operand(s.batch, s.m, s.n, 1.0, s.dtype, device)?) } else { None };
    let activation = s.activation;
    let candidates = autotune::matmul_candidates(device, s.dtype, s.m)
        .into_iter()
        .map(|(cname, kernel)| {
            let (a, b, bias, residual) = (a.clone(), b.clone(), bias.clone(), residual.clone());
            let f: Box<dyn Fn() -> BoxResult<()>> = Box::new(move || {
                let ep = Epilogue { bias: bias.as_ref(), activation, residual: residual.as_ref() };
                Ok(drop(matmul_with(&a, &b, ep, kernel)?))
            });
            (cname, f)
        })
        .collect();
    let lanes = if s.batch > 1 { format!("{} x ", s.batch) } else { String::new() };
    let epilogue: String = [(s.bias, "+bias"), (s.activation != nextflow_ops::Activation::None, "+act"), (s.residual, "+residual")]
        .into_iter()
        .filter_map(|(on, what)| on.then_some(what))
        .collect();
    let name = if name.is_empty() { String::new() } else { format!("{name} ") };
    Ok(Case {
        family: "matmul",
        shape: format!("{name}{lanes}{}x{} · {}x{}{epilogue} {}", s.m, s.k, s.k, s.n, s.dtype),
        key: s.key(device),
        flops: 2.0 * (s.batch * s.m * s.n * s.k) as f64,
        bytes: s.dtype.size() as f64 * (s.batch * s.m * s.k + s.k * s.n + s.batch * s.m * s.n) as f64,
        candidates,
    })
}

/// One benchmark case: an op family at one shape, with its candidates.
struct Case {
    family: &'static str,
    shape: String,
    key: String,
    /// FLOPs and bytes of one run (for the rate column).
    flops: f64,
    bytes: f64,
    candidates: Vec<(String, Box<dyn Fn() -> BoxResult<()>>)>,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Row {
    family: String,
    shape: String,
    candidate: String,
    time_us: f64,
    gflops: f64,
    gbps: f64,
    chosen: bool,
    cached: bool,
}

fn random(shape: &[usize], scale: f64, device: &Device) -> BoxResult<Tensor> {
    let n: usize = shape.iter().product();
    // A cheap deterministic fill; values do not matter for timing.
    let v: Vec<f64> = (0..n).map(|i| ((i.wrapping_mul(2654435761) % 1000) as f64 / 500.0 - 1.0) * scale).collect();
    Ok(Tensor::from_f64(&v, DType::F32, shape, device)?)
}

/// The projections of a config at its rows (no weights to trace), then the other families.
fn cases(s: &ModelShapes, device: &Device, max_weight_mb: usize, skipped: &mut Vec<String>) -> BoxResult<Vec<Case>> {
    let mut out = Vec::new();
    let projections = [
        ("qkv", (s.heads + 2 * s.kv_heads) * s.head_dim, s.hidden),
        ("o_proj", s.hidden, s.heads * s.head_dim),
        ("gate", s.inter, s.hidden),
        ("gate_up", 2 * s.inter, s.hidden),
        ("down", s.hidden, s.inter),
        ("lm_head", s.vocab, s.hidden),
    ];
    // Weights larger than one device buffer (lavapipe: 128 MiB) or --max-weight-mb are
    // benchmarked on a slice of their output columns (the kernels tile columns anyway).
    let limit = (max_weight_mb as u64 * 1_000_000).min(device.max_buffer_bytes());
    for &(full_name, full_n, k) in &projections {
        let mut parts = 1;
        while ((full_n / parts) * k * 4) as u64 > limit && parts < 64 {
            parts *= 2;
        }
        let n = full_n / parts;
        if (n * k * 4) as u64 > limit {
            skipped.push(format!("matmul {full_name} [{full_n}x{k}]: does not fit the device even as 1/{parts} of its columns"));
            continue;
        }
        let name = if parts == 1 { full_name.to_string() } else { format!("{full_name}[1/{parts} cols]") };
        if parts > 1 {
            skipped.push(format!("matmul {full_name} [{full_n}x{k}] ({} MB) timed on 1/{parts} of its columns", full_n * k * 4 / 1_000_000));
        }
        for &m in &s.rows {
            let shape = MatmulShape { batch: 1, m, n, k, dtype: DType::F32, b_transposed: true, bias: false, activation: nextflow_ops::Activation::None, residual: false };
            out.push(matmul_case(&name, &shape, device)?);
        }
    }
    out.extend(other_cases(s, device)?);
    Ok(out)
}

/// SwiGLU (fused or not), RMSNorm and attention at the config's rows.
fn other_cases(s: &ModelShapes, device: &Device) -> BoxResult<Vec<Case>> {
    let dev = autotune::device_id(device);
    let mut out = Vec::new();
    for &m in &s.rows {
        // SwiGLU of the gate/up halves: one fused kernel, or SiLU then a multiply.
        let gu = random(&[m, 2 * s.inter], 1.0, device)?;
        let mut candidates: Vec<(String, Box<dyn Fn() -> BoxResult<()>>)> = Vec::new();
        for (cname, fusion) in [("fused", true), ("unfused", false)] {
            let gu = gu.clone();
            let device = device.clone();
            let inter = s.inter;
            candidates.push((
                cname.into(),
                Box::new(move || {
                    let g = Graph::with_options(&device, Options { fusion, autotune: false });
                    let x = g.input(&gu)?;
                    let y = x.narrow(1, 0, inter)?.silu()?.mul(&x.narrow(1, inter, inter)?)?;
                    Ok(drop(y.realize()?))
                }),
            ));
        }
        out.push(Case {
            family: "elementwise",
            shape: format!("silu(gate)·up {m}x{}", s.inter),
            key: format!("elementwise|silu_mul|n{}|f32|{dev}", autotune::bucket(m * s.inter)),
            flops: 5.0 * (m * s.inter) as f64,
            bytes: 4.0 * 3.0 * (m * s.inter) as f64,
            candidates,
        });
        out.push(norm_case(&NormShape { kind: NormKind::Rms, rows: m, n: s.hidden, dtype: DType::F32 }, device)?);
    }
    for &sq in &s.rows {
        let shape = AttentionShape { batch: 1, heads: s.heads, kv_heads: s.kv_heads, sq, skv: s.context.max(sq), head_dim: s.head_dim, dtype: DType::F32 };
        out.push(attention_case(&shape, device)?);
    }
    Ok(out)
}

/// A bar redrawn in place on a terminal; one line per step when stderr is a file or pipe
/// (so logs read cleanly and an error never lands mid-line).
/// Benchmark progress: step `done` of the bar's steps finished (0: none yet).
fn progress(bar: &super::ui::Steps, done: usize, total: usize, what: &str) {
    if done > 0 {
        bar.step(done - 1, total, what);
    }
}

fn rate(row: &Row) -> String {
    if row.gflops >= row.gbps {
        format!("{:.2} GFLOP/s", row.gflops)
    } else {
        format!("{:.2} GB/s", row.gbps)
    }
}

pub fn run(args: &BenchArgs, device: &Device) -> BoxResult<()> {
    if args.what == BenchWhat::Image {
        return image(args, device);
    }
    if let Some(path) = &args.export {
        super::files::check_new(path, args.force)?;
    }
    if let Some(path) = &args.import {
        let n = autotune::import(path)?;
        eprintln!("imported {n} autotune entries from {}", path.display());
    }
    let mut skipped = Vec::new();
    let margs = model_args(args);
    let config = super::run::config_of(&margs)?;
    let with_weights = args.model.is_some() || args.random_weights || margs.config.is_none();
    let (model, cases) = if with_weights {
        let seen = traced(args, &margs, &config, device)?;
        let mut rows: Vec<usize> = seen.values().filter_map(|t| if let Traced::Matmul(s) = t { Some(s.m) } else { None }).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let context = rows.iter().sum::<usize>().min(config.backbone.max_position_embeddings);
        if rows.len() > 4 {
            // The other families (one kernel each) at a few of the traced row counts.
            rows = vec![rows[0], rows[rows.len() / 2], rows[rows.len() - 1]];
        }
        let mut cases = traced_cases(&seen, device)?;
        // SwiGLU fused or not at those rows (matmuls, attention and norms are traced).
        let others = other_cases(&ModelShapes::of(&config, rows, context), device)?;
        cases.extend(others.into_iter().filter(|c| c.family == "elementwise"));
        (format!("{} (traced: {} matmul, attention and norm shapes)", super::run::describe(&margs), seen.len()), cases)
    } else {
        let rows = if config.backbone.hidden_size > 1024 { vec![1, 4] } else { vec![1, 16, 163] };
        let shapes = ModelShapes::of(&config, rows, 256);
        (super::run::describe(&margs), cases(&shapes, device, args.max_weight_mb, &mut skipped)?)
    };
    let total: usize = cases.iter().map(|c| c.candidates.len()).sum();
    let bar = super::ui::Steps::new("bench", total.max(1), "steps");
    let mut done = 0;
    let mut rows: Vec<Row> = Vec::new();
    let (mut timed, mut reused) = (0usize, 0usize);
    for case in &cases {
        let cached = if args.retune { None } else { autotune::lookup(&case.key)? };
        let entry = match cached {
            Some(e) if case.candidates.iter().all(|(n, _)| e.timings_us.contains_key(n)) => {
                done += case.candidates.len();
                progress(&bar, done, total, &format!("{} {} (cached)", case.family, case.shape));
                reused += 1;
                (e, true)
            }
            _ => {
                let mut e = TuneEntry::default();
                let mut best = f64::INFINITY;
                for (name, f) in &case.candidates {
                    progress(&bar, done, total, &format!("{} {} {name}", case.family, case.shape));
                    // One warm-up run; slow candidates (software devices) get fewer reps.
                    let start = std::time::Instant::now();
                    f()?;
                    device.sync()?;
                    let reps = if start.elapsed().as_secs_f64() > 0.5 { 1 } else { args.reps.max(1) };
                    let secs = autotune::time(device, reps, || f().map_err(|e| nextflow_compiler::Error::Graph(e.to_string())))?;
                    e.timings_us.insert(name.clone(), secs * 1e6);
                    if secs < best {
                        best = secs;
                        e.choice = name.clone();
                    }
                    done += 1;
                }
                autotune::record(&case.key, e.clone())?;
                timed += 1;
                (e, false)
            }
        };
        let (entry, cached) = entry;
        for (name, _) in &case.candidates {
            let us = entry.timings_us[name];
            rows.push(Row {
                family: case.family.into(),
                shape: case.shape.clone(),
                candidate: name.clone(),
                time_us: us,
                gflops: case.flops / us / 1e3,
                gbps: case.bytes / us / 1e3,
                chosen: *name == entry.choice,
                cached,
            });
        }
    }
    progress(&bar, total, total, "done");
    let cache = autotune::cache_path();
    if args.json {
        let doc = KernelsReport {
            nextflow: env!("CARGO_PKG_VERSION"),
            model: model.clone(),
            device: device.to_string(),
            device_spec: device.info().spec(),
            cache: cache.display().to_string(),
            timed,
            reused,
            notes: skipped,
            rows,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let header = ["FAMILY", "SHAPE", "CANDIDATE", "TIME", "RATE", "CHOSEN"].map(String::from);
        let table: Vec<[String; 6]> = rows
            .iter()
            .map(|r| {
                [
                    r.family.clone(),
                    r.shape.clone(),
                    r.candidate.clone(),
                    format!("{:.1} us", r.time_us),
                    rate(r),
                    match (r.chosen, r.cached) {
                        (true, true) => "* (cached)".into(),
                        (true, false) => "*".into(),
                        _ => String::new(),
                    },
                ]
            })
            .collect();
        let mut widths = [0usize; 6];
        for row in std::iter::once(&header).chain(&table) {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        println!("kernels on {device}, shapes of {model}");
        for row in std::iter::once(&header).chain(&table) {
            let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
            println!("{}", line.join("  ").trim_end());
        }
        for s in &skipped {
            println!("note: {s}");
        }
        println!(
            "\n{timed} shapes timed, {reused} reused from the cache (no re-timing); winners saved to {}",
            cache.display()
        );
    }
    if let Some(path) = &args.export {
        let (text, n) = autotune::export_json()?;
        super::files::write_new(path, text.as_bytes(), args.force)?;
        eprintln!("exported {n} autotune entries to {}", path.display());
    }
    Ok(())
}

/// `bench image`: generations in one process, per stage, after `--warmup` untimed ones.
fn image(args: &BenchArgs, device: &Device) -> BoxResult<()> {
    use super::{DTypeArg, ModelArgs};
    use nextflow_model::nextflow::Timings;
    let config = match (&args.model, args.config.to_ascii_lowercase().as_str()) {
        (Some(_), _) => None,
        (None, "tiny" | "nextflow-tiny") => Some("nextflow-tiny".to_string()),
        (None, "7b" | "nextflow-7b") => Some("nextflow-7b".to_string()),
        (None, other) => return Err(format!("unknown --config '{other}' (expected tiny or 7b)").into()),
    };
    let model_args = ModelArgs { model: args.model.clone(), config, random_weights: args.random_weights, dtype: DTypeArg::Auto, force: args.force };
    let (model, info) = super::run::load_nextflow(&model_args, device)?;
    let opts = model.default_image_options();
    let runs = args.reps.max(1);
    let total = args.warmup + runs;
    let bar = super::ui::Steps::new("bench", total, "generations");
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let mut warm: Vec<Timings> = Vec::new();
    let mut timed: Vec<Timings> = Vec::new();
    for i in 0..total {
        let what = if i < args.warmup { "warm-up" } else { "timed" };
        progress(&bar, i, total, &format!("generation {}/{total} ({what})", i + 1));
        let g = model.text_to_image(&args.prompt, None, 1, &opts, &mut |_, _, _| {})?;
        if i < args.warmup { warm.push(g.timings) } else { timed.push(g.timings) }
    }
    progress(&bar, total, total, "done");
    let k = timed[0].scales.len();
    let stat = |f: &dyn Fn(&Timings) -> f64| -> (f64, f64) {
        let mut v: Vec<f64> = timed.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0])
    };
    let scales = opts.scales.clone().unwrap_or_else(|| model.parts().tokenizer.scales.clone());
    let mut rows: Vec<(String, (f64, f64))> = vec![("prefill".into(), stat(&|t| ms(t.prefill)))];
    for (j, [h, w]) in scales.iter().enumerate().take(k) {
        rows.push((format!("scale {} ({h}x{w})", j + 1), stat(&|t| ms(t.scales[j]))));
    }
    rows.push(("scales (sum)".into(), stat(&|t| t.scales.iter().map(|d| ms(*d)).sum())));
    rows.push(("decoder".into(), stat(&|t| ms(t.decode))));
    rows.push(("total".into(), stat(&|t| ms(t.total()))));
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let per_run = |t: &Timings| RunTimes {
        prefill: round(ms(t.prefill)),
        scales: t.scales.iter().map(|d| round(ms(*d))).collect(),
        decoder: round(ms(t.decode)),
        total: round(ms(t.total())),
    };
    if args.json {
        let doc = ImageBenchReport {
            meta: info.meta.clone(),
            prompt: args.prompt.clone(),
            scales: scales.clone(),
            sampler: super::report::Sampler { cfg: opts.cfg_scale, top_k: opts.top_k, top_p: opts.top_p, temperature: opts.temperature },
            seed: opts.seed,
            warmup_ms: warm.iter().map(per_run).collect(),
            runs_ms: timed.iter().map(per_run).collect(),
            median_ms: rows.iter().map(|(n, (m, _))| (n.clone(), round(*m))).collect(),
            min_ms: rows.iter().map(|(n, (_, m))| (n.clone(), round(*m))).collect(),
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("text to image on {device}, {runs} timed generations after {} warm-up, prompt {:?}", args.warmup, args.prompt);
        println!("{:<16} {:>10} {:>10}", "STAGE", "MEDIAN ms", "MIN ms");
        for (name, (med, min)) in &rows {
            println!("{name:<16} {med:>10.2} {min:>10.2}");
        }
        let first: Vec<String> = warm.iter().map(|t| format!("{:.1}", ms(t.total()))).collect();
        if !first.is_empty() {
            println!("warm-up totals: {} ms", first.join(", "));
        }
    }
    Ok(())
}
