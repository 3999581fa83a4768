//! Admin pages on a big database: 1,000,000 users and 1,000,000 ledger rows (created over
//! 60 days), the real server in-process on loopback, an admin signed in through the form;
//! each page requested 50 times in a row, median and p95.
//!
//!     cargo run --release --example admin_pages [users] [transactions]
//!
//! Pages: the users list (first page, deep offset, email-prefix search), the transactions
//! list, and the dashboard (its first, uncached answer, then cached ones).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use easy_writer::app::AppState;
use easy_writer::config::{Config, Flags};
use rusqlite::params;

const RUNS: usize = 50;
const PASSWORD: &str = "bench password 123";
const DAYS: i64 = 60;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let users: usize = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let transactions: usize = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("easy-writer-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config_file = dir.join("bench.toml");
    std::fs::write(&config_file, "")?;
    let env: HashMap<String, String> = [
        ("EASY_WRITER_DATA_DIR", dir.to_string_lossy().into_owned()),
        ("EASY_WRITER_PUBLIC_URL", format!("http://{addr}")),
        ("EASY_WRITER_COOKIE_SECURE", "false".into()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let flags = Flags {
        config: Some(config_file),
        bind: None,
    };
    // The state opens the database and runs the migrations; the rows go in through a raw
    // connection on the same file before the server answers anything.
    let state = AppState::new(Config::load(&flags, &env)?.config)?;
    let db_path = state.db.path().to_owned();
    let started = Instant::now();
    let (admin_email, prefix) =
        tokio::task::spawn_blocking(move || seed(&db_path, users, transactions)).await??;
    println!(
        "seeded {users} users and {transactions} transactions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::spawn(easy_writer::server::serve(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = sign_in(&http, &base, &admin_email).await?;

    let get = |path: String| {
        let http = http.clone();
        let url = format!("{base}{path}");
        let cookie = cookie.clone();
        async move {
            let started = Instant::now();
            let response = http
                .get(&url)
                .header("cookie", format!("ew_admin={cookie}"))
                .send()
                .await?;
            let status = response.status().as_u16();
            let body = response.bytes().await?;
            anyhow::Ok((started.elapsed(), status, body.len()))
        }
    };

    // The dashboard's first answer computes its aggregates; later ones reuse them (10 s).
    let (first, status, _) = get("/admin".to_owned()).await?;
    println!(
        "{:<40} HTTP {status}  uncached (1st run): {:>8.1} ms",
        "/admin",
        ms(first)
    );
    for path in [
        "/admin".to_owned(),
        "/admin/users".to_owned(),
        "/admin/users?offset=500000".to_owned(),
        // 10 hits, and 1,000 (a full page and a "next" link).
        format!("/admin/users?q={prefix}"),
        format!("/admin/users?q={}", &prefix[..prefix.len() - 1]),
        "/admin/transactions".to_owned(),
    ] {
        let mut times = Vec::with_capacity(RUNS);
        let mut statuses = Vec::new();
        let mut size = 0;
        for _ in 0..RUNS {
            let (t, status, len) = get(path.clone()).await?;
            times.push(t);
            size = len;
            if !statuses.contains(&status) {
                statuses.push(status);
            }
        }
        times.sort();
        let label = if path == "/admin" {
            "/admin (cached)".to_owned()
        } else {
            path.clone()
        };
        println!(
            "{label:<40} HTTP {statuses:?}  median {:>8.1} ms  p95 {:>8.1} ms  ({size} bytes)",
            ms(times[RUNS / 2]),
            ms(times[RUNS * 95 / 100])
        );
    }
    drop(state);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A tiny deterministic generator, so runs compare.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// Users spread over 60 days, each with a balance equal to its ledger rows (a top-up, then
/// spends); one admin with a real password. Returns the admin's email and a search prefix.
fn seed(
    path: &std::path::Path,
    users: usize,
    transactions: usize,
) -> anyhow::Result<(String, String)> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let tx = conn.transaction()?;
    let now = time::OffsetDateTime::now_utc();
    let span = Duration::from_secs((DAYS * 86_400) as u64);
    let at = |i: usize, n: usize| {
        let back = span.mul_f64(1.0 - (i as f64 + 0.5) / n.max(1) as f64);
        easy_writer::timestamp::format(now - back)
    };
    let mut rng = Lcg(7);
    let admin_email = "admin@bench.example".to_owned();
    let hash = {
        use argon2::PasswordHasher;
        let salt = argon2::password_hash::SaltString::encode_b64(b"bench-salt-16byt")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        argon2::Argon2::default()
            .hash_password(PASSWORD.as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_string()
    };
    // Each user's transactions: ids of the users with rows, in order, so balances add up.
    let per_user = 2usize;
    let with_rows = transactions.div_ceil(per_user).min(users);
    let mut ids = Vec::with_capacity(users);
    {
        let mut insert = tx.prepare(
            "insert into users (id, email, hashed_password, name, provider, balance, is_active,
                 is_verified, is_admin, created_at, updated_at)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
        )?;
        let providers = ["local", "local", "local", "google", "yandex"];
        for i in 0..users {
            let id = uuid::Uuid::now_v7().to_string();
            let created = at(i, users);
            let admin = i == users - 1;
            let email = if admin {
                admin_email.clone()
            } else {
                format!("user{i:07}@example.com")
            };
            let provider = if admin {
                "local"
            } else {
                providers[rng.next(5) as usize]
            };
            insert.execute(params![
                id,
                email,
                admin.then_some(hash.as_str()),
                (rng.next(3) == 0).then(|| format!("Пользователь {i}")),
                provider,
                0,
                admin || rng.next(50) != 0,
                rng.next(2) == 0,
                admin,
                created,
            ])?;
            ids.push((id, created));
        }
    }
    {
        let mut insert = tx.prepare(
            "insert into transactions (id, user_id, type, amount, balance_after, description,
                 created_at, updated_at)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        )?;
        let mut balance_of = tx.prepare("update users set balance = ?2 where id = ?1")?;
        let mut written = 0;
        for (id, created) in ids.iter().take(with_rows) {
            let mut balance = 0i64;
            for k in 0..per_user {
                if written == transactions {
                    break;
                }
                let (kind, amount, description) = if k == 0 {
                    let a = 100 + rng.next(5000) as i64;
                    ("topup", a, "Пополнение".to_owned())
                } else {
                    let a = -(1 + rng.next(balance as u64) as i64);
                    ("spend", a, "Генерация текста".to_owned())
                };
                if amount == 0 || balance + amount < 0 {
                    continue;
                }
                balance += amount;
                insert.execute(params![
                    uuid::Uuid::now_v7().to_string(),
                    id,
                    kind,
                    amount,
                    balance,
                    description,
                    created
                ])?;
                written += 1;
            }
            balance_of.execute(params![id, balance])?;
        }
    }
    tx.commit()?;
    conn.execute_batch("analyze")?;
    Ok((admin_email, "user000012".to_owned()))
}

async fn sign_in(http: &reqwest::Client, base: &str, email: &str) -> anyhow::Result<String> {
    let form = http.get(format!("{base}/admin/login")).send().await?;
    let login_cookie = cookie(form.headers(), "ew_admin_login")?;
    let html = form.text().await?;
    let marker = "name=\"csrf\" value=\"";
    let start = html
        .find(marker)
        .ok_or_else(|| anyhow::anyhow!("no csrf"))?
        + marker.len();
    let csrf = &html[start..start + html[start..].find('"').unwrap_or(0)];
    let response = http
        .post(format!("{base}/admin/login"))
        .header("cookie", format!("ew_admin_login={login_cookie}"))
        .form(&[("email", email), ("password", PASSWORD), ("csrf", csrf)])
        .send()
        .await?;
    anyhow::ensure!(response.status() == 303, "sign-in: {}", response.status());
    cookie(response.headers(), "ew_admin")
}

fn cookie(headers: &reqwest::header::HeaderMap, name: &str) -> anyhow::Result<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no {name} cookie"))
}
