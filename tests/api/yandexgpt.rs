//! The YandexGPT client against a fake Foundation Models API on loopback: request shape and
//! headers, string-typed counters, newline-delimited cumulative streaming, and how every
//! failure is classified.

use std::io::{Read, Write};
use std::time::Duration;

use easy_writer::config::{self, Secret};
use easy_writer::llm::yandexgpt::Client;
use easy_writer::llm::{
    ChatRequest, ChatResponse, ChatStream, Error, Provider, Quality, StreamEvent, Usage,
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use wiremock::matchers::{body_json, body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const FOLDER: &str = "b1gtestfolder";
const API_KEY: &str = "AQVN-test-api-key";
const IAM_TOKEN: &str = "t1.test-iam-token";

/// Settings with an API key and the folder, pointed at `base_url`.
fn settings(base_url: &str) -> config::YandexGpt {
    config::YandexGpt {
        api_key: Some(Secret::new(API_KEY)),
        folder_id: Some(FOLDER.into()),
        base_url: base_url.to_owned(),
        ..Default::default()
    }
}

fn client(server: &MockServer) -> Client {
    Client::new(&settings(&server.uri()), Duration::from_secs(5)).expect("client")
}

fn request() -> ChatRequest {
    ChatRequest {
        system: "Ты редактор.".into(),
        user: "Исправь ошибки: превет".into(),
        ..Default::default()
    }
}

/// One answer object as the API sends it, counters as strings.
fn answer(text: &str, status: &str, usage: [&str; 3]) -> Value {
    json!({"result": {
        "alternatives": [{"message": {"role": "assistant", "text": text}, "status": status}],
        "usage": {"inputTextTokens": usage[0], "completionTokens": usage[1], "totalTokens": usage[2]},
        "modelVersion": "23.10.2024",
    }})
}

/// Newline-delimited objects, as the streaming endpoint sends them.
fn ndjson(objects: &[Value]) -> String {
    objects.iter().map(|o| format!("{o}\n")).collect()
}

/// Mounts one `/completion` answer that must be asked for exactly once.
async fn answer_once(server: &MockServer, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path("/completion"))
        .respond_with(response)
        .expect(1)
        .mount(server)
        .await;
}

async fn chat_error(server: &MockServer) -> Error {
    client(server)
        .chat(&request())
        .await
        .expect_err("the call should fail")
}

/// The deltas of a stream and how it ended.
async fn collect(mut stream: ChatStream) -> (Vec<String>, Result<ChatResponse, Error>) {
    let mut deltas = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(StreamEvent::Delta(delta)) => deltas.push(delta),
            Ok(StreamEvent::Done(response)) => {
                assert!(stream.next().await.is_none(), "nothing may follow Done");
                return (deltas, Ok(response));
            }
            Err(e) => return (deltas, Err(e)),
        }
    }
    panic!("the stream ended without Done or an error; deltas: {deltas:?}");
}

#[tokio::test]
async fn chat_sends_api_key_quick_model_uri_string_max_tokens_and_text_messages() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/completion"))
        .and(header(
            "authorization",
            format!("Api-Key {API_KEY}").as_str(),
        ))
        .and(header("x-data-logging-enabled", "false"))
        .and(|r: &Request| !r.headers.contains_key("x-folder-id"))
        .and(body_json(json!({
            "modelUri": format!("gpt://{FOLDER}/yandexgpt-lite/latest"),
            "completionOptions": {"stream": false, "temperature": 0.3, "maxTokens": "300"},
            "messages": [
                {"role": "system", "text": "Ты редактор."},
                {"role": "user", "text": "Исправь ошибки: превет"},
            ],
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer(
            "Привет",
            "ALTERNATIVE_STATUS_FINAL",
            ["27", "18", "45"],
        )))
        .expect(1)
        .mount(&server)
        .await;

    let response = client(&server)
        .chat(&ChatRequest {
            temperature: Some(0.3),
            max_tokens: Some(300),
            ..request()
        })
        .await
        .expect("chat");

    assert_eq!(
        response,
        ChatResponse {
            text: "Привет".into(),
            usage: Usage {
                prompt_tokens: 27,
                completion_tokens: 18,
                total_tokens: 45
            },
            model: "yandexgpt-lite/latest@23.10.2024".into(),
            truncated: false,
        }
    );
}

#[tokio::test]
async fn iam_token_sends_bearer_and_folder_and_standard_quality_uses_the_quality_model() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/completion"))
        .and(header(
            "authorization",
            format!("Bearer {IAM_TOKEN}").as_str(),
        ))
        .and(header("x-folder-id", FOLDER))
        .and(header("x-data-logging-enabled", "false"))
        .and(body_partial_json(json!({
            "modelUri": format!("gpt://{FOLDER}/yandexgpt/latest"),
            "completionOptions": {"stream": false},
        })))
        // Counters as JSON numbers are read too.
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {
            "alternatives": [{"message": {"role": "assistant", "text": "Ответ"},
                              "status": "ALTERNATIVE_STATUS_FINAL"}],
            "usage": {"inputTextTokens": 10, "completionTokens": 5, "totalTokens": 15},
            "modelVersion": "01.01.2025",
        }})))
        .expect(1)
        .mount(&server)
        .await;
    let cfg = config::YandexGpt {
        api_key: None,
        iam_token: Some(Secret::new(IAM_TOKEN)),
        ..settings(&server.uri())
    };
    let client = Client::new(&cfg, Duration::from_secs(5)).expect("client");

    let response = client
        .chat(&ChatRequest {
            quality: Quality::Standard,
            ..request()
        })
        .await
        .expect("chat");

    assert_eq!(response.text, "Ответ");
    assert_eq!(
        response.usage,
        Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            total_tokens: 15
        }
    );
    assert_eq!(response.model, "yandexgpt/latest@01.01.2025");
}

#[tokio::test]
async fn api_key_wins_over_iam_token_and_request_model_overrides_with_its_branch() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/completion"))
        .and(header(
            "authorization",
            format!("Api-Key {API_KEY}").as_str(),
        ))
        .and(body_partial_json(
            json!({"modelUri": format!("gpt://{FOLDER}/yandexgpt/rc")}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer(
            "Да",
            "ALTERNATIVE_STATUS_FINAL",
            ["1", "1", "2"],
        )))
        .expect(1)
        .mount(&server)
        .await;
    let cfg = config::YandexGpt {
        iam_token: Some(Secret::new(IAM_TOKEN)),
        ..settings(&server.uri())
    };
    let client = Client::new(&cfg, Duration::from_secs(5)).expect("client");

    let response = client
        .chat(&ChatRequest {
            model: Some("yandexgpt/rc".into()),
            ..request()
        })
        .await
        .expect("chat");
    assert_eq!(response.model, "yandexgpt/rc@23.10.2024");
}

#[tokio::test]
async fn truncated_final_is_a_truncated_success() {
    let server = MockServer::start().await;
    answer_once(
        &server,
        ResponseTemplate::new(200).set_body_json(answer(
            "Начало ответа",
            "ALTERNATIVE_STATUS_TRUNCATED_FINAL",
            ["5", "2", "7"],
        )),
    )
    .await;

    let response = client(&server).chat(&request()).await.expect("chat");
    assert!(response.truncated);
    assert_eq!(response.text, "Начало ответа");
}

#[tokio::test]
async fn content_filter_is_refused() {
    let server = MockServer::start().await;
    answer_once(
        &server,
        ResponseTemplate::new(200).set_body_json(answer(
            "Я не могу обсуждать эту тему.",
            "ALTERNATIVE_STATUS_CONTENT_FILTER",
            ["5", "6", "11"],
        )),
    )
    .await;

    assert!(matches!(chat_error(&server).await, Error::Refused(_)));
}

#[tokio::test]
async fn both_error_body_shapes_give_their_message() {
    let server = MockServer::start().await;
    answer_once(
        &server,
        ResponseTemplate::new(400).set_body_json(json!({"error": {
            "grpcCode": 3, "httpCode": 400, "message": "invalid model_uri", "httpStatus": "Bad Request",
            "details": [],
        }})),
    )
    .await;
    assert_eq!(
        chat_error(&server).await,
        Error::BadRequest {
            status: 400,
            message: "invalid model_uri".into()
        }
    );

    let server = MockServer::start().await;
    answer_once(
        &server,
        ResponseTemplate::new(403).set_body_json(json!({
            "code": 7, "message": "Permission denied to folder", "details": [],
        })),
    )
    .await;
    assert_eq!(
        chat_error(&server).await,
        Error::Auth("Permission denied to folder".into())
    );
}

#[tokio::test]
async fn http_statuses_are_classified() {
    let server = MockServer::start().await;
    answer_once(
        &server,
        ResponseTemplate::new(401).set_body_json(json!({"error": {"grpcCode": 16, "httpCode": 401,
            "message": "Unknown api key", "httpStatus": "Unauthorized"}})),
    )
    .await;
    assert_eq!(
        chat_error(&server).await,
        Error::Auth("Unknown api key".into())
    );

    let server = MockServer::start().await;
    answer_once(
        &server,
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "2")
            .set_body_json(
                json!({"error": {"grpcCode": 8, "httpCode": 429, "message": "quota exceeded"}}),
            ),
    )
    .await;
    assert_eq!(
        chat_error(&server).await,
        Error::RateLimited {
            retry_after: Some(Duration::from_secs(2))
        }
    );

    let server = MockServer::start().await;
    answer_once(
        &server,
        ResponseTemplate::new(500).set_body_string("upstream exploded"),
    )
    .await;
    assert_eq!(
        chat_error(&server).await,
        Error::Server {
            status: 500,
            message: "upstream exploded".into()
        }
    );

    let server = MockServer::start().await;
    answer_once(&server, ResponseTemplate::new(400)).await;
    assert!(matches!(
        chat_error(&server).await,
        Error::BadRequest { status: 400, .. }
    ));
}

#[tokio::test]
async fn malformed_answers_are_malformed_errors() {
    let bodies = [
        "not json at all".to_owned(),
        r#"{"result": {"alternatives": [{"message": {"text": "обры"#.to_owned(),
        json!({"result": {"alternatives": []}}).to_string(),
        json!({"something": "else"}).to_string(),
        answer("", "ALTERNATIVE_STATUS_FINAL", ["1", "0", "1"]).to_string(),
        answer("Привет", "ALTERNATIVE_STATUS_PARTIAL", ["1", "1", "2"]).to_string(),
        answer("Привет", "ALTERNATIVE_STATUS_FINAL", ["many", "1", "2"]).to_string(),
    ];
    for body in bodies {
        let server = MockServer::start().await;
        answer_once(
            &server,
            ResponseTemplate::new(200).set_body_raw(body.clone(), "application/json"),
        )
        .await;
        let error = chat_error(&server).await;
        assert!(
            matches!(error, Error::Malformed(_)),
            "{body} gave {error:?}"
        );
    }
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    let server = MockServer::start().await;
    answer_once(
        &server,
        ResponseTemplate::new(200)
            .set_body_json(answer(
                "Поздно",
                "ALTERNATIVE_STATUS_FINAL",
                ["1", "1", "2"],
            ))
            .set_delay(Duration::from_millis(600)),
    )
    .await;
    let client = Client::new(&settings(&server.uri()), Duration::from_millis(100)).expect("client");

    assert_eq!(
        client.chat(&request()).await.expect_err("timeout"),
        Error::Timeout
    );
}

#[tokio::test]
async fn stream_turns_cumulative_objects_into_deltas_with_usage_from_the_last() {
    let server = MockServer::start().await;
    let body = ndjson(&[
        answer("При", "ALTERNATIVE_STATUS_PARTIAL", ["12", "1", "13"]),
        answer("Привет", "ALTERNATIVE_STATUS_PARTIAL", ["12", "2", "14"]),
        answer("Привет", "ALTERNATIVE_STATUS_PARTIAL", ["12", "2", "14"]),
    ]) + "\n"
        + &ndjson(&[answer(
            "Привет, мир!",
            "ALTERNATIVE_STATUS_FINAL",
            ["12", "4", "16"],
        )]);
    Mock::given(method("POST"))
        .and(path("/completion"))
        .and(header(
            "authorization",
            format!("Api-Key {API_KEY}").as_str(),
        ))
        .and(body_partial_json(json!({
            "modelUri": format!("gpt://{FOLDER}/yandexgpt-lite/latest"),
            "completionOptions": {"stream": true},
        })))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .expect(1)
        .mount(&server)
        .await;

    let stream = client(&server)
        .chat_stream(&request())
        .await
        .expect("stream");
    let (deltas, done) = collect(stream).await;

    assert_eq!(deltas, ["При", "вет", ", мир!"]);
    assert_eq!(
        done.expect("done"),
        ChatResponse {
            text: "Привет, мир!".into(),
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 4,
                total_tokens: 16
            },
            model: "yandexgpt-lite/latest@23.10.2024".into(),
            truncated: false,
        }
    );
}

#[tokio::test]
async fn stream_appends_objects_that_do_not_continue_the_text() {
    let server = MockServer::start().await;
    let body = ndjson(&[
        answer("Привет", "ALTERNATIVE_STATUS_PARTIAL", ["3", "1", "4"]),
        answer(", мир", "ALTERNATIVE_STATUS_PARTIAL", ["3", "2", "5"]),
        answer("!", "ALTERNATIVE_STATUS_TRUNCATED_FINAL", ["3", "3", "6"]),
    ]);
    answer_once(
        &server,
        ResponseTemplate::new(200).set_body_raw(body, "application/json"),
    )
    .await;

    let (deltas, done) = collect(
        client(&server)
            .chat_stream(&request())
            .await
            .expect("stream"),
    )
    .await;

    assert_eq!(deltas, ["Привет", ", мир", "!"]);
    let done = done.expect("done");
    assert_eq!(done.text, "Привет, мир!");
    assert!(done.truncated);
}

/// A one-shot HTTP server that writes `body` a few bytes at a time, so objects (and UTF-8
/// characters) are split across reads.
fn trickling_server(body: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accept");
        socket.set_nodelay(true).expect("nodelay");
        let mut request = Vec::new();
        let mut buf = [0; 4096];
        let head_end = loop {
            let n = socket.read(&mut buf).expect("read");
            assert!(n > 0, "the client hung up");
            request.extend_from_slice(&buf[..n]);
            if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&request[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().expect("content-length"));
        while request.len() < head_end + length {
            let n = socket.read(&mut buf).expect("read body");
            request.extend_from_slice(&buf[..n]);
        }
        socket
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
            )
            .expect("write head");
        for piece in body.as_bytes().chunks(11) {
            socket.write_all(piece).expect("write piece");
            socket.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn stream_objects_split_across_reads_are_reassembled() {
    let body = ndjson(&[
        answer(
            "Съешь же ещё",
            "ALTERNATIVE_STATUS_PARTIAL",
            ["8", "3", "11"],
        ),
        answer(
            "Съешь же ещё этих мягких",
            "ALTERNATIVE_STATUS_PARTIAL",
            ["8", "6", "14"],
        ),
        answer(
            "Съешь же ещё этих мягких булок",
            "ALTERNATIVE_STATUS_FINAL",
            ["8", "7", "15"],
        ),
    ]);
    let base_url = trickling_server(body);
    let client = Client::new(&settings(&base_url), Duration::from_secs(5)).expect("client");

    let (deltas, done) = collect(client.chat_stream(&request()).await.expect("stream")).await;

    assert_eq!(deltas, ["Съешь же ещё", " этих мягких", " булок"]);
    let done = done.expect("done");
    assert_eq!(done.text, "Съешь же ещё этих мягких булок");
    assert_eq!(done.usage.total_tokens, 15);
}

#[tokio::test]
async fn stream_that_stops_early_is_malformed_after_its_deltas() {
    let server = MockServer::start().await;
    let body = ndjson(&[
        answer("Один", "ALTERNATIVE_STATUS_PARTIAL", ["2", "1", "3"]),
        answer("Один два", "ALTERNATIVE_STATUS_PARTIAL", ["2", "2", "4"]),
    ]);
    answer_once(
        &server,
        ResponseTemplate::new(200).set_body_raw(body, "application/json"),
    )
    .await;

    let (deltas, done) = collect(
        client(&server)
            .chat_stream(&request())
            .await
            .expect("stream"),
    )
    .await;
    assert_eq!(deltas, ["Один", " два"]);
    assert!(matches!(done, Err(Error::Malformed(_))), "{done:?}");

    // Cut in the middle of an object.
    let server = MockServer::start().await;
    let whole = ndjson(&[answer(
        "Один",
        "ALTERNATIVE_STATUS_PARTIAL",
        ["2", "1", "3"],
    )]);
    let cut = answer("Один два", "ALTERNATIVE_STATUS_FINAL", ["2", "2", "4"]).to_string();
    let body = whole + &cut[..cut.len() / 2];
    answer_once(
        &server,
        ResponseTemplate::new(200).set_body_raw(body, "application/json"),
    )
    .await;

    let (deltas, done) = collect(
        client(&server)
            .chat_stream(&request())
            .await
            .expect("stream"),
    )
    .await;
    assert_eq!(deltas, ["Один"]);
    assert!(matches!(done, Err(Error::Malformed(_))), "{done:?}");
}

#[tokio::test]
async fn stream_failures_are_classified() {
    // An HTTP error is reported before any streaming starts.
    let server = MockServer::start().await;
    answer_once(
        &server,
        ResponseTemplate::new(429).insert_header("Retry-After", "1"),
    )
    .await;
    let error = client(&server)
        .chat_stream(&request())
        .await
        .err()
        .expect("an error");
    assert_eq!(
        error,
        Error::RateLimited {
            retry_after: Some(Duration::from_secs(1))
        }
    );

    // The content filter stops an answer that has started; its canned text is not yielded.
    let server = MockServer::start().await;
    let body = ndjson(&[
        answer("Начнём", "ALTERNATIVE_STATUS_PARTIAL", ["2", "1", "3"]),
        answer(
            "Я не могу",
            "ALTERNATIVE_STATUS_CONTENT_FILTER",
            ["2", "2", "4"],
        ),
    ]);
    answer_once(
        &server,
        ResponseTemplate::new(200).set_body_raw(body, "application/json"),
    )
    .await;
    let (deltas, done) = collect(
        client(&server)
            .chat_stream(&request())
            .await
            .expect("stream"),
    )
    .await;
    assert_eq!(deltas, ["Начнём"]);
    assert!(matches!(done, Err(Error::Refused(_))), "{done:?}");

    // An error object after the stream started, with only a gRPC code.
    let server = MockServer::start().await;
    let body = ndjson(&[
        answer("Начнём", "ALTERNATIVE_STATUS_PARTIAL", ["2", "1", "3"]),
        json!({"error": {"grpcCode": 13, "message": "Internal error"}}),
    ]);
    answer_once(
        &server,
        ResponseTemplate::new(200).set_body_raw(body, "application/json"),
    )
    .await;
    let (_, done) = collect(
        client(&server)
            .chat_stream(&request())
            .await
            .expect("stream"),
    )
    .await;
    assert_eq!(
        done,
        Err(Error::Server {
            status: 500,
            message: "Internal error".into()
        })
    );
}

#[tokio::test]
async fn not_configured_without_folder_or_credentials() {
    let no_folder = config::YandexGpt {
        folder_id: None,
        ..settings("http://127.0.0.1:9")
    };
    let error = Client::new(&no_folder, Duration::from_secs(1))
        .err()
        .expect("an error");
    assert_eq!(
        error,
        Error::NotConfigured("YANDEXGPT_FOLDER_ID is not set".into())
    );

    let no_credentials = config::YandexGpt {
        api_key: None,
        iam_token: None,
        ..settings("http://127.0.0.1:9")
    };
    match Client::new(&no_credentials, Duration::from_secs(1)).err() {
        Some(Error::NotConfigured(message)) => {
            assert!(
                message.contains("YANDEXGPT_API_KEY") && message.contains("YANDEXGPT_IAM_TOKEN"),
                "{message}"
            );
        }
        other => panic!("expected NotConfigured, got {other:?}"),
    }
}

#[tokio::test]
async fn count_tokens_tokenizes_with_the_quick_model() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/tokenize"))
        .and(header(
            "authorization",
            format!("Api-Key {API_KEY}").as_str(),
        ))
        .and(body_json(json!({
            "modelUri": format!("gpt://{FOLDER}/yandexgpt-lite/latest"),
            "text": "Привет, мир",
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "tokens": [
                {"id": "1", "text": "Привет", "special": false},
                {"id": "2", "text": ",", "special": false},
                {"id": "3", "text": " мир", "special": false},
            ],
            "modelVersion": "23.10.2024",
        })))
        .expect(1)
        .mount(&server)
        .await;

    assert_eq!(
        client(&server)
            .count_tokens("Привет, мир")
            .await
            .expect("count"),
        3
    );
}

#[tokio::test]
async fn check_tokenizes_once_and_reports_a_bad_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/tokenize"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"tokens": [{"id": "1"}]})))
        .expect(1)
        .mount(&server)
        .await;
    client(&server).check().await.expect("check");

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/tokenize"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {
            "grpcCode": 16, "httpCode": 401, "message": "Unknown api key", "httpStatus": "Unauthorized",
        }})))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(
        client(&server).check().await,
        Err(Error::Auth("Unknown api key".into()))
    );
}
