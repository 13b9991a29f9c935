//! Images in and out of the CLI: input files of any common format and size fitted to the
//! model's canvas, and the `parameters` text chunk written into every PNG (the A1111 /
//! stable-diffusion.cpp convention) that `generate --from-png` reads back.

use image::imageops::FilterType;
use image::{ImageReader, Limits, RgbImage};
use std::path::Path;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Largest input image side (the pixel limit is `shapeeval::MAX_IMAGE_PIXELS`).
pub const MAX_SIDE: u32 = 8192;

/// Largest input image file.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Reads a PNG, JPEG or WebP file (the format is taken from its bytes, not its name) as RGB8
/// of `size` x `size`: scaled (Triangle filter) so that the short side fits and the centre
/// cut out, or with `pad` scaled so that the long side fits and centred on the colour of
/// the image's border. An image already `size` x `size` is used as it is. The header is
/// checked against the size limits before any pixel is decoded.
pub fn read_input(path: &Path, size: usize, pad: bool) -> Result<(Vec<u8>, (u32, u32))> {
    let name = path.display();
    let len = std::fs::metadata(path).map_err(|e| format!("{name}: {e}"))?.len();
    if len > MAX_FILE_BYTES {
        return Err(format!("{name}: {} is above the {} an input image file may have", super::ui::bytes(len), super::ui::bytes(MAX_FILE_BYTES)).into());
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
    read_input_bytes(&bytes, &path.display().to_string(), size, pad)
}

/// [`read_input`] of an image held in memory (`name` labels the errors), e.g. an upload.
pub fn read_input_bytes(bytes: &[u8], name: &str, size: usize, pad: bool) -> Result<(Vec<u8>, (u32, u32))> {
    let open = || -> Result<ImageReader<std::io::Cursor<&[u8]>>> {
        let reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| format!("{name}: {e}"))?;
        match reader.format() {
            Some(image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP) => Ok(reader),
            Some(f) => Err(format!("{name}: a {f:?} image; PNG, JPEG and WebP are read").into()),
            None => Err(format!("{name}: not a PNG, JPEG or WebP image").into()),
        }
    };
    // The size from the header first, so that a huge declared image is refused before any
    // pixel buffer exists.
    let (w, h) = open()?.into_dimensions().map_err(|e| format!("{name}: {e}"))?;
    if w as u64 * h as u64 > crate::shapeeval::MAX_IMAGE_PIXELS || w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!("{name}: {w}x{h} is above the {} pixels ({MAX_SIDE} a side) an input image may have", crate::shapeeval::MAX_IMAGE_PIXELS).into());
    }
    let mut reader = open()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| format!("{name}: {e}"))?;
    let (w, h) = (decoded.width(), decoded.height());
    if w == 0 || h == 0 {
        return Err(format!("{name}: the image is empty").into());
    }
    let rgb = decoded.to_rgb8();
    let s = size as u32;
    if (w, h) == (s, s) {
        return Ok((rgb.into_raw(), (w, h)));
    }
    let fitted = if pad { pad_to(&rgb, s) } else { crop_to(&rgb, s) };
    Ok((fitted.into_raw(), (w, h)))
}

/// Short side to `s`, then the centre `s` x `s`.
fn crop_to(img: &RgbImage, s: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let short = w.min(h) as u64;
    let (nw, nh) = (((w as u64 * s as u64).div_ceil(short)) as u32, ((h as u64 * s as u64).div_ceil(short)) as u32);
    let scaled = image::imageops::resize(img, nw.max(s), nh.max(s), FilterType::Triangle);
    let (x, y) = ((scaled.width() - s) / 2, (scaled.height() - s) / 2);
    image::imageops::crop_imm(&scaled, x, y, s, s).to_image()
}

/// Long side to `s`, centred on the mean colour of the image's border.
fn pad_to(img: &RgbImage, s: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let long = w.max(h) as u64;
    let (nw, nh) = (((w as u64 * s as u64) / long).max(1) as u32, ((h as u64 * s as u64) / long).max(1) as u32);
    let scaled = image::imageops::resize(img, nw, nh, FilterType::Triangle);
    let mut sum = [0u64; 3];
    let mut n = 0u64;
    for (x, y, p) in img.enumerate_pixels() {
        if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
            for c in 0..3 {
                sum[c] += p[c] as u64;
            }
            n += 1;
        }
    }
    let fill = image::Rgb([0, 1, 2].map(|c| (sum[c] / n.max(1)) as u8));
    let mut out = RgbImage::from_pixel(s, s, fill);
    image::imageops::overlay(&mut out, &scaled, ((s - nw) / 2) as i64, ((s - nh) / 2) as i64);
    out
}

/// How an image was painted: what `--from-png` needs to paint it again.
#[derive(Clone, Debug, PartialEq)]
pub struct Parameters {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub steps: usize,
    pub cfg: f32,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub top_k: usize,
    pub top_p: f32,
    pub temperature: f32,
    pub model: String,
    pub model_hash: String,
    pub version: String,
    /// Edits: the input image's file name (such a PNG is not a text-to-image generation).
    pub edit_of: Option<String>,
}

/// A value of the settings line, quoted (JSON style) where it holds a separator.
fn value(v: &str) -> String {
    if v.contains([',', ':', '"', '\n']) {
        serde_json::to_string(v).expect("a string serializes")
    } else {
        v.to_string()
    }
}

impl Parameters {
    /// The `parameters` text: the prompt, `Negative prompt: ...` when there is one, and one
    /// line of `Key: value` settings, as A1111 writes it (Steps are the scales).
    pub fn to_text(&self) -> String {
        let mut t = self.prompt.clone();
        if let Some(n) = &self.negative_prompt {
            t.push_str("\nNegative prompt: ");
            t.push_str(n);
        }
        t.push_str(&format!(
            "\nSteps: {}, Sampler: next-scale, CFG scale: {}, Seed: {}, Size: {}x{}, Model hash: {}, Model: {}, Top-k: {}, Top-p: {}, Temperature: {}, Version: {}",
            self.steps,
            self.cfg,
            self.seed,
            self.width,
            self.height,
            value(&self.model_hash),
            value(&self.model),
            self.top_k,
            self.top_p,
            self.temperature,
            value(&self.version)
        ));
        if let Some(source) = &self.edit_of {
            t.push_str(&format!(", Edit of: {}", value(source)));
        }
        t
    }

    /// Parses [`Parameters::to_text`]'s format; the error names what is missing or wrong.
    pub fn parse(text: &str) -> std::result::Result<Parameters, String> {
        let (head, settings) = text.rsplit_once('\n').ok_or("no settings line (Steps: ..., Seed: ...) after the prompt")?;
        let (prompt, negative) = match head.split_once("\nNegative prompt: ") {
            Some((p, n)) => (p.to_string(), Some(n.to_string())),
            None => match head.strip_prefix("Negative prompt: ") {
                Some(n) => (String::new(), Some(n.to_string())),
                None => (head.to_string(), None),
            },
        };
        let fields = settings_fields(settings)?;
        let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str()).ok_or(format!("no `{k}` in the settings"));
        let num = |k: &str| -> std::result::Result<f64, String> { get(k)?.parse::<f64>().map_err(|_| format!("`{k}: {}` is not a number", get(k).unwrap_or(""))) };
        let int = |k: &str| -> std::result::Result<u64, String> { get(k)?.parse::<u64>().map_err(|_| format!("`{k}: {}` is not a whole number", get(k).unwrap_or(""))) };
        let (w, h) = get("Size")?.split_once('x').ok_or("`Size` is not WxH")?;
        let dim = |s: &str| s.trim().parse::<usize>().map_err(|_| format!("`Size: {}` is not WxH", get("Size").unwrap_or("")));
        Ok(Parameters {
            prompt,
            negative_prompt: negative,
            steps: int("Steps")? as usize,
            cfg: num("CFG scale")? as f32,
            seed: int("Seed")?,
            width: dim(w)?,
            height: dim(h)?,
            top_k: int("Top-k")? as usize,
            top_p: num("Top-p")? as f32,
            temperature: num("Temperature")? as f32,
            model: get("Model")?.to_string(),
            model_hash: get("Model hash")?.to_string(),
            version: get("Version").unwrap_or("").to_string(),
            edit_of: get("Edit of").ok().map(str::to_string),
        })
    }
}

/// `Key: value, Key: "quoted, value", ...` as pairs.
fn settings_fields(line: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once(": ").ok_or_else(|| format!("settings `{rest}`: expected `Key: value`"))?;
        let (v, tail) = if after.starts_with('"') {
            let mut de = serde_json::Deserializer::from_str(after).into_iter::<String>();
            let v = de.next().ok_or("unterminated quoted value")?.map_err(|e| format!("quoted value: {e}"))?;
            (v, &after[de.byte_offset()..])
        } else {
            match after.find(", ") {
                Some(i) => (after[..i].to_string(), &after[i..]),
                None => (after.to_string(), ""),
            }
        };
        out.push((key.trim().to_string(), v));
        rest = tail.trim_start_matches(',').trim_start();
    }
    Ok(out)
}

/// A PNG of `rgb` with `parameters` as its text chunk (tEXt when Latin-1, else iTXt).
pub fn png_with_parameters(rgb: &[u8], width: usize, height: usize, parameters: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    if parameters.chars().all(|c| (c as u32) < 256) {
        enc.add_text_chunk("parameters".into(), parameters.into())?;
    } else {
        enc.add_itxt_chunk("parameters".into(), parameters.into())?;
    }
    let mut w = enc.write_header()?;
    w.write_image_data(rgb)?;
    w.finish()?;
    Ok(out)
}

/// The `parameters` text of a PNG (tEXt, zTXt or iTXt), read without decoding its pixels.
pub fn read_parameters(path: &Path) -> Result<String> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
    let decoder = png::Decoder::new_with_limits(std::io::BufReader::new(file), png::Limits { bytes: 16 << 20 });
    let reader = decoder.read_info().map_err(|e| format!("{name}: not a readable PNG: {e}"))?;
    let info = reader.info();
    if let Some(t) = info.uncompressed_latin1_text.iter().find(|t| t.keyword == "parameters") {
        return Ok(t.text.clone());
    }
    if let Some(t) = info.compressed_latin1_text.iter().find(|t| t.keyword == "parameters") {
        return Ok(t.get_text().map_err(|e| format!("{name}: {e}"))?);
    }
    if let Some(t) = info.utf8_text.iter().find(|t| t.keyword == "parameters") {
        return Ok(t.get_text().map_err(|e| format!("{name}: {e}"))?);
    }
    Err(format!("{name}: no `parameters` text in this PNG (only images that nextflow generate wrote carry it)").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Parameters {
        Parameters {
            prompt: "a red circle, big: really".into(),
            negative_prompt: Some("a blue square".into()),
            steps: 6,
            cfg: 3.0,
            seed: 42,
            width: 96,
            height: 48,
            top_k: 50,
            top_p: 0.9,
            temperature: 1.0,
            model: "models/my, model".into(),
            model_hash: "0123456789abcdef".into(),
            version: "nextflow 0.1.0".into(),
            edit_of: None,
        }
    }

    #[test]
    fn parameters_round_trip() {
        let p = sample();
        assert_eq!(Parameters::parse(&p.to_text()).unwrap(), p);
        let none = Parameters { negative_prompt: None, prompt: "two\nlines".into(), edit_of: Some("in, put.png".into()), ..sample() };
        assert_eq!(Parameters::parse(&none.to_text()).unwrap(), none);
    }

    #[test]
    fn parameters_errors_name_the_field() {
        let e = Parameters::parse("a circle\nSteps: 6, Sampler: next-scale").unwrap_err();
        assert!(e.starts_with("no `") && e.ends_with("` in the settings"), "{e}");
        let e = Parameters::parse("just a prompt").unwrap_err();
        assert!(e.contains("settings"), "{e}");
    }
}
