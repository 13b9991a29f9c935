//! `nextflow serve` on 127.0.0.1 (a free port per server): every endpoint, bad requests,
//! concurrent image requests against the CLI's bytes, streaming against non-streaming, a
//! panic inside the model, the official `openai` Python client, and the web page in
//! headless Chromium.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/http.rs"]
mod http;

use base64::Engine as _;
use cli::{nextflow, scratch};
use http::{get, post_json, request, Reply};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A running server, stopped when dropped.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Server {
    fn start(name: &str, extra: &[&str]) -> Server {
        let dir = scratch(&format!("serve-{name}"));
        let log = dir.join("server.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_nextflow"))
            .args(["serve", "--port", "0"])
            .args(extra)
            .env("NEXTFLOW_DEVICE", "cpu")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(300)).unwrap_or_default();
        let addr = line.split("http://").nth(1).and_then(|r| r.split([';', ' ']).next()).map(str::to_string);
        let Some(addr) = addr else {
            let _ = child.kill();
            panic!("the server did not start: {line:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        };
        Server { child, addr, log }
    }

    fn metrics(&self) -> String {
        get(&self.addr, "/metrics").text()
    }

    /// The value of one metric line (by its exact name and labels).
    fn metric(&self, series: &str) -> f64 {
        self.metrics().lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("server log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn assert_ok(out: &(i32, String, String)) {
    assert_eq!(out.0, 0, "stdout: {}\nstderr: {}", out.1, out.2);
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(v.as_str().expect("b64_json is a string")).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The OpenAI error shape, with a message.
fn assert_error_shape(r: &Reply, what: &str) -> Value {
    let j: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {}", r.text()));
    let e = &j["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: no message in {j}");
    assert!(e["type"].is_string(), "{what}: no type in {j}");
    assert!(e.as_object().is_some_and(|o| o.contains_key("param") && o.contains_key("code")), "{what}: no param/code in {j}");
    j
}

fn models(server: &Server) -> Value {
    let r = get(&server.addr, "/v1/models");
    assert_eq!(r.status, 200);
    r.json()["data"][0].clone()
}

/// The CLI flags of a `WxH` canvas.
fn canvas_flags(size: &str) -> Vec<String> {
    let (w, h) = size.split_once('x').unwrap();
    let (w, h): (usize, usize) = (w.parse().unwrap(), h.parse().unwrap());
    let g = (1..=w.min(h)).rev().find(|g| w % g == 0 && h % g == 0).unwrap();
    vec!["--size".into(), w.min(h).to_string(), "--aspect".into(), format!("{}:{}", w / g, h / g)]
}

#[test]
fn every_endpoint_answers_and_images_match_the_cli() {
    let server = Server::start("endpoints", &[]);
    let a = server.addr.as_str();
    let dir = scratch("serve-endpoints-cli");

    let page = get(a, "/");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap_or("").starts_with("text/html"));
    assert!(page.text().contains("<title>NextFlow</title>") && !page.text().contains("http://") && !page.text().contains("https://"), "the page is self-contained");
    let health = get(a, "/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let model = models(&server);
    assert_eq!(model["id"], "nextflow-tiny");
    assert_eq!(get(a, "/v1/models/nextflow-tiny").status, 200);
    let missing = get(a, "/v1/models/dall-e-3");
    assert_eq!(missing.status, 404);
    assert_eq!(assert_error_shape(&missing, "unknown model")["error"]["code"], "model_not_found");
    let sizes: Vec<String> = model["sizes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let native = model["defaults"]["size"].as_str().unwrap().to_string();

    // Two images of one prompt: the CLI's bytes for seeds 5 and 6.
    let r = post_json(a, "/v1/images/generations", &json!({"prompt": "two stars", "n": 2, "seed": 5, "response_format": "b64_json"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_ok(&nextflow(&["generate", "-p", "two stars", "-n", "2", "-s", "5", "-o", s(&dir.join("stars-{i}.png"))]));
    for i in 0..2 {
        assert_eq!(body["data"][i]["seed"], 5 + i as u64);
        assert_eq!(unb64(&body["data"][i]["b64_json"]), std::fs::read(dir.join(format!("stars-{}.png", i + 1))).unwrap(), "image {i} differs from the CLI's");
    }
    // Every other canvas the model offers, against the CLI's --size/--aspect.
    for size in sizes.iter().filter(|z| **z != native) {
        let r = post_json(a, "/v1/images/generations", &json!({"prompt": "a red circle", "size": size, "seed": 3}));
        assert_eq!(r.status, 200, "{size}: {}", r.text());
        let out = dir.join(format!("circle-{size}.png"));
        let mut args: Vec<String> = ["generate", "-p", "a red circle", "-s", "3", "-o", s(&out)].iter().map(|x| x.to_string()).collect();
        args.extend(canvas_flags(size));
        assert_ok(&nextflow(&args.iter().map(String::as_str).collect::<Vec<_>>()));
        assert_eq!(unb64(&r.json()["data"][0]["b64_json"]), std::fs::read(&out).unwrap(), "{size} differs from the CLI's");
    }
    // Streamed: progress for every scale, then the same image.
    let scales = model["defaults"]["scales"].as_u64().unwrap() as usize;
    let r = post_json(a, "/v1/images/generations", &json!({"prompt": "two stars", "seed": 5, "stream": true}));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events: Vec<Value> = r.events().iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let progress: Vec<u64> = events.iter().filter(|e| e["type"] == "image_generation.progress").map(|e| e["scale"].as_u64().unwrap()).collect();
    assert_eq!(progress, (1..=scales as u64).collect::<Vec<_>>());
    let done: Vec<&Value> = events.iter().filter(|e| e["type"] == "image_generation.completed").collect();
    assert_eq!(done.len(), 1);
    assert_eq!(unb64(&done[0]["b64_json"]), std::fs::read(dir.join("stars-1.png")).unwrap());

    // An edit of an upload: the CLI's bytes for the same file name, instruction and seed.
    let input = dir.join("stars-1.png");
    let png = std::fs::read(&input).unwrap();
    let boundary = "nextflowboundary7";
    let mut form = Vec::new();
    for (k, v) in [("prompt", "make the star red"), ("seed", "3")] {
        form.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes());
    }
    form.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"stars-1.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
    form.extend(&png);
    form.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = request(a, "POST", "/v1/images/edits", &[("Content-Type", &ct)], &form);
    assert_eq!(r.status, 200, "{}", r.text());
    let edited = dir.join("edited.png");
    assert_ok(&nextflow(&["edit", "-i", s(&input), "-p", "make the star red", "-s", "3", "-o", s(&edited)]));
    assert_eq!(unb64(&r.json()["data"][0]["b64_json"]), std::fs::read(&edited).unwrap(), "the edit differs from the CLI's");

    // Understanding through chat: the CLI's answer; streamed equals non-streamed.
    let question = "what color is the star?";
    let content = json!([{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", b64(&png))}}]);
    let r = post_json(a, "/v1/chat/completions", &json!({"model": "nextflow-tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 8}));
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let cli = nextflow(&["understand", "-i", s(&input), "-p", question, "--max-new-tokens", "8", "--json"]);
    assert_ok(&cli);
    let cli_answer: Value = serde_json::from_str(&cli.1).unwrap();
    assert_eq!(answer.trim(), cli_answer["answer"].as_str().unwrap(), "the chat answer differs from `nextflow understand`");
    let streamed = post_json(a, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": content}], "max_tokens": 8, "stream": true, "stream_options": {"include_usage": true}}));
    assert_eq!(streamed.status, 200);
    let chunks = streamed.events();
    assert_eq!(chunks.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    let mut finish = None;
    for c in &chunks[..chunks.len() - 1] {
        let c: Value = serde_json::from_str(c).unwrap();
        assert_eq!(c["object"], "chat.completion.chunk");
        if let Some(choice) = c["choices"].get(0) {
            text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if !choice["finish_reason"].is_null() {
                finish = Some(choice["finish_reason"].clone());
            }
        } else {
            assert!(c["usage"]["completion_tokens"].as_u64().is_some());
        }
    }
    assert_eq!(text, answer, "streamed text differs from the non-streamed answer");
    assert_eq!(finish, Some(r.json()["choices"][0]["finish_reason"].clone()));
    // Sampled text, same seed: streamed and not agree too.
    let ask = |stream: bool| post_json(a, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "a red circle"}], "max_tokens": 6, "temperature": 0.9, "seed": 11, "stream": stream}));
    let plain = ask(false);
    assert_eq!(plain.status, 200, "{}", plain.text());
    let joined: String = ask(true).events().iter().filter(|e| *e != "[DONE]").filter_map(|e| serde_json::from_str::<Value>(e).ok()?["choices"][0]["delta"]["content"].as_str().map(str::to_string)).collect();
    assert_eq!(joined, plain.json()["choices"][0]["message"]["content"].as_str().unwrap());

    let m = server.metrics();
    for series in ["nextflow_requests_total{endpoint=\"/v1/images/generations\",status=\"200\"}", "nextflow_request_duration_seconds_bucket{endpoint=\"/v1/chat/completions\",le=\"+Inf\"}", "nextflow_queue_depth", "nextflow_batch_images_count", "nextflow_images_per_second", "nextflow_tokens_per_second"] {
        assert!(m.contains(series), "{series} missing from /metrics:\n{m}");
    }
    assert!(server.metric("nextflow_images_total") >= 4.0);
}

#[test]
fn bad_requests_get_4xx_in_openai_shape_and_the_server_goes_on() {
    let server = Server::start("bad", &["--max-body-mib", "1"]);
    let a = server.addr.as_str();
    let gen = "/v1/images/generations";
    let chat = "/v1/chat/completions";
    let json_ct = [("Content-Type", "application/json")];
    let raw = |path: &str, body: &str| request(a, "POST", path, &json_ct, body.as_bytes());
    let j = |path: &str, v: Value| post_json(a, path, &v);
    let user = |content: Value| json!({"messages": [{"role": "user", "content": content}]});
    let image_part = |url: &str| json!([{"type": "text", "text": "what color is the circle?"}, {"type": "image_url", "image_url": {"url": url}}]);
    // A PNG header declaring 100000 x 100000 pixels.
    let mut huge = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    huge.extend(100_000u32.to_be_bytes());
    huge.extend(100_000u32.to_be_bytes());
    huge.extend([8, 2, 0, 0, 0, 0, 0, 0, 0]);
    let multipart = |parts: &[(&str, Option<&str>, &[u8])]| {
        let mut form = Vec::new();
        for (name, file, bytes) in parts {
            let file = file.map_or(String::new(), |f| format!("; filename=\"{f}\""));
            form.extend(format!("--b0undary\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n").as_bytes());
            form.extend(*bytes);
            form.extend(b"\r\n");
        }
        form.extend(b"--b0undary--\r\n");
        request(a, "POST", "/v1/images/edits", &[("Content-Type", "multipart/form-data; boundary=b0undary")], &form)
    };
    let cases: Vec<(&str, Reply, u16, Option<&str>)> = vec![
        ("malformed JSON", raw(gen, "{\"prompt\": \"a red"), 400, None),
        ("a JSON array body", raw(gen, "[1, 2]"), 400, None),
        ("NaN in JSON", raw(gen, "{\"prompt\": \"a red circle\", \"cfg\": NaN}"), 400, None),
        ("a number out of range", raw(gen, "{\"prompt\": \"a red circle\", \"cfg\": 1e999}"), 400, None),
        ("prompt of the wrong type", j(gen, json!({"prompt": 5})), 400, Some("prompt")),
        ("no prompt", j(gen, json!({"n": 1})), 400, Some("prompt")),
        ("an empty prompt", j(gen, json!({"prompt": "   "})), 400, Some("prompt")),
        ("an unknown word", j(gen, json!({"prompt": "a purple elephant"})), 400, Some("prompt")),
        ("an oversized prompt", j(gen, json!({"prompt": "red ".repeat(2000)})), 400, Some("prompt")),
        ("an unknown field", j(gen, json!({"prompt": "a red circle", "seeed": 3})), 400, Some("seeed")),
        ("n = 0", j(gen, json!({"prompt": "a red circle", "n": 0})), 400, Some("n")),
        ("n = 11", j(gen, json!({"prompt": "a red circle", "n": 11})), 400, Some("n")),
        ("n = 2.5", j(gen, json!({"prompt": "a red circle", "n": 2.5})), 400, Some("n")),
        ("n as a string", j(gen, json!({"prompt": "a red circle", "n": "2"})), 400, Some("n")),
        ("a size not offered", j(gen, json!({"prompt": "a red circle", "size": "1024x1024"})), 400, Some("size")),
        ("a malformed size", j(gen, json!({"prompt": "a red circle", "size": "big"})), 400, Some("size")),
        ("a huge cfg", j(gen, json!({"prompt": "a red circle", "cfg": 1e300})), 400, Some("cfg")),
        ("top_p = 0", j(gen, json!({"prompt": "a red circle", "top_p": 0})), 400, Some("top_p")),
        ("a negative temperature", j(gen, json!({"prompt": "a red circle", "temperature": -1})), 400, Some("temperature")),
        ("a negative seed", j(gen, json!({"prompt": "a red circle", "seed": -1})), 400, Some("seed")),
        ("an unknown model", j(gen, json!({"model": "dall-e-3", "prompt": "a red circle"})), 404, Some("model")),
        ("response_format url", j(gen, json!({"prompt": "a red circle", "response_format": "url"})), 400, Some("response_format")),
        ("class on a text model", j(gen, json!({"class": 207})), 400, Some("class")),
        ("the wrong content type", request(a, "POST", gen, &[("Content-Type", "text/plain")], b"{\"prompt\": \"a red circle\"}"), 415, None),
        ("a body over the limit", j(gen, json!({"prompt": "x".repeat(2 << 20)})), 413, None),
        ("an edit as JSON", j("/v1/images/edits", json!({"prompt": "make the circle green"})), 415, None),
        ("an edit without an image", multipart(&[("prompt", None, b"make the circle green")]), 400, Some("image")),
        ("a broken image", multipart(&[("prompt", None, b"make the circle green"), ("image", Some("x.png"), b"\x89PNG\r\n\x1a\nnot really")]), 400, Some("image")),
        ("a huge declared image", multipart(&[("prompt", None, b"make the circle green"), ("image", Some("huge.png"), &huge)]), 400, Some("image")),
        ("an edit with a mask", multipart(&[("prompt", None, b"make the circle green"), ("mask", Some("m.png"), b"x")]), 400, Some("mask")),
        ("messages not an array", j(chat, json!({"messages": "hello"})), 400, Some("messages")),
        ("no messages", j(chat, json!({"messages": []})), 400, Some("messages")),
        ("an unknown role", j(chat, json!({"messages": [{"role": "robot", "content": "hi"}]})), 400, Some("messages[0].role")),
        ("an http image URL", j(chat, user(image_part("http://example.com/a.png"))), 400, Some("messages[0].content[1].image_url")),
        ("broken base64", j(chat, user(image_part("data:image/png;base64,@@@@"))), 400, Some("messages[0].content[1].image_url")),
        ("a data URL of text", j(chat, user(image_part("data:text/plain;base64,aGk="))), 400, Some("messages[0].content[1].image_url")),
        ("a broken image in chat", j(chat, user(image_part("data:image/png;base64,aGVsbG8gd29ybGQ="))), 400, Some("messages[0].content[1].image_url")),
        ("n = 2 in chat", j(chat, json!({"messages": [{"role": "user", "content": "a red circle"}], "n": 2})), 400, Some("n")),
        ("max_tokens = 0", j(chat, json!({"messages": [{"role": "user", "content": "a red circle"}], "max_tokens": 0})), 400, Some("max_tokens")),
        ("temperature = 3", j(chat, json!({"messages": [{"role": "user", "content": "a red circle"}], "temperature": 3})), 400, Some("temperature")),
        ("a conversation on a model without a template", j(chat, json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a red circle"}]})), 400, Some("messages")),
        ("stop sequences", j(chat, json!({"messages": [{"role": "user", "content": "a red circle"}], "stop": ["."]})), 400, Some("stop")),
        ("an unknown endpoint", get(a, "/v1/embeddings"), 404, None),
        ("GET on a POST endpoint", get(a, gen), 405, None),
    ];
    assert!(cases.len() >= 20);
    for (what, r, status, param) in &cases {
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        let body = assert_error_shape(r, what);
        if let Some(p) = param {
            assert_eq!(body["error"]["param"], *p, "{what}: {body}");
        }
    }
    // The closest known words for an unknown one.
    assert!(cases[7].1.json()["error"]["message"].as_str().unwrap().contains("purple"));
    assert_eq!(get(a, "/health").status, 200);
    let ok = j(gen, json!({"prompt": "a red circle", "seed": 1}));
    assert_eq!(ok.status, 200, "the server still paints: {}", ok.text());
    assert!(server.metric("nextflow_requests_total{endpoint=\"/v1/images/generations\",status=\"400\"}") >= 15.0);
}

#[test]
fn concurrent_image_requests_are_batched_and_each_matches_the_cli() {
    let server = Server::start("concurrent", &["--max-batch", "8", "--max-queue", "16"]);
    let dir = scratch("serve-concurrent-cli");
    let prompts = ["a red circle", "two blue squares"];
    let requests: Vec<(usize, u64)> = (0..32).map(|i| (i % 2, 100 + (i / 2) as u64)).collect();
    let addr = server.addr.clone();
    let replies: Vec<(usize, u64, Reply)> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .map(|&(p, seed)| {
                let addr = addr.clone();
                scope.spawn(move || (p, seed, post_json(&addr, "/v1/images/generations", &json!({"prompt": prompts[p], "seed": seed}))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(replies.len(), 32);
    for (p, prompt) in prompts.iter().enumerate() {
        assert_ok(&nextflow(&["generate", "-p", prompt, "-n", "16", "-s", "100", "-o", s(&dir.join(format!("p{p}-{{i}}.png")))]));
    }
    let mut served = std::collections::HashSet::new();
    let mut busy = 0;
    for (p, seed, r) in &replies {
        match r.status {
            200 => {
                let data = r.json()["data"].as_array().unwrap().clone();
                assert_eq!(data.len(), 1, "one image per request");
                assert_eq!(data[0]["seed"], *seed, "the reply is for its own request");
                let cli = std::fs::read(dir.join(format!("p{p}-{}.png", seed - 100 + 1))).unwrap();
                assert_eq!(unb64(&data[0]["b64_json"]), cli, "prompt {p} seed {seed}: not the CLI's bytes");
                assert!(served.insert((*p, *seed)), "prompt {p} seed {seed} answered twice");
            }
            429 => {
                assert_error_shape(r, "429");
                assert!(r.header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= 1), "429 without Retry-After");
                busy += 1;
            }
            other => panic!("status {other}: {}", r.text()),
        }
    }
    assert_eq!(served.len() + busy, 32);
    assert!(served.len() >= 8, "only {} of 32 were served", served.len());
    // Batches of more than one image happened.
    let (sum, count) = (server.metric("nextflow_batch_images_sum"), server.metric("nextflow_batch_images_count"));
    assert!(count > 0.0 && sum > count, "no batching: {sum} images in {count} batches");
    assert_eq!(server.metric("nextflow_queue_depth"), 0.0);
}

#[test]
fn a_panic_inside_the_model_fails_that_request_only() {
    let server = Server::start("panic", &["--panic-on-prompt", "a green star"]);
    let a = server.addr.as_str();
    let r = post_json(a, "/v1/images/generations", &json!({"prompt": "a green star", "seed": 1}));
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(assert_error_shape(&r, "panic")["error"]["type"], "server_error");
    let streamed = post_json(a, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "a green star"}], "stream": true}));
    assert!(streamed.events().iter().any(|e| e.contains("\"server_error\"")), "the stream ends with the error: {}", streamed.text());
    assert_eq!(get(a, "/health").status, 200);
    let ok = post_json(a, "/v1/images/generations", &json!({"prompt": "a green square", "seed": 1}));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(server.metric("nextflow_model_panics_total"), 2.0);
}

#[test]
fn a_client_that_leaves_cancels_its_work() {
    let server = Server::start("cancel", &["--max-batch", "1"]);
    let a = server.addr.as_str();
    // Fill the model thread, then queue a request and hang up before it starts.
    let addr = server.addr.clone();
    let busy = std::thread::spawn(move || post_json(&addr, "/v1/images/generations", &json!({"prompt": "a red circle", "n": 10, "seed": 1})));
    let addr = server.addr.clone();
    let queued = std::thread::spawn(move || post_json(&addr, "/v1/images/generations", &json!({"prompt": "a red cross", "n": 10, "seed": 3})));
    // The two requests ahead take ~400 ms on an idle 2-core CPU: queue and leave within that
    // (waiting 500 ms let them finish first on an idle machine).
    std::thread::sleep(Duration::from_millis(50));
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(a).unwrap();
        let body = json!({"prompt": "a blue square", "n": 10, "seed": 2}).to_string();
        write!(s, "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(busy.join().unwrap().status, 200);
    assert_eq!(queued.join().unwrap().status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server.metric("nextflow_cancelled_total") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the request of the client that left was not cancelled:\n{}", server.metrics());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.metric("nextflow_images_total"), 20.0, "the cancelled request painted nothing");
}

/// A tool a test needs: outside CI a missing one skips the test (said on stdout); with
/// CI=true it fails.
fn required(found: Option<String>, missing: &str) -> Option<String> {
    if found.is_none() {
        assert!(!in_ci(), "CI=true but {missing}");
        println!("SKIPPED: {missing}");
    }
    found
}

/// `NEXTFLOW_PYTHON` (or python3) with the `openai` package.
fn python_with_openai() -> Option<String> {
    let python = std::env::var("NEXTFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python).args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success());
    required(ok.then(|| python.clone()), &format!("{python} has no `openai` package (pip install openai)"))
}

#[test]
fn the_official_openai_client_drives_the_server() {
    let Some(python) = python_with_openai() else { return };
    let server = Server::start("openai", &[]);
    let dir = scratch("serve-openai");
    let image = dir.join("cli.png");
    assert_ok(&nextflow(&["generate", "-p", "a red circle", "-s", "7", "-o", s(&image)]));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/serve/openai_client_check.py");
    let out = Command::new(&python).args([script, "--base-url", &format!("http://{}/v1", server.addr), "--expect-image", s(&image)]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "openai client check failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("openai client: ok"), "{stdout}");
}

/// Debian's `chromium` (or chromium-browser / google-chrome).
fn chromium() -> Option<String> {
    let found = ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
    required(found.map(str::to_string), "no chromium (apt-get install chromium)")
}

#[test]
fn the_web_page_paints_an_image_in_headless_chromium() {
    let Some(chromium) = chromium() else { return };
    let server = Server::start("page", &[]);
    let dir = scratch("serve-page");
    let expected = dir.join("cli.png");
    assert_ok(&nextflow(&["generate", "-p", "a red circle", "-s", "7", "-o", s(&expected)]));
    let shot = dir.join("page.png");
    let url = format!("http://{}/?prompt=a%20red%20circle&seed=7&n=1&stream=0&run=1", server.addr);
    let profile = dir.join("profile");
    let out = Command::new(&chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1", "--force-color-profile=srgb", "--window-size=1000,1400", "--virtual-time-budget=60000", "--run-all-compositor-stages-before-draw"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    // The page shows the image at twice its size, pixelated: find it in the screenshot.
    let page = image::open(&shot).unwrap().to_rgb8();
    let want = image::open(&expected).unwrap().to_rgb8();
    let found = find_scaled(&page, &want, 2);
    std::fs::copy(&shot, std::env::temp_dir().join("nextflow-serve-page.png")).ok();
    assert!(found.is_some(), "the screenshot ({}) does not show the CLI's image at 2x", shot.display());
}

/// Where `small`, scaled `k` times by pixel repetition, sits in `big` (every pixel within
/// 2 levels), if anywhere.
fn find_scaled(big: &image::RgbImage, small: &image::RgbImage, k: u32) -> Option<(u32, u32)> {
    let (bw, bh) = big.dimensions();
    let (sw, sh) = (small.width() * k, small.height() * k);
    if sw > bw || sh > bh {
        return None;
    }
    let close = |a: &image::Rgb<u8>, b: &image::Rgb<u8>| a.0.iter().zip(b.0.iter()).all(|(x, y)| x.abs_diff(*y) <= 2);
    // Anchor on a pixel of the image far from its first one, to skip flat backgrounds fast.
    let probe: Vec<(u32, u32)> = (0..64).map(|i| ((i * 37) % small.width(), (i * 53) % small.height())).collect();
    for y in 0..=(bh - sh) {
        for x in 0..=(bw - sw) {
            if !probe.iter().all(|&(px, py)| close(big.get_pixel(x + px * k + k / 2, y + py * k + k / 2), small.get_pixel(px, py))) {
                continue;
            }
            let all = (0..small.height()).all(|py| (0..small.width()).all(|px| close(big.get_pixel(x + px * k + k / 2, y + py * k + k / 2), small.get_pixel(px, py))));
            if all {
                return Some((x, y));
            }
        }
    }
    None
}
