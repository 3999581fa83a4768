//! A scripted OpenAI-compatible server on loopback that streams like the real one (SSE chunks
//! under `choices[].delta`, a usage chunk, `[DONE]`), can hold a call until the test releases
//! it, and records every request body. Standard-mode tests need what wiremock cannot do:
//! answers that arrive over time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// What the next call gets.
pub enum Reply {
    /// Streams these chunks, `gap` apart; before chunk `hold_at` it waits until
    /// [`FakeLlm::release`].
    Stream {
        chunks: Vec<String>,
        gap: Duration,
        hold_at: Option<usize>,
    },
    /// An HTTP error with an OpenAI-style body.
    Status(u16),
}

impl Reply {
    pub fn text(chunks: &[&str]) -> Reply {
        Reply::Stream {
            chunks: chunks.iter().map(|c| (*c).to_owned()).collect(),
            gap: Duration::ZERO,
            hold_at: None,
        }
    }

    /// Holds before the first chunk: the call has started, no text has come.
    pub fn held(chunks: Vec<String>) -> Reply {
        Reply::held_at(chunks, 0)
    }

    pub fn held_at(chunks: Vec<String>, index: usize) -> Reply {
        Reply::Stream {
            chunks,
            gap: Duration::ZERO,
            hold_at: Some(index),
        }
    }
}

#[derive(Clone)]
pub struct FakeLlm {
    pub url: String,
    script: Arc<Mutex<VecDeque<Reply>>>,
    requests: Arc<Mutex<Vec<Value>>>,
    gate: Arc<Semaphore>,
    /// Calls that have arrived (held or not).
    arrived: Arc<tokio::sync::Notify>,
}

impl FakeLlm {
    pub async fn start() -> FakeLlm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeLlm {
            url: format!("http://{}/v1", listener.local_addr().unwrap()),
            script: Arc::default(),
            requests: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            arrived: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    /// Queues replies for the next calls; when the script runs out, calls get a short answer.
    pub fn then(&self, reply: Reply) -> &Self {
        self.script.lock().unwrap().push_back(reply);
        self
    }

    /// Lets `n` held calls go on.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until `n` calls have arrived in all.
    pub async fn wait_for_calls(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.requests.lock().unwrap().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} calls never arrived"
            );
            let _ = tokio::time::timeout(Duration::from_millis(50), self.arrived.notified()).await;
        }
    }

    /// The user message of call `i`.
    pub fn user_message(&self, i: usize) -> String {
        self.requests()[i]["messages"][1]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

async fn complete(State(fake): State<FakeLlm>, body: String) -> Response {
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let streaming = request["stream"] == true;
    fake.requests.lock().unwrap().push(request);
    fake.arrived.notify_waiters();
    let calls = fake.requests.lock().unwrap().len();
    let reply = fake
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| Reply::text(&[&format!("Ответ на вызов {calls}.")]));
    let (chunks, gap, hold_at) = match reply {
        Reply::Status(status) => {
            return (
                StatusCode::from_u16(status).unwrap(),
                [(header::CONTENT_TYPE, "application/json")],
                json!({"error": {"message": "scripted failure", "type": "server_error"}})
                    .to_string(),
            )
                .into_response();
        }
        Reply::Stream {
            chunks,
            gap,
            hold_at,
        } => (chunks, gap, hold_at),
    };
    if !streaming {
        if hold_at.is_some() {
            fake.gate.acquire().await.unwrap().forget();
        }
        let answer = json!({
            "model": "fake", "choices": [{"index": 0, "message": {"role": "assistant", "content": chunks.concat()}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            answer.to_string(),
        )
            .into_response();
    }
    let gate = fake.gate.clone();
    let body = async_stream::stream! {
        for (i, chunk) in chunks.iter().enumerate() {
            if hold_at == Some(i) {
                gate.acquire().await.unwrap().forget();
            }
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            let event = json!({"model": "fake", "choices": [{"index": 0, "delta": {"content": chunk}, "finish_reason": null}]});
            yield Ok::<_, Infallible>(Bytes::from(format!("data: {event}\n\n")));
        }
        let last = json!({"model": "fake", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        let usage = json!({"model": "fake", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}});
        yield Ok(Bytes::from(format!("data: {last}\n\ndata: {usage}\n\ndata: [DONE]\n\n")));
    };
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}
