//! The admin UI's other pages (to be written): generation sessions, images, payments and the
//! webhook log, transactions, WordPress sites and articles, providers, settings, backup.

use axum::response::Response;

use super::Admin;
use super::users::stale_form;

pub async fn sessions(_admin: Admin) -> Response {
    stale_form()
}
pub async fn images(_admin: Admin) -> Response {
    stale_form()
}
pub async fn payments(_admin: Admin) -> Response {
    stale_form()
}
pub async fn webhooks(_admin: Admin) -> Response {
    stale_form()
}
pub async fn transactions(_admin: Admin) -> Response {
    stale_form()
}
pub async fn sites(_admin: Admin) -> Response {
    stale_form()
}
pub async fn rotate_site(_admin: Admin) -> Response {
    stale_form()
}
pub async fn articles(_admin: Admin) -> Response {
    stale_form()
}
pub async fn providers(_admin: Admin) -> Response {
    stale_form()
}
pub async fn check_providers(_admin: Admin) -> Response {
    stale_form()
}
pub async fn settings(_admin: Admin) -> Response {
    stale_form()
}
pub async fn backup(_admin: Admin) -> Response {
    stale_form()
}
