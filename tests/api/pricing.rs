//! Prices that follow effort (quoted before running, charged exactly), tools that never reach
//! a model below their tier, and what the server adds to or checks in an answer whatever the
//! model wrote: disclaimers, the JSON of `spell_check`, a token count.

use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{Session, TestApp, builder, email, expect_error};

/// An OpenAI answer with `content`; usage as given (`None`: the server reports none).
fn completion(content: &str, usage: Option<u64>) -> ResponseTemplate {
    let mut body = json!({
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    });
    if let Some(total) = usage {
        body["usage"] = json!({"prompt_tokens": total / 2, "completion_tokens": total - total / 2, "total_tokens": total});
    }
    ResponseTemplate::new(200).set_body_json(body)
}

async fn app_with(env: &[(&str, &str)]) -> (TestApp, Session) {
    let mut b = builder()
        .upstream("OPENAI_BASE_URL")
        .env("OPENAI_API_KEY", "sk-test")
        .env("EASY_WRITER_RETRY_BASE_MS", 5);
    for (k, v) in env {
        b = b.env(k, v);
    }
    let app = b.spawn().await;
    let user = app.register(&email("pricing")).await;
    (app, user)
}

fn openai(app: &TestApp) -> &MockServer {
    &app.upstreams["OPENAI_BASE_URL"]
}

async fn quote(app: &TestApp, user: &Session, tool: &str, body: &Value) -> reqwest::Response {
    app.post_authed(
        &format!("/api/v1/tools/{tool}/quote"),
        &user.access_token,
        body,
    )
    .await
}

async fn execute(app: &TestApp, user: &Session, tool: &str, body: &Value) -> reqwest::Response {
    app.post_authed(
        &format!("/api/v1/tools/{tool}/execute"),
        &user.access_token,
        body,
    )
    .await
}

#[tokio::test]
async fn the_quoted_price_is_the_price_charged_for_every_kind_of_unit() {
    let (app, user) = app_with(&[]).await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(completion(r#"{"text": "Готово.", "edits": []}"#, Some(40)))
        .mount(openai(&app))
        .await;
    app.topup(&user.user_id, 1000).await;
    // A listing says how a price grows, and what a JSON result looks like.
    let tab: Value = app
        .get_authed("/api/v1/tools/tabs/everyday", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    let spell = tab["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "spell_check")
        .unwrap();
    assert_eq!(
        spell["price_per_unit"],
        json!({"field": "text", "unit": "1000_characters", "included": 2, "rates": {"quick": 2}})
    );
    assert_eq!(spell["output_format"], "json");
    assert_eq!(spell["result_schema"]["required"], json!(["text", "edits"]));
    let cases = [
        // (tool, input, expected price, units, unit)
        (
            "spell_check",
            json!({"text": "я".repeat(2500)}),
            5 + 2,
            Some(3),
            Some("1000_characters"),
        ),
        (
            "spell_check",
            json!({"text": "Коротко."}),
            5,
            Some(1),
            Some("1000_characters"),
        ),
        (
            "translate",
            json!({"text": "ы".repeat(10_000), "target_language": "en"}),
            10 + 9 * 8,
            Some(10),
            Some("1000_characters"),
        ),
        (
            "essay",
            json!({"topic": "Зима", "length_words": 1500}),
            20 + 12 * 3,
            Some(15),
            Some("100_words"),
        ),
        (
            "speech",
            json!({"occasion": "Юбилей школы", "duration_minutes": 10}),
            15 + 8 * 3,
            Some(10),
            Some("minutes"),
        ),
        (
            "presentation_text",
            json!({"topic": "Итоги года", "slides": 12}),
            20 + 7 * 2,
            Some(12),
            Some("items"),
        ),
        (
            "slogan",
            json!({"product": "Кофейня у дома"}),
            5,
            None,
            None,
        ),
    ];
    let mut balance = 1000;
    for (tool, input, price, units, unit) in cases {
        let body = json!({"input": input});
        let response = quote(&app, &user, tool, &body).await;
        assert_eq!(response.status(), 200, "{tool}");
        let quoted: Value = response.json().await.unwrap();
        assert_eq!(quoted["tool_id"], tool);
        assert_eq!(quoted["mode"], "quick");
        assert_eq!(quoted["cost_raits"], price, "{tool}: {quoted}");
        assert_eq!(quoted["units"], json!(units), "{tool}: {quoted}");
        assert_eq!(quoted["unit"], json!(unit), "{tool}: {quoted}");

        let response = execute(&app, &user, tool, &body).await;
        assert_eq!(response.status(), 200, "{tool}");
        let session: Value = response.json().await.unwrap();
        assert_eq!(session["cost_raits"], price, "{tool}");
        balance -= price;
        assert_eq!(
            app.balance_and_ledger_sum(&user.user_id),
            (balance, balance),
            "{tool}"
        );
    }

    // Standard mode has its own rate; an image tool is priced by its format.
    let standard = quote(
        &app,
        &user,
        "essay",
        &json!({"input": {"topic": "Зима", "length_words": 1000}, "mode": "standard"}),
    )
    .await;
    assert_eq!(
        standard.json::<Value>().await.unwrap()["cost_raits"],
        60 + 7 * 9
    );
    let picture = quote(
        &app,
        &user,
        "image_generate",
        &json!({"input": {"prompt": "Маяк", "format": "print"}}),
    )
    .await;
    let picture: Value = picture.json().await.unwrap();
    assert_eq!(picture["cost_raits"], 50);
    assert!(picture.get("units").is_none(), "{picture}");
}

#[tokio::test]
async fn a_quote_is_refused_as_execute_would_be_and_charges_nothing() {
    let (app, user) = app_with(&[]).await;
    app.topup(&user.user_id, 100).await;
    let unknown = quote(&app, &user, "no_such_tool", &json!({"input": {}})).await;
    expect_error(unknown, 404, "not_found").await;
    let missing = quote(&app, &user, "essay", &json!({"input": {}})).await;
    let body = expect_error(missing, 422, "validation_error").await;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "input", "topic"]));
    let mode = quote(
        &app,
        &user,
        "essay",
        &json!({"input": {"topic": "Зима"}, "mode": "slow"}),
    )
    .await;
    expect_error(mode, 422, "validation_error").await;
    let unsupported = quote(
        &app,
        &user,
        "spell_check",
        &json!({"input": {"text": "Текст"}, "mode": "standard"}),
    )
    .await;
    expect_error(unsupported, 400, "mode_not_supported").await;
    let anonymous = app
        .post_json(
            "/api/v1/tools/essay/quote",
            &json!({"input": {"topic": "Зима"}}),
        )
        .await;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (100, 100));
    assert_eq!(openai(&app).received_requests().await.unwrap().len(), 0);
}

#[tokio::test]
async fn a_contract_is_never_sent_to_a_lite_model() {
    // The only provider runs a lite model: refused before anything is charged.
    let (app, user) = app_with(&[("OPENAI_MODEL", "gpt-4o-mini")]).await;
    app.topup(&user.user_id, 500).await;
    let contract = json!({"input": {
        "contract_type": "services", "party_a": "ООО «Ромашка»", "party_b": "ИП Иванов И. И.",
        "subject": "Уборка офиса",
    }});
    let refused = execute(&app, &user, "contract_generate", &contract).await;
    let body = expect_error(refused, 503, "providers_unavailable").await;
    assert!(
        body["detail"].as_str().unwrap().contains("pro model"),
        "{body}"
    );
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (500, 500));
    assert_eq!(openai(&app).received_requests().await.unwrap().len(), 0);
    // A lite model is fine for a lite tool.
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(completion("Слоган.", Some(20)))
        .mount(openai(&app))
        .await;
    let slogan = execute(
        &app,
        &user,
        "slogan",
        &json!({"input": {"product": "Кофейня"}}),
    )
    .await;
    assert_eq!(slogan.status(), 200);
}

#[tokio::test]
async fn a_contract_passes_over_a_lite_provider_to_the_pro_model_of_another() {
    const FOLDER: &str = "b1gfolder";
    let yandex = MockServer::start().await;
    // Only the quality model may be asked.
    Mock::given(method("POST"))
        .and(path("/completion"))
        .and(body_partial_json(json!({
            "modelUri": format!("gpt://{FOLDER}/yandexgpt/latest"),
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {
            "alternatives": [{"message": {"role": "assistant", "text": "ДОГОВОР ОКАЗАНИЯ УСЛУГ"},
                              "status": "ALTERNATIVE_STATUS_FINAL"}],
            "usage": {"inputTextTokens": "100", "completionTokens": "50", "totalTokens": "150"},
            "modelVersion": "01.01.2026",
        }})))
        .expect(1)
        .mount(&yandex)
        .await;
    let (app, user) = app_with(&[
        ("OPENAI_MODEL", "gpt-4o-mini"),
        ("YANDEXGPT_API_KEY", "yandex-key"),
        ("YANDEXGPT_FOLDER_ID", FOLDER),
        ("YANDEXGPT_BASE_URL", &yandex.uri()),
    ])
    .await;
    app.topup(&user.user_id, 500).await;
    let response = execute(
        &app,
        &user,
        "contract_generate",
        &json!({"input": {
            "contract_type": "services", "party_a": "ООО «Ромашка»", "party_b": "ИП Иванов И. И.",
            "subject": "Уборка офиса",
        }}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let session: Value = response.json().await.unwrap();
    assert_eq!(session["provider_used"], "yandexgpt");
    // The disclaimer is the server's, though the model wrote none.
    let result = session["result"].as_str().unwrap();
    assert!(result.starts_with("ДОГОВОР ОКАЗАНИЯ УСЛУГ"));
    assert!(
        result.trim_end().ends_with(
            "Документ подготовлен с помощью ИИ и не является юридической консультацией. \
             Перед подписанием проверьте его с юристом.*"
        ),
        "{result}"
    );
    assert_eq!(openai(&app).received_requests().await.unwrap().len(), 0);
}

#[tokio::test]
async fn disclaimers_are_the_servers_and_appear_once_where_they_apply() {
    let (app, user) = app_with(&[]).await;
    app.topup(&user.user_id, 500).await;
    const CAUTION: &str = "Перед отправкой сверьте сроки, суммы и ссылки на договор и закон";
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(completion(
            "Уважаемый Иван Иванович! Просим оплатить счёт.",
            Some(30),
        ))
        .mount(openai(&app))
        .await;
    let letter = |kind: &str| json!({"input": {"recipient": "ООО «Вектор»", "purpose": "Оплата счёта № 12", "letter_type": kind}});
    for (kind, cautioned) in [
        ("payment_reminder", true),
        ("claim", true),
        ("request", false),
    ] {
        let response = execute(&app, &user, "business_letter", &letter(kind)).await;
        assert_eq!(response.status(), 200);
        let result = response.json::<Value>().await.unwrap()["result"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(result.contains(CAUTION), cautioned, "{kind}: {result}");
        assert!(result.starts_with("Уважаемый Иван Иванович!"));
    }

    // A model that wrote the note itself does not get it twice.
    let (app, user) = app_with(&[]).await;
    app.topup(&user.user_id, 500).await;
    let note = "Анализ подготовлен с помощью ИИ и не является юридической консультацией. \
                Перед подписанием или важным решением обратитесь к юристу.";
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(completion(
            &format!("## Риски\n\nНет срока оплаты.\n\n{note}"),
            Some(30),
        ))
        .mount(openai(&app))
        .await;
    let response = execute(
        &app,
        &user,
        "contract_analyze",
        &json!({"input": {"contract_text": "Договор оказания услуг…"}}),
    )
    .await;
    let result = response.json::<Value>().await.unwrap()["result"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(result.matches(note).count(), 1, "{result}");
}

#[tokio::test]
async fn spell_check_answers_text_and_edits_or_fails_and_refunds() {
    let (app, user) = app_with(&[]).await;
    app.topup(&user.user_id, 100).await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .and(body_string_contains("Превет"))
        .respond_with(completion(
            "```json\n{\"text\": \"Привет, мир.\", \"edits\": [{\"from\": \"Превет\", \"to\": \"Привет\", \"reason\": \"орфография\"}]}\n```",
            None,
        ))
        .mount(openai(&app))
        .await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .and(body_string_contains("Плохо"))
        .respond_with(completion("Плохо, но исправлено.", Some(10)))
        .mount(openai(&app))
        .await;
    let response = execute(
        &app,
        &user,
        "spell_check",
        &json!({"input": {"text": "Превет, мир."}}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let session: Value = response.json().await.unwrap();
    assert_eq!(
        session["result"],
        json!({"text": "Привет, мир.", "edits": [{"from": "Превет", "to": "Привет", "reason": "орфография"}]})
    );
    // The provider reported no usage: counted by the server, never 0.
    assert!(session["tokens_used"].as_i64().unwrap() > 0, "{session}");

    // Not the JSON the tool asks for: a failed run, refunded.
    let response = execute(
        &app,
        &user,
        "spell_check",
        &json!({"input": {"text": "Плохо"}}),
    )
    .await;
    assert_eq!(response.status(), 503);
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (95, 95));
}
