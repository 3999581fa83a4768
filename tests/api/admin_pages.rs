//! The admin UI's lists and service pages over HTTP: generation sessions, images, payments,
//! the webhook log, the ledger, WordPress sites (with the password rotation) and articles,
//! providers (with the check), settings (secrets masked), the database backup, and the tools
//! report (revenue against estimated provider cost).

use std::path::Path;

use easy_writer::timestamp;

use crate::helpers::{TestApp, builder, email};

/// Percent-encoding for a form body or query value.
fn enc(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// HTML with the entities the template engine writes (`&#x2f;` for `/` among them) decoded.
fn unescape(html: &str) -> String {
    html.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The value of `name=` in a response's `Set-Cookie` headers.
fn cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()?
                .trim()
                .strip_prefix(&format!("{name}="))
                .map(str::to_owned)
        })
        .filter(|v| !v.is_empty())
}

/// The `value` of the hidden `csrf` input of a page.
fn csrf_field(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].split('"').next().expect("csrf value").to_owned()
}

/// A signed-in admin browser: its session cookie and its forms' token.
struct Browser<'a> {
    app: &'a TestApp,
    cookie: String,
    csrf: String,
    user_id: String,
}

impl<'a> Browser<'a> {
    async fn sign_in(app: &'a TestApp) -> Browser<'a> {
        let address = email("admin");
        let user = app.register(&address).await;
        let id = user.user_id.clone();
        app.state
            .db
            .write(move |tx| {
                tx.execute("update users set is_admin = 1 where id = ?1", [&id])
                    .map_err(easy_writer::db::Error::from)
            })
            .await
            .expect("make admin");
        let form = app
            .client
            .get(app.url("/admin/login"))
            .send()
            .await
            .expect("login form");
        assert_eq!(form.status(), 200);
        let login_cookie = cookie(&form, "ew_admin_login").expect("login cookie");
        let token = csrf_field(&form.text().await.expect("html"));
        let signed = app
            .client
            .post(app.url("/admin/login"))
            .header("cookie", format!("ew_admin_login={login_cookie}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "csrf={}&email={}&password={}",
                enc(&token),
                enc(&address),
                enc(crate::helpers::PASSWORD)
            ))
            .send()
            .await
            .expect("sign in");
        assert_eq!(signed.status(), 303, "signed in");
        let cookie = cookie(&signed, "ew_admin").expect("session cookie");
        let mut browser = Browser {
            app,
            cookie,
            csrf: String::new(),
            user_id: user.user_id,
        };
        let (status, html) = browser.get("/admin/sites").await;
        assert_eq!(status, 200);
        browser.csrf = csrf_field(&html);
        browser
    }

    async fn get_response(&self, path: &str) -> reqwest::Response {
        self.app
            .client
            .get(self.app.url(path))
            .header("cookie", format!("ew_admin={}", self.cookie))
            .send()
            .await
            .expect("request")
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self.get_response(path).await;
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// POSTs a form with the session's token (or `token`, when given).
    async fn post(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.app
            .client
            .post(self.app.url(path))
            .header("cookie", format!("ew_admin={}", self.cookie))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={}", enc(token.unwrap_or(&self.csrf))))
            .send()
            .await
            .expect("request")
    }
}

/// Runs `sql` with `params` in one write.
async fn exec(app: &TestApp, sql: &'static str, params: Vec<rusqlite::types::Value>) {
    app.state
        .db
        .write(move |tx| {
            tx.execute(sql, rusqlite::params_from_iter(params))
                .map_err(easy_writer::db::Error::from)
        })
        .await
        .expect(sql);
}

fn t(s: &str) -> rusqlite::types::Value {
    rusqlite::types::Value::Text(s.to_owned())
}

fn n(i: i64) -> rusqlite::types::Value {
    rusqlite::types::Value::Integer(i)
}

fn id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The actions of the audit log, newest first.
async fn audit_actions(app: &TestApp) -> Vec<(String, Option<String>, Option<String>)> {
    app.state
        .db
        .read(|c| {
            c.prepare(
                "select action, target, detail from admin_audit order by created_at desc, id desc",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(easy_writer::db::Error::from)
        })
        .await
        .expect("audit")
}

#[tokio::test]
async fn the_lists_need_an_admin_session() {
    let app = builder()
        .env("EASY_WRITER_COOKIE_SECURE", "false")
        .spawn()
        .await;
    for path in [
        "/admin/sessions",
        "/admin/images",
        "/admin/payments",
        "/admin/webhooks",
        "/admin/transactions",
        "/admin/sites",
        "/admin/articles",
        "/admin/tools",
        "/admin/providers",
        "/admin/settings",
    ] {
        let r = app.client.get(app.url(path)).send().await.expect("get");
        assert_eq!(r.status(), 303, "{path}");
        assert_eq!(r.headers()["location"], "/admin/login", "{path}");
    }
    let r = app
        .client
        .post(app.url("/admin/backup"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=x")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 303);
}

#[tokio::test]
async fn generation_sessions_filter_and_page_without_users_texts() {
    let app = builder()
        .env("EASY_WRITER_COOKIE_SECURE", "false")
        .spawn()
        .await;
    let admin = Browser::sign_in(&app).await;
    let other = app.register(&email("writer")).await;
    let sql = "insert into generation_sessions (id, user_id, tool_id, mode, status, input_data,
               result, provider_used, tokens_used, cost_raits, error_code, created_at, updated_at)
               values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)";
    for i in 0..52 {
        exec(
            &app,
            sql,
            vec![
                t(&id()),
                t(&other.user_id),
                t("seo_article"),
                t("quick"),
                t("completed"),
                t(r#"{"topic":"secret-input-text"}"#),
                t(r#""secret-result-text""#),
                t("openai"),
                n(100 + i),
                n(5),
                rusqlite::types::Value::Null,
                t(&timestamp::now()),
            ],
        )
        .await;
    }
    exec(
        &app,
        sql,
        vec![
            t(&id()),
            t(&admin.user_id),
            t("headline"),
            t("standard"),
            t("failed"),
            t("{}"),
            rusqlite::types::Value::Null,
            rusqlite::types::Value::Null,
            n(0),
            n(3),
            t("providers_unavailable"),
            t(&timestamp::now()),
        ],
    )
    .await;

    let (status, html) = admin.get("/admin/sessions").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("providers_unavailable"), "newest first");
    assert!(html.contains(&other.email));
    assert!(unescape(&html).contains(&format!("/admin/users/{}", other.user_id)));
    assert!(!html.contains("secret-input-text") && !html.contains("secret-result-text"));
    assert!(html.contains("offset=50"), "a next page");

    let (_, failed) = admin.get("/admin/sessions?status=failed").await;
    assert!(failed.contains("providers_unavailable"));
    assert!(!failed.contains(&other.email));
    assert!(failed.contains("<option value=\"failed\" selected>"));

    // An unknown status is ignored, not an error.
    let (status, all) = admin.get("/admin/sessions?status=exploded").await;
    assert_eq!(status, 200);
    assert!(all.contains(&other.email) && all.contains("providers_unavailable"));

    let (_, by_tool) = admin
        .get(&format!(
            "/admin/sessions?tool=seo_article&status=completed&user={}",
            other.user_id
        ))
        .await;
    assert!(!by_tool.contains("providers_unavailable"));
    // The pager keeps the filters.
    let next = unescape(
        by_tool
            .split("href=\"?")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a pager link"),
    );
    assert!(next.contains("tool=seo_article"), "{next}");
    assert!(next.contains("status=completed"), "{next}");
    assert!(next.contains(&format!("user={}", other.user_id)), "{next}");
    assert!(next.ends_with("offset=50"), "{next}");
    let (_, page2) = admin.get(&format!("/admin/sessions?{next}")).await;
    assert_eq!(
        page2.matches("<td class=\"num\">5</td>").count(),
        2,
        "2 more rows"
    );
    assert!(page2.contains("offset=0"), "a previous page");

    let (_, none) = admin.get("/admin/sessions?tool=nothing_like_it").await;
    assert!(none.contains("Генераций не нашлось"));
}

#[tokio::test]
async fn images_show_escaped_prompts_and_same_origin_thumbnails() {
    let app = builder()
        .env("EASY_WRITER_COOKIE_SECURE", "false")
        .spawn()
        .await;
    let admin = Browser::sign_in(&app).await;
    let user = app.register(&email("painter")).await;
    let image_id = id();
    let relative =
        easy_writer::gallery::Files::relative(&user.user_id, &image_id).expect("relative path");
    let files = app.state.gallery.files.clone();
    let rel = relative.clone();
    tokio::task::spawn_blocking(move || files.write(&rel, b"\x89PNG\r\n\x1a\nnot really"))
        .await
        .expect("task")
        .expect("write file");
    let sql = "insert into images (id, user_id, prompt, format, width, height, status, cost_raits,
               file, error_code, created_at, updated_at)
               values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)";
    exec(
        &app,
        sql,
        vec![
            t(&image_id),
            t(&user.user_id),
            t("<script>alert('x')</script> a cat"),
            t("web"),
            n(1024),
            n(1024),
            t("completed"),
            n(10),
            t(&relative),
            rusqlite::types::Value::Null,
            t(&timestamp::now()),
        ],
    )
    .await;
    exec(
        &app,
        sql,
        vec![
            t(&id()),
            t(&admin.user_id),
            t("a dog"),
            t("banner"),
            n(1200),
            n(628),
            t("failed"),
            n(0),
            rusqlite::types::Value::Null,
            t("content_blocked"),
            t(&timestamp::now()),
        ],
    )
    .await;

    let (status, html) = admin.get("/admin/images").await;
    assert_eq!(status, 200);
    assert!(!html.contains("<script>alert"), "escaped");
    assert!(html.contains("&lt;script&gt;"));
    assert!(html.contains("content_blocked") && html.contains(&user.email));
    let src = unescape(
        html.split("<img src=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a thumbnail"),
    );
    assert!(
        src.starts_with(&format!("/api/v1/images/{image_id}/file?")),
        "{src}"
    );
    let picture = app
        .client
        .get(app.url(&src))
        .send()
        .await
        .expect("thumbnail");
    assert_eq!(picture.status(), 200, "the signed link loads");

    let (_, failed) = admin.get("/admin/images?status=failed").await;
    assert!(failed.contains("a dog") && !failed.contains("a cat"));
    let (_, mine) = admin
        .get(&format!("/admin/images?user={}", user.user_id))
        .await;
    assert!(mine.contains("a cat") && !mine.contains("a dog"));
    let (_, none) = admin.get("/admin/images?user=nobody").await;
    assert!(none.contains("Изображений не нашлось"));
}

#[tokio::test]
async fn payments_webhooks_and_the_ledger() {
    let app = builder()
        .env("EASY_WRITER_COOKIE_SECURE", "false")
        .spawn()
        .await;
    let admin = Browser::sign_in(&app).await;
    let payer = app.register(&email("payer")).await;
    let paid = id();
    let failed = id();
    let sql = "insert into payments (id, number, user_id, provider, status, amount_rub,
               amount_kopecks, amount_raits, external_id, provider_status, refunded_kopecks,
               shortfall_raits, error, created_at, updated_at)
               values (?1, ?2, ?3, ?4, ?5, ?6, ?6 * 100, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13)";
    exec(
        &app,
        sql,
        vec![
            t(&paid),
            n(1001),
            t(&payer.user_id),
            t("yookassa"),
            t("refunded"),
            n(150),
            n(1500),
            t("ext-yoo-1"),
            t("succeeded"),
            n(1234),
            n(70),
            rusqlite::types::Value::Null,
            t(&timestamp::now()),
        ],
    )
    .await;
    exec(
        &app,
        sql,
        vec![
            t(&failed),
            n(1002),
            t(&payer.user_id),
            t("tbank"),
            t("failed"),
            n(200),
            n(2000),
            rusqlite::types::Value::Null,
            t("REJECTED"),
            n(0),
            n(0),
            t("card declined"),
            t(&timestamp::now()),
        ],
    )
    .await;

    let (status, html) = admin.get("/admin/payments").await;
    assert_eq!(status, 200);
    assert!(html.contains("1001") && html.contains("1002"));
    assert!(html.contains("12.34"), "refunded roubles from kopecks");
    assert!(
        html.contains("<span class=\"bad\">70</span>"),
        "shortfall flagged"
    );
    assert!(html.contains("card declined") && html.contains(&payer.email));
    let (_, yoo) = admin.get("/admin/payments?provider=yookassa").await;
    assert!(yoo.contains("ext-yoo-1") && !yoo.contains("card declined"));
    let (_, by_status) = admin
        .get("/admin/payments?status=failed&provider=paypal")
        .await;
    assert!(by_status.contains("card declined") && !by_status.contains("ext-yoo-1"));
    let (_, one) = admin.get(&format!("/admin/payments?payment={paid}")).await;
    assert!(one.contains("ext-yoo-1") && !one.contains("card declined"));
    let (_, none) = admin.get("/admin/payments?user=nobody").await;
    assert!(none.contains("Платежей не нашлось"));

    let sql = "insert into payment_webhooks (id, provider, payment_id, remote_ip, method, headers,
               body, verdict, detail, created_at)
               values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
    exec(
        &app,
        sql,
        vec![
            t(&id()),
            t("yookassa"),
            t(&paid),
            t("185.71.76.1"),
            t("POST"),
            t(r#"{"content-type":"application/json"}"#),
            t(r#"{"event":"payment.succeeded","note":"<b>bold</b>"}"#),
            t("credited"),
            rusqlite::types::Value::Null,
            t(&timestamp::now()),
        ],
    )
    .await;
    exec(
        &app,
        sql,
        vec![
            t(&id()),
            t("tbank"),
            rusqlite::types::Value::Null,
            t("203.0.113.9"),
            t("POST"),
            t("{}"),
            t("Token=[redacted]"),
            t("rejected:forged"),
            t("bad token"),
            t(&timestamp::now()),
        ],
    )
    .await;
    let (status, html) = admin.get("/admin/webhooks").await;
    assert_eq!(status, 200);
    assert!(html.contains("<span class=\"bad\">rejected:forged</span>"));
    assert!(html.contains("&lt;b&gt;bold&lt;") && !html.contains("<b>bold</b>"));
    assert!(unescape(&html).contains("content-type: application/json"));
    assert!(unescape(&html).contains(&format!("/admin/payments?payment={paid}")));
    let (_, rejected) = admin.get("/admin/webhooks?verdict=rejected").await;
    assert!(rejected.contains("bad token") && !rejected.contains("185.71.76.1"));
    let (_, escaped) = admin.get("/admin/webhooks?verdict=%25").await;
    assert!(escaped.contains("Вызовов не нашлось"), "% is literal");
    let (_, by_payment) = admin.get(&format!("/admin/webhooks?payment={paid}")).await;
    assert!(by_payment.contains("185.71.76.1") && !by_payment.contains("bad token"));
    let (_, by_provider) = admin.get("/admin/webhooks?provider=tbank").await;
    assert!(by_provider.contains("bad token") && !by_provider.contains("185.71.76.1"));

    app.topup(&payer.user_id, 40).await;
    app.topup(&admin.user_id, 7).await;
    let (status, html) = admin.get("/admin/transactions").await;
    assert_eq!(status, 200);
    assert!(html.contains(&payer.email) && html.contains("test top-up"));
    let (_, mine) = admin
        .get(&format!(
            "/admin/transactions?user={}&type=adjustment",
            payer.user_id
        ))
        .await;
    assert!(
        mine.contains("<td class=\"num\">40</td>") && !mine.contains("<td class=\"num\">7</td>")
    );
    let (_, spends) = admin.get("/admin/transactions?type=spend").await;
    assert!(spends.contains("Операций не нашлось"));
}

#[tokio::test]
async fn sites_articles_and_a_password_shown_once() {
    let app = builder()
        .env("EASY_WRITER_COOKIE_SECURE", "false")
        .spawn()
        .await;
    let admin = Browser::sign_in(&app).await;
    let owner = app.register(&email("owner")).await;
    let old_digest = easy_writer::legacy::password_digest("old-password");
    let (owner_id, digest) = (owner.user_id.clone(), old_digest.clone());
    let site = app
        .state
        .db
        .write(move |tx| {
            easy_writer::legacy::store::insert_site(
                tx,
                "blog.example.ru",
                Some("Блог"),
                Some(&owner_id),
                &digest,
            )
        })
        .await
        .expect("site");
    let sql = "insert into articles (id, site_id, owner_user_id, session_id, title, keywords,
               language, length, status, tokens_used, cost_raits, wp_post_id, url, created_at,
               updated_at)
               values (?1, ?2, ?3, 'batch-1', ?4, '[]', 'ru', 'short', ?5, ?6, ?7, ?8, ?9, ?10, ?10)";
    exec(
        &app,
        sql,
        vec![
            t(&id()),
            t(&site.id),
            t(&owner.user_id),
            t("Как выбрать <чайник>"),
            t("published"),
            n(900),
            n(30),
            n(42),
            t("https://blog.example.ru/kettle"),
            t(&timestamp::now()),
        ],
    )
    .await;
    exec(
        &app,
        sql,
        vec![
            t(&id()),
            t(&site.id),
            t(&owner.user_id),
            t("Вторая статья"),
            t("failed"),
            n(0),
            n(0),
            rusqlite::types::Value::Null,
            t("javascript:alert(1)"),
            t(&timestamp::now()),
        ],
    )
    .await;

    let (status, html) = admin.get("/admin/sites").await;
    assert_eq!(status, 200);
    assert!(html.contains("blog.example.ru") && html.contains(&owner.email));
    assert!(!html.contains(&old_digest), "never the digest");
    assert!(unescape(&html).contains(&format!("/admin/sites/{}/rotate", site.id)));

    let (status, html) = admin.get("/admin/articles").await;
    assert_eq!(status, 200);
    assert!(html.contains("Как выбрать &lt;чайник&gt;"));
    assert!(unescape(&html).contains("href=\"https://blog.example.ru/kettle\""));
    assert!(
        !unescape(&html).contains("href=\"javascript:"),
        "only web links"
    );
    let (_, published) = admin
        .get(&format!(
            "/admin/articles?site={}&status=published",
            site.id
        ))
        .await;
    assert!(published.contains("#42") && !published.contains("Вторая статья"));
    let (_, none) = admin.get("/admin/articles?site=elsewhere").await;
    assert!(none.contains("Статей не нашлось"));

    // Without the form's token nothing changes.
    let stale = admin
        .post(&format!("/admin/sites/{}/rotate", site.id), Some("forged"))
        .await;
    assert_eq!(stale.status(), 403);
    let rotated = admin
        .post(&format!("/admin/sites/{}/rotate", site.id), None)
        .await;
    assert_eq!(rotated.status(), 200);
    assert_eq!(rotated.headers()["cache-control"], "no-store");
    let html = rotated.text().await.expect("html");
    let password = html
        .split("<code class=\"secret\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("the new password")
        .to_owned();
    assert_eq!(password.len(), 43);
    let site_id = site.id.clone();
    let stored: String = app
        .state
        .db
        .read(move |c| {
            c.query_row(
                "select password_sha256 from sites where id = ?1",
                [&site_id],
                |r| r.get(0),
            )
            .map_err(easy_writer::db::Error::from)
        })
        .await
        .expect("digest");
    assert_eq!(stored, easy_writer::legacy::password_digest(&password));
    let audit = audit_actions(&app).await;
    assert_eq!(audit[0].0, "rotate_site_password");
    assert_eq!(audit[0].1.as_deref(), Some(site.id.as_str()));
    assert_eq!(audit[0].2.as_deref(), Some("blog.example.ru"));
    assert!(
        audit
            .iter()
            .all(|(_, _, d)| !d.as_deref().unwrap_or("").contains(&password)),
        "never in the audit log"
    );
    // Shown once: the list does not show it again.
    let (_, html) = admin.get("/admin/sites").await;
    assert!(!html.contains(&password));

    let missing = admin.post("/admin/sites/no-such-site/rotate", None).await;
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn providers_are_listed_and_checked() {
    let app = builder()
        .env("EASY_WRITER_COOKIE_SECURE", "false")
        .env("OPENAI_API_KEY", "sk-admin-page-must-not-show")
        .upstream("OPENAI_BASE_URL")
        .spawn()
        .await;
    let admin = Browser::sign_in(&app).await;
    let (status, html) = admin.get("/admin/providers").await;
    assert_eq!(status, 200);
    assert!(html.contains("openai") && html.contains("kandinsky") && html.contains("ЮKassa"));
    assert!(!html.contains("sk-admin-page-must-not-show"));

    let stale = admin.post("/admin/providers/check", Some("")).await;
    assert_eq!(stale.status(), 403);
    // The fake OpenAI has no /models: the check reports the error.
    let checked = admin.post("/admin/providers/check", None).await;
    assert_eq!(checked.status(), 200);
    let html = checked.text().await.expect("html");
    assert!(html.contains("Проверка"), "{html}");
    assert!(html.contains("<span class=\"bad\">ошибка</span>"), "{html}");
    let audit = audit_actions(&app).await;
    assert_eq!(audit[0].0, "providers_check");
    assert_eq!(audit[0].2.as_deref(), Some("openai: error"));
}

#[tokio::test]
async fn settings_mask_secrets_and_a_backup_downloads() {
    let app = builder()
        .env("EASY_WRITER_COOKIE_SECURE", "false")
        .env(
            "SMTP_URL",
            "smtp://mailer:smtp-pass-not-shown@127.0.0.1:2525?tls=none",
        )
        .env("GIGACHAT_API_KEY", "gigachat-key-not-shown")
        .env("YOOKASSA_SHOP_ID", "shop-42")
        .env("YOOKASSA_SECRET_KEY", "yookassa-secret-not-shown")
        .spawn()
        .await;
    let admin = Browser::sign_in(&app).await;
    let (status, html) = admin.get("/admin/settings").await;
    assert_eq!(status, 200);
    for secret in [
        crate::helpers::JWT_SECRET,
        "smtp-pass-not-shown",
        "gigachat-key-not-shown",
        "yookassa-secret-not-shown",
    ] {
        assert!(!html.contains(secret), "{secret} leaked");
    }
    assert!(html.contains("shop-42"), "plain settings are shown");
    assert!(html.contains("********"));
    assert!(html.contains("EASY_WRITER_DATA_DIR"));

    let stale = admin.post("/admin/backup", Some("nope")).await;
    assert_eq!(stale.status(), 403);
    let download = admin.post("/admin/backup", None).await;
    assert_eq!(download.status(), 200);
    assert_eq!(
        download.headers()["content-type"],
        "application/octet-stream"
    );
    let disposition = download.headers()["content-disposition"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        disposition.starts_with("attachment; filename=\"easy-writer-")
            && disposition.ends_with(".db\""),
        "{disposition}"
    );
    let bytes = download.bytes().await.expect("body");
    assert!(bytes.starts_with(b"SQLite format 3\0"));
    // The copy holds the data: this admin is in it.
    let copy = tempfile::tempdir().expect("temp dir");
    let path = copy.path().join("copy.db");
    std::fs::write(&path, &bytes).expect("write copy");
    let conn = rusqlite::Connection::open(&path).expect("open copy");
    let admins: i64 = conn
        .query_row(
            "select count(*) from users where id = ?1 and is_admin = 1",
            [&admin.user_id],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(admins, 1);
    // Nothing is left behind in the data directory (once the server has let go of the body).
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(app.data_dir())
            .expect("data dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains("backup"))
            .collect()
    };
    for _ in 0..100 {
        if leftovers().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    let audit = audit_actions(&app).await;
    assert_eq!(audit[0].0, "backup");
    assert_eq!(
        audit[0].2.as_deref(),
        Some(format!("{} bytes", bytes.len()).as_str())
    );
    // The server's database still works after the copy.
    let (status, _) = admin.get("/admin/sessions").await;
    assert_eq!(status, 200);
    assert!(Path::new(&app.database_path()).exists());
}

/// The text of each cell of the table row that starts with `first`, tags removed.
fn row_cells(html: &str, first: &str) -> Vec<String> {
    let at = html
        .find(first)
        .unwrap_or_else(|| panic!("no row for {first}"));
    let start = html[..at].rfind("<tr>").expect("row start");
    let end = at + html[at..].find("</tr>").expect("row end");
    html[start..end]
        .split("<td")
        .flat_map(|part| part.split("<th"))
        .skip(1)
        .map(|cell| {
            let mut text = String::new();
            let mut in_tag = true;
            for c in cell.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    _ if !in_tag => text.push(c),
                    _ => {}
                }
            }
            text.trim().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_tools_report_sets_revenue_against_provider_cost() {
    use serde_json::{Value, json};
    use wiremock::matchers::{body_string_contains, method, path};
    use wiremock::{Mock, ResponseTemplate};

    let app = builder()
        .env("EASY_WRITER_COOKIE_SECURE", "false")
        .upstream("OPENAI_BASE_URL")
        .env("OPENAI_API_KEY", "sk-test")
        .env("EASY_WRITER_PROVIDER_ORDER", "openai")
        .env("OPENAI_KOPECKS_PER_1K_TOKENS", 250)
        .env("EASY_WRITER_RETRY_BASE_MS", 5)
        .spawn()
        .await;
    let openai = &app.upstreams["OPENAI_BASE_URL"];
    // A text the provider refuses (400: no retry, no other provider) fails the run.
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .and(body_string_contains("refuse-this-text"))
        .respond_with(ResponseTemplate::new(400).set_body_string(
            r#"{"error":{"message":"bad request","type":"invalid_request_error"}}"#,
        ))
        .with_priority(1)
        .expect(1)
        .mount(openai)
        .await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_string(
            r#"{"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Исправлено."},"finish_reason":"stop"}],"usage":{"prompt_tokens":1500,"completion_tokens":500,"total_tokens":2000}}"#,
        ))
        .expect(2)
        .mount(openai)
        .await;

    let admin = Browser::sign_in(&app).await;
    let (status, empty) = admin.get("/admin/tools").await;
    assert_eq!(status, 200);
    assert!(empty.contains("За этот период запусков не было"), "{empty}");
    assert!(empty.contains("aria-current=\"page\">Инструменты</a>"));

    let writer = app.register(&email("writer")).await;
    app.topup(&writer.user_id, 100).await;
    let mut price = 0;
    for text in ["Превет, как дела?", "Исчо адин текст"] {
        let response = app
            .post_authed(
                "/api/v1/tools/simplify/execute",
                &writer.access_token,
                &json!({"input": {"text": text}}),
            )
            .await;
        assert_eq!(response.status(), 200);
        let session: Value = response.json().await.expect("session");
        assert_eq!(session["tokens_used"], 2000);
        price = session["cost_raits"].as_i64().expect("price");
    }
    let refused = app
        .post_authed(
            "/api/v1/tools/simplify/execute",
            &writer.access_token,
            &json!({"input": {"text": "refuse-this-text"}}),
        )
        .await;
    assert!(!refused.status().is_success(), "{}", refused.status());

    let (status, html) = admin.get("/admin/tools?days=30").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("<strong aria-current=\"page\">30 дней</strong>"));
    let cells = row_cells(&html, "<code>simplify</code>");
    let revenue = 2 * price;
    // 10 raits = 1 ₽; 4,000 tokens at 2.50 ₽ per 1,000 = 10.00 ₽.
    let revenue_kopecks = revenue * 10;
    let margin = revenue_kopecks - 1000;
    let rub = |k: i64| {
        format!(
            "{}{}.{:02}",
            if k < 0 { "-" } else { "" },
            k.abs() / 100,
            k.abs() % 100
        )
    };
    assert_eq!(
        cells[1..],
        [
            "2".to_owned(),
            "1".to_owned(),
            "4000".to_owned(),
            revenue.to_string(),
            rub(revenue_kopecks),
            "10.00".to_owned(),
            rub(margin),
            format!("{price}.0"),
            "2000".to_owned(),
        ],
        "{cells:?}"
    );
    assert!(cells[0].contains("simplify"), "{cells:?}");
    assert!(
        html.contains(&format!("<span class=\"bad\">{}</span>", rub(margin))) == (margin < 0),
        "a loss is red"
    );
    let total = row_cells(&html, "Итого");
    assert_eq!(total[1..4], ["2", "1", "4000"]);
    let openai_row = row_cells(&html, "<td>openai</td>");
    // The refused run counts against the provider that refused it; it used no tokens.
    assert_eq!(
        openai_row[1..],
        ["3", "4000", "2.50", "10.00"],
        "{openai_row:?}"
    );

    // Any other period asked for is the default one, never an error.
    for query in ["days=abc", "days=31", "days=", "days=7&days=x"] {
        let (status, html) = admin.get(&format!("/admin/tools?{query}")).await;
        assert_eq!(status, 200, "{query}");
        assert!(html.contains("<code>simplify</code>"), "{query}");
    }
    let (_, week) = admin.get("/admin/tools?days=7").await;
    assert!(week.contains("<strong aria-current=\"page\">7 дней</strong>"));
    assert_eq!(row_cells(&week, "<code>simplify</code>")[3], "4000");

    // A signed-in user who is not an admin gets the sign-in page, as everywhere in /admin.
    let response = app
        .client
        .get(app.url("/admin/tools"))
        .bearer_auth(&writer.access_token)
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/admin/login");
}
