//! TBank (to be written).

use super::{Failure, Incoming, Known, Notice, Order, Rejection, Started, State};
use crate::config::Config;

pub struct TBank {
    _http: reqwest::Client,
}

impl TBank {
    /// `None` unless its credentials are configured.
    pub fn from_config(_config: &Config, _http: reqwest::Client) -> Option<TBank> {
        None
    }

    pub async fn start(&self, _order: &Order<'_>) -> Result<Started, Failure> {
        Err(Failure("not written yet".into()))
    }

    pub async fn notice(&self, _incoming: &Incoming<'_>) -> Result<Notice, Rejection> {
        Err(Rejection::Malformed("not written yet".into()))
    }

    pub async fn state(&self, _known: Known<'_>) -> Result<Option<State>, Failure> {
        Ok(None)
    }
}
