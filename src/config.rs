//! The configuration tree and how it is loaded.
//!
//! Sources, strongest first: command-line flag, environment variable, `easy-writer.toml`,
//! built-in default (CONTRACT §2). Each setting is listed once in [`SETTINGS`] with its env
//! name and file location; the typed [`Config`] is deserialized from the merged TOML so that
//! a typo in the file is an error naming the key. Nothing here reads the process environment
//! directly: callers pass an [`EnvSource`], so tests can run many servers in one process.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The documented reference configuration, every key commented out with its default.
pub const REFERENCE_TOML: &str = include_str!("../easy-writer.toml");

/// How a setting's environment value is turned into a TOML value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Bool,
    /// Comma-separated in the environment, an array (or a comma-separated string) in the file.
    List,
}

/// One configuration setting: its environment name and where it sits in the file.
#[derive(Debug)]
pub struct Setting {
    pub env: &'static str,
    pub section: &'static str,
    pub key: &'static str,
    pub kind: Kind,
}

macro_rules! settings {
    ($( $env:literal => $section:literal . $key:literal : $kind:ident ),* $(,)?) => {
        /// Every setting of CONTRACT §2, in the order `config check` prints them.
        pub const SETTINGS: &[Setting] = &[
            $( Setting { env: $env, section: $section, key: $key, kind: Kind::$kind } ),*
        ];
    };
}

settings! {
    "EASY_WRITER_BIND" => "server"."bind": Str,
    "EASY_WRITER_DATA_DIR" => "server"."data_dir": Str,
    "EASY_WRITER_DATABASE" => "server"."database": Str,
    "EASY_WRITER_PUBLIC_URL" => "server"."public_url": Str,
    "EASY_WRITER_TRUSTED_PROXIES" => "server"."trusted_proxies": List,
    "FRONTEND_URL" => "server"."frontend_url": Str,
    "EASY_WRITER_PROMPTS_DIR" => "server"."prompts_dir": Str,
    "EASY_WRITER_LOG_FORMAT" => "server"."log_format": Str,
    "EASY_WRITER_HEADER_TIMEOUT_SECS" => "server"."header_timeout_secs": Int,
    "JWT_SECRET" => "auth"."jwt_secret": Str,
    "EASY_WRITER_COOKIE_SECURE" => "auth"."cookie_secure": Bool,
    "EASY_WRITER_COOKIE_SAMESITE" => "auth"."cookie_samesite": Str,
    "EASY_WRITER_REFRESH_GRACE_SECS" => "auth"."refresh_grace_secs": Int,
    "EASY_WRITER_SIGNUP_BONUS" => "auth"."signup_bonus": Int,
    "EASY_WRITER_LOGIN_MAX_FAILURES" => "auth"."login_max_failures": Int,
    "EASY_WRITER_LOGIN_MAX_FAILURES_PER_IP" => "auth"."login_max_failures_per_ip": Int,
    "EASY_WRITER_REGISTER_MAX_PER_IP" => "auth"."register_max_per_ip": Int,
    "SMTP_URL" => "smtp"."url": Str,
    "EASY_WRITER_MAIL_FROM" => "smtp"."mail_from": Str,
    "EASY_WRITER_PROVIDER_ORDER" => "llm"."provider_order": List,
    "EASY_WRITER_RETRY_BASE_MS" => "llm"."retry_base_ms": Int,
    "EASY_WRITER_PROVIDER_TIMEOUT_SECS" => "llm"."provider_timeout_secs": Int,
    "EASY_WRITER_QUICK_DEADLINE_SECS" => "llm"."quick_deadline_secs": Int,
    "EASY_WRITER_BREAKER_FAILURES" => "llm"."breaker_failures": Int,
    "EASY_WRITER_BREAKER_COOLDOWN_SECS" => "llm"."breaker_cooldown_secs": Int,
    "EASY_WRITER_JOB_CONCURRENCY" => "jobs"."job_concurrency": Int,
    "EASY_WRITER_SHUTDOWN_GRACE_SECS" => "jobs"."shutdown_grace_secs": Int,
    "EASY_WRITER_WS_HEARTBEAT_SECS" => "ws"."ws_heartbeat_secs": Int,
    "EASY_WRITER_WS_IDLE_SECS" => "ws"."ws_idle_secs": Int,
    "RAITS_PER_RUB" => "payments"."raits_per_rub": Int,
    "EASY_WRITER_PAYMENT_MIN_RUB" => "payments"."payment_min_rub": Int,
    "EASY_WRITER_PAYMENT_MAX_RUB" => "payments"."payment_max_rub": Int,
    "EASY_WRITER_RECEIPTS" => "payments"."receipts": Str,
    "EASY_WRITER_RECEIPT_TAXATION" => "payments"."receipt_taxation": Str,
    "EASY_WRITER_RECEIPT_VAT" => "payments"."receipt_vat": Str,
    "EASY_WRITER_RECEIPT_ITEM_NAME" => "payments"."receipt_item_name": Str,
    "OPENAI_API_KEY" => "openai"."api_key": Str,
    "OPENAI_MODEL" => "openai"."model": Str,
    "OPENAI_PROXY_URL" => "openai"."proxy_url": Str,
    "OPENAI_BASE_URL" => "openai"."base_url": Str,
    "OPENAI_MAX_CONCURRENCY" => "openai"."max_concurrency": Int,
    "OPENAI_KOPECKS_PER_1K_TOKENS" => "openai"."kopecks_per_1k_tokens": Int,
    "GIGACHAT_API_KEY" => "gigachat"."api_key": Str,
    "GIGACHAT_SCOPE" => "gigachat"."scope": Str,
    "GIGACHAT_MODEL" => "gigachat"."model": Str,
    "GIGACHAT_MODEL_QUALITY" => "gigachat"."model_quality": Str,
    "GIGACHAT_CA_CERT" => "gigachat"."ca_cert": Str,
    "GIGACHAT_AUTH_URL" => "gigachat"."auth_url": Str,
    "GIGACHAT_BASE_URL" => "gigachat"."base_url": Str,
    "GIGACHAT_MAX_CONCURRENCY" => "gigachat"."max_concurrency": Int,
    "GIGACHAT_KOPECKS_PER_1K_TOKENS" => "gigachat"."kopecks_per_1k_tokens": Int,
    "YANDEXGPT_API_KEY" => "yandexgpt"."api_key": Str,
    "YANDEXGPT_IAM_TOKEN" => "yandexgpt"."iam_token": Str,
    "YANDEXGPT_FOLDER_ID" => "yandexgpt"."folder_id": Str,
    "YANDEXGPT_MODEL" => "yandexgpt"."model": Str,
    "YANDEXGPT_MODEL_QUALITY" => "yandexgpt"."model_quality": Str,
    "YANDEXGPT_BASE_URL" => "yandexgpt"."base_url": Str,
    "YANDEXGPT_MAX_CONCURRENCY" => "yandexgpt"."max_concurrency": Int,
    "YANDEXGPT_KOPECKS_PER_1K_TOKENS" => "yandexgpt"."kopecks_per_1k_tokens": Int,
    "FUSIONBRAIN_API_KEY" => "fusionbrain"."api_key": Str,
    "FUSIONBRAIN_SECRET_KEY" => "fusionbrain"."secret_key": Str,
    "FUSIONBRAIN_POLL_MS" => "fusionbrain"."poll_ms": Int,
    "FUSIONBRAIN_TIMEOUT_SECS" => "fusionbrain"."timeout_secs": Int,
    "FUSIONBRAIN_BASE_URL" => "fusionbrain"."base_url": Str,
    "YANDEXART_MODEL" => "yandexart"."model": Str,
    "YANDEXART_BASE_URL" => "yandexart"."base_url": Str,
    "EASY_WRITER_IMAGE_PROVIDER_ORDER" => "images"."image_provider_order": List,
    "UPSCALE_API_KEY" => "upscale"."api_key": Str,
    "UPSCALE_API_URL" => "upscale"."api_url": Str,
    "GOOGLE_CLIENT_ID" => "google"."client_id": Str,
    "GOOGLE_CLIENT_SECRET" => "google"."client_secret": Str,
    "GOOGLE_REDIRECT_URI" => "google"."redirect_uri": Str,
    "GOOGLE_AUTH_URL" => "google"."auth_url": Str,
    "GOOGLE_TOKEN_URL" => "google"."token_url": Str,
    "GOOGLE_USERINFO_URL" => "google"."userinfo_url": Str,
    "YANDEX_CLIENT_ID" => "yandex"."client_id": Str,
    "YANDEX_CLIENT_SECRET" => "yandex"."client_secret": Str,
    "YANDEX_REDIRECT_URI" => "yandex"."redirect_uri": Str,
    "YANDEX_AUTH_URL" => "yandex"."auth_url": Str,
    "YANDEX_TOKEN_URL" => "yandex"."token_url": Str,
    "YANDEX_USERINFO_URL" => "yandex"."userinfo_url": Str,
    "YOOKASSA_SHOP_ID" => "yookassa"."shop_id": Str,
    "YOOKASSA_SECRET_KEY" => "yookassa"."secret_key": Str,
    "YOOKASSA_BASE_URL" => "yookassa"."base_url": Str,
    "ROBOKASSA_MERCHANT_LOGIN" => "robokassa"."merchant_login": Str,
    "ROBOKASSA_PASSWORD1" => "robokassa"."password1": Str,
    "ROBOKASSA_PASSWORD2" => "robokassa"."password2": Str,
    "ROBOKASSA_TEST_PASSWORD1" => "robokassa"."test_password1": Str,
    "ROBOKASSA_TEST_PASSWORD2" => "robokassa"."test_password2": Str,
    "ROBOKASSA_IS_TEST" => "robokassa"."is_test": Bool,
    "ROBOKASSA_HASH" => "robokassa"."hash": Str,
    "ROBOKASSA_PAYMENT_URL" => "robokassa"."payment_url": Str,
    "CLOUDPAYMENTS_PUBLIC_ID" => "cloudpayments"."public_id": Str,
    "CLOUDPAYMENTS_API_SECRET" => "cloudpayments"."api_secret": Str,
    "CLOUDPAYMENTS_BASE_URL" => "cloudpayments"."base_url": Str,
    "TBANK_TERMINAL_KEY" => "tbank"."terminal_key": Str,
    "TBANK_PASSWORD" => "tbank"."password": Str,
    "TBANK_BASE_URL" => "tbank"."base_url": Str,
}

/// Where environment values come from: the process, or a map in tests.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// What the command line says about configuration.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `serve --bind ADDR`.
    pub bind: Option<String>,
}

/// Why the configuration could not be loaded; the message names the file, key or variable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {env}: {message}")]
    Env { env: &'static str, message: String },
    #[error("invalid setting [{section}] {key}: {message}")]
    Invalid {
        section: &'static str,
        key: &'static str,
        message: String,
    },
}

/// A secret value: never printed, logged or serialized in clear.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"********\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("********")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// The effective configuration. Section and key names are the file's (CONTRACT §2).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub auth: Auth,
    pub smtp: Smtp,
    pub llm: Llm,
    pub jobs: Jobs,
    pub ws: Ws,
    pub payments: Payments,
    pub openai: OpenAi,
    pub gigachat: GigaChat,
    pub yandexgpt: YandexGpt,
    pub fusionbrain: FusionBrain,
    pub yandexart: YandexArt,
    pub images: Images,
    pub upscale: Upscale,
    pub google: OAuthClient,
    pub yandex: OAuthClient,
    pub yookassa: YooKassa,
    pub robokassa: Robokassa,
    pub cloudpayments: CloudPayments,
    pub tbank: TBank,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub bind: String,
    pub data_dir: PathBuf,
    /// Unset: `<data_dir>/easy-writer.db`.
    #[serde(deserialize_with = "empty_as_none")]
    pub database: Option<PathBuf>,
    /// Unset: `http://<bind>`.
    #[serde(deserialize_with = "empty_as_none")]
    pub public_url: Option<String>,
    #[serde(deserialize_with = "list")]
    pub trusted_proxies: Vec<String>,
    pub frontend_url: String,
    /// Unset: the prompts built into the binary.
    #[serde(deserialize_with = "empty_as_none")]
    pub prompts_dir: Option<PathBuf>,
    pub log_format: String,
    /// Seconds a connection may take to send a whole request head.
    pub header_timeout_secs: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            bind: "127.0.0.1:8000".into(),
            data_dir: PathBuf::from("./data"),
            database: None,
            public_url: None,
            trusted_proxies: Vec::new(),
            frontend_url: "http://localhost:3000".into(),
            prompts_dir: None,
            log_format: "text".into(),
            header_timeout_secs: 30,
        }
    }
}

impl Server {
    /// The SQLite file.
    pub fn database_path(&self) -> PathBuf {
        self.database
            .clone()
            .unwrap_or_else(|| self.data_dir.join("easy-writer.db"))
    }

    /// This server's public base URL, without a trailing slash.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.bind),
        }
    }

    /// `FRONTEND_URL` without a trailing slash (the CORS origin).
    pub fn frontend_origin(&self) -> &str {
        self.frontend_url.trim_end_matches('/')
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Unset: generated once and kept in `<data_dir>/jwt_secret` (see `auth::jwt`).
    #[serde(deserialize_with = "empty_as_none")]
    pub jwt_secret: Option<Secret>,
    pub cookie_secure: bool,
    pub cookie_samesite: String,
    pub refresh_grace_secs: u64,
    pub signup_bonus: i64,
    pub login_max_failures: u32,
    pub login_max_failures_per_ip: u32,
    pub register_max_per_ip: u32,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            jwt_secret: None,
            cookie_secure: true,
            cookie_samesite: "lax".into(),
            refresh_grace_secs: 10,
            signup_bonus: 0,
            login_max_failures: 5,
            login_max_failures_per_ip: 50,
            register_max_per_ip: 20,
        }
    }
}

/// Outgoing mail (verification and password-reset letters).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// `smtp://user:pass@host:587` (STARTTLS), `smtps://…:465`, or `smtp://host:25?tls=none`
    /// for a local relay. Unset: no mail. A secret, since it carries the password.
    #[serde(deserialize_with = "empty_as_none")]
    pub url: Option<Secret>,
    /// Unset: `Easy Writer <noreply@<public host>>`.
    #[serde(deserialize_with = "empty_as_none")]
    pub mail_from: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Llm {
    #[serde(deserialize_with = "list")]
    pub provider_order: Vec<String>,
    pub retry_base_ms: u64,
    pub provider_timeout_secs: u64,
    pub quick_deadline_secs: u64,
    pub breaker_failures: u32,
    pub breaker_cooldown_secs: u64,
}

impl Default for Llm {
    fn default() -> Self {
        Llm {
            provider_order: vec!["gigachat".into(), "yandexgpt".into(), "openai".into()],
            retry_base_ms: 1000,
            provider_timeout_secs: 60,
            quick_deadline_secs: 90,
            breaker_failures: 5,
            breaker_cooldown_secs: 60,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Jobs {
    pub job_concurrency: u32,
    pub shutdown_grace_secs: u64,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            job_concurrency: 8,
            shutdown_grace_secs: 20,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ws {
    pub ws_heartbeat_secs: u64,
    pub ws_idle_secs: u64,
}

impl Default for Ws {
    fn default() -> Self {
        Ws {
            ws_heartbeat_secs: 30,
            ws_idle_secs: 300,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Payments {
    pub raits_per_rub: i64,
    pub payment_min_rub: i64,
    pub payment_max_rub: i64,
    /// `off`, or `on`: create requests carry a fiscal receipt.
    pub receipts: String,
    pub receipt_taxation: String,
    pub receipt_vat: String,
    pub receipt_item_name: String,
}

impl Default for Payments {
    fn default() -> Self {
        Payments {
            raits_per_rub: 10,
            payment_min_rub: 100,
            payment_max_rub: 100_000,
            receipts: "off".into(),
            receipt_taxation: "usn_income".into(),
            receipt_vat: "none".into(),
            receipt_item_name: "Пополнение баланса Easy Writer".into(),
        }
    }
}

impl Payments {
    /// The receipt every create request carries, or `None` with `EASY_WRITER_RECEIPTS=off`.
    /// Valid once [`Config::validate`] has passed.
    pub fn receipt(&self) -> Option<crate::payments::Receipt> {
        if self.receipts != "on" {
            return None;
        }
        Some(crate::payments::Receipt {
            taxation: crate::payments::Taxation::parse(&self.receipt_taxation)?,
            vat: crate::payments::Vat::parse(&self.receipt_vat)?,
            item_name: self.receipt_item_name.clone(),
        })
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAi {
    #[serde(deserialize_with = "empty_as_none")]
    pub api_key: Option<Secret>,
    pub model: String,
    /// May carry proxy credentials, hence secret.
    #[serde(deserialize_with = "empty_as_none")]
    pub proxy_url: Option<Secret>,
    pub base_url: String,
    pub max_concurrency: u32,
    /// The provider's price in kopecks per 1,000 tokens (input and output alike), used only
    /// by the admin's cost report; 0 = unknown.
    pub kopecks_per_1k_tokens: i64,
}

impl Default for OpenAi {
    fn default() -> Self {
        OpenAi {
            api_key: None,
            model: "gpt-4o".into(),
            proxy_url: None,
            base_url: "https://api.openai.com/v1".into(),
            max_concurrency: 16,
            kopecks_per_1k_tokens: 100,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GigaChat {
    #[serde(deserialize_with = "empty_as_none")]
    pub api_key: Option<Secret>,
    pub scope: String,
    pub model: String,
    pub model_quality: String,
    /// Unset: `<data_dir>/certificates/russian_trusted_root_ca.cer` when that file exists.
    #[serde(deserialize_with = "empty_as_none")]
    pub ca_cert: Option<PathBuf>,
    pub auth_url: String,
    pub base_url: String,
    pub max_concurrency: u32,
    /// The provider's price in kopecks per 1,000 tokens (input and output alike), used only
    /// by the admin's cost report; 0 = unknown.
    pub kopecks_per_1k_tokens: i64,
}

impl Default for GigaChat {
    fn default() -> Self {
        GigaChat {
            api_key: None,
            scope: "GIGACHAT_API_PERS".into(),
            model: "GigaChat-2".into(),
            model_quality: "GigaChat-2-Pro".into(),
            ca_cert: None,
            auth_url: "https://ngw.devices.sberbank.ru:9443/api/v2/oauth".into(),
            base_url: "https://gigachat.devices.sberbank.ru/api/v1".into(),
            max_concurrency: 1,
            kopecks_per_1k_tokens: 150,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct YandexGpt {
    #[serde(deserialize_with = "empty_as_none")]
    pub api_key: Option<Secret>,
    #[serde(deserialize_with = "empty_as_none")]
    pub iam_token: Option<Secret>,
    #[serde(deserialize_with = "empty_as_none")]
    pub folder_id: Option<String>,
    pub model: String,
    pub model_quality: String,
    pub base_url: String,
    pub max_concurrency: u32,
    /// The provider's price in kopecks per 1,000 tokens (input and output alike), used only
    /// by the admin's cost report; 0 = unknown.
    pub kopecks_per_1k_tokens: i64,
}

impl Default for YandexGpt {
    fn default() -> Self {
        YandexGpt {
            api_key: None,
            iam_token: None,
            folder_id: None,
            model: "yandexgpt-lite".into(),
            model_quality: "yandexgpt".into(),
            base_url: "https://llm.api.cloud.yandex.net/foundationModels/v1".into(),
            max_concurrency: 10,
            kopecks_per_1k_tokens: 40,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FusionBrain {
    #[serde(deserialize_with = "empty_as_none")]
    pub api_key: Option<Secret>,
    #[serde(deserialize_with = "empty_as_none")]
    pub secret_key: Option<Secret>,
    pub poll_ms: u64,
    pub timeout_secs: u64,
    pub base_url: String,
}

impl Default for FusionBrain {
    fn default() -> Self {
        FusionBrain {
            api_key: None,
            secret_key: None,
            poll_ms: 3000,
            timeout_secs: 120,
            base_url: "https://api-key.fusionbrain.ai".into(),
        }
    }
}

/// Yandex ART, the image fallback; it signs in with the YandexGPT credentials.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct YandexArt {
    pub model: String,
    pub base_url: String,
}

impl Default for YandexArt {
    fn default() -> Self {
        YandexArt {
            model: "yandex-art/latest".into(),
            base_url: "https://llm.api.cloud.yandex.net".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Images {
    /// Image providers in order of preference.
    #[serde(deserialize_with = "list")]
    pub image_provider_order: Vec<String>,
}

impl Default for Images {
    fn default() -> Self {
        Images {
            image_provider_order: vec!["kandinsky".into(), "yandexart".into()],
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upscale {
    #[serde(deserialize_with = "empty_as_none")]
    pub api_key: Option<Secret>,
    /// Unset: the built-in upscaler.
    #[serde(deserialize_with = "empty_as_none")]
    pub api_url: Option<String>,
}

/// Google and Yandex sign-in share one shape; unset URLs mean the provider's own endpoints,
/// which `auth::oauth::google` and `auth::oauth::yandex` name.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthClient {
    #[serde(deserialize_with = "empty_as_none")]
    pub client_id: Option<String>,
    #[serde(deserialize_with = "empty_as_none")]
    pub client_secret: Option<Secret>,
    /// Unset: `<public url>/api/v1/auth/<provider>/callback`.
    #[serde(deserialize_with = "empty_as_none")]
    pub redirect_uri: Option<String>,
    #[serde(deserialize_with = "empty_as_none")]
    pub auth_url: Option<String>,
    #[serde(deserialize_with = "empty_as_none")]
    pub token_url: Option<String>,
    #[serde(deserialize_with = "empty_as_none")]
    pub userinfo_url: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct YooKassa {
    #[serde(deserialize_with = "empty_as_none")]
    pub shop_id: Option<String>,
    #[serde(deserialize_with = "empty_as_none")]
    pub secret_key: Option<Secret>,
    pub base_url: String,
}

impl Default for YooKassa {
    fn default() -> Self {
        YooKassa {
            shop_id: None,
            secret_key: None,
            base_url: "https://api.yookassa.ru/v3".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Robokassa {
    #[serde(deserialize_with = "empty_as_none")]
    pub merchant_login: Option<String>,
    #[serde(deserialize_with = "empty_as_none")]
    pub password1: Option<Secret>,
    #[serde(deserialize_with = "empty_as_none")]
    pub password2: Option<Secret>,
    #[serde(deserialize_with = "empty_as_none")]
    pub test_password1: Option<Secret>,
    #[serde(deserialize_with = "empty_as_none")]
    pub test_password2: Option<Secret>,
    pub is_test: bool,
    pub hash: String,
    pub payment_url: String,
}

impl Default for Robokassa {
    fn default() -> Self {
        Robokassa {
            merchant_login: None,
            password1: None,
            password2: None,
            test_password1: None,
            test_password2: None,
            is_test: false,
            hash: "md5".into(),
            payment_url: "https://auth.robokassa.ru/Merchant/Index.aspx".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudPayments {
    #[serde(deserialize_with = "empty_as_none")]
    pub public_id: Option<String>,
    #[serde(deserialize_with = "empty_as_none")]
    pub api_secret: Option<Secret>,
    pub base_url: String,
}

impl Default for CloudPayments {
    fn default() -> Self {
        CloudPayments {
            public_id: None,
            api_secret: None,
            base_url: "https://api.cloudpayments.ru".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TBank {
    #[serde(deserialize_with = "empty_as_none")]
    pub terminal_key: Option<String>,
    #[serde(deserialize_with = "empty_as_none")]
    pub password: Option<Secret>,
    pub base_url: String,
}

impl Default for TBank {
    fn default() -> Self {
        TBank {
            terminal_key: None,
            password: None,
            base_url: "https://securepay.tinkoff.ru/v2".into(),
        }
    }
}

/// Where each setting's effective value came from, for `config check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
            Source::Flag => "flag",
        })
    }
}

/// A loaded configuration with the provenance of each value.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// Source of each setting, keyed by env name.
    pub sources: HashMap<&'static str, Source>,
}

impl Config {
    /// Loads the configuration from flags, environment, file and defaults, then validates it.
    pub fn load(flags: &Flags, env: &dyn EnvSource) -> Result<Loaded, Error> {
        let file = match (&flags.config, env.var("EASY_WRITER_CONFIG")) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(path)) if !path.is_empty() => Some(PathBuf::from(path)),
            _ => Some(PathBuf::from("easy-writer.toml")).filter(|p| p.is_file()),
        };
        let mut table = match &file {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };

        let mut sources = HashMap::new();
        for setting in SETTINGS {
            let in_file = table
                .get(setting.section)
                .and_then(|s| s.as_table())
                .is_some_and(|s| s.contains_key(setting.key));
            let source = if let Some(raw) = env.var(setting.env) {
                let value = env_value(setting, &raw)?;
                section_mut(&mut table, setting.section).insert(setting.key.into(), value);
                Source::Env
            } else if in_file {
                Source::File
            } else {
                Source::Default
            };
            sources.insert(setting.env, source);
        }
        if let Some(bind) = &flags.bind {
            section_mut(&mut table, "server").insert("bind".into(), bind.clone().into());
            sources.insert("EASY_WRITER_BIND", Source::Flag);
        }

        let config = Config::deserialize(toml::Value::Table(table)).map_err(|e| Error::File {
            path: file.clone().unwrap_or_default(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(Loaded {
            config,
            file,
            sources,
        })
    }

    fn validate(&self) -> Result<(), Error> {
        let invalid = |section, key, message: &str| Error::Invalid {
            section,
            key,
            message: message.into(),
        };
        if !matches!(
            self.auth.cookie_samesite.as_str(),
            "lax" | "strict" | "none"
        ) {
            return Err(invalid(
                "auth",
                "cookie_samesite",
                "must be lax, strict or none",
            ));
        }
        if self.auth.cookie_samesite == "none" && !self.auth.cookie_secure {
            return Err(invalid(
                "auth",
                "cookie_samesite",
                "none requires cookie_secure = true (browsers drop such cookies otherwise)",
            ));
        }
        if !matches!(self.server.log_format.as_str(), "text" | "json") {
            return Err(invalid("server", "log_format", "must be text or json"));
        }
        if self.server.bind.trim().is_empty() {
            return Err(invalid("server", "bind", "must not be empty"));
        }
        if axum::http::HeaderValue::from_str(self.server.frontend_origin()).is_err()
            || !self.server.frontend_url.starts_with("http")
        {
            return Err(invalid("server", "frontend_url", "must be an http(s) URL"));
        }
        for cidr in &self.server.trusted_proxies {
            parse_cidr(cidr).map_err(|m| invalid("server", "trusted_proxies", &m))?;
        }
        if self.auth.signup_bonus < 0 {
            return Err(invalid("auth", "signup_bonus", "must not be negative"));
        }
        if self.auth.register_max_per_ip == 0 {
            return Err(invalid("auth", "register_max_per_ip", "must be at least 1"));
        }
        if self.server.header_timeout_secs == 0 {
            return Err(invalid(
                "server",
                "header_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.auth.login_max_failures == 0 || self.auth.login_max_failures_per_ip == 0 {
            return Err(invalid("auth", "login_max_failures", "must be at least 1"));
        }
        if !matches!(
            self.robokassa.hash.as_str(),
            "md5" | "sha1" | "sha256" | "sha384" | "sha512"
        ) {
            return Err(invalid(
                "robokassa",
                "hash",
                "must be md5, sha1, sha256, sha384 or sha512 (the shop's setting)",
            ));
        }
        if !matches!(self.payments.receipts.as_str(), "on" | "off") {
            return Err(invalid("payments", "receipts", "must be on or off"));
        }
        if crate::payments::Taxation::parse(&self.payments.receipt_taxation).is_none() {
            return Err(invalid(
                "payments",
                "receipt_taxation",
                "must be osn, usn_income, usn_income_outcome, esn or patent",
            ));
        }
        if crate::payments::Vat::parse(&self.payments.receipt_vat).is_none() {
            return Err(invalid(
                "payments",
                "receipt_vat",
                "must be none, vat0, vat5, vat7, vat10, vat20, vat22, vat105, vat107, vat110, \
                 vat120 or vat122",
            ));
        }
        let item = self.payments.receipt_item_name.trim();
        if item.is_empty() || item.chars().count() > 128 {
            return Err(invalid(
                "payments",
                "receipt_item_name",
                "must be 1 to 128 characters",
            ));
        }
        if self.payments.raits_per_rub <= 0 {
            return Err(invalid("payments", "raits_per_rub", "must be positive"));
        }
        for (section, price) in [
            ("openai", self.openai.kopecks_per_1k_tokens),
            ("gigachat", self.gigachat.kopecks_per_1k_tokens),
            ("yandexgpt", self.yandexgpt.kopecks_per_1k_tokens),
        ] {
            if price < 0 {
                return Err(invalid(
                    section,
                    "kopecks_per_1k_tokens",
                    "must not be negative (0 = unknown)",
                ));
            }
        }
        for (section, client) in [("google", &self.google), ("yandex", &self.yandex)] {
            let urls = [
                ("redirect_uri", &client.redirect_uri),
                ("auth_url", &client.auth_url),
                ("token_url", &client.token_url),
                ("userinfo_url", &client.userinfo_url),
            ];
            for (key, url) in urls {
                if let Some(url) = url
                    && !reqwest::Url::parse(url)
                        .is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
                {
                    return Err(invalid(section, key, "must be an http(s) URL"));
                }
            }
        }
        for name in &self.llm.provider_order {
            if !matches!(name.as_str(), "gigachat" | "yandexgpt" | "openai") {
                return Err(invalid(
                    "llm",
                    "provider_order",
                    &format!("unknown provider {name:?} (gigachat, yandexgpt, openai)"),
                ));
            }
        }
        for name in &self.images.image_provider_order {
            if !matches!(name.as_str(), "kandinsky" | "yandexart") {
                return Err(invalid(
                    "images",
                    "image_provider_order",
                    &format!("unknown image provider {name:?} (kandinsky, yandexart)"),
                ));
            }
        }
        Ok(())
    }

    /// The trusted proxy networks, parsed.
    pub fn trusted_proxies(&self) -> Vec<ipnet::IpNet> {
        self.server
            .trusted_proxies
            .iter()
            .filter_map(|c| parse_cidr(c).ok())
            .collect()
    }

    /// Names of the external services whose credentials are set.
    pub fn configured_services(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("openai", self.openai.api_key.is_some()),
            ("gigachat", self.gigachat.api_key.is_some()),
            (
                "yandexgpt",
                (self.yandexgpt.api_key.is_some() || self.yandexgpt.iam_token.is_some())
                    && self.yandexgpt.folder_id.is_some(),
            ),
            (
                "kandinsky",
                self.fusionbrain.api_key.is_some() && self.fusionbrain.secret_key.is_some(),
            ),
            (
                "google",
                self.google.client_id.is_some() && self.google.client_secret.is_some(),
            ),
            (
                "yandex",
                self.yandex.client_id.is_some() && self.yandex.client_secret.is_some(),
            ),
            (
                "yookassa",
                self.yookassa.shop_id.is_some() && self.yookassa.secret_key.is_some(),
            ),
            (
                "robokassa",
                self.robokassa.merchant_login.is_some()
                    && if self.robokassa.is_test {
                        self.robokassa.test_password1.is_some()
                            && self.robokassa.test_password2.is_some()
                    } else {
                        self.robokassa.password1.is_some() && self.robokassa.password2.is_some()
                    },
            ),
            (
                "cloudpayments",
                self.cloudpayments.public_id.is_some() && self.cloudpayments.api_secret.is_some(),
            ),
            (
                "tbank",
                self.tbank.terminal_key.is_some() && self.tbank.password.is_some(),
            ),
            (
                "yandexart",
                (self.yandexgpt.api_key.is_some() || self.yandexgpt.iam_token.is_some())
                    && self.yandexgpt.folder_id.is_some()
                    && self
                        .images
                        .image_provider_order
                        .iter()
                        .any(|p| p == "yandexart"),
            ),
            ("smtp", self.smtp.url.is_some()),
        ]
    }

    /// Things an operator should know about before going live.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let public = self.server.public_url();
        if !public.starts_with("https://") {
            warnings.push(format!(
                "public URL {public} is not https: payment webhooks and OAuth need a public https URL"
            ));
        }
        if !self.auth.cookie_secure {
            warnings.push("cookie_secure is false: refresh cookies travel over plain http".into());
        }
        if let Some(secret) = &self.auth.jwt_secret
            && secret.expose().len() < 32
        {
            warnings.push("JWT_SECRET is shorter than 32 bytes".into());
        }
        if self.configured_services()[..3].iter().all(|(_, on)| !on) {
            warnings.push("no AI provider is configured: tools cannot generate".into());
        }
        if self.smtp.url.is_none() {
            warnings.push(
                "no SMTP_URL: password reset and email verification answer 503 mail_not_configured"
                    .into(),
            );
        }
        warnings
    }
}

/// Parses `10.0.0.0/8` or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR or IP address"))
}

fn read_file(path: &Path) -> Result<toml::Table, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    // Deserializing the file alone first gives errors with line numbers and key names.
    toml::from_str::<Config>(&text).map_err(|e| Error::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| Error::File {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn section_mut<'a>(table: &'a mut toml::Table, section: &str) -> &'a mut toml::Table {
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        *entry = toml::Value::Table(toml::Table::new());
    }
    entry.as_table_mut().expect("just made a table")
}

fn env_value(setting: &Setting, raw: &str) -> Result<toml::Value, Error> {
    let fail = |message: &str| Error::Env {
        env: setting.env,
        message: format!("{message}, got {raw:?}"),
    };
    let trimmed = raw.trim();
    Ok(match setting.kind {
        Kind::Str => toml::Value::String(raw.to_owned()),
        Kind::Int => toml::Value::Integer(
            trimmed
                .parse()
                .map_err(|_| fail("expected a whole number"))?,
        ),
        Kind::Bool => toml::Value::Boolean(match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(fail("expected true or false")),
        }),
        Kind::List => toml::Value::String(raw.to_owned()),
    })
}

fn empty_as_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = toml::Value::deserialize(d)?;
    if value.as_str().is_some_and(|s| s.trim().is_empty()) {
        return Ok(None);
    }
    T::deserialize(value)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Accepts an array of strings or one comma-separated string.
fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let items = match Raw::deserialize(d)? {
        Raw::One(s) => s.split(',').map(str::to_owned).collect(),
        Raw::Many(v) => v,
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    /// The reference file documents every setting, and its commented defaults are the real ones.
    #[test]
    fn reference_file_documents_every_setting_with_its_default() {
        let mut uncommented = String::new();
        for line in REFERENCE_TOML.lines() {
            let trimmed = line.trim_start();
            let is_setting = |rest: &str| {
                rest.split_once(" = ").is_some_and(|(key, _)| {
                    key.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                })
            };
            if let Some(rest) = trimmed.strip_prefix("# ")
                && ((rest.starts_with('[') && rest.ends_with(']')) || is_setting(rest))
            {
                uncommented.push_str(rest);
                uncommented.push('\n');
            }
        }
        let table: toml::Table = toml::from_str(&uncommented).unwrap();
        for s in SETTINGS {
            let documented = table.get(s.section).and_then(|t| t.get(s.key));
            assert!(
                documented.is_some(),
                "{} ([{}] {}) is not documented",
                s.env,
                s.section,
                s.key
            );
            assert!(
                REFERENCE_TOML.contains(s.env),
                "{} is not named in easy-writer.toml",
                s.env
            );
        }
        let parsed: Config = toml::from_str(&uncommented).unwrap();
        let default = Config::default();
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            toml::to_string(&default).unwrap(),
            "a documented default differs from the built-in one"
        );
    }

    #[test]
    fn precedence_is_flag_then_env_then_file_then_default() {
        let file = write(
            "[server]\nbind = \"127.0.0.1:1\"\nfrontend_url = \"https://f.example\"\n[llm]\nretry_base_ms = 5\n",
        );
        let flags = Flags {
            config: Some(file.path().to_owned()),
            bind: Some("127.0.0.1:3".into()),
        };
        let loaded = Config::load(
            &flags,
            &env(&[
                ("EASY_WRITER_BIND", "127.0.0.1:2"),
                ("EASY_WRITER_RETRY_BASE_MS", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.config.server.bind, "127.0.0.1:3");
        assert_eq!(loaded.sources["EASY_WRITER_BIND"], Source::Flag);
        assert_eq!(loaded.config.llm.retry_base_ms, 7);
        assert_eq!(loaded.sources["EASY_WRITER_RETRY_BASE_MS"], Source::Env);
        assert_eq!(loaded.config.server.frontend_url, "https://f.example");
        assert_eq!(loaded.sources["FRONTEND_URL"], Source::File);
        assert_eq!(loaded.config.jobs.job_concurrency, 8);
        assert_eq!(
            loaded.sources["EASY_WRITER_JOB_CONCURRENCY"],
            Source::Default
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let file = write("[server]\nbindd = \"x\"\n");
        let flags = Flags {
            config: Some(file.path().to_owned()),
            bind: None,
        };
        let err = Config::load(&flags, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("bindd"), "{err}");
        let file = write("[nope]\nx = 1\n");
        let flags = Flags {
            config: Some(file.path().to_owned()),
            bind: None,
        };
        let err = Config::load(&flags, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let err = Config::load(
            &Flags::default(),
            &env(&[("EASY_WRITER_WS_IDLE_SECS", "soon")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("EASY_WRITER_WS_IDLE_SECS"), "{err}");
        let err = Config::load(
            &Flags::default(),
            &env(&[("EASY_WRITER_COOKIE_SAMESITE", "loose")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cookie_samesite"), "{err}");
        let err = Config::load(
            &Flags::default(),
            &env(&[("YANDEX_TOKEN_URL", "oauth.yandex.ru/token")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("[yandex] token_url"), "{err}");
    }

    #[test]
    fn token_prices_default_to_estimates_and_refuse_negatives() {
        let c = Config::load(&Flags::default(), &env(&[])).unwrap().config;
        assert_eq!(
            (
                c.openai.kopecks_per_1k_tokens,
                c.gigachat.kopecks_per_1k_tokens,
                c.yandexgpt.kopecks_per_1k_tokens
            ),
            (100, 150, 40)
        );
        let loaded = Config::load(
            &Flags::default(),
            &env(&[
                ("OPENAI_KOPECKS_PER_1K_TOKENS", "250"),
                ("YANDEXGPT_KOPECKS_PER_1K_TOKENS", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.config.openai.kopecks_per_1k_tokens, 250);
        assert_eq!(loaded.config.yandexgpt.kopecks_per_1k_tokens, 0, "unknown");
        assert_eq!(loaded.sources["OPENAI_KOPECKS_PER_1K_TOKENS"], Source::Env);
        for name in [
            "OPENAI_KOPECKS_PER_1K_TOKENS",
            "GIGACHAT_KOPECKS_PER_1K_TOKENS",
            "YANDEXGPT_KOPECKS_PER_1K_TOKENS",
        ] {
            let err = Config::load(&Flags::default(), &env(&[(name, "-1")]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("kopecks_per_1k_tokens"), "{name}: {err}");
        }
        let file = write("[gigachat]\nkopecks_per_1k_tokens = -5\n");
        let flags = Flags {
            config: Some(file.path().to_owned()),
            bind: None,
        };
        let err = Config::load(&flags, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("[gigachat] kopecks_per_1k_tokens"), "{err}");
    }

    #[test]
    fn lists_and_derived_defaults() {
        let loaded = Config::load(
            &Flags::default(),
            &env(&[
                ("EASY_WRITER_PROVIDER_ORDER", "openai, gigachat"),
                ("EASY_WRITER_TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1"),
                ("EASY_WRITER_DATA_DIR", "/srv/ew"),
                ("OPENAI_API_KEY", "sk-secret"),
            ]),
        )
        .unwrap();
        let c = loaded.config;
        assert_eq!(c.llm.provider_order, ["openai", "gigachat"]);
        assert_eq!(c.trusted_proxies().len(), 2);
        assert_eq!(
            c.server.database_path(),
            PathBuf::from("/srv/ew/easy-writer.db")
        );
        assert_eq!(c.server.public_url(), "http://127.0.0.1:8000");
        let shown = toml::to_string(&c).unwrap();
        assert!(!shown.contains("sk-secret"));
        assert!(format!("{c:?}").find("sk-secret").is_none());
    }
}
