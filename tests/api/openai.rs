//! The OpenAI client against a fake Chat Completions server on loopback.

use std::time::Duration;

use easy_writer::config::{self, Secret};
use easy_writer::llm::openai::Client;
use easy_writer::llm::{ChatRequest, Error, Provider, StreamEvent};
use futures_util::StreamExt;
use serde_json::json;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn client(server: &MockServer, timeout: Duration) -> Client {
    let cfg = config::OpenAi {
        api_key: Some(Secret::new("sk-test")),
        base_url: format!("{}/v1", server.uri()),
        ..Default::default()
    };
    Client::new(&cfg, timeout).unwrap()
}

fn request() -> ChatRequest {
    ChatRequest {
        system: "Ты редактор.".into(),
        user: "Исправь ошибки: превет".into(),
        temperature: Some(0.3),
        max_tokens: Some(500),
        ..Default::default()
    }
}

fn completion(content: &str, finish: &str) -> serde_json::Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    })
}

#[tokio::test]
async fn chat_sends_the_documented_request_and_parses_the_answer() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-test"))
        .and(header("content-type", "application/json"))
        .and(body_partial_json(json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Ты редактор."},
                {"role": "user", "content": "Исправь ошибки: превет"}
            ],
            "temperature": 0.3,
            "max_tokens": 500
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("Привет", "stop")))
        .expect(1)
        .mount(&server)
        .await;
    let answer = client(&server, Duration::from_secs(5))
        .chat(&request())
        .await
        .unwrap();
    assert_eq!(answer.text, "Привет");
    assert_eq!(answer.model, "gpt-4o-2024-08-06");
    assert_eq!(
        (
            answer.usage.prompt_tokens,
            answer.usage.completion_tokens,
            answer.usage.total_tokens
        ),
        (12, 3, 15)
    );
    assert!(!answer.truncated);
}

#[tokio::test]
async fn a_length_cut_answer_is_a_truncated_success_and_a_filtered_one_a_refusal() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("Начало", "length")))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("", "content_filter")))
        .mount(&server)
        .await;
    let c = client(&server, Duration::from_secs(5));
    assert!(c.chat(&request()).await.unwrap().truncated);
    assert!(matches!(c.chat(&request()).await, Err(Error::Refused(_))));
}

#[tokio::test]
async fn streaming_yields_deltas_then_the_whole_answer() {
    let server = MockServer::start().await;
    let body = [
        r#"{"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"role":"assistant","content":"При"}}]}"#,
        r#"{"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"вет"}}]}"#,
        r#"{"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        r#"{"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
        "[DONE]",
    ]
    .iter()
    .map(|d| format!("data: {d}\n\n"))
    .collect::<String>();
    Mock::given(path("/v1/chat/completions"))
        .and(body_partial_json(
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(body),
        )
        .expect(1)
        .mount(&server)
        .await;
    let mut stream = client(&server, Duration::from_secs(5))
        .chat_stream(&request())
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.unwrap());
    }
    assert_eq!(events[0], StreamEvent::Delta("При".into()));
    assert_eq!(events[1], StreamEvent::Delta("вет".into()));
    let StreamEvent::Done(done) = &events[2] else {
        panic!("{events:?}")
    };
    assert_eq!(done.text, "Привет");
    assert_eq!(done.usage.total_tokens, 7);
}

#[tokio::test]
async fn a_stream_cut_short_is_malformed_not_a_panic() {
    let server = MockServer::start().await;
    let body =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"При\"}}]}\n\ndata: {\"choi";
    Mock::given(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(body),
        )
        .mount(&server)
        .await;
    let mut stream = client(&server, Duration::from_secs(5))
        .chat_stream(&request())
        .await
        .unwrap();
    let mut last = None;
    while let Some(event) = stream.next().await {
        last = Some(event);
    }
    assert!(matches!(last, Some(Err(Error::Malformed(_)))), "{last:?}");
}

#[tokio::test]
async fn errors_are_classified_for_the_router() {
    type Check = fn(&Error) -> bool;
    let cases: Vec<(ResponseTemplate, Check)> = vec![
        (
            ResponseTemplate::new(401).set_body_json(json!({"error": {"message": "Incorrect API key", "type": "invalid_request_error", "code": "invalid_api_key"}})),
            |e| matches!(e, Error::Auth(m) if m.contains("Incorrect API key")),
        ),
        (
            ResponseTemplate::new(429).insert_header("retry-after", "2").set_body_json(json!({"error": {"message": "Rate limit", "type": "requests"}})),
            |e| matches!(e, Error::RateLimited { retry_after: Some(d) } if *d == Duration::from_secs(2)),
        ),
        (
            ResponseTemplate::new(429).set_body_json(json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}})),
            |e| matches!(e, Error::Quota(_)) && !e.is_retryable(),
        ),
        (ResponseTemplate::new(500).set_body_string("oops"), |e| matches!(e, Error::Server { status: 500, .. }) && e.is_retryable()),
        (
            ResponseTemplate::new(400).set_body_json(json!({"error": {"message": "bad model"}})),
            |e| matches!(e, Error::BadRequest { status: 400, .. }) && !e.is_retryable(),
        ),
        (ResponseTemplate::new(200).set_body_string("{not json"), |e| matches!(e, Error::Malformed(_))),
        (ResponseTemplate::new(200).set_body_json(json!({"choices": []})), |e| matches!(e, Error::Malformed(_))),
        (ResponseTemplate::new(200).set_body_json(completion("  ", "stop")), |e| matches!(e, Error::Malformed(_))),
    ];
    for (i, (template, check)) in cases.into_iter().enumerate() {
        let server = MockServer::start().await;
        Mock::given(path("/v1/chat/completions"))
            .respond_with(template)
            .mount(&server)
            .await;
        let error = client(&server, Duration::from_secs(5))
            .chat(&request())
            .await
            .unwrap_err();
        assert!(check(&error), "case {i}: {error:?}");
        assert!(!error.to_string().contains("sk-test"));
    }
}

#[tokio::test]
async fn a_silent_server_times_out_and_a_closed_port_is_a_connection_error() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(completion("late", "stop"))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let error = client(&server, Duration::from_millis(300))
        .chat(&request())
        .await
        .unwrap_err();
    assert_eq!(error, Error::Timeout);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cfg = config::OpenAi {
        api_key: Some(Secret::new("sk-test")),
        base_url: format!("http://127.0.0.1:{port}/v1"),
        ..Default::default()
    };
    let error = Client::new(&cfg, Duration::from_secs(2))
        .unwrap()
        .chat(&request())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Connect(_)), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn check_lists_models_with_the_key() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .and(header("authorization", "Bearer sk-test"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": []})),
        )
        .expect(1)
        .mount(&server)
        .await;
    client(&server, Duration::from_secs(5))
        .check()
        .await
        .unwrap();
    let cfg = config::OpenAi::default();
    assert!(matches!(
        Client::new(&cfg, Duration::from_secs(1)),
        Err(Error::NotConfigured(_))
    ));
}
