//! Integration tests: each starts the real server on port 0 with a temporary data directory
//! and talks HTTP and WebSocket to it (and runs the real binary for the CLI).

mod account;
mod admin;
mod admin_pages;
mod auth;
mod catalogue;
mod cli;
mod export;
mod fake_images;
mod fake_llm;
mod fake_payments;
mod gigachat;
mod hardening;
mod helpers;
mod http;
mod image_providers;
mod images;
mod jobs;
mod longform;
mod mail;
mod oauth;
mod openai;
mod payments;
mod persistence;
mod pricing;
mod proxy;
mod restore;
mod router;
mod tools;
mod wordpress;
mod yandexgpt;
