//! The admin UI in a real headless Chromium (Debian's `chromium` and `chromedriver`): sign in
//! through the form, open every page the navigation links to (read from the page itself, so
//! pages added later are walked too) and a user's detail page, at desktop size and the
//! dashboard at phone size; on each, no browser console error, nothing loaded from anywhere but
//! the server, the stylesheet applied; a screenshot of each into `target/browser-screenshots/`.
//! Then the balance form is submitted in the browser.
//!
//! Without the browser, run as root on Debian, the test installs `chromium` and
//! `chromium-driver` itself (what `.ci/run` does), so `cargo test` needs nothing installed by
//! hand; otherwise it fails, naming what is missing, unless `EASY_WRITER_BROWSER_OPTIONAL=1`
//! (then it says so loudly on stderr and passes).

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// `chromedriver` on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver never listened on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium's console messages since the last call (`/se/log`, chromedriver's log endpoint).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// The browser's console errors since the last call. The browser's own request for
/// `/favicon.ico` (no page asks for it; the layouts name no icon) is not the page's error.
async fn console_errors(client: &Client) -> Vec<String> {
    let log = client.issue_cmd(BrowserLog).await.expect("browser log");
    log.as_array()
        .expect("log entries")
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .filter(|m| !m.contains("/favicon.ico - Failed to load resource"))
        .collect()
}

/// When the browser is not installed: fail, or with `EASY_WRITER_BROWSER_OPTIONAL=1` pass
/// with a loud line on stderr.
fn browser_missing() -> Option<String> {
    for path in [CHROMEDRIVER, CHROMIUM] {
        if !Path::new(path).exists() {
            return Some(format!(
                "BROWSER TEST NOT RUN: {path} missing — install chromium chromium-driver"
            ));
        }
    }
    None
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("browser-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    dir
}

/// `/admin/users/…` → `users_…`; `/admin` → `dashboard`.
fn page_name(path: &str) -> String {
    let rest = path.trim_start_matches("/admin").trim_matches('/');
    if rest.is_empty() {
        "dashboard".to_owned()
    } else {
        rest.replace(['/', '?', '&', '='], "_")
    }
}

/// What one page looked like.
struct Seen {
    path: String,
    status: i64,
    title: String,
}

/// Opens `path` and checks it; the screenshot is saved as `name`.
async fn visit(client: &Client, base: &str, path: &str, name: &str) -> Seen {
    client
        .goto(&format!("{base}{path}"))
        .await
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    check_page(client, base, path, name).await
}

async fn check_page(client: &Client, base: &str, path: &str, name: &str) -> Seen {
    let started = Instant::now();
    loop {
        let state = client
            .execute("return document.readyState", vec![])
            .await
            .expect("readyState");
        if state == "complete" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{path}: {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let facts = client
        .execute(
            r#"
            const nav = performance.getEntriesByType("navigation")[0];
            const urls = [];
            document.querySelectorAll("img[src], script[src], link[href], iframe[src], source[src]")
                .forEach(e => urls.push(e.src || e.href));
            performance.getEntriesByType("resource").forEach(e => urls.push(e.name));
            let rules = -1;
            try {
                rules = Array.from(document.styleSheets).reduce((n, s) => n + s.cssRules.length, 0);
            } catch (e) { rules = -2; }
            return {
                status: nav ? nav.responseStatus : 0,
                title: document.title,
                urls: urls,
                sheets: document.styleSheets.length,
                rules: rules,
                overflow: document.documentElement.scrollWidth - window.innerWidth,
                stale: document.body.innerText.includes("Форма устарела"),
            };
            "#,
            vec![],
        )
        .await
        .expect("page facts");
    let origin = format!("{base}/");
    for url in facts["urls"].as_array().expect("urls") {
        let url = url.as_str().unwrap_or_default();
        assert!(
            url.starts_with(&origin),
            "{path}: a request leaves the server: {url}"
        );
    }
    assert!(
        facts["sheets"].as_i64() >= Some(1) && facts["rules"].as_i64() > Some(0),
        "{path}: the stylesheet did not load: {facts}"
    );
    let mut errors = console_errors(client).await;
    // A page not written yet answers a GET with the "stale form" refusal (403): the browser
    // logs the 403 of the document itself. Only that is let through, loudly; once the page
    // exists it is checked like every other.
    let placeholder = facts["status"] == 403 && facts["stale"] == true;
    if placeholder {
        eprintln!("browser: PLACEHOLDER {path}: answers 403 «stale form» (page not written yet)");
        errors.retain(|e| !e.contains("the server responded with a status of 403"));
    }
    assert!(
        errors.is_empty(),
        "{path}: browser console errors: {errors:#?}"
    );
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).expect("save screenshot");
    let seen = Seen {
        path: path.to_owned(),
        status: facts["status"].as_i64().unwrap_or_default(),
        title: facts["title"].as_str().unwrap_or_default().to_owned(),
    };
    eprintln!(
        "browser: {:<24} HTTP {} «{}» horizontal overflow {}px, screenshot {name}.png",
        seen.path, seen.status, seen.title, facts["overflow"]
    );
    seen
}

/// Installs Debian's `chromium` and `chromium-driver` when this process may (root, apt-get
/// present); says what it does, since it takes a minute and a download.
fn install_browser() {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        return;
    }
    eprintln!("browser: installing chromium and chromium-driver with apt-get");
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !(apt(&["update"]) && apt(&["install", "-y", "chromium", "chromium-driver"])) {
        eprintln!("browser: apt-get could not install them");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_ui_in_headless_chromium() {
    if browser_missing().is_some() {
        install_browser();
    }
    if let Some(message) = browser_missing() {
        eprintln!("{message}");
        if std::env::var("EASY_WRITER_BROWSER_OPTIONAL").as_deref() == Ok("1") {
            return;
        }
        panic!("{message}");
    }

    // The server, an admin and a user with a ledger adjustment.
    let app = helpers::builder()
        .env("EASY_WRITER_COOKIE_SECURE", "false")
        .spawn()
        .await;
    let admin = app.register(&helpers::email("admin")).await;
    let admin_id = admin.user_id.clone();
    app.state
        .db
        .write(move |tx| {
            tx.execute("update users set is_admin = 1 where id = ?1", [&admin_id])?;
            Ok::<_, easy_writer::db::Error>(())
        })
        .await
        .expect("make admin");
    let user = app.register(&helpers::email("reader")).await;
    app.topup(&user.user_id, 1500).await;
    let base = format!("http://{}", app.addr);

    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile dir");
    let mut caps = Capabilities::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    caps.insert("goog:loggingPrefs".to_owned(), json!({"browser": "ALL"}));
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session through chromedriver");
    client
        .set_window_size(1280, 900)
        .await
        .expect("window size");

    let result = walk(&client, &base, &app, &user.user_id).await;
    let _ = client.close().await;
    drop(driver);
    result.expect("browser walk");
}

async fn walk(
    client: &Client,
    base: &str,
    app: &helpers::TestApp,
    user_id: &str,
) -> Result<(), fantoccini::error::CmdError> {
    // Signed out, the dashboard sends the browser to the form.
    client.goto(&format!("{base}/admin")).await?;
    assert_eq!(client.current_url().await?.path(), "/admin/login");
    check_page(client, base, "/admin/login", "login").await;

    // Sign in through the form.
    let admin_email: String = app
        .state
        .db
        .read(|c| {
            c.query_row("select email from users where is_admin = 1", [], |r| {
                r.get(0)
            })
            .map_err(easy_writer::db::Error::from)
        })
        .await
        .expect("admin email");
    client
        .find(Locator::Css("input[name=email]"))
        .await?
        .send_keys(&admin_email)
        .await?;
    client
        .find(Locator::Css("input[name=password]"))
        .await?
        .send_keys(helpers::PASSWORD)
        .await?;
    client
        .find(Locator::Css("form button[type=submit]"))
        .await?
        .click()
        .await?;
    wait_for_path(client, "/admin").await;
    let dashboard = check_page(client, base, "/admin", "dashboard").await;
    assert_eq!(dashboard.status, 200);

    // Every page of the navigation, as the page itself lists them.
    let mut links = Vec::new();
    for a in client.find_all(Locator::Css("header nav a")).await? {
        if let Some(href) = a.attr("href").await? {
            links.push(href);
        }
    }
    assert!(links.len() >= 4, "nav links: {links:?}");
    assert!(links.iter().any(|l| l == "/admin/users"), "{links:?}");
    assert!(links.iter().any(|l| l == "/admin/audit"), "{links:?}");
    let mut seen = Vec::new();
    for href in &links {
        assert!(
            href.starts_with("/admin"),
            "a nav link leaves the admin UI: {href}"
        );
        seen.push(visit(client, base, href, &page_name(href)).await);
    }
    // The built pages answer 200; the others are placeholders for now (403 "stale form").
    for s in &seen {
        if ["/admin", "/admin/users", "/admin/audit"].contains(&s.path.as_str()) {
            assert_eq!(s.status, 200, "{}", s.path);
        }
    }

    // A user's detail page, reached by its link in the list.
    client.goto(&format!("{base}/admin/users")).await?;
    let link = client
        .find(Locator::Css(&format!("a[href='/admin/users/{user_id}']")))
        .await?;
    link.click().await?;
    wait_for_path(client, &format!("/admin/users/{user_id}")).await;
    let detail = check_page(client, base, &format!("/admin/users/{user_id}"), "user").await;
    assert_eq!(detail.status, 200);

    // The balance form, submitted in the browser.
    let form = client
        .find(Locator::Css("form[action$='/balance']"))
        .await?;
    form.find(Locator::Css("input[name=amount]"))
        .await?
        .send_keys("250")
        .await?;
    form.find(Locator::Css("input[name=reason]"))
        .await?
        .send_keys("проверка из браузера")
        .await?;
    form.find(Locator::Css("button[type=submit]"))
        .await?
        .click()
        .await?;
    let started = Instant::now();
    while !client
        .current_url()
        .await?
        .query()
        .is_some_and(|q| q.contains("done=adjusted"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the balance form did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check_page(
        client,
        base,
        "/admin/users/…?done=adjusted",
        "user-adjusted",
    )
    .await;
    let message = client.find(Locator::Css("p.message")).await?.text().await?;
    assert_eq!(message, "Баланс изменён");
    let body = client.find(Locator::Css("main")).await?.text().await?;
    assert!(body.contains("проверка из браузера"), "{body}");
    assert_eq!(app.balance_and_ledger_sum(user_id), (1750, 1750));

    // The dashboard at phone size.
    client.set_window_size(390, 844).await?;
    visit(client, base, "/admin", "dashboard-phone").await;
    client.set_window_size(1280, 900).await?;

    // Sign out with the header's button.
    client
        .find(Locator::Css("form.logout button[type=submit]"))
        .await?
        .click()
        .await?;
    wait_for_path(client, "/admin/login").await;
    client.goto(&format!("{base}/admin/users")).await?;
    assert_eq!(client.current_url().await?.path(), "/admin/login");
    let _ = console_errors(client).await;
    eprintln!(
        "browser: {} pages walked, screenshots in {}",
        seen.len() + 4,
        screenshots_dir().display()
    );
    Ok(())
}

async fn wait_for_path(client: &Client, path: &str) {
    let started = Instant::now();
    loop {
        if client.current_url().await.expect("url").path() == path {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never reached {path}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
