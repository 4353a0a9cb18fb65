//! An event's top-level string fields read from its bytes, and
//! `stageTimestamp` (a Kubernetes `metav1.MicroTime`: RFC 3339 with up to
//! microseconds, `2024-05-01T10:00:00.123456Z`) as epoch time and as the
//! calendar date an index name is made of.

/// The content (escapes as received) of the string values of the top-level
/// `keys` of `raw`, a JSON object; `None` for a key that is absent or not a
/// string. Nested objects' keys of the same name are not looked at.
pub(crate) fn top_level_strings<'a, const N: usize>(
    raw: &'a [u8],
    keys: [&[u8]; N],
) -> [Option<&'a [u8]>; N] {
    let mut found = [None; N];
    let mut depth = 0usize;
    let mut key_next = false;
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                let end = string_end(raw, i + 1);
                if depth == 1 && key_next {
                    let key = &raw[i + 1..end];
                    let mut v = skip_ws(raw, end + 1);
                    if raw.get(v) == Some(&b':') {
                        v = skip_ws(raw, v + 1);
                        if let Some(slot) = keys.iter().position(|k| *k == key)
                            && raw.get(v) == Some(&b'"')
                        {
                            let value_end = string_end(raw, v + 1);
                            found[slot] = Some(&raw[v + 1..value_end.min(raw.len())]);
                        }
                    }
                    key_next = false;
                    i = v;
                    continue;
                }
                i = end + 1;
                continue;
            }
            b'{' => {
                depth += 1;
                key_next = true;
            }
            b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => key_next = true,
            _ => {}
        }
        i += 1;
    }
    found
}

/// The index of the quote that ends the string whose content starts at `i`
/// (`raw.len()` when it does not end).
fn string_end(raw: &[u8], mut i: usize) -> usize {
    while i < raw.len() {
        match raw[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    raw.len()
}

fn skip_ws(raw: &[u8], mut i: usize) -> usize {
    while raw.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// A point in time read from an RFC 3339 timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds past `secs`.
    pub nanos: u32,
}

impl Timestamp {
    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (RFC 3339 §5.6);
    /// `None` for anything else.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let part = text.get(r)?;
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(part).ok()?.parse().ok()
        };
        if text.len() < 20 || text[4] != b'-' || text[7] != b'-' || text[13] != b':' {
            return None;
        }
        if !matches!(text[10], b'T' | b't' | b' ') || text[16] != b':' {
            return None;
        }
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
            return None;
        }
        let mut i = 19;
        let mut nanos = 0u32;
        if text[i] == b'.' {
            let digits = text[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits == 0 {
                return None;
            }
            for (k, d) in text[i + 1..i + 1 + digits].iter().take(9).enumerate() {
                nanos += u32::from(d - b'0') * 10u32.pow(8 - k as u32);
            }
            i += 1 + digits;
        }
        let offset = match text.get(i..)? {
            b"Z" | b"z" => 0,
            [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
                let minutes = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
                if *sign == b'+' { minutes } else { -minutes }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(60) - offset * 60;
        Some(Self { secs, nanos })
    }

    /// The UTC calendar date and hour: `(year, month, day, hour)`.
    pub fn utc(&self) -> (i64, u32, u32, u32) {
        let days = self.secs.div_euclid(86_400);
        let hour = (self.secs.rem_euclid(86_400) / 3600) as u32;
        let (y, m, d) = civil_from_days(days);
        (y, m, d, hour)
    }

    /// The time now.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }

    /// Appends epoch seconds with a microsecond fraction (`1714557600.123456`)
    /// to `out`, the form Splunk's `time` field takes.
    pub fn write_epoch(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{}.{:06}", self.secs, self.nanos / 1000);
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_reads_as_epoch_seconds_and_a_utc_date() {
        let t = Timestamp::parse(b"2024-05-01T10:00:00.123456Z").unwrap();
        assert_eq!((t.secs, t.nanos), (1_714_557_600, 123_456_000));
        assert_eq!(t.utc(), (2024, 5, 1, 10));
        let mut out = Vec::new();
        t.write_epoch(&mut out);
        assert_eq!(out, b"1714557600.123456");
        // An offset moves the instant; the date is the UTC one.
        let t = Timestamp::parse(b"2024-01-01T00:30:00+01:00").unwrap();
        assert_eq!(t.utc(), (2023, 12, 31, 23));
        assert_eq!(
            Timestamp::parse(b"2000-02-29T00:00:00Z").unwrap().utc(),
            (2000, 2, 29, 0)
        );
        for bad in [
            &b"2024-05-01"[..],
            b"2024-13-01T00:00:00Z",
            b"2024-05-01T10:00:00",
            b"x",
        ] {
            assert_eq!(Timestamp::parse(bad), None);
        }
    }

    #[test]
    fn only_top_level_keys_are_read() {
        let raw = br#"{"requestObject":{"stageTimestamp":"nested","a":[{"stage":"x"}]},"stage":"ResponseComplete","n":1,"stageTimestamp":"2024-05-01T10:00:00Z","s":"a\"b"}"#;
        let [ts, stage, missing] =
            top_level_strings(raw, [b"stageTimestamp", b"stage", b"missing"]);
        assert_eq!(ts, Some(&b"2024-05-01T10:00:00Z"[..]));
        assert_eq!(stage, Some(&b"ResponseComplete"[..]));
        assert_eq!(missing, None);
        // A string holding the key's text is not the key.
        let raw = br#"{"a":"\"stage\":\"x\"","b":{}}"#;
        assert_eq!(top_level_strings(raw, [b"stage"]), [None]);
    }
}
