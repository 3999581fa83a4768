//! Raits: the ledger and balances.
//!
//! A balance changes only through [`ledger::record`], inside the caller's write transaction,
//! with a guarded update that refuses to go below zero and a ledger row in the same
//! transaction. So `users.balance` always equals the sum of the user's `transactions.amount`.

pub mod ledger;

use crate::db;

/// Kinds of ledger rows (CONTRACT §4 "User").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Topup,
    Spend,
    Refund,
    Adjustment,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Topup => "topup",
            Kind::Spend => "spend",
            Kind::Refund => "refund",
            Kind::Adjustment => "adjustment",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("insufficient balance: {required} raits required, {balance} available")]
    InsufficientBalance { required: i64, balance: i64 },
    #[error("user not found")]
    UserNotFound,
    #[error("a {kind} for {reference} is already recorded")]
    AlreadyRecorded {
        kind: &'static str,
        reference: String,
    },
    #[error(transparent)]
    Db(#[from] db::Error),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Db(e.into())
    }
}
