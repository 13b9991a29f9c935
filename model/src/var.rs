//! VAR (FoundationVision/VAR): class-conditional next-scale models, from their published
//! files. No configuration ships with them: everything is read off the tensor shapes of the
//! two state dicts (the VQVAE and the transformer), which are told apart by their keys, so a
//! directory holding them under any names loads as it is.
//!
//! What the shapes say (the official `build_vae_var` ties heads to depth and width to
//! 64·depth, but a checkpoint is read, not assumed):
//! - transformer: depth = number of `blocks.N`; width = `class_emb.weight` columns, whose
//!   rows are the classes plus the CFG null class; heads = `blocks.0.attn.scale_mul_1H11`
//!   (present when attention L2-normalises q and k, as every published model does; without
//!   it heads = depth, as the builder ties them); MLP width = `blocks.0.ffn.fc1`; AdaLN
//!   shared (`shared_ada_lin`, `blocks.N.ada_gss`, the 512 px d36) or per block
//!   (`blocks.N.ada_lin`); vocabulary = `head.weight` rows; code dims = `word_embed` columns;
//!   the scale schedule from `pos_1LC` length and `lvl_embed` rows.
//! - VQVAE: codebook `quantize.embedding.weight [V, Cvae]`; base channels = `encoder.conv_in`
//!   outputs; channel multipliers and res blocks per level from `decoder.up.{i}.block.{j}`;
//!   self-attention where `attn` entries exist; the quant_resi convs and their sharing from
//!   `quantize.quant_resi.*` names.

pub mod net;

use crate::{Error, Result, Weights};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Shapes of a state dict's tensors, by name (what [`crate::Weights`] knows of a file).
pub trait Shapes {
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    fn names(&self) -> Vec<String>;
}

impl Shapes for crate::Weights {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.info(name).map(|i| i.shape.clone())
    }
    fn names(&self) -> Vec<String> {
        crate::Weights::names(self).map(String::from).collect()
    }
}

/// What a state dict holds, told by its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The VQVAE (`quantize.embedding.weight`, `decoder.conv_in.weight`).
    Vae,
    /// The transformer (`class_emb.weight`, `pos_1LC`, `blocks.0.*`).
    Transformer,
}

/// Which part of a VAR model `w` is, if any.
pub fn part_of(w: &dyn Shapes) -> Option<Part> {
    let has = |n: &str| w.shape(n).is_some();
    if has("class_emb.weight") && has("pos_1LC") && has("head.weight") {
        Some(Part::Transformer)
    } else if has("quantize.embedding.weight") && has("decoder.conv_in.weight") {
        Some(Part::Vae)
    } else {
        None
    }
}

/// VAR's published schedules (`utils/arg_util.py`): side of each scale's map, by image size.
pub const SCHEDULES: [(usize, &[usize]); 3] = [
    (256, &[1, 2, 3, 4, 5, 6, 8, 10, 13, 16]),
    (512, &[1, 2, 3, 4, 6, 9, 13, 18, 24, 32]),
    (1024, &[1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64]),
];

/// How the quant_resi convs (phi) are shared across scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhiSharing {
    /// One conv for every scale (`quant_resi.qresi`).
    Shared,
    /// `n` convs picked by VAR's tick table (`quant_resi.qresi_ls.N`; the published n = 4).
    Partial(usize),
    /// One conv per scale (`quant_resi.N`).
    PerScale(usize),
    /// No conv: phi is the identity (quant_resi 0).
    None,
}

/// The VQVAE: encoder/decoder geometry and the multi-scale quantizer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VaeConfig {
    pub vocab_size: usize,
    pub code_dim: usize,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Self-attention in the lowest-resolution level's blocks, and in the middle block.
    pub using_sa: bool,
    pub using_mid_sa: bool,
    pub z_channels: usize,
    pub quant_conv_kernel: usize,
    pub phi: PhiSharing,
    /// `phi(h) = (1 − r)·h + r·conv(h)`; not stored in the file (the published value).
    pub quant_resi: f32,
    /// Whether the encoder is present (needed only to tokenize images).
    pub has_encoder: bool,
}

impl VaeConfig {
    /// Pixels per token side: 2^(levels − 1).
    pub fn patch_size(&self) -> usize {
        1 << (self.ch_mult.len() - 1)
    }
}

/// The transformer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VarConfig {
    pub depth: usize,
    pub width: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
    /// Classes, without the CFG null class (`class_emb` has one row more).
    pub num_classes: usize,
    pub vocab_size: usize,
    pub code_dim: usize,
    pub shared_adaln: bool,
    /// q and k L2-normalised, scaled per head by `exp(min(scale_mul, ln 100))`; else
    /// `0.25/√head_dim`.
    pub attn_l2_norm: bool,
    /// Side of each scale's token map, coarse to fine.
    pub patch_nums: Vec<usize>,
    pub norm_eps: f64,
}

impl VarConfig {
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
    /// Tokens over all scales.
    pub fn tokens(&self) -> usize {
        self.patch_nums.iter().map(|p| p * p).sum()
    }
}

/// A whole VAR model: the two parts, checked against each other.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelConfig {
    pub var: VarConfig,
    pub vae: VaeConfig,
    /// Output side in pixels.
    pub image_size: usize,
}

fn bad(what: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("VAR {what}: {msg}"))
}

fn need(w: &dyn Shapes, what: &str, name: &str, rank: usize) -> Result<Vec<usize>> {
    let s = w.shape(name).ok_or_else(|| bad(what, format!("tensor `{name}` is missing")))?;
    if s.len() != rank {
        return Err(bad(what, format!("tensor `{name}` has shape {s:?}, expected {rank} dims")));
    }
    Ok(s)
}

/// Indices `N` of the names `prefix.N.suffix…` (sorted); checks they run 0..n.
fn indices(w: &dyn Shapes, what: &str, prefix: &str) -> Result<usize> {
    let found: BTreeSet<usize> = w
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix(prefix)?.split('.').next()?.parse().ok())
        .collect();
    match found.last() {
        Some(&last) if found.len() != last + 1 => Err(bad(what, format!("`{prefix}N` runs to {last} with {} entries: some are missing", found.len()))),
        _ => Ok(found.len()),
    }
}

impl VarConfig {
    /// Reads the transformer's configuration off its tensor shapes.
    pub fn infer(w: &dyn Shapes) -> Result<VarConfig> {
        let what = "transformer";
        let class = need(w, what, "class_emb.weight", 2)?;
        let width = class[1];
        let depth = indices(w, what, "blocks.")?;
        if depth == 0 {
            return Err(bad(what, "no `blocks.N` tensors"));
        }
        let (attn_l2_norm, heads) = match w.shape("blocks.0.attn.scale_mul_1H11") {
            Some(s) if s.len() == 4 && s[1] > 0 => (true, s[1]),
            Some(s) => return Err(bad(what, format!("`blocks.0.attn.scale_mul_1H11` has shape {s:?}, expected [1, heads, 1, 1]"))),
            None => (false, depth),
        };
        if width % heads != 0 {
            return Err(bad(what, format!("width {width} is not a multiple of {heads} heads")));
        }
        let head = need(w, what, "head.weight", 2)?;
        let word = need(w, what, "word_embed.weight", 2)?;
        let fc1 = need(w, what, "blocks.0.ffn.fc1.weight", 2)?;
        let pos = need(w, what, "pos_1LC", 3)?;
        let lvl = need(w, what, "lvl_embed.weight", 2)?;
        let shared_adaln = w.shape("shared_ada_lin.1.weight").is_some();
        if !shared_adaln && w.shape("blocks.0.ada_lin.1.weight").is_none() {
            return Err(bad(what, "neither `shared_ada_lin.1.weight` nor `blocks.0.ada_lin.1.weight`: not a VAR transformer"));
        }
        let (tokens, scales) = (pos[1], lvl[0]);
        let patch_nums = SCHEDULES
            .iter()
            .map(|(_, p)| p.to_vec())
            .find(|p| p.len() == scales && p.iter().map(|n| n * n).sum::<usize>() == tokens)
            .ok_or_else(|| {
                let known: Vec<String> = SCHEDULES.iter().map(|(px, p)| format!("{px} px: {} scales, {} tokens", p.len(), p.iter().map(|n| n * n).sum::<usize>())).collect();
                bad(what, format!("`pos_1LC` holds {tokens} tokens over {scales} scales (`lvl_embed`), which is no published schedule ({})", known.join("; ")))
            })?;
        for (name, got, want) in [("head.weight columns", head[1], width), ("word_embed.weight rows", word[0], width), ("pos_1LC width", pos[2], width), ("lvl_embed width", lvl[1], width), ("blocks.0.ffn.fc1 columns", fc1[1], width)] {
            if got != want {
                return Err(bad(what, format!("{name} is {got}, but the width (class_emb columns) is {want}")));
            }
        }
        if class[0] < 2 {
            return Err(bad(what, format!("`class_emb.weight` has {} rows: no class besides the null class", class[0])));
        }
        Ok(VarConfig {
            depth,
            width,
            heads,
            mlp_hidden: fc1[0],
            num_classes: class[0] - 1,
            vocab_size: head[0],
            code_dim: word[1],
            shared_adaln,
            attn_l2_norm,
            patch_nums,
            norm_eps: 1e-6,
        })
    }
}

impl VaeConfig {
    /// Reads the VQVAE's configuration off its tensor shapes.
    pub fn infer(w: &dyn Shapes) -> Result<VaeConfig> {
        let what = "VQVAE";
        let book = need(w, what, "quantize.embedding.weight", 2)?;
        let levels = indices(w, what, "decoder.up.")?;
        if levels == 0 {
            return Err(bad(what, "no `decoder.up.N` levels"));
        }
        let blocks = indices(w, what, "decoder.up.0.block.")?;
        if blocks < 1 {
            return Err(bad(what, "`decoder.up.0` has no res blocks"));
        }
        // The decoder's levels each hold num_res_blocks + 1 blocks; level i outputs ch·mult[i].
        let mut outs = Vec::with_capacity(levels);
        for i in 0..levels {
            let n = indices(w, what, &format!("decoder.up.{i}.block."))?;
            if n != blocks {
                return Err(bad(what, format!("decoder level {i} has {n} res blocks, level 0 has {blocks}")));
            }
            outs.push(need(w, what, &format!("decoder.up.{i}.block.0.conv1.weight"), 4)?[0]);
        }
        let conv_in = need(w, what, "decoder.conv_in.weight", 4)?;
        let has_encoder = w.shape("encoder.conv_in.weight").is_some();
        let ch = match w.shape("encoder.conv_in.weight") {
            Some(s) => s[0],
            None => outs[0],
        };
        if ch == 0 || outs.iter().any(|o| o % ch != 0) {
            return Err(bad(what, format!("decoder level widths {outs:?} are not multiples of the base width {ch}")));
        }
        let ch_mult: Vec<usize> = outs.iter().map(|o| o / ch).collect();
        let last = levels - 1;
        let using_sa = w.shape(&format!("decoder.up.{last}.attn.0.qkv.weight")).is_some();
        let using_mid_sa = w.shape("decoder.mid.attn_1.qkv.weight").is_some();
        let quant = need(w, what, "quant_conv.weight", 4).or_else(|_| need(w, what, "post_quant_conv.weight", 4))?;
        let phi = if w.shape("quantize.quant_resi.qresi.weight").is_some() {
            PhiSharing::Shared
        } else {
            match indices(w, what, "quantize.quant_resi.qresi_ls.")? {
                0 => match indices(w, what, "quantize.quant_resi.")? {
                    0 => PhiSharing::None,
                    n => PhiSharing::PerScale(n),
                },
                n => PhiSharing::Partial(n),
            }
        };
        Ok(VaeConfig {
            vocab_size: book[0],
            code_dim: book[1],
            ch,
            ch_mult,
            num_res_blocks: blocks - 1,
            using_sa,
            using_mid_sa,
            z_channels: conv_in[1],
            quant_conv_kernel: quant[2],
            phi,
            quant_resi: 0.5,
            has_encoder,
        })
    }
}

impl ModelConfig {
    /// A published model's shapes by name (`var-d16`, `var-d20`, `var-d24`, `var-d30`: 256 px;
    /// `var-d36`: 512 px, shared AdaLN), as the official `build_vae_var` makes them: width
    /// 64·depth, heads = depth, MLP 4×, VQVAE `vae_ch160v4096z32`.
    pub fn published(name: &str) -> Option<ModelConfig> {
        let depth: usize = name.strip_prefix("var-d")?.parse().ok()?;
        let (px, shared) = match depth {
            16 | 20 | 24 | 30 => (256, false),
            36 => (512, true),
            _ => return None,
        };
        let patch_nums = SCHEDULES.iter().find(|(p, _)| *p == px)?.1.to_vec();
        let width = 64 * depth;
        Some(ModelConfig {
            var: VarConfig {
                depth,
                width,
                heads: depth,
                mlp_hidden: 4 * width,
                num_classes: 1000,
                vocab_size: 4096,
                code_dim: 32,
                shared_adaln: shared,
                attn_l2_norm: true,
                patch_nums,
                norm_eps: 1e-6,
            },
            vae: VaeConfig {
                vocab_size: 4096,
                code_dim: 32,
                ch: 160,
                ch_mult: vec![1, 1, 2, 2, 4],
                num_res_blocks: 2,
                using_sa: true,
                using_mid_sa: true,
                z_channels: 32,
                quant_conv_kernel: 3,
                phi: PhiSharing::Partial(4),
                quant_resi: 0.5,
                has_encoder: true,
            },
            image_size: px,
        })
    }

    /// The two parts' configurations, checked against each other.
    pub fn infer(var: &dyn Shapes, vae: &dyn Shapes) -> Result<ModelConfig> {
        let (var, vae) = (VarConfig::infer(var)?, VaeConfig::infer(vae)?);
        if var.vocab_size != vae.vocab_size || var.code_dim != vae.code_dim {
            return Err(Error::Config(format!(
                "the VAR transformer predicts {} codes of {} dims but the VQVAE's codebook holds {} of {}: they are not a pair",
                var.vocab_size, var.code_dim, vae.vocab_size, vae.code_dim
            )));
        }
        if let PhiSharing::PerScale(n) = vae.phi {
            if n != var.patch_nums.len() {
                return Err(Error::Config(format!("the VQVAE has {n} per-scale quant_resi convs, the transformer {} scales", var.patch_nums.len())));
            }
        }
        let image_size = var.patch_nums.last().copied().unwrap_or(0) * vae.patch_size();
        Ok(ModelConfig { var, vae, image_size })
    }
}

/// A VAR model directory: the transformer and VQVAE files, found by their keys.
pub struct ModelFiles {
    pub transformer: (PathBuf, Weights),
    pub vae: (PathBuf, Weights),
    pub config: ModelConfig,
}

/// Checkpoint files a directory may hold: PyTorch (`.pth`, `.pt`, `.bin`, `.ckpt`) and
/// safetensors.
fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().and_then(|e| e.to_str()).is_some_and(|e| ["pth", "pt", "bin", "ckpt", "safetensors"].contains(&e)))
        .collect();
    files.sort();
    Ok(files)
}

/// Opens one checkpoint file by its format (its first bytes, not its name).
fn open_any(path: &Path) -> Result<Weights> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    if crate::is_torch_zip(&head[..n]) || crate::torch_file::is_legacy_torch(&head[..n]) {
        Weights::open_torch(path)
    } else {
        Weights::open_file(path)
    }
}

impl ModelFiles {
    /// A published model's shapes with random weights (speed measurements: no file).
    pub fn random(name: &str) -> Option<ModelFiles> {
        let config = ModelConfig::published(name)?;
        let at = || (PathBuf::from("<random weights>"), Weights::random(0));
        Some(ModelFiles { transformer: at(), vae: at(), config })
    }

    /// The VAR files of `dir`, under any names: `None` when it holds neither part (another
    /// family's directory); an error when it holds one part without the other, two of a
    /// part, or a pair that does not fit.
    pub fn find(dir: &Path) -> Result<Option<ModelFiles>> {
        let config = dir.join("config.json");
        if config.exists() {
            return ModelFiles::converted(dir, &config);
        }
        let (mut transformer, mut vae, mut failed) = (Vec::new(), Vec::new(), None);
        for path in checkpoint_files(dir)? {
            let w = match open_any(&path) {
                Ok(w) => w,
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            match part_of(&w) {
                Some(Part::Transformer) => transformer.push((path, w)),
                Some(Part::Vae) => vae.push((path, w)),
                None => {}
            }
        }
        let names = |v: &[(PathBuf, Weights)]| v.iter().map(|(p, _)| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect::<Vec<_>>().join(", ");
        // A checkpoint that could not be read (refused pickle, truncated file) explains a
        // missing part better than its absence does.
        if transformer.len() + vae.len() < 2 {
            if let Some(e) = failed {
                return Err(e);
            }
        }
        match (transformer.len(), vae.len()) {
            (0, 0) => Ok(None),
            (1, 1) => {
                let (t, v) = (transformer.pop().expect("one"), vae.pop().expect("one"));
                let config = ModelConfig::infer(&t.1, &v.1)?;
                Ok(Some(ModelFiles { transformer: t, vae: v, config }))
            }
            (_, 0) => Err(Error::Input(format!("{}: {} is a VAR transformer, but no VQVAE file (vae_ch160v4096z32.pth) is here", dir.display(), names(&transformer)))),
            (0, _) => Err(Error::Input(format!("{}: {} is a VAR VQVAE, but no transformer file (var_d16.pth … var_d36.pth) is here", dir.display(), names(&vae)))),
            _ => Err(Error::Input(format!(
                "{}: several VAR files of one kind (transformers: {}; VQVAEs: {}): keep one of each in a directory",
                dir.display(),
                names(&transformer),
                names(&vae)
            ))),
        }
    }
}

/// What `convert` writes beside the two safetensors files.
#[derive(serde::Serialize, serde::Deserialize)]
struct ConvertedFile {
    model_type: String,
    transformer: String,
    vae: String,
    /// The configuration read off the original files (checked again against the tensors).
    config: serde_json::Value,
}

impl ModelFiles {
    /// A directory `convert` wrote (`config.json` with `"model_type": "var"`), else `None`.
    fn converted(dir: &Path, config: &Path) -> Result<Option<ModelFiles>> {
        let text = std::fs::read_to_string(config).map_err(|e| Error::Io { path: config.to_path_buf(), source: e })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", config.display())))?;
        if v.get("model_type").and_then(|t| t.as_str()) != Some("var") {
            return Ok(None);
        }
        let c: ConvertedFile = serde_json::from_value(v).map_err(|e| Error::Config(format!("{}: {e}", config.display())))?;
        let open = |name: &str| -> Result<(PathBuf, Weights)> {
            let path = crate::weights::inside(dir, name, config)?;
            Ok((path.clone(), Weights::open_file(&path)?))
        };
        let (transformer, vae) = (open(&c.transformer)?, open(&c.vae)?);
        let inferred = ModelConfig::infer(&transformer.1, &vae.1)?;
        if serde_json::to_value(&inferred).ok().as_ref() != Some(&c.config) {
            return Err(Error::Config(format!("{}: its `config` does not describe the tensors of {} and {} (edited by hand?); convert the original files again", config.display(), c.transformer, c.vae)));
        }
        Ok(Some(ModelFiles { transformer, vae, config: inferred }))
    }

    /// Writes the model as `transformer.safetensors`, `vae.safetensors` and a `config.json`
    /// into `out` (created; an existing file there is refused unless `force`), which
    /// `--model out` loads memory-mapped.
    pub fn convert(&self, out: &Path, force: bool) -> Result<()> {
        let io = |path: &Path, e: std::io::Error| Error::Io { path: path.to_path_buf(), source: e };
        std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
        let names = ["transformer.safetensors", "vae.safetensors", "config.json"];
        for n in names {
            let p = out.join(n);
            if p.exists() && !force {
                return Err(Error::Input(format!("{} exists; add --force to overwrite it", p.display())));
            }
        }
        self.transformer.1.save_safetensors(&out.join(names[0]))?;
        self.vae.1.save_safetensors(&out.join(names[1]))?;
        let doc = ConvertedFile {
            model_type: "var".into(),
            transformer: names[0].into(),
            vae: names[1].into(),
            config: serde_json::to_value(&self.config).map_err(|e| Error::Config(e.to_string()))?,
        };
        let path = out.join(names[2]);
        std::fs::write(&path, serde_json::to_string_pretty(&doc).map_err(|e| Error::Config(e.to_string()))? + "\n").map_err(|e| io(&path, e))
    }
}

/// ImageNet-1k class names, by index (`model/assets/imagenet_classes.txt`, torchvision's list).
pub fn class_names() -> Vec<&'static str> {
    include_str!("../assets/imagenet_classes.txt").lines().collect()
}

/// A class given as an index (`207`) or a name (`golden retriever`, any case); an unknown name
/// is an error listing the closest names.
pub fn parse_class(s: &str, num_classes: usize) -> Result<usize> {
    let s = s.trim();
    if let Ok(i) = s.parse::<usize>() {
        return if i < num_classes { Ok(i) } else { Err(Error::Input(format!("class {i} is out of range: this model has classes 0..{}", num_classes - 1))) };
    }
    let names = class_names();
    if num_classes != names.len() {
        return Err(Error::Input(format!("this model has {num_classes} classes, not ImageNet's 1000: give the class as a number 0..{}", num_classes - 1)));
    }
    let want = s.to_lowercase();
    if let Some(i) = names.iter().position(|n| n.to_lowercase() == want) {
        return Ok(i);
    }
    let mut scored: Vec<(usize, &str)> = names.iter().map(|n| (edit_distance(&want, &n.to_lowercase()), *n)).collect();
    scored.sort();
    let close: Vec<String> = scored.iter().take(3).map(|(_, n)| format!("\"{n}\"")).collect();
    Err(Error::Input(format!("unknown ImageNet class \"{s}\"; closest: {} (or give its number 0..999)", close.join(", "))))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + (ca != cb) as usize).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Map(BTreeMap<String, Vec<usize>>);
    impl Shapes for Map {
        fn shape(&self, name: &str) -> Option<Vec<usize>> {
            self.0.get(name).cloned()
        }
        fn names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
    }

    /// The shapes of VAR-d16 and its VQVAE, as the official builder makes them.
    fn d16() -> (Map, Map) {
        let (d, c, v, cv) = (16, 1024, 4096, 32);
        let mut t = BTreeMap::new();
        let put = |m: &mut BTreeMap<String, Vec<usize>>, n: &str, s: &[usize]| {
            m.insert(n.to_string(), s.to_vec());
        };
        put(&mut t, "class_emb.weight", &[1001, c]);
        put(&mut t, "pos_start", &[1, 1, c]);
        put(&mut t, "pos_1LC", &[1, 680, c]);
        put(&mut t, "lvl_embed.weight", &[10, c]);
        put(&mut t, "word_embed.weight", &[c, cv]);
        put(&mut t, "head.weight", &[v, c]);
        for i in 0..d {
            put(&mut t, &format!("blocks.{i}.attn.scale_mul_1H11"), &[1, d, 1, 1]);
            put(&mut t, &format!("blocks.{i}.ffn.fc1.weight"), &[4 * c, c]);
            put(&mut t, &format!("blocks.{i}.ada_lin.1.weight"), &[6 * c, c]);
        }
        let mut a = BTreeMap::new();
        put(&mut a, "quantize.embedding.weight", &[v, cv]);
        put(&mut a, "encoder.conv_in.weight", &[160, 3, 3, 3]);
        put(&mut a, "decoder.conv_in.weight", &[640, cv, 3, 3]);
        put(&mut a, "quant_conv.weight", &[cv, cv, 3, 3]);
        put(&mut a, "decoder.mid.attn_1.qkv.weight", &[1920, 640, 1, 1]);
        for (i, m) in [1, 1, 2, 2, 4].iter().enumerate() {
            for j in 0..3 {
                put(&mut a, &format!("decoder.up.{i}.block.{j}.conv1.weight"), &[160 * m, 160, 3, 3]);
                if i == 4 {
                    put(&mut a, &format!("decoder.up.{i}.attn.{j}.qkv.weight"), &[1920, 640, 1, 1]);
                }
            }
        }
        for i in 0..4 {
            put(&mut a, &format!("quantize.quant_resi.qresi_ls.{i}.weight"), &[cv, cv, 3, 3]);
        }
        (Map(t), Map(a))
    }

    #[test]
    fn published_shapes_are_what_their_files_say() {
        let (t, a) = d16();
        assert_eq!(ModelConfig::published("var-d16").unwrap(), ModelConfig::infer(&t, &a).unwrap());
        let d36 = ModelConfig::published("var-d36").unwrap();
        assert_eq!((d36.var.width, d36.var.shared_adaln, d36.image_size, d36.var.tokens()), (2304, true, 512, 2240));
        assert!(ModelConfig::published("var-d17").is_none());
    }

    #[test]
    fn classes_by_number_or_name() {
        assert_eq!(parse_class("207", 1000).unwrap(), 207);
        assert_eq!(parse_class("Golden Retriever", 1000).unwrap(), 207);
        assert!(parse_class("1000", 1000).unwrap_err().to_string().contains("out of range"));
        let e = parse_class("golden retreiver", 1000).unwrap_err().to_string();
        assert!(e.contains("\"golden retriever\""), "{e}");
    }

    #[test]
    fn d16_is_read_off_its_shapes() {
        let (t, a) = d16();
        assert_eq!(part_of(&t), Some(Part::Transformer));
        assert_eq!(part_of(&a), Some(Part::Vae));
        let m = ModelConfig::infer(&t, &a).unwrap();
        assert_eq!((m.var.depth, m.var.width, m.var.heads, m.var.head_dim(), m.var.mlp_hidden), (16, 1024, 16, 64, 4096));
        assert_eq!((m.var.num_classes, m.var.vocab_size, m.var.code_dim, m.var.shared_adaln, m.var.attn_l2_norm), (1000, 4096, 32, false, true));
        assert_eq!(m.var.patch_nums, vec![1, 2, 3, 4, 5, 6, 8, 10, 13, 16]);
        assert_eq!(m.var.tokens(), 680);
        assert_eq!((m.vae.ch, m.vae.ch_mult.clone(), m.vae.num_res_blocks, m.vae.using_sa, m.vae.using_mid_sa), (160, vec![1, 1, 2, 2, 4], 2, true, true));
        assert_eq!((m.vae.z_channels, m.vae.quant_conv_kernel, m.vae.phi, m.vae.patch_size(), m.image_size), (32, 3, PhiSharing::Partial(4), 16, 256));
    }

    #[test]
    fn a_mismatched_pair_or_an_unknown_schedule_is_refused() {
        let (mut t, a) = d16();
        t.0.insert("head.weight".into(), vec![8192, 1024]);
        t.0.insert("blocks.0.ffn.fc1.weight".into(), vec![4096, 1024]);
        let e = ModelConfig::infer(&t, &a).unwrap_err().to_string();
        assert!(e.contains("not a pair"), "{e}");
        let (mut t, _) = d16();
        t.0.insert("pos_1LC".into(), vec![1, 700, 1024]);
        let e = VarConfig::infer(&t).unwrap_err().to_string();
        assert!(e.contains("700 tokens over 10 scales") && e.contains("256 px"), "{e}");
        let (mut t, _) = d16();
        t.0.remove("blocks.7.ffn.fc1.weight");
        t.0.remove("blocks.7.ada_lin.1.weight");
        t.0.remove("blocks.7.attn.scale_mul_1H11");
        let e = VarConfig::infer(&t).unwrap_err().to_string();
        assert!(e.contains("some are missing"), "{e}");
    }
}
