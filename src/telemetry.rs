//! Logging: `tracing` to stderr, human text or JSON lines, level from `RUST_LOG` (default
//! `info`). Fields are dotted and stable (`user.id`, `http.status`, `duration_ms`); secrets,
//! tokens and prompt text are never logged.
//!
//! Lines are written by a background thread, so a request never waits for a `write` syscall;
//! keep the returned guard alive until exit so the last lines are flushed.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `json` selects JSON lines.
pub fn init(json: bool) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    guard
}
