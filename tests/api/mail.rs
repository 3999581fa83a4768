//! Password reset and email verification (CONTRACT §4 "Auth"; §2 `SMTP_URL`,
//! `EASY_WRITER_MAIL_FROM`), end to end: the server writes letters to a fake SMTP server on
//! loopback, the tests read the links out of them and use them as a person would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use easy_writer::mail::Mailer;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::helpers::{Builder, PASSWORD, TestApp, builder, email, expect_error};

const FRONTEND: &str = "https://app.example";
const PUBLIC: &str = "https://api.example";
const NEW_PASSWORD: &str = "a brand new password";

// ---------------------------------------------------------------------------------------------
// A fake SMTP server: enough of RFC 5321 for lettre (greeting, EHLO, AUTH PLAIN, MAIL, RCPT,
// DATA with dot-stuffing, RSET, NOOP, QUIT), no STARTTLS. It keeps what it was sent.

/// What one SMTP transaction delivered.
#[derive(Debug, Clone)]
struct Received {
    rcpt_to: Vec<String>,
    data: String,
}

#[derive(Default)]
struct Log {
    connections: AtomicUsize,
    /// Connections still to be turned away with `421` at the greeting (a busy server).
    refuse: AtomicUsize,
    /// Answer `550` to every `RCPT TO` (a permanent refusal).
    reject_rcpt: AtomicBool,
    commands: Mutex<Vec<String>>,
    messages: Mutex<Vec<Received>>,
}

struct FakeSmtp {
    addr: SocketAddr,
    log: Arc<Log>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSmtp {
    async fn start() -> FakeSmtp {
        Self::start_on("127.0.0.1:0".parse().unwrap(), 0).await
    }

    /// A server on `addr` that turns its first `refuse` connections away with `421`.
    async fn start_on(addr: SocketAddr, refuse: usize) -> FakeSmtp {
        let listener = TcpListener::bind(addr).await.expect("bind fake smtp");
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Log {
            refuse: AtomicUsize::new(refuse),
            ..Log::default()
        });
        let shared = Arc::clone(&log);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, Arc::clone(&shared)));
            }
        });
        FakeSmtp { addr, log, task }
    }

    /// `SMTP_URL` for this server: plaintext, as for a local relay.
    fn url(&self) -> String {
        format!("smtp://{}?tls=none", self.addr)
    }

    fn messages(&self) -> Vec<Received> {
        self.log.messages.lock().unwrap().clone()
    }

    fn commands(&self) -> Vec<String> {
        self.log.commands.lock().unwrap().clone()
    }

    /// Waits until `n` messages have arrived; panics after 10 s.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let began = Instant::now();
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "{n} letter(s) expected, {} arrived; commands: {:?}",
                messages.len(),
                self.commands()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` connections were made; panics after 10 s.
    async fn wait_for_connections(&self, n: usize) {
        let began = Instant::now();
        while self.log.connections.load(Ordering::SeqCst) < n {
            assert!(began.elapsed() < Duration::from_secs(10), "{n} connections");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn session(stream: tokio::net::TcpStream, log: Arc<Log>) {
    log.connections.fetch_add(1, Ordering::SeqCst);
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let refuse = log
        .refuse
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if refuse {
        let _ = write
            .write_all(b"421 fake.test busy, try again later\r\n")
            .await;
        return;
    }
    if write.write_all(b"220 fake.test ESMTP\r\n").await.is_err() {
        return;
    }
    let mut rcpt_to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_owned();
        log.commands.lock().unwrap().push(command.clone());
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250-fake.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n",
            "AUTH" => b"235 2.7.0 accepted\r\n",
            "MAIL" => {
                rcpt_to.clear();
                b"250 2.1.0 ok\r\n"
            }
            "RCPT" if log.reject_rcpt.load(Ordering::SeqCst) => b"550 5.1.1 no such mailbox\r\n",
            "RCPT" => {
                rcpt_to.push(command[8..].trim().to_owned());
                b"250 2.1.5 ok\r\n"
            }
            "DATA" => {
                if write.write_all(b"354 go ahead\r\n").await.is_err() {
                    return;
                }
                let mut data = String::new();
                loop {
                    line.clear();
                    match lines.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                log.messages.lock().unwrap().push(Received {
                    rcpt_to: std::mem::take(&mut rcpt_to),
                    data,
                });
                b"250 2.0.0 queued\r\n"
            }
            "RSET" | "NOOP" => b"250 ok\r\n",
            "QUIT" => {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => b"502 5.5.2 unknown command\r\n",
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading a letter: headers, encoded words, MIME parts and their transfer encodings.

struct Letter {
    to: Vec<String>,
    from: String,
    subject: String,
    /// `(content type, decoded body)` of each part.
    parts: Vec<(String, String)>,
}

impl Letter {
    fn parse(received: &Received) -> Letter {
        let (head, body) = received.data.split_once("\r\n\r\n").expect("head and body");
        let content_type = header(head, "content-type").expect("content-type");
        assert!(
            content_type.starts_with("multipart/alternative"),
            "{content_type}"
        );
        let boundary = content_type
            .split("boundary=")
            .nth(1)
            .expect("boundary")
            .trim_matches('"')
            .to_owned();
        let mut parts = Vec::new();
        for chunk in body.split(&format!("--{boundary}")).skip(1) {
            if chunk.starts_with("--") {
                break;
            }
            let (part_head, part_body) = chunk
                .trim_start_matches("\r\n")
                .split_once("\r\n\r\n")
                .expect("part head and body");
            let kind = header(part_head, "content-type").unwrap_or_default();
            let encoding = header(part_head, "content-transfer-encoding")
                .unwrap_or_else(|| "7bit".into())
                .to_ascii_lowercase();
            let decoded = match encoding.as_str() {
                "base64" => {
                    let compact: String = part_body.split_whitespace().collect();
                    String::from_utf8(
                        base64::engine::general_purpose::STANDARD
                            .decode(compact)
                            .expect("base64 body"),
                    )
                    .expect("utf-8 body")
                }
                "quoted-printable" => quoted_printable(part_body),
                _ => part_body.to_owned(),
            };
            parts.push((kind, decoded));
        }
        Letter {
            to: received.rcpt_to.clone(),
            from: header(head, "from").unwrap_or_default(),
            subject: decode_words(&header(head, "subject").unwrap_or_default()),
            parts,
        }
    }

    fn part(&self, kind: &str) -> &str {
        self.parts
            .iter()
            .find(|(k, _)| k.starts_with(kind))
            .map(|(_, body)| body.as_str())
            .unwrap_or_else(|| panic!("no {kind} part in {:?}", self.parts))
    }

    /// The token of the link `FRONTEND/<path>?token=…` in the plain text, checked to be in
    /// the HTML part too.
    fn token(&self, path: &str) -> String {
        let prefix = format!("{FRONTEND}{path}?token=");
        let text = self.part("text/plain");
        let start = text
            .find(&prefix)
            .unwrap_or_else(|| panic!("{prefix} in {text}"))
            + prefix.len();
        let token: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        assert_eq!(token.len(), 43, "256 bits, base64url: {token}");
        let html = self.part("text/html");
        assert!(
            html.contains(&format!("href=\"{prefix}{token}\"")),
            "the link in the HTML part: {html}"
        );
        token
    }
}

/// A header's value, unfolded; names compare without case.
fn header(head: &str, name: &str) -> Option<String> {
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.split("\r\n").find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// Decodes RFC 2047 encoded words (`=?utf-8?b?…?=`, `=?utf-8?q?…?=`).
fn decode_words(value: &str) -> String {
    let mut out = String::new();
    let mut previous_encoded = false;
    for token in value.split_whitespace() {
        let pieces: Vec<&str> = token.split('?').collect();
        let encoded = pieces.len() == 5 && pieces[0] == "=" && pieces[4] == "=";
        if !encoded {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(token);
            previous_encoded = false;
            continue;
        }
        if !previous_encoded && !out.is_empty() {
            out.push(' ');
        }
        let bytes = match pieces[2].to_ascii_lowercase().as_str() {
            "b" => base64::engine::general_purpose::STANDARD
                .decode(pieces[3])
                .expect("encoded word"),
            _ => quoted_printable(&pieces[3].replace('_', " ")).into_bytes(),
        };
        out.push_str(&String::from_utf8(bytes).expect("utf-8 word"));
        previous_encoded = true;
    }
    out
}

fn quoted_printable(text: &str) -> String {
    let text = text.replace("=\r\n", "");
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).expect("utf-8 after quoted-printable")
}

// ---------------------------------------------------------------------------------------------

fn with_mail(smtp: &FakeSmtp) -> Builder {
    builder()
        .env("SMTP_URL", smtp.url())
        .env("FRONTEND_URL", FRONTEND)
        .env("EASY_WRITER_PUBLIC_URL", PUBLIC)
        .adjust(|state| {
            // Retries a few milliseconds apart instead of seconds.
            state.mailer = Mailer::from_config(&state.config)
                .unwrap()
                .map(|m| Arc::new(m.with_retry_base(Duration::from_millis(100))));
        })
}

async fn forgot(app: &TestApp, address: &str) -> reqwest::Response {
    app.post_json("/api/v1/auth/password/forgot", &json!({"email": address}))
        .await
}

async fn reset(app: &TestApp, token: &str, password: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/password/reset",
        &json!({"token": token, "new_password": password}),
    )
    .await
}

async fn confirm(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/verify-email/confirm",
        &json!({"token": token}),
    )
    .await
}

async fn request_verification(app: &TestApp, access_token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/auth/verify-email"))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap()
}

async fn profile(app: &TestApp, access_token: &str) -> Value {
    let response = app.get_authed("/api/v1/user/profile", access_token).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn db(app: &TestApp) -> rusqlite::Connection {
    rusqlite::Connection::open(app.database_path()).unwrap()
}

#[tokio::test]
async fn a_forgotten_password_is_reset_through_the_letter() {
    let smtp = FakeSmtp::start().await;
    let app = with_mail(&smtp).spawn().await;
    let address = email("forgot");
    let before = app.register(&address).await;
    let other_device = app
        .session_from(&address, app.login(&address, PASSWORD).await)
        .await;

    let response = forgot(&app, &address.to_uppercase()).await;
    assert_eq!(response.status(), 202);
    let letter = Letter::parse(&smtp.wait_for(1).await[0]);
    assert_eq!(letter.to, [format!("<{address}>")]);
    assert_eq!(letter.from, "\"Easy Writer\" <noreply@api.example>");
    assert_eq!(letter.subject, "Восстановление пароля");
    assert!(
        letter
            .part("text/plain; charset=utf-8")
            .contains("Здравствуйте!")
    );
    assert!(letter.part("text/html; charset=utf-8").contains("<a href="));
    let token = letter.token("/auth/reset");

    expect_error(reset(&app, &token, "short").await, 422, "validation_error").await;
    let response = reset(&app, &token, NEW_PASSWORD).await;
    assert_eq!(response.status(), 204);

    expect_error(
        app.login(&address, PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    let after = app
        .session_from(&address, app.login(&address, NEW_PASSWORD).await)
        .await;
    assert_eq!(after.user_id, before.user_id);
    for session in [&before, &other_device] {
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
    }
    assert_eq!(
        profile(&app, &after.access_token).await["is_verified"],
        true
    );

    // Single use, and only for what it was made for.
    expect_error(
        reset(&app, &token, "yet another password").await,
        400,
        "invalid_token",
    )
    .await;
    expect_error(confirm(&app, &token).await, 400, "invalid_token").await;
    expect_error(
        reset(&app, "made-up", NEW_PASSWORD).await,
        400,
        "invalid_token",
    )
    .await;
    assert_eq!(app.login(&address, NEW_PASSWORD).await.status(), 200);

    // Only the hash of the token is stored.
    let stored: Vec<String> = {
        let conn = db(&app);
        let mut stmt = conn
            .prepare("select token_hash from account_tokens")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], token);
    assert_eq!(stored[0].len(), 64);
}

#[tokio::test]
async fn two_resets_racing_with_one_token_set_one_password() {
    let smtp = FakeSmtp::start().await;
    let app = with_mail(&smtp).spawn().await;
    let address = email("race");
    app.register(&address).await;
    assert_eq!(forgot(&app, &address).await.status(), 202);
    let token = Letter::parse(&smtp.wait_for(1).await[0]).token("/auth/reset");

    let (a, b) = tokio::join!(
        reset(&app, &token, "first racing password"),
        reset(&app, &token, "second racing password")
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [204, 400]);
    let winners = [
        app.login(&address, "first racing password").await.status(),
        app.login(&address, "second racing password").await.status(),
    ];
    assert_eq!(winners.iter().filter(|s| s.as_u16() == 200).count(), 1);
}

#[tokio::test]
async fn an_expired_or_replaced_reset_link_is_refused() {
    let smtp = FakeSmtp::start().await;
    let app = with_mail(&smtp).spawn().await;
    let address = email("expired");
    app.register(&address).await;

    assert_eq!(forgot(&app, &address).await.status(), 202);
    let first = Letter::parse(&smtp.wait_for(1).await[0]).token("/auth/reset");
    // An hour later (the row's expiry moved to the past).
    db(&app)
        .execute(
            "update account_tokens set expires_at = '2000-01-01T00:00:00.000000Z'",
            [],
        )
        .unwrap();
    expect_error(
        reset(&app, &first, NEW_PASSWORD).await,
        400,
        "invalid_token",
    )
    .await;

    // A second request replaces the first link; the newest one works.
    assert_eq!(forgot(&app, &address).await.status(), 202);
    assert_eq!(forgot(&app, &address).await.status(), 202);
    let letters = smtp.wait_for(3).await;
    let tokens: Vec<String> = letters[1..]
        .iter()
        .map(|r| Letter::parse(r).token("/auth/reset"))
        .collect();
    let newest: String = db(&app)
        .query_row(
            "select token_hash from account_tokens where used_at is null and expires_at > '2001'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let (live, replaced): (Vec<&String>, Vec<&String>) =
        tokens.iter().partition(|t| sha256_hex(t) == newest);
    assert_eq!((live.len(), replaced.len()), (1, 1));
    expect_error(
        reset(&app, replaced[0], NEW_PASSWORD).await,
        400,
        "invalid_token",
    )
    .await;
    assert_eq!(
        app.login(&address, PASSWORD).await.status(),
        200,
        "unchanged"
    );
    assert_eq!(reset(&app, live[0], NEW_PASSWORD).await.status(), 204);
}

fn sha256_hex(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn unknown_and_deactivated_addresses_get_the_same_answer_and_no_letter() {
    let smtp = FakeSmtp::start().await;
    let app = with_mail(&smtp).spawn().await;
    let known = email("known");
    let inactive = email("inactive");
    app.register(&known).await;
    app.register(&inactive).await;
    let address = inactive.clone();
    app.state
        .db
        .write(move |tx| easy_writer::users::store::set_active(tx, &address, false))
        .await
        .unwrap();

    let mut answers = Vec::new();
    for address in [email("nobody"), inactive.clone(), known.clone()] {
        let response = forgot(&app, &address).await;
        answers.push((response.status().as_u16(), response.text().await.unwrap()));
    }
    assert!(answers.iter().all(|a| *a == answers[2]), "{answers:?}");
    assert_eq!(answers[2].0, 202);

    smtp.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let letters = smtp.messages();
    assert_eq!(letters.len(), 1, "one letter, to the known address");
    assert_eq!(letters[0].rcpt_to, [format!("<{known}>")]);
}

#[tokio::test]
async fn an_account_without_a_password_gets_one_through_a_reset() {
    let smtp = FakeSmtp::start().await;
    let app = with_mail(&smtp).spawn().await;
    let address = email("oauth-only");
    let new = address.clone();
    app.state
        .db
        .write(move |tx| {
            easy_writer::users::store::insert_from_provider(
                tx,
                &easy_writer::users::store::NewProviderUser {
                    email: &new,
                    name: None,
                    provider: "google",
                    provider_id: "g-123",
                    is_verified: true,
                },
            )
        })
        .await
        .unwrap();
    assert_eq!(forgot(&app, &address).await.status(), 202);
    let token = Letter::parse(&smtp.wait_for(1).await[0]).token("/auth/reset");
    assert_eq!(reset(&app, &token, NEW_PASSWORD).await.status(), 204);
    assert_eq!(app.login(&address, NEW_PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn an_email_is_verified_through_the_letter() {
    let smtp = FakeSmtp::start().await;
    let app = with_mail(&smtp).spawn().await;
    let address = email("verify");
    let user = app.register(&address).await;
    assert_eq!(
        profile(&app, &user.access_token).await["is_verified"],
        false
    );

    expect_error(
        app.client
            .post(app.url("/api/v1/auth/verify-email"))
            .send()
            .await
            .unwrap(),
        401,
        "not_authenticated",
    )
    .await;
    let response = request_verification(&app, &user.access_token).await;
    assert_eq!(response.status(), 202);
    let letter = Letter::parse(&smtp.wait_for(1).await[0]);
    assert_eq!(letter.to, [format!("<{address}>")]);
    assert_eq!(letter.subject, "Подтверждение адреса почты");
    assert!(letter.part("text/plain").contains("24 часа"));
    let token = letter.token("/auth/verify");
    expect_error(
        reset(&app, &token, NEW_PASSWORD).await,
        400,
        "invalid_token",
    )
    .await;

    let response = confirm(&app, &token).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["is_verified"], true);
    assert_eq!(body["id"], user.user_id.as_str());
    assert_eq!(body["email"], address.as_str());
    assert!(body["updated_at"].is_string());
    assert_eq!(profile(&app, &user.access_token).await["is_verified"], true);

    expect_error(confirm(&app, &token).await, 400, "invalid_token").await;
    expect_error(
        request_verification(&app, &user.access_token).await,
        409,
        "already_verified",
    )
    .await;
    // Verification ends no session and keeps the password.
    assert_eq!(app.login(&address, PASSWORD).await.status(), 200);
    assert_eq!(
        app.post_with_cookie("/api/v1/auth/refresh", Some(&user.refresh_cookie))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn an_expired_verification_link_is_refused() {
    let smtp = FakeSmtp::start().await;
    let app = with_mail(&smtp).spawn().await;
    let user = app.register(&email("verify-late")).await;
    assert_eq!(
        request_verification(&app, &user.access_token)
            .await
            .status(),
        202
    );
    let token = Letter::parse(&smtp.wait_for(1).await[0]).token("/auth/verify");
    db(&app)
        .execute(
            "update account_tokens set expires_at = '2000-01-01T00:00:00.000000Z'",
            [],
        )
        .unwrap();
    expect_error(confirm(&app, &token).await, 400, "invalid_token").await;
    assert_eq!(
        profile(&app, &user.access_token).await["is_verified"],
        false
    );
}

#[tokio::test]
async fn without_smtp_mail_requests_answer_503() {
    let app = builder().spawn().await;
    let user = app.register(&email("no-mail")).await;
    expect_error(forgot(&app, &user.email).await, 503, "mail_not_configured").await;
    expect_error(
        request_verification(&app, &user.access_token).await,
        503,
        "mail_not_configured",
    )
    .await;
    expect_error(
        reset(&app, "whatever", NEW_PASSWORD).await,
        400,
        "invalid_token",
    )
    .await;
    expect_error(confirm(&app, "whatever").await, 400, "invalid_token").await;
}

#[tokio::test]
async fn mail_requests_are_throttled_per_address_and_per_ip() {
    let smtp = FakeSmtp::start().await;
    let app = with_mail(&smtp).spawn().await;
    // Counted for addresses without an account too.
    let target = email("flooded");
    for _ in 0..5 {
        assert_eq!(forgot(&app, &target).await.status(), 202);
    }
    let response = forgot(&app, &target.to_uppercase()).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 3000 && retry_after <= 3600, "{retry_after}");
    expect_error(response, 429, "too_many_attempts").await;

    // Per IP: 20 an hour, whatever the addresses (6 counted above).
    for i in 0..14 {
        assert_eq!(
            forgot(&app, &email(&format!("spray-{i}"))).await.status(),
            202
        );
    }
    expect_error(
        forgot(&app, &email("spray-last")).await,
        429,
        "too_many_attempts",
    )
    .await;
    // A signed-in user asking for a verification letter counts on the same throttle.
    let user = app.register(&email("late")).await;
    expect_error(
        request_verification(&app, &user.access_token).await,
        429,
        "too_many_attempts",
    )
    .await;

    // Over-long emails are refused before anything is keyed.
    let huge = format!("{}@example.com", "a".repeat(300));
    expect_error(forgot(&app, &huge).await, 422, "validation_error").await;
    assert!(smtp.messages().is_empty());
}

#[tokio::test]
async fn a_letter_waits_for_an_smtp_server_that_is_down_and_busy() {
    // Nothing listens there yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = builder()
        .env("SMTP_URL", format!("smtp://{addr}?tls=none"))
        .env("FRONTEND_URL", FRONTEND)
        .adjust(|state| {
            state.mailer = Mailer::from_config(&state.config)
                .unwrap()
                .map(|m| Arc::new(m.with_retry_base(Duration::from_millis(300))));
        })
        .spawn()
        .await;
    let address = email("down");
    app.register(&address).await;

    let began = Instant::now();
    assert_eq!(forgot(&app, &address).await.status(), 202);
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "not on the request path"
    );
    // Up now, but busy once (421): the letter arrives on a later attempt.
    let smtp = FakeSmtp::start_on(addr, 1).await;
    let letter = Letter::parse(&smtp.wait_for(1).await[0]);
    letter.token("/auth/reset");
    assert_eq!(smtp.log.connections.load(Ordering::SeqCst), 2);
    assert_eq!(
        app.client
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_permanent_refusal_is_not_retried() {
    let smtp = FakeSmtp::start().await;
    smtp.log.reject_rcpt.store(true, Ordering::SeqCst);
    let app = with_mail(&smtp).spawn().await;
    let user = app.register(&email("refused")).await;
    assert_eq!(
        request_verification(&app, &user.access_token)
            .await
            .status(),
        202
    );
    smtp.wait_for_connections(1).await;
    // Retries would come 100 ms, 400 ms and 1.6 s later.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(smtp.log.connections.load(Ordering::SeqCst), 1);
    assert!(smtp.messages().is_empty());
}

/// `smtp://` without `?tls=none` demands STARTTLS: a server that does not offer it gets no
/// credentials and no letter.
#[tokio::test]
async fn starttls_is_required_unless_the_url_says_tls_none() {
    let smtp = FakeSmtp::start().await;
    let app = builder()
        .env("SMTP_URL", format!("smtp://user:never-sent@{}", smtp.addr))
        .adjust(|state| {
            state.mailer = Mailer::from_config(&state.config)
                .unwrap()
                .map(|m| Arc::new(m.with_retry_base(Duration::from_millis(50))));
        })
        .spawn()
        .await;
    let address = email("starttls");
    app.register(&address).await;
    assert_eq!(forgot(&app, &address).await.status(), 202);
    smtp.wait_for_connections(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let commands = smtp.commands();
    assert!(
        commands
            .iter()
            .all(|c| c.starts_with("EHLO") || c == "QUIT"),
        "{commands:?}"
    );
    assert!(smtp.messages().is_empty());
}

#[tokio::test]
async fn the_routes_are_in_the_openapi_document() {
    let app = builder().spawn().await;
    let doc: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, codes) in [
        (
            "/api/v1/auth/password/forgot",
            &["202", "422", "429", "503"][..],
        ),
        ("/api/v1/auth/password/reset", &["204", "400", "422"][..]),
        (
            "/api/v1/auth/verify-email",
            &["202", "401", "409", "429", "503"][..],
        ),
        (
            "/api/v1/auth/verify-email/confirm",
            &["200", "400", "422"][..],
        ),
    ] {
        let responses = &doc["paths"][path]["post"]["responses"];
        for code in codes {
            assert!(responses[code].is_object(), "{path} {code}: {responses}");
        }
    }
}

/// The real binary at `debug` level: the letters go out, and neither their tokens, their
/// links nor the SMTP password reach the log.
#[tokio::test]
async fn tokens_links_and_the_smtp_password_stay_out_of_the_logs() {
    let smtp = FakeSmtp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let log_path = dir.path().join("stderr.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let smtp_password = "smtp-password-n0t-for-logs";
    let mut child = crate::helpers::binary()
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("EASY_WRITER_DATA_DIR", dir.path())
        .env("EASY_WRITER_CONFIG", &config)
        .env("RUST_LOG", "debug")
        .env("FRONTEND_URL", FRONTEND)
        .env(
            "SMTP_URL",
            format!("smtp://mailer:{smtp_password}@{}?tls=none", smtp.addr),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let began = Instant::now();
    while client
        .get(url("/health"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(began.elapsed() < Duration::from_secs(20), "no /health");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let post = |path: &str, body: Value| client.post(url(path)).json(&body).send();

    let address = email("logs");
    let registered: Value = post(
        "/api/v1/auth/register",
        json!({"email": address, "password": PASSWORD}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let access = registered["access_token"].as_str().unwrap().to_owned();
    let response = post("/api/v1/auth/password/forgot", json!({"email": address}))
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let reset_token = Letter::parse(&smtp.wait_for(1).await[0]).token("/auth/reset");
    let response = post(
        "/api/v1/auth/password/reset",
        json!({"token": reset_token, "new_password": NEW_PASSWORD}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    let login: Value = post(
        "/api/v1/auth/login",
        json!({"email": address, "password": NEW_PASSWORD}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_ne!(login["access_token"].as_str(), Some(access.as_str()));
    // Already verified by the reset: ask for nothing more than the answer.
    let response = client
        .post(url("/api/v1/auth/verify-email"))
        .bearer_auth(login["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);

    // The URL's credentials were used (AUTH PLAIN, base64 of "\0user\0password").
    let auth = smtp
        .commands()
        .into_iter()
        .find(|c| c.starts_with("AUTH PLAIN"))
        .expect("AUTH PLAIN");
    let plain = base64::engine::general_purpose::STANDARD
        .decode(auth.trim_start_matches("AUTH PLAIN ").trim())
        .unwrap();
    assert_eq!(plain, format!("\0mailer\0{smtp_password}").into_bytes());

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.contains("password reset requested"), "{logs}");
    assert!(logs.contains("letter sent"), "{logs}");
    assert!(
        logs.contains("password reset; every session revoked"),
        "{logs}"
    );
    for secret in [
        reset_token.as_str(),
        smtp_password,
        "/auth/reset?token",
        address.as_str(),
    ] {
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the logs:\n{logs}"
        );
    }
}
