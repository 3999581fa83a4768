//! SQL for the `users` table.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::User;
use crate::{db, timestamp};

/// The columns [`from_row`] reads, in order; other stores select them to build a [`User`].
pub const COLUMNS: &str = "id, email, hashed_password, name, provider, provider_id, balance, \
                           is_active, is_verified, is_admin, created_at, updated_at";
/// How many columns [`COLUMNS`] names.
pub const COLUMN_COUNT: usize = 12;

/// Builds a [`User`] from a row that starts with [`COLUMNS`].
pub fn from_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        email: r.get(1)?,
        hashed_password: r.get(2)?,
        name: r.get(3)?,
        provider: r.get(4)?,
        provider_id: r.get(5)?,
        balance: r.get(6)?,
        is_active: r.get(7)?,
        is_verified: r.get(8)?,
        is_admin: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

/// A local user to insert.
pub struct NewUser<'a> {
    pub email: &'a str,
    pub hashed_password: &'a str,
    pub name: Option<&'a str>,
    pub is_admin: bool,
}

/// Why an insert failed in a way the caller reports.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("email already registered")]
    EmailTaken,
    #[error(transparent)]
    Db(#[from] db::Error),
}

impl From<rusqlite::Error> for InsertError {
    fn from(e: rusqlite::Error) -> Self {
        InsertError::Db(e.into())
    }
}

/// A user created by signing in at Google or Yandex: no password, and verified when the
/// provider vouches for the email.
pub struct NewProviderUser<'a> {
    pub email: &'a str,
    pub name: Option<&'a str>,
    /// `google` or `yandex`.
    pub provider: &'a str,
    pub provider_id: &'a str,
    pub is_verified: bool,
}

/// Inserts a local user; the unique email index decides races between concurrent sign-ups.
pub fn insert(tx: &Connection, new: &NewUser<'_>) -> Result<User, InsertError> {
    let id = uuid::Uuid::now_v7().to_string();
    let result = tx.execute(
        "insert into users (id, email, hashed_password, name, provider, is_admin, created_at, updated_at)
         values (?1, ?2, ?3, ?4, 'local', ?5, ?6, ?6)",
        params![id, new.email, new.hashed_password, new.name, new.is_admin, timestamp::now()],
    );
    inserted(tx, &id, result)
}

/// Inserts a user created by an OAuth provider; like [`insert`], a taken email is refused.
pub fn insert_from_provider(
    tx: &Connection,
    new: &NewProviderUser<'_>,
) -> Result<User, InsertError> {
    let id = uuid::Uuid::now_v7().to_string();
    let result = tx.execute(
        "insert into users (id, email, name, provider, provider_id, is_verified, created_at, updated_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![
            id,
            new.email,
            new.name,
            new.provider,
            new.provider_id,
            new.is_verified,
            timestamp::now()
        ],
    );
    inserted(tx, &id, result)
}

fn inserted(
    tx: &Connection,
    id: &str,
    result: rusqlite::Result<usize>,
) -> Result<User, InsertError> {
    match result.map_err(db::Error::from) {
        Ok(_) => {}
        Err(e) if e.is_unique_violation() => return Err(InsertError::EmailTaken),
        Err(e) => return Err(e.into()),
    }
    Ok(by_id(tx, id)?.expect("the row was just inserted"))
}

pub fn by_id(conn: &Connection, id: &str) -> Result<Option<User>, db::Error> {
    Ok(conn
        .prepare_cached(&format!("select {COLUMNS} from users where id = ?1"))?
        .query_row([id], from_row)
        .optional()?)
}

pub fn by_email(conn: &Connection, email: &str) -> Result<Option<User>, db::Error> {
    Ok(conn
        .prepare_cached(&format!(
            "select {COLUMNS} from users where email = ?1 collate nocase"
        ))?
        .query_row([email.trim()], from_row)
        .optional()?)
}

/// Every user, oldest first.
pub fn list(conn: &Connection) -> Result<Vec<User>, db::Error> {
    let mut stmt = conn.prepare(&format!(
        "select {COLUMNS} from users order by created_at, id"
    ))?;
    let users = stmt.query_map([], from_row)?.collect::<Result<_, _>>()?;
    Ok(users)
}

/// Blocks or unblocks a user; false when no such email exists.
pub fn set_active(tx: &Connection, email: &str, active: bool) -> Result<bool, db::Error> {
    let changed = tx.execute(
        "update users set is_active = ?1, updated_at = ?2 where email = ?3 collate nocase",
        params![active, timestamp::now(), email.trim()],
    )?;
    Ok(changed == 1)
}

/// Grants or revokes the admin flag.
pub fn set_admin(tx: &Connection, id: &str, admin: bool) -> Result<(), db::Error> {
    tx.execute(
        "update users set is_admin = ?2, updated_at = ?3 where id = ?1",
        params![id, admin, timestamp::now()],
    )?;
    Ok(())
}

/// Sets (or clears) the display name.
pub fn set_name(tx: &Connection, id: &str, name: Option<&str>) -> Result<(), db::Error> {
    tx.execute(
        "update users set name = ?2, updated_at = ?3 where id = ?1",
        params![id, name, timestamp::now()],
    )?;
    Ok(())
}

/// Replaces the password hash.
pub fn set_password(tx: &Connection, id: &str, hashed_password: &str) -> Result<(), db::Error> {
    tx.execute(
        "update users set hashed_password = ?2, updated_at = ?3 where id = ?1",
        params![id, hashed_password, timestamp::now()],
    )?;
    Ok(())
}

/// Removes the password: the account then signs in only through a provider, or after a
/// password reset.
pub fn remove_password(tx: &Connection, id: &str) -> Result<(), db::Error> {
    tx.execute(
        "update users set hashed_password = null, updated_at = ?2 where id = ?1",
        params![id, timestamp::now()],
    )?;
    Ok(())
}

/// Marks the email as verified (by a provider, a letter or the operator).
pub fn set_verified(tx: &Connection, id: &str) -> Result<(), db::Error> {
    tx.execute(
        "update users set is_verified = 1, updated_at = ?2 where id = ?1 and is_verified = 0",
        params![id, timestamp::now()],
    )?;
    Ok(())
}
