//! The audit log: every action taken in the admin UI, written in the transaction of the
//! change it records.

use rusqlite::{Connection, params};

use super::session::Admin;
use crate::{db, timestamp};

pub fn record(
    tx: &Connection,
    admin: &Admin,
    action: &str,
    target: Option<&str>,
    detail: Option<&str>,
) -> Result<(), db::Error> {
    tx.prepare_cached(
        "insert into admin_audit (id, admin_id, admin_email, action, target, detail, created_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        uuid::Uuid::now_v7().to_string(),
        admin.user.id,
        admin.user.email,
        action,
        target,
        detail,
        timestamp::now()
    ])?;
    Ok(())
}
