//! One sign-in attempt's `state` and PKCE verifier, carried by the browser in a signed cookie,
//! and the memory of states already used.
//!
//! The cookie is an HS256 JWT signed with a key made at start-up and kept only in memory, so a
//! sign-in must finish within [`TTL`], in the browser that began it, in the same process. A
//! restart therefore voids every pending attempt, which is what makes remembering used states
//! in memory enough for each state to work once.

use std::time::Duration;

use axum_extra::extract::cookie::{Cookie, SameSite};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Failure, Provider};

/// How long a sign-in at the provider may take.
pub const TTL: Duration = Duration::from_secs(600);
/// The cookie's name; its path is the provider's callback, so each provider has its own.
pub const COOKIE: &str = "oauth_state";
/// Used states remembered at most; past this, the oldest are forgotten early (their codes
/// are spent at the provider anyway).
const MAX_REMEMBERED: u64 = 100_000;
const TYP: &str = "oauth_state";

#[derive(Serialize, Deserialize)]
struct Claims {
    /// Always `oauth_state`, so no other token signed with this key could pass.
    typ: String,
    /// The provider the attempt began with.
    prv: String,
    state: String,
    /// The PKCE `code_verifier` (RFC 7636), sent only to the token endpoint.
    pkce: String,
    exp: i64,
}

/// A new attempt: what goes to the provider and what goes into the cookie.
pub struct Attempt {
    /// The `state` parameter: 256 random bits, base64url.
    pub state: String,
    /// `BASE64URL(SHA256(verifier))`, for `code_challenge` with method `S256`.
    pub code_challenge: String,
    /// The signed cookie value.
    pub cookie: String,
}

/// Issues and checks state cookies; remembers which states were used.
pub struct States {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    used: moka::sync::Cache<String, ()>,
}

impl Default for States {
    fn default() -> Self {
        States::new()
    }
}

impl States {
    /// A fresh random key: cookies issued by an earlier process are refused.
    pub fn new() -> States {
        let key: [u8; 32] = rand::random();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        States {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            validation,
            used: moka::sync::Cache::builder()
                .max_capacity(MAX_REMEMBERED)
                .time_to_live(TTL)
                .build(),
        }
    }

    /// Begins an attempt with `provider`: a random state and PKCE verifier (256 bits each).
    pub fn begin(&self, provider: Provider) -> Attempt {
        let state = random_text();
        let verifier = random_text();
        let claims = Claims {
            typ: TYP.into(),
            prv: provider.as_str().into(),
            state: state.clone(),
            pkce: verifier.clone(),
            exp: time::OffsetDateTime::now_utc().unix_timestamp() + TTL.as_secs() as i64,
        };
        let cookie = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail");
        Attempt {
            state,
            code_challenge: code_challenge(&verifier),
            cookie,
        }
    }

    /// Checks the callback's `state` against the cookie of the same browser and uses it up;
    /// answers the PKCE verifier for the token exchange.
    pub fn finish(
        &self,
        provider: Provider,
        cookie: Option<&str>,
        state: Option<&str>,
    ) -> Result<String, Failure> {
        let cookie = cookie
            .filter(|c| !c.is_empty())
            .ok_or(Failure::NoStateCookie)?;
        let claims = jsonwebtoken::decode::<Claims>(cookie, &self.decoding, &self.validation)
            .map_err(|_| Failure::BadStateCookie)?
            .claims;
        if claims.typ != TYP || claims.prv != provider.as_str() {
            return Err(Failure::BadStateCookie);
        }
        if state != Some(claims.state.as_str()) {
            return Err(Failure::StateMismatch);
        }
        // Atomic: of two callbacks racing with the same state, exactly one inserts it.
        if !self.used.entry(claims.state).or_insert(()).is_fresh() {
            return Err(Failure::StateReused);
        }
        Ok(claims.pkce)
    }
}

/// The state cookie: HttpOnly, only sent to the provider's callback, `SameSite=Lax` whatever
/// the refresh cookie's setting, because the provider brings the browser back with a top-level
/// cross-site GET, which `Strict` would strip.
pub fn cookie(provider: Provider, value: String, secure: bool) -> Cookie<'static> {
    Cookie::build((COOKIE, value))
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .path(format!("/api/v1/auth/{}/callback", provider.as_str()))
        .max_age(time::Duration::seconds(TTL.as_secs() as i64))
        .build()
}

/// The same cookie, expired: every callback clears it, whatever the outcome.
pub fn removal(provider: Provider, secure: bool) -> Cookie<'static> {
    let mut cookie = cookie(provider, String::new(), secure);
    cookie.set_max_age(time::Duration::ZERO);
    cookie
}

fn random_text() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// RFC 7636 §4.2, method `S256`.
pub fn code_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn a_state_works_once_with_its_own_cookie_and_provider_only() {
        let states = States::new();
        let a = states.begin(Provider::Google);
        let b = states.begin(Provider::Google);
        assert_ne!(a.state, b.state);
        assert!(matches!(
            states.finish(Provider::Google, Some(&a.cookie), Some(&b.state)),
            Err(Failure::StateMismatch)
        ));
        assert!(matches!(
            states.finish(Provider::Yandex, Some(&a.cookie), Some(&a.state)),
            Err(Failure::BadStateCookie)
        ));
        assert!(matches!(
            States::new().finish(Provider::Google, Some(&a.cookie), Some(&a.state)),
            Err(Failure::BadStateCookie)
        ));
        assert!(matches!(
            states.finish(Provider::Google, None, Some(&a.state)),
            Err(Failure::NoStateCookie)
        ));
        assert!(matches!(
            states.finish(Provider::Google, Some("garbage"), Some(&a.state)),
            Err(Failure::BadStateCookie)
        ));
        let verifier = states
            .finish(Provider::Google, Some(&a.cookie), Some(&a.state))
            .unwrap();
        assert_eq!(code_challenge(&verifier), a.code_challenge);
        assert!((43..=128).contains(&verifier.len()));
        assert!(matches!(
            states.finish(Provider::Google, Some(&a.cookie), Some(&a.state)),
            Err(Failure::StateReused)
        ));
    }

    #[test]
    fn an_expired_cookie_is_refused() {
        let states = States::new();
        let claims = Claims {
            typ: TYP.into(),
            prv: "google".into(),
            state: "s".into(),
            pkce: "v".into(),
            exp: time::OffsetDateTime::now_utc().unix_timestamp() - 1,
        };
        let cookie =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &states.encoding)
                .unwrap();
        assert!(matches!(
            states.finish(Provider::Google, Some(&cookie), Some("s")),
            Err(Failure::BadStateCookie)
        ));
    }
}
