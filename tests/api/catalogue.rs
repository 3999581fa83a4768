//! The prompt catalogue: the spec's tabs and tools, every tool's form against realistic and
//! bad input, and `tools check` on a broken prompts directory.

use std::path::Path;

use easy_writer::tools::catalogue::Source;
use easy_writer::tools::{Catalogue, TABS};
use serde_json::Value;

const SPEC_TABS: &[(&str, &str, &str, &[&str])] = &[
    (
        "everyday",
        "На каждый день",
        "sun",
        &[
            "spell_check",
            "paraphrase",
            "simplify",
            "letter",
            "social_post",
            "resume",
            "summarize",
            "translate",
        ],
    ),
    (
        "education",
        "Обучение",
        "graduation-cap",
        &[
            "essay",
            "essay_academic",
            "report",
            "abstract",
            "notes",
            "retelling",
            "qa_text",
        ],
    ),
    (
        "business",
        "Бизнес",
        "briefcase",
        &[
            "contract_generate",
            "contract_analyze",
            "commercial_offer",
            "business_letter",
            "meeting_notes",
            "presentation_text",
        ],
    ),
    (
        "marketing",
        "Маркетинг",
        "megaphone",
        &[
            "seo_article",
            "product_description",
            "email_campaign",
            "landing_text",
            "press_release",
            "slogan",
            "naming",
        ],
    ),
    (
        "special",
        "Особый случай",
        "sparkles",
        &[
            "custom_prompt",
            "greeting_card",
            "toast",
            "speech",
            "image_generate",
            "image_upscale",
        ],
    ),
];

#[test]
fn the_built_in_catalogue_has_exactly_the_spec_tabs_and_tools() {
    let catalogue = Catalogue::load(&Source::Embedded).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(catalogue.len(), 34);
    let tabs: Vec<_> = catalogue
        .tabs()
        .iter()
        .map(|(tab, tools)| {
            (
                tab.id,
                tab.name,
                tab.icon,
                tools.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            )
        })
        .collect();
    let expected: Vec<_> = SPEC_TABS
        .iter()
        .map(|(id, name, icon, tools)| (*id, *name, *icon, tools.to_vec()))
        .collect();
    assert_eq!(tabs, expected);
    assert_eq!(TABS.len(), 5);
    for (_, tools) in catalogue.tabs() {
        for tool in tools {
            assert!(tool.estimated_cost > 0, "{}", tool.id);
            assert!(!tool.supports_modes.is_empty(), "{}", tool.id);
        }
    }
    let marketing = &catalogue.tab("marketing").unwrap().1;
    assert!(
        marketing
            .iter()
            .all(|t| t.recommended_provider == Some(easy_writer::llm::ProviderId::OpenAi))
    );
}

#[test]
fn every_tool_accepts_a_realistic_input_and_rejects_a_bad_one() {
    let catalogue = Catalogue::load(&Source::Embedded).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tools");
    for (_, tools) in catalogue.tabs() {
        for tool in tools {
            let path = dir.join(format!("{}.json", tool.id));
            let fixture: Value = serde_json::from_str(
                &std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            )
            .unwrap();
            let errors = tool.validate(&fixture["valid"]);
            assert!(
                errors.is_empty(),
                "{}: valid input refused: {errors:?}",
                tool.id
            );
            assert!(
                !tool.validate(&fixture["invalid"]).is_empty(),
                "{}: invalid input accepted",
                tool.id
            );
        }
    }
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A copy of the built-in prompts in a directory, to break or extend.
fn copy_prompts(dir: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
    for tab in SPEC_TABS {
        for tool in tab.3 {
            let file = format!("{}/{tool}.yaml", tab.0);
            write(
                dir,
                &file,
                &std::fs::read_to_string(source.join(&file)).unwrap(),
            );
        }
    }
}

const EXTRA_TOOL: &str = r#"
name: Хокку
description: Три строки о теме.
icon: feather
supports_modes: [quick]
estimated_cost: 3
costs: {quick: 3}
output_format: text
input_schema:
  type: object
  additionalProperties: false
  required: [topic]
  properties:
    topic: {type: string, title: Тема, minLength: 1, maxLength: 200}
system_prompt: Ты поэт.
user_template: "Тема: {topic}"
"#;

#[test]
fn a_prompts_directory_may_add_tools_and_broken_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_prompts(dir.path());
    write(dir.path(), "special/haiku.yaml", EXTRA_TOOL);
    let catalogue = Catalogue::load(&Source::Dir(dir.path().to_owned())).unwrap();
    assert_eq!(catalogue.len(), 35);
    assert_eq!(
        catalogue.tab("special").unwrap().1.last().unwrap().id,
        "haiku"
    );

    write(
        dir.path(),
        "special/haiku.yaml",
        &EXTRA_TOOL.replace("Тема: {topic}", "Тема: {topik}"),
    );
    write(dir.path(), "unknown/thing.yaml", EXTRA_TOOL);
    std::fs::remove_file(dir.path().join("everyday/letter.yaml")).unwrap();
    write(dir.path(), "marketing/slogan.yaml", "name: [unclosed");
    let problems = Catalogue::load(&Source::Dir(dir.path().to_owned())).unwrap_err();
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let has = |file: &str, needle: &str| {
        text.iter()
            .any(|p| p.starts_with(file) && p.contains(needle))
    };
    assert!(has("special/haiku.yaml", "{topik}"), "{text:#?}");
    assert!(has("unknown/thing.yaml", "unknown tab"), "{text:#?}");
    assert!(has("everyday/letter.yaml", "missing"), "{text:#?}");
    assert!(has("marketing/slogan.yaml", "invalid YAML"), "{text:#?}");

    // The CLI prints the same lines and exits 1.
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let out = crate::helpers::binary()
        .args(["tools", "check"])
        .env("EASY_WRITER_PROMPTS_DIR", dir.path())
        .env("EASY_WRITER_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("special/haiku.yaml: user_template: placeholder {topik}"),
        "{stdout}"
    );
}

/// [`EXTRA_TOOL`] using every setting the catalogue checks, each one wrong.
fn misconfigured() -> String {
    EXTRA_TOOL
        .replace(
            "output_format: text",
            "output_format: json
temperature: 1.5
max_tokens: 0
price_per_unit: {field: topic, unit: pages, included: 1, rates: {standard: 2}}
length: {field: topic, words_per_unit: 0}
disclaimers: [{text: \" \", when: {field: kind, values: [a]}}]
title_page: {kind: \"\"}",
        )
        .replace("system_prompt: Ты поэт.", "system_prompt: \"Ты поэт. Тема: {topic}\"")
        + "steps:
  - {name: Мета, per_section: true, prepend: true, system_prompt: Ты редактор., user_template: \"{part}\"}
"
}

#[test]
fn every_wrong_setting_of_a_tool_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_prompts(dir.path());
    write(dir.path(), "special/haiku.yaml", &misconfigured());
    write(
        dir.path(),
        "special/tanka.yaml",
        &EXTRA_TOOL.replace(
            "output_format: text",
            "output_format: text\nresult_schema: {type: object}",
        ),
    );
    let problems = Catalogue::load(&Source::Dir(dir.path().to_owned())).unwrap_err();
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    for needle in [
        "temperature must be between 0 and 1",
        "max_tokens must be positive",
        "price_per_unit.field \"topic\" must be an integer field",
        "price_per_unit.rates.standard: not a mode of this tool",
        "length.field \"topic\" must be an integer field",
        "length.words_per_unit must be positive",
        "disclaimers[0].text is empty",
        "disclaimers[0].when.field \"kind\" is not a field",
        "title_page.kind is empty",
        "system_prompt: {topic} is not filled in system prompts",
        "per_section and prepend exclude each other",
        "placeholder {part} is not a field",
        "output_format json needs a result_schema",
    ] {
        assert!(
            text.iter()
                .any(|p| p.starts_with("special/haiku.yaml") && p.contains(needle)),
            "{needle} in {text:#?}"
        );
    }
    assert!(
        text.iter().any(|p| p.starts_with("special/tanka.yaml")
            && p.contains("result_schema is only for output_format json")),
        "{text:#?}"
    );
}

#[tokio::test]
async fn a_served_prompts_directory_is_reloaded_on_change_and_a_broken_change_keeps_the_last_good()
{
    let dir = tempfile::tempdir().unwrap();
    copy_prompts(dir.path());
    let app = crate::helpers::builder()
        .env("EASY_WRITER_PROMPTS_DIR", dir.path().display())
        .spawn()
        .await;
    let user = app.register(&crate::helpers::email("reload")).await;
    let toast_name = |tabs: &Value| -> String {
        tabs["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == "toast")
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let special = || async {
        app.get_authed("/api/v1/tools/tabs/special", &user.access_token)
            .await
            .json::<Value>()
            .await
            .unwrap()
    };
    assert_eq!(toast_name(&special().await), "Тост");

    let file = dir.path().join("special/toast.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replacen("name: Тост", "name: Тост за столом", 1),
    )
    .unwrap();
    let mut reloaded = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if toast_name(&special().await) == "Тост за столом" {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the change was not picked up within 10 s");

    // A broken change is refused; the last good catalogue keeps serving.
    std::fs::write(&file, "name: [broken").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(toast_name(&special().await), "Тост за столом");
}

#[test]
fn serve_refuses_to_start_on_a_broken_prompts_directory() {
    let dir = tempfile::tempdir().unwrap();
    copy_prompts(dir.path());
    write(dir.path(), "everyday/spell_check.yaml", "name: [broken");
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let mut child = crate::helpers::binary()
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("EASY_WRITER_PROMPTS_DIR", dir.path())
        .env("EASY_WRITER_DATA_DIR", dir.path().join("data"))
        .env("EASY_WRITER_CONFIG", &config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(15) {
            let _ = child.kill();
            panic!("serve started on a broken prompts directory");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("everyday/spell_check.yaml: invalid YAML"),
        "{stderr}"
    );
}
