//! User accounts: the `users` table, parsing of emails and names, and the public shape of a user.
//!
//! Knows nothing about tokens or HTTP; `auth` and the CLI build on it.

pub mod routes;
pub mod store;

use serde::Serialize;

use crate::error::FieldError;

/// Longest accepted email (CONTRACT §3).
pub const EMAIL_MAX: usize = 255;
/// Longest accepted display name (CONTRACT §3).
pub const NAME_MAX: usize = 100;
/// Password length bounds; the upper one only keeps request bodies sane.
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 1024;

/// A syntactically valid email, trimmed. Uniqueness is case-insensitive in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Email, String> {
        let email = raw.trim();
        if email.is_empty() {
            return Err("value is not a valid email address: empty".into());
        }
        if email.chars().count() > EMAIL_MAX {
            return Err(format!("email must be at most {EMAIL_MAX} characters"));
        }
        if !email_address::EmailAddress::is_valid(email) || !email.contains('.') {
            return Err("value is not a valid email address".into());
        }
        Ok(Email(email.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `422` when a body field is longer than `max` characters: checked before the value is
/// keyed, hashed or looked up, so oversized input costs nothing.
pub fn within(field: &str, value: &str, max: usize) -> Result<(), crate::error::ApiError> {
    if value.chars().count() > max {
        return Err(crate::error::ApiError::validation(vec![FieldError::body(
            field,
            format!("{field} must be at most {max} characters"),
            "value_error",
        )]));
    }
    Ok(())
}

/// Checks a new password's length, the one rule the contract fixes.
pub fn check_password(password: &str) -> Result<(), String> {
    let len = password.chars().count();
    if len < PASSWORD_MIN {
        return Err(format!(
            "password must be at least {PASSWORD_MIN} characters"
        ));
    }
    if len > PASSWORD_MAX {
        return Err(format!(
            "password must be at most {PASSWORD_MAX} characters"
        ));
    }
    Ok(())
}

/// Trims a display name; empty means none.
pub fn parse_name(raw: Option<&str>) -> Result<Option<String>, String> {
    let Some(name) = raw.map(str::trim).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if name.chars().count() > NAME_MAX {
        return Err(format!("name must be at most {NAME_MAX} characters"));
    }
    Ok(Some(name.to_owned()))
}

/// Validates the fields of a sign-up, collecting every failure (for a 422 list).
pub fn validate_signup(
    email: &str,
    password: &str,
    name: Option<&str>,
) -> Result<(Email, Option<String>), Vec<FieldError>> {
    let mut errors = Vec::new();
    let email = Email::parse(email)
        .map_err(|m| errors.push(FieldError::body("email", m, "value_error")))
        .ok();
    if let Err(m) = check_password(password) {
        errors.push(FieldError::body("password", m, "value_error"));
    }
    let name = parse_name(name)
        .map_err(|m| errors.push(FieldError::body("name", m, "value_error")))
        .ok()
        .flatten();
    match email {
        Some(email) if errors.is_empty() => Ok((email, name)),
        _ => Err(errors),
    }
}

/// A user row.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub hashed_password: Option<String>,
    pub name: Option<String>,
    pub provider: String,
    pub provider_id: Option<String>,
    pub balance: i64,
    pub is_active: bool,
    pub is_verified: bool,
    pub is_admin: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// The user as the API shows it (CONTRACT §4 UserResponse).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserResponse {
    /// UUID v7.
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    /// How the account was created: `local`, `google` or `yandex`.
    pub provider: String,
    /// Raits.
    pub balance: i64,
    /// RFC 3339 UTC.
    pub created_at: String,
}

impl From<&User> for UserResponse {
    fn from(u: &User) -> Self {
        UserResponse {
            id: u.id.clone(),
            email: u.email.clone(),
            name: u.name.clone(),
            provider: u.provider.clone(),
            balance: u.balance,
            created_at: u.created_at.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(Email::parse("a@b.co").is_ok());
        assert_eq!(Email::parse("  a@b.co ").unwrap().as_str(), "a@b.co");
        for bad in ["", "a", "a@", "@b.co", "a b@c.d", "a@b"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn signup_lists_every_failure() {
        let errors = validate_signup("nope", "short", Some(&"x".repeat(101))).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.loc[1].as_str().unwrap()).collect();
        assert_eq!(fields, ["email", "password", "name"]);
        assert!(validate_signup("a@b.co", "long enough", None).is_ok());
        assert!(check_password("пароль12").is_ok());
    }
}
