//! The OpenAI-shaped surface of `nextflow serve`: the error body, and every request parsed
//! and checked field by field before any work is queued (a wrong type, an unknown field or
//! a value out of range is a 400 naming the field).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Longest prompt, negative prompt or chat message, in characters.
pub const MAX_PROMPT_CHARS: usize = 4000;
/// Most images one request may ask for (OpenAI's own limit).
pub const MAX_IMAGES: usize = 10;
/// Most messages in one chat request.
pub const MAX_MESSAGES: usize = 256;
/// Largest sampling values accepted (beyond these the logits overflow to inf or NaN).
pub const MAX_CFG: f64 = 100.0;
pub const MAX_TEMPERATURE: f64 = 100.0;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, code: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code, retry_after: None }
    }

    /// 400 about one field of the request.
    pub fn field(param: &str, message: impl Into<String>) -> ApiError {
        ApiError { param: Some(param.to_string()), ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", Some("invalid_value"), message) }
    }

    /// 400 about the request as a whole.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", None, message)
    }

    /// 500: this request failed inside the server; the server goes on.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", Some("internal_error"), message)
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, [(header::CONTENT_TYPE, "application/json")], self.body().to_string()).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// The body of a JSON endpoint: `application/json`, an object.
pub fn json_object(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json") {
        let shown = if ct.is_empty() { "none".to_string() } else { format!("`{ct}`") };
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request_error", Some("unsupported_media_type"), format!("the body must be JSON with Content-Type: application/json (got {shown})")));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::invalid(format!("the body must be a JSON object, not {}", kind_of(&other)))),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", Some("invalid_json"), format!("the body is not valid JSON: {e}"))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to the fields of a JSON object; `null` is the same as absent.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>, prefix: &str) -> Fields<'a> {
        Fields { obj, prefix: prefix.to_string() }
    }

    fn name(&self, field: &str) -> String {
        if self.prefix.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.prefix)
        }
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    /// Every field is one of `known`; OpenAI refuses unknown arguments the same way.
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.obj.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(ApiError::field(&self.name(k), format!("unrecognized request argument `{}`; this endpoint takes {}", self.name(k), known.join(", ")))),
            None => Ok(()),
        }
    }

    pub fn value(&self, field: &str) -> Option<&'a Value> {
        self.get(field)
    }

    pub fn string(&self, field: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::field(&self.name(field), format!("`{}` must be a string, not {}", self.name(field), kind_of(v)))),
        }
    }

    /// A text field of at most MAX_PROMPT_CHARS characters.
    pub fn text(&self, field: &str) -> Result<Option<&'a str>, ApiError> {
        let s = self.string(field)?;
        if let Some(s) = s {
            let n = s.chars().count();
            if n > MAX_PROMPT_CHARS {
                return Err(ApiError::field(&self.name(field), format!("`{}` has {n} characters; at most {MAX_PROMPT_CHARS} are read", self.name(field))));
            }
        }
        Ok(s)
    }

    pub fn boolean(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::field(&self.name(field), format!("`{}` must be true or false, not {}", self.name(field), kind_of(v)))),
        }
    }

    /// A whole number in `lo..=hi`.
    pub fn integer(&self, field: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(field) else { return Ok(None) };
        let name = self.name(field);
        let n = v.as_u64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64).map(|f| f as u64));
        match n {
            Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            Some(n) => Err(ApiError::field(&name, format!("`{name}` must be from {lo} to {hi}, got {n}"))),
            None if v.is_number() => Err(ApiError::field(&name, format!("`{name}` must be a whole number from {lo} to {hi}, got {v}"))),
            None => Err(ApiError::field(&name, format!("`{name}` must be a whole number, not {}", kind_of(v)))),
        }
    }

    /// A finite number in `lo..=hi` (`open_lo`: above lo).
    pub fn number(&self, field: &str, lo: f64, hi: f64, open_lo: bool) -> Result<Option<f64>, ApiError> {
        let Some(v) = self.get(field) else { return Ok(None) };
        let name = self.name(field);
        let Some(x) = v.as_f64() else {
            return Err(ApiError::field(&name, format!("`{name}` must be a number, not {}", kind_of(v))));
        };
        let above = if open_lo { x > lo } else { x >= lo };
        if !(x.is_finite() && above && x <= hi) {
            let range = if open_lo { format!("above {lo} and at most {hi}") } else { format!("from {lo} to {hi}") };
            return Err(ApiError::field(&name, format!("`{name}` must be {range}, got {x}")));
        }
        Ok(Some(x))
    }
}

/// The OpenAI `size` field: `WxH` in pixels, or `auto` (None: the model's native canvas).
pub fn parse_size(s: &str) -> Result<Option<(usize, usize)>, ApiError> {
    if s == "auto" {
        return Ok(None);
    }
    s.split_once('x')
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0)
        .map(Some)
        .ok_or_else(|| ApiError::field("size", format!("`size` must be WIDTHxHEIGHT in pixels, e.g. 128x128, or auto; got `{s}`")))
}

/// Sampler values an image request may set (absent: the model's defaults).
#[derive(Clone, Debug, Default)]
pub struct ImageSampling {
    pub cfg: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub temperature: Option<f32>,
    pub seed: Option<u64>,
}

impl ImageSampling {
    pub fn parse(f: &Fields) -> Result<ImageSampling, ApiError> {
        Ok(ImageSampling {
            cfg: f.number("cfg", 0.0, MAX_CFG, false)?.map(|x| x as f32),
            top_k: f.integer("top_k", 0, 1 << 20)?.map(|x| x as usize),
            top_p: f.number("top_p", 0.0, 1.0, true)?.map(|x| x as f32),
            temperature: f.number("temperature", 0.0, MAX_TEMPERATURE, false)?.map(|x| x as f32),
            seed: f.integer("seed", 0, u64::MAX)?,
        })
    }
}

/// `POST /v1/images/generations`.
#[derive(Clone, Debug)]
pub struct ImageRequest {
    pub model: Option<String>,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub n: usize,
    pub size: Option<(usize, usize)>,
    pub sampling: ImageSampling,
    /// Server-sent events: per-scale progress, then each image (this server's extension,
    /// shaped like OpenAI's `image_generation.*` stream events).
    pub stream: bool,
    pub class: Option<Value>,
}

/// A string field that may only be absent or `allowed` (`why`: the refusal of anything else).
pub fn only_value(f: &Fields, field: &str, allowed: &str, why: &str) -> Result<(), ApiError> {
    match f.string(field)? {
        Some(v) if v != allowed => Err(ApiError::field(field, format!("{why}; got `{v}`"))),
        _ => Ok(()),
    }
}

impl ImageRequest {
    pub fn parse(obj: &Map<String, Value>) -> Result<ImageRequest, ApiError> {
        let f = Fields::new(obj, "");
        f.only(&["model", "prompt", "negative_prompt", "n", "size", "response_format", "output_format", "seed", "cfg", "top_k", "top_p", "temperature", "class", "stream", "user"])?;
        only_value(&f, "response_format", "b64_json", "this server keeps no files (it is stateless), so it returns images inline: `response_format` must be b64_json")?;
        only_value(&f, "output_format", "png", "images are PNG: `output_format` must be png")?;
        f.string("user")?;
        let class = f.value("class").cloned();
        let prompt = match (f.text("prompt")?, &class) {
            (Some(p), _) if p.trim().is_empty() => return Err(ApiError::field("prompt", "`prompt` is empty: say what to paint, e.g. \"a red circle\"")),
            (Some(p), _) => p.to_string(),
            (None, Some(_)) => String::new(),
            (None, None) => return Err(ApiError::field("prompt", "`prompt` is required: what to paint, e.g. \"a red circle\"")),
        };
        Ok(ImageRequest {
            model: f.string("model")?.map(str::to_string),
            prompt,
            negative_prompt: f.text("negative_prompt")?.map(str::to_string),
            n: f.integer("n", 1, MAX_IMAGES as u64)?.unwrap_or(1) as usize,
            size: f.string("size")?.map(parse_size).transpose()?.flatten(),
            sampling: ImageSampling::parse(&f)?,
            stream: f.boolean("stream")?.unwrap_or(false),
            class,
        })
    }
}

/// A decoded `image_url` part: the bytes of a `data:` URL.
#[derive(Clone, Debug)]
pub struct ImagePart {
    pub bytes: Vec<u8>,
    pub param: String,
}

#[derive(Clone, Debug)]
pub struct ChatMessage {
    pub role: String,
    pub text: String,
    pub images: Vec<ImagePart>,
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    pub repetition_penalty: Option<f32>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Largest decoded image in a data URL.
pub const MAX_IMAGE_BYTES: usize = 8 << 20;

fn data_url(url: &str, param: &str) -> Result<Vec<u8>, ApiError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(ApiError::field(param, "images are read from data: URLs (data:image/png;base64,...); this server fetches nothing from the network"));
    };
    let (meta, payload) = rest.split_once(',').ok_or_else(|| ApiError::field(param, "a data: URL needs a comma before its payload"))?;
    let mut meta = meta.split(';');
    let mime = meta.next().unwrap_or("");
    if !["image/png", "image/jpeg", "image/jpg", "image/webp"].contains(&mime.to_ascii_lowercase().as_str()) {
        return Err(ApiError::field(param, format!("the data URL holds `{mime}`; PNG, JPEG and WebP images are read")));
    }
    if !meta.any(|m| m == "base64") {
        return Err(ApiError::field(param, "the data URL must be base64 (data:image/png;base64,...)"));
    }
    if payload.len() / 4 * 3 > MAX_IMAGE_BYTES {
        return Err(ApiError::field(param, format!("the image is above the {} MiB an image may have", MAX_IMAGE_BYTES >> 20)));
    }
    base64::engine::general_purpose::STANDARD.decode(payload.trim()).map_err(|e| ApiError::field(param, format!("the data URL's base64 is broken: {e}")))
}

fn message(v: &Value, i: usize) -> Result<ChatMessage, ApiError> {
    let at = format!("messages[{i}]");
    let Value::Object(m) = v else {
        return Err(ApiError::field(&at, format!("`{at}` must be an object with role and content")));
    };
    let f = Fields::new(m, &at);
    f.only(&["role", "content", "name"])?;
    f.string("name")?;
    let role = f.string("role")?.ok_or_else(|| ApiError::field(&format!("{at}.role"), format!("`{at}.role` is required: system, user or assistant")))?;
    if !["system", "developer", "user", "assistant"].contains(&role) {
        return Err(ApiError::field(&format!("{at}.role"), format!("`{at}.role` must be system, user or assistant, got `{role}`")));
    }
    let role = if role == "developer" { "system" } else { role };
    let mut text = String::new();
    let mut images = Vec::new();
    match f.value("content") {
        None => return Err(ApiError::field(&format!("{at}.content"), format!("`{at}.content` is required"))),
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(parts)) => {
            for (j, p) in parts.iter().enumerate() {
                let pat = format!("{at}.content[{j}]");
                let Value::Object(p) = p else {
                    return Err(ApiError::field(&pat, format!("`{pat}` must be an object: {{\"type\": \"text\", \"text\": ...}} or {{\"type\": \"image_url\", \"image_url\": {{\"url\": ...}}}}")));
                };
                let pf = Fields::new(p, &pat);
                match pf.string("type")? {
                    Some("text") => {
                        pf.only(&["type", "text"])?;
                        if !text.is_empty() {
                            text.push(' ');
                        }
                        text.push_str(pf.string("text")?.unwrap_or(""));
                    }
                    Some("image_url") => {
                        pf.only(&["type", "image_url"])?;
                        let param = format!("{pat}.image_url");
                        let url = match pf.value("image_url") {
                            Some(Value::String(u)) => u.as_str(),
                            Some(Value::Object(o)) => {
                                let uf = Fields::new(o, &param);
                                uf.only(&["url", "detail"])?;
                                uf.string("detail")?;
                                uf.string("url")?.ok_or_else(|| ApiError::field(&format!("{param}.url"), format!("`{param}.url` is required")))?
                            }
                            _ => return Err(ApiError::field(&param, format!("`{param}` must be {{\"url\": \"data:image/png;base64,...\"}}"))),
                        };
                        images.push(ImagePart { bytes: data_url(url, &param)?, param });
                    }
                    Some(other) => return Err(ApiError::field(&format!("{pat}.type"), format!("content parts are text or image_url, not `{other}`"))),
                    None => return Err(ApiError::field(&format!("{pat}.type"), format!("`{pat}.type` is required: text or image_url"))),
                }
            }
        }
        Some(v) => return Err(ApiError::field(&format!("{at}.content"), format!("`{at}.content` must be a string or an array of parts, not {}", kind_of(v)))),
    }
    let n = text.chars().count();
    if n > MAX_PROMPT_CHARS {
        return Err(ApiError::field(&format!("{at}.content"), format!("`{at}.content` has {n} characters; at most {MAX_PROMPT_CHARS} are read")));
    }
    Ok(ChatMessage { role: role.to_string(), text, images })
}

impl ChatRequest {
    pub fn parse(obj: &Map<String, Value>) -> Result<ChatRequest, ApiError> {
        let f = Fields::new(obj, "");
        f.only(&[
            "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "repetition_penalty", "stream", "stream_options", "n", "stop",
            "frequency_penalty", "presence_penalty", "user",
        ])?;
        f.string("user")?;
        if let Some(n) = f.integer("n", 1, 1 << 20)? {
            if n != 1 {
                return Err(ApiError::field("n", "this server writes one choice per request: `n` must be 1"));
            }
        }
        if f.value("stop").is_some() {
            return Err(ApiError::field("stop", "stop sequences are not supported: generation ends at the model's end token or max_tokens"));
        }
        for p in ["frequency_penalty", "presence_penalty"] {
            if f.number(p, -2.0, 2.0, false)?.is_some_and(|x| x != 0.0) {
                return Err(ApiError::field(p, format!("`{p}` is not supported; `repetition_penalty` (1 = off) is")));
            }
        }
        let messages = match f.value("messages") {
            Some(Value::Array(m)) if m.is_empty() => return Err(ApiError::field("messages", "`messages` is empty")),
            Some(Value::Array(m)) if m.len() > MAX_MESSAGES => return Err(ApiError::field("messages", format!("{} messages; at most {MAX_MESSAGES} are read", m.len()))),
            Some(Value::Array(m)) => m.iter().enumerate().map(|(i, v)| message(v, i)).collect::<Result<Vec<_>, _>>()?,
            Some(v) => return Err(ApiError::field("messages", format!("`messages` must be an array, not {}", kind_of(v)))),
            None => return Err(ApiError::field("messages", "`messages` is required")),
        };
        let include_usage = match f.value("stream_options") {
            None => false,
            Some(Value::Object(o)) => {
                let sf = Fields::new(o, "stream_options");
                sf.only(&["include_usage"])?;
                sf.boolean("include_usage")?.unwrap_or(false)
            }
            Some(v) => return Err(ApiError::field("stream_options", format!("`stream_options` must be an object, not {}", kind_of(&v.clone())))),
        };
        let max = f.integer("max_completion_tokens", 1, 1 << 20)?.or(f.integer("max_tokens", 1, 1 << 20)?);
        Ok(ChatRequest {
            model: f.string("model")?.map(str::to_string),
            messages,
            max_tokens: max.map(|x| x as usize),
            temperature: f.number("temperature", 0.0, 2.0, false)?.map(|x| x as f32),
            top_p: f.number("top_p", 0.0, 1.0, true)?.map(|x| x as f32),
            top_k: f.integer("top_k", 0, 1 << 20)?.map(|x| x as usize),
            seed: f.integer("seed", 0, u64::MAX)?,
            repetition_penalty: f.number("repetition_penalty", 0.0, 10.0, true)?.map(|x| x as f32),
            stream: f.boolean("stream")?.unwrap_or(false),
            include_usage,
        })
    }
}
