//! A fake OpenAI-compatible server for the benchmarks. Whole answers (`bench/execute.sh`) come
//! at once, as the JSON `spell_check` asks for (any other quick tool takes it as text). Streamed answers (`bench/ws.sh`) depend on `FAKE_STREAM`:
//! - `hold`: the stream opens and never sends a byte, so the job stays running;
//! - `stamped`: waits for `POST /release`, then sends `FAKE_DELTAS` deltas (default 300)
//!   `FAKE_GAP_MS` apart (default 20), each carrying its send time as `t=<µs since epoch>;`.
//!
//! Run: cargo run --release --example fake_openai -- 127.0.0.1:18181

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::sync::watch;

const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"{\"text\":\"Исправленный текст.\",\"edits\":[]}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":5,"total_tokens":45}}"#;

#[derive(Clone)]
struct Fake {
    mode: Arc<str>,
    deltas: usize,
    gap: Duration,
    released: watch::Receiver<bool>,
    release: Arc<watch::Sender<bool>>,
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18181".into());
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let (release, released) = watch::channel(false);
    let fake = Fake {
        mode: env("FAKE_STREAM", "hold").into(),
        deltas: env("FAKE_DELTAS", "300").parse().expect("FAKE_DELTAS"),
        gap: Duration::from_millis(env("FAKE_GAP_MS", "20").parse().expect("FAKE_GAP_MS")),
        released,
        release: Arc::new(release),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(complete))
        .route(
            "/release",
            post(|State(fake): State<Fake>| async move {
                let _ = fake.release.send(true);
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}

async fn complete(State(fake): State<Fake>, body: String) -> Response {
    if !body.contains("\"stream\":true") {
        return ([(header::CONTENT_TYPE, "application/json")], ANSWER).into_response();
    }
    let stream = async_stream::stream! {
        if &*fake.mode == "hold" {
            std::future::pending::<()>().await;
        }
        let mut released = fake.released.clone();
        let _ = released.wait_for(|r| *r).await;
        for _ in 0..fake.deltas {
            let micros = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros();
            let chunk = format!(
                r#"{{"model":"bench-model","choices":[{{"index":0,"delta":{{"content":"t={micros};"}},"finish_reason":null}}]}}"#
            );
            yield Ok::<_, Infallible>(Bytes::from(format!("data: {chunk}\n\n")));
            tokio::time::sleep(fake.gap).await;
        }
        yield Ok(Bytes::from_static(
            b"data: {\"model\":\"bench-model\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":300,\"total_tokens\":340}}\n\ndata: [DONE]\n\n",
        ));
    };
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}
