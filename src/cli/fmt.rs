//! Times and sizes as docker prints them.

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Sizes as docker prints them (go-units' HumanSizeWithPrecision(n, 3): decimal units,
/// three significant digits, no trailing zeros): `4.26MB`, `1.23kB`, `1.5kB`, `999B`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        return format!("{n}B");
    }
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let digits = format!("{v:.decimals$}");
    let digits = if decimals > 0 {
        digits.trim_end_matches('0').trim_end_matches('.')
    } else {
        &digits
    };
    format!("{digits}{}", UNITS[u])
}

/// "3 days ago", as docker prints ages.
pub fn since(now: i64, t: i64) -> String {
    let d = (now - t).max(0);
    let (n, unit) = match d {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (d / 60, "minute"),
        3600..=86399 => (d / 3600, "hour"),
        86400..=1209599 => (d / 86400, "day"),
        1209600..=5183999 => (d / 604800, "week"),
        5184000..=63071999 => (d / 2592000, "month"),
        _ => (d / 31536000, "year"),
    };
    if n == 1 {
        let article = if unit == "hour" { "An" } else { "A" };
        format!("{article} {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2024-05-01T10:00:00.123Z`, `+02:00`); a
/// time without an offset is taken as UTC.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = s.parse::<jiff::Timestamp>().ok().or_else(|| {
        let civil: jiff::civil::DateTime = s.parse().ok()?;
        jiff::tz::Offset::UTC.to_timestamp(civil).ok()
    })?;
    Some(t.as_second())
}

/// `2024-01-02T03:04:05.123456789Z` for seconds and nanoseconds since the epoch.
pub fn format_rfc3339(secs: i64, nanos: u32) -> String {
    let nanos = i32::try_from(nanos).unwrap_or(0);
    jiff::Timestamp::new(secs, nanos).map_or_else(|_| String::new(), crate::sandbox::state::rfc3339)
}

/// "3 minutes", "About an hour", as docker's `Up ...` and `Exited (0) ... ago` say it.
pub fn duration_words(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0 => "Less than a second".into(),
        1..=59 => format!("{s} second{}", if s == 1 { "" } else { "s" }),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        172_800..=1_209_599 => format!("{} days", s / 86400),
        1_209_600..=5_183_999 => format!("{} weeks", s / 604_800),
        5_184_000..=63_071_999 => format!("{} months", s / 2_592_000),
        _ => format!("{} years", s / 31_536_000),
    }
}

/// Prints a table as docker does: columns padded to their widest cell, three spaces apart.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                let pad = w - c.chars().count();
                line.push_str(c);
                line.push_str(&" ".repeat(pad + 3));
            }
        }
        println!("{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_docker() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_260_000), "4.26MB");
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(1234), "1.23kB");
        assert_eq!(human_size(1500), "1.5kB");
        assert_eq!(human_size(45_600), "45.6kB");
        assert_eq!(human_size(3_210_000_000), "3.21GB");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00.5Z"), Some(1_704_067_200));
        assert_eq!(
            parse_rfc3339("2024-01-01T02:00:00+02:00"),
            Some(1_704_067_200)
        );
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00"), Some(1_704_067_200));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(since(100_000, 100_000 - 3 * 86400), "3 days ago");
    }

    #[test]
    fn rfc3339_round_trips() {
        for t in [
            0i64,
            1_704_067_200,
            951_782_400, /* 2000-02-29 */
            4_102_444_799,
        ] {
            let s = format_rfc3339(t, 5);
            assert_eq!(parse_rfc3339(&s), Some(t), "{s}");
        }
        assert_eq!(
            format_rfc3339(1_704_067_200, 0),
            "2024-01-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration_words(0), "Less than a second");
        assert_eq!(duration_words(1), "1 second");
        assert_eq!(duration_words(200), "3 minutes");
        assert_eq!(duration_words(4000), "About an hour");
        assert_eq!(duration_words(3 * 86400), "3 days");
    }
}
