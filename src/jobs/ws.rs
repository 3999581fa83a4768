//! `/ws/generation/{session_id}` and `/ws/image/{image_id}`: a job's events for its owner
//! (CONTRACT §5).
//!
//! The upgrade always completes, so that a browser can read why it was refused: a bad token
//! closes with 4401, an unknown id or another user's job with 4404. The token travels in the
//! query string, which is never logged. A socket is one task that forwards the job's shared
//! frames; it never slows the job, and one that falls behind is resynchronised from the
//! job's snapshot. Buffers are kept small: thousands of sockets mostly sit idle.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Handle;
use super::hub::{Event, Subscription};
use crate::app::AppState;
use crate::auth::extract::authenticate;
use crate::gallery;
use crate::generation::{run, store};

/// Close codes of CONTRACT §5.
const UNAUTHORIZED: u16 = 4401;
const NOT_FOUND: u16 = 4404;
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;

/// Clients send nothing but pings and the odd keep-alive text.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
const READ_BUFFER: usize = 4 * 1024;
/// A client that takes longer than this to accept one frame is gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a session row is read when its job is not in this process's hub.
const POLL_EVERY: Duration = Duration::from_millis(500);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ws/generation/{session_id}", get(generation))
        .route("/ws/image/{image_id}", get(image))
}

/// The open sockets, so that shutdown can close them after the jobs have settled.
#[derive(Clone, Default)]
pub struct Sockets {
    tasks: TaskTracker,
    closing: CancellationToken,
}

impl Sockets {
    /// Closes every socket with 1001 and waits for their tasks.
    pub async fn close(&self) {
        self.closing.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Generation,
    Image,
}

async fn generation(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    accept(state, upgrade, Kind::Generation, id, query)
}

async fn image(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    accept(state, upgrade, Kind::Image, id, query)
}

fn accept(
    state: AppState,
    upgrade: WebSocketUpgrade,
    kind: Kind,
    id: String,
    query: Option<String>,
) -> Response {
    let token = query.as_deref().and_then(token_from_query);
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| {
            let tasks = state.sockets.tasks.clone();
            tasks.track_future(watch(state, socket, kind, id, token))
        })
}

fn token_from_query(query: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// What the socket will follow.
enum Source {
    Live(Arc<Handle>),
    Finished(Utf8Bytes),
    /// Work that is not in the hub (and so not running here); its row is polled.
    Row,
    NotFound,
}

/// Where a row stands, as a watcher needs it.
enum Found {
    Missing,
    Running,
    /// Ended: its final event.
    Ended(Utf8Bytes),
}

/// Reads the row of `id` of this kind, owned by `user_id`.
async fn look_up(state: &AppState, kind: Kind, user_id: &str, id: &str) -> Found {
    let (owner, id) = (user_id.to_owned(), id.to_owned());
    let found = match kind {
        Kind::Generation => state
            .db
            .read(move |conn| store::by_id(conn, &owner, &id))
            .await
            .map(|row| match row {
                None => Found::Missing,
                Some(session) if session.completed_at.is_some() => {
                    Found::Ended(run::final_event(&session))
                }
                Some(_) => Found::Running,
            }),
        Kind::Image => {
            let links = state.gallery.links.clone();
            state
                .db
                .read(move |conn| gallery::store::by_id(conn, &owner, &id))
                .await
                .map(|row| match row {
                    None => Found::Missing,
                    Some(row) => match gallery::work::final_event(&row, &links) {
                        Some(frame) => Found::Ended(frame),
                        None => Found::Running,
                    },
                })
        }
    };
    found.unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot read a row for a watcher");
        Found::Missing
    })
}

async fn watch(
    state: AppState,
    mut socket: WebSocket,
    kind: Kind,
    id: String,
    token: Option<String>,
) {
    let user = match token {
        Some(token) => authenticate(&state.auth, &state.db, &token).await.ok(),
        None => None,
    };
    let Some(user) = user else {
        return close(socket, UNAUTHORIZED, "invalid or expired token").await;
    };
    let source = source(&state, kind, &user.user.id, &id).await;
    let connected = match kind {
        Kind::Generation => Event::SessionConnected { session_id: &id },
        Kind::Image => Event::ImageConnected { image_id: &id },
    };
    match source {
        Source::NotFound => close(socket, NOT_FOUND, "not found").await,
        Source::Finished(last) => {
            if send(&mut socket, connected.frame()).await && send(&mut socket, last).await {
                close(socket, NORMAL, "").await;
            }
        }
        Source::Live(handle) => {
            if send(&mut socket, connected.frame()).await {
                follow(&state, socket, &handle).await;
            }
        }
        Source::Row => {
            if send(&mut socket, connected.frame()).await {
                poll(&state, socket, kind, &user.user.id, &id).await;
            }
        }
    }
}

async fn source(state: &AppState, kind: Kind, user_id: &str, id: &str) -> Source {
    if let Some(handle) = state.jobs.hub().get(id) {
        return if handle.user_id == user_id {
            Source::Live(handle)
        } else {
            Source::NotFound
        };
    }
    match look_up(state, kind, user_id, id).await {
        Found::Ended(last) => Source::Finished(last),
        // Registered between the two looks, or settling right now.
        Found::Running => match state.jobs.hub().get(id) {
            Some(handle) => Source::Live(handle),
            None => Source::Row,
        },
        Found::Missing => Source::NotFound,
    }
}

/// Forwards a live job's frames until its final event, the client leaving, or shutdown.
async fn follow(state: &AppState, mut socket: WebSocket, handle: &Handle) {
    let (mut events, snapshot) = match handle.subscribe() {
        Subscription::Finished(last) => {
            if send(&mut socket, last).await {
                close(socket, NORMAL, "").await;
            }
            return;
        }
        Subscription::Live { snapshot, events } => (events, snapshot),
    };
    for frame in snapshot {
        if !send(&mut socket, frame).await {
            return;
        }
    }
    let (mut pings, idle) = timers(state);
    let mut idle_at = Instant::now() + idle;
    let closing = state.sockets.closing.clone();
    loop {
        tokio::select! {
            biased;
            () = closing.cancelled() => {
                // Jobs settle before sockets close: pass on a final event still queued.
                while let Ok(frame) = events.try_recv() {
                    if !send(&mut socket, frame.text).await {
                        return;
                    }
                    if frame.last {
                        return close(socket, NORMAL, "").await;
                    }
                }
                return close(socket, GOING_AWAY, "server shutting down").await;
            }
            received = events.recv() => match received {
                Ok(frame) => {
                    if !send(&mut socket, frame.text).await {
                        return;
                    }
                    if frame.last {
                        return close(socket, NORMAL, "").await;
                    }
                }
                // Fell behind (or, impossibly, the job vanished): start again from the snapshot.
                Err(RecvError::Lagged(_) | RecvError::Closed) => match handle.subscribe() {
                    Subscription::Finished(last) => {
                        if send(&mut socket, last).await {
                            close(socket, NORMAL, "").await;
                        }
                        return;
                    }
                    Subscription::Live { snapshot, events: fresh } => {
                        events = fresh;
                        for frame in snapshot {
                            if !send(&mut socket, frame).await {
                                return;
                            }
                        }
                    }
                },
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => idle_at = Instant::now() + idle,
            },
            _ = pings.tick() => {
                if !send(&mut socket, Event::Ping.frame()).await {
                    return;
                }
            }
            () = tokio::time::sleep_until(idle_at) => {
                if !handle.is_running() {
                    return close(socket, NORMAL, "idle").await;
                }
                // The job is running: an idle watcher stays.
                idle_at = Instant::now() + idle;
            }
        }
    }
}

/// The heartbeat ticker (first tick one interval from now) and the idle interval.
fn timers(state: &AppState) -> (tokio::time::Interval, Duration) {
    let heartbeat = Duration::from_secs(state.config.ws.ws_heartbeat_secs.max(1));
    let mut pings = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
    (
        pings,
        Duration::from_secs(state.config.ws.ws_idle_secs.max(1)),
    )
}

/// Follows work through its row until it ends (a job outside this process's hub, so not
/// running here: the idle rule applies).
async fn poll(state: &AppState, mut socket: WebSocket, kind: Kind, user_id: &str, id: &str) {
    let closing = state.sockets.closing.clone();
    let mut every = tokio::time::interval(POLL_EVERY);
    let (mut pings, idle) = timers(state);
    let mut idle_at = Instant::now() + idle;
    loop {
        tokio::select! {
            () = closing.cancelled() => return close(socket, GOING_AWAY, "server shutting down").await,
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => idle_at = Instant::now() + idle,
            },
            _ = pings.tick() => {
                if !send(&mut socket, Event::Ping.frame()).await {
                    return;
                }
            }
            () = tokio::time::sleep_until(idle_at) => return close(socket, NORMAL, "idle").await,
            _ = every.tick() => {
                if let Found::Ended(last) = look_up(state, kind, user_id, id).await {
                    if send(&mut socket, last).await {
                        close(socket, NORMAL, "").await;
                    }
                    return;
                }
            }
        }
    }
}

/// Sends one text frame; false when the client is gone or too slow to take it.
async fn send(socket: &mut WebSocket, text: Utf8Bytes) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text))).await,
        Ok(Ok(()))
    )
}

async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    // Give the client a moment to answer the close; then the connection is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
