//! The SQLite database: one writer connection, a pool of readers, and the bridge that runs
//! their blocking work off the async workers.
//!
//! Every write goes through [`Db::write`]: one writer thread owns the write connection and runs
//! queued writes in `IMMEDIATE` transactions (so `SQLITE_BUSY` cannot surprise a deferred
//! transaction halfway), committed with `synchronous=FULL` before any caller hears back. Writes
//! that queue up while a commit is on disk share the next transaction, each in its own
//! savepoint (group commit): a failing write is rolled back alone, and one fsync serves many.
//! Readers run with WAL and never block the writer. No connection is held across an `.await`.

pub mod migrate;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags};

/// How long a connection waits for a lock before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Readers kept in the pool at most; WAL lets them all read while the writer writes.
const MAX_READERS: u32 = 8;
/// Most writes that share one transaction.
const MAX_BATCH: usize = 128;

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

/// A queued write: runs inside the batch's transaction (`None`: no transaction could be
/// begun, so it must not run) and returns what to do once the transaction's fate is known.
type Job = Box<dyn FnOnce(Option<&Connection>) -> Settle + Send>;
/// Delivers a job's result: `Ok` when the batch committed, else the commit's error.
type Settle = Box<dyn FnOnce(Result<(), &rusqlite::Error>) + Send>;

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    readers: r2d2::Pool<SqliteConnectionManager>,
    writes: crossbeam_channel::Sender<Job>,
    path: Arc<PathBuf>,
}

impl Db {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub fn open(path: &Path) -> Result<Db, Error> {
        let mut writer = connect(path)?;
        migrate::apply(&mut writer)?;
        let (writes, queue) = crossbeam_channel::unbounded::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(writer, &queue))
            .map_err(|e| Error::Task(format!("cannot start the writer thread: {e}")))?;

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
            writes,
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

    /// Runs `f` inside a write transaction (its own savepoint of a possibly shared
    /// `IMMEDIATE` transaction). `Ok` keeps its changes, `Err` rolls them back; either way the
    /// result arrives only after the transaction is durably committed (`synchronous=FULL`).
    /// A panic in `f` rolls its changes back and is re-raised here.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<std::thread::Result<Result<T, E>>>();
        let span = tracing::Span::current();
        let job: Job = Box::new(move |conn: Option<&Connection>| {
            let outcome = match conn {
                Some(conn) => span.in_scope(|| in_savepoint(conn, f)),
                None => Ok(Err(Error::Task(
                    "could not begin a write transaction".into(),
                )
                .into())),
            };
            Box::new(move |commit: Result<(), &rusqlite::Error>| {
                let outcome = match (outcome, commit) {
                    (Ok(Ok(value)), Ok(())) => Ok(Ok(value)),
                    (Ok(Ok(_)), Err(e)) => {
                        Ok(Err(Error::Task(format!("commit failed: {e}")).into()))
                    }
                    (other, _) => other,
                };
                let _ = tx.send(outcome);
            })
        });
        self.writes
            .send(job)
            .map_err(|_| Error::Task("the writer thread has stopped".into()))?;
        match rx.await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err(Error::Task("the writer thread dropped a write".into()).into()),
        }
    }
}

/// Runs one write in a savepoint of the open transaction, keeping or undoing its changes.
fn in_savepoint<T, E, F>(conn: &Connection, f: F) -> std::thread::Result<Result<T, E>>
where
    F: FnOnce(&Connection) -> Result<T, E>,
    E: From<Error>,
{
    if let Err(e) = conn.execute_batch("savepoint write") {
        return Ok(Err(Error::from(e).into()));
    }
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)));
    let close = match &outcome {
        Ok(Ok(_)) => conn.execute_batch("release write"),
        _ => conn.execute_batch("rollback to write; release write"),
    };
    match (outcome, close) {
        (Ok(Ok(_)), Err(e)) => Ok(Err(Error::from(e).into())),
        (outcome, _) => outcome,
    }
}

/// The writer thread: takes every write that is waiting, runs them in one transaction, commits
/// once, then answers each. Ends when the last `Db` handle is dropped.
fn write_loop(conn: Connection, queue: &crossbeam_channel::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("begin immediate") {
            tracing::error!(error = %e, "cannot begin a write transaction");
            for job in batch {
                job(None)(Err(&e));
            }
            continue;
        }
        let settles: Vec<Settle> = batch.into_iter().map(|job| job(Some(&conn))).collect();
        let committed = conn.execute_batch("commit");
        if committed.is_err() {
            let _ = conn.execute_batch("rollback");
        }
        for settle in settles {
            settle(committed.as_ref().map(|_| ()));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        (dir, db)
    }

    async fn count(db: &Db) -> i64 {
        db.read(|c| Ok::<i64, Error>(c.query_row("select count(*) from users", [], |r| r.get(0))?))
            .await
            .unwrap()
    }

    fn insert(c: &Connection, email: &str) -> Result<(), Error> {
        c.execute(
            "insert into users (id, email, created_at, updated_at) values (?1, ?1, 'now', 'now')",
            [email],
        )?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_commit_alone_or_together_and_failures_roll_back_alone() {
        let (_dir, db) = db();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    db.write(move |c| {
                        insert(c, &format!("u{i}@x.io"))?;
                        if i % 10 == 0 {
                            // A unique violation after a successful insert: both are undone.
                            insert(c, &format!("u{i}@x.io"))?;
                        }
                        Ok::<_, Error>(i)
                    })
                    .await
                })
            })
            .collect();
        let mut failed = 0;
        for task in tasks {
            if task.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 20);
        assert_eq!(count(&db).await, 180);
    }

    #[tokio::test]
    async fn a_panicking_write_is_rolled_back_and_re_raised() {
        let (_dir, db) = db();
        let db2 = db.clone();
        let panicked = tokio::spawn(async move {
            db2.write(|c| {
                insert(c, "p@x.io")?;
                if c.is_autocommit() {
                    return Err(Error::Task("not in a transaction".into()));
                }
                panic!("boom");
                #[allow(unreachable_code)]
                Ok::<(), Error>(())
            })
            .await
        })
        .await;
        assert!(panicked.unwrap_err().is_panic());
        assert_eq!(count(&db).await, 0);
        db.write(|c| insert(c, "ok@x.io")).await.unwrap();
        assert_eq!(count(&db).await, 1);
    }
}
