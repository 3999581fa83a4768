//! Access tokens: HS256 JWTs with `sub`, `iat`, `exp`, `typ:"access"` and `sid`.
//!
//! Only HS256 is accepted (so `alg: none` and key-confusion tricks fail), with no leeway: the
//! same server issues and checks them. The key comes from `JWT_SECRET`, else from a file
//! generated once in the data directory with mode 0600.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Access token lifetime (spec: 15 minutes).
pub const ACCESS_TTL_SECS: i64 = 900;
/// Name of the generated key file inside the data directory.
pub const SECRET_FILE: &str = "jwt_secret";

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    /// Always `access`; anything else is refused.
    pub typ: String,
    /// The sign-in session (refresh family) this token was issued from.
    pub sid: String,
}

/// Why a token was refused, as the API reports it.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    Expired,
    Invalid,
}

/// Signing and checking keys.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Keys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Issues an access token for `user_id` in session `sid`.
    pub fn issue(&self, user_id: &str, sid: &str) -> String {
        let iat = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            sub: user_id.to_owned(),
            iat,
            exp: iat + ACCESS_TTL_SECS,
            typ: "access".into(),
            sid: sid.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Checks signature, algorithm, expiry and `typ`.
    pub fn verify(&self, token: &str) -> Result<Claims, Rejection> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Rejection::Expired,
                _ => Rejection::Invalid,
            })?;
        if data.claims.typ != "access" {
            return Err(Rejection::Invalid);
        }
        Ok(data.claims)
    }
}

/// Reads the generated key from `data_dir`, creating it (0600) on first use.
pub fn load_or_generate_secret(data_dir: &Path) -> std::io::Result<Vec<u8>> {
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let secret =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 48]>());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "generated a new JWT secret");
            Ok(secret.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().as_bytes().to_vec())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_and_refuse() {
        let keys = Keys::new(b"0123456789abcdef0123456789abcdef");
        let token = keys.issue("u1", "s1");
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.sid.as_str()), ("u1", "s1"));
        assert_eq!(claims.exp - claims.iat, ACCESS_TTL_SECS);
        let other = Keys::new(b"another secret of the same length!");
        assert_eq!(other.verify(&token).unwrap_err(), Rejection::Invalid);
        assert_eq!(keys.verify("garbage").unwrap_err(), Rejection::Invalid);
    }

    #[test]
    fn secret_file_is_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_generate_secret(dir.path()).unwrap();
        let b = load_or_generate_secret(dir.path()).unwrap();
        assert_eq!(a, b);
        assert!(a.len() >= 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
