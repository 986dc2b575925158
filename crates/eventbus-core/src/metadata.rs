//! CloudEvents 1.0 metadata as Open edX writes it, and its mapping to message headers.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};
use crate::transport::Headers;
use time_text::TimeText;

pub(crate) mod time_text;

/// Header names, as edx-event-bus-kafka writes them (and Pulsar properties reuse).
pub mod header {
    /// Event id (UUID).
    pub const ID: &str = "ce_id";
    /// Event type name.
    pub const TYPE: &str = "ce_type";
    /// Producing service, `openedx/<service>/web`.
    pub const SOURCE: &str = "ce_source";
    /// Always `1.0`.
    pub const SPEC_VERSION: &str = "ce_specversion";
    /// ISO-8601 time of the event.
    pub const TIME: &str = "ce_time";
    /// Minor version of the event's schema.
    pub const MINOR_VERSION: &str = "ce_minorversion";
    /// Host name of the producer.
    pub const SOURCE_HOST: &str = "sourcehost";
    /// Version of the producing library, `major.minor.patch`.
    pub const SOURCE_LIB: &str = "sourcelib";
    /// Content type of the payload.
    pub const CONTENT_TYPE: &str = "content-type";
    /// CloudEvents content type of the payload (same value).
    pub const DATA_CONTENT_TYPE: &str = "ce_datacontenttype";

    /// Whether `name` is one of the attributes above, which the producer writes itself.
    pub fn is_reserved(name: &str) -> bool {
        name.starts_with("ce_") || [CONTENT_TYPE, SOURCE_HOST, SOURCE_LIB].contains(&name)
    }
}

/// The CloudEvents attributes of one event.
///
/// The text attributes are [`Text`], shared: events of one type from one service carry the same
/// type, source, host, library, spec version and content type, and a consumer reading a stream
/// of them shares one copy of each instead of allocating six strings per event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventMetadata {
    /// Unique id of this event.
    pub id: Uuid,
    /// Event type name.
    pub event_type: Text,
    /// Minor version of the writer's schema.
    pub minor_version: u32,
    /// Producing service, `openedx/<service>/web`.
    pub source: Text,
    /// Host name of the producer.
    pub source_host: Text,
    /// Version of the producing library.
    pub source_lib: Text,
    /// When the event happened.
    pub time: DateTime<Utc>,
    /// CloudEvents spec version, `1.0`.
    pub spec_version: Text,
    /// Content type of the payload, e.g. `application/avro`.
    pub content_type: Text,
}

/// The producing library's version as Open edX consumers expect it: digits and dots only, since
/// they parse `sourcelib` into a tuple of integers.
pub const SOURCE_LIB: &str = env!("CARGO_PKG_VERSION");

impl EventMetadata {
    /// Fresh metadata for a new event of `event_type` sent by `source`.
    pub fn new(event_type: &str, minor_version: u32, source: &str, source_host: &str) -> Self {
        Self {
            id: Uuid::new_v4(),
            event_type: event_type.into(),
            minor_version,
            source: source.into(),
            source_host: source_host.into(),
            source_lib: SOURCE_LIB.into(),
            time: Utc::now(),
            spec_version: CLOUDEVENTS_VERSION.into(),
            content_type: "".into(),
        }
    }

    /// The time as Python's `datetime.isoformat()` writes it: microseconds and `+00:00`.
    pub fn time_string(&self) -> String {
        match TimeText::at(&self.time) {
            TimeText::Fixed(ascii) => String::from_utf8_lossy(&ascii).into_owned(),
            TimeText::Other(text) => text,
        }
    }

    /// Writes the attributes into `headers`, replacing earlier values.
    pub fn write_headers(&self, headers: &mut Headers) {
        self.attributes().write_headers(headers);
    }

    fn attributes(&self) -> Attributes<'_> {
        Attributes {
            id: self.id,
            event_type: &self.event_type,
            minor_version: self.minor_version,
            source: &self.source,
            source_host: &self.source_host,
            source_lib: &self.source_lib,
            time: self.time,
            spec_version: &self.spec_version,
            content_type: &self.content_type,
        }
    }

    /// Reads the attributes back. A message without `ce_id`, with zero or several `ce_type`, or
    /// with a malformed id, time or minor version is unusable and yields
    /// [`ErrorKind::InvalidHeaders`]; the other attributes are optional.
    pub fn from_headers(headers: &Headers) -> Result<Self> {
        let invalid = |what: &str| Error::new(ErrorKind::InvalidHeaders, what.to_owned());
        // One pass over the headers rather than a search per attribute: this runs for every
        // event consumed. Each attribute takes its first value, as `Headers::get` would.
        let found = Found::read(headers);
        let type_bytes = match (found.event_type, found.types) {
            (Some(one), 1) if !one.is_empty() => one,
            (_, 0 | 1) => return Err(invalid("the message has no ce_type header")),
            _ => {
                let names: Vec<String> = headers
                    .get_all(header::TYPE)
                    .map(|t| String::from_utf8_lossy(t).into_owned())
                    .collect();
                return Err(invalid("the message has several ce_type headers")
                    .with("ce_type", names.join(", ")));
            }
        };
        // Absent: empty, as `Headers::get` has it; the spec version defaults to CloudEvents 1.0.
        let [event_type, source, source_host, source_lib, spec_version, content_type] =
            shared_texts([
                type_bytes,
                found.source.unwrap_or_default(),
                found.source_host.unwrap_or_default(),
                found.source_lib.unwrap_or_default(),
                found.spec_version.unwrap_or(CLOUDEVENTS_VERSION.as_bytes()),
                found.content_type.unwrap_or_default(),
            ]);
        let event_type = event_type.ok_or_else(|| {
            invalid("the ce_type header is not UTF-8 text")
                .with("ce_type", type_bytes.escape_ascii())
        })?;
        // Not UTF-8: as if absent.
        let text = |value: Option<Text>| value.unwrap_or_else(|| "".into());
        let id = match found.id {
            None => return Err(invalid("the message has no ce_id header")),
            // A UUID is ASCII: read from the bytes, without a UTF-8 check first. What does not
            // parse goes the long way, for the error that says why.
            Some(raw) => match Uuid::try_parse_ascii(raw) {
                Ok(id) => id,
                Err(_) => {
                    let text = std::str::from_utf8(raw).map_err(|_| {
                        invalid("the ce_id header is not UTF-8 text")
                            .with("ce_id", raw.escape_ascii())
                    })?;
                    Uuid::parse_str(text).map_err(|e| {
                        invalid("the ce_id header is not a UUID")
                            .with("ce_id", text)
                            .with_source(e)
                    })?
                }
            },
        };
        // Not UTF-8: as if absent. Read from the bytes where they are one digit or a time of a
        // second already read, the usual case.
        let minor_version = match found.minor_version {
            None | Some(b"") => 0,
            Some(&[digit]) if digit.is_ascii_digit() => u32::from(digit - b'0'),
            Some(raw) => match std::str::from_utf8(raw) {
                Err(_) => 0,
                Ok(v) => v.parse().map_err(|e| {
                    invalid("the ce_minorversion header is not a number")
                        .with("ce_minorversion", v)
                        .with_source(e)
                })?,
            },
        };
        let time = match found
            .time
            .filter(|t| !t.is_empty())
            .and_then(time_text::parse)
        {
            None => Utc::now(),
            Some(read) => read.map_err(|e| {
                invalid("the ce_time header is not an ISO-8601 time")
                    .with(
                        "ce_time",
                        String::from_utf8_lossy(found.time.unwrap_or_default()),
                    )
                    .with_source(e)
            })?,
        };
        Ok(Self {
            id,
            event_type,
            minor_version,
            source: text(source),
            source_host: text(source_host),
            source_lib: text(source_lib),
            time,
            spec_version: spec_version.unwrap_or_else(|| CLOUDEVENTS_VERSION.into()),
            content_type: text(content_type),
        })
    }
}

/// The text of an attribute: a shared, immutable string. Reads as a `&str` (it dereferences to
/// one, and has [`as_str`](Text::as_str)), compares with strings, and is made from a `&str` or a
/// `String` with `.into()`. Cloning it shares it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(Arc<str>);

impl Text {
    /// The text as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Self(text.into())
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self(text.into())
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.0.as_ref().to_owned()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == &*other.0
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, other: &Text) -> bool {
        **self == *other.0
    }
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// The text attributes read last on this thread, one slot each in the order of
/// [`shared_texts`]. A value equal to its slot's is shared from it, without a UTF-8 check or an
/// allocation: consecutive events are mostly of one type from one service. A value that differs
/// takes the slot.
struct Recent([Option<Arc<str>>; 6]);

impl Recent {
    /// `value` as shared text, or `None` when it is not UTF-8.
    fn share(&mut self, slot: usize, value: &[u8]) -> Option<Text> {
        let kept = &mut self.0[slot];
        if let Some(text) = kept.as_ref().filter(|t| t.as_bytes() == value) {
            return Some(Text(Arc::clone(text)));
        }
        let text: Arc<str> = std::str::from_utf8(value).ok()?.into();
        *kept = Some(Arc::clone(&text));
        Some(Text(text))
    }
}

thread_local! {
    static RECENT: RefCell<Recent> = const { RefCell::new(Recent([const { None }; 6])) };
}

/// Type, source, source host, source library, spec version and content type as shared text,
/// each `None` when it is not UTF-8. One visit to the thread's slots for all six.
fn shared_texts(values: [&[u8]; 6]) -> [Option<Text>; 6] {
    RECENT
        .try_with(|recent| {
            let mut recent = recent.borrow_mut();
            std::array::from_fn(|slot| recent.share(slot, values[slot]))
        })
        // The thread is being torn down and its slots are gone: fresh copies, unshared.
        .unwrap_or_else(|_| values.map(|value| std::str::from_utf8(value).ok().map(Text::from)))
}

/// The first value of each CloudEvents attribute in a header list, and how many `ce_type`
/// values there are.
#[derive(Default)]
struct Found<'a> {
    event_type: Option<&'a [u8]>,
    types: usize,
    id: Option<&'a [u8]>,
    minor_version: Option<&'a [u8]>,
    time: Option<&'a [u8]>,
    source: Option<&'a [u8]>,
    source_host: Option<&'a [u8]>,
    source_lib: Option<&'a [u8]>,
    spec_version: Option<&'a [u8]>,
    content_type: Option<&'a [u8]>,
}

impl<'a> Found<'a> {
    fn read(headers: &'a Headers) -> Self {
        let mut found = Self::default();
        for (name, value) in headers.iter() {
            let slot = match name {
                header::TYPE => {
                    found.types += 1;
                    &mut found.event_type
                }
                header::ID => &mut found.id,
                header::MINOR_VERSION => &mut found.minor_version,
                header::TIME => &mut found.time,
                header::SOURCE => &mut found.source,
                header::SOURCE_HOST => &mut found.source_host,
                header::SOURCE_LIB => &mut found.source_lib,
                header::SPEC_VERSION => &mut found.spec_version,
                header::CONTENT_TYPE => &mut found.content_type,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        found
    }
}

/// The CloudEvents `source` Open edX builds from a service name: `openedx/<service>/web`.
pub fn source_for_service(service: &str) -> String {
    format!("openedx/{service}/web")
}

/// This machine's host name, or `localhost` when it cannot be read.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The attributes of one event, borrowed: what the producer writes into a new event's headers
/// straight from its settings, without owning them in an [`EventMetadata`] first.
pub(crate) struct Attributes<'a> {
    pub(crate) id: Uuid,
    pub(crate) event_type: &'a str,
    pub(crate) minor_version: u32,
    pub(crate) source: &'a str,
    pub(crate) source_host: &'a str,
    pub(crate) source_lib: &'a str,
    pub(crate) time: DateTime<Utc>,
    pub(crate) spec_version: &'a str,
    pub(crate) content_type: &'a str,
}

impl Attributes<'_> {
    /// Writes them into `headers`, replacing earlier values.
    pub(crate) fn write_headers(&self, headers: &mut Headers) {
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = self.id.hyphenated().encode_lower(&mut id);
        let text = TimeText::at(&self.time);
        let time = text.as_bytes();
        let minor_text;
        let minor: &[u8] = match self.minor_version {
            v @ 0..=9 => std::slice::from_ref(&DIGITS[v as usize]),
            v => {
                minor_text = v.to_string();
                minor_text.as_bytes()
            }
        };
        // Every value goes into one buffer and each header holds a slice of it: one allocation
        // per event instead of one per header.
        let values: [(&'static str, &[u8]); 9] = [
            (header::ID, id.as_bytes()),
            (header::TYPE, self.event_type.as_bytes()),
            (header::SOURCE, self.source.as_bytes()),
            (header::SPEC_VERSION, self.spec_version.as_bytes()),
            (header::TIME, time),
            (header::MINOR_VERSION, minor),
            (header::SOURCE_HOST, self.source_host.as_bytes()),
            (header::SOURCE_LIB, self.source_lib.as_bytes()),
            (header::CONTENT_TYPE, self.content_type.as_bytes()),
        ];
        let mut buffer = Vec::with_capacity(values.iter().map(|(_, v)| v.len()).sum());
        for (_, value) in &values {
            buffer.extend_from_slice(value);
        }
        let buffer = Bytes::from(buffer);
        let mut at = 0;
        for (name, value) in values {
            headers.insert_static(name, buffer.slice(at..at + value.len()));
            at += value.len();
        }
        // The content type, the last value, once more under its CloudEvents name.
        let content_type = self.content_type.len();
        headers.insert_static(
            header::DATA_CONTENT_TYPE,
            buffer.slice(at - content_type..at),
        );
    }
}

/// The attributes every event of one producer shares, each built once: a new event's headers
/// hold reference-counted clones of them and static text, and copy only the event's own id and
/// time. Publishing is where this shows: the headers were a third of a publish's cost.
#[derive(Debug)]
pub(crate) struct SharedAttributes {
    source: Bytes,
    source_host: Bytes,
    content_type: &'static str,
}

impl SharedAttributes {
    pub(crate) fn new(source: &str, source_host: &str, content_type: &'static str) -> Self {
        Self {
            source: Bytes::copy_from_slice(source.as_bytes()),
            source_host: Bytes::copy_from_slice(source_host.as_bytes()),
            content_type,
        }
    }

    /// Appends a new event's own attribute texts to `texts`: a fresh id, then now. The
    /// event's headers are then written by [`SharedAttributes::write`] from where they landed,
    /// once `texts` is shared: a batch keeps every event's texts in one buffer.
    pub(crate) fn append_new(texts: &mut Vec<u8>) {
        Self::append(Uuid::new_v4(), TimeText::now(), texts);
    }

    fn append(id: Uuid, time: TimeText, texts: &mut Vec<u8>) {
        let mut hyphenated = [0u8; ID_LENGTH];
        id.hyphenated().encode_lower(&mut hyphenated);
        texts.extend_from_slice(&hyphenated);
        texts.extend_from_slice(time.as_bytes());
    }

    /// Writes an event's attributes into `headers`, which must not hold any of them yet (they
    /// are appended, not replaced), in the order of [`Attributes::write_headers`]. Its id and
    /// time are the slice `own` of `texts`, as [`SharedAttributes::append_new`] wrote them.
    pub(crate) fn write(
        &self,
        texts: &Bytes,
        own: Range<usize>,
        event_type: &'static str,
        minor_version: u32,
        headers: &mut Headers,
    ) {
        let time_at = own.start + ID_LENGTH;
        let minor = match minor_version {
            v @ 0..=9 => Bytes::from_static(std::slice::from_ref(&DIGITS[v as usize])),
            v => Bytes::from(v.to_string()),
        };
        headers.push_static(header::ID, texts.slice(own.start..time_at));
        headers.push_static(header::TYPE, Bytes::from_static(event_type.as_bytes()));
        headers.push_static(header::SOURCE, self.source.clone());
        headers.push_static(
            header::SPEC_VERSION,
            Bytes::from_static(CLOUDEVENTS_VERSION.as_bytes()),
        );
        headers.push_static(header::TIME, texts.slice(time_at..own.end));
        headers.push_static(header::MINOR_VERSION, minor);
        headers.push_static(header::SOURCE_HOST, self.source_host.clone());
        headers.push_static(
            header::SOURCE_LIB,
            Bytes::from_static(SOURCE_LIB.as_bytes()),
        );
        let content_type = Bytes::from_static(self.content_type.as_bytes());
        headers.push_static(header::CONTENT_TYPE, content_type.clone());
        headers.push_static(header::DATA_CONTENT_TYPE, content_type);
    }
}

/// The length of a UUID's hyphenated text, which `ce_id` holds.
const ID_LENGTH: usize = uuid::fmt::Hyphenated::LENGTH;

/// The CloudEvents specification version Open edX writes.
const CLOUDEVENTS_VERSION: &str = "1.0";

/// `0`–`9`: small minor versions are a slice of this, not formatted text.
const DIGITS: &[u8; 10] = b"0123456789";

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SecondsFormat;

    #[test]
    fn headers_round_trip() {
        let mut meta = EventMetadata::new("org.example.a.v1", 2, "openedx/svc/web", "host");
        meta.content_type = "application/avro".into();
        let mut headers = Headers::new();
        meta.write_headers(&mut headers);
        assert_eq!(headers.get("ce_datacontenttype"), Some("application/avro"));
        let back = EventMetadata::from_headers(&headers).unwrap();
        // Microsecond precision on the wire.
        assert_eq!(back.time.timestamp_micros(), meta.time.timestamp_micros());
        assert_eq!(back.id, meta.id);
        assert_eq!(back.minor_version, 2);
        assert_eq!(back.source_lib, SOURCE_LIB);
    }

    #[test]
    fn a_new_events_headers_are_those_of_its_metadata() {
        // A year past 9999 takes chrono's formatting instead of the fixed-width one.
        let far = DateTime::from_timestamp(300_000_000_000, 123_456_000).unwrap();
        for (minor, time) in [
            (0, Utc::now()),
            (9, far),
            (10, Utc::now()),
            (4_000_000_000, far),
        ] {
            let shared = SharedAttributes::new("openedx/svc/web", "host-1", "application/avro");
            let id = Uuid::new_v4();
            // After another event's texts, as in a batch.
            let mut texts = Vec::new();
            SharedAttributes::append_new(&mut texts);
            let start = texts.len();
            SharedAttributes::append(id, TimeText::at(&time), &mut texts);
            let texts = Bytes::from(texts);
            let mut written = Headers::new();
            shared.write(
                &texts,
                start..texts.len(),
                "org.example.a.v1",
                minor,
                &mut written,
            );
            let mut meta =
                EventMetadata::new("org.example.a.v1", minor, "openedx/svc/web", "host-1");
            meta.id = id;
            meta.time = time;
            meta.content_type = "application/avro".into();
            let mut expected = Headers::new();
            for (name, value) in [
                (header::ID, meta.id.to_string()),
                (header::TYPE, meta.event_type.to_string()),
                (header::SOURCE, meta.source.to_string()),
                (header::SPEC_VERSION, "1.0".into()),
                (header::TIME, meta.time_string()),
                (header::MINOR_VERSION, minor.to_string()),
                (header::SOURCE_HOST, "host-1".into()),
                (header::SOURCE_LIB, SOURCE_LIB.into()),
                (header::CONTENT_TYPE, "application/avro".into()),
                (header::DATA_CONTENT_TYPE, "application/avro".into()),
            ] {
                expected.append(name, value);
            }
            assert_eq!(written, expected, "minor version {minor}, {time}");
            if time == far {
                // chrono's parser does not read five-digit years back; the writing is what
                // this test is about.
                continue;
            }
            let back = EventMetadata::from_headers(&written).unwrap();
            assert_eq!(
                (back.id, back.minor_version, back.time.timestamp_micros()),
                (meta.id, minor, meta.time.timestamp_micros())
            );
        }
    }

    #[test]
    fn headers_written_over_others_replace_them() {
        for minor in [0, 7, 12, 300] {
            let meta = EventMetadata::new("org.example.a.v1", minor, "svc", "host");
            let mut fresh = Headers::new();
            meta.write_headers(&mut fresh);
            let mut used = Headers::new();
            used.insert("ce_minorversion", "99");
            used.insert("x-other", "kept");
            meta.write_headers(&mut used);
            assert_eq!(
                fresh.get("ce_minorversion"),
                Some(minor.to_string().as_str())
            );
            assert_eq!(used.get_all("ce_minorversion").count(), 1);
            assert_eq!(used.get("x-other"), Some("kept"));
            for (name, value) in fresh.iter() {
                assert_eq!(
                    used.get_all(name).collect::<Vec<_>>(),
                    vec![value],
                    "{name}"
                );
            }
            assert_eq!(fresh.get("ce_time"), Some(meta.time_string().as_str()));
            let read = EventMetadata::from_headers(&fresh).expect("readable");
            assert_eq!((read.id, read.minor_version), (meta.id, minor));
        }
    }

    #[test]
    fn python_isoformat_time_parses() {
        let mut headers = Headers::new();
        headers.insert("ce_id", Uuid::new_v4().to_string());
        headers.insert("ce_type", "t");
        headers.insert("ce_time", "2026-11-22T05:20:27.505586+00:00");
        let meta = EventMetadata::from_headers(&headers).unwrap();
        assert_eq!(meta.time_string(), "2026-11-22T05:20:27.505586+00:00");
    }

    #[test]
    fn time_text_is_chronos_rfc3339_with_microseconds() {
        let mut meta = EventMetadata::new("t", 0, "s", "h");
        // A spread of instants: whole seconds, odd microseconds, far years, a leap second.
        let mut instants: Vec<DateTime<Utc>> = (0..2_000i64)
            .map(|i| {
                let secs = i * 15_778_463 + i * i * 7;
                DateTime::from_timestamp(secs, ((i * 7_919_777) % 1_000_000_000) as u32).unwrap()
            })
            .collect();
        instants.push(DateTime::from_timestamp(-62_135_596_800, 0).unwrap()); // year 1
        instants.push(DateTime::from_timestamp(253_402_300_799, 999_999_999).unwrap()); // 9999
        instants.push(DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap()); // leap
        instants.push(Utc::now());
        for at in instants {
            meta.time = at;
            assert_eq!(
                meta.time_string(),
                at.to_rfc3339_opts(SecondsFormat::Micros, false),
                "{at:?}"
            );
        }
    }

    #[test]
    fn unusable_headers_are_rejected() {
        let mut headers = Headers::new();
        headers.insert("ce_type", "t");
        let err = EventMetadata::from_headers(&headers).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidHeaders);
        assert!(err.to_string().contains("ce_id"));

        headers.insert("ce_id", Uuid::new_v4().to_string());
        headers.append("ce_type", "u");
        let err = EventMetadata::from_headers(&headers).unwrap_err();
        assert!(err.to_string().contains("several ce_type"), "{err}");

        headers.remove("ce_type");
        headers.insert("ce_type", "");
        let err = EventMetadata::from_headers(&headers).unwrap_err();
        assert!(err.to_string().contains("no ce_type"), "{err}");
    }

    /// The id is read from its bytes; what does not parse still says why, and where.
    #[test]
    fn an_id_that_is_not_a_uuid_says_so() {
        let with_id = |id: &[u8]| {
            let mut headers = Headers::new();
            headers.insert("ce_type", "org.openedx.t.v1");
            headers.insert("ce_id", id);
            EventMetadata::from_headers(&headers)
        };
        let id = Uuid::new_v4();
        assert_eq!(with_id(id.to_string().as_bytes()).unwrap().id, id);
        assert_eq!(with_id(id.simple().to_string().as_bytes()).unwrap().id, id);
        let err = with_id(b"not-a-uuid").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidHeaders);
        assert!(err.to_string().contains("not a UUID"), "{err}");
        assert_eq!(err.context("ce_id"), Some("not-a-uuid"));
        let err = with_id(&[0xff, 0xfe]).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn each_attribute_takes_its_first_text_value_as_get_does() {
        let mut headers = Headers::new();
        headers.insert("ce_id", Uuid::new_v4().to_string());
        headers.insert("ce_type", "org.openedx.t.v1");
        headers.append("ce_source", "first");
        headers.append("ce_source", "second");
        headers.append("sourcehost", [0xffu8, 0xfe]);
        headers.append("sourcelib", "1.2");
        headers.append("content-type", "application/avro");
        let meta = EventMetadata::from_headers(&headers).unwrap();
        assert_eq!(meta.source, headers.get("ce_source").unwrap());
        assert_eq!(meta.source, "first");
        // Not UTF-8: absent, so empty.
        assert_eq!(meta.source_host, "");
        assert_eq!(meta.source_lib, "1.2");
        assert_eq!(meta.content_type, "application/avro");
        // Absent: the defaults.
        assert_eq!(meta.spec_version, "1.0");
        assert_eq!(meta.minor_version, 0);
    }

    /// The minor version and the time are read from their bytes: one digit, several, text that
    /// is no number or time (an error that names the header), bytes that are not text (as if
    /// absent).
    #[test]
    fn minor_version_and_time_read_from_their_bytes() {
        let read = |minor: &[u8], time: &[u8]| {
            let mut headers = Headers::new();
            headers.insert("ce_id", Uuid::new_v4().to_string());
            headers.insert("ce_type", "org.openedx.t.v1");
            headers.insert("ce_minorversion", minor);
            headers.insert("ce_time", time);
            EventMetadata::from_headers(&headers)
        };
        let time = b"2026-11-22T05:20:27.505586+00:00";
        for (minor, expected) in [(&b"7"[..], 7), (b"12", 12), (b"", 0), (b"\xff", 0)] {
            let meta = read(minor, time).unwrap();
            assert_eq!(meta.minor_version, expected, "{minor:?}");
            assert_eq!(meta.time_string(), "2026-11-22T05:20:27.505586+00:00");
        }
        let err = read(b"x", time).unwrap_err();
        assert!(err.to_string().contains("ce_minorversion"), "{err}");
        let err = read(b"1", b"yesterday").unwrap_err();
        assert!(err.to_string().contains("ce_time"), "{err}");
        assert!(err.to_string().contains("yesterday"), "{err}");
        let before = Utc::now();
        let meta = read(b"1", b"2026-11-22T05:20:27\xff+00:00").unwrap();
        assert!(meta.time >= before, "not text: as if absent, so now");
    }

    /// Consecutive events share the text they have in common; text that changes, or is not
    /// UTF-8, is read afresh and never taken from another event.
    #[test]
    fn consecutive_events_share_their_text_and_changes_are_read_afresh() {
        let headers_of = |event_type: &str, source: &[u8]| {
            let mut headers = Headers::new();
            headers.insert("ce_id", Uuid::new_v4().to_string());
            headers.insert("ce_type", event_type);
            headers.insert("ce_source", source);
            headers
        };
        let read = |headers: &Headers| EventMetadata::from_headers(headers).unwrap();
        let first = read(&headers_of("org.openedx.a.v1", b"openedx/lms/web"));
        let second = read(&headers_of("org.openedx.a.v1", b"openedx/lms/web"));
        assert!(Arc::ptr_eq(&first.event_type.0, &second.event_type.0));
        assert!(Arc::ptr_eq(&first.source.0, &second.source.0));
        assert_ne!(first.id, second.id);

        let other = read(&headers_of("org.openedx.b.v1", [0xff, 0xfe].as_slice()));
        assert_eq!(other.event_type, "org.openedx.b.v1");
        assert_eq!(other.source, "");
        let again = read(&headers_of("org.openedx.a.v1", b"openedx/cms/web"));
        assert_eq!(again.event_type, "org.openedx.a.v1");
        assert_eq!(again.source, "openedx/cms/web");

        // A type that is not UTF-8 is still refused, whatever came before.
        let err = EventMetadata::from_headers(&headers_of("x", b"s"))
            .and_then(|_| {
                EventMetadata::from_headers(&{
                    let mut h = headers_of("x", b"s");
                    h.insert("ce_type", [0xffu8, 0xfe]);
                    h
                })
            })
            .unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn text_reads_and_compares_as_a_string() {
        let text = Text::from("org.openedx.a.v1");
        assert_eq!(text.as_str(), "org.openedx.a.v1");
        assert_eq!(text, "org.openedx.a.v1");
        assert_eq!("org.openedx.a.v1", text);
        assert_eq!(text, "org.openedx.a.v1".to_owned());
        assert_eq!("org.openedx.a.v1".to_owned(), text);
        assert_eq!(
            format!("{text} {text:?}"),
            "org.openedx.a.v1 \"org.openedx.a.v1\""
        );
        assert_eq!(String::from(text.clone()), "org.openedx.a.v1");
        assert_eq!(
            serde_json::to_string(&text).unwrap(),
            "\"org.openedx.a.v1\""
        );
        assert!(text.starts_with("org.openedx"));
    }
}
