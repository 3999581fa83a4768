//! Every non-OAuth row of CONTRACT §4 "Auth", with its errors.

use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

use crate::helpers::{self, JWT_SECRET, PASSWORD, builder, email, expect_error, spawn_app};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn forge(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn register_answers_201_with_an_access_token_and_a_refresh_cookie() {
    let app = spawn_app().await;
    let address = email("reg");
    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"email": address, "password": PASSWORD, "name": "Анна"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let cookie = helpers::set_cookie(response.headers()).expect("set-cookie");
    for attribute in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/api/v1/auth",
        "Max-Age=604800",
        "Secure",
    ] {
        assert!(
            cookie.contains(attribute),
            "{attribute} missing in {cookie}"
        );
    }
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 900);

    // Decode independently of the server's code: HS256 with the configured secret.
    let token = body["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub", "iat"]);
    let claims = jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["typ"], "access");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert!((claims["iat"].as_i64().unwrap() - now()).abs() < 60);
    assert!(
        claims["sid"]
            .as_str()
            .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
    );

    let me: Value = app
        .get_authed("/api/v1/auth/me", token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], claims["sub"]);
    assert_eq!(me["email"], address);
    assert_eq!(me["name"], "Анна");
    assert_eq!(me["provider"], "local");
    assert_eq!(me["balance"], 0);
    let id = uuid::Uuid::parse_str(me["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert!(me["created_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn register_refuses_bad_input_and_taken_emails_without_changing_anything() {
    let app = spawn_app().await;
    let taken = email("taken");
    app.register(&taken).await;

    let upper = taken.to_uppercase();
    let body = expect_error(
        app.post_json(
            "/api/v1/auth/register",
            &json!({"email": upper, "password": PASSWORD}),
        )
        .await,
        409,
        "email_taken",
    )
    .await;
    assert!(body["detail"].is_string());

    let cases = [
        (
            json!({"email": email("short"), "password": "1234567"}),
            "password",
        ),
        (
            json!({"email": "not-an-email", "password": PASSWORD}),
            "email",
        ),
        (
            json!({"email": format!("{}@example.com", "a".repeat(250)), "password": PASSWORD}),
            "email",
        ),
        (
            json!({"email": email("name"), "password": PASSWORD, "name": "x".repeat(101)}),
            "name",
        ),
        (json!({"password": PASSWORD}), "email"),
        (json!({"email": 42, "password": PASSWORD}), "email"),
    ];
    for (body, field) in cases {
        let error = expect_error(
            app.post_json("/api/v1/auth/register", &body).await,
            422,
            "validation_error",
        )
        .await;
        let detail = error["detail"].as_array().expect("a list");
        assert!(
            detail.iter().any(|e| e["loc"] == json!(["body", field])
                && e["msg"].is_string()
                && e["type"].is_string()),
            "{field} not located in {error}"
        );
    }
    // Several failures at once are all listed.
    let error = expect_error(
        app.post_json(
            "/api/v1/auth/register",
            &json!({"email": "x", "password": "y"}),
        )
        .await,
        422,
        "validation_error",
    )
    .await;
    assert_eq!(error["detail"].as_array().unwrap().len(), 2);

    for raw in ["{", "", "[1,2]", "null"] {
        let response = app
            .client
            .post(app.url("/api/v1/auth/register"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        expect_error(response, 422, "validation_error").await;
    }
    let users: i64 = rusqlite::Connection::open(app.database_path())
        .unwrap()
        .query_row("select count(*) from users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(users, 1);
}

#[tokio::test]
async fn twenty_concurrent_registrations_of_one_email_make_exactly_one_account() {
    let app = std::sync::Arc::new(spawn_app().await);
    let address = email("race");
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let app = app.clone();
            // Vary the case: uniqueness ignores it.
            let address = if i % 2 == 0 {
                address.clone()
            } else {
                address.to_uppercase()
            };
            tokio::spawn(async move {
                app.post_json(
                    "/api/v1/auth/register",
                    &json!({"email": address, "password": PASSWORD}),
                )
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
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        19,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn signup_bonus_is_a_ledger_row() {
    let app = builder().env("EASY_WRITER_SIGNUP_BONUS", 50).spawn().await;
    let session = app.register(&email("bonus")).await;
    let me: Value = app
        .get_authed("/api/v1/auth/me", &session.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["balance"], 50);
    assert_eq!(app.balance_and_ledger_sum(&session.user_id), (50, 50));
}

#[tokio::test]
async fn login_succeeds_and_fails_the_same_way_for_unknown_emails() {
    // Room for the timing runs below without tripping the per-email throttle.
    let app = builder()
        .env("EASY_WRITER_LOGIN_MAX_FAILURES", 100)
        .spawn()
        .await;
    let address = email("login");
    app.register(&address).await;

    let response = app.login(&address.to_uppercase(), PASSWORD).await;
    assert_eq!(response.status(), 200);
    assert!(helpers::refresh_cookie(response.headers()).is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");

    let wrong = expect_error(
        app.login(&address, "wrong password").await,
        401,
        "invalid_credentials",
    )
    .await;
    let unknown = expect_error(
        app.login(&email("nobody"), "wrong password").await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(wrong, unknown);

    // An unknown email costs about as much as a wrong password: both run argon2 (~20–40 ms),
    // while a login that skipped it would take well under a millisecond. Medians of
    // interleaved runs keep other tests' load from deciding the comparison.
    let mut wrong_times = Vec::new();
    let mut unknown_times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        app.login(&email("ghost"), "wrong password").await;
        unknown_times.push(started.elapsed());
        let started = Instant::now();
        app.login(&address, "wrong password 2").await;
        wrong_times.push(started.elapsed());
    }
    unknown_times.sort();
    wrong_times.sort();
    let (unknown, wrong) = (unknown_times[2], wrong_times[2]);
    assert!(
        unknown.as_secs_f64() > wrong.as_secs_f64() * 0.3,
        "unknown {unknown:?} vs wrong {wrong:?}"
    );
}

#[tokio::test]
async fn deactivated_users_are_refused_at_login_refresh_and_every_request() {
    let app = spawn_app().await;
    let address = email("inactive");
    let session = app.register(&address).await;
    let address_for_db = address.clone();
    app.state
        .db
        .write(move |tx| easy_writer::users::store::set_active(tx, &address_for_db, false))
        .await
        .unwrap();

    expect_error(
        app.get_authed("/api/v1/auth/me", &session.access_token)
            .await,
        403,
        "inactive",
    )
    .await;
    expect_error(app.login(&address, PASSWORD).await, 403, "inactive").await;
    expect_error(
        app.post_with_cookie("/api/v1/auth/refresh", Some(&session.refresh_cookie))
            .await,
        403,
        "inactive",
    )
    .await;
    // A wrong password still says only "invalid credentials".
    expect_error(
        app.login(&address, "wrong password").await,
        401,
        "invalid_credentials",
    )
    .await;
}

#[tokio::test]
async fn repeated_failures_for_one_email_are_throttled_with_retry_after() {
    let app = builder()
        .env("EASY_WRITER_LOGIN_MAX_FAILURES", 3)
        .spawn()
        .await;
    let address = email("throttle");
    app.register(&address).await;
    for _ in 0..3 {
        expect_error(
            app.login(&address, "wrong password").await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    let response = app.login(&address, PASSWORD).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0 && retry_after <= 900, "{retry_after}");
    expect_error(response, 429, "too_many_attempts").await;
    // Other emails are unaffected.
    let other = email("other");
    app.register(&other).await;
    assert_eq!(app.login(&other, PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn repeated_failures_from_one_ip_are_throttled() {
    let app = builder()
        .env("EASY_WRITER_LOGIN_MAX_FAILURES_PER_IP", 4)
        .spawn()
        .await;
    for _ in 0..4 {
        expect_error(
            app.login(&email("spray"), "wrong password").await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    let response = app.login(&email("spray"), "wrong password").await;
    assert!(response.headers().contains_key("retry-after"));
    expect_error(response, 429, "too_many_attempts").await;
}

#[tokio::test]
async fn refresh_rotates_and_a_second_tab_within_the_grace_window_is_not_theft() {
    let app = spawn_app().await;
    let session = app.register(&email("refresh")).await;

    let response = app
        .post_with_cookie("/api/v1/auth/refresh", Some(&session.refresh_cookie))
        .await;
    assert_eq!(response.status(), 200);
    let rotated = helpers::refresh_cookie(response.headers()).expect("new cookie");
    assert_ne!(rotated, session.refresh_cookie);
    let body: Value = response.json().await.unwrap();
    let access = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get_authed("/api/v1/auth/me", &access).await.status(),
        200
    );

    // The old token again, at once: another tab refreshing concurrently.
    let again = app
        .post_with_cookie("/api/v1/auth/refresh", Some(&session.refresh_cookie))
        .await;
    assert_eq!(again.status(), 200);
    // Both successors keep working.
    assert_eq!(
        app.post_with_cookie("/api/v1/auth/refresh", Some(&rotated))
            .await
            .status(),
        200
    );

    // The `sid` claim names the same family throughout.
    assert_eq!(sid_of(&access), sid_of(&session.access_token));
}

#[tokio::test]
async fn reusing_a_rotated_token_after_the_grace_window_revokes_the_family() {
    let app = builder()
        .env("EASY_WRITER_REFRESH_GRACE_SECS", 0)
        .spawn()
        .await;
    let session = app.register(&email("reuse")).await;
    let response = app
        .post_with_cookie("/api/v1/auth/refresh", Some(&session.refresh_cookie))
        .await;
    assert_eq!(response.status(), 200);
    let rotated = helpers::refresh_cookie(response.headers()).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    expect_error(
        app.post_with_cookie("/api/v1/auth/refresh", Some(&session.refresh_cookie))
            .await,
        401,
        "invalid_token",
    )
    .await;
    // The legitimate successor and the family's access tokens die with it.
    expect_error(
        app.post_with_cookie("/api/v1/auth/refresh", Some(&rotated))
            .await,
        401,
        "invalid_token",
    )
    .await;
    expect_error(
        app.get_authed("/api/v1/auth/me", &session.access_token)
            .await,
        401,
        "invalid_token",
    )
    .await;
    // Other sign-ins of the same user are untouched.
    let other = app.login(&session.email, PASSWORD).await;
    assert_eq!(other.status(), 200);
}

#[tokio::test]
async fn refresh_without_or_with_a_bad_cookie_is_401() {
    let app = spawn_app().await;
    expect_error(
        app.post_with_cookie("/api/v1/auth/refresh", None).await,
        401,
        "not_authenticated",
    )
    .await;
    expect_error(
        app.post_with_cookie("/api/v1/auth/refresh", Some("forged-token"))
            .await,
        401,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn logout_clears_the_cookie_and_revokes_the_session() {
    let app = spawn_app().await;
    let session = app.register(&email("logout")).await;
    let response = app
        .post_with_cookie("/api/v1/auth/logout", Some(&session.refresh_cookie))
        .await;
    assert_eq!(response.status(), 204);
    let cleared = helpers::set_cookie(response.headers()).expect("cookie cleared");
    assert!(cleared.starts_with("refresh_token=;"), "{cleared}");
    assert!(
        cleared.contains("Max-Age=0") && cleared.contains("Path=/api/v1/auth"),
        "{cleared}"
    );

    expect_error(
        app.post_with_cookie("/api/v1/auth/refresh", Some(&session.refresh_cookie))
            .await,
        401,
        "invalid_token",
    )
    .await;
    expect_error(
        app.get_authed("/api/v1/auth/me", &session.access_token)
            .await,
        401,
        "invalid_token",
    )
    .await;
    // Logging out twice, or without a cookie, is harmless.
    assert_eq!(
        app.post_with_cookie("/api/v1/auth/logout", None)
            .await
            .status(),
        204
    );
}

#[tokio::test]
async fn me_refuses_missing_tampered_expired_and_unsigned_tokens() {
    let app = spawn_app().await;
    let session = app.register(&email("me")).await;

    let response = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    expect_error(response, 401, "not_authenticated").await;

    // Tampered payload: flip the subject.
    let mut parts: Vec<String> = session.access_token.split('.').map(str::to_owned).collect();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&parts[1])
        .unwrap();
    let mut claims: Value = serde_json::from_slice(&payload).unwrap();
    claims["sub"] = json!(uuid::Uuid::now_v7().to_string());
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&claims).unwrap());
    let tampered = parts.join(".");
    expect_error(
        app.get_authed("/api/v1/auth/me", &tampered).await,
        401,
        "invalid_token",
    )
    .await;

    // alg: none, no signature.
    let header =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{header}.{}.", parts[1]);
    expect_error(
        app.get_authed("/api/v1/auth/me", &unsigned).await,
        401,
        "invalid_token",
    )
    .await;

    let base = |exp: i64, typ: &str| {
        json!({"sub": session.user_id, "iat": exp - 900, "exp": exp, "typ": typ,
               "sid": sid_of(&session.access_token)})
    };
    let expired = forge(&base(now() - 5, "access"));
    let response = app.get_authed("/api/v1/auth/me", &expired).await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    expect_error(response, 401, "token_expired").await;

    let refresh_typed = forge(&base(now() + 600, "refresh"));
    expect_error(
        app.get_authed("/api/v1/auth/me", &refresh_typed).await,
        401,
        "invalid_token",
    )
    .await;

    // A correctly signed token of ours still works, proving the forgeries failed for their flaw.
    let good = forge(&base(now() + 600, "access"));
    assert_eq!(app.get_authed("/api/v1/auth/me", &good).await.status(), 200);

    let response = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "not_authenticated").await;
}

fn sid_of(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_owned()
}
