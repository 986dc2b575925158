//! The `ce_time` attribute as text: written as Python's `datetime.isoformat()` writes a UTC
//! time (`2026-12-03T20:15:00.000000+00:00`), read as RFC 3339 with any offset.
//!
//! A producer writes, and a consumer reads, many events within one second. Turning a second
//! into a calendar date and back is most of the cost of either (chrono's RFC 3339 parser is
//! about 500 instructions per event), so each thread keeps the last second it wrote and the
//! last it read, with their text up to the seconds: the other events of that second only write
//! or read their fraction.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, NaiveDateTime, SecondsFormat, Timelike, Utc};

/// `2026-12-03T20:15:00.000000+00:00`
pub(super) const TIME_LENGTH: usize = 32;

/// `2026-12-03T20:15:00`: the text that names one second.
const SECONDS: usize = 19;

/// A whole second, and a text that starts with its name.
#[derive(Clone, Copy)]
struct Second<At> {
    at: At,
    text: [u8; TIME_LENGTH],
}

thread_local! {
    /// The last second written, in seconds since the epoch (what the clock reads), with its
    /// whole text and a zero fraction.
    static WRITTEN: Cell<Option<Second<i64>>> = const { Cell::new(None) };
    /// The last second read, kept as chrono keeps a time (a calendar date and a time of day).
    /// Only from a UTC text that chrono read: the same text up to the seconds, followed by a
    /// fraction and a UTC offset, is then the same second.
    static READ: Cell<Option<Second<NaiveDateTime>>> = const { Cell::new(None) };
}

/// A time as the `ce_time` header holds it.
pub(super) enum TimeText {
    /// The years 0–9999: the fixed-width text.
    Fixed([u8; TIME_LENGTH]),
    /// Other years and leap seconds, as chrono writes them.
    Other(String),
}

impl TimeText {
    pub(super) fn at(t: &DateTime<Utc>) -> Self {
        match write(t) {
            Some(fixed) => Self::Fixed(fixed),
            None => Self::Other(t.to_rfc3339_opts(SecondsFormat::Micros, false)),
        }
    }

    /// The text's bytes.
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Fixed(ascii) => ascii,
            Self::Other(text) => text.as_bytes(),
        }
    }

    /// Now, from the system clock's seconds and microseconds: within a second already written
    /// no calendar date is made at all.
    pub(super) fn now() -> Self {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).ok();
        let fixed = since.and_then(|since| {
            let secs = i64::try_from(since.as_secs()).ok()?;
            written(secs, since.subsec_micros(), || {
                DateTime::from_timestamp(secs, 0)
            })
        });
        match fixed {
            Some(fixed) => Self::Fixed(fixed),
            // A clock before 1970.
            None => Self::at(&Utc::now()),
        }
    }
}

/// The time as Python writes a UTC `datetime`, microseconds and `+00:00`, in a fixed buffer;
/// `None` for the years of other widths and for leap seconds, which go through chrono.
fn write(t: &DateTime<Utc>) -> Option<[u8; TIME_LENGTH]> {
    // A leap second's fraction is a second or more.
    let micros = t.timestamp_subsec_micros();
    if micros >= 1_000_000 {
        return None;
    }
    written(t.timestamp(), micros, || Some(*t))
}

/// The text of `secs` since the epoch and `micros`; `second` gives that second as a calendar
/// time when it is not the one last written.
fn written(
    secs: i64,
    micros: u32,
    second: impl FnOnce() -> Option<DateTime<Utc>>,
) -> Option<[u8; TIME_LENGTH]> {
    let mut out = match WRITTEN.get() {
        Some(known) if known.at == secs => known.text,
        _ => {
            let text = second_text(&second()?.naive_utc())?;
            WRITTEN.set(Some(Second { at: secs, text }));
            text
        }
    };
    digits(&mut out[20..26], micros);
    Some(out)
}

/// Reads a `ce_time` as chrono's RFC 3339 parser does, in UTC; `None` when it is not UTF-8
/// text. Bytes, not text: a time of the second already known is read without a UTF-8 check.
pub(crate) fn parse(text: &[u8]) -> Option<Result<DateTime<Utc>, chrono::ParseError>> {
    if let Some(known) = read_known_second(text) {
        return Some(Ok(known));
    }
    let text = std::str::from_utf8(text).ok()?;
    Some(DateTime::parse_from_rfc3339(text).map(|t| {
        let t = t.with_timezone(&Utc);
        remember(text.as_bytes(), &t);
        t
    }))
}

fn read_known_second(text: &[u8]) -> Option<DateTime<Utc>> {
    let (seconds, rest) = text.split_at_checked(SECONDS)?;
    let known = READ.get()?;
    if seconds != &known.text[..SECONDS] {
        return None;
    }
    Some(known.at.with_nanosecond(utc_fraction(rest)?)?.and_utc())
}

fn remember(text: &[u8], t: &DateTime<Utc>) {
    let Some((seconds, rest)) = text.split_at_checked(SECONDS) else {
        return;
    };
    // With another offset the same text names another second; a leap second's text names no
    // second of the timeline.
    if utc_fraction(rest).is_none() || t.timestamp_subsec_nanos() >= 1_000_000_000 {
        return;
    }
    let Some(at) = t.naive_utc().with_nanosecond(0) else {
        return;
    };
    let mut text = [0; TIME_LENGTH];
    text[..SECONDS].copy_from_slice(seconds);
    READ.set(Some(Second { at, text }));
}

/// The nanoseconds of what follows the seconds, when that is an optional fraction of one to
/// nine digits and the offset `Z` or `+00:00`; `None` for anything else, which chrono reads.
fn utc_fraction(rest: &[u8]) -> Option<u32> {
    let mut nanos = 0u32;
    let mut at = 0;
    if rest.first() == Some(&b'.') {
        at = 1;
        while let Some(digit) = rest.get(at).filter(|b| b.is_ascii_digit()) {
            if at > 9 {
                return None;
            }
            nanos = nanos * 10 + u32::from(digit - b'0');
            at += 1;
        }
        if at == 1 {
            return None;
        }
        // Scaled to nine digits.
        for _ in at..10 {
            nanos *= 10;
        }
    }
    match &rest[at..] {
        [b'Z'] | [b'+', b'0', b'0', b':', b'0', b'0'] => Some(nanos),
        _ => None,
    }
}

/// `2026-12-03T20:15:00.000000+00:00`; `None` for years outside 0–9999. Once a second: kept
/// out of line, where its digits do not turn the caller's copy of the text into 32 separate
/// bytes.
#[cold]
#[inline(never)]
fn second_text(t: &NaiveDateTime) -> Option<[u8; TIME_LENGTH]> {
    if !(0..=9999).contains(&t.year()) {
        return None;
    }
    let mut out = *b"0000-00-00T00:00:00.000000+00:00";
    digits(&mut out[0..4], t.year().unsigned_abs());
    digits(&mut out[5..7], t.month());
    digits(&mut out[8..10], t.day());
    digits(&mut out[11..13], t.hour());
    digits(&mut out[14..16], t.minute());
    digits(&mut out[17..19], t.second());
    Some(out)
}

/// Writes `value` as decimal digits filling `out`, zero-padded.
fn digits(out: &mut [u8], mut value: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SecondsFormat;

    fn chrono_reads(text: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Every text is read as chrono reads it, whether its second is the one known or not, and
    /// whatever was read before it.
    #[test]
    fn reads_as_chrono_does_in_any_order() {
        let mut texts = Vec::new();
        for second in [
            "2026-12-03T20:15:00",
            "2026-12-03T20:15:01",
            "2016-12-31T23:59:60",
        ] {
            for rest in [
                "Z",
                "+00:00",
                ".5Z",
                ".000001+00:00",
                ".123456789Z",
                ".1234567891Z",
                ".999999+00:00",
                "+02:00",
                ".25-05:30",
                "-00:00",
                "z",
                ".Z",
                "+00:00x",
                "",
            ] {
                texts.push(format!("{second}{rest}"));
            }
        }
        texts
            .extend(["2026-02-30T10:00:00Z", "20", "", "2026-12-03 20:15:00.5Z"].map(String::from));
        // Each text after each other one, so that every text meets every known second.
        for before in &texts {
            for text in &texts {
                let _ = parse(before.as_bytes());
                let read = parse(text.as_bytes()).expect("UTF-8 text");
                assert_eq!(read.ok(), chrono_reads(text), "{text} after {before}");
            }
        }
    }

    #[test]
    fn bytes_that_are_not_text_are_no_time() {
        parse(b"2026-12-03T20:15:00Z")
            .expect("text")
            .expect("a time");
        assert!(parse(b"2026-12-03T20:15:00.5\xffZ").is_none());
        assert!(parse(b"\xff2026-12-03T20:15:00Z").is_none());
    }

    #[test]
    fn an_offset_text_is_not_taken_for_the_utc_second() {
        let (offset, utc) = (
            &b"2026-12-03T20:15:00+02:00"[..],
            &b"2026-12-03T20:15:00.5+00:00"[..],
        );
        // The UTC text's second is known when the offset text comes again.
        for (text, read) in [
            (offset, "2026-12-03T18:15:00+00:00"),
            (utc, "2026-12-03T20:15:00.500+00:00"),
            (offset, "2026-12-03T18:15:00+00:00"),
        ] {
            let time = parse(text).expect("text").expect("a time");
            assert_eq!(time.to_rfc3339(), read);
        }
    }

    /// Now, written from the clock's seconds, is the time between the instants read before
    /// and after it, to the microsecond, whether its second was written before or not.
    #[test]
    fn now_is_written_from_the_clock() {
        for _ in 0..3 {
            let before = Utc::now();
            let TimeText::Fixed(text) = TimeText::now() else {
                panic!("a four-digit year");
            };
            let after = Utc::now();
            let read = chrono_reads(std::str::from_utf8(&text).unwrap()).unwrap();
            assert!(
                before.timestamp_micros() <= read.timestamp_micros()
                    && read.timestamp_micros() <= after.timestamp_micros(),
                "{before} <= {read} <= {after}"
            );
        }
    }

    /// Many events of one second, and the seconds around it, write what chrono writes.
    #[test]
    fn writes_as_chrono_does_within_and_across_seconds() {
        let start = Utc::now().timestamp();
        for secs in [start, start, start + 1, start - 1, start] {
            for micros in (0..1_000_000).step_by(9_973) {
                let at = DateTime::from_timestamp(secs, micros * 1_000 + 7).unwrap();
                let text = write(&at).expect("a four-digit year");
                assert_eq!(
                    std::str::from_utf8(&text).unwrap(),
                    at.to_rfc3339_opts(SecondsFormat::Micros, false)
                );
            }
        }
    }
}
