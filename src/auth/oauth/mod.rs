//! Sign in with Google and Yandex: the OAuth 2.0 authorization code flow with PKCE (S256).
//!
//! `GET /auth/<provider>` sends the browser to the provider with a fresh `state` and PKCE
//! challenge, both kept in a signed, short-lived cookie (`state.rs`). The callback checks that
//! cookie against `state` and burns the state, exchanges the code, reads the profile, and finds,
//! links or creates the user in one write (`store.rs`). Every callback outcome is a redirect to
//! the frontend; why a sign-in failed is logged, but never a code, token or state.

pub mod google;
pub mod routes;
pub mod state;
pub mod store;
pub mod yandex;

use std::time::Duration;

use anyhow::Context;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::config::{self, Config, Secret};
use crate::db;
use crate::users::{self, Email};

/// The longest a call to a provider's token or userinfo endpoint may take, body included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The providers one can sign in with; the names are the ones stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Google,
    Yandex,
}

impl Provider {
    /// As stored in `users.provider` and `user_identities.provider`, and as in the routes.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Google => "google",
            Provider::Yandex => "yandex",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Provider::Google => "Google",
            Provider::Yandex => "Yandex",
        }
    }
}

/// One provider's registration and endpoints, with the defaults filled in.
pub struct Client {
    /// Which protocol details (scopes, userinfo header and shape) apply.
    pub provider: Provider,
    client_id: String,
    client_secret: Secret,
    redirect_uri: String,
    auth_url: reqwest::Url,
    token_url: String,
    userinfo_url: String,
}

impl Client {
    /// `None` when the client id or secret is unset: sign-in with this provider is off.
    fn from_config(
        provider: Provider,
        cfg: &config::OAuthClient,
        public_url: &str,
    ) -> anyhow::Result<Option<Client>> {
        let (Some(client_id), Some(client_secret)) = (&cfg.client_id, &cfg.client_secret) else {
            return Ok(None);
        };
        let (auth_url, token_url, userinfo_url) = match provider {
            Provider::Google => (google::AUTH_URL, google::TOKEN_URL, google::USERINFO_URL),
            Provider::Yandex => (yandex::AUTH_URL, yandex::TOKEN_URL, yandex::USERINFO_URL),
        };
        let auth_url = cfg.auth_url.as_deref().unwrap_or(auth_url);
        Ok(Some(Client {
            provider,
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            redirect_uri: cfg.redirect_uri.clone().unwrap_or_else(|| {
                format!("{public_url}/api/v1/auth/{}/callback", provider.as_str())
            }),
            auth_url: reqwest::Url::parse(auth_url)
                .with_context(|| format!("[{}] auth_url {auth_url:?}", provider.as_str()))?,
            token_url: cfg.token_url.clone().unwrap_or_else(|| token_url.into()),
            userinfo_url: cfg
                .userinfo_url
                .clone()
                .unwrap_or_else(|| userinfo_url.into()),
        }))
    }

    /// The provider's consent page for one sign-in attempt.
    pub fn authorize_url(&self, state: &str, code_challenge: &str) -> String {
        let scope = match self.provider {
            Provider::Google => google::SCOPE,
            Provider::Yandex => yandex::SCOPE,
        };
        let mut url = self.auth_url.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", scope)
            .append_pair("state", state)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        url.into()
    }
}

/// What a provider says about the person signing in, checked: a non-empty id, a valid email,
/// a name cut to what a profile holds.
#[derive(Debug, Clone)]
pub struct Profile {
    pub provider_id: String,
    pub email: Email,
    /// The provider vouches that the person controls `email`; only then may it link accounts.
    pub email_verified: bool,
    pub name: Option<String>,
}

impl Profile {
    fn new(
        provider_id: String,
        email: Option<String>,
        email_verified: bool,
        name: Option<String>,
    ) -> Result<Profile, Failure> {
        if provider_id.is_empty() || provider_id.len() > 255 {
            return Err(Failure::BadProfile("the user id is empty or too long"));
        }
        let email = email
            .filter(|e| !e.trim().is_empty())
            .ok_or(Failure::NoEmail)?;
        let email =
            Email::parse(&email).map_err(|_| Failure::BadProfile("the email is not valid"))?;
        let name = name
            .map(|n| n.trim().chars().take(users::NAME_MAX).collect::<String>())
            .map(|n| n.trim_end().to_owned())
            .filter(|n| !n.is_empty());
        Ok(Profile {
            provider_id,
            email,
            email_verified,
            name,
        })
    }
}

/// Why a sign-in went wrong on the provider's side or in the browser's request. Each is
/// logged and answered with `error=provider_error`; none carries a code, token or state.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("provider not configured")]
    NotConfigured,
    #[error("callback query is malformed")]
    BadQuery,
    #[error("no state cookie (expired, blocked, or another browser)")]
    NoStateCookie,
    #[error("state cookie is invalid or expired")]
    BadStateCookie,
    #[error("state does not match the state cookie")]
    StateMismatch,
    #[error("state was already used")]
    StateReused,
    #[error("provider answered error={0:?}")]
    Refused(String),
    #[error("callback has no code")]
    NoCode,
    #[error("{step}: {reason}")]
    Call { step: &'static str, reason: String },
    #[error("profile has no email")]
    NoEmail,
    #[error("profile unusable: {0}")]
    BadProfile(&'static str),
}

/// How a sign-in at a provider ended, as the frontend is told (`?error=<code>`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the user cancelled at the provider")]
    Cancelled,
    #[error("an account has this email, which the provider does not vouch for")]
    AccountExists,
    #[error("the account is deactivated")]
    Inactive,
    #[error(transparent)]
    Provider(#[from] Failure),
    /// A unique constraint refused the write; the single writer makes this unreachable today,
    /// but if it happens nothing was written and the person may simply try again.
    #[error("a concurrent sign-in wrote the same identity or email first")]
    Conflict,
    #[error(transparent)]
    Db(#[from] db::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Db(e.into())
    }
}

impl Error {
    /// The `error` the frontend's login page receives (CONTRACT §4).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Cancelled => "cancelled",
            Error::AccountExists => "account_exists",
            Error::Inactive => "inactive",
            Error::Provider(_) | Error::Conflict | Error::Db(_) | Error::Internal(_) => {
                "provider_error"
            }
        }
    }
}

/// The configured providers, their HTTP client, and the sign-in attempts in flight.
pub struct OAuth {
    http: reqwest::Client,
    google: Option<Client>,
    yandex: Option<Client>,
    /// Issues and checks the `state` cookies; remembers used states.
    pub states: state::States,
}

impl OAuth {
    /// `timeout` bounds each call to a provider ([`TIMEOUT`] in production; tests pass less).
    pub fn new(config: &Config, timeout: Duration) -> anyhow::Result<OAuth> {
        let public_url = config.server.public_url();
        Ok(OAuth {
            http: reqwest::Client::builder()
                .timeout(timeout)
                // A token endpoint that redirects is misconfigured; following it would turn
                // the POST into a GET.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .context("building the OAuth HTTP client")?,
            google: Client::from_config(Provider::Google, &config.google, &public_url)?,
            yandex: Client::from_config(Provider::Yandex, &config.yandex, &public_url)?,
            states: state::States::new(),
        })
    }

    /// The provider's client, if it is configured.
    pub fn client(&self, provider: Provider) -> Option<&Client> {
        match provider {
            Provider::Google => self.google.as_ref(),
            Provider::Yandex => self.yandex.as_ref(),
        }
    }

    /// Exchanges an authorization code for an access token and reads the person's profile.
    pub async fn profile(
        &self,
        client: &Client,
        code: &str,
        verifier: &str,
    ) -> Result<Profile, Failure> {
        let token = self.exchange(client, code, verifier).await?;
        let request = self
            .http
            .get(&client.userinfo_url)
            .header(ACCEPT, "application/json");
        match client.provider {
            Provider::Google => {
                let request = request.bearer_auth(token.expose());
                read_json::<google::UserInfo>("userinfo", request)
                    .await?
                    .profile()
            }
            Provider::Yandex => {
                let request = request
                    .query(&[("format", "json")])
                    .header(AUTHORIZATION, format!("OAuth {}", token.expose()));
                read_json::<yandex::UserInfo>("userinfo", request)
                    .await?
                    .profile()
            }
        }
    }

    /// The token request both providers document: a form POST with the client's credentials
    /// in the body (`client_secret_post`) and the PKCE verifier.
    async fn exchange(
        &self,
        client: &Client,
        code: &str,
        verifier: &str,
    ) -> Result<Secret, Failure> {
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
        }
        let request = self
            .http
            .post(&client.token_url)
            .header(ACCEPT, "application/json")
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &client.redirect_uri),
                ("client_id", &client.client_id),
                ("client_secret", client.client_secret.expose()),
                ("code_verifier", verifier),
            ]);
        let token = read_json::<TokenResponse>("token exchange", request).await?;
        if token.access_token.is_empty() {
            return Err(Failure::Call {
                step: "token exchange",
                reason: "empty access_token".into(),
            });
        }
        Ok(Secret::new(token.access_token))
    }
}

/// Sends `request` and parses a successful JSON answer. Failures are described by status,
/// the provider's OAuth `error` code, or where the JSON broke — never by the body's values.
async fn read_json<T: DeserializeOwned>(
    step: &'static str,
    request: reqwest::RequestBuilder,
) -> Result<T, Failure> {
    let failed = |reason: String| Failure::Call { step, reason };
    let response = request.send().await.map_err(|e| failed(transport(&e)))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| failed(transport(&e)))?;
    if !status.is_success() {
        #[derive(Deserialize)]
        struct OAuthError {
            error: String,
        }
        let code = serde_json::from_slice::<OAuthError>(&body)
            .map(|e| format!(" error={:?}", sanitize(&e.error)))
            .unwrap_or_default();
        return Err(failed(format!("HTTP {}{code}", status.as_u16())));
    }
    serde_json::from_slice(&body).map_err(|e| {
        failed(format!(
            "malformed JSON ({:?} at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

/// A transport failure in words, without the URL or anything else from the request.
fn transport(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "unexpected redirect"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_owned(),
    }
}

/// A provider-chosen error code, cut to the characters such codes use, for logs.
fn sanitize(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect()
}

/// A provider's user id: a string (Google's does not fit in a double), or an integer from a
/// lenient provider.
fn text_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(u64),
    }
    Ok(match Id::deserialize(d)? {
        Id::Text(s) => s,
        Id::Number(n) => n.to_string(),
    })
}

/// A yes/no a provider may send as a boolean, as `"true"`, or not at all.
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Text(String),
    }
    Ok(match Option::<Flag>::deserialize(d)? {
        Some(Flag::Bool(b)) => b,
        Some(Flag::Text(s)) => s.eq_ignore_ascii_case("true"),
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_need_an_id_and_a_valid_email_and_keep_at_most_100_characters_of_name() {
        let long = "Я".repeat(150);
        let p = Profile::new("1".into(), Some(" a@b.co ".into()), true, Some(long)).unwrap();
        assert_eq!(p.email.as_str(), "a@b.co");
        assert_eq!(p.name.unwrap().chars().count(), users::NAME_MAX);
        let p = Profile::new("1".into(), Some("a@b.co".into()), false, Some("  ".into())).unwrap();
        assert!(p.name.is_none());
        assert!(matches!(
            Profile::new("1".into(), None, true, None),
            Err(Failure::NoEmail)
        ));
        assert!(matches!(
            Profile::new("1".into(), Some("not an email".into()), true, None),
            Err(Failure::BadProfile(_))
        ));
        assert!(Profile::new(String::new(), Some("a@b.co".into()), true, None).is_err());
    }

    #[test]
    fn provider_error_codes_are_sanitized() {
        assert_eq!(sanitize("invalid_grant"), "invalid_grant");
        assert_eq!(sanitize("bad\ncode=\"x\" 4/0Ab"), "badcodex40Ab");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 64);
    }
}
