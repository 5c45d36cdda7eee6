//! Time as the xtask writes it: RFC 3339 UTC for labels, history and locks, a compact form for
//! file names, and parsing of docker's timestamps. Plain arithmetic (Howard Hinnant's
//! civil-from-days algorithms) instead of a date crate: nothing here needs time zones.

/// The current time in unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs() as i64)
}

/// `(year, month, day, hour, minute, second)` of unix seconds, UTC (Howard Hinnant's
/// civil-from-days).
fn civil(unix_seconds: i64) -> (i64, i64, i64, i64, i64, i64) {
    let seconds_of_day = unix_seconds.rem_euclid(86_400);
    let days = unix_seconds.div_euclid(86_400) + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day, seconds_of_day / 3600, seconds_of_day % 3600 / 60, seconds_of_day % 60)
}

/// `2026-11-27T08:45:00Z`.
pub fn rfc3339(unix_seconds: i64) -> String {
    let (year, month, day, hour, minute, second) = civil(unix_seconds);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// `20261127T084500Z`: sortable, and safe in a file name.
pub fn compact_utc(unix_seconds: i64) -> String {
    let (year, month, day, hour, minute, second) = civil(unix_seconds);
    format!("{year:04}{month:02}{day:02}T{hour:02}{minute:02}{second:02}Z")
}

/// Unix seconds of an RFC 3339 timestamp such as docker's `2026-11-27T08:45:00.123456789Z` or
/// `2026-11-27T09:45:00+01:00`; fractions are dropped.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let number = |range: std::ops::Range<usize>| -> Option<i64> { text.get(range)?.parse().ok() };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let rest = text.get(19..)?;
    let rest =
        rest.strip_prefix('.').map_or(rest, |fraction| fraction.trim_start_matches(|c: char| c.is_ascii_digit()));
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let hours: i64 = rest.get(1..3)?.parse().ok()?;
            let minutes: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (hours * 3600 + minutes * 60)
        }
    };
    // days-from-civil
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(1_764_233_100), "2025-11-27T08:45:00Z");
        assert_eq!(compact_utc(951_782_400), "20000229T000000Z");
        assert_eq!(parse_rfc3339("2025-11-27T08:45:00.123456789Z"), Some(1_764_233_100));
        assert_eq!(parse_rfc3339("2025-11-27T09:45:00+01:00"), Some(1_764_233_100));
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z").map(|t| t < 0), Some(true));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
