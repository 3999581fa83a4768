//! `/payments/*` (CONTRACT §4 "Payments"): methods, create (with `Idempotency-Key`), status
//! (asking the provider when a payment is still pending), and the providers' webhooks.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::store::{self, Payment};
use super::{Incoming, Order, Slug, reconcile, webhook};
use crate::app::AppState;
use crate::auth::extract::CurrentUser;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::idempotency::{self, Opened, Paid};
use crate::request::{AppJson, ClientIp};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(methods))
        .routes(routes!(create))
        .routes(routes!(status))
        .routes(routes!(webhook_post, webhook_get))
        .routes(routes!(webhook_typed))
}

#[derive(Serialize, ToSchema)]
pub struct Method_ {
    /// `yookassa`, `robokassa`, `cloudpayments` or `tbank`.
    provider: &'static str,
    name: &'static str,
    /// Configured on this server.
    enabled: bool,
    min_amount_rub: i64,
    max_amount_rub: i64,
}

#[derive(Serialize, ToSchema)]
pub struct MethodList {
    methods: Vec<Method_>,
}

/// The four providers, with whether this server can take payments through each.
#[utoipa::path(get, path = "/payments/methods", tag = "payments",
    responses((status = 200, body = MethodList)))]
async fn methods(State(state): State<AppState>) -> Json<MethodList> {
    let payments = &state.payments;
    Json(MethodList {
        methods: Slug::ALL
            .into_iter()
            .map(|slug| Method_ {
                provider: slug.as_str(),
                name: slug.name(),
                enabled: payments.gateway(slug).is_some(),
                min_amount_rub: payments.min_rub,
                max_amount_rub: payments.max_rub,
            })
            .collect(),
    })
}

#[derive(Deserialize, ToSchema)]
pub struct CreateRequest {
    /// Whole roubles within the configured limits (`/payments/methods` says them); `500.0`
    /// is 500, as JSON Schema counts it an integer.
    #[schema(value_type = i64, minimum = 1)]
    amount_rub: serde_json::Number,
    /// A provider slug from `/payments/methods` that is enabled.
    #[schema(schema_with = providers)]
    provider: String,
}

fn providers() -> utoipa::openapi::Object {
    crate::openapi::one_of(Slug::ALL.map(Slug::as_str))
}

#[derive(Serialize, ToSchema)]
pub struct Created {
    payment_id: String,
    provider: &'static str,
    /// Always `pending`.
    status: &'static str,
    amount_rub: i64,
    amount_raits: i64,
    /// Where to send the payer.
    payment_url: String,
    /// CloudPayments: the options for its JS widget (`widget.pay('charge', …)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    widget: Option<serde_json::Value>,
}

/// How long a status request waits for the provider's word on a pending payment.
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "payment_provider_unavailable",
        "The payment provider could not open the payment; nothing was charged, try again later",
    )
}

/// Starts a top-up: opens the payment at the provider and answers where to send the payer.
#[utoipa::path(post, path = "/payments/create", tag = "payments", security(("bearer" = [])),
    params(crate::idempotency::KeyHeader),
    request_body = CreateRequest,
    responses(
        (status = 201, body = Created),
        (status = 400, description = "`provider_not_available`", body = ErrorBody),
        (status = 409, description = "`idempotency_conflict`", body = ErrorBody),
        (status = 422, description = "amount out of range", body = ErrorBody),
        (status = 503, description = "`payment_provider_unavailable`: the provider is down or answered nonsense; the payment is recorded `failed`", body = ErrorBody),
    ))]
async fn create(
    State(state): State<AppState>,
    current: CurrentUser,
    headers: HeaderMap,
    AppJson(body): AppJson<CreateRequest>,
) -> Result<Response, ApiError> {
    let payments = state.payments.clone();
    let whole = body.amount_rub.as_i64().or_else(|| {
        body.amount_rub
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
            .map(|f| f as i64)
    });
    let Some(amount_rub) = whole.filter(|a| (payments.min_rub..=payments.max_rub).contains(a))
    else {
        return Err(ApiError::validation(vec![FieldError::body(
            "amount_rub",
            format!(
                "must be a whole number of roubles from {} to {}",
                payments.min_rub, payments.max_rub
            ),
            "value_error",
        )]));
    };
    let key = idempotency::key_from(&headers)?;
    let Some(slug) = Slug::parse(body.provider.trim()).filter(|s| payments.gateway(*s).is_some())
    else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "provider_not_available",
            "This payment provider is not available on this server",
        ));
    };
    let amount_raits = amount_rub
        .checked_mul(payments.raits_per_rub)
        .ok_or_else(|| ApiError::internal(&"amount overflow"))?;
    let user_id = current.user.id.clone();
    let hash =
        idempotency::request_hash(&["payments/create", slug.as_str(), &amount_rub.to_string()]);
    let opened =
        idempotency::open_paid(&state.db, &user_id.clone(), key.clone(), hash, move |tx| {
            let payment = store::open(tx, &user_id, slug, amount_rub, amount_raits)?;
            Ok(Paid {
                work_id: payment.id.clone(),
                accepted: None,
                row: payment,
            })
        })
        .await?;
    let payment = match opened {
        Opened::Fresh(payment) => payment,
        Opened::Answer(response) => return Ok(response),
    };
    let gateway = payments
        .gateway(slug)
        .ok_or_else(|| ApiError::internal(&"gateway vanished"))?;
    let description = format!(
        "Пополнение баланса Easy Writer: {amount_raits} райтов (№ {})",
        payment.number
    );
    let return_url = payments.return_url(&payment.id);
    let webhook_url = payments.webhook_url(slug);
    let order = Order {
        payment_id: &payment.id,
        number: payment.number,
        user_id: &payment.user_id,
        email: &current.user.email,
        amount_kopecks: payment.amount_kopecks,
        description: &description,
        return_url: &return_url,
        webhook_url: &webhook_url,
        receipt: payments.receipt(),
    };
    let started = gateway.start(&order).await;
    let user_id = payment.user_id.clone();
    let id = payment.id.clone();
    let (status, answer) = match &started {
        Ok(started) => {
            let created = Created {
                payment_id: payment.id.clone(),
                provider: slug.as_str(),
                status: "pending",
                amount_rub,
                amount_raits,
                payment_url: started.payment_url.clone(),
                widget: started.widget.clone(),
            };
            (
                StatusCode::CREATED,
                serde_json::to_value(&created).unwrap_or_default(),
            )
        }
        Err(failure) => {
            tracing::warn!(payment.id = %payment.id, provider = %slug, error = %failure, "payment create failed");
            (StatusCode::SERVICE_UNAVAILABLE, unavailable().body_json())
        }
    };
    let stored = answer.to_string();
    let status_code = status.as_u16();
    let outcome = state
        .db
        .write(move |tx| {
            let recorded = match &started {
                Ok(started) => match store::started(tx, &id, started) {
                    Ok(recorded) => recorded,
                    // The provider gave an id another payment has: never two rows for it.
                    Err(e) if e.is_unique_violation() => false,
                    Err(e) => return Err(e),
                },
                Err(failure) => {
                    store::fail(tx, &id, None, &failure.to_string())?;
                    false
                }
            };
            if started.is_ok() && !recorded {
                store::fail(
                    tx,
                    &id,
                    None,
                    "the provider answered with an id already in use",
                )?;
            }
            let (status, stored) = if started.is_ok() && !recorded {
                (503, unavailable().body_json().to_string())
            } else {
                (status_code, stored)
            };
            if let Some(key) = &key {
                idempotency::finish(tx, &user_id, key, status, &stored)?;
            }
            Ok::<_, crate::db::Error>((status, stored))
        })
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(idempotency::answer(outcome.0, outcome.1))
}

#[derive(Serialize, ToSchema)]
pub struct PaymentStatus {
    payment_id: String,
    /// `pending`, `completed`, `failed` or `refunded`.
    status: String,
    amount_rub: i64,
    amount_raits: i64,
    provider: &'static str,
    created_at: String,
    completed_at: Option<String>,
}

impl From<&Payment> for PaymentStatus {
    fn from(p: &Payment) -> Self {
        PaymentStatus {
            payment_id: p.id.clone(),
            status: p.status.clone(),
            amount_rub: p.amount_rub,
            amount_raits: p.amount_raits,
            provider: p.provider.as_str(),
            created_at: p.created_at.clone(),
            completed_at: p.completed_at.clone(),
        }
    }
}

/// One of the caller's payments; a pending one is first looked up at its provider, so a
/// notification that never arrived does not keep the payer waiting.
#[utoipa::path(get, path = "/payments/{id}/status", tag = "payments", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = PaymentStatus), (status = 404, body = ErrorBody)))]
async fn status(
    State(state): State<AppState>,
    current: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<PaymentStatus>, ApiError> {
    let payment = owned(&state, &id, &current.user.id).await?;
    if payment.status == "pending"
        && payment.payment_url.is_some()
        && state.payments.may_ask(&payment.id)
    {
        // A status page polls: a slow provider must not hold it; the timer asks again later.
        let asked = tokio::time::timeout(
            ASK_TIMEOUT,
            reconcile::check(&state.db, &state.payments, &payment),
        )
        .await;
        match asked {
            Ok(Ok(Some(_))) => {
                return Ok(Json((&owned(&state, &id, &current.user.id).await?).into()));
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(payment.id = %payment.id, error = %e, "cannot ask the provider");
            }
            Err(_) => tracing::info!(payment.id = %payment.id, "the provider was slow to answer"),
        }
    }
    Ok(Json((&payment).into()))
}

/// The payment `id` if it is `user_id`'s (`404` otherwise, as for an unknown id).
async fn owned(state: &AppState, id: &str, user_id: &str) -> Result<Payment, ApiError> {
    let id = id.to_owned();
    state
        .db
        .read(move |c| store::get(c, &id))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .filter(|p| p.user_id == user_id)
        .ok_or_else(|| ApiError::not_found("No such payment"))
}

/// A provider's notification (Robokassa's ResultURL, T-Bank's NotificationURL, YooKassa's
/// HTTP notifications). Answered as the provider expects; no JWT.
#[utoipa::path(post, path = "/payments/webhook/{provider}", tag = "payments",
    params(("provider" = String, Path, description = "yookassa, robokassa or tbank")),
    request_body(content = String, description = "the provider's own format"),
    responses(
        (status = 200, description = "accepted: YooKassa `{}`, Robokassa `OK<InvId>`, T-Bank `OK`"),
        (status = 400, description = "`invalid_notification`: not this provider's format", body = ErrorBody),
        (status = 401, description = "`invalid_notification`: forged, mismatched or unknown payment; nothing changed", body = ErrorBody),
        (status = 404, description = "no such provider on this server", body = ErrorBody),
        (status = 503, description = "`payment_provider_unavailable`: YooKassa's API did not answer the re-fetch; YooKassa retries", body = ErrorBody),
    ))]
async fn webhook_post(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    method: Method,
    RawQuery(query): RawQuery,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    receive(&state, &provider, None, &method, query, ip, &headers, &body).await
}

/// Robokassa's ResultURL when the shop is set to GET.
#[utoipa::path(get, path = "/payments/webhook/{provider}", tag = "payments",
    params(("provider" = String, Path, description = "robokassa")),
    responses(
        (status = 200, description = "`OK<InvId>`"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 405, description = "`method_not_allowed`: this provider notifies by POST only", body = ErrorBody),
    ))]
async fn webhook_get(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    method: Method,
    RawQuery(query): RawQuery,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
) -> Response {
    if provider != Slug::Robokassa.as_str() {
        return crate::error::method_not_allowed().await.into_response();
    }
    receive(&state, &provider, None, &method, query, ip, &headers, &[]).await
}

/// CloudPayments: one URL per notification type. Always `200 {"code": N}`: 0 accepted,
/// 10 unknown invoice, 12 wrong amount, 13 refused (forged, malformed), 20 no longer payable.
#[utoipa::path(post, path = "/payments/webhook/{provider}/{kind}", tag = "payments",
    params(("provider" = String, Path, description = "cloudpayments"),
           ("kind" = String, Path, description = "check, pay, fail, confirm, refund or cancel")),
    request_body(content = String, description = "form-urlencoded or JSON, signed by `Content-HMAC`"),
    responses((status = 200, description = "`{\"code\": 0}` or a refusal code"), (status = 404, body = ErrorBody)))]
async fn webhook_typed(
    State(state): State<AppState>,
    Path((provider, kind)): Path<(String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if provider != Slug::CloudPayments.as_str() {
        return ApiError::not_found("No such webhook").into_response();
    }
    receive(
        &state,
        &provider,
        Some(&kind),
        &method,
        query,
        ip,
        &headers,
        &body,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    state: &AppState,
    provider: &str,
    kind: Option<&str>,
    method: &Method,
    query: Option<String>,
    ip: std::net::IpAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Some(gateway) = Slug::parse(provider).and_then(|s| state.payments.gateway(s)) else {
        return ApiError::not_found("No such payment provider on this server").into_response();
    };
    let incoming = Incoming {
        method,
        query: query.as_deref(),
        headers,
        body,
        kind,
    };
    let remote = (!ip.is_unspecified()).then(|| ip.to_string());
    webhook::handle(
        &state.db,
        gateway,
        &state.payments.refusals_logged,
        &incoming,
        remote,
    )
    .await
}
