//! A serde deserializer that reads an Avro datum straight into the event type, guided by the
//! schema. apache-avro's own path builds a `Value` tree first and then copies it into the type;
//! reading directly halves the decode time. Used only when the writer's schema is the reader's
//! and has no named references; everything else takes apache-avro's resolving path.

use std::fmt;

use apache_avro::schema::{NamesRef, Namespace, ResolvedSchema};
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
/// a zero count at the end. A block cannot hold more items than there are bytes left (see
/// [`check_datum`]), so a forged count ends the decoding at once instead of looping on it.
fn block_count(input: &mut &[u8]) -> Result<usize> {
    let count = long(input)?;
    if count < 0 {
        long(input)?;
    }
    match usize::try_from(count.unsigned_abs()) {
        Ok(n) if n <= input.len() => Ok(n),
        _ => Err(too_many(count.unsigned_abs(), input.len())),
    }
}

fn too_many(count: u64, left: usize) -> DecodeError {
    DecodeError(format!(
        "a block of {count} items cannot fit in the {left} bytes left of the datum"
    ))
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

/// How deep records, arrays, maps and unions may nest in a datum that [`check_datum`] accepts.
const MAX_DEPTH: usize = 128;

/// Checks, without building anything, that every length and block count of a datum written with
/// `schema` fits in the bytes that follow it; in all, a datum may hold at most as many array
/// items and map entries as it has bytes (only arrays of zero-byte items, such as `null`, could
/// legitimately hold more), and nest at most [`MAX_DEPTH`] deep.
///
/// apache-avro trusts the datum: it sizes a string's buffer by its length, and reserves room for
/// a whole block by its count, before reading them. Six bytes could make it ask for tens of
/// gigabytes and abort the process. Its path therefore runs this first. A datum that ends early
/// is left to apache-avro, which reads it as it always has; trailing bytes are not looked at.
pub(super) fn check_datum(schema: &Schema, input: &[u8]) -> Result<()> {
    let resolved = ResolvedSchema::try_from(schema).map_err(de::Error::custom)?;
    let mut check = Check {
        names: resolved.get_names(),
        input,
        items: input.len(),
    };
    match check.value(schema, &None, 0) {
        Ok(()) | Err(Stop::Ended) => Ok(()),
        Err(Stop::Invalid(e)) => Err(e),
    }
}

/// Why [`Check`] stopped early.
enum Stop {
    /// The datum ends here; what apache-avro makes of that is not this check's business.
    Ended,
    /// A length, count or index apache-avro must not be given.
    Invalid(DecodeError),
}

impl From<DecodeError> for Stop {
    fn from(e: DecodeError) -> Self {
        Stop::Invalid(e)
    }
}

struct Check<'s, 'a> {
    names: &'a NamesRef<'s>,
    input: &'a [u8],
    /// Array items and map entries the rest of the datum may still hold.
    items: usize,
}

impl Check<'_, '_> {
    fn skip(&mut self, n: usize) -> std::result::Result<(), Stop> {
        if self.input.len() < n {
            return Err(Stop::Ended);
        }
        self.input = &self.input[n..];
        Ok(())
    }

    fn long(&mut self) -> std::result::Result<i64, Stop> {
        if self.input.is_empty() {
            return Err(Stop::Ended);
        }
        // A varint cut off by the end of the datum is an end too.
        let before = self.input;
        long(&mut self.input).map_err(|e| {
            if before.len() < 10 && before.iter().all(|b| b & 0x80 != 0) {
                Stop::Ended
            } else {
                Stop::Invalid(e)
            }
        })
    }

    /// A string's or bytes' length, which must fit in what is left.
    fn sized(&mut self) -> std::result::Result<(), Stop> {
        let n = self.long()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.input.len() => self.skip(n),
            _ => Err(DecodeError(format!(
                "a length of {n} bytes does not fit in the {} bytes left of the datum",
                self.input.len()
            ))
            .into()),
        }
    }

    /// A block's item count, charged to the datum's budget of items; zero ends the blocks.
    fn block(&mut self) -> std::result::Result<usize, Stop> {
        let count = self.long()?;
        if count < 0 {
            self.long()?;
        }
        match usize::try_from(count.unsigned_abs()) {
            Ok(n) if n <= self.items => {
                self.items -= n;
                Ok(n)
            }
            _ => Err(too_many(count.unsigned_abs(), self.items).into()),
        }
    }

    fn value(
        &mut self,
        schema: &Schema,
        namespace: &Namespace,
        depth: usize,
    ) -> std::result::Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(DecodeError(format!("the datum nests deeper than {MAX_DEPTH}")).into());
        }
        let depth = depth + 1;
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => self.skip(1),
            Schema::Int
            | Schema::Long
            | Schema::Enum(_)
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long().map(drop),
            Schema::Float => self.skip(4),
            Schema::Double => self.skip(8),
            Schema::Duration => self.skip(12),
            Schema::Bytes | Schema::String | Schema::BigDecimal | Schema::Uuid => self.sized(),
            // A fixed size comes from the schema, not from the datum.
            Schema::Fixed(fixed) => self.skip(fixed.size),
            Schema::Decimal(decimal) => self.value(&decimal.inner, namespace, depth),
            Schema::Array(array) => loop {
                let n = self.block()?;
                if n == 0 {
                    return Ok(());
                }
                for _ in 0..n {
                    self.value(&array.items, namespace, depth)?;
                }
            },
            Schema::Map(map) => loop {
                let n = self.block()?;
                if n == 0 {
                    return Ok(());
                }
                for _ in 0..n {
                    self.sized()?;
                    self.value(&map.types, namespace, depth)?;
                }
            },
            Schema::Union(union) => {
                let index = self.long()?;
                let variant = usize::try_from(index)
                    .ok()
                    .and_then(|i| union.variants().get(i))
                    .ok_or_else(|| DecodeError(format!("union branch {index} does not exist")))?;
                self.value(variant, namespace, depth)
            }
            Schema::Record(record) => {
                let name = record.name.fully_qualified_name(namespace);
                for field in &record.fields {
                    self.value(&field.schema, &name.namespace, depth)?;
                }
                Ok(())
            }
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(namespace);
                let schema = *self
                    .names
                    .get(&name)
                    .ok_or_else(|| DecodeError(format!("the schema names no type {name:?}")))?;
                self.value(schema, &name.namespace, depth)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::ErrorKind;
    use crate::event::EventSchema;
    use crate::serializer::{AvroSerializer, SchemaContext, SchemaStore, Serializer};

    /// An Avro long: zig-zag, then base-128 varint.
    fn long_bytes(n: i64) -> Vec<u8> {
        let mut v = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
        out
    }

    fn schema(json: &str) -> Schema {
        Schema::parse_str(json).unwrap()
    }

    /// A record with a map of arrays of records, the second use of `Item` by name.
    const SHELF: &str = r#"{"type": "record", "name": "CloudEvent", "namespace": "org.example.shelf.v1", "fields": [
        {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "Item", "fields": [
            {"name": "sku", "type": "string"}]}}},
        {"name": "sections", "type": {"type": "map", "values": {"type": "array", "items": "Item"}}}]}"#;

    #[test]
    fn check_accepts_real_datums_and_leaves_early_ends_to_apache_avro() {
        let shelf = schema(SHELF);
        // items: [{sku: "a"}], sections: {"s": [{sku: "b"}]}
        let datum = [2, 2, b'a', 0, 2, 2, b's', 2, 2, b'b', 0, 0];
        check_datum(&shelf, &datum).unwrap();
        // Ends between values are apache-avro's to judge ...
        for cut in [0, 1, 3, 4, 5, 7, 8, 10, 11] {
            check_datum(&shelf, &datum[..cut]).unwrap();
        }
        // ... a string cut short is not: its length cannot be told from a forged one.
        assert!(check_datum(&shelf, &datum[..2]).is_err());
    }

    /// Issue 15 (fuzzing): a count of 2^30 map entries in a few bytes made apache-avro reserve
    /// 43 GB and abort the process (`fuzz/regressions/avro_datum/`, `…/confluent_frame/`).
    #[test]
    fn check_refuses_counts_and_lengths_beyond_the_datum() {
        let shelf = schema(SHELF);
        let forged_map = [&[0][..], &long_bytes(1 << 30), &[2, b's']].concat();
        let err = check_datum(&shelf, &forged_map).unwrap_err();
        assert!(err.to_string().contains("cannot fit"), "{err}");
        let forged_array = [long_bytes(-(1 << 40)), long_bytes(4), vec![2, b'a']].concat();
        assert!(check_datum(&shelf, &forged_array).is_err());
        let forged_string = [&[2][..], &long_bytes(1 << 28), b"abc"].concat();
        let err = check_datum(&shelf, &forged_string).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");

        // Arrays of null take no bytes: one small block each, but more items than bytes in all.
        let nulls = schema(r#"{"type": "array", "items": {"type": "array", "items": "null"}}"#);
        let inner = [long_bytes(2), vec![0]].concat();
        let datum = [long_bytes(3), inner.repeat(3), vec![0]].concat();
        assert!(check_datum(&nulls, &datum).is_err());
        let datum = [long_bytes(1), inner, vec![0]].concat();
        check_datum(&nulls, &datum).unwrap();
    }

    #[test]
    fn check_refuses_nesting_beyond_the_limit() {
        let list = schema(
            r#"{"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}"#,
        );
        let deep = [vec![2; MAX_DEPTH], vec![0]].concat();
        assert!(check_datum(&list, &deep)
            .unwrap_err()
            .to_string()
            .contains("deeper"));
        check_datum(&list, &[2, 2, 0]).unwrap();
    }

    #[test]
    fn the_direct_decoder_refuses_a_block_count_beyond_the_datum() {
        let longs = schema(r#"{"type": "array", "items": "long"}"#);
        let forged = [long_bytes(i64::MAX), vec![2]].concat();
        let err = from_datum::<Vec<i64>>(&longs, &forged).unwrap_err();
        assert!(err.to_string().contains("cannot fit"), "{err}");
        let datum = [long_bytes(2), vec![2, 4, 0]].concat();
        assert_eq!(from_datum::<Vec<i64>>(&longs, &datum).unwrap(), [1, 2]);
    }

    #[test]
    fn a_forged_count_on_apache_avros_path_is_a_deserialize_error() {
        let shelf = EventSchema::parse(SHELF).unwrap();
        assert!(
            shelf.has_refs(),
            "the named reference sends this to apache-avro"
        );
        let ctx = SchemaContext {
            topic: "t",
            event_type: "org.example.shelf.v1",
            schema: &shelf,
            minor_version: 0,
            message_minor_version: None,
        };
        let avro = AvroSerializer::new(Arc::new(SchemaStore::new()));
        let forged_map = [&[0][..], &long_bytes(1 << 30), &[2, b's']].concat();
        let err = avro.decode(&forged_map, &ctx).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Deserialize);
    }
}
