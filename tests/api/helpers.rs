//! `spawn_app()` and friends: a real server on 127.0.0.1:0 with its own data directory, fake
//! upstream HTTP servers on loopback for external services, and typed request helpers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use easy_writer::app::AppState;
use easy_writer::config::{Config, Flags};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use wiremock::MockServer;

/// The key every test server signs with, so tests can forge tokens on purpose.
pub const JWT_SECRET: &str = "test-secret-of-at-least-thirty-two-bytes!!";
pub const PASSWORD: &str = "correct horse battery";

/// A running server.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    /// Fake upstreams by the env name their URL was given in (e.g. `OPENAI_BASE_URL`).
    pub upstreams: HashMap<String, MockServer>,
    data_dir: Arc<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Configures a server before it starts.
#[derive(Default)]
pub struct Builder {
    env: HashMap<String, String>,
    upstreams: Vec<String>,
    data_dir: Option<Arc<tempfile::TempDir>>,
    adjust: Option<Adjust>,
}

/// A change to the wired state, made before the server starts.
type Adjust = Box<dyn FnOnce(&mut AppState)>;

pub fn builder() -> Builder {
    Builder::default()
}

/// A server with default test settings.
pub async fn spawn_app() -> TestApp {
    builder().spawn().await
}

impl Builder {
    /// Sets a configuration variable as the environment would.
    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.env.insert(name.to_owned(), value.to_string());
        self
    }

    /// Starts a fake upstream HTTP server on loopback and points `url_env` at it.
    pub fn upstream(mut self, url_env: &str) -> Self {
        self.upstreams.push(url_env.to_owned());
        self
    }

    /// Changes the wired state before the server starts, for what configuration does not
    /// reach (e.g. a provider timeout short enough for a test).
    pub fn adjust(mut self, f: impl FnOnce(&mut AppState) + 'static) -> Self {
        self.adjust = Some(Box::new(f));
        self
    }

    /// Reuses the data directory of a stopped server.
    pub fn data_dir(mut self, dir: Arc<tempfile::TempDir>) -> Self {
        self.data_dir = Some(dir);
        self
    }

    pub async fn spawn(self) -> TestApp {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| Arc::new(tempfile::tempdir().expect("temp dir")));
        let mut env = HashMap::from([
            (
                "EASY_WRITER_DATA_DIR".to_owned(),
                path_string(data_dir.path()),
            ),
            ("EASY_WRITER_BIND".to_owned(), "127.0.0.1:0".to_owned()),
            ("JWT_SECRET".to_owned(), JWT_SECRET.to_owned()),
            // Every test client is 127.0.0.1; tests of this throttle set their own limit.
            (
                "EASY_WRITER_REGISTER_MAX_PER_IP".to_owned(),
                "1000".to_owned(),
            ),
        ]);
        // Bound before the configuration is read, so the public URL (signed image links) is
        // the address the server really listens on.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        env.insert(
            "EASY_WRITER_PUBLIC_URL".to_owned(),
            format!("http://{addr}"),
        );
        let mut upstreams = HashMap::new();
        for name in self.upstreams {
            let server = MockServer::start().await;
            env.insert(name.clone(), server.uri());
            upstreams.insert(name, server);
        }
        env.extend(self.env);
        // An empty file, so the repository's easy-writer.toml never leaks into a test.
        let config_file = data_dir.path().join("test-config.toml");
        std::fs::write(&config_file, "").expect("write config");
        let flags = Flags {
            config: Some(config_file),
            bind: None,
        };
        let config = Config::load(&flags, &env)
            .expect("test configuration")
            .config;
        let mut state = AppState::new(config).expect("app state");
        if let Some(adjust) = self.adjust {
            adjust(&mut state);
        }
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(easy_writer::server::serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            state,
            upstreams,
            data_dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A signed-in user as the tests see it.
pub struct Session {
    pub email: String,
    pub access_token: String,
    pub refresh_cookie: String,
    pub user_id: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.path().to_owned()
    }

    pub fn database_path(&self) -> PathBuf {
        self.state.config.server.database_path()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get_authed(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// POSTs with only a `Cookie: refresh_token=…` header (refresh, logout).
    pub async fn post_with_cookie(
        &self,
        path: &str,
        refresh_cookie: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path));
        if let Some(value) = refresh_cookie {
            request = request.header("cookie", format!("refresh_token={value}"));
        }
        request.send().await.expect("request")
    }

    /// Registers `email` with [`PASSWORD`]; panics unless it succeeds.
    pub async fn register(&self, email: &str) -> Session {
        let response = self
            .post_json(
                "/api/v1/auth/register",
                &json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(response.status(), 201, "register {email}");
        self.session_from(email, response).await
    }

    /// Signs in `email` with `password`.
    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        self.post_json(
            "/api/v1/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn session_from(&self, email: &str, response: reqwest::Response) -> Session {
        let refresh_cookie = refresh_cookie(response.headers()).expect("refresh cookie");
        let body: Value = response.json().await.expect("json");
        let access_token = body["access_token"].as_str().expect("token").to_owned();
        let me: Value = self
            .get_authed("/api/v1/auth/me", &access_token)
            .await
            .json()
            .await
            .expect("me");
        Session {
            email: email.to_owned(),
            access_token,
            refresh_cookie,
            user_id: me["id"].as_str().expect("id").to_owned(),
        }
    }

    /// Balance and ledger sum of a user, read straight from the database file.
    pub fn balance_and_ledger_sum(&self, user_id: &str) -> (i64, i64) {
        let conn = rusqlite::Connection::open(self.database_path()).expect("open db");
        let balance = conn
            .query_row("select balance from users where id = ?1", [user_id], |r| {
                r.get(0)
            })
            .expect("balance");
        let sum = conn
            .query_row(
                "select coalesce(sum(amount), 0) from transactions where user_id = ?1",
                [user_id],
                |r| r.get(0),
            )
            .expect("sum");
        (balance, sum)
    }

    /// Stops the server gracefully and hands back its data directory.
    pub async fn stop(mut self) -> Arc<tempfile::TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server");
        }
        self.data_dir.clone()
    }
}

/// The value of the `refresh_token` cookie set by a response, if any.
pub fn refresh_cookie(headers: &HeaderMap) -> Option<String> {
    set_cookie(headers).and_then(|c| {
        c.split(';')
            .next()?
            .trim()
            .strip_prefix("refresh_token=")
            .map(str::to_owned)
    })
}

/// The whole `Set-Cookie` header for `refresh_token`.
pub fn set_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("refresh_token="))
        .map(str::to_owned)
}

/// Asserts status and error code; returns the body.
pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status, "status");
    let body: Value = response.json().await.expect("json error body");
    assert_eq!(body["code"], code, "code in {body}");
    assert!(body.get("detail").is_some(), "detail in {body}");
    body
}

/// A unique email for a test.
pub fn email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::now_v7().simple())
}

impl TestApp {
    /// Runs `tool` with `body` as a queued job (`202`); returns the session id.
    pub async fn queue_run(&self, user: &Session, tool: &str, body: &Value) -> String {
        let response = self
            .post_authed(
                &format!("/api/v1/tools/{tool}/execute"),
                &user.access_token,
                body,
            )
            .await;
        assert_eq!(response.status(), 202, "{tool} queued");
        response.json::<Value>().await.expect("json")["session_id"]
            .as_str()
            .expect("session_id")
            .to_owned()
    }

    /// Polls a generation session until it has ended (completed or failed).
    pub async fn settled_session(&self, user: &Session, id: &str) -> Value {
        for _ in 0..600 {
            let s: Value = self
                .get_authed(
                    &format!("/api/v1/generation/sessions/{id}"),
                    &user.access_token,
                )
                .await
                .json()
                .await
                .expect("session json");
            if s["completed_at"].is_string() {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("session {id} never ended");
    }
}

impl TestApp {
    /// Credits `raits` through the ledger, as an operator adjustment would.
    pub async fn topup(&self, user_id: &str, raits: i64) {
        let user_id = user_id.to_owned();
        self.state
            .db
            .write(move |tx| {
                easy_writer::billing::ledger::record(
                    tx,
                    &easy_writer::billing::ledger::Entry {
                        user_id: &user_id,
                        kind: easy_writer::billing::Kind::Adjustment,
                        amount: raits,
                        description: Some("test top-up"),
                        payment_id: None,
                        reference: None,
                    },
                )
            })
            .await
            .expect("top-up");
    }

    pub async fn post_authed(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }
}

/// The built `easy-writer` with an empty environment, as an operator's clean shell would run it,
/// but for `LLVM_PROFILE_FILE`: under scripts/coverage.sh the child's lines count too.
pub fn binary() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_easy-writer"));
    command.env_clear();
    if let Some(profile) = std::env::var_os("LLVM_PROFILE_FILE") {
        command.env("LLVM_PROFILE_FILE", profile);
    }
    command
}

/// The real binary serving a data directory on a free loopback port, for tests that kill it
/// (`kill -9`) or stop it with SIGTERM and start it again on the same data.
pub struct ServerProcess {
    child: std::process::Child,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `easy-writer serve` with only `env` (and the data directory) set, and waits for
    /// `/health` to answer 200.
    pub async fn start(dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        Self::start_on(addr, dir, env).await
    }

    /// [`start`](Self::start) on a given address (again on the address of a killed server).
    pub async fn start_on(addr: SocketAddr, dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        let config = dir.join("process-config.toml");
        std::fs::write(&config, "").expect("write config");
        let child = crate::helpers::binary()
            .args(["serve", "--bind", &addr.to_string()])
            .env("EASY_WRITER_DATA_DIR", dir)
            .env("EASY_WRITER_CONFIG", &config)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn easy-writer serve");
        let server = ServerProcess { child, addr };
        let client = reqwest::Client::new();
        for _ in 0..500 {
            if let Ok(r) = client.get(server.url("/health")).send().await
                && r.status() == 200
            {
                return server;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("easy-writer serve never answered /health");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// SIGKILL: no shutdown, no cleanup, as after a crash.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, and the clean exit (0) the contract promises.
    pub fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert_eq!(self.child.wait().expect("wait").code(), Some(0));
    }
}

/// A test that fails (or forgets) before `stop` or `kill` leaves no server running behind it.
impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Registers a new user on the server at `addr`; its access token.
pub async fn register_at(addr: SocketAddr) -> String {
    let registered: Value = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/auth/register"))
        .json(&json!({"email": email("process"), "password": PASSWORD}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    registered["access_token"]
        .as_str()
        .expect("token")
        .to_owned()
}

/// `GET path` on the server at `addr` with `token`, as JSON.
pub async fn get_at(addr: SocketAddr, path: &str, token: &str) -> Value {
    reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}
