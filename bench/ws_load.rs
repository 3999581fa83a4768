//! WebSocket load client for `bench/ws.sh`.
//!
//! `ws_load idle <server> <token> <server pid> <connections> <hold secs> <heartbeat secs> <session ids, comma-separated>`
//!   opens the connections (spread over the sessions), keeps them idle for the hold, and
//!   reports the server's RSS before and after, drops, and the gaps between heartbeats.
//! `ws_load latency <server> <token> <connections> <release url> <session id>`
//!   opens the connections on one session, releases the fake provider, and reports the delay
//!   from each delta's send time (stamped by the fake) to its receipt, over every watcher.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::{Mutex, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Connections being opened at once (the server's accept backlog is finite).
const OPENING: usize = 256;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("idle") if args.len() == 8 => idle(&args[1..]).await,
        Some("latency") if args.len() == 6 => latency(&args[1..]).await,
        _ => {
            eprintln!("usage: see the top of bench/ws_load.rs");
            std::process::exit(2);
        }
    }
}

fn rss_mb(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

async fn open(
    server: &str,
    session: &str,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{server}/ws/generation/{session}?token={token}");
    for attempt in 0.. {
        match tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config()), true).await
        {
            Ok((ws, _)) => return ws,
            Err(e) if attempt < 5 => {
                eprintln!("connect failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot connect: {e}"),
        }
    }
    unreachable!()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn idle(args: &[String]) {
    let (server, token, pid) = (&args[0], &args[1], &args[2]);
    let connections: usize = args[3].parse().expect("connections");
    let hold = Duration::from_secs(args[4].parse().expect("hold secs"));
    let heartbeat: f64 = args[5].parse().expect("heartbeat secs");
    let sessions: Vec<String> = args[6].split(',').map(str::to_owned).collect();

    let before = rss_mb(pid);
    let started = Instant::now();
    let opening = Arc::new(Semaphore::new(OPENING));
    let ready = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let gaps = Arc::new(Mutex::new(Vec::<f64>::new()));
    let deadline = Arc::new(Mutex::new(None::<Instant>));
    let mut tasks = Vec::with_capacity(connections);
    for i in 0..connections {
        let (server, token, session) = (
            server.clone(),
            token.clone(),
            sessions[i % sessions.len()].clone(),
        );
        let (opening, ready, dropped, gaps, deadline) = (
            opening.clone(),
            ready.clone(),
            dropped.clone(),
            gaps.clone(),
            deadline.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = opening.acquire().await.unwrap();
            let mut ws = open(&server, &session, &token).await;
            // `connected`, then the snapshot of a step that has not produced text.
            let mut seen_connected = false;
            while !seen_connected {
                if let Some(Ok(Message::Text(t))) = ws.next().await {
                    seen_connected = t.as_str().contains("\"connected\"");
                }
            }
            drop(permit);
            ready.fetch_add(1, Ordering::Relaxed);
            let mut last_ping = Instant::now();
            let mut own_gaps = Vec::new();
            loop {
                let end = deadline
                    .lock()
                    .await
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                let next = tokio::time::timeout_at(end.into(), ws.next()).await;
                match next {
                    Err(_) => break, // the hold is over
                    Ok(Some(Ok(Message::Text(t)))) => {
                        if t.as_str() == r#"{"event":"ping"}"# {
                            own_gaps.push(last_ping.elapsed().as_secs_f64());
                            last_ping = Instant::now();
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(_)) | None) => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            // The first gap runs from connecting, not from a ping.
            gaps.lock().await.extend(own_gaps.into_iter().skip(1));
            ws
        }));
    }
    while ready.load(Ordering::Relaxed) + dropped.load(Ordering::Relaxed) < connections {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = rss_mb(pid);
    *deadline.lock().await = Some(Instant::now() + hold);
    tokio::time::sleep(hold / 2).await;
    let middle = rss_mb(pid);
    let mut sockets = Vec::with_capacity(connections);
    for t in tasks {
        sockets.push(t.await.expect("task"));
    }
    let after = rss_mb(pid);
    let mut gaps = gaps.lock().await.clone();
    gaps.sort_by(f64::total_cmp);
    println!(
        "connections: {connections} opened in {:.1} s",
        opened_in.as_secs_f64()
    );
    println!(
        "server RSS: {before:.1} MB before, {connected:.1} MB with them open, {middle:.1} MB mid-hold, {after:.1} MB after {} s idle",
        hold.as_secs()
    );
    println!(
        "RSS growth: {:.1} MB ({:.1} KB a connection)",
        after.max(middle).max(connected) - before,
        (after.max(middle).max(connected) - before) * 1024.0 / connections as f64
    );
    println!(
        "dropped during the hold: {}",
        dropped.load(Ordering::Relaxed)
    );
    println!(
        "heartbeat gaps (configured {heartbeat} s): {} measured, p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        gaps.len(),
        percentile(&gaps, 0.5),
        percentile(&gaps, 0.99),
        gaps.last().copied().unwrap_or(f64::NAN)
    );
    drop(sockets);
}

async fn latency(args: &[String]) {
    let (server, token) = (&args[0], &args[1]);
    let connections: usize = args[2].parse().expect("connections");
    let (release, session) = (&args[3], &args[4]);
    let opening = Arc::new(Semaphore::new(OPENING));
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (server, token, session, opening, ready) = (
            server.clone(),
            token.clone(),
            session.clone(),
            opening.clone(),
            ready.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = opening.acquire().await.unwrap();
            let mut ws = open(&server, &session, &token).await;
            drop(permit);
            ready.fetch_add(1, Ordering::Relaxed);
            let mut delays = Vec::new();
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let text = text.as_str();
                if text.contains("\"event\":\"delta\"") {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_micros();
                    // A live delta carries one stamp; a snapshot (after lagging) several.
                    let stamps: Vec<u128> = text
                        .split("t=")
                        .skip(1)
                        .filter_map(|s| s.split(';').next()?.parse().ok())
                        .collect();
                    if let [stamp] = stamps[..] {
                        delays.push((now.saturating_sub(stamp)) as f64 / 1000.0);
                    }
                } else if text.contains("\"event\":\"completed\"")
                    || text.contains("\"event\":\"error\"")
                {
                    break;
                }
            }
            delays
        }));
    }
    while ready.load(Ordering::Relaxed) < connections {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    reqwest::Client::new()
        .post(release)
        .send()
        .await
        .expect("release the fake provider");
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_by(f64::total_cmp);
    println!(
        "{connections} watchers, {} deltas received: delay p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(f64::NAN)
    );
}
