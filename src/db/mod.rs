//! The SQLite database: one writer connection, a pool of readers, and the bridge that runs
//! their blocking work off the async workers.
//!
//! Every write goes through [`Db::write`]: one writer thread owns the write connection and runs
//! queued writes in `IMMEDIATE` transactions (so `SQLITE_BUSY` cannot surprise a deferred
//! transaction halfway), committed with `synchronous=FULL` before any caller hears back. Writes
//! that queue up while a commit is on disk share the next transaction, each in its own
//! savepoint (group commit): a failing write is rolled back alone, and one fsync serves many.
//! If SQLite rolls the shared transaction back by itself (disk full, I/O error), every write
//! run in it is answered with an error and the rest run in the next one (see `run_batch`).
//! Readers run with WAL and never block the writer. No connection is held across an `.await`.

pub mod backup;
pub mod migrate;

use std::collections::VecDeque;
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
/// begun, so it must not run) and hands back what to do once the transaction's fate is known.
type Job = Box<dyn FnOnce(Option<&Connection>) -> Ran + Send>;
/// Delivers a job's result: `Ok` when the batch committed, else why its changes are gone.
type Settle = Box<dyn FnOnce(Result<(), &str>) + Send>;

/// A write that has run, waiting for its transaction's fate.
struct Ran {
    settle: Settle,
    /// False when its savepoint could not be closed (a failed `rollback to` or `release`): the
    /// transaction then holds changes its caller is told were undone, so it must not commit.
    closed: bool,
}

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
    /// A panic in `f` rolls its changes back and is re-raised here. `f` must not end the
    /// transaction itself (`commit`, `rollback`, `release` of a savepoint it did not open).
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<std::thread::Result<Result<T, E>>>();
        let span = tracing::Span::current();
        let job: Job = Box::new(move |conn: Option<&Connection>| {
            let (outcome, closed) = match conn {
                Some(conn) => span.in_scope(|| in_savepoint(conn, f)),
                None => (
                    Ok(Err(Error::Task(
                        "could not begin a write transaction".into(),
                    )
                    .into())),
                    true,
                ),
            };
            let settle: Settle = Box::new(move |fate: Result<(), &str>| {
                let outcome = match (outcome, fate) {
                    (Ok(Ok(value)), Ok(())) => Ok(Ok(value)),
                    (Ok(Ok(_)), Err(why)) => Ok(Err(Error::Task(why.to_owned()).into())),
                    (other, _) => other,
                };
                let _ = tx.send(outcome);
            });
            Ran { settle, closed }
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
/// Also says whether the savepoint was closed as intended (see [`Ran::closed`]).
fn in_savepoint<T, E, F>(conn: &Connection, f: F) -> (std::thread::Result<Result<T, E>>, bool)
where
    F: FnOnce(&Connection) -> Result<T, E>,
    E: From<Error>,
{
    // Outside a transaction `savepoint` would begin one of its own and `release` commit it
    // alone; the write loop never lets that happen, this is the last guard.
    if conn.is_autocommit() {
        let e = Error::Task("no write transaction is open".into());
        return (Ok(Err(e.into())), true);
    }
    if let Err(e) = conn.execute_batch("savepoint write") {
        return (Ok(Err(Error::from(e).into())), true);
    }
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)));
    if conn.is_autocommit() {
        // SQLite rolled the whole transaction back, this savepoint with it; the write loop
        // sees the same and answers the batch.
        return (outcome, true);
    }
    let close = match &outcome {
        Ok(Ok(_)) => conn.execute_batch("release write"),
        _ => conn.execute_batch("rollback to write; release write"),
    };
    match (outcome, close) {
        (outcome, Ok(())) => (outcome, true),
        (Ok(Ok(_)), Err(e)) => (Ok(Err(Error::from(e).into())), false),
        (outcome, Err(_)) => (outcome, false),
    }
}

/// The writer thread: takes every write that is waiting (after any carried over), runs them in
/// one transaction, commits once, then answers each. Ends when the last `Db` handle is dropped
/// and nothing is left to run.
fn write_loop(conn: Connection, queue: &crossbeam_channel::Receiver<Job>) {
    let mut carried = VecDeque::new();
    loop {
        let mut batch = std::mem::take(&mut carried);
        if batch.is_empty() {
            match queue.recv() {
                Ok(job) => batch.push_back(job),
                Err(_) => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push_back(job),
                Err(_) => break,
            }
        }
        carried = run_batch(&conn, batch);
    }
}

/// Runs one batch in one `IMMEDIATE` transaction and answers every write that ran. Returns the
/// writes that did not run because the transaction was lost under them.
///
/// SQLite may roll a whole transaction back by itself (SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM
/// …: "Response To Errors Within A Transaction" in its docs); a savepoint that cannot be undone
/// forces us to. Either way every write run so far in the batch is lost and answered so, and
/// none of the rest may run now: with no transaction open, each statement would commit alone.
/// They are carried into the next transaction rather than failed: they never touched the
/// database, and failing them would turn one write's disk-full error into errors for callers
/// that had nothing to do with it. Each lost batch answers at least the write during which
/// it was lost, so carrying always ends.
fn run_batch(conn: &Connection, mut batch: VecDeque<Job>) -> VecDeque<Job> {
    end_transaction(conn);
    if let Err(e) = conn.execute_batch("begin immediate") {
        tracing::error!(error = %e, "cannot begin a write transaction");
        let why = format!("could not begin a write transaction: {e}");
        for job in batch {
            (job(None).settle)(Err(&why));
        }
        return VecDeque::new();
    }
    let mut ran = Vec::with_capacity(batch.len());
    while let Some(job) = batch.pop_front() {
        let Ran { settle, closed } = job(Some(conn));
        ran.push(settle);
        let why = if conn.is_autocommit() {
            "SQLite rolled the write transaction back after an error (disk full, I/O error or \
             the like); this write was lost with it"
        } else if !closed {
            "a write in the same transaction could not be undone, so the transaction was \
             rolled back; this write was lost with it"
        } else {
            continue;
        };
        end_transaction(conn);
        tracing::error!(
            lost = ran.len(),
            carried = batch.len(),
            "write transaction lost; its writes are answered with an error"
        );
        for settle in ran {
            settle(Err(why));
        }
        return batch;
    }
    let committed = conn.execute_batch("commit").map_err(|e| {
        tracing::error!(error = %e, "commit failed");
        end_transaction(conn);
        format!("commit failed: {e}")
    });
    for settle in ran {
        settle(committed.as_ref().map(|_| ()).map_err(String::as_str));
    }
    VecDeque::new()
}

/// Rolls back whatever transaction is still open (after a failed commit or a lost savepoint),
/// so the next batch can begin.
fn end_transaction(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("rollback")
    {
        tracing::error!(error = %e, "cannot roll back the write transaction");
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

    type BoxedWrite = Box<dyn FnOnce(&Connection) -> Result<(), Error> + Send>;

    /// Creates the `blobs` table the batch tests fill.
    async fn blobs(db: &Db) {
        db.write(|c| {
            c.execute_batch("create table blobs (id integer primary key, data blob not null)")?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    }

    /// Runs `setup` on the writer and keeps the writer busy until `writes` have been queued
    /// behind it, so they all share the next batch, in the order given.
    async fn one_batch<F>(
        db: &Db,
        setup: impl FnOnce(&Connection) -> Result<(), Error> + Send + 'static,
        writes: Vec<F>,
    ) -> Vec<Result<(), Error>>
    where
        F: FnOnce(&Connection) -> Result<(), Error> + Send + 'static,
    {
        let (started, is_running) = tokio::sync::oneshot::channel::<()>();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let hold = {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(move |c| {
                    setup(c)?;
                    let _ = started.send(());
                    let _ = held.recv();
                    Ok::<_, Error>(())
                })
                .await
            })
        };
        is_running.await.unwrap();
        let mut tasks = Vec::new();
        for (queued, f) in writes.into_iter().enumerate() {
            let db2 = db.clone();
            tasks.push(tokio::spawn(async move { db2.write(f).await }));
            while db.writes.len() <= queued {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        release.send(()).unwrap();
        hold.await.unwrap().unwrap();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    }

    async fn blob_ids(db: &Db) -> Vec<i64> {
        db.read(|c| {
            let mut stmt = c.prepare("select id from blobs order by id")?;
            let ids = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok::<_, Error>(ids)
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_disk_full_rollback_mid_batch_loses_no_answer_and_commits_nothing_alone() {
        let (_dir, db) = db();
        blobs(&db).await;
        // A full disk, made portable: the writer may grow the file by 12 pages only. SQLite
        // answers a single-row insert that needs a 13th page with SQLITE_FULL and, having no
        // statement journal for it, rolls the whole transaction back (sqlite3VdbeHalt).
        let setup = |c: &Connection| {
            let pages: i64 = c.query_row("pragma page_count", [], |r| r.get(0))?;
            c.pragma_update(None, "max_page_count", pages + 12)?;
            Ok(())
        };
        let writes = (0..40i64)
            .map(|i| {
                move |c: &Connection| {
                    c.execute(
                        "insert into blobs (id, data) values (?1, zeroblob(3000))",
                        [i],
                    )?;
                    Ok(())
                }
            })
            .collect();
        let results = one_batch(&db, setup, writes).await;
        let ids = blob_ids(&db).await;
        // Every answer is the truth: Ok ⇔ the row is there.
        for (i, result) in results.iter().enumerate() {
            assert_eq!(
                result.is_ok(),
                ids.contains(&(i as i64)),
                "write {i} answered {result:?}, committed ids {ids:?}"
            );
        }
        let full = results
            .iter()
            .filter(|r| {
                r.as_ref()
                    .is_err_and(|e| e.to_string() == "database or disk is full")
            })
            .count();
        assert!(full >= 1, "no write hit the page limit: {results:?}");
        let lost = results
            .iter()
            .filter(|r| {
                r.as_ref()
                    .is_err_and(|e| e.to_string().contains("was lost"))
            })
            .count();
        assert!(lost >= 1, "no write was lost with its batch: {results:?}");
        // The writer is still usable once there is room again.
        db.write(|c| {
            c.pragma_update(None, "max_page_count", 1_000_000)?;
            c.execute("insert into blobs (id, data) values (1000, x'00')", [])?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert!(blob_ids(&db).await.contains(&1000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_sqlite_rolls_the_batch_back_earlier_writes_fail_and_later_ones_run_in_a_new_transaction()
     {
        let (_dir, db) = db();
        blobs(&db).await;
        let insert = |id: i64| {
            move |c: &Connection| {
                c.execute("insert into blobs (id, data) values (?1, x'00')", [id])?;
                Ok::<_, Error>(())
            }
        };
        // `or rollback` makes a constraint failure end the whole transaction, as SQLite does
        // by itself on SQLITE_FULL or SQLITE_IOERR.
        let rolls_back = |swallow: bool| {
            move |c: &Connection| {
                c.execute("insert into blobs (id, data) values (100, x'00')", [])?;
                let again = c.execute(
                    "insert or rollback into blobs (id, data) values (100, x'00')",
                    [],
                );
                if swallow {
                    // A write that ignores the error and says Ok must not be believed.
                    return Ok(());
                }
                again?;
                Ok(())
            }
        };
        let writes: Vec<BoxedWrite> = vec![
            Box::new(insert(1)),
            Box::new(rolls_back(false)),
            Box::new(insert(2)),
            Box::new(insert(3)),
            Box::new(rolls_back(true)),
            Box::new(insert(4)),
        ];
        let results = one_batch(&db, |_| Ok(()), writes).await;
        let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [false, false, false, false, false, true], "{results:?}");
        assert_eq!(blob_ids(&db).await, [4]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_whose_savepoint_cannot_be_undone_takes_its_batch_down_not_the_next() {
        let (_dir, db) = db();
        blobs(&db).await;
        let insert = |id: i64| {
            move |c: &Connection| {
                c.execute("insert into blobs (id, data) values (?1, x'00')", [id])?;
                Ok::<_, Error>(())
            }
        };
        // Releasing the writer's savepoint merges the write into the transaction, so the
        // writer's `rollback to` fails; committing would keep a write reported as failed.
        let unreleasable = |c: &Connection| {
            c.execute("insert into blobs (id, data) values (100, x'00')", [])?;
            c.execute_batch("release write")?;
            Err(Error::Task("refused after its changes".into()))
        };
        let writes: Vec<BoxedWrite> = vec![
            Box::new(insert(1)),
            Box::new(unreleasable),
            Box::new(insert(2)),
        ];
        let results = one_batch(&db, |_| Ok(()), writes).await;
        let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [false, false, true], "{results:?}");
        assert_eq!(blob_ids(&db).await, [2]);
    }
}
