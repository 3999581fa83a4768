//! The admin UI over HTTP against the real server: who gets in (and who is sent back to the
//! sign-in form), the security headers and cookie attributes, CSRF on every action, the
//! actions themselves (checked in the database and the audit log), that no secret is ever
//! rendered, search and paging, sign-out.

use reqwest::Response;
use reqwest::header::HeaderMap;

use crate::helpers::{self, JWT_SECRET, PASSWORD, TestApp};

/// A server for admin tests: cookies without `Secure`, so plain HTTP carries them.
async fn spawn() -> TestApp {
    helpers::builder()
        .env("EASY_WRITER_COOKIE_SECURE", "false")
        .spawn()
        .await
}

/// A signed-in admin: the `ew_admin` cookie's value and the session's form token.
struct AdminSession {
    cookie: String,
    csrf: String,
}

/// `name=value` of the `Set-Cookie` for `name`, whole header.
fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The value a response sets for cookie `name` (empty when it removes it).
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    set_cookie(headers, name).map(|c| {
        c.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .trim_start_matches(&format!("{name}="))
            .to_owned()
    })
}

/// The first hidden `csrf` field of a page.
fn csrf_field(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a csrf field") + marker.len();
    let end = html[start..].find('"').expect("end of the csrf value");
    html[start..start + end].to_owned()
}

/// GET /admin/login: the `ew_admin_login` cookie and the form's token.
async fn login_form(app: &TestApp) -> (String, String) {
    let response = app
        .client
        .get(app.url("/admin/login"))
        .send()
        .await
        .expect("login form");
    assert_eq!(response.status(), 200);
    let cookie = cookie_value(response.headers(), "ew_admin_login").expect("login cookie");
    let html = response.text().await.expect("html");
    (cookie, csrf_field(&html))
}

/// POST /admin/login with a given login cookie and token.
async fn post_login(
    app: &TestApp,
    login_cookie: Option<&str>,
    csrf: Option<&str>,
    email: &str,
    password: &str,
) -> Response {
    let mut form = vec![("email", email), ("password", password)];
    if let Some(csrf) = csrf {
        form.push(("csrf", csrf));
    }
    let mut request = app.client.post(app.url("/admin/login")).form(&form);
    if let Some(c) = login_cookie {
        request = request.header("cookie", format!("ew_admin_login={c}"));
    }
    request.send().await.expect("login")
}

/// Signs in through the form; the answer of the POST.
async fn try_sign_in(app: &TestApp, email: &str, password: &str) -> Response {
    let (cookie, csrf) = login_form(app).await;
    post_login(app, Some(&cookie), Some(&csrf), email, password).await
}

/// Signs in an admin; panics unless it works.
async fn sign_in(app: &TestApp, email: &str) -> AdminSession {
    let response = try_sign_in(app, email, PASSWORD).await;
    assert_eq!(response.status(), 303, "admin sign-in");
    assert_eq!(response.headers()["location"], "/admin");
    let cookie = cookie_value(response.headers(), "ew_admin").expect("session cookie");
    assert!(!cookie.is_empty());
    let page = get(app, "/admin", Some(&cookie)).await;
    assert_eq!(page.status(), 200);
    let csrf = csrf_field(&page.text().await.expect("html"));
    AdminSession { cookie, csrf }
}

async fn get(app: &TestApp, path: &str, cookie: Option<&str>) -> Response {
    let mut request = app.client.get(app.url(path));
    if let Some(c) = cookie {
        request = request.header("cookie", format!("ew_admin={c}"));
    }
    request.send().await.expect("get")
}

async fn page(app: &TestApp, path: &str, admin: &AdminSession) -> String {
    let response = get(app, path, Some(&admin.cookie)).await;
    assert_eq!(response.status(), 200, "{path}");
    response.text().await.expect("html")
}

async fn post(app: &TestApp, path: &str, cookie: &str, form: &[(&str, &str)]) -> Response {
    app.client
        .post(app.url(path))
        .header("cookie", format!("ew_admin={cookie}"))
        .form(form)
        .send()
        .await
        .expect("post")
}

/// Registers `email` through the API and makes it an admin in the database.
async fn make_admin(app: &TestApp, email: &str) -> helpers::Session {
    let session = app.register(email).await;
    set_flag(app, &session.user_id, "is_admin", 1).await;
    session
}

async fn set_flag(app: &TestApp, user_id: &str, column: &'static str, value: i64) {
    let id = user_id.to_owned();
    app.state
        .db
        .write(move |tx| {
            tx.execute(
                &format!("update users set {column} = ?2 where id = ?1"),
                rusqlite::params![id, value],
            )?;
            Ok::<_, easy_writer::db::Error>(())
        })
        .await
        .expect("update user");
}

fn db(app: &TestApp) -> rusqlite::Connection {
    rusqlite::Connection::open(app.database_path()).expect("open db")
}

fn flags(app: &TestApp, user_id: &str) -> (i64, bool, bool) {
    db(app)
        .query_row(
            "select balance, is_active, is_admin from users where id = ?1",
            [user_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("user")
}

fn audit_count(app: &TestApp, action: &str) -> i64 {
    db(app)
        .query_row(
            "select count(*) from admin_audit where action = ?1",
            [action],
            |r| r.get(0),
        )
        .expect("audit")
}

fn transactions_count(app: &TestApp, user_id: &str) -> i64 {
    db(app)
        .query_row(
            "select count(*) from transactions where user_id = ?1",
            [user_id],
            |r| r.get(0),
        )
        .expect("count")
}

fn assert_to_login(response: &Response, what: &str) {
    assert!(
        matches!(response.status().as_u16(), 302 | 303 | 307),
        "{what}: status {}",
        response.status()
    );
    assert_eq!(response.headers()["location"], "/admin/login", "{what}");
}

/// Every GET page of the admin router (src/admin/mod.rs), with a real user id.
fn pages(user_id: &str) -> Vec<String> {
    let mut pages: Vec<String> = [
        "/admin",
        "/admin/",
        "/admin/users",
        "/admin/users?q=a",
        "/admin/audit",
        "/admin/sessions",
        "/admin/images",
        "/admin/payments",
        "/admin/webhooks",
        "/admin/transactions",
        "/admin/sites",
        "/admin/articles",
        "/admin/providers",
        "/admin/settings",
    ]
    .map(str::to_owned)
    .to_vec();
    pages.push(format!("/admin/users/{user_id}"));
    pages
}

#[tokio::test]
async fn admin_pages_are_closed_without_a_valid_admin_session() {
    let app = spawn().await;
    let first = make_admin(&app, &helpers::email("admin")).await;
    let second = make_admin(&app, &helpers::email("admin2")).await;
    let third = make_admin(&app, &helpers::email("admin3")).await;
    let s2 = sign_in(&app, &second.email).await;
    let s3 = sign_in(&app, &third.email).await;
    // Both sessions work before the change.
    for s in [&s2, &s3] {
        assert_eq!(
            get(&app, "/admin/users", Some(&s.cookie)).await.status(),
            200
        );
    }
    // One loses admin rights, the other is deactivated, behind the UI's back.
    set_flag(&app, &second.user_id, "is_admin", 0).await;
    set_flag(&app, &third.user_id, "is_active", 0).await;
    for path in pages(&first.user_id) {
        assert_to_login(&get(&app, &path, None).await, &format!("{path} without"));
        assert_to_login(
            &get(&app, &path, Some("garbage-not-a-session")).await,
            &format!("{path} garbage"),
        );
        assert_to_login(
            &get(&app, &path, Some(&s2.cookie)).await,
            &format!("{path} no longer admin"),
        );
        assert_to_login(
            &get(&app, &path, Some(&s3.cookie)).await,
            &format!("{path} deactivated"),
        );
    }
    // The POST actions too.
    for path in [
        format!("/admin/users/{}/balance", first.user_id),
        "/admin/logout".to_owned(),
    ] {
        let response = app
            .client
            .post(app.url(&path))
            .form(&[("csrf", "x")])
            .send()
            .await
            .expect("post");
        assert_to_login(&response, &path);
    }
    // The session of the one who lost rights is gone even when the rights come back.
    set_flag(&app, &second.user_id, "is_admin", 1).await;
    assert_to_login(
        &get(&app, "/admin", Some(&s2.cookie)).await,
        "ended session",
    );
}

#[tokio::test]
async fn only_admins_with_the_right_password_and_form_token_get_a_session() {
    let app = helpers::builder()
        .env("EASY_WRITER_COOKIE_SECURE", "false")
        .env("EASY_WRITER_LOGIN_MAX_FAILURES", 3)
        .spawn()
        .await;
    let admin = make_admin(&app, &helpers::email("admin")).await;
    let user = app.register(&helpers::email("user")).await;

    // A non-admin with the right password: the form again, a message, no session.
    let response = try_sign_in(&app, &user.email, PASSWORD).await;
    assert_eq!(response.status(), 403);
    assert!(set_cookie(response.headers(), "ew_admin").is_none());
    let html = response.text().await.unwrap();
    assert!(html.contains("Нет прав администратора"), "{html}");
    assert!(html.contains("name=\"password\""));

    // A wrong password: no session.
    let response = try_sign_in(&app, &admin.email, "wrong password!").await;
    assert!(response.status().is_client_error(), "{}", response.status());
    assert!(set_cookie(response.headers(), "ew_admin").is_none());
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("Неверный email или пароль")
    );

    // No login token, a wrong one, or a token without its cookie: 403, no session.
    let (cookie, csrf) = login_form(&app).await;
    for (c, t) in [
        (Some(cookie.as_str()), None),
        (Some(cookie.as_str()), Some("not-the-token")),
        (Some(cookie.as_str()), Some("")),
        (None, Some(csrf.as_str())),
    ] {
        let response = post_login(&app, c, t, &admin.email, PASSWORD).await;
        assert_eq!(response.status(), 403, "cookie {c:?} token {t:?}");
        assert!(set_cookie(response.headers(), "ew_admin").is_none());
        assert!(response.text().await.unwrap().contains("Форма устарела"));
    }
    // The right password with the right token works.
    sign_in(&app, &admin.email).await;
    assert_eq!(audit_count(&app, "sign_in"), 1);

    // The throttle: after the allowed failures, even the right password is refused.
    let other = make_admin(&app, &helpers::email("throttled")).await;
    for _ in 0..3 {
        let r = try_sign_in(&app, &other.email, "wrong password!").await;
        assert!(set_cookie(r.headers(), "ew_admin").is_none());
    }
    let response = try_sign_in(&app, &other.email, PASSWORD).await;
    assert_eq!(response.status(), 429);
    assert!(set_cookie(response.headers(), "ew_admin").is_none());
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("Слишком много попыток")
    );
}

fn assert_hardened(headers: &HeaderMap, what: &str) {
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-eval"), "{what}: {csp}");
    assert!(csp.contains("script-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert_eq!(headers["x-frame-options"], "DENY", "{what}");
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["cache-control"], "no-store", "{what}");
}

fn assert_cookie_attributes(cookie: &str, secure: bool) {
    let attrs: Vec<String> = cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    assert!(attrs.contains(&"httponly".to_owned()), "{cookie}");
    assert!(attrs.contains(&"samesite=strict".to_owned()), "{cookie}");
    assert!(attrs.contains(&"path=/admin".to_owned()), "{cookie}");
    assert_eq!(attrs.contains(&"secure".to_owned()), secure, "{cookie}");
}

#[tokio::test]
async fn pages_carry_security_headers_and_strict_cookies() {
    let app = spawn().await;
    let admin = make_admin(&app, &helpers::email("admin")).await;
    let login = get(&app, "/admin/login", None).await;
    assert_hardened(login.headers(), "login");
    assert_cookie_attributes(
        &set_cookie(login.headers(), "ew_admin_login").unwrap(),
        false,
    );
    let response = try_sign_in(&app, &admin.email, PASSWORD).await;
    assert_cookie_attributes(&set_cookie(response.headers(), "ew_admin").unwrap(), false);
    let cookie = cookie_value(response.headers(), "ew_admin").unwrap();
    for path in [
        "/admin".to_owned(),
        "/admin/users".to_owned(),
        format!("/admin/users/{}", admin.user_id),
        "/admin/audit".to_owned(),
    ] {
        let response = get(&app, &path, Some(&cookie)).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_hardened(response.headers(), &path);
        let html = response.text().await.unwrap();
        assert!(!html.contains(" style="), "{path}: inline style");
        assert!(!html.contains("<script>"), "{path}: inline script");
    }
    // Redirects and refusals are hardened too.
    assert_hardened(get(&app, "/admin", None).await.headers(), "redirect");

    // With Secure cookies configured, both cookies carry it.
    let secure = helpers::builder()
        .env("EASY_WRITER_COOKIE_SECURE", "true")
        .spawn()
        .await;
    let admin = make_admin(&secure, &helpers::email("admin")).await;
    let login = get(&secure, "/admin/login", None).await;
    assert_cookie_attributes(
        &set_cookie(login.headers(), "ew_admin_login").unwrap(),
        true,
    );
    let response = try_sign_in(&secure, &admin.email, PASSWORD).await;
    assert_eq!(response.status(), 303);
    assert_cookie_attributes(&set_cookie(response.headers(), "ew_admin").unwrap(), true);
}

#[tokio::test]
async fn every_action_needs_the_session_form_token() {
    let app = spawn().await;
    let admin = make_admin(&app, &helpers::email("admin")).await;
    let user = app.register(&helpers::email("user")).await;
    let s = sign_in(&app, &admin.email).await;
    let before = flags(&app, &user.user_id);
    let id = &user.user_id;
    let actions: Vec<(String, Vec<(&str, &str)>)> = vec![
        (
            format!("/admin/users/{id}/balance"),
            vec![("amount", "500"), ("reason", "csrf test")],
        ),
        (format!("/admin/users/{id}/active"), vec![("value", "0")]),
        (format!("/admin/users/{id}/admin"), vec![("value", "1")]),
        (format!("/admin/users/{id}/reset"), vec![]),
        ("/admin/logout".to_owned(), vec![]),
    ];
    for (path, fields) in &actions {
        for token in [None, Some("wrong-token"), Some("")] {
            let mut form = fields.clone();
            if let Some(t) = token {
                form.push(("csrf", t));
            }
            let response = post(&app, path, &s.cookie, &form).await;
            assert_eq!(response.status(), 403, "{path} with {token:?}");
            assert!(response.text().await.unwrap().contains("Форма устарела"));
        }
        // Another admin's token is not this session's.
        let other = sign_in(&app, &admin.email).await;
        let mut form = fields.clone();
        form.push(("csrf", &other.csrf));
        assert_eq!(post(&app, path, &s.cookie, &form).await.status(), 403);
    }
    assert_eq!(flags(&app, id), before);
    assert_eq!(transactions_count(&app, id), 0);
    for action in [
        "adjust_balance",
        "deactivate",
        "make_admin",
        "send_password_reset",
        "sign_out",
    ] {
        assert_eq!(audit_count(&app, action), 0, "{action}");
    }
    // The user's API access still works and the admin is still signed in.
    assert_eq!(
        app.get_authed("/api/v1/auth/me", &user.access_token)
            .await
            .status(),
        200
    );
    assert_eq!(get(&app, "/admin", Some(&s.cookie)).await.status(), 200);
}

/// The `?done=` code an action redirected to.
fn done(response: &Response, user_id: &str) -> String {
    assert_eq!(response.status(), 303, "action answer");
    let location = response.headers()["location"].to_str().unwrap();
    let prefix = format!("/admin/users/{user_id}?done=");
    location
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("redirect to {location}"))
        .to_owned()
}

#[tokio::test]
async fn balance_adjustments_go_through_the_ledger_and_the_audit_log() {
    let app = spawn().await;
    let admin = make_admin(&app, &helpers::email("admin")).await;
    let user = app.register(&helpers::email("user")).await;
    let s = sign_in(&app, &admin.email).await;
    let id = user.user_id.clone();
    let path = format!("/admin/users/{id}/balance");

    let r = post(
        &app,
        &path,
        &s.cookie,
        &[
            ("csrf", &s.csrf),
            ("amount", "+500"),
            ("reason", "компенсация за сбой"),
        ],
    )
    .await;
    assert_eq!(done(&r, &id), "adjusted");
    assert_eq!(app.balance_and_ledger_sum(&id), (500, 500));
    let (kind, amount, description): (String, i64, String) = db(&app)
        .query_row(
            "select type, amount, description from transactions where user_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((kind.as_str(), amount), ("adjustment", 500));
    assert!(description.contains("компенсация за сбой"), "{description}");
    let (target, detail, admin_id): (String, String, String) = db(&app)
        .query_row(
            "select target, detail, admin_id from admin_audit where action = 'adjust_balance'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(target, id);
    assert_eq!(admin_id, admin.user_id);
    assert!(detail.contains("+500") && detail.contains("компенсация за сбой"));
    let html = page(&app, &format!("/admin/users/{id}?done=adjusted"), &s).await;
    assert!(html.contains("Баланс изменён"));
    assert!(html.contains("компенсация за сбой"));
    let audit = page(&app, "/admin/audit", &s).await;
    assert!(audit.contains("adjust_balance"));

    // More than the balance: refused, nothing written.
    let r = post(
        &app,
        &path,
        &s.cookie,
        &[("csrf", &s.csrf), ("amount", "-1000000"), ("reason", "x")],
    )
    .await;
    assert_eq!(done(&r, &id), "short");
    let html = page(&app, &format!("/admin/users/{id}?done=short"), &s).await;
    assert!(html.contains("Списание больше баланса"));

    // Not an amount, or no reason: refused.
    for (amount, reason, code) in [
        ("0", "ноль", "bad_amount"),
        ("пятьсот", "текст", "bad_amount"),
        ("", "пусто", "bad_amount"),
        ("1.5", "дробь", "bad_amount"),
        ("1000000001", "много", "bad_amount"),
        ("100", "", "bad_reason"),
        ("100", "   ", "bad_reason"),
    ] {
        let r = post(
            &app,
            &path,
            &s.cookie,
            &[("csrf", &s.csrf), ("amount", amount), ("reason", reason)],
        )
        .await;
        assert_eq!(done(&r, &id), code, "{amount:?} {reason:?}");
    }
    let r = post(
        &app,
        &path,
        &s.cookie,
        &[("csrf", &s.csrf), ("amount", "5")],
    )
    .await;
    assert_eq!(done(&r, &id), "bad_reason");
    assert_eq!(app.balance_and_ledger_sum(&id), (500, 500));
    assert_eq!(transactions_count(&app, &id), 1);
    assert_eq!(audit_count(&app, "adjust_balance"), 1);

    // A debit within the balance works.
    let r = post(
        &app,
        &path,
        &s.cookie,
        &[("csrf", &s.csrf), ("amount", "-200"), ("reason", "возврат")],
    )
    .await;
    assert_eq!(done(&r, &id), "adjusted");
    assert_eq!(app.balance_and_ledger_sum(&id), (300, 300));

    // An unknown user: 404, nothing written.
    let r = post(
        &app,
        "/admin/users/no-such-user/balance",
        &s.cookie,
        &[("csrf", &s.csrf), ("amount", "5"), ("reason", "x")],
    )
    .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn deactivation_admin_rights_and_password_reset() {
    let app = spawn().await;
    let admin = make_admin(&app, &helpers::email("admin")).await;
    let user = app.register(&helpers::email("user")).await;
    let s = sign_in(&app, &admin.email).await;
    let id = user.user_id.clone();
    let form = |value: &'static str| vec![("csrf", s.csrf.clone()), ("value", value.to_owned())];
    let (server, session_cookie) = (&app, s.cookie.clone());
    let post_form = move |path: String, form: Vec<(&'static str, String)>| {
        let (app, cookie) = (server, session_cookie.clone());
        async move {
            app.client
                .post(app.url(&path))
                .header("cookie", format!("ew_admin={cookie}"))
                .form(&form)
                .send()
                .await
                .expect("post")
        }
    };

    // Deactivation ends the user's API access at once, and is in the log.
    assert_eq!(
        app.get_authed("/api/v1/auth/me", &user.access_token)
            .await
            .status(),
        200
    );
    let r = post_form(format!("/admin/users/{id}/active"), form("0")).await;
    assert_eq!(done(&r, &id), "deactivated");
    let status = app
        .get_authed("/api/v1/auth/me", &user.access_token)
        .await
        .status();
    assert!(matches!(status.as_u16(), 401 | 403), "{status}");
    assert!(
        !app.post_with_cookie("/api/v1/auth/refresh", Some(&user.refresh_cookie))
            .await
            .status()
            .is_success()
    );
    assert!(!flags(&app, &id).1);
    assert_eq!(audit_count(&app, "deactivate"), 1);
    let audit = page(&app, "/admin/audit", &s).await;
    assert!(audit.contains("deactivate") && audit.contains(&user.email));
    let html = page(&app, &format!("/admin/users/{id}?done=deactivated"), &s).await;
    assert!(html.contains("Пользователь отключён"));
    // And back.
    let r = post_form(format!("/admin/users/{id}/active"), form("1")).await;
    assert_eq!(done(&r, &id), "activated");
    assert!(flags(&app, &id).1);
    assert_eq!(app.login(&user.email, PASSWORD).await.status(), 200);

    // The last admin can neither be deactivated nor lose the rights.
    let me = admin.user_id.clone();
    let r = post_form(format!("/admin/users/{me}/active"), form("0")).await;
    assert_eq!(done(&r, &me), "last_admin");
    let r = post_form(format!("/admin/users/{me}/admin"), form("0")).await;
    assert_eq!(done(&r, &me), "last_admin");
    assert_eq!(flags(&app, &me), (0, true, true));
    let html = page(&app, &format!("/admin/users/{me}?done=last_admin"), &s).await;
    assert!(html.contains("последний администратор"));
    assert_eq!(get(&app, "/admin", Some(&s.cookie)).await.status(), 200);

    // Making an admin works; then the first one may lose the rights (and the session).
    let r = post_form(format!("/admin/users/{id}/admin"), form("1")).await;
    assert_eq!(done(&r, &id), "made_admin");
    assert!(flags(&app, &id).2);
    assert_eq!(audit_count(&app, "make_admin"), 1);
    let new_admin = sign_in(&app, &user.email).await;
    let r = post(
        &app,
        &format!("/admin/users/{me}/admin"),
        &new_admin.cookie,
        &[("csrf", &new_admin.csrf), ("value", "0")],
    )
    .await;
    assert_eq!(done(&r, &me), "revoked_admin");
    assert_to_login(&get(&app, "/admin", Some(&s.cookie)).await, "revoked");

    // A password reset without SMTP says so and does not fail.
    let r = post(
        &app,
        &format!("/admin/users/{me}/reset"),
        &new_admin.cookie,
        &[("csrf", &new_admin.csrf)],
    )
    .await;
    assert_eq!(done(&r, &me), "no_mail");
    let html = page(&app, &format!("/admin/users/{me}?done=no_mail"), &new_admin).await;
    assert!(html.contains("Почта не настроена"), "{html}");
    // A code that is not ours shows nothing from the query string.
    let html = page(
        &app,
        &format!("/admin/users/{me}?done=%3Cb%3Einjected%3C%2Fb%3E"),
        &new_admin,
    )
    .await;
    assert!(!html.contains("injected"));
}

#[tokio::test]
async fn no_page_renders_a_secret() {
    let app = spawn().await;
    let admin = make_admin(&app, &helpers::email("admin")).await;
    let user = app.register(&helpers::email("user")).await;
    app.topup(&user.user_id, 1000).await;
    let s = sign_in(&app, &admin.email).await;
    // Activity for the audit log and the detail pages.
    let r = post(
        &app,
        &format!("/admin/users/{}/balance", user.user_id),
        &s.cookie,
        &[("csrf", &s.csrf), ("amount", "10"), ("reason", "бонус")],
    )
    .await;
    assert_eq!(r.status(), 303);
    let hashes: Vec<String> = db(&app)
        .prepare("select hashed_password from users where hashed_password is not null")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(hashes.len(), 2);
    let mut secrets: Vec<String> = hashes;
    secrets.extend([
        "$argon2id$".to_owned(),
        JWT_SECRET.to_owned(),
        user.refresh_cookie.clone(),
        admin.refresh_cookie.clone(),
        user.access_token.clone(),
        admin.access_token.clone(),
        s.cookie.clone(),
        easy_writer::admin::session::digest(&s.cookie),
    ]);
    for path in [
        "/admin".to_owned(),
        "/admin/users".to_owned(),
        format!("/admin/users?q={}", user.email),
        format!("/admin/users/{}", user.user_id),
        format!("/admin/users/{}", admin.user_id),
        "/admin/audit".to_owned(),
    ] {
        let html = page(&app, &path, &s).await;
        for secret in &secrets {
            assert!(!html.contains(secret.as_str()), "{path} shows {secret}");
        }
    }
}

/// Inserts users straight into the database (no password hashing), emails `{prefix}{n}@…`.
async fn insert_users(app: &TestApp, prefix: &str, n: usize) {
    let prefix = prefix.to_owned();
    app.state
        .db
        .write(move |tx| {
            let mut insert = tx.prepare(
                "insert into users (id, email, created_at, updated_at) values (?1, ?2, ?3, ?3)",
            )?;
            for i in 0..n {
                insert.execute(rusqlite::params![
                    uuid::Uuid::now_v7().to_string(),
                    format!("{prefix}{i:03}@example.com"),
                    format!("2026-01-01T00:00:{:02}.000Z", i % 60),
                ])?;
            }
            Ok::<_, easy_writer::db::Error>(())
        })
        .await
        .expect("insert users");
}

fn user_rows(html: &str) -> usize {
    html.matches("<a href=\"/admin/users/").count()
}

#[tokio::test]
async fn search_by_email_prefix_and_paging() {
    let app = spawn().await;
    let admin = make_admin(&app, &helpers::email("admin")).await;
    let s = sign_in(&app, &admin.email).await;
    insert_users(&app, "bulk", 55).await;
    insert_users(&app, "a_b", 1).await;
    insert_users(&app, "axb", 1).await;

    // Prefix search, case-insensitive.
    let html = page(&app, "/admin/users?q=bulk01", &s).await;
    assert_eq!(user_rows(&html), 10, "bulk010..bulk019");
    let html = page(&app, "/admin/users?q=BULK054", &s).await;
    assert_eq!(user_rows(&html), 1);
    assert!(html.contains("bulk054@example.com"));
    // Not a substring search.
    assert_eq!(user_rows(&page(&app, "/admin/users?q=ulk", &s).await), 0);
    // `_` and `%` are literal.
    let html = page(&app, "/admin/users?q=a_", &s).await;
    assert_eq!(user_rows(&html), 1);
    assert!(html.contains("a_b000@example.com") && !html.contains("axb000"));
    assert_eq!(user_rows(&page(&app, "/admin/users?q=a%25", &s).await), 0);
    assert_eq!(user_rows(&page(&app, "/admin/users?q=%25", &s).await), 0);
    assert_eq!(user_rows(&page(&app, "/admin/users?q=_", &s).await), 0);
    // An exact id finds its user.
    let html = page(&app, &format!("/admin/users?q={}", admin.user_id), &s).await;
    assert_eq!(user_rows(&html), 1);
    assert!(html.contains(&admin.email));

    // Without a search: 58 users, newest first, pages of 50 with a "next" link.
    let html = page(&app, "/admin/users", &s).await;
    assert_eq!(user_rows(&html), 50);
    assert!(html.contains(&admin.email), "the newest user is first");
    assert!(html.contains("href=\"?offset=50\">Дальше"), "next link");
    assert!(!html.contains("← Назад"));
    let html = page(&app, "/admin/users?offset=50", &s).await;
    assert_eq!(user_rows(&html), 8);
    assert!(!html.contains("Дальше"));
    assert!(html.contains("href=\"?offset=0\">← Назад"));
    // Offsets out of range are clamped, not errors.
    assert_eq!(
        user_rows(&page(&app, "/admin/users?offset=-10", &s).await),
        50
    );
    assert_eq!(
        user_rows(&page(&app, "/admin/users?offset=99999999", &s).await),
        0
    );
    assert_eq!(
        get(&app, "/admin/users?offset=abc", Some(&s.cookie))
            .await
            .status()
            .as_u16(),
        400
    );
}

#[tokio::test]
async fn logout_ends_the_session() {
    let app = spawn().await;
    let admin = make_admin(&app, &helpers::email("admin")).await;
    let s = sign_in(&app, &admin.email).await;
    let other = sign_in(&app, &admin.email).await;
    let r = post(&app, "/admin/logout", &s.cookie, &[("csrf", &s.csrf)]).await;
    assert_to_login(&r, "logout");
    let removal = set_cookie(r.headers(), "ew_admin").expect("cookie removed");
    assert!(removal.starts_with("ew_admin=;"), "{removal}");
    assert!(
        removal.to_ascii_lowercase().contains("max-age=0"),
        "{removal}"
    );
    assert_to_login(&get(&app, "/admin", Some(&s.cookie)).await, "after logout");
    assert_to_login(
        &post(&app, "/admin/logout", &s.cookie, &[("csrf", &s.csrf)]).await,
        "logout twice",
    );
    assert_eq!(audit_count(&app, "sign_out"), 1);
    // Another session of the same admin is untouched.
    assert_eq!(get(&app, "/admin", Some(&other.cookie)).await.status(), 200);
}

/// Paging through a search keeps the search. The pager renders `q|urlencode`, a filter
/// minijinja has only with its `urlencode` feature, which Cargo.toml does not turn on: every
/// search with more than one page answers 500 until it does.
#[tokio::test]
async fn paging_through_a_search_keeps_the_search() {
    let app = spawn().await;
    let admin = make_admin(&app, &helpers::email("admin")).await;
    let s = sign_in(&app, &admin.email).await;
    insert_users(&app, "bulk", 55).await;
    insert_users(&app, "other", 3).await;
    let html = page(&app, "/admin/users?q=bulk", &s).await;
    assert_eq!(user_rows(&html), 50);
    assert!(html.contains("?q=bulk&amp;offset=50\">Дальше"), "next link");
    assert!(!html.contains("← Назад"));
    let html = page(&app, "/admin/users?q=bulk&offset=50", &s).await;
    assert_eq!(user_rows(&html), 5);
    assert!(!html.contains("Дальше"));
    assert!(html.contains("?q=bulk&amp;offset=0\">← Назад"));
    // A search with characters that need encoding survives the link.
    insert_users(&app, "a+b&c", 60).await;
    let html = page(&app, "/admin/users?q=a%2Bb%26c", &s).await;
    assert_eq!(user_rows(&html), 50);
    assert!(
        html.contains("?q=a%2Bb%26c&amp;offset=50"),
        "encoded next link"
    );
}
