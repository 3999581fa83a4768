//! Easy Writer: a self-hosted backend for an AI writing assistant, in one binary.
//! See ARCHITECTURE.md for the map.

/// The bundled admin UI under `/admin`.
pub mod admin;
/// Shared dependencies (`AppState`) and how they are wired.
pub mod app;
/// Accounts, Google and Yandex sign-in, tokens, sessions and the extractors that authenticate
/// requests.
pub mod auth;
/// Raits: the ledger and balances.
pub mod billing;
/// The command-line interface.
pub mod cli;
/// The configuration tree, its sources and validation.
pub mod config;
/// SQLite: connections, the blocking bridge, migrations.
pub mod db;
/// The JSON error body.
pub mod error;
/// Users' pictures: rows, files, signed links, the `/images` endpoints, image jobs.
pub mod gallery;
/// Generation sessions: quick runs, standard jobs, recovery and history.
pub mod generation;
/// `Idempotency-Key` handling for paid POSTs.
pub mod idempotency;
/// Image providers (Kandinsky, Yandex ART), the upscaler and pixel work.
pub mod images;
/// The paid-work path, the job runner, the hub where watchers follow jobs, WebSockets.
pub mod jobs;
/// The WordPress plugin API of the original service: sites, articles, statistics.
pub mod legacy;
/// AI text generation: providers, router, metrics.
pub mod llm;
/// Letters to users (password reset, email verification) over SMTP.
pub mod mail;
/// The OpenAPI document: its header, security schemes and the responses every operation shares.
pub mod openapi;
/// Top-ups through the four payment providers, credited exactly once.
pub mod payments;
/// Extractors shared by all routes.
pub mod request;
/// Router, middleware and serving.
pub mod server;
/// Logging setup.
pub mod telemetry;
/// RFC 3339 timestamps.
pub mod timestamp;
/// Tabs, tools and the prompt catalogue.
pub mod tools;
/// User accounts.
pub mod users;
