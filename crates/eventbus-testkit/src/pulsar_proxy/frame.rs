//! Splitting the broker's byte stream into Pulsar frames and the two rewrites of the proxy.
//!
//! Frame layout (PulsarApi.proto, the binary protocol): a simple command is
//! `[totalSize u32][commandSize u32][BaseCommand]`; a payload command continues with
//! `[magic 0x0e01 u16][CRC32C u32][metadataSize u32][MessageMetadata][payload]`, where magic and
//! checksum are optional. All integers are big-endian; `totalSize` counts every byte after itself.
//! Protobuf is walked by hand: only `BaseCommand.type` and the lookup response are decoded, and
//! every other field is copied byte for byte.

use std::fmt;

use bytes::{BufMut, BytesMut};

/// The magic number announcing a CRC32C checksum in a payload frame.
const MAGIC_CRC32C: [u8; 2] = [0x0e, 0x01];
/// `BaseCommand.Type.MESSAGE`.
const TYPE_MESSAGE: u64 = 9;
/// `BaseCommand.Type.LOOKUP_RESPONSE`.
const TYPE_LOOKUP_RESPONSE: u64 = 24;
/// `BaseCommand.type`.
const FIELD_TYPE: u32 = 1;
/// `BaseCommand.lookupTopicResponse`.
const FIELD_LOOKUP_RESPONSE: u32 = 24;
/// `CommandLookupTopicResponse.brokerServiceUrl` and `.brokerServiceUrlTls`.
const FIELDS_BROKER_URL: [u32; 2] = [1, 2];
/// A `totalSize` above this is taken for garbage; Pulsar's default maximum message is 5 MiB.
pub(super) const MAX_FRAME: usize = 64 << 20;
/// The most room [`take_frame`] reserves ahead for the rest of a frame. The size a header
/// announces is only the peer's word: memory grows with the bytes that arrive, not with it.
pub(super) const RESERVE_AHEAD: usize = 1 << 20;

/// CRC32C (Castagnoli), the checksum of Pulsar payload frames.
pub(super) static CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// A frame from the broker that is not valid Pulsar protocol.
#[derive(Debug)]
pub(super) struct FrameError(String);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed Pulsar frame: {}", self.0)
    }
}

fn malformed(what: impl Into<String>) -> FrameError {
    FrameError(what.into())
}

/// The outcome of [`fix_frame`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fixed {
    /// Forward the frame as it is.
    Unchanged,
    /// A MESSAGE frame that got the magic number and its CRC32C.
    Checksummed(Vec<u8>),
    /// A lookup response whose broker URLs now name the proxy.
    LookupRewritten(Vec<u8>),
}

/// A CONNECT frame, as a client opens a connection with (the readiness probe's).
pub(super) fn connect_frame() -> Vec<u8> {
    const CLIENT: &[u8] = b"eventbus-readiness-probe";
    // CommandConnect { client_version (1): CLIENT, protocol_version (4): 21 }
    let mut connect = vec![0x0a];
    put_varint(&mut connect, CLIENT.len() as u64);
    connect.extend_from_slice(CLIENT);
    connect.extend_from_slice(&[0x20, 21]);
    // BaseCommand { type (1): CONNECT = 2, connect (2): … }
    let mut command = vec![0x08, 2, 0x12];
    put_varint(&mut command, connect.len() as u64);
    command.extend_from_slice(&connect);
    assemble(&command, &[])
}

/// Whether `frame` (from [`take_frame`]) is the broker's CONNECTED answer.
pub(super) fn is_connected(frame: &[u8]) -> bool {
    const TYPE_CONNECTED: u64 = 3;
    let Some(size) = be_u32(frame, 4) else {
        return false;
    };
    frame
        .get(8..8 + size as usize)
        .is_some_and(|command| command_type(command).is_ok_and(|t| t == TYPE_CONNECTED))
}

/// Removes the first complete frame from `buf`; `None` if more bytes are needed.
pub(super) fn take_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
    let Some(total) = be_u32(buf, 0) else {
        return Ok(None);
    };
    let total = total as usize;
    if !(4..=MAX_FRAME).contains(&total) {
        return Err(malformed(format!("total size {total} out of range")));
    }
    if buf.len() < 4 + total {
        buf.reserve((4 + total - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    Ok(Some(buf.split_to(4 + total)))
}

/// Applies the two fixes to one complete frame as returned by [`take_frame`].
pub(super) fn fix_frame(frame: &[u8], proxy_url: &str) -> Result<Fixed, FrameError> {
    let command_size = be_u32(frame, 4).ok_or_else(|| malformed("shorter than 8 bytes"))?;
    let command_end = 8usize.saturating_add(command_size as usize);
    let command = frame
        .get(8..command_end)
        .ok_or_else(|| malformed(format!("command size {command_size} exceeds the frame")))?;
    let rest = &frame[command_end..];
    match command_type(command)? {
        TYPE_MESSAGE if !rest.is_empty() && !rest.starts_with(&MAGIC_CRC32C) => Ok(
            Fixed::Checksummed(add_checksum(&frame[4..command_end], rest)?),
        ),
        TYPE_LOOKUP_RESPONSE => Ok(match rewrite_lookup(command, proxy_url)? {
            Some(command) => Fixed::LookupRewritten(assemble(&command, rest)),
            None => Fixed::Unchanged,
        }),
        _ => Ok(Fixed::Unchanged),
    }
}

/// `head` is `[commandSize][BaseCommand]`, `rest` is `[metadataSize][metadata][payload]`.
fn add_checksum(head: &[u8], rest: &[u8]) -> Result<Vec<u8>, FrameError> {
    let metadata_size = be_u32(rest, 0).ok_or_else(|| malformed("payload without metadata"))?;
    if metadata_size as usize > rest.len() - 4 {
        return Err(malformed(format!(
            "metadata size {metadata_size} exceeds the frame"
        )));
    }
    let total = head.len() + MAGIC_CRC32C.len() + 4 + rest.len();
    let mut out = Vec::with_capacity(4 + total);
    out.put_u32(total as u32);
    out.extend_from_slice(head);
    out.extend_from_slice(&MAGIC_CRC32C);
    out.put_u32(CRC32C.checksum(rest));
    out.extend_from_slice(rest);
    Ok(out)
}

fn assemble(command: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + command.len() + rest.len());
    out.put_u32((4 + command.len() + rest.len()) as u32);
    out.put_u32(command.len() as u32);
    out.extend_from_slice(command);
    out.extend_from_slice(rest);
    out
}

/// `BaseCommand.type`; the last occurrence wins, as protobuf decoders do.
fn command_type(command: &[u8]) -> Result<u64, FrameError> {
    let mut found = None;
    for field in Fields::new(command) {
        let field = field?;
        if field.number == FIELD_TYPE {
            match field.value {
                Value::Varint(value) => found = Some(value),
                _ => return Err(malformed("BaseCommand.type is not a varint")),
            }
        }
    }
    found.ok_or_else(|| malformed("BaseCommand without type"))
}

/// The command with every lookup response's broker URLs replaced; `None` if nothing changed.
fn rewrite_lookup(command: &[u8], proxy_url: &str) -> Result<Option<Vec<u8>>, FrameError> {
    let (fields, urls) = ([FIELD_LOOKUP_RESPONSE], FIELDS_BROKER_URL);
    replace_fields(command, &fields, |response| {
        replace_fields(response, &urls, |url| {
            Ok((url != proxy_url.as_bytes()).then(|| proxy_url.as_bytes().to_vec()))
        })
    })
}

/// Copies `message`, letting `replace` change the contents of the length-delimited fields
/// numbered `numbers`; `None` if it changed none.
fn replace_fields(
    message: &[u8],
    numbers: &[u32],
    mut replace: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, FrameError>,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut changed = false;
    for field in Fields::new(message) {
        let field = field?;
        if !numbers.contains(&field.number) {
            out.extend_from_slice(field.raw);
            continue;
        }
        let Value::Bytes(contents) = field.value else {
            return Err(malformed(format!(
                "field {} is not length-delimited",
                field.number
            )));
        };
        match replace(contents)? {
            Some(new) => {
                out.extend_from_slice(field.key);
                put_varint(&mut out, new.len() as u64);
                out.extend_from_slice(&new);
                changed = true;
            }
            None => out.extend_from_slice(field.raw),
        }
    }
    Ok(changed.then_some(out))
}

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, FrameError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or_else(|| malformed("truncated varint"))?;
        *pos += 1;
        if shift == 63 && byte > 1 {
            return Err(malformed("varint overflows 64 bits"));
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(malformed("varint longer than 10 bytes"))
}

/// A field's value; fixed-width values are only skipped.
#[derive(Debug)]
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

#[derive(Debug)]
struct Field<'a> {
    number: u32,
    value: Value<'a>,
    /// The key (tag) bytes as they were encoded.
    key: &'a [u8],
    /// The whole field: key, length if any, and value.
    raw: &'a [u8],
}

/// The fields of a protobuf message in wire order.
#[derive(Debug)]
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], FrameError> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len));
        let bytes = end.and_then(|end| self.buf.get(self.pos..end));
        let bytes = bytes.ok_or_else(|| malformed(format!("field of {len} bytes is truncated")))?;
        self.pos += bytes.len();
        Ok(bytes)
    }

    fn field(&mut self) -> Result<Field<'a>, FrameError> {
        let start = self.pos;
        let key = read_varint(self.buf, &mut self.pos)?;
        let key_end = self.pos;
        let number = u32::try_from(key >> 3).ok().filter(|&n| n != 0);
        let number = number.ok_or_else(|| malformed(format!("invalid field key {key}")))?;
        let value = match key & 7 {
            0 => Value::Varint(read_varint(self.buf, &mut self.pos)?),
            1 => self.take(8).map(|_| Value::Fixed)?,
            2 => {
                let len = read_varint(self.buf, &mut self.pos)?;
                Value::Bytes(self.take(len)?)
            }
            5 => self.take(4).map(|_| Value::Fixed)?,
            wire => return Err(malformed(format!("unsupported wire type {wire}"))),
        };
        let (key, raw) = (&self.buf[start..key_end], &self.buf[start..self.pos]);
        Ok(Field {
            number,
            value,
            key,
            raw,
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            self.pos = self.buf.len();
        }
        Some(field)
    }
}
