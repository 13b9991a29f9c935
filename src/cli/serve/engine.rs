//! The model side of `nextflow serve`: one bounded queue, one model thread.
//!
//! Requests wait in arrival order. When the model thread takes a text-to-image request it
//! also takes every waiting one whose schedule and sampler settings agree (up to
//! `--max-batch` images), and paints them all in one CFG batch: each image is sampled from
//! its own seed, so it has the pixels the CLI paints for that prompt and seed alone. Edits
//! and chat run one at a time, in turn. A request whose client left, or whose deadline
//! passed, is dropped before it starts, and a chat stops at its next token; a panic inside
//! the model fails the requests of that batch (500) and the thread goes on.

use super::api::ApiError;
use super::metrics::Metrics;
use crate::cli::images;
use crate::cli::run::{painted, LoadInfo, TextModel};
use axum::http::StatusCode;
use nextflow_model::nextflow::{NextFlow, Sequence};
use nextflow_model::text::{self, TextOptions};
use nextflow_model::visual::{from_rgb8, to_rgb8};
use nextflow_model::{ImageOptions, StreamDecoder};
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// The loaded model.
pub enum Served {
    NextFlow { model: NextFlow, info: LoadInfo },
    Text(TextModel),
}

/// What the model thread tells a waiting request.
#[derive(Debug)]
pub enum Event {
    /// Scale `scale` (from 1) of `scales` is painted.
    Progress { scale: usize, scales: usize },
    /// Image `index` of the request, as PNG bytes.
    Image { index: usize, seed: u64, png: Vec<u8> },
    /// The next piece of a text answer.
    Text(String),
    /// The request is finished; nothing follows.
    Done(Result<Finish, ApiError>),
}

#[derive(Debug, Clone, Copy)]
pub struct Finish {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// "stop" (the model's end token) or "length" (max_tokens).
    pub finish_reason: &'static str,
}

/// `n` images of one text prompt, seeds `seed..seed + n`.
pub struct ImageWork {
    pub prompt: String,
    pub negative: Option<String>,
    pub cond: Sequence,
    pub uncond: Sequence,
    pub seed: u64,
    pub n: usize,
    /// Validated, with the canvas's schedule in `scales`.
    pub opts: ImageOptions,
}

/// One edit of an uploaded image (RGB8 of the model's canvas).
pub struct EditWork {
    pub prompt: String,
    pub rgb: Vec<u8>,
    /// The upload's file name (the PNG's `parameters` name it, as the CLI names its input).
    pub source: String,
    pub opts: ImageOptions,
}

pub enum ChatPrompt {
    /// NextFlow: `<bos> [image] words`.
    Words { text: String, image: Option<Vec<u8>> },
    /// A text model: the templated conversation.
    Ids(Vec<u32>),
}

pub struct ChatWork {
    pub prompt: ChatPrompt,
    pub opts: TextOptions,
}

pub enum Work {
    Image(ImageWork),
    Edit(EditWork),
    Chat(ChatWork),
}

pub struct Job {
    pub work: Work,
    pub events: UnboundedSender<Event>,
    /// Set when the client leaves (its response is dropped) or its deadline passes.
    pub cancel: Arc<AtomicBool>,
    pub deadline: Instant,
}

impl Job {
    fn gone(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.events.is_closed() || Instant::now() >= self.deadline
    }

    fn send(&self, e: Event) {
        let _ = self.events.send(e);
    }
}

/// Whether two image requests can share one batch: the same schedule and sampler.
fn batchable(a: &ImageOptions, b: &ImageOptions) -> bool {
    a.scales == b.scales
        && a.cfg_scale.to_bits() == b.cfg_scale.to_bits()
        && a.cfg_schedule == b.cfg_schedule
        && a.top_k == b.top_k
        && a.top_p.to_bits() == b.top_p.to_bits()
        && a.temperature.to_bits() == b.temperature.to_bits()
}

#[derive(Default)]
struct Waiting {
    jobs: VecDeque<Job>,
    running: usize,
}

/// The requests waiting for the model thread.
pub struct Queue {
    state: Mutex<Waiting>,
    wake: Condvar,
    max_waiting: usize,
}

impl Queue {
    pub fn new(max_waiting: usize) -> Queue {
        Queue { state: Mutex::new(Waiting::default()), wake: Condvar::new(), max_waiting }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job`, or gives it back with the number waiting when the queue is full.
    pub fn push(&self, job: Job) -> Result<(), (Job, usize)> {
        let mut s = self.lock();
        if s.jobs.len() >= self.max_waiting {
            let n = s.jobs.len();
            return Err((job, n));
        }
        s.jobs.push_back(job);
        self.wake.notify_one();
        Ok(())
    }

    /// (waiting, running) requests.
    pub fn depth(&self) -> (usize, usize) {
        let s = self.lock();
        (s.jobs.len(), s.running)
    }

    /// The next request, with every waiting text-to-image request it can share a batch with
    /// (up to `max_batch` images in all).
    fn take(&self, max_batch: usize) -> Vec<Job> {
        let mut s = self.lock();
        while s.jobs.is_empty() {
            s = self.wake.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        let first = s.jobs.pop_front().expect("the queue is not empty");
        let mut taken = vec![first];
        if let Work::Image(w) = &taken[0].work {
            let (opts, mut images) = (w.opts.clone(), w.n);
            let mut i = 0;
            while i < s.jobs.len() && images < max_batch {
                match &s.jobs[i].work {
                    Work::Image(o) if batchable(&opts, &o.opts) && images + o.n <= max_batch => {
                        images += o.n;
                        taken.push(s.jobs.remove(i).expect("index in range"));
                    }
                    _ => i += 1,
                }
            }
        }
        s.running = taken.len();
        taken
    }

    fn finished(&self) {
        self.lock().running = 0;
    }
}

/// A model error as the response of the request that caused it.
fn model_error(e: nextflow_model::Error) -> ApiError {
    match e {
        nextflow_model::Error::Input(msg) => ApiError::invalid(msg),
        other => ApiError::internal(other.to_string()),
    }
}

fn boxed_error(e: Box<dyn std::error::Error>) -> ApiError {
    ApiError::internal(e.to_string())
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a panic".into())
}

/// The model thread: takes requests until the process ends.
pub struct Worker {
    pub served: Arc<Served>,
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    pub max_batch: usize,
    /// Testing only (`--panic-on-prompt`): panic inside the model on this prompt.
    pub panic_on: Option<String>,
}

impl Worker {
    pub fn run(self) {
        loop {
            let jobs = self.queue.take(self.max_batch);
            let (live, gone): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| !j.gone());
            for j in &gone {
                self.metrics.cancelled();
                if Instant::now() >= j.deadline {
                    j.send(Event::Done(Err(timeout())));
                }
            }
            if !live.is_empty() {
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.serve(&live))) {
                    self.metrics.panicked();
                    let msg = panic_text(p.as_ref());
                    for j in &live {
                        j.send(Event::Done(Err(ApiError::internal(format!("the model failed on this request ({msg}); the server goes on")))));
                    }
                }
            }
            self.queue.finished();
        }
    }

    fn serve(&self, jobs: &[Job]) {
        match &jobs[0].work {
            Work::Image(_) => self.images(jobs),
            Work::Edit(w) => {
                let r = self.edit(&jobs[0], w);
                jobs[0].send(Event::Done(r));
            }
            Work::Chat(w) => {
                let r = self.chat(&jobs[0], w);
                jobs[0].send(Event::Done(r));
            }
        }
    }

    fn check_panic(&self, prompt: &str) {
        if self.panic_on.as_deref() == Some(prompt) {
            panic!("--panic-on-prompt: a panic inside the model, as asked");
        }
    }

    fn nextflow(&self) -> (&NextFlow, &LoadInfo) {
        match self.served.as_ref() {
            Served::NextFlow { model, info } => (model, info),
            Served::Text(_) => unreachable!("the handlers send image work to NextFlow models only"),
        }
    }

    /// Text-to-image requests of one batch, in chunks of `max_batch` images.
    fn images(&self, jobs: &[Job]) {
        let (model, info) = self.nextflow();
        let works: Vec<&ImageWork> = jobs.iter().map(|j| if let Work::Image(w) = &j.work { w } else { unreachable!("a batch holds image work only") }).collect();
        let rows: Vec<(usize, usize)> = works.iter().enumerate().flat_map(|(j, w)| (0..w.n).map(move |i| (j, i))).collect();
        let mut failed = vec![false; jobs.len()];
        let opts = &works[0].opts;
        let scales = opts.scales.as_ref().map_or(0, Vec::len);
        for chunk in rows.chunks(self.max_batch.max(1)) {
            let chunk: Vec<(usize, usize)> = chunk.iter().copied().filter(|&(j, _)| !failed[j] && !jobs[j].gone()).collect();
            if chunk.is_empty() {
                continue;
            }
            let mut members: Vec<usize> = chunk.iter().map(|&(j, _)| j).collect();
            members.dedup();
            let conds: Vec<Sequence> = chunk.iter().map(|&(j, _)| works[j].cond.clone()).collect();
            let unconds: Vec<Sequence> = chunk.iter().map(|&(j, _)| works[j].uncond.clone()).collect();
            let seeds: Vec<u64> = chunk.iter().map(|&(j, i)| works[j].seed.wrapping_add(i as u64)).collect();
            let t = Instant::now();
            let mut on_scale = |k: usize, total: usize, _| {
                for &j in &members {
                    self.check_panic(&works[j].prompt);
                    jobs[j].send(Event::Progress { scale: k + 1, scales: total });
                }
            };
            let painted_batch = model.generate_seeded(&conds, &unconds, &seeds, opts, &mut on_scale).map_err(model_error).and_then(|g| {
                let rgb = to_rgb8(&g.images).map_err(|e| model_error(e.into()))?;
                Ok((g.images.shape()[3], g.images.shape()[2], rgb))
            });
            match painted_batch {
                Err(e) => {
                    for &j in &members {
                        failed[j] = true;
                        jobs[j].send(Event::Done(Err(e.clone())));
                    }
                }
                Ok((w, h, rgb)) => {
                    self.metrics.batch(chunk.len(), t.elapsed());
                    for (&(j, i), rgb) in chunk.iter().zip(&rgb) {
                        let work = works[j];
                        let seed = work.seed.wrapping_add(i as u64);
                        let text = painted(&work.prompt, work.negative.as_deref(), scales, (w, h), &work.opts, seed, info, None);
                        match images::png_with_parameters(rgb, w, h, &text) {
                            Ok(png) => jobs[j].send(Event::Image { index: i, seed, png }),
                            Err(e) => {
                                failed[j] = true;
                                jobs[j].send(Event::Done(Err(boxed_error(e))));
                            }
                        }
                        if i + 1 == work.n && !failed[j] {
                            jobs[j].send(Event::Done(Ok(Finish { prompt_tokens: work.cond.len(), completion_tokens: 0, finish_reason: "stop" })));
                        }
                    }
                }
            }
        }
    }

    fn edit(&self, job: &Job, w: &EditWork) -> Result<Finish, ApiError> {
        let (model, info) = self.nextflow();
        self.check_panic(&w.prompt);
        let size = model.parts().tokenizer.image_size;
        let t = Instant::now();
        let indices = model.encode_image(&from_rgb8(&w.rgb, size, model.dtype(), model.device()).map_err(model_error)?).map_err(model_error)?;
        let g = model.edit(&indices, &w.prompt, &w.opts, &mut |k, total, _| job.send(Event::Progress { scale: k + 1, scales: total })).map_err(model_error)?;
        self.metrics.batch(1, t.elapsed());
        let scales = model.parts().tokenizer.scales.len();
        let rgb = to_rgb8(&g.images).map_err(|e| model_error(e.into()))?;
        let text = painted(&w.prompt, None, scales, (size, size), &w.opts, w.opts.seed, info, Some(&w.source));
        let png = images::png_with_parameters(&rgb[0], size, size, &text).map_err(boxed_error)?;
        job.send(Event::Image { index: 0, seed: w.opts.seed, png });
        Ok(Finish { prompt_tokens: 0, completion_tokens: 0, finish_reason: "stop" })
    }

    fn chat(&self, job: &Job, w: &ChatWork) -> Result<Finish, ApiError> {
        let t = Instant::now();
        let on_text = |tok: &nextflow_model::TextTokenizer, run: &mut dyn FnMut(&mut dyn FnMut(u32) -> ControlFlow<()>) -> nextflow_model::Result<text::TextOutput>| -> Result<text::TextOutput, ApiError> {
            let mut stream = StreamDecoder::new(tok, true);
            let out = run(&mut |id| {
                if job.gone() {
                    return ControlFlow::Break(());
                }
                if let Ok(piece) = stream.push(id) {
                    if !piece.is_empty() {
                        job.send(Event::Text(piece));
                    }
                }
                ControlFlow::Continue(())
            })
            .map_err(model_error)?;
            let rest = stream.finish().map_err(model_error)?;
            if !rest.is_empty() {
                job.send(Event::Text(rest));
            }
            Ok(out)
        };
        let out = match (self.served.as_ref(), &w.prompt) {
            (Served::NextFlow { model, .. }, ChatPrompt::Words { text, image }) => {
                self.check_panic(text);
                let tok = model.text.as_ref().ok_or_else(|| ApiError::invalid("random weights have no tokenizer to write text with"))?;
                let size = model.parts().tokenizer.image_size;
                let indices = match image {
                    Some(rgb) => Some(model.encode_image(&from_rgb8(rgb, size, model.dtype(), model.device()).map_err(model_error)?).map_err(model_error)?),
                    None => None,
                };
                on_text(tok, &mut |cb| model.reply(indices.as_deref(), text, &w.opts, cb))?
            }
            (Served::Text(m), ChatPrompt::Ids(ids)) => {
                let tok = m.tokenizer.as_ref().ok_or_else(|| ApiError::invalid("this checkpoint has no tokenizer.json to write text with"))?;
                on_text(tok, &mut |cb| text::generate(&m.transformer, ids, &w.opts, cb))?
            }
            _ => unreachable!("the handlers build the prompt for the served model"),
        };
        self.metrics.tokens(out.ids.len(), t.elapsed());
        if job.gone() {
            self.metrics.cancelled();
        }
        Ok(Finish { prompt_tokens: out.prompt_tokens, completion_tokens: out.ids.len(), finish_reason: if out.stopped_by.is_some() { "stop" } else { "length" } })
    }
}

pub fn timeout() -> ApiError {
    ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout_error", Some("timeout"), "the request took longer than the server's --timeout; it was dropped")
}
