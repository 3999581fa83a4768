//! SQL for the `images` table. Money moves here only through `billing::ledger`: a picture's
//! `spend` and `refund` are referenced by the image id, an upscale's by its `upscale_id`.

use rusqlite::{Connection, OptionalExtension, Row as SqlRow, params};

use crate::billing::{self, ledger};
use crate::generation::SessionError;
use crate::{db, timestamp};

/// An `images` row.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub user_id: String,
    pub session_id: Option<String>,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub style: Option<String>,
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub status: String,
    pub provider: Option<String>,
    pub cost_raits: i64,
    pub file: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub upscale_id: Option<String>,
    pub upscale_status: Option<String>,
    pub upscale_scale: Option<u32>,
    pub upscale_cost: i64,
    pub upscaled_file: Option<String>,
    pub created_at: String,
}

const COLUMNS: &str = "id, user_id, session_id, prompt, negative_prompt, style, format, width, \
    height, status, provider, cost_raits, file, error_code, error_message, upscale_id, \
    upscale_status, upscale_scale, upscale_cost, upscaled_file, created_at";

fn from_row(r: &SqlRow<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        user_id: r.get(1)?,
        session_id: r.get(2)?,
        prompt: r.get(3)?,
        negative_prompt: r.get(4)?,
        style: r.get(5)?,
        format: r.get(6)?,
        width: r.get(7)?,
        height: r.get(8)?,
        status: r.get(9)?,
        provider: r.get(10)?,
        cost_raits: r.get(11)?,
        file: r.get(12)?,
        error_code: r.get(13)?,
        error_message: r.get(14)?,
        upscale_id: r.get(15)?,
        upscale_status: r.get(16)?,
        upscale_scale: r.get(17)?,
        upscale_cost: r.get(18)?,
        upscaled_file: r.get(19)?,
        created_at: r.get(20)?,
    })
}

/// A picture to draw, paid for up front.
pub struct NewImage<'a> {
    pub user_id: &'a str,
    pub prompt: &'a str,
    pub negative_prompt: Option<&'a str>,
    pub style: Option<&'a str>,
    pub format: &'a str,
    pub width: u32,
    pub height: u32,
    pub cost: i64,
}

/// Inserts a `processing` image and debits its price as a `spend` row, in the caller's
/// transaction; `InsufficientBalance` (and nothing changed once rolled back) when short.
pub fn open(tx: &Connection, new: &NewImage<'_>) -> Result<Row, billing::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = timestamp::now();
    tx.prepare_cached(
        "insert into images (id, user_id, prompt, negative_prompt, style, format, width, height,
                             status, cost_raits, created_at, updated_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'processing', ?9, ?10, ?10)",
    )?
    .execute(params![
        id,
        new.user_id,
        new.prompt,
        new.negative_prompt,
        new.style,
        new.format,
        new.width,
        new.height,
        new.cost,
        now
    ])?;
    if new.cost > 0 {
        ledger::record(
            tx,
            &ledger::Entry {
                user_id: new.user_id,
                kind: billing::Kind::Spend,
                amount: -new.cost,
                description: Some("Изображение"),
                payment_id: None,
                reference: Some(&id),
            },
        )?;
    }
    Ok(by_id(tx, new.user_id, &id)?.expect("just inserted"))
}

/// A finished picture made by an image tool's generation session, which paid for it.
pub fn insert_completed(
    tx: &Connection,
    new: &NewImage<'_>,
    session_id: &str,
    provider: &str,
    file: (&str, &str),
) -> Result<Row, db::Error> {
    let (id, relative) = file;
    let now = timestamp::now();
    tx.prepare_cached(
        "insert into images (id, user_id, session_id, prompt, negative_prompt, style, format,
                             width, height, status, provider, cost_raits, file, created_at,
                             updated_at, completed_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'completed', ?10, ?11, ?12, ?13, ?13, ?13)",
    )?
    .execute(params![
        id,
        new.user_id,
        session_id,
        new.prompt,
        new.negative_prompt,
        new.style,
        new.format,
        new.width,
        new.height,
        provider,
        new.cost,
        relative,
        now
    ])?;
    Ok(by_id(tx, new.user_id, id)?.expect("just inserted"))
}

/// Marks a processing picture completed with its file.
pub fn complete(
    tx: &Connection,
    user_id: &str,
    id: &str,
    provider: &str,
    file: &str,
) -> Result<Option<Row>, db::Error> {
    let now = timestamp::now();
    tx.prepare_cached(
        "update images set status = 'completed', provider = ?3, file = ?4, completed_at = ?5,
                           updated_at = ?5
         where id = ?1 and user_id = ?2 and status = 'processing'",
    )?
    .execute(params![id, user_id, provider, file, now])?;
    by_id(tx, user_id, id)
}

/// Marks a processing picture failed and refunds it. A row already settled is left as it is.
pub fn fail(
    tx: &Connection,
    user_id: &str,
    id: &str,
    error: &SessionError,
    provider: Option<&str>,
) -> Result<Option<Row>, billing::Error> {
    let now = timestamp::now();
    let changed = tx
        .prepare_cached(
            "update images set status = 'failed', error_code = ?3, error_message = ?4,
                               provider = ?5, completed_at = ?6, updated_at = ?6
             where id = ?1 and user_id = ?2 and status = 'processing'",
        )?
        .execute(params![
            id,
            user_id,
            error.code,
            error.message,
            provider,
            now
        ])?;
    let row = by_id(tx, user_id, id)?;
    if let Some(row) = &row
        && changed == 1
        && row.cost_raits > 0
    {
        ledger::record(
            tx,
            &ledger::Entry {
                user_id,
                kind: billing::Kind::Refund,
                amount: row.cost_raits,
                description: Some("Возврат: изображение не удалось"),
                payment_id: None,
                reference: Some(id),
            },
        )?;
    }
    Ok(row)
}

/// How opening an upscale went.
pub enum UpscaleOpened {
    Opened(Box<Row>),
    /// The picture is not completed, or an upscale of it is already running.
    NotReady,
    NotFound,
}

/// Starts a paid upscale of a completed picture: the row records it as processing and its
/// price is debited, referenced by a fresh upscale id.
pub fn open_upscale(
    tx: &Connection,
    user_id: &str,
    id: &str,
    scale: u32,
    cost: i64,
) -> Result<UpscaleOpened, billing::Error> {
    let Some(row) = by_id(tx, user_id, id)? else {
        return Ok(UpscaleOpened::NotFound);
    };
    if row.status != "completed" || row.upscale_status.as_deref() == Some("processing") {
        return Ok(UpscaleOpened::NotReady);
    }
    let upscale_id = uuid::Uuid::now_v7().to_string();
    tx.prepare_cached(
        "update images set upscale_id = ?3, upscale_status = 'processing', upscale_scale = ?4,
                           error_code = null, error_message = null, updated_at = ?5
         where id = ?1 and user_id = ?2",
    )?
    .execute(params![id, user_id, upscale_id, scale, timestamp::now()])?;
    if cost > 0 {
        ledger::record(
            tx,
            &ledger::Entry {
                user_id,
                kind: billing::Kind::Spend,
                amount: -cost,
                description: Some("Увеличение изображения"),
                payment_id: None,
                reference: Some(&upscale_id),
            },
        )?;
    }
    Ok(UpscaleOpened::Opened(Box::new(
        by_id(tx, user_id, id)?.expect("just updated"),
    )))
}

/// The picture's current upscaled file, which a new upscale replaces (and the caller removes
/// from disk once the replacement is committed).
pub fn upscaled_file(
    conn: &Connection,
    user_id: &str,
    id: &str,
) -> Result<Option<String>, db::Error> {
    Ok(by_id(conn, user_id, id)?.and_then(|r| r.upscaled_file))
}

/// Records a finished upscale (its file replaces an earlier one) and what it cost.
pub fn complete_upscale(
    tx: &Connection,
    user_id: &str,
    id: &str,
    upscale_id: &str,
    cost: i64,
    file: &str,
    size: (u32, u32),
) -> Result<Option<Row>, db::Error> {
    tx.prepare_cached(
        "update images set upscale_status = 'completed', upscaled_file = ?4,
                           upscaled_width = ?5, upscaled_height = ?6,
                           upscale_cost = upscale_cost + ?7, updated_at = ?8
         where id = ?1 and user_id = ?2 and upscale_id = ?3 and upscale_status = 'processing'",
    )?
    .execute(params![
        id,
        user_id,
        upscale_id,
        file,
        size.0,
        size.1,
        cost,
        timestamp::now()
    ])?;
    by_id(tx, user_id, id)
}

/// Records an upscale made by an image tool's session (which paid for it) on the picture.
/// Returns the file nothing points at any more: the upscale it replaced, or the new one when
/// the picture was deleted meanwhile — for the caller to remove once this is committed.
pub fn set_upscaled(
    tx: &Connection,
    user_id: &str,
    id: &str,
    file: &str,
    size: (u32, u32),
) -> Result<Option<String>, db::Error> {
    let replaced = upscaled_file(tx, user_id, id)?;
    let changed = tx
        .prepare_cached(
            "update images set upscaled_file = ?3, upscaled_width = ?4, upscaled_height = ?5,
                               updated_at = ?6
             where id = ?1 and user_id = ?2",
        )?
        .execute(params![id, user_id, file, size.0, size.1, timestamp::now()])?;
    Ok(if changed == 0 {
        Some(file.to_owned())
    } else {
        replaced
    })
}

/// Records a failed upscale and refunds it; the picture itself stays as it was.
pub fn fail_upscale(
    tx: &Connection,
    user_id: &str,
    id: &str,
    upscale_id: &str,
    cost: i64,
    error: &SessionError,
) -> Result<Option<Row>, billing::Error> {
    let changed = tx
        .prepare_cached(
            "update images set upscale_status = 'failed', error_code = ?4, error_message = ?5,
                               updated_at = ?6
             where id = ?1 and user_id = ?2 and upscale_id = ?3 and upscale_status = 'processing'",
        )?
        .execute(params![
            id,
            user_id,
            upscale_id,
            error.code,
            error.message,
            timestamp::now()
        ])?;
    if changed == 1 && cost > 0 {
        ledger::record(
            tx,
            &ledger::Entry {
                user_id,
                kind: billing::Kind::Refund,
                amount: cost,
                description: Some("Возврат: увеличение не удалось"),
                payment_id: None,
                reference: Some(upscale_id),
            },
        )?;
    }
    Ok(by_id(tx, user_id, id)?)
}

/// One image of `user_id`; another user's is `None`.
pub fn by_id(conn: &Connection, user_id: &str, id: &str) -> Result<Option<Row>, db::Error> {
    Ok(conn
        .prepare_cached(&format!(
            "select {COLUMNS} from images where id = ?1 and user_id = ?2"
        ))?
        .query_row(params![id, user_id], from_row)
        .optional()?)
}

/// An image whatever its owner: only for a request a signed link has already authorised.
pub fn by_id_any(conn: &Connection, id: &str) -> Result<Option<Row>, db::Error> {
    Ok(conn
        .prepare_cached(&format!("select {COLUMNS} from images where id = ?1"))?
        .query_row(params![id], from_row)
        .optional()?)
}

/// A page of `user_id`'s images, newest first, with the total count.
pub fn list(
    conn: &Connection,
    user_id: &str,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Row>, i64), db::Error> {
    let total: i64 = conn
        .prepare_cached("select count(*) from images where user_id = ?1")?
        .query_row(params![user_id], |r| r.get(0))?;
    let rows = conn
        .prepare_cached(&format!(
            "select {COLUMNS} from images where user_id = ?1
             order by created_at desc, id desc limit ?2 offset ?3"
        ))?
        .query_map(params![user_id, limit, offset], from_row)?
        .collect::<Result<_, _>>()?;
    Ok((rows, total))
}

/// Deletes an image row that is not being worked on; returns its files, or `Err(true)` when
/// it is busy and `Err(false)` when there is no such image.
pub fn delete(
    tx: &Connection,
    user_id: &str,
    id: &str,
) -> Result<Result<Vec<String>, bool>, db::Error> {
    let Some(row) = by_id(tx, user_id, id)? else {
        return Ok(Err(false));
    };
    if row.status == "processing" || row.upscale_status.as_deref() == Some("processing") {
        return Ok(Err(true));
    }
    tx.prepare_cached("delete from images where id = ?1 and user_id = ?2")?
        .execute(params![id, user_id])?;
    Ok(Ok(row.file.into_iter().chain(row.upscaled_file).collect()))
}

/// What start-up recovery found running: pictures and upscales a crash cut off.
pub struct Running {
    pub pictures: Vec<Row>,
    pub upscales: Vec<Row>,
}

/// Every picture or upscale left `processing`.
pub fn running(conn: &Connection) -> Result<Running, db::Error> {
    let select = |condition: &str| -> Result<Vec<Row>, db::Error> {
        Ok(conn
            .prepare(&format!("select {COLUMNS} from images where {condition}"))?
            .query_map([], from_row)?
            .collect::<Result<_, _>>()?)
    };
    Ok(Running {
        pictures: select("status = 'processing'")?,
        upscales: select("upscale_status = 'processing'")?,
    })
}

/// The price an upscale in progress was charged (its `spend` row).
pub fn upscale_cost(conn: &Connection, upscale_id: &str) -> Result<i64, db::Error> {
    Ok(conn
        .prepare_cached(
            "select coalesce(-sum(amount), 0) from transactions
             where type = 'spend' and reference = ?1",
        )?
        .query_row(params![upscale_id], |r| r.get(0))?)
}
