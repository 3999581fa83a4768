//! SQL for sign-in identities (`user_identities`) and the find, link or create decision,
//! taken inside one write so that two callbacks for the same person cannot make two users.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Error, Profile, Provider};
use crate::auth::store::{self as sessions, Issued};
use crate::billing::ledger;
use crate::users::{self, store::InsertError};
use crate::{db, timestamp};

/// How a sign-in at a provider found its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// The identity was known.
    Returning,
    /// A user with the same, provider-verified email now has this identity too.
    Linked,
    /// Like `Linked`, but the account's own email had never been verified: whoever set its
    /// password never proved the address, so the password was removed and every session
    /// revoked before the link (CONTRACT §4, linking).
    Reclaimed,
    /// A new user was created from the profile.
    Created,
}

/// A signed-in user and the session just started for them.
pub struct SignedIn {
    pub user_id: String,
    pub issued: Issued,
    pub how: How,
}

/// Finds, links or creates the user for `profile` and starts a session (CONTRACT §4, linking):
/// the same provider and provider id is that user; else a user with the same email gets this
/// identity only if the provider verified the email (and, when the account's own email was
/// never verified, loses its password and sessions first); else a new user, with the signup
/// bonus.
pub fn sign_in(
    tx: &Connection,
    provider: Provider,
    profile: &Profile,
    signup_bonus: i64,
) -> Result<SignedIn, Error> {
    let email = profile.email.as_str();
    let (user, how) = if let Some(user) = by_identity(tx, provider, &profile.provider_id)? {
        if !user.is_active {
            return Err(Error::Inactive);
        }
        touch(tx, provider, &profile.provider_id, email)?;
        if profile.email_verified && user.email.eq_ignore_ascii_case(email) {
            users::store::set_verified(tx, &user.id)?;
        }
        (user, How::Returning)
    } else if let Some(user) = users::store::by_email(tx, email)? {
        // Checked before `is_active`: an unverified claim learns nothing about the account.
        if !profile.email_verified || has_identity(tx, &user.id, provider)? {
            return Err(Error::AccountExists);
        }
        if !user.is_active {
            return Err(Error::Inactive);
        }
        // A local account nobody proved the email of may have been registered by someone
        // waiting for its owner: the one who just proved the address takes it over alone.
        let how = if user.is_verified {
            How::Linked
        } else {
            users::store::remove_password(tx, &user.id)?;
            sessions::revoke_all_sessions(tx, &user.id, "taken over by the verified email owner")?;
            How::Reclaimed
        };
        insert(tx, provider, &profile.provider_id, &user.id, email)?;
        users::store::set_verified(tx, &user.id)?;
        (user, how)
    } else {
        let new = users::store::NewProviderUser {
            email,
            name: profile.name.as_deref(),
            provider: provider.as_str(),
            provider_id: &profile.provider_id,
            is_verified: profile.email_verified,
        };
        let user = users::store::insert_from_provider(tx, &new).map_err(|e| match e {
            InsertError::EmailTaken => Error::Conflict,
            InsertError::Db(e) => Error::Db(e),
        })?;
        insert(tx, provider, &profile.provider_id, &user.id, email)?;
        ledger::signup_bonus(tx, &user.id, signup_bonus)
            .map_err(|e| Error::Internal(anyhow::Error::new(e).context("signup bonus")))?;
        (user, How::Created)
    };
    let issued = sessions::start_session(tx, &user.id)?;
    Ok(SignedIn {
        user_id: user.id,
        issued,
        how,
    })
}

/// The user holding this identity.
fn by_identity(
    conn: &Connection,
    provider: Provider,
    provider_id: &str,
) -> Result<Option<users::User>, db::Error> {
    let user_id: Option<String> = conn
        .prepare_cached(
            "select user_id from user_identities where provider = ?1 and provider_id = ?2",
        )?
        .query_row(params![provider.as_str(), provider_id], |r| r.get(0))
        .optional()?;
    match user_id {
        Some(id) => users::store::by_id(conn, &id),
        None => Ok(None),
    }
}

fn has_identity(conn: &Connection, user_id: &str, provider: Provider) -> Result<bool, db::Error> {
    Ok(conn
        .prepare_cached(
            "select exists(select 1 from user_identities where user_id = ?1 and provider = ?2)",
        )?
        .query_row(params![user_id, provider.as_str()], |r| r.get(0))?)
}

/// Adds an identity; a unique violation (the identity, or a second one at the same provider
/// for this user) is a [`Error::Conflict`] and writes nothing.
fn insert(
    tx: &Connection,
    provider: Provider,
    provider_id: &str,
    user_id: &str,
    email: &str,
) -> Result<(), Error> {
    let result = tx
        .prepare_cached(
            "insert into user_identities (provider, provider_id, user_id, email, created_at, updated_at)
             values (?1, ?2, ?3, ?4, ?5, ?5)",
        )?
        .execute(params![provider.as_str(), provider_id, user_id, email, timestamp::now()]);
    match result.map_err(db::Error::from) {
        Ok(_) => Ok(()),
        Err(e) if e.is_unique_violation() => Err(Error::Conflict),
        Err(e) => Err(e.into()),
    }
}

/// Records the email the provider reports now (people change them).
fn touch(
    tx: &Connection,
    provider: Provider,
    provider_id: &str,
    email: &str,
) -> Result<(), db::Error> {
    tx.prepare_cached(
        "update user_identities set email = ?3, updated_at = ?4
         where provider = ?1 and provider_id = ?2",
    )?
    .execute(params![
        provider.as_str(),
        provider_id,
        email,
        timestamp::now()
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::Email;

    fn profile(id: &str, email: &str, verified: bool) -> Profile {
        Profile {
            provider_id: id.into(),
            email: Email::parse(email).unwrap(),
            email_verified: verified,
            name: Some("Имя".into()),
        }
    }

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("select count(*) from {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn find_link_create_and_refuse() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::migrate::apply(&mut conn).unwrap();
        let tx = conn.transaction().unwrap();

        let created = sign_in(&tx, Provider::Google, &profile("g1", "a@x.io", true), 5).unwrap();
        assert_eq!(created.how, How::Created);
        let again = sign_in(&tx, Provider::Google, &profile("g1", "A@x.io", true), 5).unwrap();
        assert_eq!(
            (again.user_id.as_str(), again.how),
            (created.user_id.as_str(), How::Returning)
        );
        let linked = sign_in(&tx, Provider::Yandex, &profile("y1", "a@X.io", true), 5).unwrap();
        assert_eq!(
            (linked.user_id.as_str(), linked.how),
            (created.user_id.as_str(), How::Linked)
        );
        // A second Google account claiming the same (verified) email does not replace the link.
        assert!(matches!(
            sign_in(&tx, Provider::Google, &profile("g2", "a@x.io", true), 5),
            Err(Error::AccountExists)
        ));
        assert!(matches!(
            sign_in(&tx, Provider::Yandex, &profile("y2", "a@x.io", false), 5),
            Err(Error::AccountExists)
        ));
        assert_eq!(count(&tx, "users"), 1);
        assert_eq!(count(&tx, "user_identities"), 2);
        // The bonus was paid once, at creation.
        assert_eq!(ledger::sum(&tx, &created.user_id).unwrap(), 5);
    }

    fn local_user(tx: &Connection, email: &str) -> (String, Issued) {
        let user = users::store::insert(
            tx,
            &users::store::NewUser {
                email,
                hashed_password: "$argon2id$someone's",
                name: None,
                is_admin: false,
            },
        )
        .unwrap();
        let session = sessions::start_session(tx, &user.id).unwrap();
        (user.id, session)
    }

    fn password_and_live_sessions(tx: &Connection, user_id: &str) -> (Option<String>, Vec<String>) {
        let password = tx
            .query_row(
                "select hashed_password from users where id = ?1",
                [user_id],
                |r| r.get(0),
            )
            .unwrap();
        let mut stmt = tx
            .prepare("select id from auth_sessions where user_id = ?1 and revoked_at is null")
            .unwrap();
        let live = stmt
            .query_map([user_id], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (password, live)
    }

    #[test]
    fn linking_to_an_unverified_account_removes_its_password_and_sessions_first() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::migrate::apply(&mut conn).unwrap();
        let tx = conn.transaction().unwrap();

        // Someone registered the victim's address and holds a session of it.
        let (victim, planted) = local_user(&tx, "victim@x.io");
        let owner = sign_in(
            &tx,
            Provider::Google,
            &profile("g1", "victim@x.io", true),
            0,
        )
        .unwrap();
        assert_eq!(
            (owner.user_id.as_str(), owner.how),
            (victim.as_str(), How::Reclaimed)
        );
        let (password, live) = password_and_live_sessions(&tx, &victim);
        assert_eq!(password, None);
        assert_eq!(
            live,
            std::slice::from_ref(&owner.issued.session_id),
            "only the owner's session"
        );
        assert!(matches!(
            sessions::rotate(&tx, &planted.refresh_token, 10).unwrap(),
            sessions::Rotation::Revoked
        ));
        assert!(
            users::store::by_id(&tx, &victim)
                .unwrap()
                .unwrap()
                .is_verified
        );

        // An account whose email was verified keeps its password and sessions.
        let (verified, kept) = local_user(&tx, "owner@x.io");
        users::store::set_verified(&tx, &verified).unwrap();
        let linked = sign_in(&tx, Provider::Yandex, &profile("y1", "owner@x.io", true), 0).unwrap();
        assert_eq!(
            (linked.user_id.as_str(), linked.how),
            (verified.as_str(), How::Linked)
        );
        let (password, mut live) = password_and_live_sessions(&tx, &verified);
        assert!(password.is_some());
        live.sort();
        let mut expected = vec![kept.session_id, linked.issued.session_id];
        expected.sort();
        assert_eq!(live, expected);
    }
}
