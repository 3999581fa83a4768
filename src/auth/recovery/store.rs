//! SQL for `account_tokens`: issuing, using and pruning reset and verification tokens, and
//! the writes a used token leads to.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Purpose, hash, new_token};
use crate::auth::store as sessions;
use crate::users::{self, User};
use crate::{db, timestamp};

/// Stores a new token for `user_id` and returns it (the only time it exists in clear). A new
/// reset token replaces the user's unused ones: only the newest reset link works.
pub fn issue(tx: &Connection, user_id: &str, purpose: Purpose) -> Result<String, db::Error> {
    if purpose == Purpose::Reset {
        tx.prepare_cached(
            "delete from account_tokens where user_id = ?1 and purpose = ?2 and used_at is null",
        )?
        .execute(params![user_id, purpose.as_str()])?;
    }
    let token = new_token();
    let now = time::OffsetDateTime::now_utc();
    tx.prepare_cached(
        "insert into account_tokens (token_hash, user_id, purpose, expires_at, created_at, updated_at)
         values (?1, ?2, ?3, ?4, ?5, ?5)",
    )?
    .execute(params![
        hash(&token),
        user_id,
        purpose.as_str(),
        timestamp::format(now + purpose.ttl()),
        timestamp::format(now)
    ])?;
    Ok(token)
}

/// Whether `token` is known, of `purpose`, unused and unexpired — without using it. A cheap
/// look before expensive work (hashing a new password); [`consume`] decides.
pub fn is_usable(conn: &Connection, token: &str, purpose: Purpose) -> Result<bool, db::Error> {
    Ok(conn
        .prepare_cached(
            "select exists(select 1 from account_tokens
                           where token_hash = ?1 and purpose = ?2 and used_at is null
                             and expires_at > ?3)",
        )?
        .query_row(
            params![hash(token), purpose.as_str(), timestamp::now()],
            |r| r.get(0),
        )?)
}

/// Uses `token`: marks it used and returns its user's id, or `None` when it is unknown, of
/// another purpose, used or expired. One guarded update, so of two requests racing with the
/// same token exactly one gets the user.
pub fn consume(
    tx: &Connection,
    token: &str,
    purpose: Purpose,
) -> Result<Option<String>, db::Error> {
    Ok(tx
        .prepare_cached(
            "update account_tokens set used_at = ?3, updated_at = ?3
             where token_hash = ?1 and purpose = ?2 and used_at is null and expires_at > ?3
             returning user_id",
        )?
        .query_row(
            params![hash(token), purpose.as_str(), timestamp::now()],
            |r| r.get(0),
        )
        .optional()?)
}

/// A password reset with `token`: sets the new password hash, revokes every session of the
/// user and marks the email verified (the letter proved it). `None`: the token cannot be used.
pub fn reset_password(
    tx: &Connection,
    token: &str,
    hashed_password: &str,
) -> Result<Option<String>, db::Error> {
    let Some(user_id) = consume(tx, token, Purpose::Reset)? else {
        return Ok(None);
    };
    users::store::set_password(tx, &user_id, hashed_password)?;
    sessions::revoke_all_sessions(tx, &user_id, "password reset")?;
    users::store::set_verified(tx, &user_id)?;
    Ok(Some(user_id))
}

/// An email verification with `token`: marks the email verified and returns the user.
pub fn confirm_email(tx: &Connection, token: &str) -> Result<Option<User>, db::Error> {
    let Some(user_id) = consume(tx, token, Purpose::Verify)? else {
        return Ok(None);
    };
    users::store::set_verified(tx, &user_id)?;
    users::store::by_id(tx, &user_id)
}

/// Deletes tokens past their expiry (used or not): they are refused anyway.
pub fn prune(tx: &Connection) -> Result<usize, db::Error> {
    Ok(tx
        .prepare_cached("delete from account_tokens where expires_at < ?1")?
        .execute([timestamp::now()])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::store::{NewUser, insert};

    fn setup() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::migrate::apply(&mut conn).unwrap();
        conn
    }

    fn user(tx: &Connection, email: &str) -> String {
        insert(
            tx,
            &NewUser {
                email,
                hashed_password: "old",
                name: None,
                is_admin: false,
            },
        )
        .unwrap()
        .id
    }

    fn expire(tx: &Connection, token: &str) {
        tx.execute(
            "update account_tokens set expires_at = '2000-01-01T00:00:00.000000Z'
             where token_hash = ?1",
            [hash(token)],
        )
        .unwrap();
    }

    #[test]
    fn a_token_works_once_for_its_purpose_until_it_expires() {
        let mut conn = setup();
        let tx = conn.transaction().unwrap();
        let id = user(&tx, "t@example.com");
        let token = issue(&tx, &id, Purpose::Verify).unwrap();
        let stored: String = tx
            .query_row("select token_hash from account_tokens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, hash(&token), "only the hash is stored");

        assert!(!is_usable(&tx, &token, Purpose::Reset).unwrap());
        assert_eq!(consume(&tx, &token, Purpose::Reset).unwrap(), None);
        assert!(is_usable(&tx, &token, Purpose::Verify).unwrap());
        assert_eq!(
            consume(&tx, &token, Purpose::Verify).unwrap(),
            Some(id.clone())
        );
        assert_eq!(
            consume(&tx, &token, Purpose::Verify).unwrap(),
            None,
            "single use"
        );
        assert!(!is_usable(&tx, &token, Purpose::Verify).unwrap());
        assert_eq!(consume(&tx, "made-up", Purpose::Verify).unwrap(), None);

        let late = issue(&tx, &id, Purpose::Verify).unwrap();
        expire(&tx, &late);
        assert!(!is_usable(&tx, &late, Purpose::Verify).unwrap());
        assert_eq!(consume(&tx, &late, Purpose::Verify).unwrap(), None);
    }

    #[test]
    fn lifetimes_are_an_hour_and_a_day() {
        let mut conn = setup();
        let tx = conn.transaction().unwrap();
        let id = user(&tx, "ttl@example.com");
        for (purpose, hours) in [(Purpose::Reset, 1), (Purpose::Verify, 24)] {
            let token = issue(&tx, &id, purpose).unwrap();
            let (created, expires): (String, String) = tx
                .query_row(
                    "select created_at, expires_at from account_tokens where token_hash = ?1",
                    [hash(&token)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let span = timestamp::parse(&expires).unwrap() - timestamp::parse(&created).unwrap();
            assert_eq!(span, time::Duration::hours(hours));
        }
    }

    #[test]
    fn a_new_reset_link_replaces_the_unused_older_ones() {
        let mut conn = setup();
        let tx = conn.transaction().unwrap();
        let id = user(&tx, "r@example.com");
        let other = user(&tx, "o@example.com");
        let first = issue(&tx, &id, Purpose::Reset).unwrap();
        let others = issue(&tx, &other, Purpose::Reset).unwrap();
        let verify = issue(&tx, &id, Purpose::Verify).unwrap();
        let second = issue(&tx, &id, Purpose::Reset).unwrap();
        assert!(!is_usable(&tx, &first, Purpose::Reset).unwrap());
        assert!(is_usable(&tx, &second, Purpose::Reset).unwrap());
        assert!(is_usable(&tx, &others, Purpose::Reset).unwrap());
        assert!(is_usable(&tx, &verify, Purpose::Verify).unwrap());
    }

    #[test]
    fn a_reset_sets_the_password_ends_every_session_and_verifies() {
        let mut conn = setup();
        let tx = conn.transaction().unwrap();
        let id = user(&tx, "s@example.com");
        let a = sessions::start_session(&tx, &id).unwrap();
        let b = sessions::start_session(&tx, &id).unwrap();
        let token = issue(&tx, &id, Purpose::Reset).unwrap();
        assert_eq!(
            reset_password(&tx, &token, "new").unwrap(),
            Some(id.clone())
        );
        let user = users::store::by_id(&tx, &id).unwrap().unwrap();
        assert_eq!(user.hashed_password.as_deref(), Some("new"));
        assert!(user.is_verified);
        for session in [a, b] {
            assert!(matches!(
                sessions::rotate(&tx, &session.refresh_token, 10).unwrap(),
                sessions::Rotation::Revoked
            ));
        }
        assert_eq!(reset_password(&tx, &token, "again").unwrap(), None);
        let user = users::store::by_id(&tx, &id).unwrap().unwrap();
        assert_eq!(user.hashed_password.as_deref(), Some("new"));
    }

    #[test]
    fn prune_deletes_only_expired_tokens() {
        let mut conn = setup();
        let tx = conn.transaction().unwrap();
        let id = user(&tx, "p@example.com");
        let old = issue(&tx, &id, Purpose::Verify).unwrap();
        let live = issue(&tx, &id, Purpose::Verify).unwrap();
        expire(&tx, &old);
        assert_eq!(prune(&tx).unwrap(), 1);
        assert!(is_usable(&tx, &live, Purpose::Verify).unwrap());
        assert_eq!(prune(&tx).unwrap(), 0);
    }
}
