//! A user's images (CONTRACT §4 "Images"): the `images` rows, their files on disk, the signed
//! links an `<img>` loads them by, the `/images` endpoints, and generating or upscaling one as
//! paid work. The drawing itself is `crate::images` (providers, upscaler, pixels), which knows
//! nothing of users or money — as `generation` stands to `llm`.

pub mod files;
pub mod routes;
pub mod store;
pub mod work;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

pub use files::Files;

/// How long a signed link works at least (CONTRACT §4: 24 h).
const LINK_TTL: Duration = Duration::from_secs(24 * 3600);
/// Expiries are rounded up to this step, so one image's link stays the same for an hour and
/// browsers can cache it.
const LINK_STEP: u64 = 3600;

/// Which file of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The delivered picture, at the format's size.
    Original,
    /// An extra upscale of it.
    Upscaled,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Original => "original",
            Variant::Upscaled => "upscaled",
        }
    }

    pub fn parse(s: &str) -> Option<Variant> {
        match s {
            "original" => Some(Variant::Original),
            "upscaled" => Some(Variant::Upscaled),
            _ => None,
        }
    }
}

/// Signs and checks the links of image files: HMAC-SHA256 over the image id, the variant and
/// the expiry, with a key derived from the server's secret.
pub struct Links {
    key: Vec<u8>,
    base: String,
}

impl Links {
    /// `secret` is the JWT secret; the links' key is derived from it, so rotating the secret
    /// voids the links too. `public_url` is where browsers reach this server.
    pub fn new(secret: &[u8], public_url: &str) -> Links {
        let mut mac = <Hmac<Sha256>>::new_from_slice(secret).expect("HMAC takes any key");
        mac.update(b"easy-writer image links v1");
        Links {
            key: mac.finalize().into_bytes().to_vec(),
            base: public_url.trim_end_matches('/').to_owned(),
        }
    }

    fn mac(&self, image_id: &str, variant: Variant, expires: u64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(format!("{image_id}\n{}\n{expires}", variant.as_str()).as_bytes());
        mac
    }

    /// A link valid for 24 to 25 hours.
    pub fn url(&self, image_id: &str, variant: Variant) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        let expires = (now + LINK_TTL.as_secs()).div_ceil(LINK_STEP) * LINK_STEP;
        let sig =
            URL_SAFE_NO_PAD.encode(self.mac(image_id, variant, expires).finalize().into_bytes());
        format!(
            "{}/api/v1/images/{image_id}/file?variant={}&expires={expires}&sig={sig}",
            self.base,
            variant.as_str()
        )
    }

    /// True when `sig` signs this image, variant and expiry, and the expiry has not passed.
    /// The comparison takes the same time whatever the signature.
    pub fn verify(&self, image_id: &str, variant: Variant, expires: u64, sig: &str) -> bool {
        let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        if expires < now {
            return false;
        }
        let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
            return false;
        };
        self.mac(image_id, variant, expires)
            .verify_slice(&sig)
            .is_ok()
    }
}

/// Re-signs the picture link in an image tool's session result (`{image_id, url}`, or a
/// card's `{text, image_url, image_id}`), so a session read days later still shows a link
/// that loads.
pub fn refresh_result_links(tool_id: &str, result: &mut serde_json::Value, links: &Links) {
    let Some(id) = result["image_id"].as_str().map(str::to_owned) else {
        return;
    };
    let variant = if tool_id == "image_upscale" {
        Variant::Upscaled
    } else {
        Variant::Original
    };
    let field = if result.get("image_url").is_some() {
        "image_url"
    } else {
        "url"
    };
    result[field] = links.url(&id, variant).into();
}

/// An image as the API shows it (CONTRACT §4 "Images").
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Image {
    pub id: String,
    pub prompt: String,
    /// `web`, `banner`, `print` or `messenger`.
    pub format: String,
    /// The delivered size.
    pub width: u32,
    pub height: u32,
    /// `processing` (also while an upscale runs), `completed` or `failed`.
    pub status: String,
    /// A signed link to the delivered picture, valid 24 h; null until it exists.
    pub url: Option<String>,
    /// A signed link to the extra upscale, once one exists.
    pub upscaled_url: Option<String>,
    /// `kandinsky` or `yandexart`.
    pub provider: Option<String>,
    /// Raits paid for it: the picture and any upscale that succeeded.
    pub cost_raits: i64,
    pub created_at: String,
    /// Where to watch its progress.
    pub ws_url: String,
    /// Why the picture (or its last upscale) failed, else null.
    pub error: Option<crate::generation::SessionError>,
}

impl Image {
    /// The API shape of a row, with fresh signed links.
    pub fn from_row(row: &store::Row, links: &Links) -> Image {
        let status = if row.upscale_status.as_deref() == Some("processing") {
            "processing".to_owned()
        } else {
            row.status.clone()
        };
        let error = row
            .error_code
            .clone()
            .map(|code| crate::generation::SessionError {
                code,
                message: row.error_message.clone().unwrap_or_default(),
            });
        Image {
            id: row.id.clone(),
            prompt: row.prompt.clone(),
            format: row.format.clone(),
            width: row.width,
            height: row.height,
            status,
            url: row
                .file
                .as_ref()
                .map(|_| links.url(&row.id, Variant::Original)),
            upscaled_url: row
                .upscaled_file
                .as_ref()
                .map(|_| links.url(&row.id, Variant::Upscaled)),
            provider: row.provider.clone(),
            cost_raits: row.cost_raits + row.upscale_cost,
            created_at: row.created_at.clone(),
            ws_url: format!("/ws/image/{}", row.id),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_only_what_they_sign_until_they_expire() {
        let links = Links::new(b"secret", "https://ew.example/");
        let url = links.url("img-1", Variant::Original);
        assert!(
            url.starts_with(
                "https://ew.example/api/v1/images/img-1/file?variant=original&expires="
            )
        );
        let query: Vec<(String, String)> =
            serde_urlencoded::from_str(url.split_once('?').unwrap().1).unwrap();
        let expires: u64 = query[1].1.parse().unwrap();
        let sig = &query[2].1;
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        assert!(expires >= now + 24 * 3600 && expires <= now + 25 * 3600);
        assert!(links.verify("img-1", Variant::Original, expires, sig));
        assert!(!links.verify("img-2", Variant::Original, expires, sig));
        assert!(!links.verify("img-1", Variant::Upscaled, expires, sig));
        assert!(!links.verify("img-1", Variant::Original, expires + 1, sig));
        assert!(!links.verify("img-1", Variant::Original, expires, "garbage!"));
        assert!(!Links::new(b"other", "x").verify("img-1", Variant::Original, expires, sig));
        // An expired link, even correctly signed, is refused.
        let old = now - 10;
        let sig = URL_SAFE_NO_PAD.encode(
            links
                .mac("img-1", Variant::Original, old)
                .finalize()
                .into_bytes(),
        );
        assert!(!links.verify("img-1", Variant::Original, old, &sig));
    }
}
