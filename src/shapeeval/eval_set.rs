//! The understanding and editing evaluation inputs of the Python reference
//! (`tools/reference/train_transformer.py`: `evaluate_understanding`, `evaluate_editing`,
//! `EVAL_SEED = 7`), shipped as data because ShapeWorld images are rendered only in Python.
//!
//! `assets/shapeeval_set.json` is written by `tools/reference/make_eval_set.py`: per question
//! type (`what shape`, `color`, `count`, `where`) and per edit type (`recolor`, `remove`, `add`,
//! `move`), `n_per_type` samples, exactly those the reference evaluates with that `n_per_type`
//! (sample `k * n_per_type + i` of type `k`, seed 7, 128 px), images as base64 PNGs.

use serde::Deserialize;

use super::{decode_png_rgb, Error};

const SET_JSON: &str = include_str!("../../model/assets/shapeeval_set.json");

/// An image, a question about it and its one-word ground-truth answer.
#[derive(Clone, Debug)]
pub struct UnderstandingCase {
    /// Question type: "shape", "color", "count" or "where".
    pub kind: String,
    pub question: String,
    pub answer: String,
    /// `size` x `size` RGB8, row-major.
    pub rgb: Vec<u8>,
    pub size: usize,
}

/// A source image and an edit instruction for it.
#[derive(Clone, Debug)]
pub struct EditCase {
    /// Edit type: "recolor", "remove", "add" or "move".
    pub kind: String,
    pub instruction: String,
    /// `size` x `size` RGB8, row-major: the source image.
    pub rgb: Vec<u8>,
    pub size: usize,
}

#[derive(Deserialize)]
struct SetFile {
    #[allow(dead_code)]
    generator: String,
    seed: u64,
    n_per_type: usize,
    image_size: usize,
    understanding: Vec<UnderstandingEntry>,
    editing: Vec<EditEntry>,
}

#[derive(Deserialize)]
struct UnderstandingEntry {
    #[serde(rename = "type")]
    kind: String,
    question: String,
    answer: String,
    png: String,
}

#[derive(Deserialize)]
struct EditEntry {
    #[serde(rename = "type")]
    kind: String,
    instruction: String,
    png: String,
}

/// The seed the set was drawn with (the reference's `EVAL_SEED`) and the samples per type.
pub fn info() -> Result<(u64, usize), Error> {
    let set: SetFile = parse()?;
    Ok((set.seed, set.n_per_type))
}

fn parse() -> Result<SetFile, Error> {
    serde_json::from_str(SET_JSON).map_err(|e| Error::Set(e.to_string()))
}

fn image(png_b64: &str, image_size: usize, what: &str) -> Result<(Vec<u8>, usize), Error> {
    let bytes = base64_decode(png_b64).map_err(|e| Error::Set(format!("{what}: {e}")))?;
    let (rgb, size) = decode_png_rgb(&bytes).map_err(|e| Error::Set(format!("{what}: {e}")))?;
    if size != image_size {
        return Err(Error::Set(format!("{what}: {size} px, the set says {image_size}")));
    }
    Ok((rgb, size))
}

/// The understanding cases (grouped by question type, in the reference's order) and the edit
/// cases (grouped by edit type), images decoded.
pub fn load() -> Result<(Vec<UnderstandingCase>, Vec<EditCase>), Error> {
    let set = parse()?;
    let mut understanding = Vec::with_capacity(set.understanding.len());
    for (i, e) in set.understanding.into_iter().enumerate() {
        let (rgb, size) = image(&e.png, set.image_size, &format!("understanding[{i}]"))?;
        understanding.push(UnderstandingCase { kind: e.kind, question: e.question, answer: e.answer, rgb, size });
    }
    let mut editing = Vec::with_capacity(set.editing.len());
    for (i, e) in set.editing.into_iter().enumerate() {
        let (rgb, size) = image(&e.png, set.image_size, &format!("editing[{i}]"))?;
        editing.push(EditCase { kind: e.kind, instruction: e.instruction, rgb, size });
    }
    Ok((understanding, editing))
}

/// Standard base64 (RFC 4648 alphabet, `=` padding optional, ASCII whitespace ignored).
fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a') as u32 + 26),
            b'0'..=b'9' => Some((c - b'0') as u32 + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits, mut padding) = (0u32, 0u32, 0usize);
    for &c in text.as_bytes() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            padding += 1;
            continue;
        }
        if padding > 0 {
            return Err("base64: data after padding".into());
        }
        let v = value(c).ok_or_else(|| format!("base64: invalid character {:?}", c as char))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // 1 leftover sextet (6 bits) cannot end a valid encoding; 2 or 3 leave 4 or 2 zero bits.
    if bits >= 6 || padding > 2 || acc != 0 {
        return Err("base64: truncated or non-canonical ending".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapeeval::answer_question;

    const QUESTION_TYPES: [&str; 4] = ["shape", "color", "count", "where"];
    const EDIT_TYPES: [&str; 4] = ["recolor", "remove", "add", "move"];

    #[test]
    fn base64_round_trips() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYg").unwrap(), b"foob");
        assert_eq!(base64_decode("Zm9v\nYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert!(base64_decode("Zm9vY").is_err());
        assert!(base64_decode("Zh==").is_err());
        assert!(base64_decode("Zg==Zg").is_err());
        assert!(base64_decode("Zm9v!").is_err());
    }

    #[test]
    fn set_loads_and_detector_agrees_with_ground_truth() {
        let (seed, n) = info().unwrap();
        assert_eq!(seed, 7);
        assert!(n > 0);
        let (understanding, editing) = load().unwrap();
        assert_eq!(understanding.len(), n * QUESTION_TYPES.len());
        assert_eq!(editing.len(), n * EDIT_TYPES.len());
        for (k, kind) in QUESTION_TYPES.iter().enumerate() {
            assert!(understanding[k * n..(k + 1) * n].iter().all(|c| c.kind == *kind), "{kind}");
        }
        for (k, kind) in EDIT_TYPES.iter().enumerate() {
            assert!(editing[k * n..(k + 1) * n].iter().all(|c| c.kind == *kind), "{kind}");
        }
        for (i, c) in understanding.iter().enumerate() {
            assert_eq!(c.rgb.len(), c.size * c.size * 3);
            let detected = answer_question(&c.rgb, c.size, &c.question).unwrap();
            assert_eq!(detected, c.answer, "understanding[{i}] ({}): {:?}", c.kind, c.question);
        }
        for c in &editing {
            assert_eq!(c.rgb.len(), c.size * c.size * 3);
            crate::shapeeval::parse_instruction(&c.instruction).unwrap();
        }
    }
}
