//! The HTTP server: router assembly, middleware, `/health`, the OpenAPI document and docs page,
//! and `serve(listener, state, shutdown)`, which `main` and the tests both call.

use std::future::Future;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::app::AppState;
use crate::error::{self, ApiError};
use crate::jobs::{self, ws};
use crate::request::BODY_LIMIT;
use crate::request::ClientIp;
use crate::{auth, db, gallery, generation, legacy, openapi, payments, tools, users};

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// The routes and their OpenAPI document, built from the same handler annotations.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(health))
        .routes(routes!(metrics))
        .nest(
            "/api/v1",
            auth::routes::router()
                .merge(tools::routes::router())
                .merge(generation::routes::router())
                .merge(gallery::routes::router())
                .merge(users::routes::router())
                .merge(legacy::routes::router())
                .merge(payments::routes::router()),
        )
        .split_for_parts();
    openapi::complete(&mut doc);
    (router, doc)
}

/// The OpenAPI document, as served at [`OPENAPI_PATH`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let (api, mut doc) = api();
    openapi::configure(&mut doc, &state.config);
    let cors = CorsLayer::new()
        // A list, not `exact`: an origin that does not match gets no CORS headers at all.
        .allow_origin(AllowOrigin::list([HeaderValue::from_str(
            state.config.server.frontend_origin(),
        )
        .expect("validated at load")]))
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([HeaderName::from_static("x-request-id")])
        .max_age(Duration::from_secs(600));
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &axum::http::Request<_>| {
            let request_id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            // The path only: query strings may carry tokens (WebSockets) and never reach logs.
            tracing::info_span!(
                "request",
                http.method = %req.method(),
                http.path = %req.uri().path(),
                request_id = %request_id,
            )
        })
        .on_request(())
        .on_response(
            |res: &axum::http::Response<_>, latency: Duration, _span: &tracing::Span| {
                tracing::info!(
                    http.status = res.status().as_u16(),
                    duration_ms = latency.as_secs_f64() * 1000.0,
                    "response"
                );
            },
        )
        .on_failure(());

    Router::new()
        .merge(api)
        .merge(ws::router())
        .merge(crate::admin::router())
        .merge(SwaggerUi::new("/docs").url(OPENAPI_PATH, doc))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::map_response(error::json_rejections))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(trace)
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::internal(&"handler panicked").into_response()
                }))
                .layer(cors),
        )
        .with_state(state)
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let generations = generation::run::Recovery {
        deps: generation::run::Deps {
            db: state.db.clone(),
            llm: state.llm.clone(),
            gallery: state.gallery.clone(),
        },
        tools: state.tools.clone(),
    };
    let images = gallery::work::Recovery {
        db: state.db.clone(),
    };
    let articles = legacy::work::Recovery {
        deps: legacy::work::Deps {
            db: state.db.clone(),
            llm: state.llm.clone(),
        },
        tools: state.tools.clone(),
    };
    let files = state.gallery.files.clone();
    match tokio::task::spawn_blocking(move || files.clean_temporary()).await {
        Ok(0) | Err(_) => {}
        Ok(removed) => tracing::info!(removed, "removed image files a crash left half-written"),
    }
    if let Err(e) = jobs::work::recover(&state.jobs, &[&generations, &images, &articles]).await {
        return Err(std::io::Error::other(format!(
            "cannot recover interrupted generations: {e:#}"
        )));
    }
    if let Err(e) = payments::reconcile::recover(&state.db).await {
        return Err(std::io::Error::other(format!(
            "cannot recover interrupted payments: {e:#}"
        )));
    }
    let reconciler = payments::reconcile::spawn(state.db.clone(), state.payments.clone());
    let pruner = tokio::spawn(auth::prune_periodically(state.db.clone()));
    let watcher = tokio::spawn(state.tools.clone().watch());
    let stopping = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    });
    let app = router(state.clone());
    let header_timeout = Duration::from_secs(state.config.server.header_timeout_secs);
    let serving = async {
        accept_loop(listener, app, header_timeout, stopping.clone()).await;
        stopping.cancel();
        Ok::<(), std::io::Error>(())
    };
    // In-flight requests finish while running jobs get their grace period; then the sockets,
    // which have seen every job's final event, are closed.
    let draining = async {
        stopping.cancelled().await;
        state.jobs.shutdown().await;
        state.sockets.close().await;
    };
    let (served, ()) = tokio::join!(serving, draining);
    pruner.abort();
    watcher.abort();
    reconciler.abort();
    served
}

/// Accepts connections until `stopping`, serving each over HTTP/1.1 (with upgrades, for
/// WebSockets); then lets in-flight requests finish and returns.
///
/// Our own loop rather than `axum::serve` for one setting: a connection that has not sent a
/// whole request head within `header_timeout` is closed, so half-sent requests cannot hold
/// connections open (CONTRACT §2, `EASY_WRITER_HEADER_TIMEOUT_SECS`).
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stopping: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopping.cancelled() => break,
        };
        // No Nagle delay: WebSocket events and small responses leave at once.
        let _ = tcp.set_nodelay(true);
        let service =
            app.clone()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req.map(axum::body::Body::new)
                });
        let connection = http
            .serve_connection(
                TokioIo::new(tcp),
                hyper_util::service::TowerToHyperService::new(service),
            )
            .with_upgrades();
        let stopping = stopping.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = stopping.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// Prometheus metrics: answered to loopback clients (as far as trusted proxies tell), and to
/// others only with an admin's access token.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text"),
        (status = 401, description = "Not from loopback and no token", body = crate::error::ErrorBody),
        (status = 403, description = "Not an admin", body = crate::error::ErrorBody),
    ))]
async fn metrics(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if !ip.is_loopback() {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or(auth::Error::NotAuthenticated)?;
        let user = auth::extract::authenticate(&state.auth, &state.db, token.trim()).await?;
        if !user.user.is_admin {
            return Err(auth::Error::Forbidden.into());
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.llm.metrics().render(),
    )
        .into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok` or `error`.
    status: &'static str,
    version: &'static str,
    /// `ok` or `error`.
    database: &'static str,
}

/// Liveness with a real database round trip.
#[utoipa::path(get, path = "/health", tag = "system",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "The database does not answer", body = Health),
    ))]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let probe = state.db.read(|conn| {
        conn.query_row("select 1", [], |r| r.get::<_, i64>(0))
            .map_err(db::Error::from)
    });
    let ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(1))
    );
    let (status, text) = if ok {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "error")
    };
    (
        status,
        Json(Health {
            status: text,
            version: env!("CARGO_PKG_VERSION"),
            database: text,
        }),
    )
}
