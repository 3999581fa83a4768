//! The bundled admin UI under `/admin` (CONTRACT §4 "Admin UI"): pages rendered on the server
//! from templates compiled into the binary, working without JavaScript, behind its own
//! session cookie, with a CSRF token on every form and every action in the audit log.
//! Actions go through the same domain code as the API (the ledger, the users' and sites'
//! stores, the mailer): there is no second path to money.

pub mod audit;
mod dashboard;
mod lists;
mod login;
pub mod session;
mod sites;
mod system;
mod tools;
mod users;
mod view;

use axum::Router;
use axum::routing::{get, post};
use minijinja::Value;

use crate::app::AppState;
pub use session::Admin;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin", get(dashboard::page))
        .route("/admin/", get(dashboard::page))
        .route("/admin/login", get(login::form).post(login::submit))
        .route("/admin/logout", post(login::logout))
        .route("/admin/users", get(users::list))
        .route("/admin/users/{id}", get(users::detail))
        .route("/admin/users/{id}/balance", post(users::adjust))
        .route("/admin/users/{id}/active", post(users::set_active))
        .route("/admin/users/{id}/admin", post(users::set_admin))
        .route("/admin/users/{id}/reset", post(users::send_reset))
        .route("/admin/audit", get(users::audit))
        .route("/admin/sessions", get(lists::sessions))
        .route("/admin/images", get(lists::images))
        .route("/admin/payments", get(lists::payments))
        .route("/admin/webhooks", get(lists::webhooks))
        .route("/admin/transactions", get(lists::transactions))
        .route("/admin/sites", get(sites::sites))
        .route("/admin/sites/{id}/rotate", post(sites::rotate_site))
        .route("/admin/articles", get(lists::articles))
        .route("/admin/tools", get(tools::page))
        .route("/admin/providers", get(system::providers))
        .route("/admin/providers/check", post(system::check_providers))
        .route("/admin/settings", get(system::settings))
        .route("/admin/backup", post(system::backup))
        .route("/admin/static/{file}", get(view::static_file))
        .layer(axum::middleware::map_response(view::harden))
}

/// What every page's layout needs: who is signed in, the form token, the current section.
fn base(admin: &Admin, section: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("admin_email", Value::from(admin.user.email.clone())),
        ("csrf", Value::from(admin.csrf.clone())),
        ("section", Value::from(section.to_owned())),
    ]
}

/// A page's context: the layout's values plus its own.
fn context(admin: &Admin, section: &str, own: Vec<(&'static str, Value)>) -> Value {
    Value::from_iter(base(admin, section).into_iter().chain(own))
}
