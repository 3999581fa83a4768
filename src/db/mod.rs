//! The SQLite database: one writer connection, a pool of readers, and the bridge that runs
//! their blocking work off the async workers.
//!
//! Every write goes through [`Db::write`], which opens an `IMMEDIATE` transaction on the single
//! writer (so `SQLITE_BUSY` cannot surprise a deferred transaction halfway) and commits it with
//! `synchronous=FULL` before the caller answers anyone. Readers run with WAL and never block the
//! writer. No connection is ever held across an `.await`.

pub mod migrate;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

/// How long a connection waits for a lock before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Readers kept in the pool at most; WAL lets them all read while the writer writes.
const MAX_READERS: u32 = 8;

/// Why a database call failed. Callers map these to `500`; constraint violations they expect
/// (a taken email) are matched at the call site.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database task: {0}")]
    Task(String),
    #[error("migration: {0}")]
    Migration(String),
}

impl Error {
    /// True when the error is a UNIQUE (or PRIMARY KEY) constraint violation.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Error::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    readers: r2d2::Pool<SqliteConnectionManager>,
    writer: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
}

impl Db {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub fn open(path: &Path) -> Result<Db, Error> {
        let mut writer = connect(path)?;
        migrate::apply(&mut writer)?;

        let manager = SqliteConnectionManager::file(path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(|c| init_connection(c, "NORMAL"));
        let readers = r2d2::Pool::builder()
            .max_size(MAX_READERS)
            .min_idle(Some(1))
            // Readers opened for a burst close after a minute idle, so their caches go too.
            .idle_timeout(Some(Duration::from_secs(60)))
            // A local file does not go stale like a network connection; skip the probe query.
            .test_on_check_out(false)
            .build(manager)?;
        Ok(Db {
            readers,
            writer: Arc::new(Mutex::new(writer)),
            path: Arc::new(path.to_owned()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with a reader connection on the blocking pool.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let readers = self.readers.clone();
        run_blocking(move || {
            let conn = readers.get().map_err(Error::from)?;
            f(&conn)
        })
        .await
    }

    /// Runs `f` inside an `IMMEDIATE` transaction on the writer, committing when it returns
    /// `Ok`. The commit is durable (`synchronous=FULL`) before this returns.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let writer = self.writer.clone();
        run_blocking(move || {
            let mut conn = writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(Error::from)?;
            let value = f(&tx)?;
            tx.commit().map_err(Error::from)?;
            Ok(value)
        })
        .await
    }

    /// Runs `f` with the writer connection outside any transaction (backups, checks).
    pub async fn with_writer<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let writer = self.writer.clone();
        run_blocking(move || {
            let mut conn = writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn)
        })
        .await
    }
}

/// Opens a read-write connection (creating the file and its directory if needed) with the
/// writer's pragmas. The CLI uses it directly for `migrate` and `backup`.
pub fn connect(path: &Path) -> Result<Connection, Error> {
    let open_error = |source| Error::Open {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| open_error(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_error)?;
    init_connection(&conn, "FULL").map_err(open_error)?;
    Ok(conn)
}

/// Runs blocking work on tokio's blocking pool inside the caller's tracing span, re-raising a
/// panic in the caller instead of turning it into an error nobody reads.
async fn run_blocking<T, E, F>(f: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(f)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::Task(e.to_string()).into()),
    }
}

/// Pragmas for every new connection: the busy timeout first, so the others wait for locks too.
fn init_connection(conn: &Connection, synchronous: &str) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    Ok(())
}
