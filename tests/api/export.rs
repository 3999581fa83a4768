//! `GET /generation/sessions/{id}/export` end to end: sessions produced over real HTTP against
//! the fake LLM, exported as DOCX (unzipped and its XML checked), Markdown and plain text, and
//! the error paths.

use std::io::Read;

use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Reply};
use crate::helpers::{Session, TestApp, builder, email, expect_error};

const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";

/// What the fake model answers for `notes`: a heading, a list and a GFM table.
const NOTES: &str = "# Фотосинтез\n\n## Главное\n\n- **Свет** даёт энергию\n- Вода\n  - \
                     вложенный пункт\n\n1. первый\n2. второй\n\n| Понятие | Пример |\n\
                     |---|---|\n| Хлорофилл | *лист* |\n";

async fn app_with(fake: &FakeLlm) -> (TestApp, Session) {
    let app = builder()
        .env("OPENAI_BASE_URL", &fake.url)
        .env("OPENAI_API_KEY", "sk-test")
        .env("EASY_WRITER_RETRY_BASE_MS", 5)
        .spawn()
        .await;
    let user = app.register(&email("export")).await;
    app.topup(&user.user_id, 500).await;
    (app, user)
}

/// A quick `notes` run answered with [`NOTES`]; the session.
async fn notes(app: &TestApp, fake: &FakeLlm, user: &Session) -> Value {
    fake.then(Reply::text(&[NOTES]));
    let response = app
        .post_authed(
            "/api/v1/tools/notes/execute",
            &user.access_token,
            &json!({"input": {"text": "Фотосинтез — процесс образования органических веществ."}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let session: Value = response.json().await.unwrap();
    assert_eq!(session["status"], "completed", "{session}");
    session
}

async fn export(app: &TestApp, user: &Session, id: &str, query: &str) -> reqwest::Response {
    app.get_authed(
        &format!("/api/v1/generation/sessions/{id}/export{query}"),
        &user.access_token,
    )
    .await
}

/// The named parts of a DOCX archive, as text.
fn unzip(bytes: &[u8]) -> std::collections::HashMap<String, String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip");
    let mut parts = std::collections::HashMap::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        let mut text = String::new();
        if file.read_to_string(&mut text).is_ok() {
            parts.insert(file.name().to_owned(), text);
        }
    }
    parts
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers()[name].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_notes_session_exports_as_a_word_document_with_real_structure() {
    let fake = FakeLlm::start().await;
    let (app, user) = app_with(&fake).await;
    let session = notes(&app, &fake, &user).await;
    let id = session["id"].as_str().unwrap();
    let date = &session["created_at"].as_str().unwrap()[..10];

    // No format: a DOCX.
    let response = export(&app, &user, id, "").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), DOCX);
    assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    assert_eq!(
        header(&response, "content-disposition"),
        format!(
            "attachment; filename=\"notes-{date}.docx\"; \
             filename*=UTF-8''%D0%9A%D0%BE%D0%BD%D1%81%D0%BF%D0%B5%D0%BA%D1%82%20{date}.docx"
        )
    );
    let parts = unzip(&response.bytes().await.unwrap());
    let document = &parts["word/document.xml"];
    assert!(
        document.contains(r#"<w:pStyle w:val="Heading1" />"#),
        "{document}"
    );
    assert!(document.contains(r#"<w:pStyle w:val="Heading2" />"#));
    assert!(document.contains("Фотосинтез") && document.contains("Главное"));
    assert!(document.contains("<w:numPr>"), "list numbering");
    assert!(
        document.contains(r#"<w:ilvl w:val="1" />"#),
        "a nested level"
    );
    assert!(document.contains("<w:tbl>"), "a table");
    assert!(document.contains("Хлорофилл"));
    assert!(!document.contains("**") && !document.contains("| "));
    let margins = document
        .split("<w:pgMar ")
        .nth(1)
        .expect("page margins")
        .split("/>")
        .next()
        .unwrap();
    for margin in [
        r#"w:left="1701""#,
        r#"w:right="850""#,
        r#"w:top="1134""#,
        r#"w:bottom="1134""#,
    ] {
        assert!(margins.contains(margin), "{margin} in {margins}");
    }
    assert!(document.contains(r#"<w:pgSz w:w="11906" w:h="16838""#));
    assert!(!document.contains("w:titlePg"), "no title page for notes");

    let styles = &parts["word/styles.xml"];
    assert!(styles.contains("Times New Roman"));
    assert!(styles.contains(r#"<w:sz w:val="28" />"#));
    assert!(styles.contains(r#"w:styleId="Heading1""#));
    assert!(styles.contains(r#"<w:name w:val="heading 1" />"#));
    assert!(parts["word/numbering.xml"].contains("<w:abstractNum"));
    let footer = parts
        .iter()
        .find(|(name, _)| name.starts_with("word/footer"))
        .map(|(_, xml)| xml)
        .expect("a footer");
    assert!(footer.contains("PAGE"), "{footer}");
    assert!(footer.contains(r#"w:fldCharType="begin""#));
    let core = &parts["docProps/core.xml"];
    assert!(core.contains("<dc:title>Фотосинтез</dc:title>"), "{core}");
    assert!(!core.contains(&user.email));

    // Markdown: byte for byte as stored.
    let response = export(&app, &user, id, "?format=md").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type"),
        "text/markdown; charset=utf-8"
    );
    assert!(header(&response, "content-disposition").contains(&format!("notes-{date}.md")));
    assert_eq!(response.text().await.unwrap(), NOTES);

    // Plain text: no markup.
    let response = export(&app, &user, id, "?format=txt").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type"),
        "text/plain; charset=utf-8"
    );
    assert!(header(&response, "content-disposition").contains(&format!("notes-{date}.txt")));
    let text = response.text().await.unwrap();
    for mark in ["#", "**", "|", "*"] {
        assert!(!text.contains(mark), "{mark} in {text}");
    }
    assert!(text.starts_with("Фотосинтез\n\nГлавное\n\n— Свет даёт энергию\n"));
    assert!(text.contains("Хлорофилл\tлист"));
}

#[tokio::test]
async fn an_abstract_gets_a_title_page_from_its_form() {
    let fake = FakeLlm::start().await;
    let (app, user) = app_with(&fake).await;
    let response = app
        .post_authed(
            "/api/v1/tools/abstract/execute",
            &user.access_token,
            &json!({"input": {"topic": "Реформы Петра I", "discipline": "История"}}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let id = accepted["session_id"].as_str().unwrap();
    let session = app.settled_session(&user, id).await;
    assert_eq!(session["status"], "completed", "{session}");

    let response = export(&app, &user, id, "?format=docx").await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-disposition").contains("filename=\"abstract-"));
    let parts = unzip(&response.bytes().await.unwrap());
    let document = &parts["word/document.xml"];
    for expected in [
        "РЕФЕРАТ",
        "на тему: «Реформы Петра I»",
        "по дисциплине «История»",
        "[ФИО студента]",
        "[ФИО преподавателя]",
        "[Учебное заведение]",
        "<w:titlePg />",
        r#"<w:br w:type="page" />"#,
    ] {
        assert!(document.contains(expected), "{expected} in {document}");
    }
    let body = session["result"].as_str().unwrap();
    let last_line = body.lines().last().unwrap().trim();
    assert!(
        document.contains(last_line),
        "the body follows the title page"
    );
}

#[tokio::test]
async fn only_the_owners_completed_text_sessions_export() {
    let fake = FakeLlm::start().await;
    let (app, user) = app_with(&fake).await;
    let session = notes(&app, &fake, &user).await;
    let id = session["id"].as_str().unwrap();

    let stranger = app.register(&email("stranger")).await;
    expect_error(export(&app, &stranger, id, "").await, 404, "not_found").await;
    let unknown = uuid::Uuid::now_v7().to_string();
    expect_error(export(&app, &user, &unknown, "").await, 404, "not_found").await;

    let invalid = expect_error(
        export(&app, &user, id, "?format=pdf").await,
        422,
        "validation_error",
    )
    .await;
    assert_eq!(invalid["detail"][0]["loc"], json!(["query", "format"]));

    let anonymous = app
        .client
        .get(app.url(&format!("/api/v1/generation/sessions/{id}/export")))
        .send()
        .await
        .unwrap();
    expect_error(anonymous, 401, "not_authenticated").await;

    // A run the provider refused ends failed: nothing to export.
    fake.then(Reply::Status(400));
    let response = app
        .post_authed(
            "/api/v1/tools/notes/execute",
            &user.access_token,
            &json!({"input": {"text": "Текст."}}),
        )
        .await;
    assert_eq!(response.status(), 503);
    let failed: Value = response.json().await.unwrap();
    let failed_id = failed["session_id"].as_str().unwrap();
    expect_error(
        export(&app, &user, failed_id, "?format=md").await,
        409,
        "not_completed",
    )
    .await;

    // A picture (as image_generate stores it) and a session still queued.
    let picture = uuid::Uuid::now_v7().to_string();
    let queued = uuid::Uuid::now_v7().to_string();
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    conn.execute(
        "insert into generation_sessions
             (id, user_id, tool_id, mode, status, input_data, result, cost_raits,
              created_at, updated_at, completed_at)
         values (?1, ?2, 'image_generate', 'standard', 'completed', '{}',
                 '{\"image_id\":\"x\",\"url\":\"/api/v1/images/x/file\"}', 0,
                 '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z'),
                (?3, ?2, 'notes', 'quick', 'pending', '{}', null, 0,
                 '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', null)",
        rusqlite::params![picture, user.user_id, queued],
    )
    .unwrap();
    drop(conn);
    expect_error(
        export(&app, &user, &picture, "").await,
        409,
        "not_exportable",
    )
    .await;
    expect_error(export(&app, &user, &queued, "").await, 409, "not_completed").await;
}
