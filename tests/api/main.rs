//! Integration tests: each starts the real server on port 0 with a temporary data directory
//! and talks HTTP to it (and runs the real binary for the CLI).

mod account;
mod auth;
mod catalogue;
mod cli;
mod gigachat;
mod helpers;
mod http;
mod oauth;
mod openai;
mod persistence;
mod proxy;
mod router;
mod tools;
mod yandexgpt;
