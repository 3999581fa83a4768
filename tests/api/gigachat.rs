//! The GigaChat client against fakes on loopback: wiremock speaks the documented protocol over
//! plain HTTP; a small axum server speaks it over real TLS with a CA made in the test, to prove
//! the Russian Trusted Root CA path (PEM, DER, absent, misconfigured).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use easy_writer::config::{self, Secret};
use easy_writer::llm::gigachat::Client;
use easy_writer::llm::{ChatRequest, ChatResponse, Error, Provider, StreamEvent, Usage};
use futures_util::StreamExt;
use serde_json::{Value, json};
use wiremock::matchers::{body_json, body_partial_json, body_string, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// An authorization key as the Sber cabinet shows it: base64 of `client_id:client_secret`.
const KEY: &str = "MDE5YWJjZGUtZmFrZS1jbGllbnQ6ZmFrZS1zZWNyZXQ=";
const TOKEN_PATH: &str = "/api/v2/oauth";
const CHAT_PATH: &str = "/api/v1/chat/completions";

fn config(server: &MockServer) -> config::GigaChat {
    config::GigaChat {
        api_key: Some(Secret::new(KEY)),
        scope: "GIGACHAT_API_B2B".into(),
        model: "GigaChat-2".into(),
        auth_url: format!("{}{TOKEN_PATH}", server.uri()),
        base_url: format!("{}/api/v1", server.uri()),
        ..Default::default()
    }
}

fn client(server: &MockServer) -> Client {
    client_with(&config(server), Duration::from_secs(5))
}

/// A client whose data directory has no CA file.
fn client_with(cfg: &config::GigaChat, timeout: Duration) -> Client {
    let data_dir = tempfile::tempdir().unwrap();
    Client::new(cfg, data_dir.path(), timeout).unwrap()
}

fn request() -> ChatRequest {
    ChatRequest {
        system: "Ты редактор.".into(),
        user: "Исправь ошибки: превет".into(),
        ..Default::default()
    }
}

/// Unix time in milliseconds, `secs` from now (negative: in the past).
fn ms_from_now(secs: i64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now + secs * 1000) as u64
}

fn token_response(token: &str, expires_at: u64) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({"access_token": token, "expires_at": expires_at}))
}

/// Answers every token request with `token`, valid for 30 minutes.
async fn mount_token(server: &MockServer, token: &str, calls: u64) {
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response(token, ms_from_now(30 * 60)))
        .expect(calls)
        .mount(server)
        .await;
}

fn completion(text: &str, finish_reason: &str) -> Value {
    json!({
        "choices": [{"message": {"role": "assistant", "content": text}, "index": 0,
                     "finish_reason": finish_reason}],
        "created": 1678878333,
        "model": "GigaChat-2:2.0.28.2",
        "object": "chat.completion",
        "usage": {"prompt_tokens": 18, "completion_tokens": 68, "total_tokens": 86,
                  "precached_prompt_tokens": 0}
    })
}

async fn mount_chat(server: &MockServer, response: ResponseTemplate, calls: u64) {
    Mock::given(method("POST"))
        .and(path(CHAT_PATH))
        .respond_with(response)
        .expect(calls)
        .mount(server)
        .await;
}

fn rquids(requests: &[wiremock::Request]) -> Vec<uuid::Uuid> {
    requests
        .iter()
        .filter(|r| r.url.path() == TOKEN_PATH)
        .map(|r| {
            let value = r
                .headers
                .get("rquid")
                .expect("RqUID header")
                .to_str()
                .unwrap();
            uuid::Uuid::parse_str(value).expect("RqUID is a uuid")
        })
        .collect()
}

#[tokio::test]
async fn token_and_chat_requests_have_the_documented_shape() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(header("authorization", format!("Basic {KEY}").as_str()))
        .and(header("accept", "application/json"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string("scope=GIGACHAT_API_B2B"))
        .respond_with(token_response("access-1", ms_from_now(30 * 60)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(CHAT_PATH))
        .and(header("authorization", "Bearer access-1"))
        .and(header("accept", "application/json"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "model": "GigaChat-2-Pro",
            "messages": [
                {"role": "system", "content": "Ты редактор."},
                {"role": "user", "content": "Исправь ошибки: превет"},
            ],
            "temperature": 0.5,
            "max_tokens": 100,
            "stream": false,
        })))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(completion("Исправь ошибки: привет", "stop")),
        )
        .expect(1)
        .mount(&server)
        .await;

    let answer = client(&server)
        .chat(&ChatRequest {
            model: Some("GigaChat-2-Pro".into()),
            temperature: Some(0.5),
            max_tokens: Some(100),
            ..request()
        })
        .await
        .unwrap();

    assert_eq!(
        answer,
        ChatResponse {
            text: "Исправь ошибки: привет".into(),
            usage: Usage {
                prompt_tokens: 18,
                completion_tokens: 68,
                total_tokens: 86
            },
            model: "GigaChat-2:2.0.28.2".into(),
            truncated: false,
        }
    );
    let ids = rquids(&server.received_requests().await.unwrap());
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].get_version_num(), 4);
}

#[tokio::test]
async fn the_configured_model_is_used_without_an_override() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    Mock::given(method("POST"))
        .and(path(CHAT_PATH))
        .and(body_partial_json(
            json!({"model": "GigaChat-2", "stream": false}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("ok", "stop")))
        .expect(1)
        .mount(&server)
        .await;

    let answer = client(&server).chat(&request()).await.unwrap();
    assert_eq!(answer.text, "ok");
}

#[tokio::test]
async fn standard_quality_uses_the_quality_model() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    Mock::given(method("POST"))
        .and(path(CHAT_PATH))
        .and(body_partial_json(json!({"model": "GigaChat-2-Pro"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("ok", "stop")))
        .expect(1)
        .mount(&server)
        .await;
    let request = ChatRequest {
        quality: easy_writer::llm::Quality::Standard,
        ..request()
    };
    let client = client(&server);
    assert_eq!(client.model_for(&request), "GigaChat-2-Pro");
    assert_eq!(client.chat(&request).await.unwrap().text, "ok");
}

#[tokio::test]
async fn streaming_appends_deltas_and_takes_usage_from_the_last_chunk() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    let chunk = |delta: &str, extra: Value| {
        let mut chunk = json!({
            "choices": [{"delta": {"content": delta, "role": "assistant"}, "index": 0}],
            "created": 1695802242, "model": "GigaChat-2:2.0.28.2", "object": "chat.completion"
        });
        if let Some(reason) = extra.get("finish_reason") {
            chunk["choices"][0]["finish_reason"] = reason.clone();
        }
        if let Some(usage) = extra.get("usage") {
            chunk["usage"] = usage.clone();
        }
        format!("data: {chunk}\n\n")
    };
    let body = [
        chunk("Конечно", json!({})),
        chunk(", вот", json!({})),
        chunk(" ответ.", json!({})),
        chunk(
            "",
            json!({"finish_reason": "stop",
                   "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}),
        ),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    Mock::given(method("POST"))
        .and(path(CHAT_PATH))
        .and(header("authorization", "Bearer access-1"))
        .and(header("accept", "text/event-stream"))
        .and(body_partial_json(
            json!({"model": "GigaChat-2", "stream": true}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "text/event-stream"))
        .expect(1)
        .mount(&server)
        .await;

    let events: Vec<StreamEvent> = client(&server)
        .chat_stream(&request())
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;

    assert_eq!(
        events,
        vec![
            StreamEvent::Delta("Конечно".into()),
            StreamEvent::Delta(", вот".into()),
            StreamEvent::Delta(" ответ.".into()),
            StreamEvent::Done(ChatResponse {
                text: "Конечно, вот ответ.".into(),
                usage: Usage {
                    prompt_tokens: 10,
                    completion_tokens: 5,
                    total_tokens: 15
                },
                model: "GigaChat-2:2.0.28.2".into(),
                truncated: false,
            }),
        ]
    );
}

#[tokio::test]
async fn the_token_is_reused_across_calls() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    mount_chat(
        &server,
        ResponseTemplate::new(200).set_body_json(completion("ok", "stop")),
        3,
    )
    .await;

    let client = client(&server);
    for _ in 0..3 {
        client.chat(&request()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_chats_share_one_token_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(
            token_response("access-1", ms_from_now(30 * 60)).set_delay(Duration::from_millis(200)),
        )
        .expect(1)
        .mount(&server)
        .await;
    mount_chat(
        &server,
        ResponseTemplate::new(200).set_body_json(completion("ok", "stop")),
        50,
    )
    .await;

    let client = Arc::new(client(&server));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let client = Arc::clone(&client);
            tokio::spawn(async move { client.chat(&request()).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn older_tok_and_exp_in_seconds_are_understood() {
    let server = MockServer::start().await;
    let exp_seconds = ms_from_now(20 * 60) / 1000;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"tok": "access-1", "exp": exp_seconds})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(CHAT_PATH))
        .and(header("authorization", "Bearer access-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("ok", "stop")))
        .expect(2)
        .mount(&server)
        .await;

    // Read as milliseconds, this `exp` would be in 1970 and the token fetched twice.
    let client = client(&server);
    client.chat(&request()).await.unwrap();
    client.chat(&request()).await.unwrap();
}

#[tokio::test]
async fn a_token_expiring_within_a_minute_is_not_reused() {
    let server = MockServer::start().await;
    // Milliseconds, 30 s ahead. Read as seconds it would be far in the future and reused.
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response("access-1", ms_from_now(30)))
        .expect(2)
        .mount(&server)
        .await;
    mount_chat(
        &server,
        ResponseTemplate::new(200).set_body_json(completion("ok", "stop")),
        2,
    )
    .await;

    let client = client(&server);
    client.chat(&request()).await.unwrap();
    client.chat(&request()).await.unwrap();

    let ids = rquids(&server.received_requests().await.unwrap());
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| id.get_version_num() == 4), "{ids:?}");
    assert_ne!(ids[0], ids[1], "every token request needs a fresh RqUID");
}

#[tokio::test]
async fn a_401_refetches_the_token_and_retries_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response("revoked", ms_from_now(30 * 60)))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response("fresh", ms_from_now(30 * 60)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(CHAT_PATH))
        .and(header("authorization", "Bearer revoked"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"status": 401, "message": "Unauthorized"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(CHAT_PATH))
        .and(header("authorization", "Bearer fresh"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("ok", "stop")))
        .expect(2)
        .mount(&server)
        .await;

    let client = client(&server);
    assert_eq!(client.chat(&request()).await.unwrap().text, "ok");
    // The fresh token is the one cached now.
    assert_eq!(client.chat(&request()).await.unwrap().text, "ok");
}

#[tokio::test]
async fn a_401_with_a_fresh_token_is_an_auth_error() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 2).await;
    mount_chat(
        &server,
        ResponseTemplate::new(401).set_body_json(json!({"status": 401, "message": "Unauthorized"})),
        2,
    )
    .await;

    let error = client(&server).chat(&request()).await.unwrap_err();
    assert_eq!(error, Error::Auth("Unauthorized".into()));
}

#[tokio::test]
async fn token_endpoint_errors_are_classified() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"code": 7, "message": "scope from db not fully includes consumed scope"}),
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"code": 4, "message": "Can't decode header"})),
        )
        .mount(&server)
        .await;
    mount_chat(
        &server,
        ResponseTemplate::new(200).set_body_json(completion("ok", "stop")),
        0,
    )
    .await;

    let client = client(&server);
    assert_eq!(
        client.chat(&request()).await.unwrap_err(),
        Error::BadRequest {
            status: 400,
            message: "scope from db not fully includes consumed scope".into()
        }
    );
    // A failed token request is not cached: the next call asks again.
    assert_eq!(
        client.chat(&request()).await.unwrap_err(),
        Error::Auth("Can't decode header".into())
    );
}

#[tokio::test]
async fn blacklist_is_a_refusal() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    let canned = "Не люблю менять тему разговора, но вот сейчас тот самый случай.";
    mount_chat(
        &server,
        ResponseTemplate::new(200).set_body_json(completion(canned, "blacklist")),
        1,
    )
    .await;

    let error = client(&server).chat(&request()).await.unwrap_err();
    assert!(matches!(error, Error::Refused(_)), "{error:?}");
}

#[tokio::test]
async fn length_is_a_truncated_success() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    mount_chat(
        &server,
        ResponseTemplate::new(200).set_body_json(completion("Начало отв", "length")),
        1,
    )
    .await;

    let answer = client(&server).chat(&request()).await.unwrap();
    assert_eq!(answer.text, "Начало отв");
    assert!(answer.truncated);
}

#[tokio::test]
async fn an_unknown_finish_reason_is_malformed() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    mount_chat(
        &server,
        ResponseTemplate::new(200).set_body_json(completion("{}", "function_call")),
        1,
    )
    .await;

    let error = client(&server).chat(&request()).await.unwrap_err();
    assert!(matches!(error, Error::Malformed(_)), "{error:?}");
}

#[tokio::test]
async fn api_errors_map_to_their_classes() {
    let cases = [
        (
            ResponseTemplate::new(402)
                .set_body_json(json!({"status": 402, "message": "Payment Required"})),
            Error::Quota("Payment Required".into()),
        ),
        (
            ResponseTemplate::new(429)
                .insert_header("retry-after", "7")
                .set_body_json(json!({"status": 429, "message": "Too Many Requests"})),
            Error::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
            },
        ),
        (
            ResponseTemplate::new(500)
                .set_body_json(json!({"status": 500, "message": "Internal Server Error"})),
            Error::Server {
                status: 500,
                message: "Internal Server Error".into(),
            },
        ),
        (
            ResponseTemplate::new(422)
                .set_body_json(json!({"status": 422, "message": "Invalid params"})),
            Error::BadRequest {
                status: 422,
                message: "Invalid params".into(),
            },
        ),
    ];
    for (response, expected) in cases {
        let server = MockServer::start().await;
        mount_token(&server, "access-1", 1).await;
        // The client makes one attempt; retrying is the router's decision.
        mount_chat(&server, response, 1).await;
        assert_eq!(
            client(&server).chat(&request()).await.unwrap_err(),
            expected
        );
    }
}

#[tokio::test]
async fn a_streaming_error_status_is_read_as_json() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    mount_chat(
        &server,
        ResponseTemplate::new(429)
            .insert_header("retry-after", "2")
            .set_body_json(json!({"status": 429, "message": "Too many concurrent streams"})),
        1,
    )
    .await;

    let error = client(&server).chat_stream(&request()).await.err().unwrap();
    assert_eq!(
        error,
        Error::RateLimited {
            retry_after: Some(Duration::from_secs(2))
        }
    );
}

#[tokio::test]
async fn malformed_json_is_a_clear_error() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    mount_chat(
        &server,
        ResponseTemplate::new(200).set_body_raw("{\"choices\": [", "application/json"),
        1,
    )
    .await;

    let error = client(&server).chat(&request()).await.unwrap_err();
    assert!(
        matches!(&error, Error::Malformed(m) if m.starts_with("chat completion")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_stream_cut_before_finish_reason_is_malformed() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    let body = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"Кон\"},\"index\":0}],\"model\":\"GigaChat-2\"}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"ечно\"},\"index\":0}],\"model\":\"GigaChat-2\"}\n\n",
    );
    mount_chat(
        &server,
        ResponseTemplate::new(200).set_body_raw(body, "text/event-stream"),
        1,
    )
    .await;

    let events: Vec<Result<StreamEvent, Error>> = client(&server)
        .chat_stream(&request())
        .await
        .unwrap()
        .collect()
        .await;

    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0], Ok(StreamEvent::Delta("Кон".into())));
    assert_eq!(events[1], Ok(StreamEvent::Delta("ечно".into())));
    assert!(matches!(&events[2], Err(Error::Malformed(_))), "{events:?}");
}

#[tokio::test]
async fn a_garbled_stream_chunk_is_malformed() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    mount_chat(
        &server,
        ResponseTemplate::new(200).set_body_raw(
            "data: {\"choices\": [\n\ndata: [DONE]\n\n",
            "text/event-stream",
        ),
        1,
    )
    .await;

    let events: Vec<Result<StreamEvent, Error>> = client(&server)
        .chat_stream(&request())
        .await
        .unwrap()
        .collect()
        .await;
    assert!(
        matches!(events.as_slice(), [Err(Error::Malformed(_))]),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    mount_chat(
        &server,
        ResponseTemplate::new(200)
            .set_body_json(completion("late", "stop"))
            .set_delay(Duration::from_secs(3)),
        1,
    )
    .await;

    let client = client_with(&config(&server), Duration::from_millis(200));
    assert_eq!(client.chat(&request()).await.unwrap_err(), Error::Timeout);
}

#[tokio::test]
async fn tokens_are_counted_for_the_configured_model() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    Mock::given(method("POST"))
        .and(path("/api/v1/tokens/count"))
        .and(header("authorization", "Bearer access-1"))
        .and(body_json(
            json!({"model": "GigaChat-2", "input": ["Текст один"]}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"object": "tokens", "tokens": 7, "characters": 36}])),
        )
        .expect(1)
        .mount(&server)
        .await;

    assert_eq!(client(&server).count_tokens("Текст один").await.unwrap(), 7);
}

#[tokio::test]
async fn check_gets_a_token_and_lists_models() {
    let server = MockServer::start().await;
    mount_token(&server, "access-1", 1).await;
    Mock::given(method("GET"))
        .and(path("/api/v1/models"))
        .and(header("authorization", "Bearer access-1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": []})),
        )
        .expect(1)
        .mount(&server)
        .await;

    client(&server).check().await.unwrap();
}

#[tokio::test]
async fn without_a_key_the_provider_is_not_configured() {
    let server = MockServer::start().await;
    let cfg = config::GigaChat {
        api_key: None,
        ..config(&server)
    };
    let error = Client::new(&cfg, Path::new("/nonexistent"), Duration::from_secs(1))
        .err()
        .unwrap();
    assert_eq!(
        error,
        Error::NotConfigured("GIGACHAT_API_KEY is not set".into())
    );
}

/// A fake GigaChat over real TLS: a CA made here, a server certificate it signed for
/// `localhost` and `127.0.0.1`, and the token, chat and models routes.
struct TlsFake {
    port: u16,
    ca_pem: String,
    ca_der: Vec<u8>,
}

impl TlsFake {
    async fn start() -> TlsFake {
        use axum::Json;
        use axum::routing::{get, post};
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Test Trusted Root CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
            )
            .unwrap();

        let app = axum::Router::new()
            .route(
                TOKEN_PATH,
                post(|| async {
                    Json(json!({"access_token": "tls-token", "expires_at": ms_from_now(30 * 60)}))
                }),
            )
            .route(
                CHAT_PATH,
                post(|| async { Json(completion("по TLS", "stop")) }),
            )
            .route(
                "/api/v1/models",
                get(|| async { Json(json!({"object": "list", "data": []})) }),
            );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
        )
        .unwrap();
        tokio::spawn(server.serve(app.into_make_service()));

        TlsFake {
            port,
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
        }
    }

    /// Tokens from `localhost`, chat from `127.0.0.1`: both names of the certificate.
    fn config(&self, ca_cert: Option<&Path>) -> config::GigaChat {
        config::GigaChat {
            api_key: Some(Secret::new(KEY)),
            auth_url: format!("https://localhost:{}{TOKEN_PATH}", self.port),
            base_url: format!("https://127.0.0.1:{}/api/v1", self.port),
            ca_cert: ca_cert.map(Path::to_path_buf),
            ..Default::default()
        }
    }
}

#[tokio::test]
async fn real_tls_works_with_the_ca_as_pem() {
    let fake = TlsFake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &fake.ca_pem).unwrap();

    let client = Client::new(&fake.config(Some(&ca)), dir.path(), Duration::from_secs(5)).unwrap();
    assert_eq!(client.ca_cert_path(), Some(ca.as_path()));
    assert_eq!(client.chat(&request()).await.unwrap().text, "по TLS");
    client.check().await.unwrap();
}

#[tokio::test]
async fn real_tls_works_with_the_ca_as_der_at_the_default_path() {
    let fake = TlsFake::start().await;
    let data_dir = tempfile::tempdir().unwrap();
    let default = data_dir
        .path()
        .join("certificates/russian_trusted_root_ca.cer");
    std::fs::create_dir_all(default.parent().unwrap()).unwrap();
    std::fs::write(&default, &fake.ca_der).unwrap();

    let client = Client::new(&fake.config(None), data_dir.path(), Duration::from_secs(5)).unwrap();
    assert_eq!(client.ca_cert_path(), Some(default.as_path()));
    assert_eq!(client.chat(&request()).await.unwrap().text, "по TLS");
}

#[tokio::test]
async fn real_tls_without_the_ca_is_a_certificate_error() {
    let fake = TlsFake::start().await;
    let data_dir = tempfile::tempdir().unwrap();

    let client = Client::new(&fake.config(None), data_dir.path(), Duration::from_secs(5)).unwrap();
    assert_eq!(client.ca_cert_path(), None);
    let error = client.chat(&request()).await.unwrap_err();
    let Error::Connect(message) = &error else {
        panic!("expected a connection error, got {error:?}")
    };
    let message = message.to_lowercase();
    assert!(
        message.contains("certificate") || message.contains("tls"),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_or_invalid_ca_file_is_named_plainly() {
    let fake = TlsFake::start().await;
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("no-such-ca.pem");
    let error = Client::new(
        &fake.config(Some(&missing)),
        dir.path(),
        Duration::from_secs(1),
    )
    .err()
    .unwrap();
    let Error::NotConfigured(message) = &error else {
        panic!("{error:?}")
    };
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );

    let garbage = dir.path().join("garbage.cer");
    std::fs::write(&garbage, b"this is not a certificate").unwrap();
    let error = Client::new(
        &fake.config(Some(&garbage)),
        dir.path(),
        Duration::from_secs(1),
    )
    .err()
    .unwrap();
    let Error::NotConfigured(message) = &error else {
        panic!("{error:?}")
    };
    assert!(
        message.contains(&garbage.display().to_string()),
        "{message}"
    );

    let no_cert = dir.path().join("key-only.pem");
    std::fs::write(
        &no_cert,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let error = Client::new(
        &fake.config(Some(&no_cert)),
        dir.path(),
        Duration::from_secs(1),
    )
    .err()
    .unwrap();
    let Error::NotConfigured(message) = &error else {
        panic!("{error:?}")
    };
    assert!(
        message.contains(&no_cert.display().to_string()),
        "{message}"
    );
}
