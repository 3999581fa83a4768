//! Copies of the database for the operator: `backup` writes one while the server runs,
//! `restore` puts one back while it is stopped (CONTRACT §1).
//!
//! Both hold password hashes, so no file they create is ever readable by others, not even
//! for a moment: the copy is made inside a private directory or created `0600`, then renamed
//! or linked into place. A restore checks the whole file before it touches the current
//! database, and keeps that database beside the new one.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::migrate;

/// How long `restore` waits for the current database's lock before deciding that another
/// process (a running server) has it open. Open connections hold it for their whole life, so
/// waiting longer would not help.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Writes a consistent copy of the database at `db_path` to `to`, which must not exist yet.
/// Works while the server runs (`VACUUM INTO` reads one snapshot); the file is `0600`.
pub fn backup(db_path: &Path, to: &Path) -> anyhow::Result<()> {
    if fs::symlink_metadata(to).is_ok() {
        bail!("{} already exists", to.display());
    }
    if !db_path.exists() {
        bail!("no database at {}", db_path.display());
    }
    let name = to
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", to.display()))?;
    let dir = parent_dir(to);
    // `VACUUM INTO` creates its file with the umask's mode; inside a 0700 directory nobody
    // else can open it before it is made 0600.
    let private = Private::dir(dir.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
    .with_context(|| format!("cannot write in {}", dir.display()))?;
    let partial = private.path.join(name);
    let conn = super::connect(db_path)?;
    conn.execute("vacuum into ?1", [partial.to_string_lossy()])
        .with_context(|| format!("cannot write backup to {}", to.display()))?;
    drop(conn);
    set_private_mode(&partial)?;
    File::open(&partial)
        .and_then(|f| f.sync_all())
        .context("cannot flush the backup to disk")?;
    // A hard link never replaces an existing file (unlike rename), so a file that appeared
    // meanwhile is refused, not overwritten.
    match fs::hard_link(&partial, to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            bail!("{} already exists", to.display())
        }
        // A file system without hard links.
        Err(_) => fs::rename(&partial, to)
            .with_context(|| format!("cannot move the backup to {}", to.display()))?,
    }
    sync_dir(dir);
    Ok(())
}

/// What `restore` did.
pub struct Restored {
    /// The schema version the backup had.
    pub version: u32,
    /// The schema version it has now (later when migrations were applied).
    pub migrated_to: u32,
    /// Where the database it replaced is kept, if there was one.
    pub previous: Option<PathBuf>,
    /// Why the database it replaced could not be read, when it was damaged (it is kept all
    /// the same, with its write-ahead log if it had one).
    pub replaced_damaged: Option<String>,
}

/// Replaces the database at `db_path` with the Easy Writer database in `from`. The server
/// must be stopped: a database another process has open is refused. The file is checked
/// (SQLite integrity check, a schema version this binary knows, the tables of that version)
/// and migrated on a private copy next to the database; only then is the current database
/// kept as `<name>.before-restore-<UTC time>` and the copy renamed into its place. On any
/// error the current database is left as it was.
pub fn restore(db_path: &Path, from: &Path) -> anyhow::Result<Restored> {
    let meta = fs::metadata(from).with_context(|| format!("cannot read {}", from.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", from.display());
    }
    if db_path.exists() && same_file(db_path, from) {
        bail!("{} is the current database", from.display());
    }
    let wal = sidecar(from, "-wal");
    if fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        bail!(
            "{} has a write-ahead log beside it ({}): it is a live database, not a backup; \
             make one with `easy-writer backup`",
            from.display(),
            wal.display()
        );
    }
    let name = db_path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", db_path.display()))?
        .to_string_lossy()
        .into_owned();
    let dir = parent_dir(db_path);
    create_private_dir(dir)?;

    // 1. A private copy beside the database, checked and migrated there.
    let copy = Private::file(dir.join(format!(".{name}.restore-{}", std::process::id())));
    copy_private(from, &copy.path)
        .with_context(|| format!("cannot copy {} into {}", from.display(), dir.display()))?;
    let (version, migrated_to) = check_and_migrate(&copy.path, from)?;

    // 2. Nobody else may have the current database open; its log is folded in first.
    let current_exists = db_path.exists();
    let replaced_damaged = if current_exists {
        take_over(db_path)?
    } else {
        None
    };

    // 3. Keep the current database, then put the copy in its place in one rename.
    let previous = if current_exists {
        Some(replace_keeping(db_path, &copy.path, dir, &name)?)
    } else {
        fs::rename(&copy.path, db_path)
            .with_context(|| format!("cannot create {}", db_path.display()))?;
        None
    };
    copy.keep();
    sync_dir(dir);
    Ok(Restored {
        version,
        migrated_to,
        previous,
        replaced_damaged,
    })
}

/// Checks that the private copy at `path` (of the operator's `from`) is an Easy Writer
/// database, makes it a single self-contained file, and applies pending migrations.
/// Returns its schema version before and after.
fn check_and_migrate(path: &Path, from: &Path) -> anyhow::Result<(u32, u32)> {
    let shown = from.display();
    let latest = migrate::MIGRATIONS.last().map_or(0, |m| m.version);
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {shown} as a database"))?;
    let problems = integrity_problems(&conn).map_err(|e| match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => anyhow!("{shown} is not an SQLite database"),
        Some(ErrorCode::DatabaseCorrupt) => anyhow!("{shown} is damaged: {e}"),
        _ => anyhow!("{shown} cannot be read as a database: {e}"),
    })?;
    if !problems.is_empty() {
        bail!("{shown} is damaged: {}", problems.join("; "));
    }
    let version = migrate::current_version(&conn)?;
    if version == 0 {
        bail!("{shown} is not an Easy Writer database (it has no schema version)");
    }
    if version > latest {
        bail!(
            "{shown} was written by a newer easy-writer (schema version {version}; this one \
             knows up to {latest})"
        );
    }
    let missing = missing_tables(&conn, version)?;
    if !missing.is_empty() {
        bail!(
            "{shown} is not an Easy Writer database (schema version {version} but no table {})",
            missing.join(", ")
        );
    }
    // A backup may be in WAL mode (a copied database file); the restored file must not
    // depend on a log beside it. Foreign keys as the server migrates.
    conn.pragma_update(None, "journal_mode", "DELETE")
        .and_then(|()| conn.pragma_update(None, "foreign_keys", "ON"))
        .with_context(|| format!("cannot prepare the copy of {shown}"))?;
    migrate::apply(&mut conn).with_context(|| format!("cannot migrate the copy of {shown}"))?;
    let migrated_to = migrate::current_version(&conn)?;
    conn.close()
        .map_err(|(_, e)| e)
        .with_context(|| format!("cannot close the copy of {shown}"))?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .context("cannot flush the restored copy to disk")?;
    Ok((version, migrated_to))
}

/// `PRAGMA integrity_check`: empty when the file is sound, else its first few findings.
fn integrity_problems(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("pragma integrity_check(5)")?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(if rows == ["ok"] { Vec::new() } else { rows })
}

/// The tables that migrations 1..=`version` create and `conn` lacks. The expected set comes
/// from running those migrations on an empty in-memory database, so it cannot drift.
fn missing_tables(conn: &Connection, version: u32) -> anyhow::Result<Vec<String>> {
    let expected = Connection::open_in_memory()?;
    for m in migrate::MIGRATIONS
        .iter()
        .take_while(|m| m.version <= version)
    {
        expected
            .execute_batch(m.sql)
            .with_context(|| format!("migration {}", m.name))?;
    }
    let have = tables(conn)?;
    Ok(tables(&expected)?
        .into_iter()
        .filter(|t| !have.contains(t))
        .collect())
}

fn tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "select name from sqlite_master where type = 'table' and name not like 'sqlite_%'",
    )?;
    stmt.query_map([], |r| r.get(0))?.collect()
}

/// Makes sure no other process has the database at `path` open, and folds its write-ahead
/// log into the file so the file alone holds everything.
///
/// In `EXCLUSIVE` locking mode SQLite must take an exclusive lock on the file to begin; every
/// other connection in WAL mode (the server's writer and readers) holds a shared lock for as
/// long as it is open, so a running server makes this fail with `SQLITE_BUSY` even when idle.
/// A database too damaged to open is no obstacle (being replaced is what it needs): then the
/// damage is returned.
fn take_over(path: &Path) -> anyhow::Result<Option<String>> {
    let in_use = || {
        anyhow!(
            "the database {} is in use by another process; stop `easy-writer serve` (and any \
             other easy-writer command using it) first",
            path.display()
        )
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open the current database {}", path.display()))?;
    let locked = conn
        .busy_timeout(LOCK_WAIT)
        .and_then(|()| conn.pragma_update(None, "locking_mode", "EXCLUSIVE"))
        .and_then(|()| conn.execute_batch("begin exclusive; commit"))
        .and_then(|()| {
            conn.query_row("pragma wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
        });
    let damaged = match locked {
        Ok(0) => None,
        Ok(_) => return Err(in_use()),
        Err(e) => match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => return Err(in_use()),
            // Nothing can be folded in; its log, if any, is kept beside it (`replace_keeping`).
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Some(e.to_string()),
            _ => {
                return Err(e).with_context(|| {
                    format!("cannot lock the current database {}", path.display())
                });
            }
        },
    };
    // Closing the only connection checkpoints again and removes the log.
    conn.close()
        .map_err(|(_, e)| e)
        .with_context(|| format!("cannot close the current database {}", path.display()))?;
    Ok(damaged)
}

/// Keeps the current database as `<name>.before-restore-<UTC time>` (a hard link, so the
/// current name still holds it until the copy is renamed over it) together with its
/// write-ahead log if one is left, then renames `copy` over `db_path`. Returns the kept path;
/// on error the current database is where it was.
fn replace_keeping(db_path: &Path, copy: &Path, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .context("formatting the time")?;
    let mut kept = dir.join(format!("{name}.before-restore-{stamp}"));
    for n in 2.. {
        match fs::hard_link(db_path, &kept) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => {
                kept = dir.join(format!("{name}.before-restore-{stamp}-{n}"));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(e).with_context(|| format!("cannot create {}", kept.display()));
            }
            // A file system without hard links: a copy, flushed.
            Err(_) => {
                fs::copy(db_path, &kept)
                    .and_then(|_| File::open(&kept)?.sync_all())
                    .with_context(|| {
                        format!("cannot keep the current database as {}", kept.display())
                    })?;
                break;
            }
        }
    }
    // A log that could not be folded in (a damaged database) belongs to the kept file, and
    // must not be read as the new file's.
    let wal = sidecar(db_path, "-wal");
    let kept_wal = sidecar(&kept, "-wal");
    let log_moved = fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    if log_moved && let Err(e) = fs::rename(&wal, &kept_wal) {
        let _ = fs::remove_file(&kept);
        return Err(e).with_context(|| format!("cannot move {} aside", wal.display()));
    }
    if let Err(e) = fs::rename(copy, db_path) {
        if log_moved {
            let _ = fs::rename(&kept_wal, &wal);
        }
        let _ = fs::remove_file(&kept);
        return Err(e).with_context(|| format!("cannot replace {}", db_path.display()));
    }
    let _ = fs::remove_file(&wal);
    let _ = fs::remove_file(sidecar(db_path, "-shm"));
    // It holds password hashes; the name is now its only one.
    let _ = set_private_mode(&kept);
    Ok(kept)
}

/// `path` with `suffix` appended to its file name (`x.db` → `x.db-wal`).
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Creates the data directory (`0700`) when it does not exist yet.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Copies `from` to a new file `to` created `0600`, flushed to disk.
fn copy_private(from: &Path, to: &Path) -> io::Result<()> {
    let mut source = File::open(from)?;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut target = options.open(to)?;
    io::copy(&mut source, &mut target)?;
    target.sync_all()
}

fn set_private_mode(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Flushes a directory entry change (a rename or link) to disk; best effort.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// A temporary file or directory of ours, removed on drop unless kept.
struct Private {
    path: PathBuf,
    is_dir: bool,
}

impl Private {
    /// A new `0700` directory (a leftover of a crashed run with the same process id is
    /// removed first).
    fn dir(path: PathBuf) -> io::Result<Private> {
        let _ = fs::remove_dir_all(&path);
        let mut builder = fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&path)?;
        Ok(Private { path, is_dir: true })
    }

    /// A file path not created yet (a leftover with the same name is removed first).
    fn file(path: PathBuf) -> Private {
        let private = Private {
            path,
            is_dir: false,
        };
        private.remove();
        private
    }

    fn keep(mut self) {
        self.path = PathBuf::new();
    }

    fn remove(&self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        if self.is_dir {
            let _ = fs::remove_dir_all(&self.path);
        } else {
            let _ = fs::remove_file(&self.path);
            for suffix in ["-journal", "-wal", "-shm"] {
                let _ = fs::remove_file(sidecar(&self.path, suffix));
            }
        }
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        self.remove();
    }
}
