//! `nextflow serve`: an OpenAI-compatible HTTP server (tokio + axum) over one loaded model.
//!
//! Handlers parse and check each request (api.rs), queue it for the model thread
//! (engine.rs), and answer as JSON or as server-sent events. The server keeps no state
//! between requests (no sessions, no stored files), so replicas behind any load balancer
//! are interchangeable.

mod api;
mod engine;
mod metrics;

use super::run::{self, TextModel};
use super::ModelArgs;
use api::{ApiError, ChatRequest, Fields, ImageRequest};
use axum::body::{Body, Bytes};
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use clap::Args;
use engine::{ChatPrompt, ChatWork, EditWork, Event, Finish, ImageWork, Job, Queue, Served, Work, Worker};
use metrics::Metrics;
use nextflow_model::text::TextOptions;
use nextflow_model::{ImageOptions, Message, ModelType};
use nextflow_runtime::Device;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

const PAGE: &str = include_str!("page.html");

/// Serve the model over HTTP: OpenAI's image and chat endpoints, a web page, metrics.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (0.0.0.0: every interface; put a proxy with TLS in front).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Most images in one forward batch: concurrent text-to-image requests with the same
    /// canvas and sampler settings are painted together, up to this many images.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Most requests waiting for the model; beyond it a request gets 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Seconds a request may take, waiting included; past it the answer is 504 and its
    /// work is dropped.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Largest request body in MiB (uploads and data URLs included).
    #[arg(long, default_value_t = 16)]
    pub max_body_mib: usize,
    /// Testing only: panic inside the model when a request's prompt is this text.
    #[arg(long, hide = true)]
    pub panic_on_prompt: Option<String>,
}

const EXAMPLES: &str = "Examples:
  nextflow serve                                   # the embedded model on http://127.0.0.1:8080
  nextflow serve --port 0                          # any free port (printed)
  nextflow serve -m ./Qwen2.5-0.5B-Instruct --host 0.0.0.0 --max-queue 256
  curl -s localhost:8080/v1/images/generations -H 'Content-Type: application/json' \\
       -d '{\"prompt\": \"a red circle\", \"seed\": 7}' | jq -r '.data[0].b64_json' | base64 -d > circle.png";

/// What the handlers know about the served model.
struct ModelInfo {
    id: String,
    created: u64,
    /// NextFlow: the canvases (width, height) with their schedules, the native size and
    /// the default sampler.
    canvases: Vec<((usize, usize), Vec<[usize; 2]>)>,
    image_size: usize,
    defaults: Option<ImageOptions>,
    context: usize,
}

struct App {
    served: Arc<Served>,
    info: ModelInfo,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    max_batch: usize,
    max_body: usize,
    next_id: AtomicU64,
}

type Shared = Arc<App>;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A seed for a request that names none: different per request.
fn fresh_seed(app: &App) -> u64 {
    let n = app.next_id.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    // splitmix64 of time and counter; 2^53 keeps it exact in JSON numbers.
    let mut z = t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 11
}

fn model_id(args: &ModelArgs) -> String {
    match (&args.model, &args.config) {
        (Some(dir), _) => std::fs::canonicalize(dir).ok().as_deref().unwrap_or(dir).file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned()),
        (None, Some(name)) => name.clone(),
        (None, None) => "nextflow-tiny".into(),
    }
}

pub fn serve(args: &ServeArgs, device: &Device) -> run::Result<()> {
    if args.max_batch == 0 || args.max_queue == 0 || args.timeout == 0 || args.max_body_mib == 0 {
        return Err(run::fail("--max-batch, --max-queue, --timeout and --max-body-mib must each be at least 1"));
    }
    let host: std::net::IpAddr = args.host.parse().map_err(|_| run::fail(format!("--host {}: expected an IP address such as 127.0.0.1 or 0.0.0.0", args.host)))?;
    let config = run::config_of(&args.model)?;
    let (served, info) = if config.model_type == ModelType::NextFlow {
        let t = &config.parts()?.tokenizer;
        let canvases: Vec<((usize, usize), Vec<[usize; 2]>)> = t.canvases().into_iter().map(|((h, w), s)| ((w, h), s)).collect();
        let largest = canvases.iter().max_by_key(|((w, h), _)| w * h).map(|(_, s)| s.clone());
        let (model, load) = run::load_nextflow_for(&args.model, device, args.max_batch, largest.as_deref(), true, true)?;
        let info = ModelInfo {
            id: model_id(&args.model),
            created: unix_now(),
            canvases,
            image_size: model.parts().tokenizer.image_size,
            defaults: Some(model.default_image_options()),
            context: model.config.backbone.max_position_embeddings,
        };
        (Served::NextFlow { model, info: load }, info)
    } else {
        let context = config.backbone.max_position_embeddings;
        let m: TextModel = run::load_text(&args.model, device, context)?;
        if m.tokenizer.is_none() {
            return Err(run::fail("this checkpoint has no tokenizer.json, which the server needs to read and write text"));
        }
        (Served::Text(m), ModelInfo { id: model_id(&args.model), created: unix_now(), canvases: Vec::new(), image_size: 0, defaults: None, context })
    };
    let served = Arc::new(served);
    let queue = Arc::new(Queue::new(args.max_queue));
    let metrics = Arc::new(Metrics::default());
    let worker = Worker { served: served.clone(), queue: queue.clone(), metrics: metrics.clone(), max_batch: args.max_batch, panic_on: args.panic_on_prompt.clone() };
    std::thread::Builder::new().name("nextflow-model".into()).spawn(move || worker.run())?;
    let app = Arc::new(App {
        served,
        info,
        queue,
        metrics,
        timeout: Duration::from_secs(args.timeout),
        max_batch: args.max_batch,
        max_body: args.max_body_mib << 20,
        next_id: AtomicU64::new(1),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().thread_name("nextflow-http").build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host, args.port)).await.map_err(|e| run::fail(format!("cannot listen on {}:{}: {e}", args.host, args.port)))?;
        let addr = listener.local_addr()?;
        let shown = if addr.ip().is_unspecified() { format!("http://127.0.0.1:{} (all interfaces)", addr.port()) } else { format!("http://{addr}") };
        println!("nextflow serve: {} on {shown}; the web page is at /, the API at /v1", app.info.id);
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        axum::serve(listener, router(app)).await.map_err(|e| run::fail(format!("server: {e}")))
    })
}

fn router(app: Shared) -> Router {
    let limit = app.max_body;
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_one))
        .route("/v1/images/generations", post(images_generations))
        .route("/v1/images/edits", post(images_edits))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

/// Every request: counted in the metrics by endpoint and status, logged on stderr.
async fn observe(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = match req.uri().path() {
        "/" => "/",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/v1/models" => "/v1/models",
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        "/v1/images/generations" => "/v1/images/generations",
        "/v1/images/edits" => "/v1/images/edits",
        "/v1/chat/completions" => "/v1/chat/completions",
        _ => "other",
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    let took = started.elapsed();
    app.metrics.request(endpoint, response.status().as_u16(), took);
    if !super::ui::quiet() && endpoint != "/metrics" && endpoint != "/health" {
        eprintln!("{method} {path} {} {:.1} ms", response.status().as_u16(), took.as_secs_f64() * 1e3);
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", Some("not_found"), "no such endpoint: this server has POST /v1/images/generations, /v1/images/edits, /v1/chat/completions and GET /v1/models, /health, /metrics, /")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", Some("method_not_allowed"), "this endpoint does not take that method (the /v1 endpoints that do work take POST)")
}

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE)
}

async fn health(State(app): State<Shared>) -> Response {
    let (waiting, running) = app.queue.depth();
    json_response(json!({"status": "ok", "model": app.info.id, "queue_depth": waiting, "running": running}))
}

async fn metrics_text(State(app): State<Shared>) -> Response {
    let (waiting, running) = app.queue.depth();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render(waiting, running)).into_response()
}

fn model_object(app: &App) -> Value {
    let info = &app.info;
    let mut m = json!({"id": info.id, "object": "model", "created": info.created, "owned_by": "nextflow"});
    if let Some(d) = &info.defaults {
        m["capabilities"] = json!(["images.generations", "images.edits", "chat.completions"]);
        m["sizes"] = json!(info.canvases.iter().map(|((w, h), _)| format!("{w}x{h}")).collect::<Vec<_>>());
        m["defaults"] = json!({"size": format!("{0}x{0}", info.image_size), "cfg": d.cfg_scale, "top_k": d.top_k, "top_p": d.top_p, "temperature": d.temperature, "scales": info.canvases.first().map_or(0, |(_, s)| s.len())});
    } else {
        m["capabilities"] = json!(["chat.completions"]);
    }
    m["context_length"] = json!(info.context);
    m
}

async fn models(State(app): State<Shared>) -> Response {
    json_response(json!({"object": "list", "data": [model_object(&app)]}))
}

async fn model_one(State(app): State<Shared>, UrlPath(id): UrlPath<String>) -> Response {
    if id != app.info.id {
        return unknown_model(&app, &id).into_response();
    }
    json_response(model_object(&app))
}

fn unknown_model(app: &App, id: &str) -> ApiError {
    let mut e = ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", Some("model_not_found"), format!("the model `{id}` is not served here; this server serves `{}`", app.info.id));
    e.param = Some("model".into());
    e
}

fn check_model(app: &App, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != app.info.id => Err(unknown_model(app, m)),
        _ => Ok(()),
    }
}

fn body_error(app: &App, e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", Some("payload_too_large"), format!("the body is above the {} MiB this server reads (--max-body-mib)", app.max_body >> 20))
    } else {
        ApiError::new(e.status(), "invalid_request_error", None, format!("the body could not be read: {}", e.body_text()))
    }
}

fn nextflow_only<'a>(app: &'a App, what: &str) -> Result<&'a nextflow_model::nextflow::NextFlow, ApiError> {
    match app.served.as_ref() {
        Served::NextFlow { model, .. } => Ok(model),
        Served::Text(_) => Err(ApiError::invalid(format!("`{}` is a text model: it writes no images ({what}); use /v1/chat/completions", app.info.id))),
    }
}

/// The sampler of an image request: the model's defaults with the request's values.
fn image_options(app: &App, s: &api::ImageSampling, seed: u64, scales: Vec<[usize; 2]>) -> Result<ImageOptions, ApiError> {
    let d = app.info.defaults.clone().expect("image requests reach NextFlow models only");
    let o = ImageOptions {
        cfg_scale: s.cfg.unwrap_or(d.cfg_scale),
        top_k: s.top_k.unwrap_or(d.top_k),
        top_p: s.top_p.unwrap_or(d.top_p),
        temperature: s.temperature.unwrap_or(d.temperature),
        seed,
        scales: Some(scales),
        ..d
    };
    o.validate().map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(o)
}

/// The schedule of a `size` the model offers (None: its native canvas).
fn canvas(app: &App, size: Option<(usize, usize)>) -> Result<((usize, usize), Vec<[usize; 2]>), ApiError> {
    let size = size.unwrap_or((app.info.image_size, app.info.image_size));
    app.info.canvases.iter().find(|(wh, _)| *wh == size).cloned().ok_or_else(|| {
        let offered: Vec<String> = app.info.canvases.iter().map(|((w, h), _)| format!("{w}x{h}")).collect();
        ApiError::field("size", format!("size {}x{} is not one this model paints; it offers {}", size.0, size.1, offered.join(", ")))
    })
}

/// Sets the cancel flag when dropped: the response is finished or its client left.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Queues `work`; the events of its answer come on the receiver.
fn submit(app: &App, work: Work) -> Result<(mpsc::UnboundedReceiver<Event>, CancelOnDrop, Instant), ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + app.timeout;
    let job = Job { work, events: tx, cancel: cancel.clone(), deadline };
    match app.queue.push(job) {
        Ok(()) => Ok((rx, CancelOnDrop(cancel), deadline)),
        Err((_, waiting)) => {
            let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Some("queue_full"), format!("the server is busy: {waiting} requests are waiting (--max-queue); retry later"));
            e.retry_after = Some(app.metrics.retry_after(waiting, app.max_batch));
            Err(e)
        }
    }
}

/// Every event of a non-streamed answer, up to its end or the deadline.
async fn collect(mut rx: mpsc::UnboundedReceiver<Event>, deadline: Instant, guard: CancelOnDrop) -> Result<(Vec<Event>, Finish), ApiError> {
    let mut events = Vec::new();
    let wait = async {
        while let Some(e) = rx.recv().await {
            match e {
                Event::Done(r) => return r,
                other => events.push(other),
            }
        }
        Err(ApiError::internal("the model thread dropped this request"))
    };
    let r = tokio::time::timeout_at(deadline.into(), wait).await;
    drop(guard);
    match r {
        Ok(r) => r.map(|f| (events, f)),
        Err(_) => Err(engine::timeout()),
    }
}

/// A server-sent-events body: `render` turns each event into `data:` payloads; the stream
/// ends after the final event. Dropping it (the client left) cancels the work.
fn sse(mut rx: mpsc::UnboundedReceiver<Event>, guard: CancelOnDrop, mut render: impl FnMut(Event) -> (Vec<Value>, bool) + Send + Unpin + 'static, done_marker: bool) -> Response {
    let mut ended = false;
    let stream = futures_stream(move |cx| {
        let _keep = &guard;
        if ended {
            return Poll::Ready(None);
        }
        match rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                ended = true;
                Poll::Ready(Some(Bytes::from(format!("data: {}\n\n", ApiError::internal("the model thread dropped this request").body()))))
            }
            Poll::Ready(Some(e)) => {
                let (values, last) = render(e);
                let mut text = String::new();
                for v in values {
                    text.push_str(&format!("data: {v}\n\n"));
                }
                if last {
                    ended = true;
                    if done_marker {
                        text.push_str("data: [DONE]\n\n");
                    }
                }
                Poll::Ready(Some(Bytes::from(text)))
            }
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// A stream of body chunks from a poll function.
fn futures_stream<F>(poll: F) -> impl tokio_stream::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static
where
    F: FnMut(&mut std::task::Context<'_>) -> Poll<Option<Bytes>> + Send + Unpin + 'static,
{
    struct S<F>(F);
    impl<F: FnMut(&mut std::task::Context<'_>) -> Poll<Option<Bytes>> + Unpin> tokio_stream::Stream for S<F> {
        type Item = Result<Bytes, std::convert::Infallible>;
        fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Self::Item>> {
            (self.0)(cx).map(|o| o.map(Ok))
        }
    }
    S(poll)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The JSON body of a finished image request.
fn images_body(events: Vec<Event>, size: (usize, usize), prompt: &str) -> Value {
    let mut images: Vec<(usize, u64, Vec<u8>)> = events.into_iter().filter_map(|e| if let Event::Image { index, seed, png } = e { Some((index, seed, png)) } else { None }).collect();
    images.sort_by_key(|(i, _, _)| *i);
    let data: Vec<Value> = images.iter().map(|(_, seed, png)| json!({"b64_json": b64(png), "seed": seed, "revised_prompt": prompt})).collect();
    json!({"created": unix_now(), "data": data, "output_format": "png", "size": format!("{}x{}", size.0, size.1)})
}

/// A streamed image request's events: progress per scale, then each image.
fn image_events(size: (usize, usize)) -> impl FnMut(Event) -> (Vec<Value>, bool) + Send + Unpin + 'static {
    move |e| match e {
        Event::Progress { scale, scales } => (vec![json!({"type": "image_generation.progress", "scale": scale, "scales": scales})], false),
        Event::Image { index, seed, png } => (vec![json!({"type": "image_generation.completed", "index": index, "seed": seed, "b64_json": b64(&png), "output_format": "png", "size": format!("{}x{}", size.0, size.1), "created_at": unix_now()})], false),
        Event::Text(_) => (Vec::new(), false),
        Event::Done(Ok(_)) => (Vec::new(), true),
        Event::Done(Err(e)) => (vec![json!({"type": "error", "error": e.body()["error"]})], true),
    }
}

async fn images_generations(State(app): State<Shared>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    images_generations_inner(&app, &headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn images_generations_inner(app: &Shared, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let body = body.map_err(|e| body_error(app, e))?;
    let obj = api::json_object(headers, &body)?;
    let req = ImageRequest::parse(&obj)?;
    check_model(app, req.model.as_deref())?;
    let model = nextflow_only(app, "/v1/images/generations")?;
    if req.class.is_some() {
        return Err(ApiError::field("class", format!("`{}` is text-conditioned: give a `prompt`; `class` is for class-conditional models", app.info.id)));
    }
    let (size, scales) = canvas(app, req.size)?;
    let seed = req.sampling.seed.unwrap_or_else(|| fresh_seed(app));
    let opts = image_options(app, &req.sampling, seed, scales.clone())?;
    let (cond, uncond) = model.text_prompts(&req.prompt, req.negative_prompt.as_deref()).map_err(|e| {
        let mut e = ApiError::invalid(e.to_string());
        e.param = Some(if e.message.contains("negative") { "negative_prompt".into() } else { "prompt".into() });
        e
    })?;
    let needed = cond.len().max(uncond.len()) + 1 + scales.iter().skip(1).map(|[h, w]| h * w).sum::<usize>();
    if needed > app.info.context {
        return Err(ApiError::field("prompt", format!("the prompt and image need {needed} positions; the model's context is {}", app.info.context)));
    }
    let work = ImageWork { prompt: req.prompt.clone(), negative: req.negative_prompt.clone(), cond, uncond, seed, n: req.n, opts };
    let (rx, guard, deadline) = submit(app, Work::Image(work))?;
    if req.stream {
        return Ok(sse(rx, guard, image_events(size), false));
    }
    let (events, _) = collect(rx, deadline, guard).await?;
    Ok(json_response(images_body(events, size, &req.prompt)))
}

/// The fields of a multipart form: text fields as JSON values (numbers and booleans parsed),
/// and the one file.
struct Form {
    fields: Map<String, Value>,
    image: Option<(String, Vec<u8>)>,
}

async fn read_form(mut form: Multipart) -> Result<Form, ApiError> {
    let mut fields = Map::new();
    let mut image = None;
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", Some("payload_too_large"), format!("the upload is too large: {}", e.body_text()))
        } else {
            ApiError::invalid(format!("the multipart form is broken: {}", e.body_text()))
        }
    };
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_string();
        if name == "image" || name == "image[]" {
            if image.is_some() {
                return Err(ApiError::field("image", "one image per edit"));
            }
            let file = field.file_name().map(|f| f.rsplit(['/', '\\']).next().unwrap_or(f).to_string()).filter(|f| !f.is_empty()).unwrap_or_else(|| "upload".into());
            image = Some((file, field.bytes().await.map_err(bad)?.to_vec()));
        } else if name == "mask" {
            return Err(ApiError::field("mask", "masks are not supported: the instruction in `prompt` says what to change"));
        } else {
            let text = field.text().await.map_err(bad)?;
            let value = if name == "prompt" { Value::String(text) } else { serde_json::from_str::<Value>(&text).ok().filter(|v| v.is_number() || v.is_boolean()).unwrap_or(Value::String(text)) };
            fields.insert(name, value);
        }
    }
    Ok(Form { fields, image })
}

/// An uploaded image as RGB8 of the model's canvas (decoded off the async threads).
async fn decode_upload(bytes: Vec<u8>, name: String, size: usize, param: String) -> Result<Vec<u8>, ApiError> {
    let r = tokio::task::spawn_blocking(move || super::images::read_input_bytes(&bytes, &name, size, false).map(|(rgb, _)| rgb).map_err(|e| e.to_string())).await;
    match r {
        Ok(Ok(rgb)) => Ok(rgb),
        Ok(Err(msg)) => Err(ApiError::field(&param, format!("the image cannot be read: {msg}"))),
        Err(_) => Err(ApiError::internal("decoding the image failed")),
    }
}

async fn images_edits(State(app): State<Shared>, form: Result<Multipart, MultipartRejection>) -> Response {
    images_edits_inner(&app, form).await.unwrap_or_else(IntoResponse::into_response)
}

async fn images_edits_inner(app: &Shared, form: Result<Multipart, MultipartRejection>) -> Result<Response, ApiError> {
    let form = form.map_err(|e| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request_error", Some("unsupported_media_type"), format!("edits take a multipart/form-data body with `image` and `prompt`: {}", e.body_text())))?;
    let form = read_form(form).await?;
    let f = Fields::new(&form.fields, "");
    f.only(&["model", "prompt", "n", "size", "response_format", "output_format", "seed", "cfg", "top_k", "top_p", "temperature", "stream", "user"])?;
    check_model(app, f.string("model")?)?;
    nextflow_only(app, "/v1/images/edits")?;
    let prompt = f.text("prompt")?.filter(|p| !p.trim().is_empty()).ok_or_else(|| ApiError::field("prompt", "`prompt` is required: the edit instruction, e.g. \"make the circle green\""))?.to_string();
    if f.integer("n", 1, api::MAX_IMAGES as u64)?.unwrap_or(1) != 1 {
        return Err(ApiError::field("n", "an edit writes one image: `n` must be 1"));
    }
    api::only_value(&f, "response_format", "b64_json", "images are returned inline: `response_format` must be b64_json")?;
    api::only_value(&f, "output_format", "png", "images are PNG: `output_format` must be png")?;
    let size = app.info.image_size;
    if let Some(s) = f.string("size")?.map(api::parse_size).transpose()?.flatten() {
        if s != (size, size) {
            return Err(ApiError::field("size", format!("edits are painted on the model's {size}x{size} canvas")));
        }
    }
    let sampling = api::ImageSampling::parse(&f)?;
    let stream = f.boolean("stream")?.unwrap_or(false);
    let (source, bytes) = form.image.ok_or_else(|| ApiError::field("image", "`image` is required: the picture to edit (a PNG, JPEG or WebP file)"))?;
    if bytes.is_empty() {
        return Err(ApiError::field("image", "the image file is empty"));
    }
    let rgb = decode_upload(bytes, source.clone(), size, "image".into()).await?;
    let scales = app.info.canvases.first().map(|(_, s)| s.clone()).unwrap_or_default();
    let seed = sampling.seed.unwrap_or_else(|| fresh_seed(app));
    let opts = ImageOptions { scales: None, ..image_options(app, &sampling, seed, scales)? };
    let (rx, guard, deadline) = submit(app, Work::Edit(EditWork { prompt: prompt.clone(), rgb, source, opts }))?;
    if stream {
        return Ok(sse(rx, guard, image_events((size, size)), false));
    }
    let (events, _) = collect(rx, deadline, guard).await?;
    Ok(json_response(images_body(events, (size, size), &prompt)))
}

async fn chat_completions(State(app): State<Shared>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    chat_inner(&app, &headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

/// The prompt of a chat request for the served model.
async fn chat_prompt(app: &App, req: &ChatRequest) -> Result<ChatPrompt, ApiError> {
    match app.served.as_ref() {
        Served::NextFlow { model, .. } => {
            // ShapeWorld models have no chat template: one user message, words and at most one image.
            let users: Vec<&api::ChatMessage> = req.messages.iter().filter(|m| m.role == "user").collect();
            if users.len() != 1 || req.messages.len() != 1 {
                return Err(ApiError::field("messages", format!("`{}` has no chat template: send one user message (text, and an image to ask about)", app.info.id)));
            }
            let m = users[0];
            if m.images.len() > 1 {
                return Err(ApiError::field("messages[0].content", "one image per question"));
            }
            if m.text.trim().is_empty() {
                return Err(ApiError::field("messages[0].content", "the message has no text: ask a question, e.g. \"what color is the circle?\""));
            }
            model.encode_words(&m.text).map_err(|e| ApiError::field("messages[0].content", e.to_string()))?;
            let image = match m.images.first() {
                Some(part) => Some(decode_upload(part.bytes.clone(), "the image".into(), app.info.image_size, part.param.clone()).await?),
                None => None,
            };
            Ok(ChatPrompt::Words { text: m.text.clone(), image })
        }
        Served::Text(t) => {
            if let Some((i, _)) = req.messages.iter().enumerate().find(|(_, m)| !m.images.is_empty()) {
                return Err(ApiError::field(&format!("messages[{i}].content"), format!("`{}` is a text model: it reads no images", app.info.id)));
            }
            let history: Vec<Message> = req.messages.iter().map(|m| Message { role: m.role.clone(), content: m.text.clone() }).collect();
            let ids = t.prompt_ids(&history).map_err(|e| ApiError::field("messages", e.to_string()))?;
            Ok(ChatPrompt::Ids(ids))
        }
    }
}

async fn chat_inner(app: &Shared, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let body = body.map_err(|e| body_error(app, e))?;
    let obj = api::json_object(headers, &body)?;
    let req = ChatRequest::parse(&obj)?;
    check_model(app, req.model.as_deref())?;
    let prompt = chat_prompt(app, &req).await?;
    // Greedy unless a sampling value asks otherwise (as `nextflow chat`).
    let sampled = req.temperature.is_some_and(|t| t > 0.0) || (req.temperature.is_none() && (req.top_k.is_some() || req.top_p.is_some()));
    let prompt_len = match &prompt {
        ChatPrompt::Ids(ids) => ids.len(),
        ChatPrompt::Words { .. } => 0,
    };
    let room = app.info.context.saturating_sub(prompt_len);
    let max_new_tokens = req.max_tokens.unwrap_or(256.min(room.max(1)));
    if prompt_len + max_new_tokens > app.info.context {
        return Err(ApiError::field("max_tokens", format!("the prompt ({prompt_len} tokens) and max_tokens ({max_new_tokens}) pass the model's context of {}", app.info.context)));
    }
    let stop_tokens = match app.served.as_ref() {
        Served::Text(t) => t.stop_tokens(),
        Served::NextFlow { .. } => Vec::new(),
    };
    let opts = TextOptions {
        max_new_tokens,
        temperature: if sampled { req.temperature.unwrap_or(1.0) } else { 0.0 },
        top_k: req.top_k.unwrap_or(0),
        top_p: req.top_p.unwrap_or(1.0),
        repetition_penalty: req.repetition_penalty.unwrap_or(1.0),
        seed: req.seed.unwrap_or_else(|| fresh_seed(app)),
        stop_tokens,
        keep_logits: false,
        vocab_limit: None,
    };
    opts.validate().map_err(|e| ApiError::invalid(e.to_string()))?;
    let id = format!("chatcmpl-{}", app.next_id.fetch_add(1, Ordering::Relaxed));
    let created = unix_now();
    let model_id = app.info.id.clone();
    let (rx, guard, deadline) = submit(app, Work::Chat(ChatWork { prompt, opts }))?;
    if req.stream {
        let include_usage = req.include_usage;
        let chunk = move |delta: Value, finish: Option<&str>| json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        let mut first = true;
        let render = move |e: Event| {
            let mut out = Vec::new();
            if first {
                first = false;
                out.push(chunk(json!({"role": "assistant", "content": ""}), None));
            }
            match e {
                Event::Text(t) => {
                    out.push(chunk(json!({"content": t}), None));
                    (out, false)
                }
                Event::Done(Ok(f)) => {
                    out.push(chunk(json!({}), Some(f.finish_reason)));
                    if include_usage {
                        let mut u = chunk(json!({}), None);
                        u["choices"] = json!([]);
                        u["usage"] = usage(&f);
                        out.push(u);
                    }
                    (out, true)
                }
                Event::Done(Err(e)) => {
                    out.push(e.body());
                    (out, true)
                }
                _ => (out, false),
            }
        };
        return Ok(sse(rx, guard, render, true));
    }
    let (events, finish) = collect(rx, deadline, guard).await?;
    let text: String = events.into_iter().filter_map(|e| if let Event::Text(t) = e { Some(t) } else { None }).collect();
    Ok(json_response(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish.finish_reason}],
        "usage": usage(&finish),
    })))
}

fn usage(f: &Finish) -> Value {
    json!({"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens, "total_tokens": f.prompt_tokens + f.completion_tokens})
}

/// A JSON response (200).
fn json_response(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}
