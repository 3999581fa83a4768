//! Google's endpoints and profile (reference: Google OAuth 2.0 web server flow, userinfo v2).

use serde::Deserialize;

use super::{Failure, Profile, flag, text_id};

pub const AUTH_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
pub const TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The v2 endpoint the spec names; `GOOGLE_USERINFO_URL` may point at the OpenID Connect one
/// instead, whose field names are accepted too.
pub const USERINFO_URL: &str = "https://www.googleapis.com/oauth2/v2/userinfo";
/// The spec's scopes: the email (with whether Google verified it) and the name.
pub const SCOPE: &str = "email profile";

/// The fields of Google's userinfo answer that sign-in uses.
#[derive(Deserialize)]
pub struct UserInfo {
    #[serde(alias = "sub", deserialize_with = "text_id")]
    id: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default, alias = "email_verified", deserialize_with = "flag")]
    verified_email: bool,
    #[serde(default)]
    name: Option<String>,
}

impl UserInfo {
    /// The checked profile; no usable email is a [`Failure`].
    pub fn profile(self) -> Result<Profile, Failure> {
        Profile::new(self.id, self.email, self.verified_email, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_v2_and_the_openid_connect_shapes() {
        let v2: UserInfo = serde_json::from_str(
            r#"{"id":"118234567890123456789","email":"a@gmail.com","verified_email":true,
                "name":"Иван Иванов","picture":"https://x"}"#,
        )
        .unwrap();
        let p = v2.profile().unwrap();
        assert_eq!(p.provider_id, "118234567890123456789");
        assert!(p.email_verified);
        assert_eq!(p.name.as_deref(), Some("Иван Иванов"));

        let oidc: UserInfo = serde_json::from_str(
            r#"{"sub":"42","email":"a@gmail.com","email_verified":"false","name":null}"#,
        )
        .unwrap();
        let p = oidc.profile().unwrap();
        assert_eq!(p.provider_id, "42");
        assert!(!p.email_verified);
        assert!(p.name.is_none());

        let unverified: UserInfo =
            serde_json::from_str(r#"{"id":7,"email":"a@gmail.com"}"#).unwrap();
        let p = unverified.profile().unwrap();
        assert_eq!(p.provider_id, "7");
        assert!(!p.email_verified);
    }
}
