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
/// `422` list, and an oversized body a JSON `413`.
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
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

/// Parses a JSON body into `T`, reporting failures as `422` entries located in the body.
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

fn client_ip(peer: IpAddr, parts: &Parts, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut ip = peer;
    if !is_trusted(&ip) {
        return ip;
    }
    let hops = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(hop) if is_trusted(&ip) => ip = hop,
            _ => break,
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
}

/// `limit` (1–100, default 20) and `offset` (≥ 0) of a list (CONTRACT §3).
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
                    let msg = if max == i64::MAX {
                        format!("Input should be greater than or equal to {min}")
                    } else {
                        format!("Input should be between {min} and {max}")
                    };
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
        let limit = number("limit", 20, 1, 100);
        let offset = number("offset", 0, 0, i64::MAX);
        if errors.is_empty() {
            Ok(Pagination { limit, offset })
        } else {
            Err(ApiError::validation(errors))
        }
    }
}
