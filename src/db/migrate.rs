//! Numbered SQL migrations from `migrations/`, embedded in the binary and tracked by
//! `PRAGMA user_version` (migration N applied ⇔ `user_version >= N`).
//!
//! A shipped migration is never edited: add the next number instead. Each one runs in its own
//! `IMMEDIATE` transaction together with its `user_version` bump, so a crash leaves none half-done.

use rusqlite::{Connection, TransactionBehavior};

use super::Error;

/// One embedded migration.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. `version` must equal the position + 1.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init",
        sql: include_str!("../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_generation",
        sql: include_str!("../../migrations/0002_generation.sql"),
    },
    Migration {
        version: 3,
        name: "0003_identities",
        sql: include_str!("../../migrations/0003_identities.sql"),
    },
    Migration {
        version: 4,
        name: "0004_idempotency_work",
        sql: include_str!("../../migrations/0004_idempotency_work.sql"),
    },
    Migration {
        version: 5,
        name: "0005_account_tokens",
        sql: include_str!("../../migrations/0005_account_tokens.sql"),
    },
    Migration {
        version: 6,
        name: "0006_images",
        sql: include_str!("../../migrations/0006_images.sql"),
    },
    Migration {
        version: 7,
        name: "0007_wordpress",
        sql: include_str!("../../migrations/0007_wordpress.sql"),
    },
    Migration {
        version: 8,
        name: "0008_payments",
        sql: include_str!("../../migrations/0008_payments.sql"),
    },
    Migration {
        version: 9,
        name: "0009_admin",
        sql: include_str!("../../migrations/0009_admin.sql"),
    },
];

/// A migration with whether it has been applied, for `migrate --status`.
pub struct Status {
    pub version: u32,
    pub name: &'static str,
    pub applied: bool,
}

/// The schema version recorded in the database.
pub fn current_version(conn: &Connection) -> Result<u32, Error> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

/// Lists every known migration and whether it is applied.
pub fn status(conn: &Connection) -> Result<Vec<Status>, Error> {
    let current = current_version(conn)?;
    Ok(MIGRATIONS
        .iter()
        .map(|m| Status {
            version: m.version,
            name: m.name,
            applied: m.version <= current,
        })
        .collect())
}

/// Applies pending migrations; returns the names of those applied now.
pub fn apply(conn: &mut Connection) -> Result<Vec<&'static str>, Error> {
    let mut applied = Vec::new();
    let current = current_version(conn)?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.version);
    if current > latest {
        return Err(Error::Migration(format!(
            "database schema version {current} is newer than this binary knows ({latest}); \
             run a newer easy-writer"
        )));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        if current_version(&tx)? >= m.version {
            continue;
        }
        tx.execute_batch(m.sql)
            .map_err(|e| Error::Migration(format!("{}: {e}", m.name)))?;
        tx.pragma_update(None, "user_version", m.version)?;
        tx.commit()?;
        tracing::info!(migration = m.name, "applied migration");
        applied.push(m.name);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_sequential_and_names_match_files() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }

    #[test]
    fn apply_is_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(apply(&mut conn).unwrap().len(), MIGRATIONS.len());
        assert!(apply(&mut conn).unwrap().is_empty());
        assert!(status(&conn).unwrap().iter().all(|s| s.applied));
    }
}
