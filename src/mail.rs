//! Letters to users — a password reset link, an email verification link — in Russian, plain
//! text and HTML, sent over SMTP (lettre with rustls) off the request path.
//!
//! A handler hands a [`Letter`] to [`Mailer::send`] and answers at once; a task delivers it,
//! retrying transient failures with back-off. A letter's token and link exist only in its
//! body: nothing here logs them, nor the recipient's address or the SMTP password (failures
//! are logged with the user's id and the reason). Building a `Mailer` touches no network.
//! Letters live in memory only: one still waiting when the server stops is lost, and the user
//! asks again.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use lettre::address::{Address, Envelope};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::Semaphore;

use crate::config::Config;

/// Delivery attempts per letter: the first and three retries.
const ATTEMPTS: u32 = 4;
/// The first wait before a retry; each next one is four times longer (2 s, 8 s, 32 s).
const RETRY_BASE: Duration = Duration::from_secs(2);
/// How long one SMTP command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// SMTP connections open at once.
const CONNECTIONS: usize = 4;
/// Letters waiting or in delivery; past this a new one is dropped (and logged), so a flood of
/// requests cannot pile up tasks. The throttles keep honest use far below it.
const QUEUE: usize = 512;

/// What a letter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A link to `FRONTEND_URL/auth/reset?token=…`.
    Reset,
    /// A link to `FRONTEND_URL/auth/verify?token=…`.
    Verify,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Reset => "reset",
            Kind::Verify => "verify",
        }
    }
}

/// One letter to send.
pub struct Letter {
    pub kind: Kind,
    /// The recipient's address.
    pub to: String,
    /// For the logs, which never carry the address.
    pub user_id: String,
    /// The single-use token the link carries.
    pub token: String,
}

impl std::fmt::Debug for Letter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Letter")
            .field("kind", &self.kind)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// Sends letters through the configured SMTP server.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `FRONTEND_URL` without a trailing slash.
    frontend: String,
    /// The domain of `Message-ID`s: this server's public host.
    host: String,
    retry_base: Duration,
    queue: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

/// How `SMTP_URL` asks for the connection to be secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// `smtp://`: plain connection upgraded with STARTTLS, which the server must offer.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
    /// `smtp://…?tls=none`: no encryption, for a relay on the same machine or network.
    None,
}

/// `SMTP_URL`, taken apart.
#[derive(Debug, PartialEq, Eq)]
struct Server {
    host: String,
    port: u16,
    security: Security,
    /// User name and password, percent-decoded.
    credentials: Option<(String, String)>,
}

/// Parses `SMTP_URL`. Errors never repeat the URL: it carries the password.
fn parse_url(text: &str) -> anyhow::Result<Server> {
    let url = reqwest::Url::parse(text.trim()).map_err(|_| anyhow!("not a URL"))?;
    let tls = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let (security, default_port) = match (url.scheme(), tls.as_deref()) {
        ("smtp", None | Some("required" | "starttls")) => (Security::StartTls, 587),
        ("smtp", Some("none")) => (Security::None, 25),
        ("smtps", None | Some("wrapper" | "implicit")) => (Security::Implicit, 465),
        ("smtp" | "smtps", Some(other)) => {
            bail!("unknown tls={other:?} (none for a local relay; leave it out otherwise)")
        }
        (scheme, _) => bail!("scheme {scheme:?} is not smtp or smtps"),
    };
    // An IPv6 host comes bracketed; the connection wants the bare address.
    let host = match url.host_str().map(|h| h.trim_matches(['[', ']'])) {
        Some(host) if !host.is_empty() => host.to_owned(),
        _ => bail!("no host"),
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| anyhow!("the user or password is not UTF-8 once percent-decoded"))
    };
    let credentials = if url.username().is_empty() {
        None
    } else {
        Some((
            decode(url.username())?,
            decode(url.password().unwrap_or(""))?,
        ))
    };
    Ok(Server {
        host,
        port: url.port().unwrap_or(default_port),
        security,
        credentials,
    })
}

/// The host part of the public URL (`localhost` if it has none).
fn public_host(config: &Config) -> String {
    reqwest::Url::parse(&config.server.public_url())
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Mailer {
    /// The mailer `SMTP_URL` describes, or `None` when it is unset. A malformed URL or sender
    /// is an error naming the setting (but not its value).
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Mailer>> {
        let Some(url) = &config.smtp.url else {
            return Ok(None);
        };
        let server = parse_url(url.expose()).context("SMTP_URL ([smtp] url)")?;
        let host = public_host(config);
        let from = match &config.smtp.mail_from {
            Some(text) => text.trim().parse::<Mailbox>().map_err(|e| {
                anyhow!("EASY_WRITER_MAIL_FROM ([smtp] mail_from) is not a mailbox: {e}")
            })?,
            None => Mailbox::new(
                Some("Easy Writer".into()),
                Address::new("noreply", &host)
                    .or_else(|_| Address::new("noreply", "localhost"))
                    .context("default sender")?,
            ),
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server.host.as_str())
                .port(server.port)
                .timeout(Some(COMMAND_TIMEOUT));
        let tls = || TlsParameters::new(server.host.clone()).context("SMTP_URL: cannot set up TLS");
        builder = match server.security {
            Security::StartTls => builder.tls(Tls::Required(tls()?)),
            Security::Implicit => builder.tls(Tls::Wrapper(tls()?)),
            Security::None => builder.tls(Tls::None),
        };
        if let Some((user, password)) = server.credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        if host.parse::<std::net::IpAddr>().is_err() {
            builder = builder.hello_name(ClientId::Domain(host.clone()));
        }
        Ok(Some(Mailer {
            transport: builder.build(),
            from,
            frontend: config.server.frontend_origin().to_owned(),
            host,
            retry_base: RETRY_BASE,
            queue: Arc::new(Semaphore::new(QUEUE)),
            connections: Arc::new(Semaphore::new(CONNECTIONS)),
        }))
    }

    /// The same mailer with another first retry wait (tests make it short).
    pub fn with_retry_base(mut self, base: Duration) -> Mailer {
        self.retry_base = base;
        self
    }

    /// Queues `letter` and returns at once; a task delivers it. Must be called on the runtime.
    pub fn send(self: &Arc<Self>, letter: Letter) {
        let Ok(slot) = Arc::clone(&self.queue).try_acquire_owned() else {
            tracing::warn!(user.id = %letter.user_id, mail.kind = letter.kind.as_str(),
                "too many letters waiting; this one is dropped");
            return;
        };
        let mailer = Arc::clone(self);
        tokio::spawn(async move {
            let _slot = slot;
            mailer.deliver(letter).await;
        });
    }

    async fn deliver(&self, letter: Letter) {
        let kind = letter.kind.as_str();
        let message = match self.compose(&letter) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(user.id = %letter.user_id, mail.kind = kind, error = %e,
                    "cannot write the letter");
                return;
            }
        };
        let raw = message.formatted();
        let envelope: Envelope = message.envelope().clone();
        drop(message);
        let mut wait = self.retry_base;
        for attempt in 1..=ATTEMPTS {
            let result = {
                let _connection = self.connections.acquire().await;
                self.transport.send_raw(&envelope, &raw).await
            };
            match result {
                Ok(_) => {
                    tracing::info!(user.id = %letter.user_id, mail.kind = kind, attempt, "letter sent");
                    return;
                }
                Err(e) if e.is_permanent() || attempt == ATTEMPTS => {
                    tracing::warn!(user.id = %letter.user_id, mail.kind = kind, attempt,
                        error = %e, "letter not sent");
                    return;
                }
                Err(e) => {
                    tracing::info!(user.id = %letter.user_id, mail.kind = kind, attempt,
                        error = %e, retry_in_ms = wait.as_millis() as u64, "letter not sent yet");
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(4);
                }
            }
        }
    }

    /// The letter as a MIME message: Russian text, `multipart/alternative` plain and HTML.
    fn compose(&self, letter: &Letter) -> anyhow::Result<Message> {
        let to: Address = letter
            .to
            .trim()
            .parse()
            .map_err(|e| anyhow!("the recipient's address: {e}"))?;
        let (path, content) = match letter.kind {
            Kind::Reset => ("/auth/reset", &RESET),
            Kind::Verify => ("/auth/verify", &VERIFY),
        };
        let link = format!("{}{path}?token={}", self.frontend, letter.token);
        Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(content.subject)
            .message_id(Some(format!("<{}@{}>", uuid::Uuid::now_v7(), self.host)))
            .multipart(MultiPart::alternative_plain_html(
                content.text(&link),
                content.html(&link),
            ))
            .context("building the message")
    }
}

/// The words of one kind of letter; the link goes between `before` and `after`.
struct Content {
    subject: &'static str,
    before: &'static str,
    /// The link's text in the HTML part.
    action: &'static str,
    after: &'static str,
}

impl Content {
    fn text(&self, link: &str) -> String {
        format!(
            "Здравствуйте!\n\n{}\n\n{link}\n\n{}\n\n— Easy Writer\n",
            self.before, self.after
        )
    }

    fn html(&self, link: &str) -> String {
        let link = escape_html(link);
        format!(
            "<!DOCTYPE html>\n<html lang=\"ru\"><head><meta charset=\"utf-8\"><title>{subject}</title></head>\n\
             <body style=\"font-family: sans-serif; line-height: 1.5\">\n\
             <p>Здравствуйте!</p>\n<p>{before}</p>\n\
             <p><a href=\"{link}\">{action}</a></p>\n\
             <p style=\"color: #666\">Если ссылка не открывается, скопируйте её в адресную строку \
             браузера:<br>{link}</p>\n\
             <p>{after}</p>\n<p>— Easy Writer</p>\n</body></html>\n",
            subject = escape_html(self.subject),
            before = escape_html(self.before),
            action = escape_html(self.action),
            after = escape_html(self.after),
        )
    }
}

const RESET: Content = Content {
    subject: "Восстановление пароля",
    before: "Кто-то (возможно, вы) попросил восстановить пароль от аккаунта Easy Writer с этим \
             адресом. Чтобы задать новый пароль, откройте ссылку — она действует один час и \
             только один раз:",
    action: "Задать новый пароль",
    after: "Если вы не просили восстановить пароль, просто не обращайте внимания на это \
            письмо: пароль останется прежним.",
};

const VERIFY: Content = Content {
    subject: "Подтверждение адреса почты",
    before: "Чтобы подтвердить, что этот адрес принадлежит вам, откройте ссылку — она \
             действует 24 часа:",
    action: "Подтвердить адрес",
    after: "Если вы не регистрировались в Easy Writer, просто не обращайте внимания на это \
            письмо.",
};

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(host: &str, port: u16, security: Security, creds: Option<(&str, &str)>) -> Server {
        Server {
            host: host.into(),
            port,
            security,
            credentials: creds.map(|(u, p)| (u.into(), p.into())),
        }
    }

    #[test]
    fn smtp_urls_of_the_contract() {
        assert_eq!(
            parse_url("smtp://user:pa%40ss@mail.example:587").unwrap(),
            server(
                "mail.example",
                587,
                Security::StartTls,
                Some(("user", "pa@ss"))
            )
        );
        assert_eq!(
            parse_url("smtp://mail.example").unwrap(),
            server("mail.example", 587, Security::StartTls, None)
        );
        assert_eq!(
            parse_url("smtps://u%2Bx:p@mail.example").unwrap(),
            server("mail.example", 465, Security::Implicit, Some(("u+x", "p")))
        );
        assert_eq!(
            parse_url("smtp://127.0.0.1:2525?tls=none").unwrap(),
            server("127.0.0.1", 2525, Security::None, None)
        );
        assert_eq!(
            parse_url("smtp://relay?tls=none").unwrap(),
            server("relay", 25, Security::None, None)
        );
        assert_eq!(parse_url("smtp://[::1]:25?tls=none").unwrap().host, "::1");
    }

    #[test]
    fn bad_smtp_urls_are_refused_without_repeating_them() {
        for bad in [
            "mail.example:587",
            "http://user:hunter2@mail.example",
            "smtp://user:hunter2@mail.example?tls=maybe",
            "smtps://user:hunter2@mail.example?tls=none",
            "smtp://user:hunter2@:25",
            "",
        ] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
    }

    fn config(env: &[(&str, &str)]) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "").unwrap();
        let env: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let flags = crate::config::Flags {
            config: Some(file),
            bind: None,
        };
        Config::load(&flags, &env).unwrap().config
    }

    #[test]
    fn no_url_no_mailer_and_the_sender_defaults_to_the_public_host() {
        assert!(Mailer::from_config(&config(&[])).unwrap().is_none());
        let mailer = Mailer::from_config(&config(&[
            ("SMTP_URL", "smtp://user:secret@mail.example:587"),
            ("EASY_WRITER_PUBLIC_URL", "https://api.example.ru/"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            mailer.from.to_string(),
            "Easy Writer <noreply@api.example.ru>"
        );
        let mailer = Mailer::from_config(&config(&[
            ("SMTP_URL", "smtp://127.0.0.1?tls=none"),
            ("EASY_WRITER_MAIL_FROM", "Сервис <robot@example.ru>"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(mailer.from.email.to_string(), "robot@example.ru");
        let e = Mailer::from_config(&config(&[
            ("SMTP_URL", "smtp://u:hunter2@host?tls=none"),
            ("EASY_WRITER_MAIL_FROM", "not a mailbox"),
        ]))
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("EASY_WRITER_MAIL_FROM"));
        let e = Mailer::from_config(&config(&[("SMTP_URL", "ftp://u:hunter2@host")]))
            .err()
            .unwrap();
        let e = format!("{e:#}");
        assert!(e.contains("SMTP_URL") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn letters_carry_the_link_in_both_parts() {
        let mailer = Mailer::from_config(&config(&[
            ("SMTP_URL", "smtp://127.0.0.1?tls=none"),
            ("FRONTEND_URL", "https://app.example/"),
        ]))
        .unwrap()
        .unwrap();
        let letter = Letter {
            kind: Kind::Reset,
            to: "a@example.com".into(),
            user_id: "u".into(),
            token: "TOKEN_abc-123".into(),
        };
        assert!(!format!("{letter:?}").contains("TOKEN"));
        let message = mailer.compose(&letter).unwrap();
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("text/plain; charset=utf-8"), "{raw}");
        assert!(raw.contains("text/html; charset=utf-8"), "{raw}");
        let text = RESET.text("https://app.example/auth/reset?token=TOKEN_abc-123");
        assert!(text.contains("Здравствуйте"));
        let html = RESET.html("https://x.example/?a=1&b=<2>");
        assert!(html.contains("href=\"https://x.example/?a=1&amp;b=&lt;2&gt;\""));
    }
}
