//! Roubles as providers write them, turned into integer kopecks without floating point.

/// Parses a decimal amount of roubles (`"150.00"`, `"100.000000"`, `"150"`, `150.0` as JSON
/// text) into kopecks. `None` for anything else: a sign, an exponent, more than two
/// significant decimals (`"1.005"`), empty parts, or an amount beyond 10^15 kopecks.
pub fn kopecks(text: &str) -> Option<i64> {
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if whole.is_empty() || whole.len() > 13 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) || (text.contains('.') && fraction.is_empty())
    {
        return None;
    }
    let (cents, rest) = fraction.split_at(fraction.len().min(2));
    if rest.bytes().any(|b| b != b'0') {
        return None;
    }
    let cents: i64 = format!("{cents:0<2}").parse().ok()?;
    whole
        .parse::<i64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(cents)
}

/// Kopecks as `"150.00"`, the form YooKassa and Robokassa take (`"-1.50"` below zero, as the
/// admin's margins may be).
pub fn roubles(kopecks: i64) -> String {
    let sign = if kopecks < 0 { "-" } else { "" };
    let abs = kopecks.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_exactly_or_not_at_all() {
        assert_eq!(kopecks("150.00"), Some(15_000));
        assert_eq!(kopecks("100.000000"), Some(10_000));
        assert_eq!(kopecks("150"), Some(15_000));
        assert_eq!(kopecks("150.0"), Some(15_000));
        assert_eq!(kopecks("0.05"), Some(5));
        assert_eq!(kopecks("99.9"), Some(9_990));
        for bad in [
            "",
            ".",
            "1.",
            ".5",
            "-1",
            "+1",
            "1e3",
            "1.005",
            "1,00",
            " 1",
            "NaN",
            "1.2.3",
            "99999999999999",
        ] {
            assert_eq!(kopecks(bad), None, "{bad:?}");
        }
        assert_eq!(roubles(15_000), "150.00");
        assert_eq!(roubles(5), "0.05");
    }
}
