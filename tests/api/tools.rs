//! Tabs, schemas and quick execution end to end against a fake OpenAI-compatible provider:
//! money, history, idempotency and the error paths.

use std::sync::Arc;

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{Session, TestApp, builder, email, expect_error};

const ANSWER: &str = r#"{"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"{\"text\":\"Исправленный текст.\",\"edits\":[{\"from\":\"Превет\",\"to\":\"Привет\",\"reason\":\"орфография\"}]}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":5,"total_tokens":45}}"#;

/// A server whose only provider is a fake OpenAI; and a user holding `raits`.
async fn app_with_user(raits: i64) -> (TestApp, Session) {
    let app = builder()
        .upstream("OPENAI_BASE_URL")
        .env("OPENAI_API_KEY", "sk-test")
        .env("EASY_WRITER_RETRY_BASE_MS", 5)
        .spawn()
        .await;
    let user = app.register(&email("tools")).await;
    if raits > 0 {
        app.topup(&user.user_id, raits).await;
    }
    (app, user)
}

fn fake(app: &TestApp) -> &MockServer {
    &app.upstreams["OPENAI_BASE_URL"]
}

async fn answer_with(app: &TestApp, template: ResponseTemplate, times: u64) {
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(template)
        .expect(times)
        .mount(fake(app))
        .await;
}

fn spell_check() -> Value {
    json!({"input": {"text": "Превет, как дела?"}})
}

async fn balance(app: &TestApp, user: &Session) -> i64 {
    let me: Value = app
        .get_authed("/api/v1/auth/me", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    me["balance"].as_i64().unwrap()
}

#[tokio::test]
async fn tabs_tools_and_schemas_are_listed_for_signed_in_users() {
    let (app, user) = app_with_user(0).await;
    let tabs: Value = app
        .get_authed("/api/v1/tools/tabs", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = tabs["tabs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["everyday", "education", "business", "marketing", "special"]
    );
    let count: usize = tabs["tabs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tools"].as_array().unwrap().len())
        .sum();
    assert_eq!(count, 34);
    let first = &tabs["tabs"][0]["tools"][0];
    assert_eq!(first["id"], "spell_check");
    assert_eq!(first["estimated_cost"], 5);
    assert_eq!(first["costs"]["quick"], 5);
    assert_eq!(first["output_format"], "json");
    for key in ["name", "description", "icon", "supports_modes"] {
        assert!(first.get(key).is_some(), "{key}");
    }

    for path in [
        "/api/v1/tools/tabs/marketing",
        "/api/v1/tools/marketing/tools",
    ] {
        let tab: Value = app
            .get_authed(path, &user.access_token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(tab["name"], "Маркетинг");
        assert_eq!(tab["tools"].as_array().unwrap().len(), 7);
    }
    let schema: Value = app
        .get_authed("/api/v1/tools/spell_check/schema", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(schema["type"], "object");
    assert!(
        schema["required"]
            .as_array()
            .unwrap()
            .contains(&json!("text"))
    );

    expect_error(
        app.get_authed("/api/v1/tools/tabs/nope", &user.access_token)
            .await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        app.get_authed("/api/v1/tools/nope/schema", &user.access_token)
            .await,
        404,
        "not_found",
    )
    .await;
    let anonymous = app
        .client
        .get(app.url("/api/v1/tools/tabs"))
        .send()
        .await
        .unwrap();
    expect_error(anonymous, 401, "not_authenticated").await;
}

#[tokio::test]
async fn a_quick_run_charges_once_saves_the_session_and_answers_it() {
    let (app, user) = app_with_user(100).await;
    answer_with(&app, ResponseTemplate::new(200).set_body_string(ANSWER), 1).await;
    let response = app
        .post_authed(
            "/api/v1/tools/spell_check/execute",
            &user.access_token,
            &spell_check(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let session: Value = response.json().await.unwrap();
    assert_eq!(session["status"], "completed");
    assert_eq!(session["result"]["text"], "Исправленный текст.");
    assert_eq!(session["result"]["edits"][0]["to"], "Привет");
    assert_eq!(session["provider_used"], "openai");
    assert_eq!(session["tokens_used"], 45);
    assert_eq!(session["cost_raits"], 5);
    assert_eq!(session["mode"], "quick");
    assert_eq!(session["tool_id"], "spell_check");
    assert_eq!(session["input_data"]["text"], "Превет, как дела?");
    assert!(session["error"].is_null());
    assert!(session["completed_at"].is_string());
    assert_eq!(balance(&app, &user).await, 95);
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (95, 95));

    // The prompt the provider saw carries the user's text.
    let requests = fake(&app).received_requests().await.unwrap();
    let sent: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert!(
        sent["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("Превет, как дела?")
    );

    // History: listed, fetched, and invisible to anyone else.
    let list: Value = app
        .get_authed("/api/v1/generation/sessions", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["pagination"],
        json!({"total": 1, "limit": 20, "offset": 0, "has_more": false})
    );
    assert_eq!(list["sessions"][0]["id"], session["id"]);
    let path = format!(
        "/api/v1/generation/sessions/{}",
        session["id"].as_str().unwrap()
    );
    let one: Value = app
        .get_authed(&path, &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["result"], session["result"]);
    let stranger = app.register(&email("stranger")).await;
    expect_error(
        app.get_authed(&path, &stranger.access_token).await,
        404,
        "not_found",
    )
    .await;
    let theirs: Value = app
        .get_authed("/api/v1/generation/sessions", &stranger.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["pagination"]["total"], 0);

    // The debit is a `spend` row referring to the session.
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    let (kind, amount): (String, i64) = conn
        .query_row(
            "select type, amount from transactions where reference = ?1",
            [session["id"].as_str().unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((kind.as_str(), amount), ("spend", -5));
}

#[tokio::test]
async fn without_enough_raits_the_answer_is_402_and_no_provider_is_called() {
    let (app, user) = app_with_user(3).await;
    answer_with(&app, ResponseTemplate::new(200).set_body_string(ANSWER), 0).await;
    let response = app
        .post_authed(
            "/api/v1/tools/spell_check/execute",
            &user.access_token,
            &spell_check(),
        )
        .await;
    let body = expect_error(response, 402, "insufficient_balance").await;
    assert_eq!(
        (body["required"].as_i64(), body["balance"].as_i64()),
        (Some(5), Some(3))
    );
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (3, 3));
    let list: Value = app
        .get_authed("/api/v1/generation/sessions", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["pagination"]["total"], 0);
}

#[tokio::test]
async fn bad_input_is_422_with_every_failure_and_costs_nothing() {
    let (app, user) = app_with_user(100).await;
    answer_with(&app, ResponseTemplate::new(200).set_body_string(ANSWER), 0).await;
    let body = json!({"input": {"recipient": "", "tone": "rude", "unknown": 1}});
    let error = expect_error(
        app.post_authed("/api/v1/tools/letter/execute", &user.access_token, &body)
            .await,
        422,
        "validation_error",
    )
    .await;
    let locs: Vec<Value> = error["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["loc"].clone())
        .collect();
    assert!(locs.len() >= 3, "{error}");
    assert!(
        locs.contains(&json!(["body", "input", "purpose"])),
        "{error}"
    );
    assert!(locs.contains(&json!(["body", "input", "tone"])), "{error}");
    for bad in [
        json!({}),
        json!({"input": "text"}),
        json!({"input": {"text": "x"}, "mode": "turbo"}),
    ] {
        expect_error(
            app.post_authed(
                "/api/v1/tools/spell_check/execute",
                &user.access_token,
                &bad,
            )
            .await,
            422,
            "validation_error",
        )
        .await;
    }
    expect_error(
        app.post_authed(
            "/api/v1/tools/nope/execute",
            &user.access_token,
            &spell_check(),
        )
        .await,
        404,
        "not_found",
    )
    .await;
    let body = json!({"input": {"text": "Текст"}, "mode": "standard"});
    expect_error(
        app.post_authed(
            "/api/v1/tools/spell_check/execute",
            &user.access_token,
            &body,
        )
        .await,
        400,
        "mode_not_supported",
    )
    .await;
    // An image tool on a server with no image provider: refused before the debit.
    let body = json!({"input": {"prompt": "Кот на крыше", "format": "web"}});
    expect_error(
        app.post_authed(
            "/api/v1/tools/image_generate/execute",
            &user.access_token,
            &body,
        )
        .await,
        503,
        "providers_unavailable",
    )
    .await;
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (100, 100));
}

#[tokio::test]
async fn a_provider_failure_is_refunded_and_recorded() {
    let (app, user) = app_with_user(100).await;
    answer_with(&app, ResponseTemplate::new(500), 3).await;
    let response = app
        .post_authed(
            "/api/v1/tools/spell_check/execute",
            &user.access_token,
            &spell_check(),
        )
        .await;
    let body = expect_error(response, 503, "providers_unavailable").await;
    assert_eq!(balance(&app, &user).await, 100);
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (100, 100));
    let session = &body["session"];
    assert_eq!(session["status"], "failed");
    assert_eq!(session["error"]["code"], "providers_unavailable");
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    let kinds: Vec<(String, i64)> = conn
        .prepare("select type, amount from transactions where reference = ?1 order by created_at")
        .unwrap()
        .query_map([session["id"].as_str().unwrap()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kinds, [("spend".to_owned(), -5), ("refund".to_owned(), 5)]);
}

#[tokio::test]
async fn a_hundred_concurrent_runs_with_money_for_ten_charge_exactly_ten() {
    let (app, user) = app_with_user(50).await;
    answer_with(&app, ResponseTemplate::new(200).set_body_string(ANSWER), 10).await;
    let app = Arc::new(app);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (app, token) = (app.clone(), user.access_token.clone());
            tokio::spawn(async move {
                app.post_authed("/api/v1/tools/spell_check/execute", &token, &spell_check())
                    .await
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 402).count(),
        90,
        "{statuses:?}"
    );
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (0, 0));
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_charges_once() {
    let (app, user) = app_with_user(100).await;
    answer_with(&app, ResponseTemplate::new(200).set_body_string(ANSWER), 1).await;
    let send = |key: &'static str, body: Value| {
        app.client
            .post(app.url("/api/v1/tools/spell_check/execute"))
            .bearer_auth(&user.access_token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first: Value = send("k-1", spell_check())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again = send("k-1", spell_check()).await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again);
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (95, 95));
    // The same key with another request is refused, and charges nothing.
    let other = send("k-1", json!({"input": {"text": "Другой текст"}}))
        .await
        .unwrap();
    expect_error(other, 409, "idempotency_conflict").await;
    assert_eq!(balance(&app, &user).await, 95);
}

#[tokio::test]
async fn history_pagination_edges_and_filters() {
    let (app, user) = app_with_user(100).await;
    answer_with(&app, ResponseTemplate::new(200).set_body_string(ANSWER), 3).await;
    for _ in 0..3 {
        app.post_authed(
            "/api/v1/tools/spell_check/execute",
            &user.access_token,
            &spell_check(),
        )
        .await;
    }
    for query in [
        "limit=0",
        "limit=101",
        "offset=-1",
        "limit=abc",
        "status=done",
    ] {
        let response = app
            .get_authed(
                &format!("/api/v1/generation/sessions?{query}"),
                &user.access_token,
            )
            .await;
        expect_error(response, 422, "validation_error").await;
    }
    let page: Value = app
        .get_authed("/api/v1/generation/sessions?limit=2", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(page["pagination"]["has_more"], true);
    let (newest, next) = (
        &page["sessions"][0]["created_at"],
        &page["sessions"][1]["created_at"],
    );
    assert!(newest.as_str().unwrap() >= next.as_str().unwrap());
    let past: Value = app
        .get_authed("/api/v1/generation/sessions?offset=10", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(past["sessions"].as_array().unwrap().len(), 0);
    assert_eq!(
        past["pagination"],
        json!({"total": 3, "limit": 20, "offset": 10, "has_more": false})
    );
    let filtered: Value = app
        .get_authed(
            "/api/v1/generation/sessions?tool_id=letter&status=completed",
            &user.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(filtered["pagination"]["total"], 0);
    let completed: Value = app
        .get_authed(
            "/api/v1/generation/sessions?status=completed",
            &user.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(completed["pagination"]["total"], 3);
}

#[tokio::test]
async fn a_client_that_hangs_up_still_gets_its_session_settled() {
    let (app, user) = app_with_user(100).await;
    answer_with(
        &app,
        ResponseTemplate::new(200)
            .set_body_string(ANSWER)
            .set_delay(std::time::Duration::from_millis(400)),
        1,
    )
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(100))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(app.url("/api/v1/tools/spell_check/execute"))
        .bearer_auth(&user.access_token)
        .json(&spell_check())
        .send()
        .await;
    assert!(gave_up.is_err(), "the client should have timed out");
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let list: Value = app
        .get_authed("/api/v1/generation/sessions", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["sessions"][0]["status"], "completed", "{list}");
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (95, 95));
}

#[tokio::test]
async fn a_run_past_the_quick_deadline_fails_with_503_and_is_refunded() {
    let app = builder()
        .upstream("OPENAI_BASE_URL")
        .env("OPENAI_API_KEY", "sk-test")
        .env("EASY_WRITER_QUICK_DEADLINE_SECS", 1)
        .spawn()
        .await;
    let user = app.register(&email("deadline")).await;
    app.topup(&user.user_id, 20).await;
    answer_with(
        &app,
        ResponseTemplate::new(200)
            .set_body_string(ANSWER)
            .set_delay(std::time::Duration::from_secs(3)),
        1,
    )
    .await;
    let started = std::time::Instant::now();
    let response = app
        .post_authed(
            "/api/v1/tools/spell_check/execute",
            &user.access_token,
            &spell_check(),
        )
        .await;
    assert!(started.elapsed() < std::time::Duration::from_millis(2500));
    let body = expect_error(response, 503, "timeout").await;
    assert_eq!(body["session"]["status"], "failed");
    assert_eq!(body["session"]["error"]["code"], "timeout");
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (20, 20));
}
