//! The WordPress plugin API (CONTRACT §4 "WordPress plugin"), called as the plugin calls it:
//! `X-Access-Password`, generate → poll → HTML → published → statistics, against the
//! scripted fake provider. Sites are made by the real `site` CLI or, where only the API is
//! under test, by the library's store on the test server's database.

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Reply};
use crate::helpers::{PASSWORD, ServerProcess, TestApp, builder, email, expect_error};

/// `seo_article`'s standard price.
/// A medium article (1,500 words): `seo_article`'s standard 150 for 500 words and 12 for each
/// 100 words beyond.
const ARTICLE_COST: i64 = 270;

/// What the fake writes for one article: the note, a one-line plan, the section, its edit (the
/// article's body), a length top-up shorter than the part (not used), and the Title and
/// Description (which stay out of the post).
const ARTICLE: &str = "# Как выбрать робот-пылесос\n\nВведение о пылесосах.\n\n\
    ## Мощность всасывания\n\nТекст <script>alert(1)</script> раздела.\n\n\
    - первый пункт\n- второй пункт\n\n| модель | цена |\n|---|---|\n| A | [данные] |\n";

fn script_article(fake: &FakeLlm) {
    let (head, tail) = ARTICLE.split_at(ARTICLE.find("## ").unwrap());
    fake.then(Reply::text(&["Записка."]))
        .then(Reply::text(&["Как выбрать робот-пылесос"]))
        .then(Reply::text(&["Раздел."]))
        .then(Reply::text(&[head, tail]))
        .then(Reply::text(&["Коротко."]))
        .then(Reply::text(&[
            "**Title:** Робот-пылесос\n**Description:** Как выбрать.",
        ]));
}

/// A server whose only text provider is `fake`.
async fn app_with(fake: &FakeLlm, env: &[(&str, &str)]) -> TestApp {
    let mut b = builder()
        .env("OPENAI_BASE_URL", &fake.url)
        .env("OPENAI_API_KEY", "sk-test")
        .env("EASY_WRITER_RETRY_BASE_MS", 5);
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.spawn().await
}

/// Registers a site straight in the test server's database; returns (id, password).
async fn site(app: &TestApp, domain: &str, owner: Option<&str>) -> (String, String) {
    let password = easy_writer::legacy::new_password();
    let digest = easy_writer::legacy::password_digest(&password);
    let (domain, owner) = (domain.to_owned(), owner.map(str::to_owned));
    let site = app
        .state
        .db
        .write(move |tx| {
            easy_writer::legacy::store::insert_site(tx, &domain, None, owner.as_deref(), &digest)
        })
        .await
        .expect("site");
    (site.id, password)
}

async fn post(app: &TestApp, path: &str, password: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("X-Access-Password", password)
        .json(body)
        .send()
        .await
        .expect("request")
}

async fn get(app: &TestApp, path: &str, password: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .header("X-Access-Password", password)
        .send()
        .await
        .expect("request")
}

async fn get_json(app: &TestApp, path: &str, password: &str) -> Value {
    let response = get(app, path, password).await;
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.expect("json")
}

/// Asks for an article; returns the 202 body.
async fn generate(app: &TestApp, password: &str, body: &Value) -> Value {
    let response = post(app, "/api/v1/article/generate", password, body).await;
    assert_eq!(response.status(), 202, "generate");
    let accepted: Value = response.json().await.expect("json");
    assert_eq!(accepted["status"], "pending");
    accepted
}

/// Polls an article until it is settled, as the plugin does.
async fn settled(app: &TestApp, password: &str, id: &str) -> Value {
    let path = format!("/api/v1/article/{id}");
    for _ in 0..800 {
        let article = get_json(app, &path, password).await;
        if !matches!(article["status"].as_str(), Some("pending" | "in_progress")) {
            return article;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("article {id} never settled");
}

fn today() -> String {
    let d = time::OffsetDateTime::now_utc().date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Ledger rows whose reference is `article_id`: (type, amount), oldest first.
fn ledger_for(app: &TestApp, article_id: &str) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    let mut stmt = conn
        .prepare("select type, amount from transactions where reference = ?1 order by created_at")
        .unwrap();
    stmt.query_map([article_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn the_plugin_generates_polls_publishes_and_reads_statistics() {
    let fake = FakeLlm::start().await;
    script_article(&fake);
    let app = app_with(&fake, &[]).await;
    let (site_id, password) = site(&app, "blog.example.com", None).await;

    let accepted = generate(
        &app,
        &password,
        &json!({"title": "Как выбрать робот-пылесос", "keywords": ["робот-пылесос", "выбор"],
                "language": "ru", "length": "short"}),
    )
    .await;
    let id = accepted["article_id"].as_str().unwrap().to_owned();
    assert!(
        accepted["session_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    let article = settled(&app, &password, &id).await;
    assert_eq!(article["status"], "completed", "{article}");
    assert_eq!(article["id"], id.as_str());
    assert_eq!(article["title"], "Как выбрать робот-пылесос");
    assert_eq!(article["keywords"], json!(["робот-пылесос", "выбор"]));
    assert_eq!(article["length"], "short");
    assert_eq!(article["cost_raits"], 0, "an operator's site pays nothing");
    assert!(article["tokens_used"].as_i64().unwrap() > 0, "{article}");
    assert!(article["completed_at"].is_string());
    let content = article["content"].as_str().unwrap();
    assert!(
        content.contains("<h2>Мощность всасывания</h2>"),
        "{content}"
    );
    assert!(
        content.contains("<p>Введение о пылесосах.</p>"),
        "{content}"
    );
    assert!(content.contains("<li>первый пункт</li>"), "{content}");
    assert!(content.contains("<table>"), "{content}");
    for bad in ["<script", "<html", "<body", "<h1"] {
        assert!(!content.contains(bad), "{bad} in {content}");
    }
    // The title is WordPress's to show: it is not repeated in the body.
    assert!(!content.contains("Как выбрать робот-пылесос"), "{content}");
    assert!(!content.contains("Description"), "{content}");

    // The tool got the title, keywords and length as its input.
    let first = fake.user_message(0);
    assert!(first.contains("Как выбрать робот-пылесос"), "{first}");
    assert!(
        first.contains("Ключевые фразы (первая — главная): робот-пылесос, выбор"),
        "{first}"
    );
    assert!(first.contains("Объём, слов: 800"), "{first}");

    let response = post(
        &app,
        &format!("/api/v1/article/{id}/published"),
        &password,
        &json!({"wp_post_id": 42, "url": "https://blog.example.com/robot"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let published: Value = response.json().await.unwrap();
    assert_eq!(published["status"], "published");
    assert_eq!(published["wp_post_id"], 42);
    assert_eq!(published["url"], "https://blog.example.com/robot");
    assert!(published["published_at"].is_string());
    assert!(
        published["content"].is_string(),
        "content stays once published"
    );
    // The plugin retrying the same call gets the same answer.
    let again = post(
        &app,
        &format!("/api/v1/article/{id}/published"),
        &password,
        &json!({"wp_post_id": 42}),
    )
    .await;
    assert_eq!(again.status(), 200);
    // Another post id is a conflict.
    let other = post(
        &app,
        &format!("/api/v1/article/{id}/published"),
        &password,
        &json!({"wp_post_id": 43}),
    )
    .await;
    expect_error(other, 409, "already_published").await;

    let stats = get_json(&app, "/api/v1/statistics", &password).await;
    assert_eq!(stats["site_id"], site_id.as_str());
    assert_eq!(
        stats["articles"],
        json!({"total": 1, "pending": 0, "in_progress": 0, "completed": 0, "failed": 0, "published": 1})
    );
    assert_eq!(stats["tokens_used"], article["tokens_used"]);
    let days = stats["per_day"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    let last = days.last().unwrap();
    assert_eq!(last["date"], today().as_str(), "today is last");
    assert_eq!(last["articles"], 1);
    assert_eq!(last["tokens"], article["tokens_used"]);
    assert!(
        days[..29]
            .iter()
            .all(|d| d["articles"] == 0 && d["tokens"] == 0),
        "{days:?}"
    );
    assert!(
        days.windows(2)
            .all(|w| w[0]["date"].as_str() < w[1]["date"].as_str()),
        "oldest first"
    );
}

#[tokio::test]
async fn an_article_needs_a_pro_model_and_is_refused_unpaid_without_one() {
    let fake = FakeLlm::start().await;
    let app = app_with(&fake, &[("OPENAI_MODEL", "gpt-4o-mini")]).await;
    let owner = app.register(&email("wp-lite")).await;
    app.topup(&owner.user_id, 1000).await;
    let (_, password) = site(&app, "lite.example.com", Some(&owner.user_id)).await;
    let body = json!({"title": "Как ухаживать за садом"});
    let response = post(&app, "/api/v1/article/generate", &password, &body).await;
    let error = expect_error(response, 503, "providers_unavailable").await;
    assert!(
        error["detail"].as_str().unwrap().contains("pro model"),
        "{error}"
    );
    assert_eq!(app.balance_and_ledger_sum(&owner.user_id), (1000, 1000));
    let list = get_json(&app, "/api/v1/article", &password).await;
    assert_eq!(list["pagination"]["total"], 0);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn an_owner_pays_the_standard_price_and_is_refunded_when_generation_fails() {
    let fake = FakeLlm::start().await;
    let app = app_with(&fake, &[]).await;
    let owner = app.register(&email("wp-owner")).await;
    let (_, password) = site(&app, "owned.example.com", Some(&owner.user_id)).await;
    let body = json!({"title": "Как ухаживать за садом", "keywords": ["сад"]});

    // Short: 402 with the numbers, and nothing written.
    app.topup(&owner.user_id, 100).await;
    let response = post(&app, "/api/v1/article/generate", &password, &body).await;
    let error = expect_error(response, 402, "insufficient_balance").await;
    assert_eq!(error["required"], ARTICLE_COST);
    assert_eq!(error["balance"], 100);
    let list = get_json(&app, "/api/v1/article", &password).await;
    assert_eq!(list["pagination"]["total"], 0);

    // Paid: debited up front, kept on success.
    app.topup(&owner.user_id, 200).await;
    script_article(&fake);
    let id = generate(&app, &password, &body).await["article_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let article = settled(&app, &password, &id).await;
    assert_eq!(article["status"], "completed");
    assert_eq!(article["cost_raits"], ARTICLE_COST);
    assert_eq!(
        app.balance_and_ledger_sum(&owner.user_id),
        (300 - ARTICLE_COST, 300 - ARTICLE_COST)
    );
    assert_eq!(ledger_for(&app, &id), vec![("spend".into(), -ARTICLE_COST)]);

    // Failed: every attempt at the only provider answers 500 → refunded.
    app.topup(&owner.user_id, ARTICLE_COST).await;
    for _ in 0..3 {
        fake.then(Reply::Status(500));
    }
    let failed_id = generate(&app, &password, &body).await["article_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = settled(&app, &password, &failed_id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "providers_unavailable");
    assert!(failed["content"].is_null());
    assert_eq!(
        ledger_for(&app, &failed_id),
        vec![
            ("spend".into(), -ARTICLE_COST),
            ("refund".into(), ARTICLE_COST)
        ]
    );
    assert_eq!(app.balance_and_ledger_sum(&owner.user_id), (300, 300));
    let me: Value = app
        .get_authed("/api/v1/user/transactions", &owner.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        me["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["description"] == "Статья WordPress"),
        "{me}"
    );

    // A failed article cannot be published.
    let response = post(
        &app,
        &format!("/api/v1/article/{failed_id}/published"),
        &password,
        &json!({"wp_post_id": 7}),
    )
    .await;
    expect_error(response, 409, "article_not_completed").await;
}

#[tokio::test]
async fn an_operator_site_costs_nothing_and_still_counts_tokens() {
    let fake = FakeLlm::start().await;
    let app = app_with(&fake, &[]).await;
    let (_, password) = site(&app, "operator.example.com", None).await;
    let id = generate(&app, &password, &json!({"title": "Новости компании"})).await["article_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let article = settled(&app, &password, &id).await;
    assert_eq!(article["status"], "completed", "{article}");
    assert_eq!(article["cost_raits"], 0);
    assert!(article["tokens_used"].as_i64().unwrap() > 0);
    assert!(ledger_for(&app, &id).is_empty(), "no ledger rows");
    // No keywords: the title stands for them.
    assert!(
        fake.user_message(0)
            .contains("Ключевые фразы (первая — главная): Новости компании")
    );

    // Another language is named to the tool (where its form has room: the audience).
    let calls = fake.requests().len();
    let id = generate(
        &app,
        &password,
        &json!({"title": "Company news", "language": "en", "length": "long"}),
    )
    .await["article_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let article = settled(&app, &password, &id).await;
    assert_eq!(article["language"], "en");
    assert_eq!(article["length"], "long");
    let message = fake.user_message(calls);
    assert!(message.contains("«en»"), "{message}");
    assert!(message.contains("Объём, слов: 2500"), "{message}");
}

#[tokio::test]
async fn batches_filters_and_paging() {
    let fake = FakeLlm::start().await;
    let app = app_with(&fake, &[]).await;
    let (_, password) = site(&app, "batches.example.com", None).await;
    let mut batch = Vec::new();
    for title in ["Первая статья", "Вторая статья"] {
        let accepted = generate(
            &app,
            &password,
            &json!({"title": title, "session_id": "партия 1"}),
        )
        .await;
        assert_eq!(accepted["session_id"], "партия 1");
        batch.push(accepted["article_id"].as_str().unwrap().to_owned());
    }
    let lone = generate(&app, &password, &json!({"title": "Отдельная статья"})).await;
    let lone_session = lone["session_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(lone_session).is_ok(), "a new UUID");
    let lone_id = lone["article_id"].as_str().unwrap().to_owned();
    for id in batch.iter().chain([&lone_id]) {
        assert_eq!(settled(&app, &password, id).await["status"], "completed");
    }

    let list = get_json(
        &app,
        "/api/v1/article?session_id=%D0%BF%D0%B0%D1%80%D1%82%D0%B8%D1%8F%201",
        &password,
    )
    .await;
    let ids: Vec<&str> = list["articles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![batch[1].as_str(), batch[0].as_str()],
        "the batch, newest first"
    );
    assert_eq!(
        list["pagination"],
        json!({"total": 2, "limit": 20, "offset": 0, "has_more": false})
    );

    let all = get_json(&app, "/api/v1/article?limit=2&offset=0", &password).await;
    assert_eq!(all["articles"].as_array().unwrap().len(), 2);
    assert_eq!(all["articles"][0]["id"], lone_id.as_str());
    assert_eq!(all["pagination"]["total"], 3);
    assert_eq!(all["pagination"]["has_more"], true);
    let rest = get_json(&app, "/api/v1/article?limit=2&offset=2", &password).await;
    assert_eq!(rest["articles"].as_array().unwrap().len(), 1);
    assert_eq!(rest["pagination"]["has_more"], false);

    post(
        &app,
        &format!("/api/v1/article/{lone_id}/published"),
        &password,
        &json!({"wp_post_id": 1}),
    )
    .await;
    let published = get_json(&app, "/api/v1/article?status=published", &password).await;
    assert_eq!(published["pagination"]["total"], 1);
    assert_eq!(published["articles"][0]["id"], lone_id.as_str());
    let completed = get_json(&app, "/api/v1/article?status=completed", &password).await;
    assert_eq!(completed["pagination"]["total"], 2);

    for query in ["limit=0", "limit=101", "offset=-1", "status=done"] {
        let response = get(&app, &format!("/api/v1/article?{query}"), &password).await;
        expect_error(response, 422, "validation_error").await;
    }
}

#[tokio::test]
async fn sites_see_only_their_own_articles_and_tokens_open_nothing() {
    let fake = FakeLlm::start().await;
    let app = app_with(&fake, &[]).await;
    let (_, a) = site(&app, "a.example.com", None).await;
    let (_, b) = site(&app, "b.example.com", None).await;
    let id = generate(&app, &a, &json!({"title": "Статья сайта А"})).await["article_id"]
        .as_str()
        .unwrap()
        .to_owned();
    settled(&app, &a, &id).await;

    expect_error(
        get(&app, &format!("/api/v1/article/{id}"), &b).await,
        404,
        "not_found",
    )
    .await;
    let response = post(
        &app,
        &format!("/api/v1/article/{id}/published"),
        &b,
        &json!({"wp_post_id": 5}),
    )
    .await;
    expect_error(response, 404, "not_found").await;
    let list = get_json(&app, "/api/v1/article", &b).await;
    assert_eq!(list["pagination"]["total"], 0);
    let stats = get_json(&app, "/api/v1/statistics", &b).await;
    assert_eq!(stats["articles"]["total"], 0);
    expect_error(
        get(&app, "/api/v1/article/not-an-id", &a).await,
        404,
        "not_found",
    )
    .await;

    // A user's Bearer token is no site password.
    let user = app.register(&email("wp-user")).await;
    for path in [
        "/api/v1/article",
        "/api/v1/statistics",
        &format!("/api/v1/article/{id}"),
    ] {
        let response = app.get_authed(path, &user.access_token).await;
        expect_error(response, 401, "invalid_password").await;
    }
    let response = app
        .post_authed(
            "/api/v1/article/generate",
            &user.access_token,
            &json!({"title": "Чужая"}),
        )
        .await;
    expect_error(response, 401, "invalid_password").await;
    // Missing, empty and wrong passwords, on every endpoint.
    for password in ["", "wrong", &format!("{a}x")] {
        for path in [
            "/api/v1/article",
            "/api/v1/statistics",
            &format!("/api/v1/article/{id}"),
        ] {
            expect_error(get(&app, path, password).await, 401, "invalid_password").await;
        }
        let response = post(
            &app,
            "/api/v1/article/generate",
            password,
            &json!({"title": "Тест"}),
        )
        .await;
        expect_error(response, 401, "invalid_password").await;
        let response = post(
            &app,
            &format!("/api/v1/article/{id}/published"),
            password,
            &json!({"wp_post_id": 1}),
        )
        .await;
        expect_error(response, 401, "invalid_password").await;
    }
    let response = app
        .client
        .get(app.url("/api/v1/statistics"))
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "invalid_password").await;
}

#[tokio::test]
async fn bad_input_is_422_and_nothing_is_charged() {
    let fake = FakeLlm::start().await;
    let app = app_with(&fake, &[]).await;
    let owner = app.register(&email("wp-bad")).await;
    app.topup(&owner.user_id, 1000).await;
    let (_, password) = site(&app, "bad.example.com", Some(&owner.user_id)).await;
    let cases = [
        (json!({"title": ""}), "title"),
        (json!({"title": "   "}), "title"),
        (json!({"title": "ab"}), "title"),
        (json!({"title": "x".repeat(501)}), "title"),
        (json!({}), "title"),
        (json!({"title": 5}), "title"),
        (json!({"title": "Хорошая тема", "length": "huge"}), "length"),
        (
            json!({"title": "Хорошая тема", "keywords": "сад"}),
            "keywords",
        ),
        (
            json!({"title": "Хорошая тема", "keywords": [1, 2]}),
            "keywords",
        ),
        (
            json!({"title": "Хорошая тема", "keywords": vec!["k"; 21]}),
            "keywords",
        ),
        (
            json!({"title": "Хорошая тема", "keywords": ["k".repeat(101)]}),
            "keywords",
        ),
        (
            json!({"title": "Хорошая тема", "session_id": "s".repeat(101)}),
            "session_id",
        ),
        (
            json!({"title": "Хорошая тема", "session_id": ""}),
            "session_id",
        ),
        (
            json!({"title": "Хорошая тема", "language": "<script>"}),
            "language",
        ),
    ];
    for (body, field) in cases {
        let response = post(&app, "/api/v1/article/generate", &password, &body).await;
        let error = expect_error(response, 422, "validation_error").await;
        let locs: Vec<String> = error["detail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["loc"].to_string())
            .collect();
        assert!(
            locs.iter().any(|l| l.contains(field)),
            "{body}: {field} in {locs:?}"
        );
    }
    // Not JSON → 415.
    let response = app
        .client
        .post(app.url("/api/v1/article/generate"))
        .header("X-Access-Password", &password)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("title=abc")
        .send()
        .await
        .unwrap();
    expect_error(response, 415, "unsupported_media_type").await;
    assert_eq!(app.balance_and_ledger_sum(&owner.user_id), (1000, 1000));
    assert_eq!(
        get_json(&app, "/api/v1/article", &password).await["pagination"]["total"],
        0
    );

    // Publishing: a pending article is a conflict; bad ids and urls are 422.
    fake.then(Reply::held(vec!["Записка.".into()]));
    let id = generate(&app, &password, &json!({"title": "Пока пишется"})).await["article_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/article/{id}/published");
    for body in [
        json!({"wp_post_id": 0}),
        json!({"wp_post_id": -3}),
        json!({"wp_post_id": "12"}),
        json!({}),
        json!({"wp_post_id": 12, "url": "javascript:alert(1)"}),
        json!({"wp_post_id": 12, "url": format!("https://e.com/{}", "a".repeat(2048))}),
    ] {
        let response = post(&app, &path, &password, &body).await;
        expect_error(response, 422, "validation_error").await;
    }
    let response = post(&app, &path, &password, &json!({"wp_post_id": 12})).await;
    let error = expect_error(response, 409, "article_not_completed").await;
    assert!(matches!(
        error["status"].as_str(),
        Some("pending" | "in_progress")
    ));
    fake.release(1);
    assert_eq!(settled(&app, &password, &id).await["status"], "completed");
}

#[tokio::test]
async fn wrong_passwords_from_one_address_are_throttled() {
    let fake = FakeLlm::start().await;
    let app = app_with(&fake, &[("EASY_WRITER_LOGIN_MAX_FAILURES_PER_IP", "3")]).await;
    let (_, password) = site(&app, "throttle.example.com", None).await;
    // Right passwords are given back: the plugin's polling never runs into the limit.
    for _ in 0..10 {
        get_json(&app, "/api/v1/statistics", &password).await;
    }
    for _ in 0..3 {
        expect_error(
            get(&app, "/api/v1/statistics", "guess").await,
            401,
            "invalid_password",
        )
        .await;
    }
    let response = get(&app, "/api/v1/statistics", "guess").await;
    assert!(response.headers().contains_key("retry-after"));
    expect_error(response, 429, "too_many_attempts").await;
    // Counted before it is checked: even the right password waits now.
    let response = get(&app, "/api/v1/statistics", &password).await;
    expect_error(response, 429, "too_many_attempts").await;
}

// ---- the real binary: the `site` CLI, rotation, deletion, a crash ----

fn run(dir: &Path, args: &[&str]) -> Output {
    let config = dir.join("cli-config.toml");
    if !config.exists() {
        std::fs::write(&config, "").unwrap();
    }
    crate::helpers::binary()
        .args(args)
        .env("EASY_WRITER_DATA_DIR", dir)
        .env("EASY_WRITER_CONFIG", &config)
        .stdin(Stdio::null())
        .output()
        .expect("run easy-writer")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The value of a `name: value` line.
fn line(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
        .to_owned()
}

#[tokio::test]
async fn the_site_cli_creates_lists_rotates_and_deletes() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let d = dir.path();
    let owner = email("wp-cli");
    assert!(
        run(
            d,
            &["user", "create", "--email", &owner, "--password", PASSWORD]
        )
        .status
        .success()
    );

    let out = run(
        d,
        &[
            "site",
            "create",
            "--domain",
            "Blog.Example.com",
            "--name",
            "Блог",
            "--owner",
            &owner,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let site_id = line(&text, "site_id");
    let password = line(&text, "access_password");
    assert!(uuid::Uuid::parse_str(&site_id).is_ok());
    assert!(password.len() >= 43, "at least 256 bits, base64url");
    // Case-insensitive uniqueness.
    let out = run(d, &["site", "create", "--domain", "blog.example.COM"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // Unknown owner, bad domain, missing domain.
    assert_eq!(
        run(
            d,
            &[
                "site",
                "create",
                "--domain",
                "x.example.com",
                "--owner",
                "nobody@example.com"
            ]
        )
        .status
        .code(),
        Some(1)
    );
    assert_eq!(
        run(d, &["site", "create", "--domain", "bad domain!"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(d, &["site", "create"]).status.code(), Some(2));
    let out = run(d, &["site", "create", "--domain", "free.example.com"]);
    assert!(out.status.success());
    let free_password = line(&stdout(&out), "access_password");

    // The server takes the password; the database never holds it.
    let fake = FakeLlm::start().await;
    let app = builder()
        .data_dir(dir.clone())
        .env("OPENAI_BASE_URL", &fake.url)
        .env("OPENAI_API_KEY", "sk-test")
        .spawn()
        .await;
    let stats = get_json(&app, "/api/v1/statistics", &password).await;
    assert_eq!(stats["site_id"], site_id.as_str());
    let id =
        generate(&app, &free_password, &json!({"title": "Статья оператора"})).await["article_id"]
            .as_str()
            .unwrap()
            .to_owned();
    assert_eq!(
        settled(&app, &free_password, &id).await["status"],
        "completed"
    );

    let out = run(d, &["site", "list", "--json"]);
    assert!(out.status.success());
    let sites: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let sites = sites.as_array().unwrap();
    assert_eq!(sites.len(), 2);
    assert_eq!(sites[0]["domain"], "blog.example.com");
    assert_eq!(sites[0]["name"], "Блог");
    assert_eq!(sites[0]["owner"], owner.as_str());
    assert_eq!(sites[1]["owner"], Value::Null);
    assert_eq!(sites[1]["articles"]["total"], 1);
    assert_eq!(sites[1]["articles"]["completed"], 1);
    assert!(
        !stdout(&out).contains(&password),
        "list never shows a password"
    );
    let out = run(d, &["site", "list"]);
    let table = stdout(&out);
    assert!(
        table.starts_with("id\tdomain\tname\towner\tarticles"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 3);

    // Rotation: the old password stops at once, the new one works.
    let out = run(
        d,
        &["site", "rotate-password", "--domain", "BLOG.example.com"],
    );
    assert!(out.status.success(), "{out:?}");
    let rotated = line(&stdout(&out), "access_password");
    assert_ne!(rotated, password);
    expect_error(
        get(&app, "/api/v1/statistics", &password).await,
        401,
        "invalid_password",
    )
    .await;
    get_json(&app, "/api/v1/statistics", &rotated).await;
    assert_eq!(
        run(
            d,
            &["site", "rotate-password", "--domain", "nope.example.com"]
        )
        .status
        .code(),
        Some(1)
    );

    // Deletion: the password stops; the articles stay, detached.
    let out = run(d, &["site", "delete", "--domain", "free.example.com"]);
    assert!(out.status.success(), "{out:?}");
    expect_error(
        get(&app, "/api/v1/statistics", &free_password).await,
        401,
        "invalid_password",
    )
    .await;
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    let site: Option<String> = conn
        .query_row("select site_id from articles where id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(site, None);
    assert_eq!(
        run(d, &["site", "delete", "--domain", "free.example.com"])
            .status
            .code(),
        Some(1)
    );
    app.stop().await;

    // Read only now: this test process is the server's, and POSIX drops every lock a process
    // holds on a file when it closes any descriptor of it, which would let a CLI run delete
    // the WAL under the running server (it then reads a stale snapshot for good).
    for file in ["easy-writer.db", "easy-writer.db-wal"] {
        let raw = std::fs::read(dir.path().join(file)).unwrap_or_default();
        for secret in [&password, &rotated] {
            assert!(
                !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a password is stored only hashed"
            );
        }
    }
}

#[tokio::test]
async fn after_kill_9_a_running_article_is_refunded_and_a_queued_one_written() {
    let fake = FakeLlm::start().await;
    fake.then(Reply::held(vec!["Записка.".into()]));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let owner = email("wp-kill");
    assert!(
        run(
            d,
            &["user", "create", "--email", &owner, "--password", PASSWORD]
        )
        .status
        .success()
    );
    assert!(
        run(d, &["user", "topup", "--email", &owner, "--raits", "600"])
            .status
            .success()
    );
    let out = run(
        d,
        &[
            "site",
            "create",
            "--domain",
            "kill.example.com",
            "--owner",
            &owner,
        ],
    );
    let password = line(&stdout(&out), "access_password");

    let env = [
        ("OPENAI_BASE_URL", fake.url.as_str()),
        ("OPENAI_API_KEY", "sk-test"),
        ("EASY_WRITER_RETRY_BASE_MS", "5"),
        ("EASY_WRITER_JOB_CONCURRENCY", "1"),
    ];
    let server = ServerProcess::start(d, &env).await;
    let addr = server.addr();
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");
    let generate = || async {
        let r = client
            .post(url("/api/v1/article/generate"))
            .header("X-Access-Password", &password)
            .json(&json!({"title": "Статья до сбоя"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        r.json::<Value>().await.unwrap()["article_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let article = |id: String| {
        let (client, password) = (client.clone(), password.clone());
        async move {
            client
                .get(url(&format!("/api/v1/article/{id}")))
                .header("X-Access-Password", &password)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let running = generate().await;
    fake.wait_for_calls(1).await;
    let queued = generate().await;
    assert_eq!(article(running.clone()).await["status"], "in_progress");
    assert_eq!(article(queued.clone()).await["status"], "pending");
    server.kill();

    let _server = ServerProcess::start_on(addr, d, &env).await;
    let a = article(running).await;
    assert_eq!(a["status"], "failed", "{a}");
    assert_eq!(a["error"]["code"], "interrupted");
    let mut q = article(queued.clone()).await;
    for _ in 0..400 {
        if !matches!(q["status"].as_str(), Some("pending" | "in_progress")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        q = article(queued.clone()).await;
    }
    assert_eq!(q["status"], "completed", "{q}");
    let conn = rusqlite::Connection::open(d.join("easy-writer.db")).unwrap();
    let (balance, sum): (i64, i64) = conn
        .query_row(
            "select balance, (select sum(amount) from transactions t where t.user_id = u.id)
             from users u where email = ?1",
            [&owner],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (balance, sum),
        (600 - ARTICLE_COST, 600 - ARTICLE_COST),
        "one refunded, one paid"
    );
}

#[test]
fn the_plugin_routes_are_documented_with_their_header() {
    let doc = serde_json::to_value(easy_writer::server::openapi()).unwrap();
    for (path, method) in [
        ("/api/v1/article/generate", "post"),
        ("/api/v1/article", "get"),
        ("/api/v1/article/{id}", "get"),
        ("/api/v1/article/{id}/published", "post"),
        ("/api/v1/statistics", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert_eq!(op["tags"], json!(["wordpress"]), "{path}");
        assert_eq!(op["security"], json!([{"access_password": []}]), "{path}");
        assert!(op["responses"].get("401").is_some(), "{path} documents 401");
        assert!(op["responses"].get("429").is_some(), "{path} documents 429");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["access_password"],
        json!({"type": "apiKey", "in": "header", "name": "X-Access-Password"})
    );
}
