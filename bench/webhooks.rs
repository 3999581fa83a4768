//! Exactly-once crediting under load: 200 concurrent T-Bank deliveries of 50 distinct payments
//! (each `CONFIRMED` notification sent 4 times, shuffled, all at once) must credit exactly 50
//! times, with every balance equal to its ledger sum. Several rounds; latency and wall time.
//!
//!     cargo run --release --example webhooks [rounds]
//!
//! The real server (the library's `server::serve`, on loopback over HTTP) against a fake
//! T-Bank `Init` on loopback; notifications are signed with T-Bank's token algorithm.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use easy_writer::app::AppState;
use easy_writer::config::{Config, Flags};

#[path = "tbank_notice.rs"]
mod tbank_notice;

const TERMINAL: &str = "1700000000000DEMO";
const PASSWORD: &str = "TestPassword_123";
const USERS: usize = 10;
const PAYMENTS_PER_USER: usize = 5;
const REPLAYS: usize = 4;

/// The fake T-Bank `Init`: a new `PaymentId` for every order, echoing its amount.
struct Init(AtomicU64);

impl Respond for Init {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let id = 3_000_000_000 + self.0.fetch_add(1, Ordering::Relaxed);
        ResponseTemplate::new(200).set_body_json(json!({
            "TerminalKey": TERMINAL, "Amount": body["Amount"], "OrderId": body["OrderId"],
            "Success": true, "Status": "NEW", "PaymentId": id.to_string(), "ErrorCode": "0",
            "PaymentURL": format!("https://securepayments.tinkoff.ru/{id}"),
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("easy-writer-webhooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tbank = MockServer::start().await;
    Mock::given(wiremock::matchers::path("/Init"))
        .respond_with(Init(AtomicU64::new(1)))
        .mount(&tbank)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config_file = dir.join("bench.toml");
    std::fs::write(&config_file, "")?;
    let env: HashMap<String, String> = [
        ("EASY_WRITER_DATA_DIR", dir.to_string_lossy().into_owned()),
        ("EASY_WRITER_PUBLIC_URL", format!("http://{addr}")),
        ("EASY_WRITER_REGISTER_MAX_PER_IP", "100000".into()),
        ("TBANK_TERMINAL_KEY", TERMINAL.into()),
        ("TBANK_PASSWORD", PASSWORD.into()),
        ("TBANK_BASE_URL", tbank.uri()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let flags = Flags {
        config: Some(config_file),
        bind: None,
    };
    let state = AppState::new(Config::load(&flags, &env)?.config)?;
    tokio::spawn(easy_writer::server::serve(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let base = format!("http://{addr}/api/v1");

    println!(
        "{USERS} users × {PAYMENTS_PER_USER} T-Bank payments, each CONFIRMED {REPLAYS}× at once \
         ({} deliveries per round), {rounds} rounds:",
        USERS * PAYMENTS_PER_USER * REPLAYS
    );
    let mut all_latencies = Vec::new();
    for round in 1..=rounds {
        // Sign-ups and creates (not measured).
        let mut notices = Vec::new();
        for u in 0..USERS {
            let email = format!("bench-{round}-{u}-{}@example.com", std::process::id());
            let token = register(&http, &base, &email).await?;
            for p in 0..PAYMENTS_PER_USER {
                let amount = 100 + (u * PAYMENTS_PER_USER + p) as i64;
                let created: Value = http
                    .post(format!("{base}/payments/create"))
                    .bearer_auth(&token)
                    .json(&json!({"amount_rub": amount, "provider": "tbank"}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let payment_id = created["payment_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let payment_url = created["payment_url"].as_str().unwrap_or_default();
                let tb_id: u64 = payment_url.rsplit('/').next().unwrap_or("0").parse()?;
                notices.push(tbank_notice::confirmed(
                    TERMINAL,
                    PASSWORD,
                    &payment_id,
                    tb_id,
                    amount * 100,
                ));
            }
        }
        // Every notification 4 times, in an order that mixes them.
        let mut deliveries: Vec<Value> = notices
            .iter()
            .flat_map(|n| std::iter::repeat_n(n.clone(), REPLAYS))
            .collect();
        let len = deliveries.len();
        for i in 0..len {
            deliveries.swap(i, (i * 7919 + round) % len);
        }
        let started = Instant::now();
        let sends = deliveries.into_iter().map(|body| {
            let http = http.clone();
            let url = format!("{base}/payments/webhook/tbank");
            tokio::spawn(async move {
                let t = Instant::now();
                let response = http.post(url).json(&body).send().await;
                let ok = match response {
                    Ok(r) => r.status() == 200 && r.text().await.is_ok_and(|t| t == "OK"),
                    Err(_) => false,
                };
                (ok, t.elapsed())
            })
        });
        let results = futures_util::future::join_all(sends).await;
        let wall = started.elapsed();
        let mut latencies: Vec<Duration> = Vec::new();
        let mut failed = 0;
        for result in results {
            let (ok, latency) = result?;
            failed += usize::from(!ok);
            latencies.push(latency);
        }
        latencies.sort();
        let (credits, consistent) = check(&state, round).await?;
        println!(
            "  round {round}: wall {}, p50 {}, p99 {}, max {}; non-OK answers {failed}; \
             topup rows {credits} (expected {}); every balance = its ledger sum: {consistent}",
            ms(wall),
            ms(latencies[latencies.len() / 2]),
            ms(latencies[latencies.len() * 99 / 100]),
            ms(latencies[latencies.len() - 1]),
            notices.len()
        );
        if failed > 0 || credits != notices.len() as i64 || !consistent {
            anyhow::bail!("round {round} broke exactly-once");
        }
        all_latencies.extend(latencies);
    }
    all_latencies.sort();
    println!(
        "  all rounds: p50 {}, p99 {}",
        ms(all_latencies[all_latencies.len() / 2]),
        ms(all_latencies[all_latencies.len() * 99 / 100])
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

async fn register(http: &reqwest::Client, base: &str, email: &str) -> anyhow::Result<String> {
    let body: Value = http
        .post(format!("{base}/auth/register"))
        .json(&json!({"email": email, "password": "bench password 123"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(body["access_token"].as_str().unwrap_or_default().to_owned())
}

/// This round's topup rows, and whether every user's balance equals their ledger sum.
async fn check(state: &AppState, round: usize) -> anyhow::Result<(i64, bool)> {
    let pattern = format!("bench-{round}-%");
    Ok(state
        .db
        .read(move |c| {
            let credits: i64 = c.query_row(
                "select count(*) from transactions t join users u on u.id = t.user_id
                 where t.type = 'topup' and u.email like ?1",
                [&pattern],
                |r| r.get(0),
            )?;
            let off: i64 = c.query_row(
                "select count(*) from users u where u.balance !=
                     (select coalesce(sum(amount), 0) from transactions t where t.user_id = u.id)",
                [],
                |r| r.get(0),
            )?;
            Ok::<_, easy_writer::db::Error>((credits, off == 0))
        })
        .await?)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
