//! `images::Images` against fake FusionBrain, Yandex ART and upscale servers on loopback: the
//! delivered size of every format from both providers, the exact request shapes, polling and
//! progress, timeout, moderation, failures, fallback both ways, the upscaler (service and
//! built-in), the legacy FusionBrain routes, and hostile answers.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use easy_writer::config::{Config, Flags};
use easy_writer::images::{Format, Images, ProviderId, Request};
use easy_writer::llm::metrics::Metrics;
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Respond, ResponseTemplate};

const FB_KEY: &str = "fb-key-0123456789";
const FB_SECRET: &str = "fb-secret-0123456789";
const YC_KEY: &str = "AQVN-yc-key-0123456789";
const FOLDER: &str = "b1gfolder";
const PIPELINE: &str = "pipe-3-1";

/// Fake upstreams and a data directory for one test.
struct Fakes {
    fusionbrain: MockServer,
    yandex: MockServer,
    upscale: MockServer,
    dir: tempfile::TempDir,
}

impl Fakes {
    async fn start() -> Fakes {
        Fakes {
            fusionbrain: MockServer::start().await,
            yandex: MockServer::start().await,
            upscale: MockServer::start().await,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Both providers configured against the fakes, fast polling and retries; `extra`
    /// overrides (an empty value unsets a setting).
    fn images(&self, extra: &[(&str, &str)]) -> (Images, Arc<Metrics>) {
        let mut env: HashMap<String, String> = [
            ("EASY_WRITER_DATA_DIR", self.dir.path().to_str().unwrap()),
            ("FUSIONBRAIN_API_KEY", FB_KEY),
            ("FUSIONBRAIN_SECRET_KEY", FB_SECRET),
            ("FUSIONBRAIN_BASE_URL", &self.fusionbrain.uri()),
            ("FUSIONBRAIN_POLL_MS", "20"),
            ("FUSIONBRAIN_TIMEOUT_SECS", "5"),
            ("YANDEXGPT_API_KEY", YC_KEY),
            ("YANDEXGPT_FOLDER_ID", FOLDER),
            ("YANDEXART_BASE_URL", &self.yandex.uri()),
            ("EASY_WRITER_RETRY_BASE_MS", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let file = self.dir.path().join("test-config.toml");
        std::fs::write(&file, "").expect("config file");
        let flags = Flags {
            config: Some(file),
            bind: None,
        };
        let config = Config::load(&flags, &env).expect("configuration").config;
        let metrics = Arc::new(Metrics::default());
        let images = Images::from_config(&config, metrics.clone()).expect("images");
        (images, metrics)
    }

    fn upscale_url(&self) -> String {
        format!("{}/upscale", self.upscale.uri())
    }
}

fn request(format: Format) -> Request {
    Request {
        prompt: "Пушистый кот в очках".into(),
        negative_prompt: Some("яркие цвета".into()),
        style: Some("anime".into()),
        format,
    }
}

/// A gradient picture, so that resampling has something to do.
fn pixels(width: u32, height: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 256) as u8])
    })
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&pixels(width, height))
        .expect("jpeg");
    out
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    pixels(width, height)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The size of a PNG, checking that it is one.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    let image = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .expect("the result is a PNG");
    (image.width(), image.height())
}

/// Collects reported progress.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<u8>>>);

impl Seen {
    fn sink(&self) -> impl Fn(u8) + Send + Sync + use<> {
        let seen = self.0.clone();
        move |p| seen.lock().unwrap().push(p)
    }

    fn values(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    /// 0 first, strictly rising, 100 once and last.
    fn assert_sound(&self) {
        let values = self.values();
        assert_eq!(values.first(), Some(&0), "{values:?}");
        assert_eq!(values.last(), Some(&100), "{values:?}");
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
    }
}

/// Answers from a list in turn, repeating the last.
struct Sequence {
    answers: Vec<ResponseTemplate>,
    next: AtomicUsize,
}

impl Sequence {
    fn new(answers: Vec<ResponseTemplate>) -> Sequence {
        Sequence {
            answers,
            next: AtomicUsize::new(0),
        }
    }
}

impl Respond for Sequence {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        self.answers[i.min(self.answers.len() - 1)].clone()
    }
}

/// One multipart part: its name, its `Content-Type`, its bytes.
struct FormPart {
    name: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// Splits a `multipart/form-data` body into its parts.
fn multipart(request: &wiremock::Request) -> Vec<FormPart> {
    let content_type = request.headers["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("multipart/form-data"),
        "{content_type}"
    );
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .unwrap()
        .trim_matches('"');
    let delimiter = format!("--{boundary}").into_bytes();
    let body = &request.body;
    let mut starts = Vec::new();
    let mut at = 0;
    while let Some(found) = find(&body[at..], &delimiter) {
        starts.push(at + found);
        at += found + delimiter.len();
    }
    let mut parts = Vec::new();
    for pair in starts.windows(2) {
        let chunk = &body[pair[0] + delimiter.len()..pair[1]];
        let chunk = chunk.strip_prefix(b"\r\n").unwrap_or(chunk);
        let chunk = chunk.strip_suffix(b"\r\n").unwrap_or(chunk);
        let split = find(chunk, b"\r\n\r\n").expect("part headers");
        let headers = String::from_utf8_lossy(&chunk[..split]).to_string();
        let mut name = String::new();
        let mut content_type = None;
        for line in headers.lines() {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("content-disposition") {
                name = line
                    .split("name=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or_default()
                    .to_owned();
            } else if lower.starts_with("content-type") {
                content_type = Some(line.split_once(':').unwrap().1.trim().to_owned());
            }
        }
        parts.push(FormPart {
            name,
            content_type,
            body: chunk[split + 4..].to_vec(),
        });
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn part<'a>(parts: &'a [FormPart], name: &str) -> &'a FormPart {
    parts
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no part {name}"))
}

/// A fake Kandinsky: the run remembers the size asked for and the status answers a picture of
/// exactly that size after `states` (e.g. INITIAL, PROCESSING).
struct Kandinsky {
    size: Arc<Mutex<(u32, u32)>>,
    runs: Arc<Mutex<Vec<Value>>>,
}

impl Kandinsky {
    async fn mount(server: &MockServer, states: &[&str]) -> Kandinsky {
        Self::mount_with(server, states, false).await
    }

    async fn mount_with(server: &MockServer, states: &[&str], legacy: bool) -> Kandinsky {
        let size = Arc::new(Mutex::new((0, 0)));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let polls = Arc::new(AtomicUsize::new(0));
        let (run_path, status_path) = if legacy {
            (
                "/key/api/v1/text2image/run",
                "/key/api/v1/text2image/status/job-1",
            )
        } else {
            mount_pipelines(server).await;
            (
                "/key/api/v1/pipeline/run",
                "/key/api/v1/pipeline/status/job-1",
            )
        };
        Mock::given(method("POST"))
            .and(path(run_path))
            .respond_with(RunRecorder {
                size: size.clone(),
                runs: runs.clone(),
                polls: polls.clone(),
            })
            .mount(server)
            .await;
        Mock::given(method("GET"))
            .and(path(status_path))
            .respond_with(StatusAnswers {
                size: size.clone(),
                states: states.iter().map(|s| (*s).to_owned()).collect(),
                next: polls,
                legacy,
            })
            .mount(server)
            .await;
        Kandinsky { size, runs }
    }
}

async fn mount_pipelines(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/key/api/v1/pipelines"))
        .and(header("x-key", format!("Key {FB_KEY}").as_str()))
        .and(header("x-secret", format!("Secret {FB_SECRET}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": "old", "type": "TEXT2IMAGE", "status": "DISABLED_MANUALLY"},
            {"id": "edit", "type": "IMAGE2IMAGE", "status": "ACTIVE"},
            {"uuid": PIPELINE, "name": "Kandinsky", "version": 3.1, "type": "TEXT2IMAGE", "status": "ACTIVE"},
        ])))
        .mount(server)
        .await;
}

struct RunRecorder {
    size: Arc<Mutex<(u32, u32)>>,
    runs: Arc<Mutex<Vec<Value>>>,
    /// Polls of the current job, restarted by each run.
    polls: Arc<AtomicUsize>,
}

impl Respond for RunRecorder {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let parts = multipart(request);
        let params: Value = serde_json::from_slice(&part(&parts, "params").body).expect("params");
        let width = params["width"].as_u64().unwrap() as u32;
        let height = params["height"].as_u64().unwrap() as u32;
        *self.size.lock().unwrap() = (width, height);
        self.polls.store(0, Ordering::SeqCst);
        let id_part = parts
            .iter()
            .find(|p| p.name == "pipeline_id" || p.name == "model_id")
            .expect("an id part");
        self.runs.lock().unwrap().push(json!({
            "id_name": id_part.name,
            "id": String::from_utf8_lossy(&id_part.body),
            "params_type": part(&parts, "params").content_type,
            "params": params,
        }));
        ResponseTemplate::new(201)
            .set_body_json(json!({"uuid": "job-1", "status": "INITIAL", "status_time": 0}))
    }
}

struct StatusAnswers {
    size: Arc<Mutex<(u32, u32)>>,
    states: Vec<String>,
    next: Arc<AtomicUsize>,
    legacy: bool,
}

impl Respond for StatusAnswers {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        if let Some(state) = self.states.get(i) {
            return ResponseTemplate::new(200)
                .set_body_json(json!({"uuid": "job-1", "status": state}));
        }
        if i > self.states.len() {
            // The result can be read once; a later poll is a 404.
            return ResponseTemplate::new(404);
        }
        let (w, h) = *self.size.lock().unwrap();
        let file = b64(&jpeg(w, h));
        ResponseTemplate::new(200).set_body_json(if self.legacy {
            json!({"uuid": "job-1", "status": "DONE", "images": [file], "censored": false})
        } else {
            json!({"uuid": "job-1", "status": "DONE", "result": {"files": [file], "censored": false}, "generationTime": 12})
        })
    }
}

/// A fake Yandex ART: answers a JPEG near 1024 px on the long side in the ratio asked for,
/// deliberately not the exact draw size, after one pending poll.
struct YandexArt {
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl YandexArt {
    async fn mount(server: &MockServer) -> YandexArt {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let ratio = Arc::new(Mutex::new((1, 1)));
        Mock::given(method("POST"))
            .and(path("/foundationModels/v1/imageGenerationAsync"))
            .and(header(
                "authorization",
                format!("Api-Key {YC_KEY}").as_str(),
            ))
            .respond_with(ArtStart {
                bodies: bodies.clone(),
                ratio: ratio.clone(),
            })
            .mount(server)
            .await;
        Mock::given(method("GET"))
            .and(path("/operations/op-1"))
            .and(header(
                "authorization",
                format!("Api-Key {YC_KEY}").as_str(),
            ))
            .respond_with(ArtOperation {
                ratio,
                polls: AtomicUsize::new(0),
            })
            .mount(server)
            .await;
        YandexArt { bodies }
    }
}

struct ArtStart {
    bodies: Arc<Mutex<Vec<Value>>>,
    ratio: Arc<Mutex<(u32, u32)>>,
}

impl Respond for ArtStart {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).expect("json");
        let ratio = &body["generationOptions"]["aspectRatio"];
        let w: u32 = ratio["widthRatio"].as_str().unwrap().parse().unwrap();
        let h: u32 = ratio["heightRatio"].as_str().unwrap().parse().unwrap();
        *self.ratio.lock().unwrap() = (w, h);
        self.bodies.lock().unwrap().push(body);
        ResponseTemplate::new(200)
            .set_body_json(json!({"id": "op-1", "description": "", "done": false}))
    }
}

struct ArtOperation {
    ratio: Arc<Mutex<(u32, u32)>>,
    polls: AtomicUsize,
}

impl Respond for ArtOperation {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        if self.polls.fetch_add(1, Ordering::SeqCst) == 0 {
            return ResponseTemplate::new(200).set_body_json(json!({"id": "op-1", "done": false}));
        }
        let (w, h) = *self.ratio.lock().unwrap();
        let (width, height) = if w > h {
            (1008, 1008 * h / w)
        } else {
            (1000 * w / h, 1000)
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "id": "op-1", "done": true,
            "response": {"image": b64(&jpeg(width, height)), "modelVersion": "1.0"},
        }))
    }
}

#[tokio::test]
async fn kandinsky_delivers_every_format_at_its_exact_size() {
    let fakes = Fakes::start().await;
    let fake = Kandinsky::mount(&fakes.fusionbrain, &[]).await;
    let (images, _) = fakes.images(&[]);
    assert_eq!(
        images.configured(),
        [ProviderId::Kandinsky, ProviderId::YandexArt]
    );
    for format in Format::ALL {
        let seen = Seen::default();
        let picture = images
            .generate(&request(format), &seen.sink())
            .await
            .unwrap_or_else(|e| panic!("{format}: {e} {:?}", e.attempts()));
        assert_eq!(picture.provider, ProviderId::Kandinsky);
        assert_eq!((picture.width, picture.height), format.size(), "{format}");
        assert_eq!(png_size(&picture.png), format.size(), "{format}");
        assert_eq!(*fake.size.lock().unwrap(), format.draw_size(), "{format}");
        seen.assert_sound();
    }
}

#[tokio::test]
async fn yandexart_delivers_every_format_at_its_exact_size() {
    let fakes = Fakes::start().await;
    let fake = YandexArt::mount(&fakes.yandex).await;
    let (images, _) = fakes.images(&[("EASY_WRITER_IMAGE_PROVIDER_ORDER", "yandexart,kandinsky")]);
    for format in Format::ALL {
        let seen = Seen::default();
        let picture = images
            .generate(&request(format), &seen.sink())
            .await
            .unwrap_or_else(|e| panic!("{format}: {e} {:?}", e.attempts()));
        assert_eq!(picture.provider, ProviderId::YandexArt);
        assert_eq!(png_size(&picture.png), format.size(), "{format}");
        assert_eq!((picture.width, picture.height), format.size());
        seen.assert_sound();
    }
    let bodies = fake.bodies.lock().unwrap();
    let banner = &bodies[2];
    assert_eq!(
        banner["modelUri"],
        format!("art://{FOLDER}/yandex-art/latest")
    );
    assert_eq!(banner["generationOptions"]["mimeType"], "image/jpeg");
    assert_eq!(
        banner["generationOptions"]["aspectRatio"],
        json!({"widthRatio": "2", "heightRatio": "1"})
    );
    let seed = banner["generationOptions"]["seed"]
        .as_str()
        .expect("seed as a string");
    assert!(seed.parse::<i64>().is_ok(), "{seed}");
    assert_eq!(banner["messages"][0]["weight"], "1");
    assert!(
        banner["messages"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Пушистый кот в очках")
    );
    assert!(banner.get("negativePrompt").is_none());
}

#[tokio::test]
async fn yandexart_prompts_are_cut_to_500_characters() {
    let fakes = Fakes::start().await;
    let fake = YandexArt::mount(&fakes.yandex).await;
    let (images, _) = fakes.images(&[("EASY_WRITER_IMAGE_PROVIDER_ORDER", "yandexart")]);
    let mut long = request(Format::Messenger);
    long.prompt = "ж".repeat(2000);
    long.style = None;
    images.generate(&long, &|_| {}).await.expect("drawn");
    let bodies = fake.bodies.lock().unwrap();
    assert_eq!(
        bodies[0]["messages"][0]["text"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        500
    );
}

#[tokio::test]
async fn kandinsky_requests_have_the_documented_shape() {
    let fakes = Fakes::start().await;
    let fake = Kandinsky::mount(&fakes.fusionbrain, &[]).await;
    let (images, _) = fakes.images(&[]);
    images
        .generate(&request(Format::Banner), &|_| {})
        .await
        .expect("drawn");
    images
        .generate(&request(Format::Web), &|_| {})
        .await
        .expect("drawn");
    let runs = fake.runs.lock().unwrap().clone();
    assert_eq!(runs[0]["id_name"], "pipeline_id");
    assert_eq!(runs[0]["id"], PIPELINE);
    assert_eq!(runs[0]["params_type"], "application/json");
    assert_eq!(
        runs[0]["params"],
        json!({
            "type": "GENERATE", "numImages": 1, "width": 1024, "height": 512, "style": "ANIME",
            "negativePromptDecoder": "яркие цвета",
            "generateParams": {"query": "Пушистый кот в очках"},
        })
    );
    // The pipeline id is discovered once and kept.
    let lists = fakes
        .fusionbrain
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/key/api/v1/pipelines")
        .count();
    assert_eq!(lists, 1);
    // Every call carries both credentials with their prefixes.
    for request in fakes.fusionbrain.received_requests().await.unwrap() {
        assert_eq!(request.headers["x-key"], format!("Key {FB_KEY}").as_str());
        assert_eq!(
            request.headers["x-secret"],
            format!("Secret {FB_SECRET}").as_str()
        );
    }
}

#[tokio::test]
async fn polling_goes_from_queued_to_done_and_reads_the_result_once() {
    let fakes = Fakes::start().await;
    Kandinsky::mount(&fakes.fusionbrain, &["INITIAL", "PROCESSING", "PROCESSING"]).await;
    let (images, metrics) = fakes.images(&[]);
    let seen = Seen::default();
    let picture = images
        .generate(&request(Format::Messenger), &seen.sink())
        .await
        .expect("drawn");
    assert_eq!(png_size(&picture.png), (512, 512));
    seen.assert_sound();
    assert!(seen.values().len() >= 5, "{:?}", seen.values());
    let polls = fakes
        .fusionbrain
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/key/api/v1/pipeline/status/job-1")
        .count();
    assert_eq!(
        polls, 4,
        "three pending answers, then DONE, and no poll after it"
    );
    let rendered = metrics.render();
    assert!(
        rendered
            .contains(r#"easy_writer_image_requests_total{provider="kandinsky",outcome="ok"} 1"#),
        "{rendered}"
    );
}

#[tokio::test]
async fn a_job_not_done_in_time_is_a_timeout() {
    let fakes = Fakes::start().await;
    mount_pipelines(&fakes.fusionbrain).await;
    Mock::given(method("POST"))
        .and(path("/key/api/v1/pipeline/run"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"uuid": "job-1", "status": "INITIAL", "status_time": 60})),
        )
        .expect(1)
        .mount(&fakes.fusionbrain)
        .await;
    Mock::given(method("GET"))
        .and(path("/key/api/v1/pipeline/status/job-1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"uuid": "job-1", "status": "PROCESSING"})),
        )
        .mount(&fakes.fusionbrain)
        .await;
    let (images, _) = fakes.images(&[
        ("FUSIONBRAIN_TIMEOUT_SECS", "1"),
        ("EASY_WRITER_IMAGE_PROVIDER_ORDER", "kandinsky"),
    ]);
    let seen = Seen::default();
    let started = Instant::now();
    let error = images
        .generate(&request(Format::Web), &seen.sink())
        .await
        .expect_err("times out");
    assert_eq!(error.code(), "timeout");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(!seen.values().contains(&100));
    assert!(seen.values().windows(2).all(|w| w[0] < w[1]));
}

/// A status answer for a finished job.
fn done(result: Value) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({"uuid": "job-1", "status": "DONE", "result": result}))
}

/// Kandinsky runs accepted once each time, with the status answers given.
async fn kandinsky_answering(server: &MockServer, status: impl Respond + 'static, runs: u64) {
    mount_pipelines(server).await;
    Mock::given(method("POST"))
        .and(path("/key/api/v1/pipeline/run"))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"uuid": "job-1", "status": "INITIAL"})),
        )
        .expect(runs)
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/key/api/v1/pipeline/status/job-1"))
        .respond_with(status)
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_censored_picture_is_content_refused_without_retries() {
    let fakes = Fakes::start().await;
    kandinsky_answering(
        &fakes.fusionbrain,
        done(json!({"files": [], "censored": true})),
        1,
    )
    .await;
    let (images, _) = fakes.images(&[("EASY_WRITER_IMAGE_PROVIDER_ORDER", "kandinsky")]);
    let error = images
        .generate(&request(Format::Web), &|_| {})
        .await
        .expect_err("refused");
    assert_eq!(error.code(), "content_refused");
    assert_eq!(error.attempts().len(), 1);
}

#[tokio::test]
async fn a_refusal_by_one_provider_falls_back_to_the_next() {
    let fakes = Fakes::start().await;
    kandinsky_answering(
        &fakes.fusionbrain,
        done(json!({"files": [], "censored": true})),
        1,
    )
    .await;
    YandexArt::mount(&fakes.yandex).await;
    let (images, _) = fakes.images(&[]);
    let picture = images
        .generate(&request(Format::Web), &|_| {})
        .await
        .expect("the fallback draws");
    assert_eq!(picture.provider, ProviderId::YandexArt);
}

#[tokio::test]
async fn yandexart_moderation_is_content_refused() {
    let fakes = Fakes::start().await;
    Mock::given(method("POST"))
        .and(path("/foundationModels/v1/imageGenerationAsync"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {"grpcCode": 3, "httpCode": 400,
            "message": "it is not possible to generate an image from this request because it may violate the terms of use",
            "httpStatus": "Bad Request"}})))
        .expect(1)
        .mount(&fakes.yandex)
        .await;
    let (images, _) = fakes.images(&[("EASY_WRITER_IMAGE_PROVIDER_ORDER", "yandexart")]);
    let error = images
        .generate(&request(Format::Web), &|_| {})
        .await
        .expect_err("refused");
    assert_eq!(error.code(), "content_refused");
}

#[tokio::test]
async fn a_failed_job_is_unavailable_with_its_reason() {
    let fakes = Fakes::start().await;
    let failed = ResponseTemplate::new(200).set_body_json(
        json!({"uuid": "job-1", "status": "FAIL", "errorDescription": "the GPU caught fire"}),
    );
    kandinsky_answering(&fakes.fusionbrain, failed, 1).await;
    let (images, _) = fakes.images(&[("EASY_WRITER_IMAGE_PROVIDER_ORDER", "kandinsky")]);
    let error = images
        .generate(&request(Format::Web), &|_| {})
        .await
        .expect_err("failed");
    assert_eq!(error.code(), "providers_unavailable");
    assert!(error.attempts()[0].message.contains("the GPU caught fire"));
}

#[tokio::test]
async fn a_queue_that_takes_no_jobs_is_unavailable() {
    for blocked in [
        json!({"pipeline_status": "DISABLED_BY_QUEUE"}),
        json!({"model_status": "DISABLED_MANUALLY"}),
    ] {
        let fakes = Fakes::start().await;
        mount_pipelines(&fakes.fusionbrain).await;
        Mock::given(method("POST"))
            .and(path("/key/api/v1/pipeline/run"))
            .respond_with(ResponseTemplate::new(200).set_body_json(blocked.clone()))
            .expect(1)
            .mount(&fakes.fusionbrain)
            .await;
        let (images, _) = fakes.images(&[("EASY_WRITER_IMAGE_PROVIDER_ORDER", "kandinsky")]);
        let error = images
            .generate(&request(Format::Web), &|_| {})
            .await
            .expect_err("blocked");
        assert_eq!(error.code(), "providers_unavailable");
        assert_eq!(error.attempts()[0].class, "blocked");
    }
}

#[tokio::test]
async fn kandinsky_failing_falls_back_to_yandexart_after_three_attempts() {
    let fakes = Fakes::start().await;
    mount_pipelines(&fakes.fusionbrain).await;
    Mock::given(method("POST"))
        .and(path("/key/api/v1/pipeline/run"))
        .respond_with(ResponseTemplate::new(503).set_body_json(
            json!({"status": 503, "error": "Service Unavailable", "message": "overloaded"}),
        ))
        .expect(3)
        .mount(&fakes.fusionbrain)
        .await;
    YandexArt::mount(&fakes.yandex).await;
    let (images, metrics) = fakes.images(&[]);
    let seen = Seen::default();
    let picture = images
        .generate(&request(Format::Banner), &seen.sink())
        .await
        .expect("the fallback draws");
    assert_eq!(picture.provider, ProviderId::YandexArt);
    assert_eq!(png_size(&picture.png), (2048, 1024));
    seen.assert_sound();
    let rendered = metrics.render();
    assert!(
        rendered.contains(
            r#"easy_writer_image_requests_total{provider="kandinsky",outcome="server"} 3"#
        ),
        "{rendered}"
    );
    assert!(
        rendered
            .contains(r#"easy_writer_image_requests_total{provider="yandexart",outcome="ok"} 1"#)
    );
}

#[tokio::test]
async fn yandexart_first_falls_back_to_kandinsky_without_retrying_a_bad_request() {
    let fakes = Fakes::start().await;
    Mock::given(method("POST"))
        .and(path("/foundationModels/v1/imageGenerationAsync"))
        .respond_with(ResponseTemplate::new(403).set_body_json(
            json!({"error": {"grpcCode": 7, "httpCode": 403, "message": "Permission denied"}}),
        ))
        .expect(1)
        .mount(&fakes.yandex)
        .await;
    Kandinsky::mount(&fakes.fusionbrain, &[]).await;
    let (images, _) = fakes.images(&[("EASY_WRITER_IMAGE_PROVIDER_ORDER", "yandexart,kandinsky")]);
    assert_eq!(
        images.configured(),
        [ProviderId::YandexArt, ProviderId::Kandinsky]
    );
    let picture = images
        .generate(&request(Format::Web), &|_| {})
        .await
        .expect("the fallback draws");
    assert_eq!(picture.provider, ProviderId::Kandinsky);
}

#[tokio::test]
async fn only_configured_providers_in_the_order_are_used() {
    let fakes = Fakes::start().await;
    YandexArt::mount(&fakes.yandex).await;
    // No FusionBrain key: Yandex ART alone.
    let (images, _) = fakes.images(&[("FUSIONBRAIN_API_KEY", "")]);
    assert_eq!(images.configured(), [ProviderId::YandexArt]);
    let picture = images
        .generate(&request(Format::Web), &|_| {})
        .await
        .expect("drawn");
    assert_eq!(picture.provider, ProviderId::YandexArt);
    // YandexGPT credentials alone do not make Yandex ART draw when the order leaves it out.
    let (images, _) = fakes.images(&[
        ("FUSIONBRAIN_API_KEY", ""),
        ("EASY_WRITER_IMAGE_PROVIDER_ORDER", "kandinsky"),
    ]);
    assert!(images.is_empty());
    let error = images
        .generate(&request(Format::Web), &|_| {})
        .await
        .expect_err("nobody to draw");
    assert_eq!(error.code(), "providers_unavailable");
    // No folder: Yandex ART is not configured.
    let (images, _) = fakes.images(&[("YANDEXGPT_FOLDER_ID", "")]);
    assert_eq!(images.configured(), [ProviderId::Kandinsky]);
}

#[tokio::test]
async fn legacy_routes_are_used_when_the_pipelines_api_answers_404() {
    let fakes = Fakes::start().await;
    Mock::given(method("GET"))
        .and(path("/key/api/v1/pipelines"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&fakes.fusionbrain)
        .await;
    Mock::given(method("GET"))
        .and(path("/key/api/v1/models"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!([{"id": 4, "name": "Kandinsky", "version": 3.0, "type": "TEXT2IMAGE"}]),
        ))
        .expect(1)
        .mount(&fakes.fusionbrain)
        .await;
    let fake = Kandinsky::mount_with(&fakes.fusionbrain, &["PROCESSING"], true).await;
    let (images, _) = fakes.images(&[("EASY_WRITER_IMAGE_PROVIDER_ORDER", "kandinsky")]);
    let picture = images
        .generate(&request(Format::Web), &|_| {})
        .await
        .expect("drawn through the legacy routes");
    assert_eq!(png_size(&picture.png), (1024, 1024));
    let runs = fake.runs.lock().unwrap();
    assert_eq!(runs[0]["id_name"], "model_id");
    assert_eq!(runs[0]["id"], "4");
    assert_eq!(runs[0]["params"]["negativePromptUnclip"], "яркие цвета");
}

#[tokio::test]
async fn a_stale_pipeline_id_is_discovered_again_on_404() {
    let fakes = Fakes::start().await;
    let fake = Kandinsky::mount(&fakes.fusionbrain, &[]).await;
    let (images, _) = fakes.images(&[("EASY_WRITER_IMAGE_PROVIDER_ORDER", "kandinsky")]);
    images
        .generate(&request(Format::Web), &|_| {})
        .await
        .expect("first");
    // The pipeline is replaced: the old id's run answers 404 once.
    Mock::given(method("POST"))
        .and(path("/key/api/v1/pipeline/run"))
        .respond_with(ResponseTemplate::new(404))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&fakes.fusionbrain)
        .await;
    images
        .generate(&request(Format::Web), &|_| {})
        .await
        .expect("second");
    assert_eq!(fake.runs.lock().unwrap().len(), 2);
    let lists = fakes
        .fusionbrain
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/key/api/v1/pipelines")
        .count();
    assert_eq!(lists, 2);
}

#[tokio::test]
async fn hostile_or_broken_pictures_are_refused_without_panicking() {
    // A PNG header claiming 100 000 × 100 000 pixels.
    let mut huge = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    huge.extend_from_slice(&100_000u32.to_be_bytes());
    huge.extend_from_slice(&100_000u32.to_be_bytes());
    huge.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    let answers = [
        done(json!({"files": [b64(&huge)], "censored": false})),
        done(json!({"files": [b64(b"GIF89a not an image we take")], "censored": false})),
        done(json!({"files": ["%%% not base64 %%%"], "censored": false})),
        done(json!({"files": [b64(&jpeg(64, 64)[..200])], "censored": false})),
        done(json!({"files": [42], "censored": false})),
        ResponseTemplate::new(200).set_body_string("{\"status\": \"DONE\", \"result\": "),
        // An answer over the cap is not read to its end.
        ResponseTemplate::new(200).set_body_string(format!(
            "{{\"status\":\"DONE\",\"result\":{{\"files\":[\"{}\"]}}}}",
            "A".repeat(40 << 20)
        )),
    ];
    for (i, answer) in answers.into_iter().enumerate() {
        let fakes = Fakes::start().await;
        kandinsky_answering(&fakes.fusionbrain, Sequence::new(vec![answer]), 1).await;
        let (images, _) = fakes.images(&[("EASY_WRITER_IMAGE_PROVIDER_ORDER", "kandinsky")]);
        let error = images
            .generate(&request(Format::Web), &|_| {})
            .await
            .expect_err("refused");
        assert_eq!(error.code(), "providers_unavailable", "answer {i}");
    }
}

#[tokio::test]
async fn secrets_never_reach_error_messages() {
    let fakes = Fakes::start().await;
    Mock::given(method("GET"))
        .and(path("/key/api/v1/pipelines"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(
                json!({"status": 401, "error": "Unauthorized", "message": "bad key"}),
            ),
        )
        .mount(&fakes.fusionbrain)
        .await;
    Mock::given(method("POST"))
        .and(path("/foundationModels/v1/imageGenerationAsync"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": {"grpcCode": 16, "httpCode": 401, "message": "Unauthenticated"}}),
        ))
        .mount(&fakes.yandex)
        .await;
    let (images, _) = fakes.images(&[]);
    let error = images
        .generate(&request(Format::Web), &|_| {})
        .await
        .expect_err("nobody signs in");
    assert_eq!(error.code(), "providers_unavailable");
    let text = format!("{error} {error:?}");
    for secret in [FB_KEY, FB_SECRET, YC_KEY] {
        assert!(!text.contains(secret), "{text}");
    }
}

#[tokio::test]
async fn check_makes_one_cheap_call_per_provider() {
    let fakes = Fakes::start().await;
    mount_pipelines(&fakes.fusionbrain).await;
    Mock::given(method("GET"))
        .and(path("/operations/easy-writer-check"))
        .and(header(
            "authorization",
            format!("Api-Key {YC_KEY}").as_str(),
        ))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(json!({"code": 5, "message": "Operation not found"})),
        )
        .expect(1)
        .mount(&fakes.yandex)
        .await;
    let (images, _) = fakes.images(&[]);
    let results = images.check().await;
    assert_eq!(
        results,
        [
            (ProviderId::Kandinsky, Ok(())),
            (ProviderId::YandexArt, Ok(()))
        ]
    );
    assert!(
        fakes
            .yandex
            .received_requests()
            .await
            .unwrap()
            .iter()
            .all(|r| r.method.as_str() == "GET"),
        "the check draws nothing"
    );

    let broken = Fakes::start().await;
    Mock::given(method("GET"))
        .and(path("/key/api/v1/pipelines"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&broken.fusionbrain)
        .await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"code": 16, "message": "Unauthenticated"})),
        )
        .mount(&broken.yandex)
        .await;
    let (images, _) = broken.images(&[]);
    for (id, result) in images.check().await {
        let reason = result.expect_err("credentials refused");
        assert!(reason.contains("authentication"), "{id}: {reason}");
        assert!(!reason.contains(FB_KEY) && !reason.contains(YC_KEY));
    }
}

#[tokio::test]
async fn built_in_upscale_is_exact() {
    let fakes = Fakes::start().await;
    let (images, _) = fakes.images(&[]);
    for (scale, source) in [(2, png(300, 200)), (4, jpeg(128, 96))] {
        let seen = Seen::default();
        let upscaled = images
            .upscale(&source, scale, &seen.sink())
            .await
            .expect("upscaled");
        let expected = if scale == 2 { (600, 400) } else { (512, 384) };
        assert_eq!((upscaled.width, upscaled.height), expected);
        assert_eq!(png_size(&upscaled.bytes), expected);
        seen.assert_sound();
    }
    for scale in [0, 1, 3, 8] {
        let error = images
            .upscale(&png(10, 10), scale, &|_| {})
            .await
            .expect_err("bad scale");
        assert_eq!(error.code(), "providers_unavailable");
    }
    let error = images
        .upscale(b"not an image", 2, &|_| {})
        .await
        .expect_err("garbage");
    assert_eq!(error.code(), "providers_unavailable");
}

/// The upscale service: checks the multipart request and answers `answer(scale)`.
struct Upscaler<F: Fn(u32) -> ResponseTemplate + Send + Sync> {
    answer: F,
    scales: Arc<Mutex<Vec<u32>>>,
}

impl<F: Fn(u32) -> ResponseTemplate + Send + Sync> Respond for Upscaler<F> {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let parts = multipart(request);
        let image = part(&parts, "image");
        assert_eq!(image.content_type.as_deref(), Some("image/png"));
        assert!(image::load_from_memory(&image.body).is_ok());
        assert_eq!(part(&parts, "format").body, b"png");
        let scale: u32 = String::from_utf8_lossy(&part(&parts, "scale").body)
            .parse()
            .expect("scale");
        self.scales.lock().unwrap().push(scale);
        (self.answer)(scale)
    }
}

async fn mount_upscaler(
    server: &MockServer,
    answer: impl Fn(u32) -> ResponseTemplate + Send + Sync + 'static,
) -> Arc<Mutex<Vec<u32>>> {
    let scales = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path("/upscale"))
        .and(header("authorization", "Bearer up-key"))
        .respond_with(Upscaler {
            answer,
            scales: scales.clone(),
        })
        .mount(server)
        .await;
    scales
}

fn image_answer(bytes: Vec<u8>) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(bytes, "image/png")
}

#[tokio::test]
async fn the_upscale_service_is_used_and_its_answer_made_exact() {
    let fakes = Fakes::start().await;
    // An honest service for 2×; one that always does a fixed 4× (like Stability's fast
    // upscaler), so a 2× request comes back too large and is resized.
    let scales = mount_upscaler(&fakes.upscale, |scale| {
        let _ = scale;
        image_answer(png(400, 400))
    })
    .await;
    let (images, metrics) = fakes.images(&[
        ("UPSCALE_API_URL", &fakes.upscale_url()),
        ("UPSCALE_API_KEY", "up-key"),
    ]);
    let upscaled = images
        .upscale(&png(100, 100), 2, &|_| {})
        .await
        .expect("upscaled");
    assert_eq!(png_size(&upscaled.bytes), (200, 200));
    let upscaled = images
        .upscale(&png(100, 100), 4, &|_| {})
        .await
        .expect("upscaled");
    assert_eq!(png_size(&upscaled.bytes), (400, 400));
    assert_eq!(*scales.lock().unwrap(), [2, 4]);
    assert!(
        metrics
            .render()
            .contains(r#"easy_writer_image_requests_total{provider="upscale",outcome="ok"} 2"#)
    );
}

#[tokio::test]
async fn banner_and_print_use_the_upscale_service() {
    let fakes = Fakes::start().await;
    Kandinsky::mount(&fakes.fusionbrain, &[]).await;
    let scales = mount_upscaler(&fakes.upscale, |scale| {
        let (w, h) = if scale == 2 {
            (2048, 1024)
        } else {
            (2048, 2048)
        };
        image_answer(jpeg(w, h))
    })
    .await;
    let (images, _) = fakes.images(&[
        ("UPSCALE_API_URL", &fakes.upscale_url()),
        ("UPSCALE_API_KEY", "up-key"),
    ]);
    for format in [Format::Banner, Format::Print] {
        let picture = images
            .generate(&request(format), &|_| {})
            .await
            .expect("drawn");
        assert_eq!(png_size(&picture.png), format.size());
    }
    assert_eq!(*scales.lock().unwrap(), [2, 4]);
}

#[tokio::test]
async fn the_upscale_service_may_answer_with_a_job_to_poll() {
    let fakes = Fakes::start().await;
    let status_url = format!("{}/jobs/u-1", fakes.upscale.uri());
    mount_upscaler(&fakes.upscale, move |_| {
        ResponseTemplate::new(202).set_body_json(json!({"id": "u-1", "status_url": status_url}))
    })
    .await;
    Mock::given(method("GET"))
        .and(path("/jobs/u-1"))
        .and(header("authorization", "Bearer up-key"))
        .respond_with(Sequence::new(vec![
            ResponseTemplate::new(200).set_body_json(json!({"status": "processing"})),
            image_answer(png(64, 64)),
        ]))
        .expect(2)
        .mount(&fakes.upscale)
        .await;
    let (images, _) = fakes.images(&[
        ("UPSCALE_API_URL", &fakes.upscale_url()),
        ("UPSCALE_API_KEY", "up-key"),
    ]);
    let seen = Seen::default();
    let upscaled = images
        .upscale(&png(32, 32), 2, &seen.sink())
        .await
        .expect("upscaled");
    assert_eq!(png_size(&upscaled.bytes), (64, 64));
    seen.assert_sound();
}

/// A polled job that reports failure hands over to the built-in upscaler, and a status URL on
/// another origin than `UPSCALE_API_URL` is polled without the key.
#[tokio::test]
async fn a_failed_upscale_job_falls_back_and_a_foreign_status_url_never_gets_the_key() {
    let fakes = Fakes::start().await;
    let elsewhere = MockServer::start().await;
    let status_url = format!("{}/jobs/u-2", elsewhere.uri());
    mount_upscaler(&fakes.upscale, move |_| {
        ResponseTemplate::new(202).set_body_json(json!({"id": "u-2", "status_url": status_url}))
    })
    .await;
    Mock::given(method("GET"))
        .and(path("/jobs/u-2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"status": "failed", "error": {"message": "out of memory"}})),
        )
        .mount(&elsewhere)
        .await;
    let (images, _) = fakes.images(&[
        ("UPSCALE_API_URL", &fakes.upscale_url()),
        ("UPSCALE_API_KEY", "up-key"),
    ]);
    let upscaled = images
        .upscale(&png(50, 40), 2, &|_| {})
        .await
        .expect("the built-in upscaler's picture");
    assert_eq!(png_size(&upscaled.bytes), (100, 80));
    let polls = elsewhere.received_requests().await.unwrap();
    assert!(!polls.is_empty(), "the job was polled");
    assert!(
        polls
            .iter()
            .all(|r| !r.headers.contains_key("authorization")),
        "the key went to another origin"
    );
}

#[tokio::test]
async fn a_failing_upscale_service_is_retried_then_the_built_in_one_takes_over() {
    let fakes = Fakes::start().await;
    Mock::given(method("POST"))
        .and(path("/upscale"))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({"error": {"code": "oops", "message": "model crashed"}})),
        )
        .expect(3)
        .mount(&fakes.upscale)
        .await;
    let (images, _) = fakes.images(&[("UPSCALE_API_URL", &fakes.upscale_url())]);
    let upscaled = images
        .upscale(&png(50, 40), 4, &|_| {})
        .await
        .expect("upscaled");
    assert_eq!(png_size(&upscaled.bytes), (200, 160));

    // A 400 is not retried.
    let fakes = Fakes::start().await;
    Mock::given(method("POST"))
        .and(path("/upscale"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(json!({"error": {"code": "bad", "message": "no"}})),
        )
        .expect(1)
        .mount(&fakes.upscale)
        .await;
    let (images, _) = fakes.images(&[("UPSCALE_API_URL", &fakes.upscale_url())]);
    let upscaled = images
        .upscale(&png(50, 40), 2, &|_| {})
        .await
        .expect("upscaled");
    assert_eq!(png_size(&upscaled.bytes), (100, 80));
}
