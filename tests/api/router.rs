//! The LLM router over real HTTP: retries, fallback, Retry-After, breaker, concurrency limits
//! and metrics, with providers built from configuration exactly as `serve` builds them.

use std::time::{Duration, Instant};

use easy_writer::llm::{ChatRequest, Error, ProviderId};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{Builder, TestApp, builder, email};

const OPENAI_OK: &str = r#"{"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"from openai"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#;

fn yandex_ok() -> serde_json::Value {
    json!({"result": {"alternatives": [{"message": {"role": "assistant", "text": "from yandex"}, "status": "ALTERNATIVE_STATUS_FINAL"}],
                      "usage": {"inputTextTokens": "3", "completionTokens": "2", "totalTokens": "5"}, "modelVersion": "1"}})
}

/// OpenAI and YandexGPT configured against fakes; fallback order openai → yandexgpt.
fn two_providers() -> Builder {
    builder()
        .upstream("OPENAI_BASE_URL")
        .upstream("YANDEXGPT_BASE_URL")
        .env("OPENAI_API_KEY", "sk-test")
        .env("YANDEXGPT_API_KEY", "yc-key")
        .env("YANDEXGPT_FOLDER_ID", "b1gfolder")
        .env("EASY_WRITER_PROVIDER_ORDER", "openai,yandexgpt,gigachat")
        .env("EASY_WRITER_RETRY_BASE_MS", 20)
}

fn openai(app: &TestApp) -> &MockServer {
    &app.upstreams["OPENAI_BASE_URL"]
}

fn yandex(app: &TestApp) -> &MockServer {
    &app.upstreams["YANDEXGPT_BASE_URL"]
}

fn request() -> ChatRequest {
    ChatRequest {
        system: "Ты редактор.".into(),
        user: "Текст".into(),
        ..Default::default()
    }
}

async fn mount(server: &MockServer, route: &str, template: ResponseTemplate, times: u64) {
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(template)
        .expect(times)
        .mount(server)
        .await;
}

#[tokio::test]
async fn server_errors_are_retried_three_times_then_the_next_provider_answers() {
    let app = two_providers().spawn().await;
    mount(
        openai(&app),
        "/chat/completions",
        ResponseTemplate::new(500),
        3,
    )
    .await;
    mount(
        yandex(&app),
        "/completion",
        ResponseTemplate::new(200).set_body_json(yandex_ok()),
        1,
    )
    .await;
    let started = Instant::now();
    let (who, answer) = app
        .state
        .llm
        .chat(Some(ProviderId::OpenAi), &request())
        .await
        .unwrap();
    assert_eq!(who, ProviderId::YandexGpt);
    assert_eq!(answer.text, "from yandex");
    // Waits of 1 and 2 units (20 ms) between the three attempts.
    assert!(started.elapsed() >= Duration::from_millis(60));
}

#[tokio::test]
async fn a_400_moves_on_without_retrying() {
    let app = two_providers().spawn().await;
    mount(
        openai(&app),
        "/chat/completions",
        ResponseTemplate::new(400).set_body_json(json!({"error": {"message": "bad"}})),
        1,
    )
    .await;
    mount(
        yandex(&app),
        "/completion",
        ResponseTemplate::new(200).set_body_json(yandex_ok()),
        1,
    )
    .await;
    let (who, _) = app
        .state
        .llm
        .chat(Some(ProviderId::OpenAi), &request())
        .await
        .unwrap();
    assert_eq!(who, ProviderId::YandexGpt);
}

#[tokio::test]
async fn auth_failures_move_on_and_success_on_the_preferred_provider_stops_there() {
    let app = two_providers().spawn().await;
    mount(yandex(&app), "/completion", ResponseTemplate::new(401), 1).await;
    mount(
        openai(&app),
        "/chat/completions",
        ResponseTemplate::new(200).set_body_string(OPENAI_OK),
        1,
    )
    .await;
    let (who, answer) = app
        .state
        .llm
        .chat(Some(ProviderId::YandexGpt), &request())
        .await
        .unwrap();
    assert_eq!(
        (who, answer.text.as_str()),
        (ProviderId::OpenAi, "from openai")
    );
}

#[tokio::test]
async fn a_429_waits_for_retry_after_and_a_long_one_moves_on_at_once() {
    let app = two_providers().spawn().await;
    Mock::given(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .expect(1)
        .mount(openai(&app))
        .await;
    Mock::given(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_string(OPENAI_OK))
        .expect(1)
        .mount(openai(&app))
        .await;
    let started = Instant::now();
    let (who, _) = app
        .state
        .llm
        .chat(Some(ProviderId::OpenAi), &request())
        .await
        .unwrap();
    assert_eq!(who, ProviderId::OpenAi);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried before Retry-After"
    );

    let app = two_providers().spawn().await;
    mount(
        openai(&app),
        "/chat/completions",
        ResponseTemplate::new(429).insert_header("retry-after", "30"),
        1,
    )
    .await;
    mount(
        yandex(&app),
        "/completion",
        ResponseTemplate::new(200).set_body_json(yandex_ok()),
        1,
    )
    .await;
    let started = Instant::now();
    let (who, _) = app
        .state
        .llm
        .chat(Some(ProviderId::OpenAi), &request())
        .await
        .unwrap();
    assert_eq!(who, ProviderId::YandexGpt);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn when_every_provider_fails_the_caller_learns_who_was_tried_and_why() {
    let app = two_providers().spawn().await;
    mount(
        openai(&app),
        "/chat/completions",
        ResponseTemplate::new(503),
        3,
    )
    .await;
    mount(
        yandex(&app),
        "/completion",
        ResponseTemplate::new(402).set_body_json(json!({"code": 8, "message": "no money"})),
        1,
    )
    .await;
    let failure = app
        .state
        .llm
        .chat(Some(ProviderId::OpenAi), &request())
        .await
        .unwrap_err();
    let providers: Vec<_> = failure.attempts.iter().map(|a| a.provider).collect();
    assert_eq!(
        providers,
        [
            ProviderId::OpenAi,
            ProviderId::OpenAi,
            ProviderId::OpenAi,
            ProviderId::YandexGpt
        ]
    );
    assert!(matches!(
        failure.attempts[0].error,
        Error::Server { status: 503, .. }
    ));
    assert!(matches!(failure.attempts[3].error, Error::Quota(_)));
    let text = failure.to_string();
    assert!(
        text.contains("openai") && text.contains("yandexgpt"),
        "{text}"
    );
}

#[tokio::test]
async fn unconfigured_providers_are_skipped() {
    let app = builder()
        .upstream("OPENAI_BASE_URL")
        .env("OPENAI_API_KEY", "sk-test")
        .spawn()
        .await;
    mount(
        openai(&app),
        "/chat/completions",
        ResponseTemplate::new(200).set_body_string(OPENAI_OK),
        1,
    )
    .await;
    assert_eq!(app.state.llm.configured(), [ProviderId::OpenAi]);
    let (who, _) = app
        .state
        .llm
        .chat(Some(ProviderId::GigaChat), &request())
        .await
        .unwrap();
    assert_eq!(who, ProviderId::OpenAi);

    let none = builder().spawn().await;
    let failure = none.state.llm.chat(None, &request()).await.unwrap_err();
    assert!(failure.to_string().contains("no provider is configured"));
}

#[tokio::test]
async fn a_failing_provider_leaves_rotation_and_comes_back_after_the_cooldown() {
    let app = two_providers()
        .env("EASY_WRITER_BREAKER_FAILURES", 2)
        .env("EASY_WRITER_BREAKER_COOLDOWN_SECS", 1)
        .spawn()
        .await;
    // Two failures on OpenAI's side (a 400 would be the request's fault and leave the
    // breaker alone) open the breaker; later calls skip OpenAI entirely.
    Mock::given(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .expect(2)
        .mount(openai(&app))
        .await;
    mount(
        yandex(&app),
        "/completion",
        ResponseTemplate::new(200).set_body_json(yandex_ok()),
        3,
    )
    .await;
    for _ in 0..3 {
        let (who, _) = app
            .state
            .llm
            .chat(Some(ProviderId::OpenAi), &request())
            .await
            .unwrap();
        assert_eq!(who, ProviderId::YandexGpt);
    }
    // What the admin UI's providers page shows: out of rotation, for at most the cooldown.
    let (_, out_for) = app.state.llm.breaker(ProviderId::OpenAi).unwrap();
    assert!(out_for.is_some_and(|d| d <= Duration::from_secs(1)));
    assert_eq!(
        app.state.llm.breaker(ProviderId::YandexGpt),
        Some((0, None))
    );
    assert_eq!(app.state.llm.breaker(ProviderId::GigaChat), None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    Mock::given(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_string(OPENAI_OK))
        .expect(1)
        .mount(openai(&app))
        .await;
    let (who, _) = app
        .state
        .llm
        .chat(Some(ProviderId::OpenAi), &request())
        .await
        .unwrap();
    assert_eq!(
        who,
        ProviderId::OpenAi,
        "back in rotation after the cooldown"
    );
}

#[tokio::test]
async fn requests_beyond_a_providers_concurrency_limit_queue() {
    let app = two_providers()
        .env("OPENAI_MAX_CONCURRENCY", 1)
        .spawn()
        .await;
    mount(
        openai(&app),
        "/chat/completions",
        ResponseTemplate::new(200)
            .set_body_string(OPENAI_OK)
            .set_delay(Duration::from_millis(200)),
        3,
    )
    .await;
    let started = Instant::now();
    let llm = &app.state.llm;
    let req = request();
    let (a, b, c) = tokio::join!(
        llm.chat(Some(ProviderId::OpenAi), &req),
        llm.chat(Some(ProviderId::OpenAi), &req),
        llm.chat(Some(ProviderId::OpenAi), &req),
    );
    assert!(a.is_ok() && b.is_ok() && c.is_ok());
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "ran in parallel: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn metrics_count_requests_outcomes_and_tokens_and_are_guarded() {
    let app = two_providers()
        .env("EASY_WRITER_TRUSTED_PROXIES", "127.0.0.1")
        .spawn()
        .await;
    mount(
        openai(&app),
        "/chat/completions",
        ResponseTemplate::new(500),
        3,
    )
    .await;
    mount(
        yandex(&app),
        "/completion",
        ResponseTemplate::new(200).set_body_json(yandex_ok()),
        1,
    )
    .await;
    app.state
        .llm
        .chat(Some(ProviderId::OpenAi), &request())
        .await
        .unwrap();

    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"easy_writer_llm_requests_total{provider="openai",outcome="server"} 3"#,
        r#"easy_writer_llm_requests_total{provider="yandexgpt",outcome="ok"} 1"#,
        r#"easy_writer_llm_tokens_total{provider="yandexgpt",kind="prompt"} 3"#,
        r#"easy_writer_llm_request_duration_seconds_count{provider="openai"} 3"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }

    // From elsewhere (as a trusted proxy reports it): only with an admin's token.
    let remote = |token: Option<&str>| {
        let mut request = app
            .client
            .get(app.url("/metrics"))
            .header("x-forwarded-for", "203.0.113.9");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(remote(None).await.unwrap().status(), 401);
    let user = app.register(&email("metrics")).await;
    assert_eq!(
        remote(Some(&user.access_token)).await.unwrap().status(),
        403
    );
    let admin_email = email("admin");
    let admin = app.register(&admin_email).await;
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    conn.execute(
        "update users set is_admin = 1 where id = ?1",
        [&admin.user_id],
    )
    .unwrap();
    assert_eq!(
        remote(Some(&admin.access_token)).await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn streams_fall_back_before_the_first_delta_and_then_flow_through() {
    use easy_writer::llm::StreamEvent;
    use futures_util::StreamExt;

    let app = two_providers().spawn().await;
    mount(
        openai(&app),
        "/chat/completions",
        ResponseTemplate::new(502),
        3,
    )
    .await;
    let chunks = [
        json!({"result": {"alternatives": [{"message": {"role": "assistant", "text": "При"}, "status": "ALTERNATIVE_STATUS_PARTIAL"}], "usage": {"inputTextTokens": "3", "completionTokens": "1", "totalTokens": "4"}, "modelVersion": "1"}}),
        json!({"result": {"alternatives": [{"message": {"role": "assistant", "text": "Привет"}, "status": "ALTERNATIVE_STATUS_FINAL"}], "usage": {"inputTextTokens": "3", "completionTokens": "2", "totalTokens": "5"}, "modelVersion": "1"}}),
    ];
    let body: String = chunks.iter().map(|c| format!("{c}\n")).collect();
    mount(
        yandex(&app),
        "/completion",
        ResponseTemplate::new(200).set_body_string(body),
        1,
    )
    .await;

    let (who, mut stream) = app
        .state
        .llm
        .chat_stream(Some(ProviderId::OpenAi), &request())
        .await
        .unwrap();
    assert_eq!(who, ProviderId::YandexGpt);
    let mut deltas = String::new();
    let mut done = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::Delta(d) => deltas.push_str(&d),
            StreamEvent::Done(response) => done = Some(response),
        }
    }
    assert_eq!(deltas, "Привет");
    assert_eq!(done.unwrap().text, "Привет");
}
