//! Timestamps as stored and served: RFC 3339 in UTC with microseconds and a `Z`, so that the
//! text sorts in time order in SQLite and reads the same in every response.

use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

const FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// The current time, formatted.
pub fn now() -> String {
    format(OffsetDateTime::now_utc())
}

/// Formats a time in UTC.
pub fn format(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .expect("the format has only numeric components")
}

/// Parses a stored timestamp (any RFC 3339 text).
pub fn parse(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_sorts() {
        let a = super::now();
        let b = super::now();
        assert!(a <= b);
        assert!(a.ends_with('Z'));
        assert!(super::parse(&a).is_some());
    }
}
