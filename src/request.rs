//! Extractors shared by all routes: a JSON body that fails in the contract's shape, and the
//! client's IP address as far as trusted proxies vouch for it.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::app::AppState;
use crate::error::{ApiError, FieldError};

/// Largest accepted request body (CONTRACT §3).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// `axum::Json`, but malformed JSON, missing fields and wrong types become a FastAPI-style
/// `422` list, an oversized body a JSON `413`, and any `Content-Type` but `application/json`
/// a `415` — so that a cross-site HTML form (which cannot send that type without a CORS
/// preflight) can never post to the API.
pub struct AppJson<T>(pub T);

/// Query parameters deserialised like axum's `Query`, but a string that does not fit (a repeated
/// or mistyped parameter) is a `422 validation_error` at `query`, as every other bad input.
pub struct AppQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for AppQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(parts.uri.query().unwrap_or(""))
            .map(AppQuery)
            .map_err(|e| {
                ApiError::validation(vec![FieldError {
                    loc: vec!["query".into()],
                    msg: e.to_string(),
                    kind: "value_error".into(),
                }])
            })
    }
}

/// True for `application/json`, with or without parameters such as `charset`.
fn is_json(req: &Request) -> bool {
    req.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

impl<S, T> FromRequest<S> for AppJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(&req) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Expected a body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "Request body is larger than 1 MiB",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "Could not read the request body",
                )
            }
        })?;
        parse_json(&bytes).map(AppJson)
    }
}

/// Parses a JSON object body into `T`, reporting failures as `422` entries located in the body.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::validation(vec![FieldError {
            loc: vec!["body".into()],
            msg: "Field required".into(),
            kind: "missing".into(),
        }]));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::validation(vec![FieldError {
            loc: vec!["body".into(), e.column().into()],
            msg: format!("JSON decode error: {e}"),
            kind: "json_invalid".into(),
        }])
    })?;
    // serde would also fill a struct from an array of its fields in order; a body is an object.
    if !value.is_object() {
        return Err(ApiError::validation(vec![FieldError {
            loc: vec!["body".into()],
            msg: "Input should be a valid dictionary or object to extract fields from".into(),
            kind: "model_attributes_type".into(),
        }]));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut loc: Vec<Value> = vec!["body".into()];
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => loc.push((*index).into()),
                serde_path_to_error::Segment::Map { key } => loc.push(key.clone().into()),
                serde_path_to_error::Segment::Enum { variant } => loc.push(variant.clone().into()),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let inner = e.into_inner().to_string();
        let error = if let Some(field) = inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            loc.push(field.into());
            FieldError {
                loc,
                msg: "Field required".into(),
                kind: "missing".into(),
            }
        } else {
            let kind = if inner.starts_with("invalid type") {
                "type_error"
            } else {
                "value_error"
            };
            FieldError {
                loc,
                msg: inner,
                kind: kind.into(),
            }
        };
        ApiError::validation(vec![error])
    })
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the nearest
/// `X-Forwarded-For` hop that is not itself trusted.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl<S> FromRequestParts<S> for ClientIp
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        Ok(ClientIp(client_ip(peer, parts, &state.trusted_proxies)))
    }
}

/// Where the unspecified address stands for a client that a trusted proxy named in a form
/// that does not parse: such a client is nobody in particular — never the proxy itself, never
/// loopback — so it cannot pass the loopback rule of `/metrics`, and its throttles are shared.
const UNKNOWN_CLIENT: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

fn client_ip(peer: IpAddr, parts: &Parts, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let headers: Vec<&str> = match parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str())
        .collect::<Result<_, _>>()
    {
        Ok(headers) => headers,
        Err(_) => return UNKNOWN_CLIENT,
    };
    if headers.is_empty() {
        // The proxy's own request (a health probe, a local curl).
        return peer;
    }
    // From the nearest hop outwards, the first one that is not a trusted proxy is the client.
    // A hop that does not parse (empty, `unknown`, garbage) ends the walk: whoever is beyond
    // it cannot be known, and falling back to the proxy's address would make it the client.
    let mut ip = peer;
    for hop in headers.iter().flat_map(|v| v.split(',')).rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(hop) => {
                ip = hop;
                if !is_trusted(&ip) {
                    return ip;
                }
            }
            Err(_) => return UNKNOWN_CLIENT,
        }
    }
    ip
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        email: String,
        age: u32,
    }

    fn loc(e: ApiError) -> String {
        let response = axum::response::IntoResponse::into_response(e);
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        format!("{response:?}")
    }

    #[test]
    fn json_failures_are_422() {
        assert!(parse_json::<Body>(b"{").is_err());
        assert!(parse_json::<Body>(b"").is_err());
        let e = parse_json::<Body>(br#"{"email":"a"}"#).unwrap_err();
        let _ = loc(e);
        let e = parse_json::<Body>(br#"{"email":"a","age":"x"}"#).unwrap_err();
        let _ = loc(e);
        assert!(parse_json::<Body>(br#"{"email":"a","age":3}"#).is_ok());
        // serde alone would take the fields from an array, in order.
        let e = parse_json::<Body>(br#"["a",3]"#).unwrap_err();
        let _ = loc(e);
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let req = axum::http::Request::builder()
            .header("x-forwarded-for", "203.0.113.7, 10.0.0.2")
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &parts, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(stranger, &parts, &trusted), stranger);
    }

    #[test]
    fn forwarded_for_that_does_not_parse_is_nobody() {
        let trusted = vec!["127.0.0.1/32".parse().unwrap()];
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let ip = |values: &[&str]| {
            let mut req = axum::http::Request::builder();
            for v in values {
                req = req.header("x-forwarded-for", *v);
            }
            let (parts, _) = req.body(()).unwrap().into_parts();
            client_ip(proxy, &parts, &trusted)
        };
        for bad in [
            &["203.0.113.9,"][..],
            &["unknown"],
            &[""],
            &["203.0.113.9, garbage"],
            &["203.0.113.9", "x"],
        ] {
            let got = ip(bad);
            assert!(!got.is_loopback(), "{bad:?} gave {got}");
            assert_eq!(got, UNKNOWN_CLIENT, "{bad:?}");
        }
        assert_eq!(ip(&[]), proxy);
        assert_eq!(ip(&["127.0.0.1"]), proxy);
        assert_eq!(
            ip(&["203.0.113.9"]),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ip(&["198.51.100.2, 203.0.113.9", "127.0.0.1"]),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }
}

/// Largest accepted `offset` (CONTRACT §3): deeper pages are a scan, not a use.
pub const OFFSET_MAX: i64 = 1_000_000;

/// `limit` (1–100, default 20) and `offset` (0–1,000,000) of a list (CONTRACT §3).
#[derive(Debug, Clone, Copy)]
pub struct Pagination {
    pub limit: i64,
    pub offset: i64,
}

/// The `pagination` object of a list answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Page {
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub has_more: bool,
}

impl Pagination {
    pub fn page(&self, total: i64) -> Page {
        Page {
            total,
            limit: self.limit,
            offset: self.offset,
            has_more: self.offset + self.limit < total,
        }
    }
}

const LIMIT_DEFAULT: i64 = 20;
const LIMIT_MAX: i64 = 100;

/// The two query parameters with their bounds, so the document says what the server accepts.
impl utoipa::IntoParams for Pagination {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{Required, schema::KnownFormat, schema::SchemaFormat};
        let integer = |min: i64, max: i64, default: i64| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(min))
                .maximum(Some(max))
                .default(Some(default.into()))
        };
        let parameter = |name: &str, description: &str, schema: ObjectBuilder| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(schema))
                .build()
        };
        vec![
            parameter(
                "limit",
                "Items per page",
                integer(1, LIMIT_MAX, LIMIT_DEFAULT),
            ),
            parameter("offset", "Items to skip", integer(0, OFFSET_MAX, 0)),
        ]
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Pagination {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query: Vec<(String, String)> =
            serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).unwrap_or_default();
        let get = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let mut errors = Vec::new();
        let mut number = |name: &str, default: i64, min: i64, max: i64| match get(name) {
            None => default,
            Some(raw) => match raw.trim().parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => n,
                Ok(_) => {
                    let msg = format!("Input should be between {min} and {max}");
                    errors.push(FieldError::query(name, msg, "value_error"));
                    default
                }
                Err(_) => {
                    errors.push(FieldError::query(
                        name,
                        "Input should be a valid integer",
                        "int_parsing",
                    ));
                    default
                }
            },
        };
        let limit = number("limit", LIMIT_DEFAULT, 1, LIMIT_MAX);
        let offset = number("offset", 0, 0, OFFSET_MAX);
        if errors.is_empty() {
            Ok(Pagination { limit, offset })
        } else {
            Err(ApiError::validation(errors))
        }
    }
}
