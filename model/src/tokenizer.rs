//! Text tokenizer (`tokenizer.json` through the pure-Rust `tokenizers` features), chat
//! templates from `tokenizer_config.json` rendered with `minijinja`, and streaming
//! detokenization that never emits half a UTF-8 character.

use crate::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// Template steps a chat template may take (a long conversation needs a few thousand).
pub const CHAT_TEMPLATE_FUEL: u64 = 1_000_000;
/// Largest rendered prompt (bytes).
pub const CHAT_TEMPLATE_MAX_BYTES: usize = 64 << 20;
/// Longest a chat template may render.
pub const CHAT_TEMPLATE_TIME: std::time::Duration = std::time::Duration::from_secs(10);
/// Most items a template's `range` may produce (minijinja's own limit is 100000).
pub const CHAT_TEMPLATE_MAX_RANGE: i128 = 10_000;

/// Collects rendered text, refusing to grow past [`CHAT_TEMPLATE_MAX_BYTES`].
struct Limited(Vec<u8>);

impl std::io::Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > CHAT_TEMPLATE_MAX_BYTES {
            return Err(std::io::Error::other("output limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn render_chat_template(template: &str, messages: &[Message], add_generation_prompt: bool, bos: &str, eos: &str) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
    env.set_recursion_limit(64);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_function("range", |lower: isize, upper: Option<isize>, step: Option<isize>| {
        let (lo, hi) = match upper {
            Some(u) => (lower as i128, u as i128),
            None => (0, lower as i128),
        };
        let st = step.unwrap_or(1) as i128;
        let n = match st {
            0 => 0,
            s if s > 0 => (hi - lo + s - 1).div_euclid(s).max(0),
            s => (lo - hi - s - 1).div_euclid(-s).max(0),
        };
        if n > CHAT_TEMPLATE_MAX_RANGE {
            return Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("range of {n} items; at most {CHAT_TEMPLATE_MAX_RANGE}")));
        }
        minijinja::functions::range(lower, upper, step)
    });
    env.add_template("chat", template).map_err(|e| Error::Tokenizer(format!("chat_template: {e}")))?;
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos,
        eos_token => eos,
    };
    let mut out = Limited(Vec::new());
    env.get_template("chat").and_then(|t| t.render_captured_to(ctx, &mut out).map(|_| ())).map_err(|e| match e.kind() {
        minijinja::ErrorKind::OutOfFuel => Error::Tokenizer(format!("chat_template: stopped after {CHAT_TEMPLATE_FUEL} steps (a runaway loop?)")),
        minijinja::ErrorKind::WriteFailure => Error::Tokenizer(format!("chat_template: output above the {CHAT_TEMPLATE_MAX_BYTES} bytes a prompt may have")),
        _ => Error::Tokenizer(format!("chat_template: {e}")),
    })?;
    String::from_utf8(out.0).map_err(|_| Error::Tokenizer("chat_template: output is not UTF-8".into()))
}

/// One chat message.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// `bos_token`/`eos_token` of tokenizer_config.json: a string or `{"content": ...}`.
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// `<dir>/tokenizer.json`, and `<dir>/tokenizer_config.json` if present.
    pub fn load(dir: &Path) -> Result<TextTokenizer> {
        let path = crate::weights::inside(dir, "tokenizer.json", dir)?;
        let bytes = std::fs::read(&path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
        let config_path = crate::weights::inside(dir, "tokenizer_config.json", dir)?;
        TextTokenizer::from_bytes(&bytes, std::fs::read_to_string(config_path).ok().as_deref())
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
    }

    pub fn from_bytes(tokenizer_json: &[u8], tokenizer_config: Option<&str>) -> Result<TextTokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(tok_err)?;
        let (mut chat_template, mut bos_token, mut eos_token) = (None, None, None);
        if let Some(text) = tokenizer_config {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::Tokenizer(format!("tokenizer_config.json: {e}")))?;
            chat_template = match v.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default".
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
                _ => None,
            };
            bos_token = token_string(v.get("bos_token"));
            eos_token = token_string(v.get("eos_token"));
        }
        Ok(TextTokenizer { inner, chat_template, bos_token, eos_token })
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, add_special_tokens).map_err(tok_err)?.get_ids().to_vec())
    }

    /// Each token's span of the input text (to report unknown words as written).
    pub fn encode_spans(&self, text: &str) -> Result<Vec<String>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        Ok(enc.get_offsets().iter().map(|&(a, b)| text.get(a..b).unwrap_or("?").to_string()).collect())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(tok_err)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Renders the chat template over `messages`. The template is input from the model
    /// directory, so it runs inside limits: steps (fuel), recursion depth, `range` size,
    /// output size, and wall-clock time (it renders on its own thread; past the deadline the
    /// caller gets an error while the thread runs out its fuel). Any limit is a clear error.
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.chat_template.clone().ok_or_else(|| Error::Tokenizer("tokenizer_config.json has no chat_template".into()))?;
        let (messages, bos, eos) = (messages.to_vec(), self.bos_token.clone().unwrap_or_default(), self.eos_token.clone().unwrap_or_default());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("chat-template".into())
            .stack_size(16 << 20)
            .spawn(move || {
                let _ = tx.send(render_chat_template(&template, &messages, add_generation_prompt, &bos, &eos));
            })
            .map_err(|e| Error::Tokenizer(format!("chat_template: cannot start the renderer: {e}")))?;
        match rx.recv_timeout(CHAT_TEMPLATE_TIME) {
            Ok(rendered) => rendered,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(Error::Tokenizer(format!("chat_template: still rendering after {} s (a runaway template?); stopped", CHAT_TEMPLATE_TIME.as_secs())))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Error::Tokenizer("chat_template: the renderer failed".into())),
        }
    }

    /// The first control token (an added special token such as `<|im_end|>`) that `text`
    /// contains. Typed text may not carry them: the template's own markers would be forged.
    pub fn control_token_in(&self, text: &str) -> Option<String> {
        let mut specials: Vec<String> = self.inner.get_added_tokens_decoder().into_values().filter(|t| t.special && !t.content.is_empty()).map(|t| t.content).collect();
        specials.sort();
        specials.into_iter().find(|t| text.contains(t.as_str()))
    }
}

/// Turns a stream of ids into text pieces: `tokenizers`' own [`tokenizers::DecodeStream`]
/// (it holds back the bytes of an incomplete UTF-8 character until a later token completes
/// it, and decodes with enough context that joining spaces come out as a full decode gives
/// them), plus [`StreamDecoder::finish`] for what is still held back when the stream ends.
pub struct StreamDecoder<'a> {
    tokenizer: &'a TextTokenizer,
    stream: tokenizers::DecodeStream<
        'a,
        tokenizers::models::ModelWrapper,
        tokenizers::normalizers::NormalizerWrapper,
        tokenizers::pre_tokenizers::PreTokenizerWrapper,
        tokenizers::processors::PostProcessorWrapper,
        tokenizers::decoders::DecoderWrapper,
    >,
    ids: Vec<u32>,
    /// Bytes of the full decode emitted so far.
    emitted: usize,
    skip_special: bool,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a TextTokenizer, skip_special: bool) -> StreamDecoder<'a> {
        StreamDecoder { tokenizer, stream: tokenizer.inner.decode_stream(skip_special), ids: Vec::new(), emitted: 0, skip_special }
    }

    /// Adds one id; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let piece = self.stream.step(id).map_err(tok_err)?.unwrap_or_default();
        self.emitted += piece.len();
        Ok(piece)
    }

    /// Whatever is still held back at the end of the stream (an incomplete character comes
    /// out as U+FFFD, as a full decode gives it).
    pub fn finish(&mut self) -> Result<String> {
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        let rest = text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = text.len().max(self.emitted);
        Ok(rest)
    }
}
