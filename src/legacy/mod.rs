//! The WordPress plugin API of the original service (CONTRACT §4 "WordPress plugin"), an
//! adapter over tools, jobs and billing: a site signs in with its access password
//! ([`SiteAuth`]), asks for articles (each a standard-mode run of `seo_article`, paid work on
//! the shared path in `jobs::work`), lists them, marks them published and reads statistics.
//!
//! Owns the `sites` and `articles` tables (`store.rs`); knows nothing of providers. A site
//! with an owner pays the tool's standard price from the owner's raits; an operator's site
//! (no owner) pays nothing. Site passwords are 256-bit random, stored as SHA-256 only.

pub mod extract;
pub mod html;
pub mod routes;
pub mod store;
pub mod work;

use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

pub use extract::SiteAuth;

/// The tool every article runs.
pub const TOOL: &str = "seo_article";

/// A new access password: 32 random bytes, base64url (43 characters).
pub fn new_password() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// What is stored of a password: its SHA-256, lowercase hex. A random 256-bit secret needs
/// no slow hash: nothing can be guessed from its digest.
pub fn password_digest(password: &str) -> String {
    Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `password` is the one whose digest is `stored`, in constant time.
pub fn password_matches(password: &str, stored: &str) -> bool {
    password_digest(password)
        .as_bytes()
        .ct_eq(stored.as_bytes())
        .into()
}

/// A registered WordPress site.
#[derive(Debug, Clone)]
pub struct Site {
    pub id: String,
    pub domain: String,
    pub name: Option<String>,
    /// Who pays for the site's articles; `None`: the operator (free).
    pub owner_user_id: Option<String>,
}

/// How long an article should be: the plugin's words, and the tool's `length_words`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    Short,
    Medium,
    Long,
}

impl Length {
    pub fn parse(text: &str) -> Option<Length> {
        match text {
            "short" => Some(Length::Short),
            "medium" => Some(Length::Medium),
            "long" => Some(Length::Long),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Length::Short => "short",
            Length::Medium => "medium",
            Length::Long => "long",
        }
    }

    /// The `length_words` of `seo_article` (its schema allows 500–3000).
    pub fn words(self) -> u32 {
        match self {
            Length::Short => 800,
            Length::Medium => 1500,
            Length::Long => 2500,
        }
    }
}

/// Why an article failed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ArticleError {
    /// `providers_unavailable`, `provider_error`, `content_refused`, `timeout` or `interrupted`.
    pub code: String,
    pub message: String,
}

/// An article as the plugin sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Article {
    pub id: String,
    /// The same as `id`, under the name the generate answer uses.
    pub article_id: String,
    /// The batch.
    pub session_id: String,
    pub title: String,
    pub keywords: Vec<String>,
    pub language: String,
    /// `short`, `medium` or `long`.
    pub length: String,
    /// `pending`, `in_progress`, `completed`, `failed` or `published`.
    pub status: String,
    /// Sanitised HTML for the post (no title: WordPress shows it); only once completed.
    pub content: Option<String>,
    pub tokens_used: i64,
    /// Raits the site's owner was charged (0 for an operator's site); a failed article's
    /// charge is refunded in the ledger.
    pub cost_raits: i64,
    pub wp_post_id: Option<i64>,
    pub url: Option<String>,
    pub error: Option<ArticleError>,
    pub created_at: String,
    pub updated_at: String,
    pub completed_at: Option<String>,
    pub published_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_random_and_checked_by_digest() {
        let a = new_password();
        let b = new_password();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        let digest = password_digest(&a);
        assert_eq!(digest.len(), 64);
        assert!(password_matches(&a, &digest));
        assert!(!password_matches(&b, &digest));
        assert!(!password_matches("", &digest));
    }

    #[test]
    fn lengths_fit_the_tool() {
        for l in [Length::Short, Length::Medium, Length::Long] {
            assert_eq!(Length::parse(l.as_str()), Some(l));
            assert!((500..=3000).contains(&l.words()));
        }
        assert_eq!(Length::parse("huge"), None);
    }
}
