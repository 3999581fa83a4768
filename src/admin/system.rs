//! The operator's pages about the service itself: `/admin/providers` (what is configured,
//! calls since start, and the checks of `easy-writer providers check`), `/admin/settings`
//! (the effective configuration, secrets masked) and `POST /admin/backup` (a consistent copy
//! of the database, downloaded).

use std::path::{Path, PathBuf};

use axum::Form;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use minijinja::Value;
use serde::Serialize;
use serde_json::Value as Json;

use super::{Admin, audit, context, view};
use crate::app::AppState;
use crate::config::{Config, SETTINGS};
use crate::payments::Slug;
use crate::{db, images, llm};

/// What stands in for a secret's value.
const MASK: &str = "********";

// --- providers ---------------------------------------------------------------------------

#[derive(Serialize)]
struct ProviderRow {
    name: &'static str,
    /// Credentials set in the configuration.
    configured: bool,
    /// Its client is in use (text: in the router; image: in the image providers).
    active: bool,
    /// Place in the fallback order, from 1.
    order: Option<usize>,
    /// Consecutive failures now (text providers).
    failures: u32,
    /// Seconds left out of rotation, when its breaker is open.
    out_for_secs: Option<u64>,
    requests: u64,
    errors: u64,
    mean_ms: u64,
}

#[derive(Serialize)]
struct ServiceRow {
    name: &'static str,
    slug: &'static str,
    configured: bool,
    note: Option<String>,
}

/// The result of one provider's check.
#[derive(Serialize)]
struct Checked {
    kind: &'static str,
    provider: String,
    error: Option<String>,
}

fn provider_rows(state: &AppState) -> (Vec<ProviderRow>, Vec<ProviderRow>) {
    let configured: std::collections::HashMap<_, _> =
        state.config.configured_services().into_iter().collect();
    let totals = state.llm.metrics().totals();
    let total = |kind: &str, name: &str| {
        totals
            .iter()
            .find(|t| t.kind == kind && t.provider == name)
            .map_or((0, 0, 0), |t| (t.requests, t.errors, t.mean_ms))
    };
    let order = state.llm.configured();
    let text = llm::ProviderId::ALL
        .into_iter()
        .map(|id| {
            let (requests, errors, mean_ms) = total("text", id.as_str());
            let (failures, out_for) = state.llm.breaker(id).unwrap_or((0, None));
            ProviderRow {
                failures,
                out_for_secs: out_for.map(|d| d.as_secs().max(1)),
                name: id.as_str(),
                configured: configured.get(id.as_str()).copied().unwrap_or(false),
                active: state.llm.provider(id).is_some(),
                order: order.iter().position(|p| *p == id).map(|i| i + 1),
                requests,
                errors,
                mean_ms,
            }
        })
        .collect();
    let in_use = state.images.configured();
    let image = images::ProviderId::ALL
        .into_iter()
        .map(|id| {
            let (requests, errors, mean_ms) = total("image", id.as_str());
            let position = in_use.iter().position(|p| *p == id);
            ProviderRow {
                failures: 0,
                out_for_secs: None,
                name: id.as_str(),
                configured: configured.get(id.as_str()).copied().unwrap_or(false)
                    || position.is_some(),
                active: position.is_some(),
                order: position.map(|i| i + 1),
                requests,
                errors,
                mean_ms,
            }
        })
        .collect();
    (text, image)
}

fn service_rows(state: &AppState) -> Vec<ServiceRow> {
    let configured: std::collections::HashMap<_, _> =
        state.config.configured_services().into_iter().collect();
    let mut rows: Vec<ServiceRow> = Slug::ALL
        .into_iter()
        .map(|slug| {
            let on = state.payments.gateway(slug).is_some();
            ServiceRow {
                name: slug.name(),
                slug: slug.as_str(),
                configured: on,
                note: on.then(|| format!("вебхук: {}", state.payments.webhook_url(slug))),
            }
        })
        .collect();
    rows.push(ServiceRow {
        name: "Почта (SMTP)",
        slug: "smtp",
        configured: state.mailer.is_some(),
        note: None,
    });
    for (name, slug) in [
        ("Вход через Google", "google"),
        ("Вход через Яндекс", "yandex"),
    ] {
        rows.push(ServiceRow {
            name,
            slug,
            configured: configured.get(slug).copied().unwrap_or(false),
            note: None,
        });
    }
    rows.push(ServiceRow {
        name: "Внешний апскейлер",
        slug: "upscale",
        configured: state.config.upscale.api_url.is_some(),
        note: Some("без него — встроенный Lanczos3".into()),
    });
    rows
}

fn providers_page(state: &AppState, admin: &Admin, checked: Option<Vec<Checked>>) -> Response {
    let (text, image) = provider_rows(state);
    let services = service_rows(state);
    view::page(
        "providers.html",
        context(
            admin,
            "providers",
            vec![
                ("text", Value::from_serialize(&text)),
                ("image", Value::from_serialize(&image)),
                ("services", Value::from_serialize(&services)),
                ("checked", Value::from_serialize(&checked)),
                (
                    "breaker_failures",
                    Value::from(state.config.llm.breaker_failures),
                ),
                (
                    "breaker_cooldown_secs",
                    Value::from(state.config.llm.breaker_cooldown_secs),
                ),
            ],
        ),
    )
}

pub async fn providers(State(state): State<AppState>, admin: Admin) -> Response {
    providers_page(&state, &admin, None)
}

/// One cheap real call to every configured provider, as `easy-writer providers check` makes:
/// the running clients where there are (a client that could not be built reports why).
async fn run_checks(state: &AppState) -> Vec<Checked> {
    let text = llm::providers_from_config(&state.config)
        .into_iter()
        .map(|(id, built)| {
            let live = state.llm.provider(id).cloned();
            async move {
                let result = match (live, built) {
                    (_, Err(e)) => Err(e),
                    (Some(client), Ok(_)) | (None, Ok(client)) => client.check().await,
                };
                let error = result.err().map(|e| {
                    let hint = if id == llm::ProviderId::GigaChat
                        && e.to_string().to_lowercase().contains("certificate")
                    {
                        " (установите корневой сертификат Минцифры: README, раздел «GigaChat»)"
                    } else {
                        ""
                    };
                    format!("{e}{hint}")
                });
                Checked {
                    kind: "text",
                    provider: id.as_str().to_owned(),
                    error,
                }
            }
        });
    let (mut checked, pictures) =
        tokio::join!(futures_util::future::join_all(text), state.images.check());
    checked.extend(pictures.into_iter().map(|(id, result)| Checked {
        kind: "image",
        provider: id.as_str().to_owned(),
        error: result.err(),
    }));
    checked
}

pub async fn check_providers(
    State(state): State<AppState>,
    admin: Admin,
    Form(form): Form<view::CsrfForm>,
) -> Response {
    if !admin.csrf_ok(&form.csrf) {
        return view::stale_form();
    }
    let checked = run_checks(&state).await;
    let summary = if checked.is_empty() {
        "no provider is configured".to_owned()
    } else {
        checked
            .iter()
            .map(|c| {
                format!(
                    "{}: {}",
                    c.provider,
                    if c.error.is_none() { "ok" } else { "error" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let who = admin.clone();
    let recorded = state
        .db
        .write(move |tx| audit::record(tx, &who, "providers_check", None, Some(&summary)))
        .await;
    if let Err(e) = recorded {
        tracing::error!(error = %e, "admin providers check audit");
        return view::failed("Не удалось записать проверку в журнал");
    }
    providers_page(&state, &admin, Some(checked))
}

// --- settings ----------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct Section {
    name: String,
    rows: Vec<SettingRow>,
}

#[derive(Debug, Serialize)]
struct SettingRow {
    key: String,
    /// The environment variable that sets it.
    env: Option<&'static str>,
    /// None: not set.
    value: Option<String>,
}

/// Keys whose values are secrets whatever their type says.
fn secret_key(section: &str, key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    (section == "smtp" && key == "url")
        || key == "proxy_url"
        || key.ends_with("_token")
        || ["secret", "password", "api_key"]
            .iter()
            .any(|s| key.contains(s))
}

/// `scheme://user:password@host/…` with the password masked (`scheme://user:********@host/…`);
/// anything else as is.
fn mask_url_password(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return text.to_owned();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:{MASK}"),
        None => userinfo.to_owned(),
    };
    format!("{scheme}://{user}@{host}{tail}")
}

fn shown(value: &Json) -> Option<String> {
    match value {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        Json::Array(items) => Some(
            items
                .iter()
                .map(|v| shown(v).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        other => Some(other.to_string()),
    }
}

/// The effective configuration as sections of keys and shown values: `Secret`s serialize
/// masked already; secret-named keys and passwords inside URLs are masked again here, so a
/// setting added later as a plain string cannot leak either.
fn settings_of(config: &Config) -> Vec<Section> {
    let Ok(Json::Object(sections)) = serde_json::to_value(config) else {
        return Vec::new();
    };
    let mut sections = sections
        .into_iter()
        .map(|(name, keys)| {
            let rows = match keys {
                Json::Object(keys) => keys
                    .into_iter()
                    .map(|(key, value)| {
                        let env = SETTINGS
                            .iter()
                            .find(|s| s.section == name && s.key == key)
                            .map(|s| s.env);
                        let value = match (name.as_str(), key.as_str(), shown(&value)) {
                            (_, _, Some(_)) if secret_key(&name, &key) => Some(MASK.to_owned()),
                            (_, _, Some(v)) => Some(mask_url_password(&v)),
                            ("server", "database", None) => Some(format!(
                                "{} (по умолчанию)",
                                config.server.database_path().display()
                            )),
                            ("server", "public_url", None) => {
                                Some(format!("{} (по умолчанию)", config.server.public_url()))
                            }
                            ("auth", "jwt_secret", None) => Some(format!(
                                "(создан автоматически, хранится в {})",
                                config
                                    .server
                                    .data_dir
                                    .join(crate::auth::jwt::SECRET_FILE)
                                    .display()
                            )),
                            (_, _, None) => None,
                        };
                        SettingRow { key, env, value }
                    })
                    .collect(),
                other => vec![SettingRow {
                    key: String::new(),
                    env: None,
                    value: shown(&other).map(|v| mask_url_password(&v)),
                }],
            };
            Section { name, rows }
        })
        .collect::<Vec<_>>();
    in_settings_order(&mut sections);
    sections
}

/// Sections and keys in the order of [`SETTINGS`] (the file's and `config check`'s order),
/// anything not listed there after them.
fn in_settings_order(sections: &mut [Section]) {
    let place = |section: &str, key: Option<&str>| {
        SETTINGS
            .iter()
            .position(|s| s.section == section && key.is_none_or(|k| s.key == k))
            .unwrap_or(usize::MAX)
    };
    for section in sections.iter_mut() {
        let name = section.name.clone();
        section.rows.sort_by_key(|r| place(&name, Some(&r.key)));
    }
    sections.sort_by_key(|s| place(&s.name, None));
}

pub async fn settings(State(state): State<AppState>, admin: Admin) -> Response {
    let sections = settings_of(&state.config);
    let warnings = state.config.warnings();
    view::page(
        "settings.html",
        context(
            &admin,
            "settings",
            vec![
                ("sections", Value::from_serialize(&sections)),
                ("warnings", Value::from_serialize(&warnings)),
            ],
        ),
    )
}

// --- backup ------------------------------------------------------------------------------

/// A private temporary directory, removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create(parent: &Path) -> std::io::Result<TempDir> {
        let path = parent.join(format!(".admin-backup-{}", uuid::Uuid::now_v7().simple()));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove a backup's temporary directory");
        }
    }
}

/// The copy being sent: the open file, then its directory (dropped in this order, so the
/// directory goes once the file is closed — after the last chunk or an aborted download).
struct Download {
    file: std::fs::File,
    _dir: TempDir,
}

const CHUNK: usize = 1 << 20;

/// Writes the copy with `VACUUM INTO` (through SQLite: the live database file is never
/// opened with `std::fs` here, which would drop this process's locks on it when closed).
fn make_backup(data_dir: &Path, db_path: &Path, name: &str) -> anyhow::Result<(Download, u64)> {
    let dir = TempDir::create(data_dir)?;
    let path = dir.0.join(name);
    db::backup::backup(db_path, &path)?;
    let file = std::fs::File::open(&path)?;
    let size = file.metadata()?.len();
    Ok((Download { file, _dir: dir }, size))
}

fn chunks(download: Download) -> Body {
    let stream = futures_util::stream::unfold(Some(download), |state| async move {
        let mut download = state?;
        let read = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut buf = vec![0u8; CHUNK];
            let n = download.file.read(&mut buf);
            (
                download,
                n.map(|n| {
                    buf.truncate(n);
                    buf
                }),
            )
        })
        .await;
        match read {
            Ok((download, Ok(buf))) if !buf.is_empty() => {
                Some((Ok(Bytes::from(buf)), Some(download)))
            }
            Ok((_, Ok(_))) => None,
            Ok((_, Err(e))) => Some((Err(e), None)),
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    Body::from_stream(stream)
}

/// `POST /admin/backup`: a consistent copy of the database as a download. It is written into
/// a fresh private directory in the data directory and removed once sent.
pub async fn backup(
    State(state): State<AppState>,
    admin: Admin,
    Form(form): Form<view::CsrfForm>,
) -> Response {
    if !admin.csrf_ok(&form.csrf) {
        return view::stale_form();
    }
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_else(|_| "now".to_owned());
    let name = format!("easy-writer-{stamp}.db");
    let data_dir = state.config.server.data_dir.clone();
    let db_path = state.db.path().to_owned();
    let file_name = name.clone();
    let made =
        tokio::task::spawn_blocking(move || make_backup(&data_dir, &db_path, &file_name)).await;
    let (download, size) = match made {
        Ok(Ok(made)) => made,
        Ok(Err(e)) => {
            tracing::error!(error = %format!("{e:#}"), "admin backup");
            return view::failed("Не удалось сделать резервную копию");
        }
        Err(e) => {
            tracing::error!(error = %e, "admin backup task");
            return view::failed("Не удалось сделать резервную копию");
        }
    };
    let who = admin.clone();
    let recorded = state
        .db
        .write(move |tx| audit::record(tx, &who, "backup", None, Some(&format!("{size} bytes"))))
        .await;
    if let Err(e) = recorded {
        tracing::error!(error = %e, "admin backup audit");
        return view::failed("Не удалось записать копию в журнал");
    }
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CONTENT_LENGTH, HeaderValue::from(size)),
        ],
        chunks(download),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn urls_lose_only_their_password() {
        assert_eq!(
            mask_url_password("smtp://mailer:hunter2@mail.example:587?tls=1"),
            "smtp://mailer:********@mail.example:587?tls=1"
        );
        assert_eq!(
            mask_url_password("https://api.example/v1"),
            "https://api.example/v1"
        );
        assert_eq!(
            mask_url_password("http://user@proxy:3128"),
            "http://user@proxy:3128"
        );
        assert_eq!(mask_url_password("plain"), "plain");
    }

    #[test]
    fn no_secret_reaches_the_settings_page() {
        let mut config = Config::default();
        let secrets = [
            "jwt-secret-value-1",
            "smtp-password-2",
            "openai-key-3",
            "gigachat-key-4",
            "yandex-key-5",
            "fusion-key-6",
            "fusion-secret-7",
            "yookassa-secret-8",
            "robokassa-password-9",
            "cloudpayments-secret-10",
            "tbank-password-11",
            "google-secret-12",
            "proxy-password-13",
            "upscale-key-14",
            "base-url-password-15",
        ];
        config.auth.jwt_secret = Some(Secret::new(secrets[0]));
        config.smtp.url = Some(Secret::new(format!(
            "smtp://user:{}@mail.example:587",
            secrets[1]
        )));
        config.openai.api_key = Some(Secret::new(secrets[2]));
        config.gigachat.api_key = Some(Secret::new(secrets[3]));
        config.yandexgpt.api_key = Some(Secret::new(secrets[4]));
        config.yandexgpt.iam_token = Some(Secret::new(secrets[4]));
        config.fusionbrain.api_key = Some(Secret::new(secrets[5]));
        config.fusionbrain.secret_key = Some(Secret::new(secrets[6]));
        config.yookassa.secret_key = Some(Secret::new(secrets[7]));
        config.robokassa.password1 = Some(Secret::new(secrets[8]));
        config.robokassa.password2 = Some(Secret::new(secrets[8]));
        config.robokassa.test_password1 = Some(Secret::new(secrets[8]));
        config.robokassa.test_password2 = Some(Secret::new(secrets[8]));
        config.cloudpayments.api_secret = Some(Secret::new(secrets[9]));
        config.tbank.password = Some(Secret::new(secrets[10]));
        config.google.client_secret = Some(Secret::new(secrets[11]));
        config.yandex.client_secret = Some(Secret::new(secrets[11]));
        config.openai.proxy_url = Some(Secret::new(format!("http://u:{}@proxy:3128", secrets[12])));
        config.upscale.api_key = Some(Secret::new(secrets[13]));
        config.upscale.api_url = Some(format!("https://u:{}@upscale.example/x", secrets[14]));
        let sections = settings_of(&config);
        let text = format!("{sections:?}");
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} leaked");
        }
        let value = |section: &str, key: &str| {
            sections
                .iter()
                .find(|s| s.name == section)
                .and_then(|s| s.rows.iter().find(|r| r.key == key))
                .and_then(|r| r.value.clone())
        };
        assert_eq!(value("smtp", "url").as_deref(), Some(MASK));
        assert_eq!(value("auth", "jwt_secret").as_deref(), Some(MASK));
        assert_eq!(value("openai", "model").as_deref(), Some("gpt-4o"));
        assert_eq!(
            value("upscale", "api_url").as_deref(),
            Some("https://u:********@upscale.example/x")
        );
        let bind = sections
            .iter()
            .find(|s| s.name == "server")
            .and_then(|s| s.rows.iter().find(|r| r.key == "bind"))
            .expect("server.bind");
        assert_eq!(bind.env, Some("EASY_WRITER_BIND"));
        // In the file's order.
        assert_eq!(sections[0].name, "server");
        assert_eq!(sections[0].rows[0].key, "bind");
        assert_eq!(sections[1].name, "auth");
        // Unset keys are told apart from set ones; defaults are spelled out.
        assert!(value("server", "database").is_some());
        assert_eq!(value("yookassa", "shop_id"), None);
    }
}
