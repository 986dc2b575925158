//! A serde deserializer that reads an Avro datum straight into the event type, guided by the
//! schema. apache-avro's own path builds a `Value` tree first and then copies it into the type;
//! reading directly halves the decode time. Used only when the writer's schema is the reader's
//! and has no named references; everything else takes apache-avro's resolving path.

use std::fmt;

use apache_avro::Schema;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// A decoding failure, with the reason.
#[derive(Debug)]
pub(super) struct DecodeError(String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError(msg.to_string())
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

/// Reads one `T` from `input` with `schema`; trailing bytes are left unread.
pub(super) fn from_datum<'de, T: de::Deserialize<'de>>(
    schema: &'de Schema,
    input: &'de [u8],
) -> Result<T> {
    let mut input = input;
    T::deserialize(Datum {
        input: &mut input,
        schema,
    })
}

struct Datum<'a, 'de> {
    input: &'a mut &'de [u8],
    schema: &'de Schema,
}

fn take<'de>(input: &mut &'de [u8], n: usize) -> Result<&'de [u8]> {
    if input.len() < n {
        return Err(DecodeError(format!(
            "the datum ends early: {n} more bytes expected, {} left",
            input.len()
        )));
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Ok(head)
}

fn long(input: &mut &[u8]) -> Result<i64> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = take(input, 1)?[0];
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err(DecodeError(
        "a variable-length integer is longer than 10 bytes".into(),
    ))
}

fn length(input: &mut &[u8]) -> Result<usize> {
    usize::try_from(long(input)?).map_err(|_| DecodeError("a negative length".into()))
}

/// Avro arrays and maps come in blocks: a count (negative: followed by a byte size), items, and
/// a zero count at the end.
fn block_count(input: &mut &[u8]) -> Result<usize> {
    let count = long(input)?;
    if count < 0 {
        long(input)?;
    }
    usize::try_from(count.unsigned_abs()).map_err(|_| DecodeError("a block is too large".into()))
}

impl<'de> de::Deserializer<'de> for Datum<'_, 'de> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.schema {
            Schema::Null => visitor.visit_unit(),
            Schema::Boolean => match take(self.input, 1)?[0] {
                0 => visitor.visit_bool(false),
                1 => visitor.visit_bool(true),
                b => Err(DecodeError(format!("{b} is not a boolean"))),
            },
            Schema::Int | Schema::Long => visitor.visit_i64(long(self.input)?),
            Schema::Float => {
                let b = take(self.input, 4)?;
                visitor.visit_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            Schema::Double => {
                let b = take(self.input, 8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                visitor.visit_f64(f64::from_le_bytes(a))
            }
            Schema::String => {
                let n = length(self.input)?;
                let text = std::str::from_utf8(take(self.input, n)?).map_err(de::Error::custom)?;
                visitor.visit_borrowed_str(text)
            }
            Schema::Bytes => {
                let n = length(self.input)?;
                visitor.visit_borrowed_bytes(take(self.input, n)?)
            }
            Schema::Record(record) => visitor.visit_map(Fields {
                input: self.input,
                fields: record.fields.iter(),
                value: None,
            }),
            Schema::Array(array) => visitor.visit_seq(Items {
                input: self.input,
                schema: &array.items,
                blocks: Blocks::default(),
            }),
            Schema::Map(map) => visitor.visit_map(Entries {
                input: self.input,
                schema: &map.types,
                blocks: Blocks::default(),
            }),
            Schema::Union(union) => {
                let index = length(self.input)?;
                let schema = union
                    .variants()
                    .get(index)
                    .ok_or_else(|| DecodeError(format!("union branch {index} does not exist")))?;
                Datum {
                    input: self.input,
                    schema,
                }
                .deserialize_any(visitor)
            }
            other => Err(DecodeError(format!(
                "the direct decoder does not read {other:?}"
            ))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.schema {
            Schema::Union(union) => {
                let index = length(self.input)?;
                match union.variants().get(index) {
                    Some(Schema::Null) => visitor.visit_none(),
                    Some(schema) => visitor.visit_some(Datum {
                        input: self.input,
                        schema,
                    }),
                    None => Err(DecodeError(format!("union branch {index} does not exist"))),
                }
            }
            Schema::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn is_human_readable(&self) -> bool {
        // UUIDs and times are written as text (the Open edX mapping).
        true
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

struct Fields<'a, 'de, I> {
    input: &'a mut &'de [u8],
    fields: I,
    value: Option<&'de Schema>,
}

impl<'de, I: Iterator<Item = &'de apache_avro::schema::RecordField>> MapAccess<'de>
    for Fields<'_, 'de, I>
{
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        match self.fields.next() {
            None => Ok(None),
            Some(field) => {
                self.value = Some(&field.schema);
                let name: &'de str = field.name.as_str();
                seed.deserialize(name.into_deserializer()).map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let schema = self
            .value
            .take()
            .ok_or_else(|| DecodeError("a value without a field".into()))?;
        seed.deserialize(Datum {
            input: self.input,
            schema,
        })
    }
}

/// Where a reader stands in the blocks of an array or map.
#[derive(Default)]
struct Blocks {
    left: usize,
    done: bool,
}

impl Blocks {
    /// Whether another item follows; reads the next block header when one is due.
    fn next_item(&mut self, input: &mut &[u8]) -> Result<bool> {
        if self.left == 0 && !self.done {
            self.left = block_count(input)?;
            self.done = self.left == 0;
        }
        if self.done {
            return Ok(false);
        }
        self.left -= 1;
        Ok(true)
    }
}

struct Items<'a, 'de> {
    input: &'a mut &'de [u8],
    schema: &'de Schema,
    blocks: Blocks,
}

impl<'de> SeqAccess<'de> for Items<'_, 'de> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if !self.blocks.next_item(self.input)? {
            return Ok(None);
        }
        seed.deserialize(Datum {
            input: self.input,
            schema: self.schema,
        })
        .map(Some)
    }
}

struct Entries<'a, 'de> {
    input: &'a mut &'de [u8],
    schema: &'de Schema,
    blocks: Blocks,
}

impl<'de> MapAccess<'de> for Entries<'_, 'de> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.blocks.next_item(self.input)? {
            return Ok(None);
        }
        seed.deserialize(Datum {
            input: self.input,
            schema: &Schema::String,
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(Datum {
            input: self.input,
            schema: self.schema,
        })
    }
}
