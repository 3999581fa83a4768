//! Drawing a picture and upscaling one as paid work ([`jobs::work::Work`]), and their
//! start-up recovery. The same drawing serves the image tools run through execute
//! (`generation::run`), which pay through their session instead.

use std::sync::Arc;

use super::store::{self, Row};
use super::{Files, Image, Links, Variant};
use crate::billing;
use crate::db::Db;
use crate::generation::SessionError;
use crate::images::{self, Images};
use crate::jobs::hub::Event;
use crate::jobs::work::{Failure, Recover, Settled, Work};
use crate::jobs::{Handle, Runner};

/// What image work needs.
#[derive(Clone)]
pub struct Deps {
    pub db: Db,
    pub images: Arc<Images>,
    pub files: Files,
    pub links: Arc<Links>,
}

/// A picture drawn and written to disk, not yet recorded.
pub struct Stored {
    /// The file's id: the image row's id when it is recorded.
    pub id: String,
    /// Its path relative to the uploads directory.
    pub relative: String,
    pub provider: &'static str,
    pub width: u32,
    pub height: u32,
}

fn failure(error: &images::Error) -> Failure {
    Failure::new(error.code(), error.to_string())
}

/// Writes PNG bytes as the file `id` of `user_id`, off the async workers.
async fn store_file(
    files: &Files,
    user_id: &str,
    id: &str,
    png: Vec<u8>,
) -> Result<String, Failure> {
    let relative = Files::relative(user_id, id)
        .ok_or_else(|| Failure::new("providers_unavailable", "The picture could not be stored"))?;
    let (files, path) = (files.clone(), relative.clone());
    let written = tokio::task::spawn_blocking(move || files.write(&path, &png)).await;
    match written {
        Ok(Ok(())) => Ok(relative),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot write an image file");
            Err(Failure::new(
                "providers_unavailable",
                "The picture could not be stored; the raits were refunded",
            ))
        }
        Err(e) => {
            tracing::error!(error = %e, "image file task failed");
            Err(Failure::new(
                "providers_unavailable",
                "The picture could not be stored; the raits were refunded",
            ))
        }
    }
}

/// Removes the upscaled file a newer upscale replaced (committed already: nothing points at it).
pub async fn remove_replaced(files: &Files, replaced: Option<String>) {
    if let Some(old) = replaced {
        let files = files.clone();
        let _ = tokio::task::spawn_blocking(move || files.remove(&old)).await;
    }
}

/// Draws `request` (progress to `watch` as `processing`) and stores the picture as file `id`.
pub async fn draw(
    deps: &Deps,
    user_id: &str,
    id: &str,
    request: &images::Request,
    watch: &Handle,
) -> Result<Stored, Failure> {
    let progress = |p: u8| watch.processing(p);
    let picture = deps
        .images
        .generate(request, &progress)
        .await
        .map_err(|e| failure(&e))?;
    let relative = store_file(&deps.files, user_id, id, picture.png).await?;
    Ok(Stored {
        id: id.to_owned(),
        relative,
        provider: picture.provider.as_str(),
        width: picture.width,
        height: picture.height,
    })
}

/// Upscales a stored picture by `scale` and stores the result as a new file.
pub async fn upscale(
    deps: &Deps,
    user_id: &str,
    source: &str,
    scale: u32,
    watch: &Handle,
) -> Result<Stored, Failure> {
    let (files, path) = (deps.files.clone(), source.to_owned());
    let png = match tokio::task::spawn_blocking(move || files.read(&path)).await {
        Ok(Ok(png)) => png,
        _ => {
            return Err(Failure::new(
                "providers_unavailable",
                "The picture to upscale is gone",
            ));
        }
    };
    let progress = |p: u8| watch.processing(p);
    let upscaled = deps
        .images
        .upscale(&png, scale, &progress)
        .await
        .map_err(|e| failure(&e))?;
    let id = uuid::Uuid::now_v7().to_string();
    let relative = store_file(&deps.files, user_id, &id, upscaled.bytes).await?;
    Ok(Stored {
        id,
        relative,
        provider: "upscale",
        width: upscaled.width,
        height: upscaled.height,
    })
}

/// A settled image: the row, and the link its final event carries.
pub struct Done {
    pub row: Option<Row>,
    pub image: Option<Image>,
    url: Option<String>,
    error: Option<SessionError>,
}

impl Done {
    /// `failed`: how the job ended when it did not succeed.
    fn new(
        row: Option<Row>,
        links: &Links,
        variant: Variant,
        failed: Option<SessionError>,
    ) -> Done {
        let image = row.as_ref().map(|r| Image::from_row(r, links));
        let url = match (&failed, &image) {
            (None, Some(image)) => match variant {
                Variant::Original => image.url.clone(),
                Variant::Upscaled => image.upscaled_url.clone(),
            },
            _ => None,
        };
        let error = failed.or_else(|| {
            url.is_none().then(|| SessionError {
                code: "providers_unavailable".into(),
                message: "The picture is gone".into(),
            })
        });
        Done {
            row,
            image,
            url,
            error,
        }
    }
}

impl Settled for Done {
    fn final_event(&self) -> Event<'_> {
        match (&self.url, &self.error) {
            (Some(url), _) => Event::ImageCompleted { url },
            (None, Some(error)) => Event::Error {
                code: &error.code,
                message: &error.message,
            },
            (None, None) => Event::Error {
                code: "providers_unavailable",
                message: "",
            },
        }
    }
}

/// The final event of an image row that has ended (its last job: the picture, or the
/// upscale of it), or `None` while something is still being drawn.
pub fn final_event(row: &Row, links: &Links) -> Option<axum::extract::ws::Utf8Bytes> {
    if row.status == "processing" || row.upscale_status.as_deref() == Some("processing") {
        return None;
    }
    let error = || SessionError {
        code: row
            .error_code
            .clone()
            .unwrap_or_else(|| "providers_unavailable".into()),
        message: row.error_message.clone().unwrap_or_default(),
    };
    let (variant, failed) = match (row.status.as_str(), row.upscale_status.as_deref()) {
        ("failed", _) | (_, Some("failed")) => (Variant::Original, Some(error())),
        (_, Some("completed")) => (Variant::Upscaled, None),
        _ => (Variant::Original, None),
    };
    let done = Done::new(Some(row.clone()), links, variant, failed);
    Some(done.final_event().frame())
}

/// `POST /images/generate`: an open, paid `processing` image to draw.
pub struct Draw {
    pub deps: Deps,
    pub image_id: String,
    pub user_id: String,
    pub request: images::Request,
}

#[async_trait::async_trait]
impl Work for Draw {
    type Output = Stored;
    type Settled = Done;
    type Error = billing::Error;

    fn kind(&self) -> &'static str {
        "image"
    }

    fn id(&self) -> &str {
        &self.image_id
    }

    fn user_id(&self) -> &str {
        &self.user_id
    }

    async fn start(&self) -> Result<bool, billing::Error> {
        // An image is `processing` from the moment it is paid for.
        Ok(true)
    }

    async fn run(&self, watch: &Handle) -> Result<Stored, Failure> {
        watch.processing(0);
        draw(
            &self.deps,
            &self.user_id,
            &self.image_id,
            &self.request,
            watch,
        )
        .await
    }

    async fn settle(&self, ended: Result<Stored, Failure>) -> Result<Done, billing::Error> {
        let (user_id, id) = (self.user_id.clone(), self.image_id.clone());
        let files = self.deps.files.clone();
        let row = self
            .deps
            .db
            .write(move |tx| {
                let row = match &ended {
                    Ok(stored) => {
                        store::complete(tx, &user_id, &id, stored.provider, &stored.relative)?
                    }
                    Err(failure) => store::fail(
                        tx,
                        &user_id,
                        &id,
                        &SessionError {
                            code: failure.code.into(),
                            message: failure.message.clone(),
                        },
                        failure.provider,
                    )?,
                };
                Ok::<_, billing::Error>(row)
            })
            .await;
        if row.is_err() {
            // The picture may be on disk with no row to show it: nothing may point at it.
            let relative = Files::relative(&self.user_id, &self.image_id);
            if let Some(relative) = relative {
                let _ = tokio::task::spawn_blocking(move || files.remove(&relative)).await;
            }
        }
        let row = row?;
        let failed = row
            .as_ref()
            .filter(|r| r.status == "failed")
            .map(|r| SessionError {
                code: r.error_code.clone().unwrap_or_default(),
                message: r.error_message.clone().unwrap_or_default(),
            });
        Ok(Done::new(row, &self.deps.links, Variant::Original, failed))
    }
}

/// `POST /images/{id}/upscale`: an open, paid upscale of a completed picture.
pub struct Upscale {
    pub deps: Deps,
    pub image_id: String,
    pub user_id: String,
    pub upscale_id: String,
    pub scale: u32,
    pub cost: i64,
    /// The picture's file.
    pub source: String,
}

#[async_trait::async_trait]
impl Work for Upscale {
    type Output = Stored;
    type Settled = Done;
    type Error = billing::Error;

    fn kind(&self) -> &'static str {
        "upscale"
    }

    fn id(&self) -> &str {
        &self.image_id
    }

    fn user_id(&self) -> &str {
        &self.user_id
    }

    async fn start(&self) -> Result<bool, billing::Error> {
        Ok(true)
    }

    async fn run(&self, watch: &Handle) -> Result<Stored, Failure> {
        watch.processing(0);
        upscale(&self.deps, &self.user_id, &self.source, self.scale, watch).await
    }

    async fn settle(&self, ended: Result<Stored, Failure>) -> Result<Done, billing::Error> {
        let (user_id, id, upscale_id, cost) = (
            self.user_id.clone(),
            self.image_id.clone(),
            self.upscale_id.clone(),
            self.cost,
        );
        let failed = ended.as_ref().err().map(|f| SessionError {
            code: f.code.into(),
            message: f.message.clone(),
        });
        let (row, replaced) = self
            .deps
            .db
            .write(move |tx| match &ended {
                Ok(stored) => {
                    let replaced = store::upscaled_file(tx, &user_id, &id)?;
                    let row = store::complete_upscale(
                        tx,
                        &user_id,
                        &id,
                        &upscale_id,
                        cost,
                        &stored.relative,
                        (stored.width, stored.height),
                    )?;
                    Ok::<_, billing::Error>((row, replaced))
                }
                Err(failure) => Ok((
                    store::fail_upscale(
                        tx,
                        &user_id,
                        &id,
                        &upscale_id,
                        cost,
                        &SessionError {
                            code: failure.code.into(),
                            message: failure.message.clone(),
                        },
                    )?,
                    None,
                )),
            })
            .await?;
        remove_replaced(&self.deps.files, replaced).await;
        Ok(Done::new(row, &self.deps.links, Variant::Upscaled, failed))
    }
}

/// Start-up recovery of images: pictures and upscales a crash (or shutdown past its grace)
/// left `processing` are failed and refunded; their provider calls are lost.
pub struct Recovery {
    pub db: Db,
}

#[async_trait::async_trait]
impl Recover for Recovery {
    fn kind(&self) -> &'static str {
        "image"
    }

    async fn recover(&self, _runner: &Runner) -> anyhow::Result<(usize, usize)> {
        let refunded = self
            .db
            .write(|tx| {
                let running = store::running(tx)?;
                let error = SessionError {
                    code: "interrupted".into(),
                    message:
                        "The server restarted before the picture was ready; the raits were refunded"
                            .into(),
                };
                for row in &running.pictures {
                    store::fail(tx, &row.user_id, &row.id, &error, None)?;
                }
                for row in &running.upscales {
                    let Some(upscale_id) = &row.upscale_id else {
                        continue;
                    };
                    let cost = store::upscale_cost(tx, upscale_id)?;
                    store::fail_upscale(tx, &row.user_id, &row.id, upscale_id, cost, &error)?;
                }
                Ok::<_, billing::Error>(running.pictures.len() + running.upscales.len())
            })
            .await?;
        Ok((refunded, 0))
    }
}
