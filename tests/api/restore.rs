//! `easy-writer backup` and `restore` as an operator runs them (CONTRACT §1): the real binary,
//! a temporary data directory, and the files they leave behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::helpers::PASSWORD;

const DB: &str = "easy-writer.db";

/// Runs the binary with `EASY_WRITER_DATA_DIR=dir` and an empty config file (beside `dir`
/// while it does not exist yet, so the binary is the one to create it).
fn run(dir: &Path, args: &[&str]) -> Output {
    let config = match dir.exists() {
        true => dir.join("cli-config.toml"),
        false => dir.parent().unwrap().join("cli-config.toml"),
    };
    if !config.exists() {
        std::fs::write(&config, "").unwrap();
    }
    crate::helpers::binary()
        .args(args)
        .env("EASY_WRITER_DATA_DIR", dir)
        .env("EASY_WRITER_CONFIG", &config)
        .stdin(Stdio::null())
        .output()
        .expect("run easy-writer")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts exit 1 and returns stderr.
fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

fn create_user(dir: &Path, email: &str) {
    ok(&run(
        dir,
        &["user", "create", "--email", email, "--password", PASSWORD],
    ));
}

/// Email → balance, from `user list --json`.
fn users(dir: &Path) -> Vec<(String, i64)> {
    let out = ok(&run(dir, &["user", "list", "--json"]));
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut users: Vec<_> = list
        .iter()
        .map(|u| {
            (
                u["email"].as_str().unwrap().to_owned(),
                u["balance"].as_i64().unwrap(),
            )
        })
        .collect();
    users.sort();
    users
}

/// Files in `dir` whose names start with `prefix`.
fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    found.sort();
    found
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn backup_change_restore_brings_the_backup_back_and_keeps_the_replaced_database() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let elsewhere = tempfile::tempdir().unwrap();
    create_user(d, "kept@example.com");

    let backup = elsewhere.path().join("nightly.db");
    ok(&run(d, &["backup", "--to", arg(&backup)]));
    assert_eq!(mode(&backup), 0o600, "the backup holds password hashes");
    assert!(
        files(elsewhere.path(), ".").is_empty(),
        "no partial files left"
    );

    // Changes after the backup.
    create_user(d, "later@example.com");
    ok(&run(
        d,
        &[
            "user",
            "topup",
            "--email",
            "kept@example.com",
            "--raits",
            "100",
        ],
    ));
    let changed = users(d);
    assert_eq!(
        changed,
        [
            ("kept@example.com".to_owned(), 100),
            ("later@example.com".to_owned(), 0)
        ]
    );

    let out = ok(&run(d, &["restore", "--from", arg(&backup)]));
    assert!(out.contains("previous database kept as"), "{out}");
    assert_eq!(users(d), [("kept@example.com".to_owned(), 0)]);
    assert_eq!(mode(&d.join(DB)), 0o600);
    assert!(files(d, ".").is_empty(), "no temporary files left");

    // The replaced database is beside it, whole, with the changes.
    let kept = files(d, &format!("{DB}.before-restore-"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    let name = kept[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(out.contains(&name), "{out}");
    let stamp = name.rsplit("before-restore-").next().unwrap();
    assert!(
        stamp.len() == 16 && stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
        "{stamp}"
    );
    let conn = rusqlite::Connection::open(&kept[0]).unwrap();
    let rows: Vec<(String, i64)> = conn
        .prepare("select email, balance from users order by email")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, changed);
    drop(conn);
    assert_eq!(mode(&kept[0]), 0o600);

    // The restored database is a working one; restoring again keeps a second copy.
    create_user(d, "after@example.com");
    ok(&run(d, &["restore", "--from", arg(&backup)]));
    assert_eq!(users(d), [("kept@example.com".to_owned(), 0)]);
    assert_eq!(files(d, &format!("{DB}.before-restore-")).len(), 2);

    // Undoing a restore is a restore from the kept file.
    ok(&run(d, &["restore", "--from", arg(&kept[0])]));
    assert_eq!(users(d), changed);
}

#[test]
fn restore_refuses_what_is_not_an_easy_writer_backup_and_leaves_the_database_alone() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let other = tempfile::tempdir().unwrap();
    let o = other.path();
    create_user(d, "owner@example.com");
    let good = o.join("good.db");
    ok(&run(d, &["backup", "--to", arg(&good)]));
    let current = std::fs::read(d.join(DB)).unwrap();

    let text = o.join("notes.txt");
    std::fs::write(
        &text,
        "these are not the rows you are looking for\n".repeat(200),
    )
    .unwrap();

    let bytes = std::fs::read(&good).unwrap();
    let truncated = o.join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();

    let foreign = o.join("foreign.db");
    let conn = rusqlite::Connection::open(&foreign).unwrap();
    conn.execute_batch("create table notes (id integer primary key, body text); insert into notes (body) values ('hi');")
        .unwrap();
    drop(conn);

    // Another application that also counts its schema in user_version.
    let lookalike = o.join("lookalike.db");
    let conn = rusqlite::Connection::open(&lookalike).unwrap();
    conn.execute_batch("create table users (id text primary key); pragma user_version = 2;")
        .unwrap();
    drop(conn);

    let newer = o.join("newer.db");
    std::fs::copy(&good, &newer).unwrap();
    let conn = rusqlite::Connection::open(&newer).unwrap();
    conn.execute_batch("pragma user_version = 9999;").unwrap();
    drop(conn);

    let empty = o.join("empty.db");
    std::fs::write(&empty, "").unwrap();

    let cases: [(&Path, &str); 8] = [
        (&text, "is not an SQLite database"),
        (&truncated, "is damaged"),
        (&foreign, "is not an Easy Writer database"),
        (&lookalike, "no table"),
        (&newer, "newer easy-writer"),
        (&empty, "is not an Easy Writer database"),
        (&o.join("missing.db"), "cannot read"),
        (o, "is not a file"),
    ];
    for (file, expected) in cases {
        let stderr = refused(&run(d, &["restore", "--from", arg(file)]));
        assert!(stderr.contains(expected), "{}: {stderr}", file.display());
        assert_eq!(
            std::fs::read(d.join(DB)).unwrap(),
            current,
            "{}: the current database changed",
            file.display()
        );
        assert!(
            files(d, &format!("{DB}.before-restore-")).is_empty(),
            "{}",
            file.display()
        );
        assert!(
            files(d, ".").is_empty(),
            "{}: temporary files left",
            file.display()
        );
    }
    let stderr = refused(&run(d, &["restore", "--from", arg(&d.join(DB))]));
    assert!(stderr.contains("is the current database"), "{stderr}");

    // `--from` is required: a usage error.
    assert_eq!(run(d, &["restore"]).status.code(), Some(2));
    assert_eq!(users(d), [("owner@example.com".to_owned(), 0)]);
    ok(&run(d, &["restore", "--from", arg(&good)]));
}

#[test]
fn an_older_backup_is_migrated_and_a_fresh_data_dir_can_be_restored_into() {
    let old = tempfile::tempdir().unwrap();
    // A backup taken by a release that had only the first migration.
    let backup = old.path().join("v1.db");
    let conn = rusqlite::Connection::open(&backup).unwrap();
    conn.execute_batch(include_str!("../../migrations/0001_init.sql"))
        .unwrap();
    conn.execute_batch(
        "insert into users (id, email, created_at, updated_at) \
         values ('0190d3a0-0000-7000-8000-000000000001', 'old@example.com', 'now', 'now');
         pragma user_version = 1;",
    )
    .unwrap();
    drop(conn);

    let fresh = tempfile::tempdir().unwrap();
    let d = fresh.path().join("data");
    let out = ok(&run(&d, &["restore", "--from", arg(&backup)]));
    assert!(out.contains("schema version 1"), "{out}");
    assert!(out.contains("migrated to schema version"), "{out}");
    assert!(!out.contains("previous database"), "{out}");
    assert_eq!(mode(&d), 0o700);
    assert_eq!(mode(&d.join(DB)), 0o600);
    let status = ok(&run(&d, &["migrate", "--status"]));
    assert!(!status.contains("pending"), "{status}");
    assert_eq!(users(&d), [("old@example.com".to_owned(), 0)]);
}

#[test]
fn restore_is_refused_while_the_server_runs_and_works_once_it_stopped() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    create_user(d, "live@example.com");
    let backup = d.join("live-backup.db");
    ok(&run(d, &["backup", "--to", arg(&backup)]));
    create_user(d, "newer@example.com");

    let mut server = Server::start(d);
    // The server is idle: no write is in flight, its connections are merely open.
    let stderr = refused(&run(d, &["restore", "--from", arg(&backup)]));
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(stderr.contains("easy-writer serve"), "{stderr}");
    assert!(files(d, &format!("{DB}.before-restore-")).is_empty());
    // A backup still works while it runs.
    ok(&run(d, &["backup", "--to", arg(&d.join("second.db"))]));
    server.stop();

    assert_eq!(users(d).len(), 2);
    ok(&run(d, &["restore", "--from", arg(&backup)]));
    assert_eq!(users(d), [("live@example.com".to_owned(), 0)]);
}

/// `easy-writer serve` on a free port of the loopback, up once `/health` answers.
struct Server(std::process::Child);

impl Server {
    fn start(dir: &Path) -> Server {
        use std::io::{Read, Write};
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = crate::helpers::binary()
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .env("EASY_WRITER_DATA_DIR", dir)
            .env("EASY_WRITER_CONFIG", dir.join("cli-config.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server(child);
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(20) {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                stream
                    .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut response = String::new();
                let _ = stream.read_to_string(&mut response);
                assert!(response.starts_with("HTTP/1.1 200"), "{response}");
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the server did not answer /health");
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let status = self.0.wait().unwrap();
        assert_eq!(status.code(), Some(0));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn restore_replaces_a_damaged_database_and_keeps_it() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    create_user(d, "saved@example.com");
    let backup = d.join("saved.db");
    ok(&run(d, &["backup", "--to", arg(&backup)]));
    let garbage = b"not a database any more\n".repeat(100);
    std::fs::write(d.join(DB), &garbage).unwrap();

    let out = run(d, &["restore", "--from", arg(&backup)]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: the database it replaced was damaged"),
        "{stderr}"
    );
    assert_eq!(users(d), [("saved@example.com".to_owned(), 0)]);
    let kept = files(d, &format!("{DB}.before-restore-"));
    assert_eq!(std::fs::read(&kept[0]).unwrap(), garbage);
}
