//! The extractor that authenticates a request: [`CurrentUser`], a valid access token of an active
//! user whose session is live. (Admin rights are checked where they matter: `/metrics`, and the
//! admin UI's own session.)

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::{Auth, Error, jwt, store};
use crate::app::AppState;
use crate::db::Db;
use crate::users::User;

/// The signed-in user and the session (`sid`) their token came from.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub user: User,
    pub session_id: String,
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Checks an access token and loads its user; shared by the header extractor and WebSockets.
pub async fn authenticate(auth: &Auth, db: &Db, token: &str) -> Result<CurrentUser, Error> {
    let claims = auth.keys.verify(token).map_err(|r| match r {
        jwt::Rejection::Expired => Error::TokenExpired,
        jwt::Rejection::Invalid => Error::InvalidToken,
    })?;
    let (user_id, sid) = (claims.sub, claims.sid);
    let found = {
        let (user_id, sid) = (user_id.clone(), sid.clone());
        db.read(move |conn| store::user_for_access(conn, &user_id, &sid))
            .await?
    };
    match found {
        None => {
            tracing::debug!(user.id = %user_id, "token for an unknown user");
            Err(Error::InvalidToken)
        }
        Some((user, _)) if !user.is_active => Err(Error::Inactive),
        Some((_, false)) => {
            tracing::debug!(user.id = %user_id, "token of a revoked session");
            Err(Error::InvalidToken)
        }
        Some((user, true)) => Ok(CurrentUser {
            user,
            session_id: sid,
        }),
    }
}

impl<S> FromRequestParts<S> for CurrentUser
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let state = AppState::from_ref(state);
        let token = bearer(parts).ok_or(Error::NotAuthenticated)?;
        authenticate(&state.auth, &state.db, token).await
    }
}
