//! Where running jobs publish progress and WebSocket watchers follow it (CONTRACT §5).
//!
//! Each job in flight has a [`Handle`]: a `broadcast` channel of ready-made JSON frames (built
//! once, shared by every watcher) and a snapshot of where the job stands. Publishing never
//! waits for a watcher; one that falls behind the channel is given a fresh snapshot instead
//! (`step_started` of the current step, its last `step_progress`, the text so far). The
//! snapshot is updated and the frame sent under one lock, and subscribing takes the same lock,
//! so a watcher sees the snapshot and then exactly the events after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// Frames a watcher may fall behind by before it is resynchronised from the snapshot.
const BACKLOG: usize = 256;

/// The events of CONTRACT §5, as sent.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    #[serde(rename = "connected")]
    SessionConnected {
        session_id: &'a str,
    },
    #[serde(rename = "connected")]
    ImageConnected {
        image_id: &'a str,
    },
    StepStarted {
        step: usize,
        step_name: &'a str,
    },
    StepProgress {
        step: usize,
        progress: u8,
    },
    StepCompleted {
        step: usize,
    },
    Delta {
        step: usize,
        text: &'a str,
    },
    /// Image progress.
    Processing {
        progress: u8,
    },
    Completed {
        result: &'a Value,
    },
    #[serde(rename = "completed")]
    ImageCompleted {
        url: &'a str,
    },
    Error {
        code: &'a str,
        message: &'a str,
    },
    Ping,
}

impl Event<'_> {
    pub fn frame(&self) -> Utf8Bytes {
        serde_json::to_string(self)
            .expect("events serialize")
            .into()
    }
}

/// One published event.
#[derive(Clone, Debug)]
pub struct Frame {
    pub text: Utf8Bytes,
    /// The final event (`completed` or `error`): nothing follows it.
    pub last: bool,
}

/// Where a job stands, for watchers that join late or fall behind.
#[derive(Debug, Default)]
enum Snapshot {
    /// Queued, or a one-call run with nothing to show before its result.
    #[default]
    Waiting,
    Generation {
        step: usize,
        step_name: String,
        progress: u8,
        text: String,
    },
    Image {
        progress: u8,
    },
}

impl Snapshot {
    fn frames(&self) -> Vec<Utf8Bytes> {
        match self {
            Snapshot::Waiting => Vec::new(),
            Snapshot::Generation {
                step,
                step_name,
                progress,
                text,
            } => {
                let mut frames = vec![
                    Event::StepStarted {
                        step: *step,
                        step_name,
                    }
                    .frame(),
                    Event::StepProgress {
                        step: *step,
                        progress: *progress,
                    }
                    .frame(),
                ];
                if !text.is_empty() {
                    frames.push(Event::Delta { step: *step, text }.frame());
                }
                frames
            }
            Snapshot::Image { progress } => vec![
                Event::Processing {
                    progress: *progress,
                }
                .frame(),
            ],
        }
    }
}

/// What a new (or resynchronised) watcher gets.
pub enum Subscription {
    /// Frames that bring the watcher up to date, then the live channel.
    Live {
        snapshot: Vec<Utf8Bytes>,
        events: broadcast::Receiver<Frame>,
    },
    /// The job has ended: its final event.
    Finished(Utf8Bytes),
}

/// A job in flight.
pub struct Handle {
    pub id: String,
    /// Only the owner may watch.
    pub user_id: String,
    state: Mutex<State>,
}

struct State {
    /// Made when the first watcher subscribes: most quick runs never have one.
    sender: Option<broadcast::Sender<Frame>>,
    snapshot: Snapshot,
    /// Taken a slot and started (a queued job has not).
    started: bool,
    last: Option<Utf8Bytes>,
}

impl Handle {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written in a way that
        // matters to watchers, so a poisoned lock is used as it is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn subscribe(&self) -> Subscription {
        let mut state = self.state();
        if let Some(last) = &state.last {
            return Subscription::Finished(last.clone());
        }
        let events = state
            .sender
            .get_or_insert_with(|| broadcast::channel(BACKLOG).0)
            .subscribe();
        Subscription::Live {
            snapshot: state.snapshot.frames(),
            events,
        }
    }

    /// Started and not yet ended: its watchers are never closed for idleness.
    pub fn is_running(&self) -> bool {
        let state = self.state();
        state.started && state.last.is_none()
    }

    pub fn mark_started(&self) {
        self.state().started = true;
    }

    fn publish(&self, event: &Event<'_>, update: impl FnOnce(&mut Snapshot)) {
        let mut state = self.state();
        if state.last.is_some() {
            return;
        }
        update(&mut state.snapshot);
        if let Some(sender) = &state.sender {
            // No receivers is not an error: nobody is watching.
            let _ = sender.send(Frame {
                text: event.frame(),
                last: false,
            });
        }
    }

    pub fn step_started(&self, step: usize, step_name: &str) {
        self.publish(&Event::StepStarted { step, step_name }, |s| {
            *s = Snapshot::Generation {
                step,
                step_name: step_name.to_owned(),
                progress: 0,
                text: String::new(),
            }
        });
        self.step_progress(step, 0);
    }

    pub fn step_progress(&self, step: usize, progress: u8) {
        self.publish(&Event::StepProgress { step, progress }, |s| {
            if let Snapshot::Generation { progress: p, .. } = s {
                *p = progress;
            }
        });
    }

    pub fn delta(&self, step: usize, text: &str) {
        self.publish(&Event::Delta { step, text }, |s| {
            if let Snapshot::Generation { text: so_far, .. } = s {
                so_far.push_str(text);
            }
        });
    }

    pub fn step_completed(&self, step: usize) {
        self.publish(&Event::StepCompleted { step }, |_| {});
    }

    pub fn processing(&self, progress: u8) {
        self.publish(&Event::Processing { progress }, |s| {
            *s = Snapshot::Image { progress }
        });
    }

    /// Publishes the final event; later publications are ignored.
    pub fn finish(&self, event: &Event<'_>) {
        let mut state = self.state();
        if state.last.is_some() {
            return;
        }
        let text = event.frame();
        state.last = Some(text.clone());
        if let Some(sender) = &state.sender {
            let _ = sender.send(Frame { text, last: true });
        }
    }
}

/// The jobs in flight, by id.
#[derive(Default)]
pub struct Hub {
    jobs: Mutex<HashMap<String, Arc<Handle>>>,
}

impl Hub {
    fn jobs(&self) -> MutexGuard<'_, HashMap<String, Arc<Handle>>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes a job watchable. Call before anyone can learn its id.
    pub fn register(&self, id: &str, user_id: &str) -> Arc<Handle> {
        let handle = Arc::new(Handle {
            id: id.to_owned(),
            user_id: user_id.to_owned(),
            state: Mutex::new(State {
                sender: None,
                snapshot: Snapshot::default(),
                started: false,
                last: None,
            }),
        });
        self.jobs().insert(id.to_owned(), handle.clone());
        handle
    }

    pub fn get(&self, id: &str) -> Option<Arc<Handle>> {
        self.jobs().get(id).cloned()
    }

    /// Forgets a job whose row now holds its outcome (or that stays queued for the next
    /// start). Watchers already subscribed keep their handle.
    pub fn remove(&self, id: &str) {
        self.jobs().remove(id);
    }

    pub fn len(&self) -> usize {
        self.jobs().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: &Utf8Bytes) -> Value {
        serde_json::from_str(frame.as_str()).unwrap()
    }

    #[test]
    fn a_late_watcher_gets_the_snapshot_then_only_later_events() {
        let hub = Hub::default();
        let job = hub.register("s1", "u1");
        job.step_started(1, "Анализ");
        job.delta(1, "Привет, ");
        job.delta(1, "мир");
        job.step_progress(1, 40);
        let Subscription::Live {
            snapshot,
            mut events,
        } = job.subscribe()
        else {
            panic!("live")
        };
        let snapshot: Vec<Value> = snapshot.iter().map(text).collect();
        assert_eq!(
            snapshot,
            vec![
                serde_json::json!({"event":"step_started","step":1,"step_name":"Анализ"}),
                serde_json::json!({"event":"step_progress","step":1,"progress":40}),
                serde_json::json!({"event":"delta","step":1,"text":"Привет, мир"}),
            ]
        );
        job.step_completed(1);
        let result = Value::String("итог".into());
        job.finish(&Event::Completed { result: &result });
        job.delta(1, "ignored after the end");
        let first = events.try_recv().unwrap();
        assert_eq!(text(&first.text)["event"], "step_completed");
        let last = events.try_recv().unwrap();
        assert!(last.last);
        assert_eq!(text(&last.text)["result"], "итог");
        assert!(events.try_recv().is_err(), "nothing after the final event");
        match job.subscribe() {
            Subscription::Finished(frame) => assert_eq!(text(&frame)["event"], "completed"),
            Subscription::Live { .. } => panic!("finished"),
        }
    }

    #[test]
    fn a_lagging_receiver_is_told_so_and_can_resubscribe() {
        let hub = Hub::default();
        let job = hub.register("s2", "u1");
        job.step_started(2, "План");
        let Subscription::Live { mut events, .. } = job.subscribe() else {
            panic!("live")
        };
        for _ in 0..BACKLOG + 10 {
            job.delta(2, "x");
        }
        assert!(matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        let Subscription::Live { snapshot, .. } = job.subscribe() else {
            panic!("live")
        };
        assert_eq!(
            text(&snapshot[2])["text"].as_str().unwrap().len(),
            BACKLOG + 10
        );
        hub.remove("s2");
        assert!(hub.get("s2").is_none());
    }
}
