//! Yandex ID's endpoints and profile (reference: Yandex OAuth, `login.yandex.ru/info`).

use serde::Deserialize;

use super::{Failure, Profile, text_id};

pub const AUTH_URL: &str = "https://oauth.yandex.ru/authorize";
pub const TOKEN_URL: &str = "https://oauth.yandex.ru/token";
/// Asked with `?format=json` and `Authorization: OAuth <token>` (not `Bearer`).
pub const USERINFO_URL: &str = "https://login.yandex.ru/info";
/// The spec's scopes; the app's registration at Yandex must grant both.
pub const SCOPE: &str = "login:email login:info";

/// The fields of Yandex ID's answer that sign-in uses.
#[derive(Deserialize)]
pub struct UserInfo {
    #[serde(deserialize_with = "text_id")]
    id: String,
    /// The account's main address; the contract counts it as verified. Other entries of
    /// `emails` are not used.
    #[serde(default)]
    default_email: Option<String>,
    #[serde(default)]
    real_name: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    login: Option<String>,
}

impl UserInfo {
    /// The checked profile; no usable email is a [`Failure`].
    pub fn profile(self) -> Result<Profile, Failure> {
        let name = [self.real_name, self.display_name, self.login]
            .into_iter()
            .flatten()
            .find(|n| !n.trim().is_empty());
        let verified = self.default_email.is_some();
        Profile::new(self.id, self.default_email, verified, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_email_counts_as_verified_and_the_name_falls_back_to_the_login() {
        let info: UserInfo = serde_json::from_str(
            r#"{"id":"1000034426","login":"ivan","client_id":"4760187d","psuid":"1.AAce",
                "default_email":"ivan@yandex.ru","emails":["ivan@yandex.ru"],
                "display_name":"ivan","real_name":"Иван Иванов"}"#,
        )
        .unwrap();
        let p = info.profile().unwrap();
        assert_eq!(p.provider_id, "1000034426");
        assert_eq!(p.email.as_str(), "ivan@yandex.ru");
        assert!(p.email_verified);
        assert_eq!(p.name.as_deref(), Some("Иван Иванов"));

        let info: UserInfo = serde_json::from_str(
            r#"{"id":"5","login":"petr","default_email":"p@ya.ru","real_name":""}"#,
        )
        .unwrap();
        assert_eq!(info.profile().unwrap().name.as_deref(), Some("petr"));

        let info: UserInfo =
            serde_json::from_str(r#"{"id":"5","login":"petr","emails":["p@ya.ru"]}"#).unwrap();
        assert!(matches!(info.profile(), Err(Failure::NoEmail)));
    }
}
