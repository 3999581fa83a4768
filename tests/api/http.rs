//! HTTP conventions of CONTRACT §3 that hold for every endpoint.

use serde_json::{Value, json};

use crate::helpers::{builder, email, expect_error, spawn_app};

#[tokio::test]
async fn health_touches_the_database() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/api/v1/nope"))
        .send()
        .await
        .unwrap();
    expect_error(response, 404, "not_found").await;
    let response = app
        .client
        .delete(app.url("/api/v1/auth/login"))
        .send()
        .await
        .unwrap();
    expect_error(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_413() {
    let app = spawn_app().await;
    let big = json!({"email": "a@b.co", "password": "x".repeat(1024 * 1024 + 10)});
    let response = app.post_json("/api/v1/auth/register", &big).await;
    expect_error(response, 413, "payload_too_large").await;
    // Just under the limit is parsed (and then refused for its content, not its size).
    let fits = json!({"email": "a@b.co", "password": "x".repeat(1000 * 1024)});
    let response = app.post_json("/api/v1/auth/register", &fits).await;
    expect_error(response, 422, "validation_error").await;
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_the_clients() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/health")).send().await.unwrap();
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok());
    let response = app
        .client
        .get(app.url("/api/v1/missing"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
}

#[tokio::test]
async fn cors_allows_the_frontend_with_credentials_only() {
    let app = builder()
        .env("FRONTEND_URL", "https://app.example.com/")
        .spawn()
        .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/auth/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert!(allowed.status().is_success());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    let denied = preflight("https://evil.example").await.unwrap();
    assert!(!denied.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn openapi_document_and_docs_page_are_served_without_a_cdn() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/auth/logout",
        "/api/v1/auth/me",
        "/health",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    let page = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger"), "not the docs page");
    assert!(
        !html.contains("https://"),
        "the docs page loads something from the network"
    );
    let script = app
        .client
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    let init = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/api/v1/openapi.json"));
}

#[tokio::test]
async fn garbage_never_produces_a_500() {
    let app = spawn_app().await;
    let bodies = [
        "\u{0}",
        "{\"email\":",
        "{\"email\":null,\"password\":null}",
        "[]",
        "123",
        "\"str\"",
        "{\"email\":\"a@b.co\",\"password\":{\"x\":1}}",
    ];
    for path in ["/api/v1/auth/register", "/api/v1/auth/login"] {
        for body in bodies {
            let response = app
                .client
                .post(app.url(path))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_client_error(),
                "{path} {body:?} -> {}",
                response.status()
            );
        }
    }
    for token in ["", "a.b.c", "....", "Bearer", "\u{7f}"] {
        let response = app
            .client
            .get(app.url("/api/v1/auth/me"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await;
        if let Ok(response) = response {
            assert_eq!(response.status(), 401, "{token:?}");
        }
    }
}

#[tokio::test]
async fn fake_upstreams_are_reachable_and_wired_into_the_configuration() {
    let app = builder()
        .upstream("OPENAI_BASE_URL")
        .upstream("YOOKASSA_BASE_URL")
        .spawn()
        .await;
    let fake = &app.upstreams["OPENAI_BASE_URL"];
    assert_eq!(app.state.config.openai.base_url, fake.uri());
    assert_eq!(
        app.state.config.yookassa.base_url,
        app.upstreams["YOOKASSA_BASE_URL"].uri()
    );
    wiremock::Mock::given(wiremock::matchers::path("/ping"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_string("pong"))
        .expect(1)
        .mount(fake)
        .await;
    let text = app
        .client
        .get(format!("{}/ping", fake.uri()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "pong");
}

/// The answers every operation can get from the shared extractors are in the document, so a
/// generated client or a fuzzer (scripts/fuzz-api.sh) meets no status it does not name.
#[tokio::test]
async fn every_operation_documents_the_shared_answers() {
    let doc = serde_json::to_value(easy_writer::server::openapi()).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            let named = |status: &str| responses.contains_key(status);
            let schemes: Vec<&str> = operation["security"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r.as_object().unwrap().keys().map(String::as_str))
                .collect();
            if schemes.contains(&"bearer") {
                assert!(named("401") && named("403"), "{method} {path}: 401/403");
            }
            if schemes.contains(&"access_password") {
                assert!(named("401") && named("429"), "{method} {path}: 401/429");
            }
            let body = &operation["requestBody"]["content"];
            if body.get("application/json").is_some() {
                assert!(named("415") && named("422"), "{method} {path}: 415/422");
            }
            if operation["parameters"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
            {
                assert!(named("422") || named("404"), "{method} {path}: 422");
            }
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} operations");
    let detail = &doc["components"]["schemas"]["ErrorBody"]["properties"]["detail"];
    let kinds: Vec<&Value> = detail["oneOf"].as_array().unwrap().iter().collect();
    assert_eq!(kinds[0]["type"], "string");
    assert_eq!(kinds[1]["type"], "array");
    let limit = doc["paths"]["/api/v1/user/transactions"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&json!(1), &json!(100))
    );
}

/// A repeated or mistyped query parameter is a validation error like any other.
#[tokio::test]
async fn a_query_string_that_does_not_fit_is_422() {
    let app = spawn_app().await;
    let user = app.register(&email("query")).await;
    for path in [
        "/api/v1/images/01a21dde-d83b-72e4-aff3-2dde07ea8a1a/file?variant=original&variant=upscaled",
        "/api/v1/generation/sessions?status=done&status=failed",
        "/api/v1/images/01a21dde-d83b-72e4-aff3-2dde07ea8a1a/file?expires=soon",
    ] {
        let response = app.get_authed(path, &user.access_token).await;
        let body = expect_error(response, 422, "validation_error").await;
        assert_eq!(body["detail"][0]["loc"][0], "query", "{path}");
    }
}
