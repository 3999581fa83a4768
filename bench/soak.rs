//! The soak (issue 16): the real release binary, as a child process, against fake upstreams on
//! loopback, under mixed traffic from a fixed number of tasks for N minutes. Every 10 s one line
//! (and a CSV row) of the server's RSS and open files, the window's requests, latency and
//! errors; at the end SIGTERM (the server must exit 0) and an audit of the ledger in the
//! database file, read only once the server is gone. Exits non-zero on any error.
//!
//!     bench/soak.sh [minutes]      # builds, then runs target/release/examples/soak <minutes>
//!
//! `SOAK_CONCURRENCY` (default 24) sets the number of tasks, `SOAK_CSV` the CSV path (default
//! `<data dir>.csv`). A child process rather than `server::serve` in this process: RSS and
//! file descriptors are then the server's alone, and shutdown is the one operators get.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[path = "tbank_notice.rs"]
mod tbank_notice;

const TERMINAL: &str = "1700000000000SOAK";
const TBANK_PASSWORD: &str = "SoakPassword_123";
const PASSWORD: &str = "soak password 123";
/// The sampling interval of the CSV and the progress lines.
const WINDOW: Duration = Duration::from_secs(10);
/// A job (standard run, picture) that has not ended by then counts as an error.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// Access tokens live 15 min; a task refreshes well before.
const TOKEN_AGE: Duration = Duration::from_secs(600);
/// Below this a task tops its user up first, so that no run meets a legitimate `402`.
const LOW_BALANCE: i64 = 60;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let minutes: f64 = std::env::args()
        .nth(1)
        .map(|m| m.parse())
        .transpose()?
        .unwrap_or(10.0);
    let concurrency: usize = std::env::var("SOAK_CONCURRENCY")
        .ok()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(24);
    let dir = std::env::temp_dir().join(format!("easy-writer-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let csv_path = std::env::var_os("SOAK_CSV")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.with_extension("csv"));
    let fakes = start_fakes().await?;
    let mut server = Server::start(&dir, fakes).await?;
    println!(
        "soak: {minutes} min, {concurrency} tasks, server pid {} on {}, data {}, csv {}",
        server.pid(),
        server.addr,
        dir.display(),
        csv_path.display()
    );

    let stats = Arc::new(Stats::default());
    let ctx = Arc::new(Ctx {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?,
        addr: server.addr,
        stats: stats.clone(),
        deadline: Instant::now() + Duration::from_secs_f64(minutes * 60.0),
        confirmed: AtomicU64::new(0),
    });
    let mut csv = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&csv_path)?;
    if csv.metadata()?.len() == 0 {
        writeln!(
            csv,
            "elapsed_s,rss_mb,open_fds,requests,p50_ms,p99_ms,errors,errors_total"
        )?;
    }
    let started = Instant::now();
    let mut samples = vec![sample(&server, &stats, started, &mut csv)?];
    let workers: Vec<_> = (0..concurrency)
        .map(|n| tokio::spawn(worker(ctx.clone(), n)))
        .collect();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + WINDOW, WINDOW);
    let all_done = futures_util::future::join_all(workers);
    tokio::pin!(all_done);
    loop {
        tokio::select! {
            _ = ticks.tick() => samples.push(sample(&server, &stats, started, &mut csv)?),
            results = &mut all_done => {
                for result in results {
                    if let Err(e) = result {
                        stats.error("task", format!("a load task panicked: {e}"));
                    }
                }
                break;
            }
        }
    }
    samples.push(sample(&server, &stats, started, &mut csv)?);

    let exit = server.stop().await;
    let ledger = audit(
        &dir.join("easy-writer.db"),
        ctx.confirmed.load(Ordering::Relaxed),
    );
    let log_errors = count_log_errors(&dir.join("server.log"));
    let ok = summary(&stats, &samples, &exit, &ledger, log_errors, &dir);
    if ok {
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    } else {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Fake upstreams: one axum app on loopback standing in for OpenAI, FusionBrain and T-Bank, so
// that every provider call the server makes is answered quickly and never fails.

#[derive(Clone, Default)]
struct Fakes {
    jobs: Arc<AtomicU64>,
    payments: Arc<AtomicU64>,
    pictures: Arc<Mutex<Pictures>>,
}

/// Base64 JPEGs by size: drawn once, since every picture of a format looks the same.
type Pictures = HashMap<(u32, u32), Arc<str>>;

const ANSWER: &str = r#"{"id":"chatcmpl-soak","object":"chat.completion","created":1,"model":"soak","choices":[{"index":0,"message":{"role":"assistant","content":"{\"text\":\"Исправленный текст без ошибок.\",\"edits\":[]}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":6,"total_tokens":46}}"#;

async fn start_fakes() -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/key/api/v1/pipelines", get(pipelines))
        .route("/key/api/v1/pipeline/run", post(run_picture))
        .route("/key/api/v1/pipeline/status/{uuid}", get(picture_status))
        .route("/tbank/Init", post(tbank_init))
        .layer(DefaultBodyLimit::disable())
        .with_state(Fakes::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// Whole answers for quick runs; for streamed ones (standard runs) a few deltas 20 ms apart,
/// so that jobs last long enough to be watched mid-way.
async fn chat(body: Bytes) -> Response {
    let streaming = serde_json::from_slice::<Value>(&body).is_ok_and(|r| r["stream"] == true);
    if !streaming {
        return ([(header::CONTENT_TYPE, "application/json")], ANSWER).into_response();
    }
    let stream = async_stream::stream! {
        for word in ["Новый ", "вариант ", "текста ", "без ", "ошибок."] {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let chunk = json!({"model": "soak", "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}]});
            yield Ok::<_, Infallible>(Bytes::from(format!("data: {chunk}\n\n")));
        }
        let last = json!({"model": "soak", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45}});
        yield Ok(Bytes::from(format!("data: {last}\n\ndata: [DONE]\n\n")));
    };
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn pipelines() -> Response {
    axum::Json(
        json!([{"id": "pipeline-soak", "name": "Kandinsky", "version": 3.1,
        "status": "ACTIVE", "type": "TEXT2IMAGE"}]),
    )
    .into_response()
}

/// Takes the multipart run and answers a job id that carries the size asked for, so the
/// status route needs no memory of runs (a fake that remembers would grow over the soak).
async fn run_picture(State(fakes): State<Fakes>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    let width = number_after(&text, "width").unwrap_or(1024);
    let height = number_after(&text, "height").unwrap_or(1024);
    let n = fakes.jobs.fetch_add(1, Ordering::Relaxed);
    let uuid = format!("soak-{n}-{width}-{height}");
    (
        StatusCode::CREATED,
        axum::Json(json!({"uuid": uuid, "status": "INITIAL", "status_time": 0})),
    )
        .into_response()
}

async fn picture_status(State(fakes): State<Fakes>, UrlPath(uuid): UrlPath<String>) -> Response {
    let parts: Vec<&str> = uuid.split('-').collect();
    let size = match parts[..] {
        ["soak", _, width, height] => width.parse().ok().zip(height.parse().ok()),
        _ => None,
    };
    let Some((width, height)) = size else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let file = fakes
        .pictures
        .lock()
        .expect("pictures")
        .entry((width, height))
        .or_insert_with(|| jpeg_base64(width, height))
        .clone();
    axum::Json(json!({"uuid": uuid, "status": "DONE",
        "result": {"files": [&*file], "censored": false}}))
    .into_response()
}

fn jpeg_base64(width: u32, height: u32) -> Arc<str> {
    let picture = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 96])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(picture)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode jpeg");
    base64::engine::general_purpose::STANDARD
        .encode(out.into_inner())
        .into()
}

/// The number after `"key":` in `text` (the run's params JSON inside the multipart body).
fn number_after(text: &str, key: &str) -> Option<u32> {
    let rest = &text[text.find(&format!("\"{key}\""))? + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// T-Bank `Init`: a new `PaymentId` for every order, echoing its amount.
async fn tbank_init(State(fakes): State<Fakes>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = 4_000_000_000 + fakes.payments.fetch_add(1, Ordering::Relaxed);
    axum::Json(json!({
        "TerminalKey": TERMINAL, "Amount": body["Amount"], "OrderId": body["OrderId"],
        "Success": true, "Status": "NEW", "PaymentId": id.to_string(), "ErrorCode": "0",
        "PaymentURL": format!("https://securepayments.tinkoff.ru/{id}"),
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// The server under test.

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// `target/release/easy-writer serve` beside this example, with only the environment set
    /// here (and an empty config file, so the repository's `easy-writer.toml` stays out).
    async fn start(dir: &Path, fakes: SocketAddr) -> anyhow::Result<Server> {
        let bin = std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|release| release.join("easy-writer"))
            .ok_or_else(|| anyhow::anyhow!("no directory above the example"))?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = dir.join("soak.toml");
        std::fs::write(&config, "")?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let fake = format!("http://{fakes}");
        let unlimited = "1000000";
        let env = [
            ("EASY_WRITER_DATA_DIR", dir.to_string_lossy().into_owned()),
            ("EASY_WRITER_CONFIG", config.to_string_lossy().into_owned()),
            ("EASY_WRITER_PUBLIC_URL", format!("http://{addr}")),
            ("EASY_WRITER_COOKIE_SECURE", "false".into()),
            // Throttles are not under test: every request comes from 127.0.0.1.
            ("EASY_WRITER_REGISTER_MAX_PER_IP", unlimited.into()),
            ("EASY_WRITER_LOGIN_MAX_FAILURES", unlimited.into()),
            ("EASY_WRITER_LOGIN_MAX_FAILURES_PER_IP", unlimited.into()),
            ("EASY_WRITER_PROVIDER_ORDER", "openai".into()),
            ("OPENAI_API_KEY", "sk-soak".into()),
            ("OPENAI_BASE_URL", format!("{fake}/v1")),
            ("FUSIONBRAIN_API_KEY", "fb-soak".into()),
            ("FUSIONBRAIN_SECRET_KEY", "fb-soak-secret".into()),
            ("FUSIONBRAIN_BASE_URL", fake.clone()),
            ("FUSIONBRAIN_POLL_MS", "50".into()),
            ("EASY_WRITER_IMAGE_PROVIDER_ORDER", "kandinsky".into()),
            ("TBANK_TERMINAL_KEY", TERMINAL.into()),
            ("TBANK_PASSWORD", TBANK_PASSWORD.into()),
            ("TBANK_BASE_URL", format!("{fake}/tbank")),
            ("RUST_LOG", "warn".into()),
        ];
        let child = Command::new(&bin)
            .args(["serve", "--bind", &addr.to_string()])
            .env_clear()
            .envs(env)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("{}: {e}", bin.display()))?;
        let mut server = Server { child, addr };
        let http = reqwest::Client::new();
        for _ in 0..600 {
            if let Ok(r) = http.get(format!("http://{addr}/health")).send().await
                && r.status() == 200
            {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                anyhow::bail!(
                    "the server exited at start ({status}); see {}",
                    dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = server.child.kill();
        anyhow::bail!("the server never answered /health")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then up to a minute for the exit (running jobs get 20 s by default).
    async fn stop(&mut self) -> Result<(), String> {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let asked = Instant::now();
        while asked.elapsed() < Duration::from_secs(60) {
            match self.child.try_wait() {
                Ok(Some(status)) if status.code() == Some(0) => return Ok(()),
                Ok(Some(status)) => return Err(format!("exited with {status} after SIGTERM")),
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(e.to_string()),
            }
        }
        let _ = self.child.kill();
        Err("still running a minute after SIGTERM (killed)".into())
    }
}

// ---------------------------------------------------------------------------------------------
// Counting.

#[derive(Default)]
struct Stats(Mutex<Counts>);

#[derive(Default)]
struct Counts {
    /// HTTP latencies of the current window, µs.
    window: Vec<u32>,
    window_requests: u64,
    window_errors: u64,
    errors: u64,
    kinds: BTreeMap<&'static str, Kind>,
    /// Error messages by kind and text (ids cut out so that alike failures group).
    messages: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Kind {
    requests: u64,
    errors: u64,
    /// Latencies, µs (HTTP only; a WebSocket watch lasts as long as its job).
    latencies: Vec<u32>,
}

impl Stats {
    fn request(&self, kind: &'static str, latency: Option<Duration>) {
        let mut c = self.0.lock().expect("stats");
        c.window_requests += 1;
        let k = c.kinds.entry(kind).or_default();
        k.requests += 1;
        if let Some(latency) = latency {
            let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
            k.latencies.push(micros);
            c.window.push(micros);
        }
    }

    fn error(&self, kind: &'static str, message: String) {
        let mut c = self.0.lock().expect("stats");
        c.window_errors += 1;
        c.errors += 1;
        c.kinds.entry(kind).or_default().errors += 1;
        if c.errors <= 20 {
            eprintln!("error: {kind}: {message}");
        }
        let key = format!("{kind}: {}", generic(&message));
        if c.messages.len() < 100 || c.messages.contains_key(&key) {
            *c.messages.entry(key).or_default() += 1;
        }
    }

    /// The window's request count, p50 and p99 (ms) and errors; starts the next window.
    fn take_window(&self) -> (u64, f64, f64, u64, u64) {
        let mut c = self.0.lock().expect("stats");
        let mut window = std::mem::take(&mut c.window);
        window.sort_unstable();
        let requests = std::mem::take(&mut c.window_requests);
        let errors = std::mem::take(&mut c.window_errors);
        (
            requests,
            percentile(&window, 0.50),
            percentile(&window, 0.99),
            errors,
            c.errors,
        )
    }
}

/// `message` with digits and hex runs folded, so one failure repeated with different ids
/// counts as one line in the summary.
fn generic(message: &str) -> String {
    let mut out = String::new();
    for word in message.chars().take(200).collect::<String>().split(' ') {
        if word.chars().filter(char::is_ascii_digit).count() >= 3 {
            out.push_str("<id> ");
        } else {
            out.push_str(word);
            out.push(' ');
        }
    }
    out.trim_end().to_owned()
}

/// ms at quantile `q` of sorted µs values.
fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

struct Sample {
    rss_mb: f64,
    fds: usize,
}

/// One line on stdout and one CSV row: the server's memory and files, the window's traffic.
fn sample(
    server: &Server,
    stats: &Stats,
    started: Instant,
    csv: &mut std::fs::File,
) -> anyhow::Result<Sample> {
    let pid = server.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
    let rss_kb: Option<f64> = status.ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count);
    let (Some(rss_kb), Ok(fds)) = (rss_kb, fds) else {
        stats.error(
            "server",
            "the server process is gone (no /proc entry)".into(),
        );
        anyhow::bail!("the server process {pid} is gone");
    };
    let (requests, p50, p99, errors, total) = stats.take_window();
    let elapsed = started.elapsed().as_secs();
    let rss_mb = rss_kb / 1024.0;
    println!(
        "t={elapsed:>4}s rss {rss_mb:>6.1} MB fds {fds:>4} requests {requests:>6} \
         p50 {p50:>7.1} ms p99 {p99:>7.1} ms errors {errors} (total {total})"
    );
    writeln!(
        csv,
        "{elapsed},{rss_mb:.1},{fds},{requests},{p50:.1},{p99:.1},{errors},{total}"
    )?;
    Ok(Sample { rss_mb, fds })
}

// ---------------------------------------------------------------------------------------------
// Traffic. Each task owns one user at a time (a new one at each sign-up), so it knows what the
// balance must be and checks it whenever it asks.

struct Ctx {
    http: reqwest::Client,
    addr: SocketAddr,
    stats: Arc<Stats>,
    deadline: Instant,
    /// Payments this soak confirmed through the webhook: each must be exactly one topup row.
    confirmed: AtomicU64,
}

struct User {
    email: String,
    access: String,
    /// The `refresh_token` cookie's value; `None` after a refused refresh (log in again).
    refresh: Option<String>,
    issued: Instant,
    /// What the balance must be, by this task's own arithmetic.
    balance: i64,
}

#[derive(Clone, Copy)]
enum Action {
    SignUp,
    Login,
    Refresh,
    Balance,
    Health,
    Quick,
    Standard,
    Picture,
    Payment,
}

/// Relative frequencies (of 100) when a task is free to choose.
const MIX: [(Action, u32); 9] = [
    (Action::SignUp, 3),
    (Action::Login, 4),
    (Action::Refresh, 8),
    (Action::Balance, 18),
    (Action::Health, 10),
    (Action::Quick, 30),
    (Action::Standard, 13),
    (Action::Picture, 7),
    (Action::Payment, 7),
];

/// Quick tools, each with an input its schema accepts.
const QUICK: [(&str, &str, &str); 4] = [
    (
        "spell_check",
        "text",
        "Превет, как дила? Встречаемся завтро в десять.",
    ),
    (
        "simplify",
        "text",
        "Имплементация данного функционала представляется нецелесообразной.",
    ),
    (
        "summarize",
        "text",
        "Проект завершён в срок. Команда выполнила все задачи квартала.",
    ),
    ("slogan", "product", "Кофейня у дома"),
];

/// xorshift64*: enough to mix actions, and reproducible per task.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

async fn worker(ctx: Arc<Ctx>, n: usize) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (n as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED69));
    let mut user: Option<User> = None;
    let mut signups = 0;
    while Instant::now() < ctx.deadline {
        let action = match &user {
            None => Action::SignUp,
            Some(u) if u.balance < LOW_BALANCE => Action::Payment,
            Some(u) if u.refresh.is_none() => Action::Login,
            Some(u) if u.issued.elapsed() > TOKEN_AGE => Action::Refresh,
            Some(_) => {
                let mut roll = rng.below(100) as u32;
                MIX.iter()
                    .find(|(_, weight)| {
                        let hit = roll < *weight;
                        roll = roll.saturating_sub(*weight);
                        hit
                    })
                    .map_or(Action::Health, |(action, _)| *action)
            }
        };
        match (action, user.as_mut()) {
            (Action::SignUp, _) => {
                signups += 1;
                let email = format!("soak-{}-{n}-{signups}@example.com", std::process::id());
                match ctx.sign_up(&email).await {
                    Some(fresh) => user = Some(fresh),
                    // Nothing to do without a user: do not spin on a failing sign-up.
                    None if user.is_none() => tokio::time::sleep(Duration::from_secs(1)).await,
                    None => {}
                }
            }
            (Action::Health, _) => ctx.health().await,
            (_, None) => {}
            (Action::Login, Some(u)) => ctx.login(u).await,
            (Action::Refresh, Some(u)) => ctx.refresh(u).await,
            (Action::Balance, Some(u)) => ctx.balance(u).await,
            (Action::Quick, Some(u)) => {
                let (tool, field, text) = QUICK[rng.below(QUICK.len() as u64) as usize];
                ctx.quick(u, tool, json!({ field: text })).await;
            }
            (Action::Standard, Some(u)) => ctx.standard(u).await,
            (Action::Picture, Some(u)) => ctx.picture(u).await,
            (Action::Payment, Some(u)) => {
                let deliveries = if rng.below(3) == 0 { 2 } else { 1 };
                ctx.payment(u, 100 + rng.below(200) as i64, deliveries)
                    .await;
            }
        }
    }
}

/// A response read whole.
struct Answer {
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn refresh_cookie(&self) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.split(';').next()?.strip_prefix("refresh_token="))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends, reads the whole body, and counts: any status but `expect` or a transport error
    /// is an error of `kind`.
    async fn send(
        &self,
        kind: &'static str,
        request: reqwest::RequestBuilder,
        expect: u16,
    ) -> Option<Answer> {
        let started = Instant::now();
        let result = async {
            let response = request.send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        }
        .await;
        self.stats.request(kind, Some(started.elapsed()));
        match result {
            Ok((status, headers, body)) if status.as_u16() == expect => {
                Some(Answer { headers, body })
            }
            Ok((status, _, body)) => {
                let body = String::from_utf8_lossy(&body);
                let body: String = body.chars().take(300).collect();
                self.stats.error(kind, format!("{status}: {body}"));
                None
            }
            Err(e) => {
                self.stats.error(kind, format!("transport: {e}"));
                None
            }
        }
    }

    fn check(&self, kind: &'static str, ok: bool, what: impl FnOnce() -> String) -> bool {
        if !ok {
            self.stats.error(kind, what());
        }
        ok
    }

    async fn sign_up(&self, email: &str) -> Option<User> {
        let body = json!({"email": email, "password": PASSWORD, "name": "Soak"});
        let request = self
            .http
            .post(self.url("/api/v1/auth/register"))
            .json(&body);
        let answer = self.send("register", request, 201).await?;
        let access = answer.json()["access_token"].as_str()?.to_owned();
        let refresh = answer.refresh_cookie();
        self.check("register", refresh.is_some(), || "no refresh cookie".into());
        Some(User {
            email: email.to_owned(),
            access,
            refresh,
            issued: Instant::now(),
            balance: 0,
        })
    }

    async fn login(&self, user: &mut User) {
        let body = json!({"email": user.email, "password": PASSWORD});
        let request = self.http.post(self.url("/api/v1/auth/login")).json(&body);
        if let Some(answer) = self.send("login", request, 200).await
            && let Some(access) = answer.json()["access_token"].as_str()
        {
            user.access = access.to_owned();
            user.issued = Instant::now();
            user.refresh = answer.refresh_cookie();
            self.check("login", user.refresh.is_some(), || {
                "no refresh cookie".into()
            });
        }
    }

    /// The browser's refresh: the cookie alone, rotated on every use.
    async fn refresh(&self, user: &mut User) {
        let Some(cookie) = user.refresh.take() else {
            return;
        };
        let request = self
            .http
            .post(self.url("/api/v1/auth/refresh"))
            .header(header::COOKIE, format!("refresh_token={cookie}"));
        if let Some(answer) = self.send("refresh", request, 200).await
            && let Some(access) = answer.json()["access_token"].as_str()
        {
            user.access = access.to_owned();
            user.issued = Instant::now();
            user.refresh = answer.refresh_cookie();
            self.check("refresh", user.refresh.is_some(), || {
                "no rotated cookie".into()
            });
        }
    }

    async fn health(&self) {
        let request = self.http.get(self.url("/health"));
        if let Some(answer) = self.send("health", request, 200).await {
            let body = answer.json();
            self.check("health", body["status"] == "ok", || format!("{body}"));
        }
    }

    async fn balance(&self, user: &User) {
        let request = self
            .http
            .get(self.url("/api/v1/user/balance"))
            .bearer_auth(&user.access);
        if let Some(answer) = self.send("balance", request, 200).await {
            let body = answer.json();
            self.check("balance", body["balance"] == user.balance, || {
                format!(
                    "balance {} where {} was expected",
                    body["balance"], user.balance
                )
            });
        }
    }

    async fn quick(&self, user: &mut User, tool: &str, input: Value) {
        let request = self
            .http
            .post(self.url(&format!("/api/v1/tools/{tool}/execute")))
            .bearer_auth(&user.access)
            .json(&json!({"input": input, "mode": "quick"}));
        let Some(answer) = self.send("quick", request, 200).await else {
            return;
        };
        let session = answer.json();
        if self.check("quick", session["status"] == "completed", || {
            format!("session not completed: {session}")
        }) {
            user.balance -= session["cost_raits"].as_i64().unwrap_or(0);
        }
    }

    /// A standard run: `202`, then its events over the WebSocket to the final one, then the
    /// session as the history shows it.
    async fn standard(&self, user: &mut User) {
        let request = self
            .http
            .post(self.url("/api/v1/tools/paraphrase/execute"))
            .bearer_auth(&user.access)
            .json(
                &json!({"input": {"text": "Мы рады сообщить, что проект завершён в срок."},
                "mode": "standard"}),
            );
        let Some(answer) = self.send("standard", request, 202).await else {
            return;
        };
        let Some(id) = answer.json()["session_id"].as_str().map(str::to_owned) else {
            self.stats.error("standard", "no session_id".into());
            return;
        };
        let watched = self
            .watch("ws_generation", &format!("/ws/generation/{id}"), user)
            .await;
        let path = format!("/api/v1/generation/sessions/{id}");
        let Some(session) = self.settled("session", &path, user).await else {
            return;
        };
        // A completed run costs its price whatever the watcher saw; a failed one is refunded.
        if session["status"] == "completed" {
            user.balance -= session["cost_raits"].as_i64().unwrap_or(0);
        }
        if watched.is_some() {
            self.check("session", session["status"] == "completed", || {
                format!("watched to completion but {session}")
            });
        }
    }

    /// The job at `path` once it has ended, polled when still running (a watcher that failed
    /// says nothing of the job, and the balance depends on its outcome).
    async fn settled(&self, kind: &'static str, path: &str, user: &User) -> Option<Value> {
        let polled = Instant::now();
        loop {
            let request = self.http.get(self.url(path)).bearer_auth(&user.access);
            let job = self.send(kind, request, 200).await?.json();
            let running = matches!(
                job["status"].as_str(),
                Some("pending" | "in_progress" | "processing")
            );
            if !running {
                return Some(job);
            }
            if polled.elapsed() > JOB_TIMEOUT {
                self.stats.error(kind, format!("never ended: {job}"));
                return None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A picture: `202`, its events to the final one, then the file by its signed link.
    async fn picture(&self, user: &mut User) {
        let request = self
            .http
            .post(self.url("/api/v1/images/generate"))
            .bearer_auth(&user.access)
            .json(&json!({"prompt": "Маяк на скале в шторм", "format": "messenger"}));
        let Some(answer) = self.send("image", request, 202).await else {
            return;
        };
        let image = answer.json();
        let (Some(id), Some(cost)) = (image["id"].as_str(), image["cost_raits"].as_i64()) else {
            self.stats.error("image", format!("no id or cost: {image}"));
            return;
        };
        let Some(done) = self
            .watch("ws_image", &format!("/ws/image/{id}"), user)
            .await
        else {
            // Failed pictures are refunded; learn the outcome from the image itself.
            let path = format!("/api/v1/images/{id}");
            if let Some(image) = self.settled("image_get", &path, user).await
                && image["status"] == "completed"
            {
                user.balance -= cost;
            }
            return;
        };
        user.balance -= cost;
        let Some(url) = done["url"].as_str() else {
            self.stats
                .error("ws_image", format!("completed without a url: {done}"));
            return;
        };
        if let Some(file) = self.send("image_file", self.http.get(url), 200).await {
            let png = file
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|t| t == "image/png");
            self.check(
                "image_file",
                png && file.body.starts_with(b"\x89PNG"),
                || format!("not a PNG: {:?}", file.headers.get(header::CONTENT_TYPE)),
            );
        }
    }

    /// A T-Bank top-up: create, the signed `CONFIRMED` notification (a third of the time
    /// delivered twice at once, as a provider retrying does), then the payment's status.
    async fn payment(&self, user: &mut User, amount_rub: i64, deliveries: usize) {
        let request = self
            .http
            .post(self.url("/api/v1/payments/create"))
            .bearer_auth(&user.access)
            .json(&json!({"amount_rub": amount_rub, "provider": "tbank"}));
        let Some(answer) = self.send("payment_create", request, 201).await else {
            return;
        };
        let created = answer.json();
        let payment_id = created["payment_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let raits = created["amount_raits"].as_i64().unwrap_or(0);
        let tbank_id: Option<u64> = created["payment_url"]
            .as_str()
            .and_then(|u| u.rsplit('/').next()?.parse().ok());
        let Some(tbank_id) = tbank_id else {
            self.stats
                .error("payment_create", format!("no T-Bank id: {created}"));
            return;
        };
        let notice = tbank_notice::confirmed(
            TERMINAL,
            TBANK_PASSWORD,
            &payment_id,
            tbank_id,
            amount_rub * 100,
        );
        let deliver = || async {
            let request = self
                .http
                .post(self.url("/api/v1/payments/webhook/tbank"))
                .json(&notice);
            if let Some(answer) = self.send("webhook", request, 200).await {
                self.check("webhook", &answer.body[..] == b"OK", || {
                    format!("answer {:?}", String::from_utf8_lossy(&answer.body))
                });
            }
        };
        futures_util::future::join_all((0..deliveries).map(|_| deliver())).await;
        let request = self
            .http
            .get(self.url(&format!("/api/v1/payments/{payment_id}/status")))
            .bearer_auth(&user.access);
        if let Some(answer) = self.send("payment_status", request, 200).await {
            let status = answer.json();
            if self.check("payment_status", status["status"] == "completed", || {
                format!("not completed: {status}")
            }) {
                user.balance += raits;
                self.confirmed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Watches a job to its final event; the `completed` event, or `None` (counted as an
    /// error) on anything else: an `error` event, a close before the end, a timeout.
    async fn watch(&self, kind: &'static str, path: &str, user: &User) -> Option<Value> {
        let url = format!("ws://{}{path}?token={}", self.addr, user.access);
        self.stats.request(kind, None);
        let outcome = tokio::time::timeout(JOB_TIMEOUT, async {
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut connected = false;
            while let Some(message) = ws.next().await {
                let text = match message.map_err(|e| format!("frame: {e}"))? {
                    Message::Text(text) => text,
                    Message::Close(frame) => return Err(format!("closed early: {frame:?}")),
                    _ => continue,
                };
                let event: Value = serde_json::from_str(text.as_str())
                    .map_err(|e| format!("{e}: {}", text.as_str()))?;
                match event["event"].as_str().unwrap_or_default() {
                    "ping" => {}
                    "connected" if !connected => connected = true,
                    _ if !connected => return Err(format!("first event {event}")),
                    "completed" => {
                        // The server closes with 1000 after the final event.
                        let code = closing_code(&mut ws).await;
                        return match code {
                            Some(1000) => Ok(event),
                            other => Err(format!("close code {other:?} after completed")),
                        };
                    }
                    "error" => return Err(format!("job failed: {event}")),
                    _ => {}
                }
            }
            Err("the stream ended before the final event".to_owned())
        })
        .await
        .unwrap_or_else(|_| Err(format!("no final event in {JOB_TIMEOUT:?}")));
        match outcome {
            Ok(event) => Some(event),
            Err(e) => {
                self.stats.error(kind, e);
                None
            }
        }
    }
}

/// The close code the server sends next (answering its close), or `None` within 5 s.
async fn closing_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let code = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    let _ = ws.close(None).await;
    let _ = ws.flush().await;
    code
}

// ---------------------------------------------------------------------------------------------
// After the run.

/// Ledger problems found in the database file; empty when consistent.
fn audit(db: &Path, confirmed: u64) -> Result<Vec<String>, String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    let count = |sql: &str| -> Result<i64, String> {
        conn.query_row(sql, [], |r| r.get(0))
            .map_err(|e| format!("{sql}: {e}"))
    };
    let mut problems = Vec::new();
    let checks = [
        (
            "users whose balance is not the sum of their transactions",
            "select count(*) from users u where u.balance !=
                 (select coalesce(sum(t.amount), 0) from transactions t where t.user_id = u.id)",
        ),
        (
            "users with a negative balance",
            "select count(*) from users where balance < 0",
        ),
        (
            "generation sessions left pending or in_progress",
            "select count(*) from generation_sessions where status in ('pending', 'in_progress')",
        ),
        (
            "images left processing",
            "select count(*) from images where status = 'processing'",
        ),
        (
            "completed payments without exactly one topup row",
            // One pass over the topups grouped by payment: transactions have no index on
            // payment_id, and a subquery per payment is quadratic (minutes after a soak).
            "select count(*) from payments p
             left join (select payment_id, count(*) as n from transactions
                        where type = 'topup' and payment_id is not null group by payment_id) t
                    on t.payment_id = p.id
             where p.status = 'completed' and coalesce(t.n, 0) != 1",
        ),
        (
            "topup rows of payments that are not completed",
            "select count(*) from transactions t join payments p on p.id = t.payment_id
             where t.type = 'topup' and p.status != 'completed'",
        ),
        (
            "topup rows whose amount is not their payment's raits",
            "select count(*) from transactions t join payments p on p.id = t.payment_id
             where t.type = 'topup' and t.amount != p.amount_raits",
        ),
    ];
    for (what, sql) in checks {
        let n = count(sql)?;
        if n != 0 {
            problems.push(format!("{n} {what}"));
        }
    }
    let completed = count("select count(*) from payments where status = 'completed'")?;
    if completed != confirmed as i64 {
        problems.push(format!(
            "{completed} completed payments where {confirmed} were confirmed"
        ));
    }
    Ok(problems)
}

/// Lines the server logged at ERROR level (it logs at `warn` and above here).
fn count_log_errors(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|text| text.lines().filter(|l| l.contains("ERROR")).count())
        .unwrap_or(0)
}

/// Prints the summary; whether the soak passed.
fn summary(
    stats: &Stats,
    samples: &[Sample],
    exit: &Result<(), String>,
    ledger: &Result<Vec<String>, String>,
    log_errors: usize,
    dir: &Path,
) -> bool {
    let c = stats.0.lock().expect("stats");
    println!("summary:");
    let mut all = Vec::new();
    let mut total = 0;
    for (kind, k) in &c.kinds {
        let mut sorted = k.latencies.clone();
        sorted.sort_unstable();
        let latency = if sorted.is_empty() {
            String::new()
        } else {
            format!(
                ", p50 {:.1} ms, p99 {:.1} ms",
                percentile(&sorted, 0.5),
                percentile(&sorted, 0.99)
            )
        };
        println!(
            "  {kind:<15} {:>7} requests, {} errors{latency}",
            k.requests, k.errors
        );
        total += k.requests;
        all.extend(sorted);
    }
    all.sort_unstable();
    println!(
        "  all             {total:>7} requests, {} errors; HTTP p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        c.errors,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );
    for (message, n) in &c.messages {
        println!("  error ×{n}: {message}");
    }
    let rss: Vec<f64> = samples.iter().map(|s| s.rss_mb).collect();
    let fds: Vec<usize> = samples.iter().map(|s| s.fds).collect();
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        println!(
            "  RSS MB first {:.1}, min {:.1}, max {:.1}, last {:.1}",
            first.rss_mb,
            rss.iter().copied().fold(f64::INFINITY, f64::min),
            rss.iter().copied().fold(0.0, f64::max),
            last.rss_mb
        );
        println!(
            "  open fds first {}, max {}, last {}",
            first.fds,
            fds.iter().max().unwrap_or(&0),
            last.fds
        );
    }
    match exit {
        Ok(()) => println!("  shutdown: SIGTERM, exit 0"),
        Err(e) => println!("  shutdown: FAILED, {e}"),
    }
    println!("  server log: {log_errors} ERROR lines");
    let consistent = match ledger {
        Ok(problems) if problems.is_empty() => {
            println!(
                "  ledger: consistent (balances = ledger sums, none negative, no unfinished \
                 session or image, each completed payment credited once)"
            );
            true
        }
        Ok(problems) => {
            println!("  ledger: INCONSISTENT: {}", problems.join("; "));
            false
        }
        Err(e) => {
            println!("  ledger: not checked: {e}");
            false
        }
    };
    let ok = c.errors == 0 && exit.is_ok() && consistent;
    if ok {
        println!("  verdict: PASS");
    } else {
        println!("  verdict: FAIL (data kept in {})", dir.display());
    }
    ok
}
