//! The attacks of issue 10, each as the attacker would send it: concurrent guesses, huge
//! emails, cross-site form posts, forged proxy headers, absurd provider headers, a kill -9
//! under an idempotency key, half-sent requests and malformed queries.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::fake_llm::{FakeLlm, Reply};
use crate::helpers::{
    PASSWORD, ServerProcess, TestApp, builder, email, expect_error, get_at, register_at,
};

/// Statuses of `n` concurrent logins for `address` from `forwarded_for` (through a trusted
/// proxy on 127.0.0.1).
async fn concurrent_logins(
    app: &TestApp,
    n: usize,
    address: impl Fn(usize) -> String,
    password: &str,
    forwarded_for: &str,
) -> Vec<u16> {
    let requests = (0..n).map(|i| {
        app.client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", forwarded_for)
            .json(&json!({"email": address(i), "password": password}))
            .send()
    });
    join_all(requests)
        .await
        .into_iter()
        .map(|r| r.expect("request").status().as_u16())
        .collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_guesses_for_one_email_get_five_answers_and_the_owner_elsewhere_gets_in() {
    let app = builder()
        .env("EASY_WRITER_TRUSTED_PROXIES", "127.0.0.1")
        .spawn()
        .await;
    let victim = app.register(&email("victim")).await;
    let statuses = concurrent_logins(
        &app,
        40,
        |_| victim.email.clone(),
        "wrong password",
        "203.0.113.66",
    )
    .await;
    assert_eq!(count(&statuses, 401), 5, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 35, "{statuses:?}");
    // The right password from the guesser's address is refused too, for the window.
    let right = concurrent_logins(&app, 1, |_| victim.email.clone(), PASSWORD, "203.0.113.66");
    assert_eq!(right.await, [429]);
    // The owner, from their own address, is not locked out by someone guessing their email.
    let owner = concurrent_logins(&app, 1, |_| victim.email.clone(), PASSWORD, "198.51.100.7");
    assert_eq!(owner.await, [200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_from_one_ip_stop_at_its_limit() {
    let app = builder()
        .env("EASY_WRITER_TRUSTED_PROXIES", "127.0.0.1")
        .env("EASY_WRITER_LOGIN_MAX_FAILURES_PER_IP", 10)
        .spawn()
        .await;
    let statuses = concurrent_logins(
        &app,
        60,
        |i| format!("nobody{i}@example.com"),
        "wrong password",
        "203.0.113.9",
    )
    .await;
    assert_eq!(count(&statuses, 401), 10, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 50, "{statuses:?}");
    let other = concurrent_logins(&app, 1, |_| "x@example.com".into(), "nope", "203.0.113.10");
    assert_eq!(other.await, [401], "another address is not affected");
}

#[tokio::test]
async fn a_correct_password_does_not_count_against_its_address() {
    let app = builder()
        .env("EASY_WRITER_LOGIN_MAX_FAILURES_PER_IP", 3)
        .spawn()
        .await;
    let user = app.register(&email("office")).await;
    for _ in 0..10 {
        assert_eq!(app.login(&user.email, PASSWORD).await.status(), 200);
    }
    assert_eq!(app.login(&user.email, "wrong one").await.status(), 401);
}

#[tokio::test]
async fn registrations_per_ip_are_limited() {
    let app = builder()
        .env("EASY_WRITER_REGISTER_MAX_PER_IP", 3)
        .spawn()
        .await;
    for _ in 0..3 {
        app.register(&email("farm")).await;
    }
    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"email": email("farm"), "password": PASSWORD}),
        )
        .await;
    assert!(response.headers().get("retry-after").is_some());
    expect_error(response, 429, "too_many_attempts").await;
    let users: i64 = rusqlite::Connection::open(app.database_path())
        .unwrap()
        .query_row("select count(*) from users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(users, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_concurrent_current_password_guesses_get_five_answers() {
    let app = builder().spawn().await;
    let user = app.register(&email("pw")).await;
    let guesses = (0..60).map(|i| {
        app.client
            .put(app.url("/api/v1/user/password"))
            .bearer_auth(&user.access_token)
            .json(&json!({"current_password": format!("guess number {i}"), "new_password": "a new long password"}))
            .send()
    });
    let statuses: Vec<u16> = join_all(guesses)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(count(&statuses, 400), 5, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 55, "{statuses:?}");
    // The password is unchanged.
    assert_eq!(app.login(&user.email, PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn huge_emails_are_refused_before_they_are_remembered() {
    let app = builder().spawn().await;
    let huge = "a".repeat(256 * 1024) + "@example.com";
    for _ in 0..5 {
        let response = app.login(&huge, "whatever password").await;
        expect_error(response, 422, "validation_error").await;
    }
    let response = app.login(&"b".repeat(300), "whatever password").await;
    expect_error(response, 422, "validation_error").await;
    // 255 characters is still a login attempt, not a validation error.
    let long = format!("{}@example.com", "c".repeat(243));
    assert_eq!(long.chars().count(), 255);
    expect_error(
        app.login(&long, "whatever").await,
        401,
        "invalid_credentials",
    )
    .await;
}

#[tokio::test]
async fn json_endpoints_refuse_other_content_types_and_change_nothing() {
    let app = builder().spawn().await;
    let user = app.register(&email("csrf")).await;
    let body = json!({"email": user.email, "password": PASSWORD}).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut request = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert!(response.headers().get("set-cookie").is_none());
        expect_error(response, 415, "unsupported_media_type").await;
    }
    let registered = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .header("content-type", "text/plain")
        .body(json!({"email": email("csrf2"), "password": PASSWORD}).to_string())
        .send()
        .await
        .unwrap();
    expect_error(registered, 415, "unsupported_media_type").await;
    let ok = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn a_forwarded_for_header_that_does_not_parse_is_not_the_proxy() {
    let app = builder()
        .env("EASY_WRITER_TRUSTED_PROXIES", "127.0.0.1")
        .spawn()
        .await;
    for forged in ["203.0.113.9,", "unknown", "", "203.0.113.9, nonsense"] {
        let response = app
            .client
            .get(app.url("/metrics"))
            .header("x-forwarded-for", forged)
            .send()
            .await
            .unwrap();
        expect_error(response, 401, "not_authenticated").await;
    }
    let proxied = app
        .client
        .get(app.url("/metrics"))
        .header("x-forwarded-for", "127.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200, "a loopback client behind the proxy");
    let direct = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(direct.status(), 200, "the proxy's own request");
}

#[tokio::test]
async fn offsets_past_a_million_and_repeated_parameters_are_json_422_or_400() {
    let app = builder().spawn().await;
    let user = app.register(&email("offset")).await;
    for query in ["offset=9223372036854775807", "offset=1000001"] {
        let response = app
            .get_authed(
                &format!("/api/v1/user/transactions?{query}"),
                &user.access_token,
            )
            .await;
        expect_error(response, 422, "validation_error").await;
    }
    let response = app
        .get_authed(
            "/api/v1/user/transactions?offset=1000000",
            &user.access_token,
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["pagination"]["has_more"], false);

    let response = app
        .get_authed(
            "/api/v1/generation/sessions?status=failed&status=completed",
            &user.access_token,
        )
        .await;
    assert!(response.status().is_client_error());
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert!(
        body["code"].is_string() && body.get("detail").is_some(),
        "{body}"
    );
}

#[tokio::test]
async fn a_plain_get_on_a_websocket_path_is_answered_in_json() {
    let app = builder().spawn().await;
    let response = app
        .client
        .get(app.url("/ws/generation/0192f0c2-0000-7000-8000-000000000000"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert!(body["code"].is_string(), "{body}");
}

#[tokio::test]
async fn a_half_sent_request_head_is_cut_off() {
    let app = builder()
        .env("EASY_WRITER_HEADER_TIMEOUT_SECS", 1)
        .spawn()
        .await;
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was still open after 10 s");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    // A whole request on a fresh connection is served as usual.
    assert_eq!(
        app.client
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// A quick run whose only provider rate-limits with `Retry-After: 1e20`.
#[tokio::test]
async fn an_absurd_retry_after_fails_the_run_cleanly_and_refunds_it() {
    let app = builder()
        .upstream("OPENAI_BASE_URL")
        .env("OPENAI_API_KEY", "sk-test")
        .env("EASY_WRITER_RETRY_BASE_MS", 5)
        .spawn()
        .await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1e20")
                .set_body_json(json!({"error": {"message": "slow down", "type": "rate_limit"}})),
        )
        .mount(&app.upstreams["OPENAI_BASE_URL"])
        .await;
    let user = app.register(&email("retry")).await;
    app.topup(&user.user_id, 50).await;
    let response = app
        .post_authed(
            "/api/v1/tools/spell_check/execute",
            &user.access_token,
            &json!({"input": {"text": "Превет"}}),
        )
        .await;
    let body = expect_error(response, 503, "providers_unavailable").await;
    assert_eq!(body["session"]["status"], "failed");
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (50, 50));
}

#[tokio::test]
async fn refused_content_and_bad_requests_do_not_open_the_breaker() {
    let app = builder()
        .upstream("OPENAI_BASE_URL")
        .env("OPENAI_API_KEY", "sk-test")
        .env("EASY_WRITER_RETRY_BASE_MS", 5)
        .env("EASY_WRITER_BREAKER_FAILURES", 2)
        .spawn()
        .await;
    let fake = &app.upstreams["OPENAI_BASE_URL"];
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": {"message": "bad request", "type": "invalid_request_error"}}),
        ))
        .up_to_n_times(3)
        .mount(fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": r#"{"text": "Привет.", "edits": []}"#}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
        })))
        .mount(fake)
        .await;
    let user = app.register(&email("breaker")).await;
    app.topup(&user.user_id, 100).await;
    let input = json!({"input": {"text": "Превет"}});
    let run = || {
        app.post_authed(
            "/api/v1/tools/spell_check/execute",
            &user.access_token,
            &input,
        )
    };
    for _ in 0..3 {
        expect_error(run().await, 503, "providers_unavailable").await;
    }
    let response = run().await;
    assert_eq!(response.status(), 200, "the provider is still in rotation");
}

#[tokio::test]
async fn without_any_provider_execute_refuses_before_the_debit() {
    let app = builder().spawn().await;
    let user = app.register(&email("noprov")).await;
    app.topup(&user.user_id, 50).await;
    let response = app
        .post_authed(
            "/api/v1/tools/spell_check/execute",
            &user.access_token,
            &json!({"input": {"text": "Превет"}}),
        )
        .await;
    expect_error(response, 503, "providers_unavailable").await;
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    let (sessions, rows): (i64, i64) = conn
        .query_row(
            "select (select count(*) from generation_sessions), (select count(*) from transactions)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((sessions, rows), (0, 1), "only the top-up");
}

/// kill -9 while a keyed quick run waits on its provider; after the restart the same key
/// answers the refunded failure, not "still running".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_cut_off_by_a_crash_answers_the_refund_after_restart() {
    let fake = FakeLlm::start().await;
    fake.then(Reply::held(vec!["никогда".into()]));
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OPENAI_BASE_URL", fake.url.as_str()),
        ("OPENAI_API_KEY", "sk-test"),
        ("EASY_WRITER_SIGNUP_BONUS", "100"),
    ];
    let server = ServerProcess::start(dir.path(), &env).await;
    let addr = server.addr();
    let url = |path: &str| format!("http://{addr}{path}");
    let client = reqwest::Client::new();
    let token = register_at(addr).await;
    let execute = || {
        client
            .post(url("/api/v1/tools/spell_check/execute"))
            .bearer_auth(&token)
            .header("idempotency-key", "crash-key-1")
            .json(&json!({"input": {"text": "Превет"}}))
            .send()
    };
    let hanging = tokio::spawn(execute());
    fake.wait_for_calls(1).await;
    let in_flight = execute().await.unwrap();
    expect_error(in_flight, 409, "idempotency_conflict").await;
    server.kill();
    assert!(
        hanging.await.unwrap().is_err(),
        "the connection died with the server"
    );

    let server = ServerProcess::start_on(addr, dir.path(), &env).await;
    let response = execute().await.unwrap();
    let body = expect_error(response, 503, "interrupted").await;
    assert_eq!(body["session"]["status"], "failed");
    let me = get_at(addr, "/api/v1/auth/me", &token).await;
    assert_eq!(me["balance"], 100, "refunded");
    // The same answer again: stored, not recomputed.
    let again = execute().await.unwrap();
    let again = expect_error(again, 503, "interrupted").await;
    assert_eq!(again["session_id"], body["session_id"]);
    server.stop();
}

#[tokio::test]
async fn idempotency_keys_are_forgotten_after_a_day() {
    let app = builder()
        .upstream("OPENAI_BASE_URL")
        .env("OPENAI_API_KEY", "sk-test")
        .spawn()
        .await;
    let user = app.register(&email("prune")).await;
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    conn.execute(
        "insert into idempotency_keys (user_id, key, request_hash, created_at, updated_at)
         values (?1, 'old', 'h', '2020-01-01T00:00:00.000000Z', '2020-01-01T00:00:00.000000Z'),
                (?1, 'new', 'h', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
        [&user.user_id],
    )
    .unwrap();
    let pruned = app
        .state
        .db
        .write(easy_writer::idempotency::prune)
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let keys: Vec<String> = conn
        .prepare("select key from idempotency_keys")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(keys, ["new"]);
}
