//! Sign in with Google and Yandex (CONTRACT §4 "Auth": the OAuth rows and the linking rules),
//! driven as a browser would: start, keep the state cookie, come back to the callback with a
//! code. Google and Yandex are fake token and userinfo servers on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use easy_writer::auth::oauth::OAuth;
use reqwest::Url;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::{self, Builder, PASSWORD, TestApp, builder, email, expect_error};

const FRONTEND: &str = "https://app.example";
const PUBLIC: &str = "https://api.example";
const GOOGLE_ID: &str = "1234-test.apps.googleusercontent.com";
const GOOGLE_SECRET: &str = "GOCSPX-google-test-secret";
const YANDEX_ID: &str = "4760187d81bc4b7799476b42b5103713";
const YANDEX_SECRET: &str = "yandex-test-secret-value";
const BONUS: i64 = 25;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Provider {
    Google,
    Yandex,
}

use Provider::{Google, Yandex};

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Google => "google",
            Yandex => "yandex",
        }
    }
    fn userinfo_path(self) -> &'static str {
        match self {
            Google => "/oauth2/v2/userinfo",
            Yandex => "/info",
        }
    }
}

/// The fake providers.
struct Fakes {
    google: MockServer,
    yandex: MockServer,
}

impl Fakes {
    fn of(&self, provider: Provider) -> &MockServer {
        match provider {
            Google => &self.google,
            Yandex => &self.yandex,
        }
    }
}

/// A server with both providers configured against fakes, the authorize URLs left at their
/// defaults (the browser never follows them here).
async fn spawn() -> (TestApp, Fakes) {
    spawn_with(|b| b).await
}

async fn spawn_with(more: impl FnOnce(Builder) -> Builder) -> (TestApp, Fakes) {
    let fakes = Fakes {
        google: MockServer::start().await,
        yandex: MockServer::start().await,
    };
    let (g, y) = (fakes.google.uri(), fakes.yandex.uri());
    let b = builder()
        .env("FRONTEND_URL", FRONTEND)
        .env("EASY_WRITER_PUBLIC_URL", PUBLIC)
        .env("EASY_WRITER_SIGNUP_BONUS", BONUS)
        .env("GOOGLE_CLIENT_ID", GOOGLE_ID)
        .env("GOOGLE_CLIENT_SECRET", GOOGLE_SECRET)
        .env("GOOGLE_TOKEN_URL", format!("{g}/token"))
        .env("GOOGLE_USERINFO_URL", format!("{g}/oauth2/v2/userinfo"))
        .env("YANDEX_CLIENT_ID", YANDEX_ID)
        .env("YANDEX_CLIENT_SECRET", YANDEX_SECRET)
        .env("YANDEX_TOKEN_URL", format!("{y}/token"))
        .env("YANDEX_USERINFO_URL", format!("{y}/info"));
    (more(b).spawn().await, fakes)
}

/// A person at a fake provider: the code it issues for them, the access token it trades for
/// that code, and the profile it serves for that token.
async fn person(fakes: &Fakes, provider: Provider, code: &str, profile: Value) {
    let server = fakes.of(provider);
    let token = format!("at-{code}");
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(FormHas("code", code.to_owned()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": token, "token_type": "Bearer", "expires_in": 3599,
        })))
        .mount(server)
        .await;
    let userinfo = Mock::given(method("GET")).and(path(provider.userinfo_path()));
    let userinfo = match provider {
        Google => userinfo.and(header("authorization", format!("Bearer {token}"))),
        Yandex => userinfo
            .and(query_param("format", "json"))
            .and(header("authorization", format!("OAuth {token}"))),
    };
    userinfo
        .respond_with(ResponseTemplate::new(200).set_body_json(profile))
        .mount(server)
        .await;
}

fn google_profile(id: &str, email: &str, verified: bool) -> Value {
    json!({"id": id, "email": email, "verified_email": verified, "name": "Иван Иванов",
           "given_name": "Иван", "family_name": "Иванов", "picture": "https://lh3.example/p",
           "locale": "ru"})
}

fn yandex_profile(id: &str, email: &str) -> Value {
    json!({"id": id, "login": "ivan", "client_id": YANDEX_ID, "psuid": "1.AAceCw",
           "default_email": email, "emails": [email], "display_name": "ivan",
           "real_name": "Иван Петров", "first_name": "Иван", "last_name": "Петров", "sex": "male"})
}

/// Matches a form body containing `key=value`.
struct FormHas(&'static str, String);

impl wiremock::Match for FormHas {
    fn matches(&self, request: &Request) -> bool {
        form(request)
            .iter()
            .any(|(k, v)| k == self.0 && *v == self.1)
    }
}

fn form(request: &Request) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(&request.body).unwrap_or_default()
}

fn form_value<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// What the browser holds after `GET /auth/<provider>`.
struct Started {
    location: Url,
    state: String,
    challenge: String,
    /// The `oauth_state` cookie's value.
    cookie: String,
    /// Its whole `Set-Cookie` header.
    set_cookie: String,
}

impl Started {
    fn param(&self, name: &str) -> Option<String> {
        self.location
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// A server a browser talks to: one in this process, or the real binary.
trait Host {
    fn client(&self) -> &reqwest::Client;
    fn url(&self, path: &str) -> String;
}

impl Host for TestApp {
    fn client(&self) -> &reqwest::Client {
        &self.client
    }
    fn url(&self, path: &str) -> String {
        TestApp::url(self, path)
    }
}

async fn start(app: &impl Host, provider: Provider) -> Started {
    let response = app
        .client()
        .get(app.url(&format!("/api/v1/auth/{}", provider.name())))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let location = Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    let set_cookie = cookie_header(&response, "oauth_state").expect("state cookie");
    let cookie = cookie_value(&set_cookie);
    let param = |name: &str| {
        location
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Started {
        state: param("state"),
        challenge: param("code_challenge"),
        location,
        cookie,
        set_cookie,
    }
}

fn cookie_header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn cookie_value(set_cookie: &str) -> String {
    let pair = set_cookie.split(';').next().unwrap();
    pair.split_once('=').unwrap().1.to_owned()
}

/// The browser coming back from the provider, with `query` and (maybe) the state cookie.
async fn callback(
    app: &impl Host,
    provider: Provider,
    query: &str,
    cookie: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client().get(app.url(&format!(
        "/api/v1/auth/{}/callback?{query}",
        provider.name()
    )));
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("oauth_state={cookie}"));
    }
    request.send().await.unwrap()
}

/// A callback with `code` and the right state and cookie.
async fn come_back(
    app: &impl Host,
    provider: Provider,
    started: &Started,
    code: &str,
) -> reqwest::Response {
    let query = serde_urlencoded::to_string([("code", code), ("state", &started.state)]).unwrap();
    callback(app, provider, &query, Some(&started.cookie)).await
}

/// Asserts a redirect to `FRONTEND/login?error=<error>` that clears the state cookie.
fn assert_login_error(response: &reqwest::Response, provider: Provider, error: &str) {
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        format!("{FRONTEND}/login?error={error}").as_str()
    );
    assert_state_cookie_cleared(response, provider);
    assert!(helpers::refresh_cookie(response.headers()).is_none());
}

fn assert_state_cookie_cleared(response: &reqwest::Response, provider: Provider) {
    let cleared = cookie_header(response, "oauth_state").expect("state cookie cleared");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert!(
        cleared.contains(&format!("Path=/api/v1/auth/{}/callback", provider.name())),
        "{cleared}"
    );
}

/// A successful sign-in as the frontend sees it.
struct SignedIn {
    access_token: String,
    refresh_cookie: String,
    user_id: String,
}

/// Asserts the redirect to `FRONTEND/auth/callback?token=…` with the refresh cookie.
async fn signed_in(app: &TestApp, provider: Provider, response: reqwest::Response) -> SignedIn {
    assert_eq!(response.status(), 302);
    let location = Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(
        location.as_str().split('?').next().unwrap(),
        format!("{FRONTEND}/auth/callback"),
        "{location}"
    );
    let access_token = location
        .query_pairs()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .expect("token in the redirect");
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_state_cookie_cleared(&response, provider);
    let refresh_cookie = helpers::refresh_cookie(response.headers()).expect("refresh cookie");
    let me: Value = app
        .get_authed("/api/v1/auth/me", &access_token)
        .await
        .json()
        .await
        .unwrap();
    SignedIn {
        access_token,
        refresh_cookie,
        user_id: me["id"]
            .as_str()
            .expect("me works with the token")
            .to_owned(),
    }
}

/// Start, provider, callback: the whole round trip for a person set up with [`person`].
async fn sign_in(app: &TestApp, provider: Provider, code: &str) -> SignedIn {
    let started = start(app, provider).await;
    let response = come_back(app, provider, &started, code).await;
    signed_in(app, provider, response).await
}

fn db(app: &TestApp) -> rusqlite::Connection {
    rusqlite::Connection::open(app.database_path()).unwrap()
}

fn count(app: &TestApp, sql: &str) -> i64 {
    db(app).query_row(sql, [], |r| r.get(0)).unwrap()
}

fn identities(app: &TestApp, user_id: &str) -> Vec<(String, String, Option<String>)> {
    let conn = db(app);
    let mut stmt = conn
        .prepare(
            "select provider, provider_id, email from user_identities where user_id = ?1
             order by provider",
        )
        .unwrap();
    stmt.query_map([user_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

async fn requests_to(server: &MockServer, path_: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == path_)
        .collect()
}

fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[tokio::test]
async fn google_sign_in_creates_a_user_and_hands_the_frontend_working_tokens() {
    let (app, fakes) = spawn().await;
    let address = email("google-new");
    person(
        &fakes,
        Google,
        "4/0AX-new",
        google_profile("118234567890123456789", &address, true),
    )
    .await;

    let started = start(&app, Google).await;
    assert_eq!(
        started.location.as_str().split('?').next().unwrap(),
        "https://accounts.google.com/o/oauth2/v2/auth"
    );
    assert_eq!(started.param("client_id").as_deref(), Some(GOOGLE_ID));
    assert_eq!(
        started.param("redirect_uri").as_deref(),
        Some("https://api.example/api/v1/auth/google/callback")
    );
    assert_eq!(started.param("response_type").as_deref(), Some("code"));
    assert_eq!(started.param("scope").as_deref(), Some("email profile"));
    assert_eq!(
        started.param("code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(started.challenge.len(), 43);
    assert!(started.state.len() >= 43, "a state of 256 random bits");
    for attribute in [
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
        "Path=/api/v1/auth/google/callback",
        "Max-Age=600",
    ] {
        assert!(
            started.set_cookie.contains(attribute),
            "{attribute} in {}",
            started.set_cookie
        );
    }
    assert_ne!(
        start(&app, Google).await.state,
        started.state,
        "a new state every time"
    );

    let response = come_back(&app, Google, &started, "4/0AX-new").await;
    let refresh = helpers::set_cookie(response.headers()).expect("refresh cookie");
    for attribute in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/api/v1/auth",
        "Max-Age=604800",
        "Secure",
    ] {
        assert!(refresh.contains(attribute), "{attribute} in {refresh}");
    }
    let user = signed_in(&app, Google, response).await;

    // The token exchange: a form POST with the code, the same redirect URI, the client's
    // credentials and the verifier whose S256 is the challenge sent to the browser.
    let token_calls = requests_to(&fakes.google, "/token").await;
    assert_eq!(token_calls.len(), 1);
    let call = &token_calls[0];
    assert_eq!(
        call.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let body = form(call);
    assert_eq!(form_value(&body, "grant_type"), Some("authorization_code"));
    assert_eq!(form_value(&body, "code"), Some("4/0AX-new"));
    assert_eq!(
        form_value(&body, "redirect_uri"),
        Some("https://api.example/api/v1/auth/google/callback")
    );
    assert_eq!(form_value(&body, "client_id"), Some(GOOGLE_ID));
    assert_eq!(form_value(&body, "client_secret"), Some(GOOGLE_SECRET));
    let verifier = form_value(&body, "code_verifier").expect("code_verifier");
    assert!((43..=128).contains(&verifier.len()));
    assert_eq!(s256(verifier), started.challenge);
    let userinfo_calls = requests_to(&fakes.google, "/oauth2/v2/userinfo").await;
    assert_eq!(userinfo_calls.len(), 1);
    assert_eq!(
        userinfo_calls[0].headers["authorization"],
        "Bearer at-4/0AX-new"
    );

    let profile: Value = app
        .get_authed("/api/v1/user/profile", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(profile["email"], address.as_str());
    assert_eq!(profile["name"], "Иван Иванов");
    assert_eq!(profile["provider"], "google");
    assert_eq!(profile["is_verified"], true);
    assert_eq!(profile["balance"], BONUS, "the signup bonus");
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (BONUS, BONUS));
    let (provider_id, password): (Option<String>, Option<String>) = db(&app)
        .query_row(
            "select provider_id, hashed_password from users where id = ?1",
            [&user.user_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(provider_id.as_deref(), Some("118234567890123456789"));
    assert!(password.is_none());
    assert_eq!(
        identities(&app, &user.user_id),
        [(
            "google".into(),
            "118234567890123456789".into(),
            Some(address.clone())
        )]
    );

    // The refresh cookie works like any other sign-in's.
    let refreshed = app
        .post_with_cookie("/api/v1/auth/refresh", Some(&user.refresh_cookie))
        .await;
    assert_eq!(refreshed.status(), 200);

    // No password: login fails like a wrong one, and one cannot be "changed".
    expect_error(
        app.login(&address, PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    let response = app
        .client
        .put(app.url("/api/v1/user/password"))
        .bearer_auth(&user.access_token)
        .json(&json!({"current_password": "anything at all", "new_password": "new password 1"}))
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "password_not_set").await;
}

#[tokio::test]
async fn yandex_sign_in_creates_a_user_with_the_yandex_protocol() {
    let (app, fakes) = spawn().await;
    let address = email("yandex-new");
    person(
        &fakes,
        Yandex,
        "5713820",
        yandex_profile("1000034426", &address),
    )
    .await;

    let started = start(&app, Yandex).await;
    assert_eq!(
        started.location.as_str().split('?').next().unwrap(),
        "https://oauth.yandex.ru/authorize"
    );
    assert_eq!(started.param("client_id").as_deref(), Some(YANDEX_ID));
    assert_eq!(
        started.param("redirect_uri").as_deref(),
        Some("https://api.example/api/v1/auth/yandex/callback")
    );
    assert_eq!(started.param("response_type").as_deref(), Some("code"));
    assert_eq!(
        started.param("scope").as_deref(),
        Some("login:email login:info")
    );
    assert_eq!(
        started.param("code_challenge_method").as_deref(),
        Some("S256")
    );
    assert!(
        started
            .set_cookie
            .contains("Path=/api/v1/auth/yandex/callback")
    );

    let response = come_back(&app, Yandex, &started, "5713820").await;
    let user = signed_in(&app, Yandex, response).await;

    let token_calls = requests_to(&fakes.yandex, "/token").await;
    assert_eq!(token_calls.len(), 1);
    let body = form(&token_calls[0]);
    assert_eq!(form_value(&body, "grant_type"), Some("authorization_code"));
    assert_eq!(form_value(&body, "code"), Some("5713820"));
    assert_eq!(form_value(&body, "client_id"), Some(YANDEX_ID));
    assert_eq!(form_value(&body, "client_secret"), Some(YANDEX_SECRET));
    assert_eq!(
        form_value(&body, "redirect_uri"),
        Some("https://api.example/api/v1/auth/yandex/callback")
    );
    assert_eq!(
        s256(form_value(&body, "code_verifier").unwrap()),
        started.challenge
    );
    let info = requests_to(&fakes.yandex, "/info").await;
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].headers["authorization"], "OAuth at-5713820");
    assert_eq!(info[0].url.query(), Some("format=json"));

    let profile: Value = app
        .get_authed("/api/v1/user/profile", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(profile["email"], address.as_str());
    assert_eq!(profile["name"], "Иван Петров");
    assert_eq!(profile["provider"], "yandex");
    assert_eq!(
        profile["is_verified"], true,
        "default_email counts as verified"
    );
    assert_eq!(profile["balance"], BONUS);
    assert_eq!(
        identities(&app, &user.user_id),
        [("yandex".into(), "1000034426".into(), Some(address))]
    );
    let refreshed = app
        .post_with_cookie("/api/v1/auth/refresh", Some(&user.refresh_cookie))
        .await;
    assert_eq!(refreshed.status(), 200);
}

#[tokio::test]
async fn signing_in_again_finds_the_same_user_even_after_an_email_change() {
    let (app, fakes) = spawn().await;
    let (first, second) = (email("again"), email("again-renamed"));
    person(
        &fakes,
        Google,
        "code-1",
        google_profile("777", &first, true),
    )
    .await;
    person(
        &fakes,
        Google,
        "code-2",
        google_profile("777", &second, true),
    )
    .await;

    let one = sign_in(&app, Google, "code-1").await;
    let two = sign_in(&app, Google, "code-2").await;
    assert_eq!(one.user_id, two.user_id);
    assert_ne!(one.access_token, two.access_token);
    assert_eq!(count(&app, "select count(*) from users"), 1);
    assert_eq!(
        app.balance_and_ledger_sum(&one.user_id),
        (BONUS, BONUS),
        "one bonus"
    );
    // The account keeps its email; the identity remembers what Google says now.
    let me: Value = app
        .get_authed("/api/v1/auth/me", &two.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], first.as_str());
    assert_eq!(
        identities(&app, &one.user_id)[0].2.as_deref(),
        Some(second.as_str())
    );
}

#[tokio::test]
async fn a_verified_email_links_to_the_existing_verified_password_account() {
    let (app, fakes) = spawn().await;
    let address = email("link");
    let local = app.register(&address).await;
    // Its owner proved the address (a letter, the operator): the account keeps its password.
    let id = local.user_id.clone();
    app.state
        .db
        .write(move |tx| easy_writer::users::store::set_verified(tx, &id))
        .await
        .unwrap();
    // Google reports the address in another case; emails match regardless of case.
    person(
        &fakes,
        Google,
        "c",
        google_profile("9001", &address.to_uppercase(), true),
    )
    .await;

    let google = sign_in(&app, Google, "c").await;
    assert_eq!(google.user_id, local.user_id);
    let profile: Value = app
        .get_authed("/api/v1/user/profile", &google.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(profile["provider"], "local", "how the account was created");
    assert_eq!(profile["is_verified"], true);
    assert_eq!(profile["email"], address.as_str());
    assert_eq!(
        profile["balance"], BONUS,
        "the registration's bonus, none for linking"
    );
    assert_eq!(identities(&app, &local.user_id).len(), 1);
    assert_eq!(app.login(&address, PASSWORD).await.status(), 200);
    assert_eq!(
        app.post_with_cookie("/api/v1/auth/refresh", Some(&local.refresh_cookie))
            .await
            .status(),
        200,
        "its sessions stay live"
    );
    assert_eq!(count(&app, "select count(*) from users"), 1);
}

/// Someone registers the victim's address with a password of their own and keeps a session;
/// the victim later signs in with Google, which verified the address. The account becomes the
/// victim's alone: the planted password and every earlier session stop working.
#[tokio::test]
async fn the_verified_owner_of_an_email_takes_over_an_unverified_account() {
    let (app, fakes) = spawn().await;
    let address = email("victim");
    let attacker = app.register(&address).await;
    person(&fakes, Google, "c", google_profile("4242", &address, true)).await;

    let victim = sign_in(&app, Google, "c").await;
    assert_eq!(victim.user_id, attacker.user_id, "the same account");

    expect_error(
        app.login(&address, PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    expect_error(
        app.post_with_cookie("/api/v1/auth/refresh", Some(&attacker.refresh_cookie))
            .await,
        401,
        "invalid_token",
    )
    .await;
    expect_error(
        app.get_authed("/api/v1/auth/me", &attacker.access_token)
            .await,
        401,
        "invalid_token",
    )
    .await;

    let profile: Value = app
        .get_authed("/api/v1/user/profile", &victim.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(profile["is_verified"], true);
    assert_eq!(profile["provider"], "local");
    assert_eq!(
        app.post_with_cookie("/api/v1/auth/refresh", Some(&victim.refresh_cookie))
            .await
            .status(),
        200,
        "the new owner's session works"
    );
    let password: Option<String> = db(&app)
        .query_row(
            "select hashed_password from users where id = ?1",
            [&victim.user_id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(password.is_none());
    // Signing in again later is a plain return: nothing more is revoked.
    let again = sign_in(&app, Google, "c").await;
    assert_eq!(
        app.get_authed("/api/v1/auth/me", &victim.access_token)
            .await
            .status(),
        200
    );
    assert_eq!(again.user_id, victim.user_id);
}

#[tokio::test]
async fn an_unverified_email_matching_an_account_is_refused_and_changes_nothing() {
    let (app, fakes) = spawn().await;
    let address = email("takeover");
    let local = app.register(&address).await;
    person(
        &fakes,
        Google,
        "c",
        google_profile("31337", &address, false),
    )
    .await;
    let row = |app: &TestApp| -> (String, i64, String, String) {
        db(app)
            .query_row(
                "select email, is_verified, updated_at, provider from users where id = ?1",
                [&local.user_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap()
    };
    let before = row(&app);
    let sessions = count(&app, "select count(*) from auth_sessions");

    let started = start(&app, Google).await;
    let response = come_back(&app, Google, &started, "c").await;
    assert_login_error(&response, Google, "account_exists");

    assert_eq!(row(&app), before);
    assert_eq!(count(&app, "select count(*) from user_identities"), 0);
    assert_eq!(count(&app, "select count(*) from users"), 1);
    assert_eq!(count(&app, "select count(*) from auth_sessions"), sessions);
    assert_eq!(app.login(&address, PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn one_user_holds_a_google_and_a_yandex_identity() {
    let (app, fakes) = spawn().await;
    let address = email("both");
    person(&fakes, Google, "g", google_profile("g-42", &address, true)).await;
    person(&fakes, Yandex, "y", yandex_profile("y-42", &address)).await;

    let google = sign_in(&app, Google, "g").await;
    let yandex = sign_in(&app, Yandex, "y").await;
    assert_eq!(google.user_id, yandex.user_id);
    assert_eq!(sign_in(&app, Google, "g").await.user_id, google.user_id);
    assert_eq!(sign_in(&app, Yandex, "y").await.user_id, google.user_id);
    let held: Vec<_> = identities(&app, &google.user_id)
        .into_iter()
        .map(|(p, id, _)| (p, id))
        .collect();
    assert_eq!(
        held,
        [
            ("google".into(), "g-42".into()),
            ("yandex".into(), "y-42".into())
        ]
    );
    let me: Value = app
        .get_authed("/api/v1/auth/me", &yandex.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["provider"], "google", "created by Google");
    assert_eq!(count(&app, "select count(*) from users"), 1);
}

#[tokio::test]
async fn a_profile_without_an_email_is_a_provider_error() {
    let (app, fakes) = spawn().await;
    person(&fakes, Google, "g", json!({"id": "1", "name": "No Email"})).await;
    person(
        &fakes,
        Yandex,
        "y",
        json!({"id": "2", "login": "noemail", "emails": []}),
    )
    .await;
    for (provider, code) in [(Google, "g"), (Yandex, "y")] {
        let started = start(&app, provider).await;
        let response = come_back(&app, provider, &started, code).await;
        assert_login_error(&response, provider, "provider_error");
    }
    assert_eq!(count(&app, "select count(*) from users"), 0);
}

#[tokio::test]
async fn the_state_must_match_the_cookie_of_the_same_browser_and_works_once() {
    let (app, fakes) = spawn().await;
    person(
        &fakes,
        Google,
        "c",
        google_profile("5", &email("state"), true),
    )
    .await;
    let mine = start(&app, Google).await;
    let theirs = start(&app, Google).await;

    // Someone else's state with my cookie (login CSRF), and mine without any cookie.
    let query = |state: &str| format!("code=c&state={state}");
    let response = callback(&app, Google, &query(&theirs.state), Some(&mine.cookie)).await;
    assert_login_error(&response, Google, "provider_error");
    let response = callback(&app, Google, &query(&mine.state), None).await;
    assert_login_error(&response, Google, "provider_error");
    let response = callback(&app, Google, "code=c", Some(&mine.cookie)).await;
    assert_login_error(&response, Google, "provider_error");
    // A query that repeats a parameter is malformed, even with the right state in it.
    let twice = format!("code=c&code=d&state={}", mine.state);
    let response = callback(&app, Google, &twice, Some(&mine.cookie)).await;
    assert_login_error(&response, Google, "provider_error");
    // A cookie of our own making, and the Yandex cookie at the Google callback.
    let forged = callback(&app, Google, &query(&mine.state), Some("e30.e30.AAAA")).await;
    assert_login_error(&forged, Google, "provider_error");
    let yandex = start(&app, Yandex).await;
    let response = callback(&app, Google, &query(&yandex.state), Some(&yandex.cookie)).await;
    assert_login_error(&response, Google, "provider_error");
    assert!(
        requests_to(&fakes.google, "/token").await.is_empty(),
        "no code was exchanged"
    );

    // The right pair works once; replaying the same callback does not.
    let first = come_back(&app, Google, &mine, "c").await;
    signed_in(&app, Google, first).await;
    let replay = come_back(&app, Google, &mine, "c").await;
    assert_login_error(&replay, Google, "provider_error");
    assert_eq!(requests_to(&fakes.google, "/token").await.len(), 1);
    assert_eq!(count(&app, "select count(*) from auth_sessions"), 1);
}

#[tokio::test]
async fn provider_failures_send_the_browser_to_the_login_page() {
    let (app, fakes) = spawn().await;
    let g = &fakes.google;
    let token = |code: &str| {
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(FormHas("code", code.to_owned()))
    };
    token("token-500")
        .respond_with(ResponseTemplate::new(500).set_body_string("backend error"))
        .mount(g)
        .await;
    token("token-400")
        .respond_with(
            ResponseTemplate::new(400).set_body_json(
                json!({"error": "invalid_grant", "error_description": "Bad Request"}),
            ),
        )
        .mount(g)
        .await;
    token("token-garbage")
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"access_token\": "))
        .mount(g)
        .await;
    token("token-html")
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"))
        .mount(g)
        .await;
    token("token-no-field")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"token_type": "Bearer"})))
        .mount(g)
        .await;
    token("token-redirect")
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", "https://elsewhere.example/"),
        )
        .mount(g)
        .await;
    for code in ["userinfo-401", "userinfo-garbage", "userinfo-array"] {
        token(code)
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"access_token": format!("at-{code}")})),
            )
            .mount(g)
            .await;
    }
    let userinfo = |code: &str| {
        Mock::given(method("GET"))
            .and(path("/oauth2/v2/userinfo"))
            .and(header("authorization", format!("Bearer at-{code}")))
    };
    userinfo("userinfo-401")
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {"code": 401}})))
        .mount(g)
        .await;
    userinfo("userinfo-garbage")
        .respond_with(ResponseTemplate::new(200).set_body_string("not json"))
        .mount(g)
        .await;
    userinfo("userinfo-array")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([1, 2, 3])))
        .mount(g)
        .await;

    for code in [
        "token-500",
        "token-400",
        "token-garbage",
        "token-html",
        "token-no-field",
        "token-redirect",
        "unknown-code-404",
        "userinfo-401",
        "userinfo-garbage",
        "userinfo-array",
    ] {
        let started = start(&app, Google).await;
        let response = come_back(&app, Google, &started, code).await;
        assert_eq!(
            response.headers()["location"],
            format!("{FRONTEND}/login?error=provider_error").as_str(),
            "{code}"
        );
        assert_login_error(&response, Google, "provider_error");
    }
    assert_eq!(count(&app, "select count(*) from users"), 0);
}

#[tokio::test]
async fn a_provider_slower_than_the_timeout_is_a_provider_error() {
    let timeout = Duration::from_millis(300);
    let (app, fakes) = spawn_with(move |b| {
        b.adjust(move |state| {
            state.oauth = Arc::new(OAuth::new(&state.config, timeout).unwrap());
        })
    })
    .await;
    let slow = Duration::from_secs(3);
    let address = email("slow");
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(FormHas("code", "slow-token".into()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "at-slow-token"}))
                .set_delay(slow),
        )
        .mount(&fakes.google)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(FormHas("code", "slow-userinfo".into()))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"access_token": "at-slow-userinfo"})),
        )
        .mount(&fakes.google)
        .await;
    Mock::given(method("GET"))
        .and(path("/oauth2/v2/userinfo"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(google_profile("slow", &address, true))
                .set_delay(slow),
        )
        .mount(&fakes.google)
        .await;

    for code in ["slow-token", "slow-userinfo"] {
        let started = start(&app, Google).await;
        let began = Instant::now();
        let response = come_back(&app, Google, &started, code).await;
        // Faster than the fake's answer: only the timeout can have ended it.
        assert!(
            began.elapsed() < slow - Duration::from_millis(500),
            "{code}"
        );
        assert_login_error(&response, Google, "provider_error");
    }
    assert_eq!(count(&app, "select count(*) from users"), 0);
}

#[tokio::test]
async fn cancelling_at_the_provider_is_reported_as_cancelled() {
    let (app, fakes) = spawn().await;
    for provider in [Google, Yandex] {
        let started = start(&app, provider).await;
        let query = format!(
            "error=access_denied&error_description=User+denied&state={}",
            started.state
        );
        let response = callback(&app, provider, &query, Some(&started.cookie)).await;
        assert_login_error(&response, provider, "cancelled");
    }
    // Any other error is a provider error; so is a cancel whose state does not check out.
    let started = start(&app, Google).await;
    let query = format!("error=admin_policy_enforced&state={}", started.state);
    let response = callback(&app, Google, &query, Some(&started.cookie)).await;
    assert_login_error(&response, Google, "provider_error");
    let started = start(&app, Google).await;
    let response = callback(
        &app,
        Google,
        "error=access_denied&state=forged",
        Some(&started.cookie),
    )
    .await;
    assert_login_error(&response, Google, "provider_error");
    for fake in [&fakes.google, &fakes.yandex] {
        assert!(fake.received_requests().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_deactivated_user_is_sent_back_with_inactive() {
    let (app, fakes) = spawn().await;
    let created = email("inactive-oauth");
    let local = email("inactive-local");
    person(&fakes, Google, "g", google_profile("off-1", &created, true)).await;
    person(&fakes, Yandex, "y", yandex_profile("off-2", &local)).await;
    sign_in(&app, Google, "g").await;
    app.register(&local).await;
    for address in [&created, &local] {
        let address = address.clone();
        app.state
            .db
            .write(move |tx| easy_writer::users::store::set_active(tx, &address, false))
            .await
            .unwrap();
    }

    for (provider, code) in [(Google, "g"), (Yandex, "y")] {
        let started = start(&app, provider).await;
        let response = come_back(&app, provider, &started, code).await;
        assert_login_error(&response, provider, "inactive");
    }
    assert_eq!(
        count(
            &app,
            "select count(*) from user_identities where provider = 'yandex'"
        ),
        0,
        "a deactivated account is not linked"
    );
}

#[tokio::test]
async fn an_unconfigured_provider_answers_503_json() {
    // Google has an id but no secret; Yandex nothing at all.
    let app = builder()
        .env("GOOGLE_CLIENT_ID", GOOGLE_ID)
        .env("FRONTEND_URL", FRONTEND)
        .spawn()
        .await;
    for provider in [Google, Yandex] {
        let response = app
            .client
            .get(app.url(&format!("/api/v1/auth/{}", provider.name())))
            .send()
            .await
            .unwrap();
        assert!(cookie_header(&response, "oauth_state").is_none());
        expect_error(response, 503, "provider_not_configured").await;
        // A browser arriving at the callback anyway goes back to the frontend.
        let response = callback(&app, provider, "code=x&state=y", None).await;
        assert_login_error(&response, provider, "provider_error");
    }
}

#[tokio::test]
async fn configured_redirect_and_authorize_urls_are_used_throughout() {
    let redirect = "https://edge.example/oauth/google";
    let (app, fakes) = spawn_with(|b| {
        b.env("GOOGLE_REDIRECT_URI", redirect)
            .env("GOOGLE_AUTH_URL", "https://sso.example/authorize?tenant=1")
    })
    .await;
    person(
        &fakes,
        Google,
        "c",
        google_profile("r-1", &email("redirect"), true),
    )
    .await;
    let started = start(&app, Google).await;
    assert_eq!(started.location.host_str(), Some("sso.example"));
    assert_eq!(started.param("tenant").as_deref(), Some("1"));
    assert_eq!(started.param("redirect_uri").as_deref(), Some(redirect));
    signed_in(&app, Google, come_back(&app, Google, &started, "c").await).await;
    let body = form(&requests_to(&fakes.google, "/token").await[0]);
    assert_eq!(form_value(&body, "redirect_uri"), Some(redirect));
}

#[tokio::test]
async fn two_callbacks_at_once_for_a_new_person_make_one_user() {
    let (app, fakes) = spawn().await;
    let address = email("race");
    person(
        &fakes,
        Google,
        "tab-1",
        google_profile("race", &address, true),
    )
    .await;
    person(
        &fakes,
        Google,
        "tab-2",
        google_profile("race", &address, true),
    )
    .await;
    let (one, two) = (start(&app, Google).await, start(&app, Google).await);
    let (a, b) = tokio::join!(
        come_back(&app, Google, &one, "tab-1"),
        come_back(&app, Google, &two, "tab-2")
    );
    let (a, b) = (
        signed_in(&app, Google, a).await,
        signed_in(&app, Google, b).await,
    );
    assert_eq!(a.user_id, b.user_id);
    assert_eq!(count(&app, "select count(*) from users"), 1);
    assert_eq!(count(&app, "select count(*) from user_identities"), 1);
    assert_eq!(app.balance_and_ledger_sum(&a.user_id), (BONUS, BONUS));
}

#[tokio::test]
async fn the_routes_are_in_the_openapi_document_as_redirects() {
    let app = helpers::spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for provider in ["google", "yandex"] {
        let start = &doc["paths"][format!("/api/v1/auth/{provider}")]["get"]["responses"];
        assert!(start["302"].is_object(), "{provider}: {start}");
        assert!(start["503"].is_object(), "{provider}: {start}");
        let callback = &doc["paths"][format!("/api/v1/auth/{provider}/callback")]["get"];
        assert!(
            callback["responses"]["302"].is_object(),
            "{provider}: {callback}"
        );
        let params: Vec<&str> = callback["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(params, ["code", "state", "error"]);
    }
}

/// The real binary, serving on a free loopback port with its own logging set-up.
struct Binary {
    child: std::process::Child,
    port: u16,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Host for Binary {
    fn client(&self) -> &reqwest::Client {
        &self.client
    }
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Binary {
    async fn serve(env: &[(&str, String)]) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = crate::helpers::binary()
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .env("EASY_WRITER_DATA_DIR", dir.path())
            .env("EASY_WRITER_CONFIG", &config)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let binary = Binary {
            child,
            port,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            _dir: dir,
        };
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(20) {
            if let Ok(r) = binary.client.get(binary.url("/health")).send().await
                && r.status() == 200
            {
                return binary;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the server did not answer /health");
    }

    /// Stops the server (SIGTERM) and returns what it logged.
    fn stop(self) -> String {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let output = self.child.wait_with_output().unwrap();
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

/// Codes, tokens, states and the client secret stay out of the logs, even at `debug` and
/// from the libraries underneath; the reasons for failures are there.
#[tokio::test]
async fn sign_in_logs_reasons_but_no_codes_tokens_or_states() {
    let fakes = Fakes {
        google: MockServer::start().await,
        yandex: MockServer::start().await,
    };
    let g = fakes.google.uri();
    let binary = Binary::serve(&[
        ("RUST_LOG", "debug".into()),
        ("FRONTEND_URL", FRONTEND.into()),
        ("GOOGLE_CLIENT_ID", GOOGLE_ID.into()),
        ("GOOGLE_CLIENT_SECRET", GOOGLE_SECRET.into()),
        ("GOOGLE_TOKEN_URL", format!("{g}/token")),
        ("GOOGLE_USERINFO_URL", format!("{g}/oauth2/v2/userinfo")),
    ])
    .await;
    person(
        &fakes,
        Google,
        "secret-code-ok",
        google_profile("log-1", &email("logs"), true),
    )
    .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(FormHas("code", "secret-code-bad".into()))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})))
        .mount(&fakes.google)
        .await;

    let ok = start(&binary, Google).await;
    let response = come_back(&binary, Google, &ok, "secret-code-ok").await;
    assert_eq!(response.status(), 302);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let access_token = location
        .strip_prefix(&format!("{FRONTEND}/auth/callback?token="))
        .expect("signed in")
        .to_owned();
    let refresh = helpers::refresh_cookie(response.headers()).unwrap();
    let bad = start(&binary, Google).await;
    let response = come_back(&binary, Google, &bad, "secret-code-bad").await;
    assert_login_error(&response, Google, "provider_error");
    let replay = come_back(&binary, Google, &ok, "secret-code-ok").await;
    assert_login_error(&replay, Google, "provider_error");

    let logs = binary.stop();
    assert!(logs.contains("user signed in with a provider"), "{logs}");
    assert!(
        logs.contains("invalid_grant"),
        "the reason is logged:\n{logs}"
    );
    assert!(logs.contains("state was already used"), "{logs}");
    for secret in [
        "secret-code-ok",
        "secret-code-bad",
        ok.state.as_str(),
        bad.state.as_str(),
        ok.cookie.as_str(),
        bad.cookie.as_str(),
        GOOGLE_SECRET,
        access_token.as_str(),
        refresh.as_str(),
    ] {
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the logs:\n{logs}"
        );
    }
}
