//! Rendering: the templates and static files compiled into the binary, the page answer with
//! the admin UI's security headers, and the small helpers pages share (paging, SVG charts).

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::{Environment, Value};

#[derive(rust_embed::RustEmbed)]
#[folder = "assets/admin/templates/"]
struct Templates;

#[derive(rust_embed::RustEmbed)]
#[folder = "assets/admin/static/"]
struct Static;

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for name in Templates::iter() {
        if let Some(file) = Templates::get(&name) {
            let text = String::from_utf8_lossy(&file.data).into_owned();
            if let Err(e) = env.add_template_owned(name.to_string(), text) {
                tracing::error!(template = %name, error = %e, "admin template does not parse");
            }
        }
    }
    env.add_filter("dt", datetime);
    env.add_filter("rub", |kopecks: i64| {
        crate::payments::money::roubles(kopecks)
    });
    env
});

/// `2026-11-27T10:00:00.123Z` as `2026-11-27 10:00 UTC` (the page's script shows it in the
/// browser's time zone).
fn datetime(value: Option<String>) -> String {
    match value.as_deref().and_then(crate::timestamp::parse) {
        Some(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        None => value.unwrap_or_default(),
    }
}

/// Renders `template` with `context` as an HTML page.
pub fn page(template: &str, context: Value) -> Response {
    page_with(StatusCode::OK, template, context)
}

pub fn page_with(status: StatusCode, template: &str, context: Value) -> Response {
    let rendered = ENV.get_template(template).and_then(|t| t.render(context));
    match rendered {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(template, error = %e, "admin page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "Внутренняя ошибка",
            )
                .into_response()
        }
    }
}

/// `/admin/static/{file}`: CSS, the one small script, icons.
pub async fn static_file(Path(file): Path<String>) -> Response {
    let Some(asset) = Static::get(&file) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mime = match file.rsplit('.').next() {
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        asset.data.into_owned(),
    )
        .into_response()
}

/// Security headers for every admin answer: no inline scripts or styles, no framing, no
/// caching of pages that show accounts and money.
pub async fn harden(response: Response) -> Response {
    let mut response = response;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; \
             object-src 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// An error page with `message` (fixed text of ours, never the caller's input).
pub fn error(status: StatusCode, message: &str) -> Response {
    page_with(
        status,
        "error.html",
        Value::from_iter([("message", message.to_owned())]),
    )
}

/// The answer to a storage failure; the cause is logged by the caller.
pub fn failed(message: &str) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, message)
}

pub fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Нет такой записи")
}

/// The answer to a form whose CSRF token is missing or not the session's.
pub fn stale_form() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "Форма устарела или пришла не с этой страницы. Обновите страницу и попробуйте ещё раз.",
    )
}

/// A form that carries only the CSRF token.
#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// Rows per list page.
pub const PAGE: i64 = 50;

/// `?offset=` of a list, clamped.
pub fn offset(raw: Option<i64>) -> i64 {
    raw.unwrap_or(0).clamp(0, 1_000_000)
}

/// A bar chart of one value per day, as inline SVG (no script; CSP allows it).
pub fn bars(values: &[i64]) -> String {
    let (w, h) = (600.0_f64, 120.0_f64);
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = w / values.len().max(1) as f64;
    let mut out = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" preserveAspectRatio=\"none\">"
    );
    for (i, v) in values.iter().enumerate() {
        let bh = (*v as f64 / max) * (h - 4.0);
        out.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"><title>{v}</title></rect>",
            i as f64 * step + 1.0,
            h - bh,
            (step - 2.0).max(1.0),
            bh
        ));
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_template_parses() {
        for name in super::Templates::iter() {
            assert!(super::ENV.get_template(&name).is_ok(), "{name}");
        }
    }
}
