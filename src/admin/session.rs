//! The admin UI's own sign-in: a random token in an `HttpOnly; SameSite=Strict; Path=/admin`
//! cookie (only its SHA-256 stored), idle and absolute timeouts, the user re-checked (active,
//! admin) on every request, and the session's CSRF token that every form carries.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::users::User;
use crate::{db, timestamp};

pub const COOKIE: &str = "ew_admin";
/// The double-submit token of the sign-in form (there is no session yet to hold one).
pub const LOGIN_COOKIE: &str = "ew_admin_login";
/// A session unused this long ends.
pub const IDLE: time::Duration = time::Duration::minutes(30);
/// A session ends this long after sign-in, however busy.
pub const ABSOLUTE: time::Duration = time::Duration::hours(12);
/// `seen_at` is written at most this often, so reading pages does not mean a write each.
const TOUCH: time::Duration = time::Duration::minutes(1);

/// A signed-in admin.
#[derive(Debug, Clone)]
pub struct Admin {
    pub user: User,
    /// The token forms must carry.
    pub csrf: String,
    pub token_sha256: String,
}

impl Admin {
    /// Constant-time check of a form's CSRF token.
    pub fn csrf_ok(&self, given: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(given.as_bytes()))
    }
}

/// 32 random bytes, base64url.
pub fn random_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A cookie of the admin UI.
pub fn cookie(name: &'static str, value: String, secure: bool) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/admin")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .build()
}

/// The same cookie, expired.
pub fn removal(name: &'static str, secure: bool) -> Cookie<'static> {
    let mut c = cookie(name, String::new(), secure);
    c.make_removal();
    c
}

/// Opens a session for `user_id`; returns the cookie's token.
pub fn start(tx: &Connection, user_id: &str) -> Result<String, db::Error> {
    let token = random_token();
    let now = timestamp::now();
    tx.prepare_cached(
        "insert into admin_sessions (token_sha256, user_id, csrf, created_at, seen_at)
         values (?1, ?2, ?3, ?4, ?4)",
    )?
    .execute(params![digest(&token), user_id, random_token(), now])?;
    // Sessions past their absolute lifetime are gone for good.
    let cutoff = timestamp::format(time::OffsetDateTime::now_utc() - ABSOLUTE);
    tx.prepare_cached("delete from admin_sessions where created_at < ?1")?
        .execute([cutoff])?;
    Ok(token)
}

pub fn end(tx: &Connection, token_sha256: &str) -> Result<(), db::Error> {
    tx.prepare_cached("delete from admin_sessions where token_sha256 = ?1")?
        .execute([token_sha256])?;
    Ok(())
}

/// Where an unauthenticated request goes.
fn to_login() -> Response {
    Redirect::to("/admin/login").into_response()
}

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let state = AppState::from_ref(state);
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(token) = jar.get(COOKIE).map(|c| c.value().to_owned()) else {
            return Err(to_login());
        };
        let token_sha256 = digest(&token);
        let found = {
            let token_sha256 = token_sha256.clone();
            state
                .db
                .read(move |c| {
                    let row: Option<(String, String, String, String)> = c
                        .prepare_cached(
                            "select user_id, csrf, created_at, seen_at from admin_sessions
                             where token_sha256 = ?1",
                        )?
                        .query_row([&token_sha256], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })
                        .optional()?;
                    let Some((user_id, csrf, created, seen)) = row else {
                        return Ok::<_, db::Error>(None);
                    };
                    let user = crate::users::store::by_id(c, &user_id)?;
                    Ok(user.map(|u| (u, csrf, created, seen)))
                })
                .await
        };
        let Ok(Some((user, csrf, created, seen))) = found else {
            return Err(to_login());
        };
        let now = time::OffsetDateTime::now_utc();
        let at = |t: &str| timestamp::parse(t).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let expired = now - at(&created) > ABSOLUTE || now - at(&seen) > IDLE;
        if expired || !user.is_active || !user.is_admin {
            let gone = token_sha256.clone();
            let _ = state.db.write(move |tx| end(tx, &gone)).await;
            return Err(to_login());
        }
        if now - at(&seen) > TOUCH {
            let touched = token_sha256.clone();
            let _ = state
                .db
                .write(move |tx| {
                    tx.prepare_cached(
                        "update admin_sessions set seen_at = ?2 where token_sha256 = ?1",
                    )?
                    .execute(params![touched, timestamp::now()])
                    .map_err(db::Error::from)
                })
                .await;
        }
        Ok(Admin {
            user,
            csrf,
            token_sha256,
        })
    }
}
