//! What every provider client does with HTTP: Basic auth, errors told without their URL (which
//! may carry a signature), and answers read up to a cap so a broken or hostile endpoint
//! cannot fill memory.

use base64::Engine;

/// The largest answer read from a provider's API.
pub const ANSWER_LIMIT: usize = 256 * 1024;

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A transport error without its URL.
pub fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        "request failed".into()
    }
}

/// The answer's body, at most [`ANSWER_LIMIT`] bytes.
pub async fn read(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer: {}", transport(&e)))?
    {
        if body.len() + chunk.len() > ANSWER_LIMIT {
            return Err("answer too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
