//! The `easy-writer` binary as an operator runs it (CONTRACT §1).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::helpers::{PASSWORD, builder, email, expect_error};

/// Runs the binary with `EASY_WRITER_DATA_DIR=dir` and an empty config file.
fn run(dir: &Path, args: &[&str]) -> Output {
    run_with(dir, args, &[], None)
}

fn run_with(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let config = dir.join("cli-config.toml");
    if !config.exists() {
        std::fs::write(&config, "").unwrap();
    }
    let mut command = crate::helpers::binary();
    command
        .args(args)
        .env("EASY_WRITER_DATA_DIR", dir)
        .env("EASY_WRITER_CONFIG", &config)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run easy-writer");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn user_commands_create_list_topup_and_refuse_what_they_must() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let out = run(
        d,
        &[
            "user",
            "create",
            "--email",
            "op@example.com",
            "--password",
            PASSWORD,
            "--name",
            "Operator",
            "--admin",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out)
        .trim()
        .strip_prefix("user_id: ")
        .expect("user_id line")
        .to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());

    let out = run_with(
        d,
        &[
            "user",
            "create",
            "--email",
            "stdin@example.com",
            "--password-stdin",
        ],
        &[],
        Some("from stdin 123\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let out = run(
        d,
        &[
            "user",
            "create",
            "--email",
            "OP@example.com",
            "--password",
            PASSWORD,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "duplicate email");
    assert!(stderr(&out).contains("already exists"));
    let out = run(
        d,
        &["user", "create", "--email", "bad", "--password", PASSWORD],
    );
    assert_eq!(out.status.code(), Some(2), "malformed email");
    let out = run(
        d,
        &[
            "user",
            "create",
            "--email",
            "x@example.com",
            "--password",
            "short",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "short password");
    let out = run(d, &["user", "create", "--email", "x@example.com"]);
    assert_eq!(out.status.code(), Some(2), "no password option");

    let out = run(
        d,
        &[
            "user",
            "topup",
            "--email",
            "op@example.com",
            "--raits",
            "100",
            "--reason",
            "welcome",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "balance: 100");
    let out = run(
        d,
        &[
            "user",
            "topup",
            "--email",
            "op@example.com",
            "--raits",
            "-50",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "balance: 50");
    let out = run(
        d,
        &[
            "user",
            "topup",
            "--email",
            "op@example.com",
            "--raits",
            "-51",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "debit below zero");
    let out = run(
        d,
        &["user", "topup", "--email", "op@example.com", "--raits", "0"],
    );
    assert_eq!(out.status.code(), Some(2), "zero");
    let out = run(
        d,
        &[
            "user",
            "topup",
            "--email",
            "ghost@example.com",
            "--raits",
            "5",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "unknown user");

    let out = run(d, &["user", "list"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "id\temail\tprovider\tbalance\tactive\tadmin\tcreated_at"
    );
    let row: Vec<&str> = lines
        .find(|l| l.starts_with(&id))
        .unwrap()
        .split('\t')
        .collect();
    assert_eq!(row[1..6], ["op@example.com", "local", "50", "true", "true"]);

    let out = run(d, &["user", "list", "--json"]);
    let users: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(users.len(), 2);
    let op = users.iter().find(|u| u["id"] == id).unwrap();
    assert_eq!(op["balance"], 50);
    assert_eq!(op["is_admin"], true);
    assert!(op.get("hashed_password").is_none());

    // The balance equals the ledger: +100 then -50, the refused debit wrote nothing.
    let conn = rusqlite::Connection::open(d.join("easy-writer.db")).unwrap();
    let (sum, rows): (i64, i64) = conn
        .query_row("select sum(amount), count(*) from transactions where user_id = ?1 and type = 'adjustment'", [&id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!((sum, rows), (50, 2));
}

#[tokio::test]
async fn deactivate_and_activate_take_effect_on_a_running_server() {
    let app = builder().spawn().await;
    let address = email("cli-deactivate");
    let session = app.register(&address).await;
    let dir = app.data_dir();

    let out = run(&dir, &["user", "deactivate", "--email", &address]);
    assert!(out.status.success(), "{}", stderr(&out));
    expect_error(
        app.get_authed("/api/v1/auth/me", &session.access_token)
            .await,
        403,
        "inactive",
    )
    .await;
    expect_error(app.login(&address, PASSWORD).await, 403, "inactive").await;

    let out = run(&dir, &["user", "activate", "--email", &address]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        app.get_authed("/api/v1/auth/me", &session.access_token)
            .await
            .status(),
        200
    );

    let out = run(
        &dir,
        &["user", "deactivate", "--email", "nobody@example.com"],
    );
    assert_eq!(out.status.code(), Some(1));

    // A consistent copy while the server runs.
    let copy = dir.join("copy.db");
    let out = run(&dir, &["backup", "--to", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let conn = rusqlite::Connection::open(&copy).unwrap();
    let count: i64 = conn
        .query_row(
            "select count(*) from users where email = ?1",
            [&address],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(count, 1);
    let out = run(&dir, &["backup", "--to", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "refuses to overwrite");
}

#[tokio::test]
async fn verify_and_reset_password_take_effect_on_a_running_server() {
    let app = builder().spawn().await;
    let address = email("cli-recovery");
    let session = app.register(&address).await;
    let dir = app.data_dir();
    let verified = |app: &crate::helpers::TestApp| {
        let conn = rusqlite::Connection::open(app.database_path()).unwrap();
        conn.query_row(
            "select is_verified from users where email = ?1",
            [&address],
            |r| r.get::<_, bool>(0),
        )
        .unwrap()
    };
    assert!(!verified(&app));

    let out = run(
        &dir,
        &["user", "verify", "--email", &address.to_uppercase()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(verified(&app));
    let out = run(&dir, &["user", "verify", "--email", "nobody@example.com"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no user"), "{}", stderr(&out));

    let out = run_with(
        &dir,
        &[
            "user",
            "reset-password",
            "--email",
            &address,
            "--password-stdin",
        ],
        &[],
        Some("set by the operator\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 session(s) revoked"),
        "{}",
        stdout(&out)
    );
    expect_error(
        app.login(&address, PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(
        app.login(&address, "set by the operator").await.status(),
        200
    );
    expect_error(
        app.post_with_cookie("/api/v1/auth/refresh", Some(&session.refresh_cookie))
            .await,
        401,
        "invalid_token",
    )
    .await;
    expect_error(
        app.get_authed("/api/v1/auth/me", &session.access_token)
            .await,
        401,
        "invalid_token",
    )
    .await;

    let out = run(
        &dir,
        &[
            "user",
            "reset-password",
            "--email",
            &address,
            "--password",
            "another one 123",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(app.login(&address, "another one 123").await.status(), 200);

    for (args, code) in [
        (
            vec![
                "user",
                "reset-password",
                "--email",
                "nobody@example.com",
                "--password",
                PASSWORD,
            ],
            1,
        ),
        (
            vec![
                "user",
                "reset-password",
                "--email",
                &address,
                "--password",
                "short",
            ],
            2,
        ),
        (vec!["user", "reset-password", "--email", &address], 2),
        (
            vec![
                "user",
                "reset-password",
                "--email",
                &address,
                "--password",
                PASSWORD,
                "--password-stdin",
            ],
            2,
        ),
        (vec!["user", "verify"], 2),
    ] {
        let out = run(&dir, &args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(app.login(&address, "another one 123").await.status(), 200);
}

#[test]
fn migrate_applies_and_reports_status() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = run(d, &["migrate", "--status"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("0001_init\tpending"),
        "{}",
        stdout(&out)
    );
    assert!(
        !d.join("easy-writer.db").exists(),
        "status must not create the database"
    );

    let out = run(d, &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("applied 0001_init"));
    let out = run(d, &["migrate"]);
    assert!(stdout(&out).contains("up to date"));
    let out = run(d, &["migrate", "--status"]);
    assert!(stdout(&out).contains("0001_init\tapplied"));
}

#[test]
fn config_check_masks_secrets_and_names_sources() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("conf.toml");
    std::fs::write(&file, "[server]\nfrontend_url = \"https://app.example.com\"\n[gigachat]\napi_key = \"gc-very-secret\"\n").unwrap();
    let out = run_with(
        d,
        &["config", "check", "--config", file.to_str().unwrap()],
        &[
            ("OPENAI_API_KEY", "sk-very-secret"),
            ("JWT_SECRET", "jwt-very-secret-jwt-very-secret-123"),
            ("OPENAI_PROXY_URL", "http://user:pw-secret@proxy:3128"),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for secret in [
        "sk-very-secret",
        "gc-very-secret",
        "jwt-very-secret",
        "pw-secret",
    ] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    assert!(
        text.contains("api_key = \"********\"  # OPENAI_API_KEY (env)"),
        "{text}"
    );
    assert!(
        text.contains("frontend_url = \"https://app.example.com\"  # FRONTEND_URL (file)"),
        "{text}"
    );
    assert!(
        text.contains("bind = \"127.0.0.1:8000\"  # EASY_WRITER_BIND (default)"),
        "{text}"
    );
    assert!(text.contains("# openai: configured"));
    assert!(text.contains("# yandexgpt: disabled"));
    assert!(text.contains("warning: public URL"), "{text}");
    assert!(text.contains("# smtp: disabled"), "{text}");
    assert!(text.contains("warning: no SMTP_URL"), "{text}");

    // A mail URL that cannot work is named, its password never shown.
    let out = run_with(
        d,
        &["config", "check"],
        &[("SMTP_URL", "ftp://mailer:smtp-very-secret@mail.example.com")],
        None,
    );
    let text = stdout(&out);
    assert!(!text.contains("smtp-very-secret"), "{text}");
    assert!(text.contains("# smtp: configured"), "{text}");
    assert!(text.contains("warning: SMTP_URL"), "{text}");
}

#[test]
fn bad_configuration_and_usage_errors_exit_with_the_right_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("bad.toml");
    std::fs::write(&file, "[server]\nbnd = \"127.0.0.1:1\"\n").unwrap();
    let out = run(d, &["config", "check", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bnd"), "{}", stderr(&out));

    let out = run_with(
        d,
        &["config", "check"],
        &[("EASY_WRITER_BREAKER_FAILURES", "many")],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("EASY_WRITER_BREAKER_FAILURES"));

    let out = run(d, &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(d, &["user", "topup", "--email", "a@b.co"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(d, &["--help"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn serve_starts_answers_health_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = dir.path().join("cli-config.toml");
    std::fs::write(&config, "").unwrap();
    let mut child = crate::helpers::binary()
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("EASY_WRITER_DATA_DIR", dir.path())
        .env("EASY_WRITER_CONFIG", &config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut healthy = false;
    while started.elapsed() < std::time::Duration::from_secs(20) {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            healthy = response.starts_with("HTTP/1.1 200");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(healthy, "no /health 200");
    // The container healthcheck: the configured bind address, 0.0.0.0 meaning this machine.
    let bind = format!("0.0.0.0:{port}");
    let health = run_with(
        dir.path(),
        &["health"],
        &[("EASY_WRITER_BIND", &bind)],
        None,
    );
    assert_eq!(health.status.code(), Some(0), "{}", stderr(&health));
    assert!(
        stdout(&health).contains(r#""database":"ok""#),
        "{}",
        stdout(&health)
    );
    let usage = run(dir.path(), &["health", "--addr", "nonsense"]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    let mode = std::fs::metadata(dir.path().join("jwt_secret")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
    let addr = format!("127.0.0.1:{port}");
    let down = run(dir.path(), &["health", "--addr", &addr]);
    assert_eq!(down.status.code(), Some(1), "a stopped server is unhealthy");
    assert!(stderr(&down).contains("no answer"), "{}", stderr(&down));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_check_makes_one_real_call_each_and_names_what_is_wrong() {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let fake = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .and(header("authorization", "Bearer sk-check"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"object":"list","data":[]}"#))
        .expect(2)
        .mount(&fake)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/v1", fake.uri());
    let openai = [
        ("OPENAI_API_KEY", "sk-check"),
        ("OPENAI_BASE_URL", base.as_str()),
    ];

    let out = run_with(dir.path(), &["providers", "check"], &openai, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "openai: ok");

    let missing_ca = dir.path().join("no-such-ca.cer");
    let mut env = openai.to_vec();
    env.push(("GIGACHAT_API_KEY", "Z2lnYTprZXk="));
    env.push(("GIGACHAT_CA_CERT", missing_ca.to_str().unwrap()));
    let out = run_with(dir.path(), &["providers", "check"], &env, None);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("openai: ok"), "{text}");
    let gigachat = text
        .lines()
        .find(|l| l.starts_with("gigachat: error: "))
        .expect(&text);
    assert!(gigachat.contains("no-such-ca.cer"), "{gigachat}");
    assert!(
        !text.contains("sk-check") && !text.contains("Z2lnYTprZXk="),
        "a key leaked: {text}"
    );

    let out = run(dir.path(), &["providers", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no AI provider is configured"));
}
