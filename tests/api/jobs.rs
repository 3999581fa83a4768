//! Standard (multi-step) generation as a background job, watched over real WebSockets:
//! the event sequence, ownership and token rules, late joiners, several watchers, heartbeats,
//! failures with refunds, slow clients, shutdown and start-up recovery.

use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::fake_llm::{FakeLlm, Reply};
use crate::helpers::{JWT_SECRET, ServerProcess, Session, TestApp, builder, email};

const STANDARD_COST: i64 = 15; // paraphrase, standard mode

/// A server whose only provider is `fake`, and a user with `raits`.
async fn app_with(fake: &FakeLlm, raits: i64, env: &[(&str, &str)]) -> (TestApp, Session) {
    let mut b = builder()
        .env("OPENAI_BASE_URL", &fake.url)
        .env("OPENAI_API_KEY", "sk-test")
        .env("EASY_WRITER_RETRY_BASE_MS", 5);
    for (k, v) in env {
        b = b.env(k, v);
    }
    let app = b.spawn().await;
    let user = app.register(&email("jobs")).await;
    app.topup(&user.user_id, raits).await;
    (app, user)
}

fn paraphrase() -> Value {
    json!({"input": {"text": "Мы рады сообщить, что проект завершён в срок."}, "mode": "standard"})
}

/// Starts a standard paraphrase run; returns the 202 body.
async fn start(app: &TestApp, user: &Session) -> Value {
    let response = app
        .post_authed(
            "/api/v1/tools/paraphrase/execute",
            &user.access_token,
            &paraphrase(),
        )
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["session_id"].as_str().unwrap();
    assert_eq!(location, format!("/api/v1/generation/sessions/{id}"));
    assert_eq!(body["status"], "pending");
    assert_eq!(body["ws_url"], format!("/ws/generation/{id}"));
    body
}

/// One job slot: a first run held at the provider (ids returned in this order), a second
/// queued behind it.
async fn one_running_one_queued(
    env: &[(&str, &str)],
) -> (FakeLlm, TestApp, Session, String, String) {
    let fake = FakeLlm::start().await;
    fake.then(Reply::held(vec!["Черновик.".into()]));
    let mut env = env.to_vec();
    env.push(("EASY_WRITER_JOB_CONCURRENCY", "1"));
    let (app, user) = app_with(&fake, 100, &env).await;
    let running = start(&app, &user).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    fake.wait_for_calls(1).await;
    let queued = start(&app, &user).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (fake, app, user, running, queued)
}

async fn session(app: &TestApp, user: &Session, id: &str) -> Value {
    app.get_authed(
        &format!("/api/v1/generation/sessions/{id}"),
        &user.access_token,
    )
    .await
    .json()
    .await
    .unwrap()
}

pub struct Watcher {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Watcher {
    pub async fn connect(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> Watcher {
        let url = match token {
            Some(t) => format!("ws://{addr}{path}?token={t}"),
            None => format!("ws://{addr}{path}"),
        };
        let (ws, response) = connect_async(url).await.expect("upgrade completes");
        assert_eq!(response.status(), 101);
        Watcher { ws }
    }

    async fn generation(app: &TestApp, id: &str, user: &Session) -> Watcher {
        Watcher::connect(
            app.addr,
            &format!("/ws/generation/{id}"),
            Some(&user.access_token),
        )
        .await
    }

    /// The next frame, pings included; panics on a close.
    pub async fn frame(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame within 10 s")
                .expect("socket open")
                .expect("frame");
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }

    /// The next event that is not a heartbeat.
    pub async fn event(&mut self) -> Value {
        loop {
            let frame = self.frame().await;
            if frame["event"] != "ping" {
                return frame;
            }
        }
    }

    /// Events up to and including the final one.
    pub async fn until_final(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let event = self.event().await;
            let last = event["event"] == "completed" || event["event"] == "error";
            events.push(event);
            if last {
                return events;
            }
        }
    }

    /// The server's close code (the next frame must be the close).
    pub async fn close_code(&mut self) -> u16 {
        let message = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
            .await
            .expect("a close within 10 s")
            .expect("a close frame, not the end of the stream")
            .expect("frame");
        match message {
            Message::Close(Some(frame)) => u16::from(frame.code),
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["event"].as_str().unwrap() {
            "step_started" | "step_completed" => {
                format!("{}:{}", e["event"].as_str().unwrap(), e["step"])
            }
            other => other.to_owned(),
        })
        .collect()
}

/// The streamed text of each step, rebuilt from the events (a `step_started` resets it).
fn texts(events: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events {
        match e["event"].as_str().unwrap() {
            "step_started" => {
                let step = e["step"].as_u64().unwrap() as usize;
                out.resize(step, String::new());
                out[step - 1].clear();
            }
            "delta" => {
                let step = e["step"].as_u64().unwrap() as usize;
                out[step - 1].push_str(e["text"].as_str().unwrap());
            }
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn a_standard_run_is_watched_step_by_step_and_charged_its_standard_price() {
    let fake = FakeLlm::start().await;
    fake.then(Reply::held(vec![
        "Черновик: ".into(),
        "проект ".into(),
        "сдан вовремя.".into(),
    ]))
    .then(Reply::text(&["Проект ", "сдан ", "точно в срок."]));
    let (app, user) = app_with(&fake, 100, &[]).await;
    let accepted = start(&app, &user).await;
    let id = accepted["session_id"].as_str().unwrap();
    let mut ws = Watcher::generation(&app, id, &user).await;
    assert_eq!(
        ws.event().await,
        json!({"event": "connected", "session_id": id})
    );
    fake.wait_for_calls(1).await;
    fake.release(1);
    let events = ws.until_final().await;
    assert_eq!(ws.close_code().await, 1000);

    let sequence = names(&events);
    let steps: Vec<&String> = sequence
        .iter()
        .filter(|n| n.starts_with("step_started") || n.starts_with("step_completed"))
        .collect();
    assert_eq!(
        steps,
        [
            "step_started:1",
            "step_completed:1",
            "step_started:2",
            "step_completed:2"
        ]
    );
    assert_eq!(sequence.last().unwrap(), "completed");
    assert_eq!(events[0]["step_name"], "Черновик");
    let second = events
        .iter()
        .find(|e| e["event"] == "step_started" && e["step"] == 2)
        .unwrap();
    assert_eq!(second["step_name"], "Редактура");
    // Progress starts at 0 for each step; deltas arrive between a step's start and end.
    assert_eq!(
        events[1],
        json!({"event": "step_progress", "step": 1, "progress": 0})
    );
    let streamed = texts(&events);
    assert_eq!(
        streamed,
        [
            "Черновик: проект сдан вовремя.",
            "Проект сдан точно в срок."
        ]
    );
    assert_eq!(
        events.last().unwrap()["result"],
        "Проект сдан точно в срок."
    );

    // The first step's output fed the second; standard mode asked for the quality model.
    assert_eq!(fake.requests().len(), 2);
    assert!(fake.user_message(0).contains("проект завершён в срок"));
    assert!(
        fake.user_message(1)
            .contains("Черновик: проект сдан вовремя.")
    );
    assert_eq!(fake.requests()[1]["stream"], true);

    let s = app.settled_session(&user, id).await;
    assert_eq!(s["status"], "completed");
    assert_eq!(s["mode"], "standard");
    assert_eq!(s["result"], "Проект сдан точно в срок.");
    assert_eq!(s["provider_used"], "openai");
    assert_eq!(s["tokens_used"], 30);
    assert_eq!(s["cost_raits"], STANDARD_COST);
    assert_eq!(
        app.balance_and_ledger_sum(&user.user_id),
        (100 - STANDARD_COST, 100 - STANDARD_COST)
    );

    // Late join: `connected`, then the final event at once, then a normal close.
    let mut late = Watcher::generation(&app, id, &user).await;
    assert_eq!(late.event().await["event"], "connected");
    let last = late.event().await;
    assert_eq!(last["event"], "completed");
    assert_eq!(last["result"], "Проект сдан точно в срок.");
    assert_eq!(late.close_code().await, 1000);
}

#[tokio::test]
async fn a_per_section_step_writes_one_part_per_plan_line_and_the_next_edits_each_part() {
    let fake = FakeLlm::start().await;
    fake.then(Reply::text(&["Анализ темы."]))
        .then(Reply::text(&[
            "1. Введение\n2. Основная часть\n\n3. Заключение\n",
        ]))
        .then(Reply::text(&["Часть 1."]))
        .then(Reply::text(&["Часть 2."]))
        .then(Reply::text(&["Часть 3."]))
        .then(Reply::text(&["Часть 1, правка."]))
        .then(Reply::text(&["Часть 2, правка."]))
        .then(Reply::text(&["Часть 3, правка."]))
        .then(Reply::text(&[
            "Часть 3 — длиннее и подробнее, с примерами.",
        ]));
    let (app, user) = app_with(&fake, 200, &[]).await;
    let response = app
        .post_authed(
            "/api/v1/tools/abstract/execute",
            &user.access_token,
            &json!({"input": {"topic": "Реформы Петра I", "discipline": "История"}}),
        )
        .await;
    assert_eq!(
        response.status(),
        202,
        "a standard-only tool defaults to standard"
    );
    let body: Value = response.json().await.unwrap();
    let id = body["session_id"].as_str().unwrap();
    let s = app.settled_session(&user, id).await;
    assert_eq!(s["status"], "completed", "{s}");
    let result = s["result"].as_str().unwrap();
    assert!(
        result.contains("**РЕФЕРАТ**\n\nпо дисциплине «История»"),
        "{result}"
    );
    assert!(
        result.ends_with(
            "# Реформы Петра I\n\nЧасть 1, правка.\n\nЧасть 2, правка.\n\n\
             Часть 3 — длиннее и подробнее, с примерами."
        ),
        "{result}"
    );
    assert_eq!(fake.requests().len(), 9, "3 writes, 3 edits, 1 top-up");
    assert!(fake.user_message(2).contains("1. Введение"));
    assert!(fake.user_message(3).contains("2. Основная часть"));
    assert!(fake.user_message(4).contains("3. Заключение"));
    assert!(fake.user_message(5).trim_end().ends_with("Часть 1."));
    assert!(
        fake.user_message(6)
            .contains("Конец предыдущей части:\nЧасть 1, правка.")
    );
    assert!(fake.user_message(8).contains("Часть: 3. Заключение"));
    // The default 10 pages: the base 5 and 5 more at 20.
    assert_eq!(s["cost_raits"], 150);
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (50, 50));

    let mut late = Watcher::generation(&app, id, &user).await;
    assert_eq!(late.event().await["event"], "connected");
    assert_eq!(late.event().await["event"], "completed");
}

fn forge(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn tokens_and_ownership_are_checked_with_close_codes() {
    let fake = FakeLlm::start().await;
    let (app, user) = app_with(&fake, 100, &[]).await;
    let other = app.register(&email("other")).await;
    let id = start(&app, &user).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/ws/generation/{id}");

    let mut claims = claims_of(&user.access_token);
    let now = claims["iat"].as_i64().unwrap();
    claims["iat"] = json!(now - 1000);
    claims["exp"] = json!(now - 10);
    let expired = forge(&claims);
    let mut refresh = claims_of(&user.access_token);
    refresh["typ"] = json!("refresh");
    let wrong_type = forge(&refresh);

    for token in [
        None,
        Some("not-a-token"),
        Some(expired.as_str()),
        Some(wrong_type.as_str()),
        Some(""),
    ] {
        let mut ws = Watcher::connect(app.addr, &path, token).await;
        assert_eq!(ws.close_code().await, 4401, "token {token:?}");
    }
    let mut ws = Watcher::connect(app.addr, &path, Some(&other.access_token)).await;
    assert_eq!(ws.close_code().await, 4404, "another user's session");
    let unknown = format!("/ws/generation/{}", uuid::Uuid::now_v7());
    let mut ws = Watcher::connect(app.addr, &unknown, Some(&user.access_token)).await;
    assert_eq!(ws.close_code().await, 4404, "unknown id");
    let mut ws = Watcher::connect(
        app.addr,
        "/ws/generation/not-a-uuid",
        Some(&user.access_token),
    )
    .await;
    assert_eq!(ws.close_code().await, 4404, "malformed id");
    // The image socket has the same rules; no image exists yet.
    let image = format!("/ws/image/{}", uuid::Uuid::now_v7());
    let mut ws = Watcher::connect(app.addr, &image, None).await;
    assert_eq!(ws.close_code().await, 4401);
    let mut ws = Watcher::connect(app.addr, &image, Some(&user.access_token)).await;
    assert_eq!(ws.close_code().await, 4404);
    // A signed-out session's token no longer opens a socket.
    app.post_with_cookie("/api/v1/auth/logout", Some(&user.refresh_cookie))
        .await;
    let mut ws = Watcher::connect(app.addr, &path, Some(&user.access_token)).await;
    assert_eq!(ws.close_code().await, 4401);
}

#[tokio::test]
async fn two_watchers_and_a_mid_job_joiner_see_the_same_story() {
    let fake = FakeLlm::start().await;
    fake.then(Reply::held(vec!["Черновик.".into()]))
        .then(Reply::held_at(
            vec!["Чистовик, ".into(), "часть вторая.".into()],
            1,
        ));
    let (app, user) = app_with(&fake, 100, &[]).await;
    let id = start(&app, &user).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Both connect before any text exists, so both see the whole story.
    let mut first = Watcher::generation(&app, &id, &user).await;
    let mut second = Watcher::generation(&app, &id, &user).await;
    assert_eq!(first.event().await["event"], "connected");
    assert_eq!(second.event().await["event"], "connected");
    fake.wait_for_calls(1).await;
    fake.release(1);
    fake.wait_for_calls(2).await;
    // Step 2 has streamed its first chunk and is held: a joiner gets the snapshot.
    let mut joiner;
    loop {
        joiner = Watcher::generation(&app, &id, &user).await;
        let _connected = joiner.event().await;
        let started = joiner.event().await;
        if started["step"] == 2 {
            assert_eq!(
                started,
                json!({"event": "step_started", "step": 2, "step_name": "Редактура"})
            );
            assert_eq!(
                joiner.event().await,
                json!({"event": "step_progress", "step": 2, "progress": 0})
            );
            let delta = joiner.event().await;
            if delta == json!({"event": "delta", "step": 2, "text": "Чистовик, "}) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.release(1);
    let a = first.until_final().await;
    let b = second.until_final().await;
    assert_eq!(a, b, "both watchers see every event in the same order");
    assert_eq!(texts(&a)[1], "Чистовик, часть вторая.");
    let rest = joiner.until_final().await;
    assert_eq!(
        rest.first().unwrap(),
        &json!({"event": "delta", "step": 2, "text": "часть вторая."})
    );
    assert_eq!(rest.last().unwrap()["result"], "Чистовик, часть вторая.");
    for ws in [&mut first, &mut second, &mut joiner] {
        assert_eq!(ws.close_code().await, 1000);
    }
}

#[tokio::test]
async fn heartbeats_keep_flowing_and_an_idle_watcher_of_a_running_job_stays() {
    let fake = FakeLlm::start().await;
    fake.then(Reply::held(vec!["Черновик.".into()]));
    let (app, user) = app_with(
        &fake,
        100,
        &[
            ("EASY_WRITER_WS_HEARTBEAT_SECS", "1"),
            ("EASY_WRITER_WS_IDLE_SECS", "1"),
        ],
    )
    .await;
    let id = start(&app, &user).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = Watcher::generation(&app, &id, &user).await;
    assert_eq!(ws.frame().await["event"], "connected");
    fake.wait_for_calls(1).await;
    let started = std::time::Instant::now();
    let mut pings = 0;
    // Well past the idle interval without a client frame: pings, not a close.
    while started.elapsed() < Duration::from_millis(3300) {
        let frame = ws.frame().await;
        if frame == json!({"event": "ping"}) {
            pings += 1;
        }
    }
    assert!((2..=4).contains(&pings), "{pings} pings in 3.3 s at 1 s");
    // A client frame is activity; a protocol ping is answered.
    ws.ws
        .send(Message::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    fake.release(1);
    let events = ws.until_final().await;
    assert_eq!(events.last().unwrap()["event"], "completed");
    assert_eq!(ws.close_code().await, 1000);
}

#[tokio::test]
async fn a_provider_failure_in_step_two_is_an_error_event_and_a_refund() {
    let fake = FakeLlm::start().await;
    fake.then(Reply::held(vec!["Черновик.".into()]))
        .then(Reply::Status(500))
        .then(Reply::Status(500))
        .then(Reply::Status(500));
    let (app, user) = app_with(&fake, 100, &[]).await;
    let id = start(&app, &user).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = Watcher::generation(&app, &id, &user).await;
    assert_eq!(ws.event().await["event"], "connected");
    fake.wait_for_calls(1).await;
    fake.release(1);
    let events = ws.until_final().await;
    assert_eq!(ws.close_code().await, 1000);
    let milestones: Vec<String> = names(&events)
        .into_iter()
        .filter(|n| n.starts_with("step_started") || n.starts_with("step_completed"))
        .collect();
    assert_eq!(
        milestones,
        ["step_started:1", "step_completed:1", "step_started:2"]
    );
    let error = events.last().unwrap();
    assert_eq!(error["event"], "error");
    assert_eq!(error["code"], "providers_unavailable");
    assert!(error["message"].as_str().unwrap().contains("refunded"));
    assert_eq!(fake.requests().len(), 4, "step 2 had its three attempts");

    let s = app.settled_session(&user, &id).await;
    assert_eq!(s["status"], "failed");
    assert_eq!(s["error"]["code"], "providers_unavailable");
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (100, 100));
    let ledger: Value = app
        .get_authed("/api/v1/user/transactions", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = ledger["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["refund", "spend", "adjustment"]);

    // A late watcher of a failed job gets the error at once.
    let mut late = Watcher::generation(&app, &id, &user).await;
    assert_eq!(late.event().await["event"], "connected");
    assert_eq!(late.event().await["code"], "providers_unavailable");
    assert_eq!(late.close_code().await, 1000);
}

#[tokio::test]
async fn a_client_that_stops_reading_never_slows_the_job_and_catches_up_from_a_snapshot() {
    let fake = FakeLlm::start().await;
    // ~6.6 MB of large deltas fill the socket buffers, then 600 small ones overflow the
    // channel's backlog while this watcher reads nothing; then the step waits.
    let big = "слово ".repeat(1000);
    let mut chunks: Vec<String> = (0..600).map(|i| format!("[{i}]{big}")).collect();
    chunks.extend((0..600).map(|i| format!("<{i}>")));
    chunks.push(" Конец.".into());
    let draft: String = chunks.concat();
    fake.then(Reply::held_at(chunks, 1200))
        .then(Reply::text(&["Итог."]));
    let (app, user) = app_with(&fake, 100, &[]).await;
    let id = start(&app, &user).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut slow = Watcher::generation(&app, &id, &user).await;
    fake.wait_for_calls(1).await;
    // The job streams all of it while the watcher sleeps.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut events = Vec::new();
    loop {
        let event = slow.event().await;
        let caught_up =
            event["event"] == "delta" && event["text"].as_str().unwrap().ends_with("<599>");
        events.push(event);
        if caught_up {
            break;
        }
    }
    fake.release(1);
    events.extend(slow.until_final().await);
    assert_eq!(events[0]["event"], "connected");
    let restarts = names(&events)
        .iter()
        .filter(|n| *n == "step_started:1")
        .count();
    assert!(
        restarts >= 2,
        "the watcher fell behind and was resynchronised ({restarts})"
    );
    assert_eq!(texts(&events)[0], draft, "the rebuilt text is whole");
    let s = app.settled_session(&user, &id).await;
    assert_eq!(s["status"], "completed");
    assert_eq!(fake.user_message(1).matches("слово").count(), 600 * 1000);
    assert_eq!(events.last().unwrap()["result"], "Итог.");
}

#[tokio::test]
async fn an_idempotency_key_queues_one_job_and_replays_its_202() {
    let fake = FakeLlm::start().await;
    let (app, user) = app_with(&fake, 100, &[]).await;
    let send = || {
        app.client
            .post(app.url("/api/v1/tools/paraphrase/execute"))
            .bearer_auth(&user.access_token)
            .header("Idempotency-Key", "job-1")
            .json(&paraphrase())
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    app.settled_session(&user, first["session_id"].as_str().unwrap())
        .await;
    assert_eq!(
        app.balance_and_ledger_sum(&user.user_id),
        (100 - STANDARD_COST, 100 - STANDARD_COST)
    );
    assert_eq!(fake.requests().len(), 2, "one job, two steps");
}

#[tokio::test]
async fn shutdown_interrupts_running_jobs_after_the_grace_and_keeps_queued_ones_for_the_next_start()
{
    let (fake, app, user, running, queued) =
        one_running_one_queued(&[("EASY_WRITER_SHUTDOWN_GRACE_SECS", "1")]).await;
    let mut ws = Watcher::generation(&app, &running, &user).await;
    assert_eq!(ws.event().await["event"], "connected");
    assert_eq!(session(&app, &user, &queued).await["status"], "pending");

    let stopped = std::time::Instant::now();
    let (events, data_dir) = tokio::join!(ws.until_final(), app.stop());
    let waited = stopped.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    let error = events.last().unwrap();
    assert_eq!(error["event"], "error");
    assert_eq!(error["code"], "interrupted");

    // Restarted on the same data: the interrupted job stays refunded, the queued one runs.
    let app = builder()
        .data_dir(data_dir)
        .env("OPENAI_BASE_URL", &fake.url)
        .env("OPENAI_API_KEY", "sk-test")
        .spawn()
        .await;
    let s = session(&app, &user, &running).await;
    assert_eq!(s["status"], "failed");
    assert_eq!(s["error"]["code"], "interrupted");
    let s = app.settled_session(&user, &queued).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(
        app.balance_and_ledger_sum(&user.user_id),
        (100 - STANDARD_COST, 100 - STANDARD_COST)
    );
}

#[tokio::test]
async fn a_quick_run_can_be_watched_too() {
    let fake = FakeLlm::start().await;
    let (app, user) = app_with(&fake, 100, &[]).await;
    let response = app
        .post_authed(
            "/api/v1/tools/paraphrase/execute",
            &user.access_token,
            &json!({"input": {"text": "Текст."}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let quick: Value = response.json().await.unwrap();
    let mut ws = Watcher::generation(&app, quick["id"].as_str().unwrap(), &user).await;
    assert_eq!(ws.event().await["event"], "connected");
    let last = ws.event().await;
    assert_eq!(last["event"], "completed");
    assert_eq!(last["result"], quick["result"]);
}

/// The real binary, killed with SIGKILL mid-job and started again on the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_refunds_the_running_job_and_runs_the_queued_one_after_restart() {
    let fake = FakeLlm::start().await;
    fake.then(Reply::held(vec!["никогда".into()]));
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OPENAI_BASE_URL", fake.url.as_str()),
        ("OPENAI_API_KEY", "sk-test"),
        ("EASY_WRITER_SIGNUP_BONUS", "100"),
        ("EASY_WRITER_JOB_CONCURRENCY", "1"),
    ];
    let client = reqwest::Client::new();
    let server = ServerProcess::start(dir.path(), &env).await;
    let addr = server.addr();
    let url = |path: &str| format!("http://{addr}{path}");
    let registered: Value = client
        .post(url("/api/v1/auth/register"))
        .json(&json!({"email": email("kill"), "password": crate::helpers::PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["access_token"].as_str().unwrap().to_owned();
    let run = || async {
        let r = client
            .post(url("/api/v1/tools/paraphrase/execute"))
            .bearer_auth(&token)
            .json(&paraphrase())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        r.json::<Value>().await.unwrap()["session_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let running = run().await;
    fake.wait_for_calls(1).await;
    let queued = run().await;
    let get = |id: String| {
        let (client, token) = (client.clone(), token.clone());
        let url = url(&format!("/api/v1/generation/sessions/{id}"));
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(get(running.clone()).await["status"], "in_progress");
    assert_eq!(get(queued.clone()).await["status"], "pending");
    server.kill();

    let server = ServerProcess::start_on(addr, dir.path(), &env).await;
    let s = get(running).await;
    assert_eq!(s["status"], "failed");
    assert_eq!(s["error"]["code"], "interrupted");
    let mut s = get(queued.clone()).await;
    for _ in 0..400 {
        if s["completed_at"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        s = get(queued.clone()).await;
    }
    assert_eq!(s["status"], "completed", "{s}");
    let me: Value = client
        .get(url("/api/v1/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["balance"], 100 - STANDARD_COST, "one refunded, one paid");
    let conn = rusqlite::Connection::open(dir.path().join("easy-writer.db")).unwrap();
    let (refunds, sum): (i64, i64) = conn
        .query_row(
            "select count(*) filter (where type = 'refund'), sum(amount) from transactions",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((refunds, sum), (1, 100 - STANDARD_COST));
    server.stop();
}

#[tokio::test]
async fn a_tool_that_declares_no_steps_drafts_with_its_own_prompt_then_edits() {
    let dir = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
    for entry in walk(&source) {
        let relative = entry.strip_prefix(&source).unwrap();
        let target = dir.path().join(relative);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &target).unwrap();
    }
    let file = dir.path().join("everyday/letter.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let without_steps = &text[..text.find("\nsteps:").expect("letter declares steps")];
    std::fs::write(&file, format!("{without_steps}\n")).unwrap();

    let fake = FakeLlm::start().await;
    fake.then(Reply::text(&["Черновик письма."]))
        .then(Reply::text(&["Письмо."]));
    let (app, user) = app_with(
        &fake,
        100,
        &[("EASY_WRITER_PROMPTS_DIR", &dir.path().display().to_string())],
    )
    .await;
    let id = app
        .queue_run(
            &user,
            "letter",
            &json!({"input": {"recipient": "Анна", "purpose": "Поблагодарить за помощь"}, "mode": "standard"}),
        )
        .await;
    let s = app.settled_session(&user, &id).await;
    assert_eq!(s["result"], "Письмо.", "{s}");
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let letter: Value =
        serde_json::to_value(serde_saphyr::from_str::<serde_json::Value>(&text).unwrap()).unwrap();
    assert_eq!(
        requests[0]["messages"][0]["content"], letter["system_prompt"],
        "the draft uses the tool's own prompt"
    );
    assert!(fake.user_message(1).contains("Черновик письма."));
    assert!(
        requests[1]["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("редактор")
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn an_idle_watcher_of_a_queued_job_is_closed_and_can_come_back() {
    let (fake, app, user, running, queued) = one_running_one_queued(&[
        ("EASY_WRITER_WS_HEARTBEAT_SECS", "1"),
        ("EASY_WRITER_WS_IDLE_SECS", "2"),
    ])
    .await;
    let mut waiting = Watcher::generation(&app, &queued, &user).await;
    let mut busy = Watcher::generation(&app, &running, &user).await;
    assert_eq!(waiting.frame().await["event"], "connected");
    assert_eq!(busy.frame().await["event"], "connected");
    // Heartbeats are server frames, not activity: the queued job's silent watcher is closed.
    let opened = std::time::Instant::now();
    let mut pings = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), waiting.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == r#"{"event":"ping"}"# => pings += 1,
            Ok(Some(Ok(Message::Close(Some(frame))))) => break u16::from(frame.code),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 1000);
    assert!(pings >= 1, "pings reach queued watchers too");
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(1800) && lived < Duration::from_secs(5),
        "{lived:?}"
    );
    // The running job's watcher, just as silent, is still there (after its snapshot).
    while busy.frame().await != json!({"event": "ping"}) {}
    fake.release(1);
    assert_eq!(
        busy.until_final().await.last().unwrap()["event"],
        "completed"
    );
    let mut back = Watcher::generation(&app, &queued, &user).await;
    assert_eq!(back.event().await["event"], "connected");
    let events = back.until_final().await;
    assert_eq!(events.last().unwrap()["event"], "completed");
}

#[tokio::test]
async fn a_queued_job_whose_tool_lost_standard_mode_across_a_restart_is_refunded() {
    let (fake, app, user, running, queued) =
        one_running_one_queued(&[("EASY_WRITER_SHUTDOWN_GRACE_SECS", "0")]).await;
    let data_dir = app.stop().await;

    // The operator's prompts now offer paraphrase in quick mode only.
    let prompts = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
    for entry in walk(&source) {
        let target = prompts.path().join(entry.strip_prefix(&source).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &target).unwrap();
    }
    let file = prompts.path().join("everyday/paraphrase.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let quick_only = text[..text.find("\nsteps:").unwrap()]
        .replace(
            "supports_modes: [quick, standard]",
            "supports_modes: [quick]",
        )
        .replace("costs: {quick: 5, standard: 15}", "costs: {quick: 5}")
        .replace("rates: {quick: 2, standard: 6}", "rates: {quick: 2}");
    std::fs::write(&file, format!("{quick_only}\n")).unwrap();

    let app = builder()
        .data_dir(data_dir)
        .env("OPENAI_BASE_URL", &fake.url)
        .env("OPENAI_API_KEY", "sk-test")
        .env("EASY_WRITER_PROMPTS_DIR", prompts.path().display())
        .spawn()
        .await;
    for id in [&running, &queued] {
        let s = session(&app, &user, id).await;
        assert_eq!(s["status"], "failed", "{s}");
        assert_eq!(s["error"]["code"], "interrupted");
    }
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (100, 100));
    assert_eq!(
        fake.requests().len(),
        1,
        "nothing more was sent to the provider"
    );
}
