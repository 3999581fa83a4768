//! SQL for sign-in sessions (refresh token families) and their rotating refresh tokens.

use base64::Engine;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::users::{self, User};
use crate::{db, timestamp};

/// Refresh token lifetime (spec: 7 days); also the cookie's `Max-Age`.
pub const REFRESH_TTL_SECS: i64 = 7 * 24 * 3600;

/// A refresh token as handed to the browser, and the session it belongs to.
pub struct Issued {
    pub session_id: String,
    pub refresh_token: String,
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn new_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn insert_token(tx: &Connection, session_id: &str) -> Result<String, db::Error> {
    let token = new_token();
    let now = time::OffsetDateTime::now_utc();
    let expires = now + time::Duration::seconds(REFRESH_TTL_SECS);
    tx.prepare_cached(
        "insert into refresh_tokens (token_hash, session_id, expires_at, created_at, updated_at)
         values (?1, ?2, ?3, ?4, ?4)",
    )?
    .execute(params![
        hash(&token),
        session_id,
        timestamp::format(expires),
        timestamp::format(now)
    ])?;
    Ok(token)
}

/// Starts a new sign-in session for `user_id` with its first refresh token.
pub fn start_session(tx: &Connection, user_id: &str) -> Result<Issued, db::Error> {
    let session_id = uuid::Uuid::now_v7().to_string();
    let now = timestamp::now();
    tx.prepare_cached(
        "insert into auth_sessions (id, user_id, created_at, updated_at) values (?1, ?2, ?3, ?3)",
    )?
    .execute(params![session_id, user_id, now])?;
    let refresh_token = insert_token(tx, &session_id)?;
    Ok(Issued {
        session_id,
        refresh_token,
    })
}

/// What presenting a refresh token led to.
pub enum Rotation {
    /// A new token of the same family, for this user.
    Rotated {
        issued: Issued,
        user_id: String,
    },
    Unknown,
    Expired,
    Revoked,
    /// A rotated token came back after the grace window: the family is now revoked.
    Reused,
    Inactive,
}

/// Rotates `token`: marks it used and issues its successor. A token already rotated within
/// `grace_secs` is a concurrent refresh (two tabs) and gets a successor too; later, it is
/// treated as stolen and its whole family is revoked.
pub fn rotate(tx: &Connection, token: &str, grace_secs: u64) -> Result<Rotation, db::Error> {
    let row = tx
        .prepare_cached(
            "select t.session_id, t.expires_at, t.used_at, s.revoked_at, s.user_id
             from refresh_tokens t join auth_sessions s on s.id = t.session_id
             where t.token_hash = ?1",
        )?
        .query_row([hash(token)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .optional()?;
    let Some((session_id, expires_at, used_at, revoked_at, user_id)) = row else {
        return Ok(Rotation::Unknown);
    };
    if revoked_at.is_some() {
        return Ok(Rotation::Revoked);
    }
    let now = time::OffsetDateTime::now_utc();
    if timestamp::parse(&expires_at).is_none_or(|at| at <= now) {
        return Ok(Rotation::Expired);
    }
    if let Some(used_at) = used_at {
        let within_grace = timestamp::parse(&used_at)
            .is_some_and(|at| now - at <= time::Duration::seconds(grace_secs as i64));
        if !within_grace {
            revoke_session(tx, &session_id, "refresh token reused")?;
            return Ok(Rotation::Reused);
        }
    }
    let Some(user) = users::store::by_id(tx, &user_id)? else {
        return Ok(Rotation::Unknown);
    };
    if !user.is_active {
        return Ok(Rotation::Inactive);
    }
    let stamp = timestamp::format(now);
    tx.prepare_cached(
        "update refresh_tokens set used_at = coalesce(used_at, ?2), updated_at = ?2
         where token_hash = ?1",
    )?
    .execute(params![hash(token), stamp])?;
    tx.prepare_cached("update auth_sessions set updated_at = ?2 where id = ?1")?
        .execute(params![session_id, stamp])?;
    let refresh_token = insert_token(tx, &session_id)?;
    Ok(Rotation::Rotated {
        issued: Issued {
            session_id,
            refresh_token,
        },
        user_id: user.id,
    })
}

/// Revokes the session a refresh token belongs to (logout). Unknown tokens are ignored.
pub fn revoke_by_token(tx: &Connection, token: &str) -> Result<(), db::Error> {
    let session: Option<String> = tx
        .query_row(
            "select session_id from refresh_tokens where token_hash = ?1",
            [hash(token)],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(session_id) = session {
        revoke_session(tx, &session_id, "logout")?;
    }
    Ok(())
}

pub fn revoke_session(tx: &Connection, session_id: &str, reason: &str) -> Result<(), db::Error> {
    tx.prepare_cached(
        "update auth_sessions set revoked_at = ?2, revoked_reason = ?3, updated_at = ?2
         where id = ?1 and revoked_at is null",
    )?
    .execute(params![session_id, timestamp::now(), reason])?;
    Ok(())
}

/// Revokes every session of `user_id` except `keep` (password change).
pub fn revoke_other_sessions(
    tx: &Connection,
    user_id: &str,
    keep: &str,
    reason: &str,
) -> Result<usize, db::Error> {
    Ok(tx.execute(
        "update auth_sessions set revoked_at = ?3, revoked_reason = ?4, updated_at = ?3
         where user_id = ?1 and id <> ?2 and revoked_at is null",
        params![user_id, keep, timestamp::now(), reason],
    )?)
}

/// Revokes every session of `user_id` (a password reset, an account taken over by the owner of
/// its email): every refresh token and access token of the user stops working at once.
pub fn revoke_all_sessions(
    tx: &Connection,
    user_id: &str,
    reason: &str,
) -> Result<usize, db::Error> {
    Ok(tx
        .prepare_cached(
            "update auth_sessions set revoked_at = ?2, revoked_reason = ?3, updated_at = ?2
             where user_id = ?1 and revoked_at is null",
        )?
        .execute(params![user_id, timestamp::now(), reason])?)
}

/// The user behind an access token, with whether its session is still live: one indexed read
/// per authenticated request, so a logout or deactivation takes effect at once.
pub fn user_for_access(
    conn: &Connection,
    user_id: &str,
    session_id: &str,
) -> Result<Option<(User, bool)>, db::Error> {
    Ok(conn
        .prepare_cached(&format!(
            "select {}, exists(select 1 from auth_sessions s
                               where s.id = ?2 and s.user_id = u.id and s.revoked_at is null)
             from users u where u.id = ?1",
            users::store::COLUMNS
        ))?
        .query_row(params![user_id, session_id], |r| {
            Ok((
                users::store::from_row(r)?,
                r.get(users::store::COLUMN_COUNT)?,
            ))
        })
        .optional()?)
}

/// Deletes refresh tokens past their expiry, then sessions left without any token. Expired
/// tokens are refused anyway; this only keeps the tables from growing forever.
pub fn prune(tx: &Connection) -> Result<usize, db::Error> {
    let now = timestamp::now();
    let tokens = tx.execute("delete from refresh_tokens where expires_at < ?1", [&now])?;
    let sessions = tx.execute(
        "delete from auth_sessions
         where not exists (select 1 from refresh_tokens t where t.session_id = auth_sessions.id)",
        [],
    )?;
    Ok(tokens + sessions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::store::{NewUser, insert};

    #[test]
    fn prune_deletes_only_expired_tokens_and_empty_sessions() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::migrate::apply(&mut conn).unwrap();
        let tx = conn.transaction().unwrap();
        let user = insert(
            &tx,
            &NewUser {
                email: "p@example.com",
                hashed_password: "x",
                name: None,
                is_admin: false,
            },
        )
        .unwrap();
        let old = start_session(&tx, &user.id).unwrap();
        let live = start_session(&tx, &user.id).unwrap();
        tx.execute(
            "update refresh_tokens set expires_at = '2000-01-01T00:00:00.000000Z' where session_id = ?1",
            [&old.session_id],
        )
        .unwrap();
        assert!(matches!(
            rotate(&tx, &old.refresh_token, 10).unwrap(),
            Rotation::Expired
        ));
        assert_eq!(prune(&tx).unwrap(), 2);
        assert!(matches!(
            rotate(&tx, &old.refresh_token, 10).unwrap(),
            Rotation::Unknown
        ));
        assert!(matches!(
            rotate(&tx, &live.refresh_token, 10).unwrap(),
            Rotation::Rotated { .. }
        ));
        assert_eq!(prune(&tx).unwrap(), 0);
    }
}
