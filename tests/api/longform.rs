//! Long documents through a provider with a small answer limit: a 25-page abstract written
//! and edited part by part arrives whole and at length, a short draft gets its one top-up
//! call, and the price charged is the price quoted.
//!
//! The fake here is an OpenAI-compatible server that *writes*: a plan when asked for one, a
//! part of the asked number of words, an edited part that keeps its length, and it cuts every
//! answer at [`LIMIT`] words (`finish_reason: "length"`), as a real model's `max_tokens` does.
//! It reports no usage, as some OpenAI-compatible servers do when streaming.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::helpers::{Session, TestApp, builder, email};

/// Words per answer, like a 4,000-token limit.
const LIMIT: usize = 4000;

const PLAN: &str = "Введение\nГлава 1. Истоки реформ\n1.1. Государство до реформ\n1.2. Первые преобразования\n\
Глава 2. Ход реформ\n2.1. Армия и флот\n2.2. Управление\n2.3. Экономика\nЗаключение\nСписок литературы";

#[derive(Clone, Default)]
struct Writer {
    requests: Arc<Mutex<Vec<Value>>>,
    /// A part is written this share of the words asked (percent).
    diligence: Arc<Mutex<usize>>,
}

impl Writer {
    async fn start(diligence: usize) -> (Writer, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let writer = Writer {
            diligence: Arc::new(Mutex::new(diligence)),
            ..Writer::default()
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(writer.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (writer, url)
    }

    fn users(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                r["messages"][1]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    }
}

/// The number after `label` in `text`.
fn number_after(text: &str, label: &str) -> Option<usize> {
    let rest = &text[text.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// `n` words of filler.
fn words(n: usize) -> String {
    (0..n)
        .map(|i| ["реформа", "государство", "армия", "указ"][i % 4])
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the fake writes for a request.
fn write(writer: &Writer, user: &str, system: &str) -> String {
    let diligence = *writer.diligence.lock().unwrap();
    if let Some(at) = user.find("всё, что ниже этой строки, до конца сообщения:\n")
        && (user.contains("Часть «") || user.contains("Нужный объём части"))
    {
        let part = &user[at + "всё, что ниже этой строки, до конца сообщения:\n".len()..];
        if let Some(wanted) = number_after(user, "Нужный объём части: около") {
            // The top-up: the part, written out to the asked length.
            let heading = part.lines().next().unwrap_or_default();
            return format!("{heading}\n\n{}", words(wanted));
        }
        // An editor keeps the part as it is.
        return part.trim().to_owned();
    }
    if system.contains("метатеги") {
        return "**Title:** Реформы Петра I: коротко\n**Description:** Что изменили реформы."
            .into();
    }
    if let Some(section) = user
        .split("Напиши часть: ")
        .nth(1)
        .or_else(|| user.split("Напиши раздел: ").nth(1))
    {
        let section = section.lines().next().unwrap_or_default().trim();
        let wanted = number_after(user, "Объём части: около").unwrap_or(300);
        let n = if section.starts_with("Список литературы") {
            40
        } else {
            wanted * diligence / 100
        };
        let level = if section.starts_with(char::is_numeric) {
            "###"
        } else {
            "##"
        };
        return format!("{level} {section}\n\n{}", words(n));
    }
    if system.contains("составь план") {
        return PLAN.into();
    }
    "Разбор задания: цель, задачи, понятия.".into()
}

async fn answer(State(writer): State<Writer>, body: String) -> Response {
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    writer.requests.lock().unwrap().push(request.clone());
    let system = request["messages"][0]["content"].as_str().unwrap_or("");
    let user = request["messages"][1]["content"].as_str().unwrap_or("");
    let text = write(&writer, user, system);
    // The answer limit: whole words up to LIMIT, then "length".
    let all: Vec<&str> = text.split(' ').collect();
    let (text, reason) = if all.len() > LIMIT {
        (all[..LIMIT].join(" "), "length")
    } else {
        (text.clone(), "stop")
    };
    let chunks: Vec<String> = text
        .split_inclusive(' ')
        .collect::<Vec<_>>()
        .chunks(50)
        .map(|c| c.concat())
        .collect();
    let body = async_stream::stream! {
        for chunk in chunks {
            let event = json!({"model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": chunk}, "finish_reason": null}]});
            yield Ok::<_, Infallible>(Bytes::from(format!("data: {event}\n\n")));
        }
        let last = json!({"model": "gpt-4o", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]});
        yield Ok(Bytes::from(format!("data: {last}\n\ndata: [DONE]\n\n")));
    };
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn app_with(url: &str, raits: i64) -> (TestApp, Session) {
    let app = builder()
        .env("OPENAI_BASE_URL", url)
        .env("OPENAI_API_KEY", "sk-test")
        .env("EASY_WRITER_RETRY_BASE_MS", 5)
        .spawn()
        .await;
    let user = app.register(&email("longform")).await;
    app.topup(&user.user_id, raits).await;
    (app, user)
}

fn count_words(text: &str) -> usize {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().any(char::is_alphabetic))
        .count()
}

async fn quote(app: &TestApp, user: &Session, tool: &str, body: &Value) -> Value {
    let response = app
        .post_authed(
            &format!("/api/v1/tools/{tool}/quote"),
            &user.access_token,
            body,
        )
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_25_page_abstract_arrives_whole_and_at_length_through_a_4000_token_limit() {
    let (writer, url) = Writer::start(100).await;
    let (app, user) = app_with(&url, 1000).await;
    let input = json!({
        "topic": "Реформы Петра I", "discipline": "История", "pages": 25,
        "university": "Тверской государственный университет", "student": "Иванова А. С.",
        "group": "ИСТ-21", "teacher": "Петров П. П., доцент", "city": "Тверь",
    });
    let body = json!({"input": input});
    let quoted = quote(&app, &user, "abstract", &body).await;
    assert_eq!(quoted["mode"], "standard");
    assert_eq!(quoted["cost_raits"], 50 + 20 * 20, "{quoted}");
    assert_eq!(quoted["units"], 25);
    assert_eq!(quoted["unit"], "pages");

    let id = app.queue_run(&user, "abstract", &body).await;
    let s = app.settled_session(&user, &id).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["cost_raits"], quoted["cost_raits"]);
    assert_eq!(
        app.balance_and_ledger_sum(&user.user_id),
        (1000 - 450, 1000 - 450)
    );
    let result = s["result"].as_str().unwrap();

    // Whole: every part of the plan, in order, and the server's title page and contents.
    let mut at = 0;
    for line in PLAN.lines() {
        let heading = format!("## {line}");
        let found = result[at..].find(&heading).unwrap_or_else(|| {
            panic!("{heading} missing or out of order");
        });
        at += found + heading.len();
    }
    for on_title_page in [
        "Тверской государственный университет",
        "**РЕФЕРАТ**",
        "по дисциплине «История»",
        "на тему: «Реформы Петра I»",
        "Выполнил(а): Иванова А. С., группа ИСТ-21",
        "Проверил(а): Петров П. П., доцент",
        "Тверь, 20",
    ] {
        assert!(
            result.contains(on_title_page),
            "{on_title_page} not on the title page"
        );
    }
    assert!(result.contains("## Содержание\n\n- Введение\n- Глава 1. Истоки реформ\n  - 1.1."));
    // At length: 25 pages of 250 words, within 10 %.
    let body_words = count_words(&result[result.find("## Введение").unwrap()..]);
    assert!(
        body_words >= 6250 * 9 / 10,
        "{body_words} words for 6,250 asked"
    );

    // Part by part: no call was asked to return more than one part, and none hit the limit.
    let users = writer.users();
    let writes = users
        .iter()
        .filter(|u| u.contains("Напиши часть: "))
        .count();
    let edits = users.iter().filter(|u| u.contains("Часть «")).count();
    assert_eq!((writes, edits), (10, 10), "one write and one edit per part");
    assert!(
        users.iter().all(|u| count_words(u) < LIMIT),
        "a call carried the whole text"
    );
    // Every call went to the pro model with the tool's settings.
    for request in writer.requests.lock().unwrap().iter() {
        assert_eq!(request["model"], "gpt-4o");
        assert_eq!(request["max_tokens"], 4000);
        assert_eq!(request["temperature"], 0.5);
    }
    // The Word file has the title page from the form, then the work.
    let docx = app
        .get_authed(
            &format!("/api/v1/generation/sessions/{id}/export?format=docx"),
            &user.access_token,
        )
        .await;
    assert_eq!(docx.status(), 200);
    let bytes = docx.bytes().await.unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut xml = String::new();
    std::io::Read::read_to_string(&mut archive.by_name("word/document.xml").unwrap(), &mut xml)
        .unwrap();
    for expected in [
        "w:titlePg",
        "РЕФЕРАТ",
        "Выполнил(а): Иванова А. С., группа ИСТ-21",
        "Тверь, 20",
        "Глава 2. Ход реформ",
    ] {
        assert!(xml.contains(expected), "{expected} not in document.xml");
    }
    assert!(!xml.contains("[ФИО студента]"));
    // The provider reported no usage: the server counted.
    assert!(
        s["tokens_used"].as_i64().unwrap() > 6250,
        "tokens_used {}",
        s["tokens_used"]
    );
}

#[tokio::test]
async fn a_short_draft_gets_one_top_up_call_for_its_thinnest_part() {
    // Parts come out at 40 % of what was asked.
    let (writer, url) = Writer::start(40).await;
    let (app, user) = app_with(&url, 1000).await;
    let body = json!({"input": {"topic": "Реформы Петра I", "discipline": "История", "pages": 5}});
    let id = app.queue_run(&user, "abstract", &body).await;
    let s = app.settled_session(&user, &id).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["cost_raits"], 50, "5 pages are the base price");
    let users = writer.users();
    let top_ups: Vec<&String> = users
        .iter()
        .filter(|u| u.contains("Нужный объём части"))
        .collect();
    assert_eq!(top_ups.len(), 1, "exactly one top-up call");
    assert!(
        !top_ups[0].contains("Часть: Список литературы"),
        "the bibliography is never lengthened"
    );
    let result = s["result"].as_str().unwrap();
    let body_words = count_words(&result[result.find("## Введение").unwrap()..]);
    // 10 parts of 125 words asked, 50 written; one part topped up by the whole shortfall.
    assert!(
        body_words > 1250 * 9 / 10,
        "{body_words} words after the top-up"
    );
    // The title page marks what the form did not give.
    assert!(result.contains("[Учебное заведение]") && result.contains("[ФИО студента]"));
}

#[tokio::test]
async fn an_seo_article_gets_its_title_and_description_from_the_finished_text() {
    let (writer, url) = Writer::start(100).await;
    let (app, user) = app_with(&url, 1000).await;
    let body = json!({
        "input": {"topic": "Реформы Петра I", "keywords": ["реформы Петра"], "length_words": 2000},
        "mode": "standard",
    });
    let quoted = quote(&app, &user, "seo_article", &body).await;
    assert_eq!(quoted["cost_raits"], 150 + 15 * 12);
    let id = app.queue_run(&user, "seo_article", &body).await;
    let s = app.settled_session(&user, &id).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["cost_raits"], quoted["cost_raits"]);
    let result = s["result"].as_str().unwrap();
    assert!(
        result.starts_with("**Title:** Реформы Петра I: коротко\n**Description:**"),
        "{result}"
    );
    // The meta step read the whole, edited article (not the plan), and came last.
    let users = writer.users();
    let meta = users.last().unwrap();
    assert!(meta.contains("Статья — всё, что ниже этой строки"));
    assert!(meta.contains("## Заключение") && meta.contains("### 2.3. Экономика"));
    let article = &result[result.find("## Введение").unwrap()..];
    assert!(
        count_words(article) >= 2000 * 9 / 10,
        "{}",
        count_words(article)
    );
}
