//! A serde serializer that writes an Avro datum straight from the event, guided by the schema,
//! for the shapes our schemas are made of: records whose fields come in schema order, strings,
//! numbers, booleans, options over unions, arrays and maps.
//!
//! apache-avro's schema-aware writer looks every field up by name, wraps each value in a fresh
//! serializer and buffers every array item in a `Vec` of its own; this one costs a fraction of
//! that per event. It declines ([`Declined`]) whatever it does not cover, or covers with any
//! doubt: the caller then throws its bytes away and lets apache-avro write the datum, so the
//! bytes on the wire are always apache-avro's, and so are the errors. The tests check the
//! equality over every shape it accepts.

use std::fmt;

use apache_avro::schema::RecordSchema;
use apache_avro::Schema;
use serde::ser::{self, Serialize};

/// The encoder does not cover this value with this schema; apache-avro must write it.
#[derive(Debug)]
pub(super) struct Declined;

impl fmt::Display for Declined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not covered by the direct Avro encoder")
    }
}

impl std::error::Error for Declined {}

impl ser::Error for Declined {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Declined
    }
}

type Result<T = ()> = std::result::Result<T, Declined>;

/// apache-avro writes arrays and maps in blocks of at most this many items plus one; below it,
/// one block holds them all and the count can be written before the items.
const ONE_BLOCK: usize = 1024;

/// Appends `value`'s datum under `schema` to `out`. On `Err`, `out` holds a partial datum the
/// caller must cut off. `human_readable` must be what apache-avro's serializer reports (UUIDs as
/// text or as bytes).
pub(super) fn to_datum<T: Serialize + ?Sized>(
    schema: &Schema,
    value: &T,
    human_readable: bool,
    out: &mut Vec<u8>,
) -> Result {
    value.serialize(Datum {
        out,
        schema,
        human_readable,
    })
}

fn long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z > 0x7f {
        out.push(0x80 | (z & 0x7f) as u8);
        z >>= 7;
    }
    out.push(z as u8);
}

fn bytes(out: &mut Vec<u8>, value: &[u8]) {
    long(out, value.len() as i64);
    out.extend_from_slice(value);
}

/// The index of the first union branch that `pick` accepts.
fn branch(schema: &Schema, pick: impl Fn(&Schema) -> bool) -> Result<(i64, &Schema)> {
    let Schema::Union(union) = schema else {
        return Err(Declined);
    };
    union
        .variants()
        .iter()
        .enumerate()
        .find(|(_, s)| pick(s))
        .map(|(i, s)| (i as i64, s))
        .ok_or(Declined)
}

struct Datum<'a, 's> {
    out: &'a mut Vec<u8>,
    schema: &'s Schema,
    human_readable: bool,
}

impl<'a, 's> Datum<'a, 's> {
    fn int(self, n: i64) -> Result {
        match self.schema {
            Schema::Int if i32::try_from(n).is_ok() => long(self.out, n),
            Schema::Long => long(self.out, n),
            _ => return Err(Declined),
        }
        Ok(())
    }

    fn at<'b>(&'b mut self, schema: &'s Schema) -> Datum<'b, 's> {
        Datum {
            out: self.out,
            schema,
            human_readable: self.human_readable,
        }
    }

    /// Opens an array or map of `len` items whose items follow `items`.
    fn collection(self, len: Option<usize>, items: &'s Schema) -> Result<Items<'a, 's>> {
        match len {
            Some(len) if len <= ONE_BLOCK => {
                if len > 0 {
                    long(self.out, len as i64);
                }
                Ok(Items {
                    out: self.out,
                    items,
                    left: len,
                    human_readable: self.human_readable,
                })
            }
            _ => Err(Declined),
        }
    }
}

impl<'a, 's> ser::Serializer for Datum<'a, 's> {
    type Ok = ();
    type Error = Declined;
    type SerializeSeq = Items<'a, 's>;
    type SerializeTuple = ser::Impossible<(), Declined>;
    type SerializeTupleStruct = ser::Impossible<(), Declined>;
    type SerializeTupleVariant = ser::Impossible<(), Declined>;
    type SerializeMap = Items<'a, 's>;
    type SerializeStruct = Fields<'a, 's>;
    type SerializeStructVariant = ser::Impossible<(), Declined>;

    fn is_human_readable(&self) -> bool {
        self.human_readable
    }

    fn serialize_bool(self, v: bool) -> Result {
        match self.schema {
            Schema::Boolean => self.out.push(u8::from(v)),
            _ => return Err(Declined),
        }
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result {
        self.int(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result {
        self.int(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result {
        self.int(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result {
        self.int(v)
    }

    fn serialize_u8(self, v: u8) -> Result {
        self.int(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result {
        self.int(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result {
        self.int(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result {
        self.int(i64::try_from(v).map_err(|_| Declined)?)
    }

    fn serialize_f32(self, v: f32) -> Result {
        match self.schema {
            Schema::Float => self.out.extend_from_slice(&v.to_le_bytes()),
            // Our mapping gives `f32` the Avro `double`, widened as apache-avro does.
            Schema::Double => self.out.extend_from_slice(&f64::from(v).to_le_bytes()),
            _ => return Err(Declined),
        }
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result {
        match self.schema {
            Schema::Double => self.out.extend_from_slice(&v.to_le_bytes()),
            _ => return Err(Declined),
        }
        Ok(())
    }

    fn serialize_char(self, _: char) -> Result {
        Err(Declined)
    }

    fn serialize_str(self, v: &str) -> Result {
        match self.schema {
            Schema::String | Schema::Uuid => bytes(self.out, v.as_bytes()),
            _ => return Err(Declined),
        }
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result {
        match self.schema {
            Schema::Bytes => bytes(self.out, v),
            _ => return Err(Declined),
        }
        Ok(())
    }

    fn serialize_none(self) -> Result {
        let (index, _) = branch(self.schema, |s| matches!(s, Schema::Null))?;
        long(self.out, index);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(mut self, value: &T) -> Result {
        // As apache-avro does: the first branch that is not null, whatever the value.
        let (index, schema) = branch(self.schema, |s| !matches!(s, Schema::Null))?;
        long(self.out, index);
        value.serialize(self.at(schema))
    }

    fn serialize_unit(self) -> Result {
        Err(Declined)
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result {
        Err(Declined)
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result {
        Err(Declined)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result {
        Err(Declined)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Items<'a, 's>> {
        match self.schema {
            Schema::Array(array) => self.collection(len, &array.items),
            _ => Err(Declined),
        }
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple> {
        Err(Declined)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct> {
        Err(Declined)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        Err(Declined)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Items<'a, 's>> {
        match self.schema {
            Schema::Map(map) => self.collection(len, &map.types),
            _ => Err(Declined),
        }
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Fields<'a, 's>> {
        match self.schema {
            Schema::Record(record) => Ok(Fields {
                out: self.out,
                record,
                next: 0,
                human_readable: self.human_readable,
            }),
            _ => Err(Declined),
        }
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant> {
        Err(Declined)
    }
}

/// A record's fields, which must arrive in the schema's order: apache-avro writes them in the
/// order they come, so that order is the only one where both agree without a doubt.
struct Fields<'a, 's> {
    out: &'a mut Vec<u8>,
    record: &'s RecordSchema,
    next: usize,
    human_readable: bool,
}

impl ser::SerializeStruct for Fields<'_, '_> {
    type Ok = ();
    type Error = Declined;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        let field = self.record.fields.get(self.next).ok_or(Declined)?;
        if field.name != key {
            return Err(Declined);
        }
        self.next += 1;
        value.serialize(Datum {
            out: self.out,
            schema: &field.schema,
            human_readable: self.human_readable,
        })
    }

    fn skip_field(&mut self, _: &'static str) -> Result {
        // apache-avro writes the field's default; leave that to it.
        Err(Declined)
    }

    fn end(self) -> Result {
        if self.next == self.record.fields.len() {
            Ok(())
        } else {
            Err(Declined)
        }
    }
}

/// An array's items or a map's entries, counted against the length written up front.
struct Items<'a, 's> {
    out: &'a mut Vec<u8>,
    items: &'s Schema,
    left: usize,
    human_readable: bool,
}

impl Items<'_, '_> {
    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        value.serialize(Datum {
            out: self.out,
            schema: self.items,
            human_readable: self.human_readable,
        })
    }

    fn end(self) -> Result {
        if self.left != 0 {
            return Err(Declined);
        }
        self.out.push(0);
        Ok(())
    }
}

impl ser::SerializeSeq for Items<'_, '_> {
    type Ok = ();
    type Error = Declined;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.left = self.left.checked_sub(1).ok_or(Declined)?;
        self.item(value)
    }

    fn end(self) -> Result {
        Items::end(self)
    }
}

impl ser::SerializeMap for Items<'_, '_> {
    type Ok = ();
    type Error = Declined;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result {
        self.left = self.left.checked_sub(1).ok_or(Declined)?;
        // Map keys are strings in Avro.
        static KEY: Schema = Schema::String;
        key.serialize(Datum {
            out: self.out,
            schema: &KEY,
            human_readable: self.human_readable,
        })
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.item(value)
    }

    fn end(self) -> Result {
        Items::end(self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{TimeZone, Utc};
    use serde::Serialize;

    use super::*;
    use crate::schema::{AvroType, Bytes, SchemaBuilder};
    use crate::serializer::{avro_text_types, encode_datum, SchemaContext};
    use crate::{AvroRecord, EventSchema};

    #[derive(Serialize, AvroRecord)]
    struct Line {
        sku: String,
        count: u32,
    }

    #[derive(Serialize, AvroRecord)]
    struct Address {
        city: String,
        zip: Option<String>,
    }

    /// Every type of the Open edX mapping, each record type used once (a second use is a named
    /// reference, which takes apache-avro's resolving path instead).
    #[derive(Serialize, AvroRecord)]
    struct Everything {
        flag: bool,
        tiny: i8,
        small: i16,
        medium: i32,
        big: i64,
        byte: u8,
        word: u16,
        unsigned: u32,
        huge: u64,
        size: usize,
        ratio: f32,
        precise: f64,
        name: String,
        id: uuid::Uuid,
        at: chrono::DateTime<Utc>,
        day: chrono::NaiveDate,
        note: Option<String>,
        count: Option<i64>,
        address: Address,
        lines: Vec<Line>,
        tags: Vec<String>,
        scores: BTreeMap<String, i64>,
        blob: Bytes,
    }

    fn everything(full: bool) -> Everything {
        let n = |k: i64| if full { k } else { -k };
        Everything {
            flag: full,
            tiny: if full { i8::MAX } else { i8::MIN },
            small: if full { i16::MAX } else { i16::MIN },
            medium: if full { i32::MAX } else { i32::MIN },
            big: if full { i64::MAX } else { i64::MIN },
            byte: if full { u8::MAX } else { 0 },
            word: if full { u16::MAX } else { 0 },
            unsigned: if full { u32::MAX } else { 0 },
            huge: if full { i64::MAX as u64 } else { 0 },
            size: 300,
            ratio: n(3) as f32 / 7.0,
            precise: n(1) as f64 / 3.0,
            name: if full {
                "Ada Lovelace — λ".into()
            } else {
                String::new()
            },
            id: uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            at: Utc.with_ymd_and_hms(2026, 12, 3, 20, 15, 0).unwrap(),
            day: chrono::NaiveDate::from_ymd_opt(1815, 12, 10).unwrap(),
            note: full.then(|| "a note".into()),
            count: full.then_some(-64),
            address: Address {
                city: "London".into(),
                zip: full.then(|| "W1".into()),
            },
            lines: if full {
                (0..3)
                    .map(|i| Line {
                        sku: format!("sku-{i}"),
                        count: i * 100,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            tags: if full {
                vec!["a".into(), String::new()]
            } else {
                Vec::new()
            },
            scores: if full {
                [("x".to_owned(), 8192), ("y".to_owned(), -8193)].into()
            } else {
                BTreeMap::new()
            },
            blob: Bytes(if full { vec![0, 255, 7] } else { Vec::new() }),
        }
    }

    fn schema_of<T: AvroType>() -> Schema {
        let json = T::avro_schema(&mut SchemaBuilder::new()).to_string();
        Schema::parse_str(&json).unwrap()
    }

    fn apache<T: Serialize>(schema: &Schema, value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        apache_avro::write_avro_datum_ref(schema, value, &mut out).unwrap();
        out
    }

    fn direct<T: Serialize>(schema: &Schema, value: &T) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        to_datum(schema, value, avro_text_types(), &mut out).map(|()| out)
    }

    /// What the producer writes: the direct encoder, or apache-avro where it declines.
    fn produced<T: Serialize>(schema_json: &str, value: &T) -> Vec<u8> {
        let schema = EventSchema::parse(schema_json).unwrap();
        let ctx = SchemaContext {
            topic: "t",
            event_type: "org.example.test.v1",
            schema: &schema,
            minor_version: 0,
            message_minor_version: None,
        };
        let mut out = vec![0xAA];
        encode_datum(value, &ctx, &mut out).unwrap();
        assert_eq!(out[0], 0xAA, "the prefix before the datum is kept");
        out.split_off(1)
    }

    #[test]
    fn writes_every_mapped_type_as_apache_avro_does() {
        let schema = schema_of::<Everything>();
        for full in [true, false] {
            let value = everything(full);
            let ours = direct(&schema, &value).expect("the direct encoder covers the mapping");
            assert_eq!(ours, apache(&schema, &value), "full: {full}");
        }
    }

    #[test]
    fn writes_every_length_of_integer_as_apache_avro_does() {
        let long = Schema::Long;
        let int = Schema::Int;
        let mut edges = vec![0i64, i64::MIN, i64::MAX, i32::MIN.into(), i32::MAX.into()];
        for bits in 0..63 {
            let n = 1i64 << bits;
            edges.extend([n - 1, n, n + 1, -n, -n - 1]);
        }
        for n in edges {
            assert_eq!(direct(&long, &n).unwrap(), apache(&long, &n), "long {n}");
            if let Ok(small) = i32::try_from(n) {
                assert_eq!(
                    direct(&int, &small).unwrap(),
                    apache(&int, &small),
                    "int {n}"
                );
                assert_eq!(
                    direct(&int, &n).unwrap(),
                    apache(&int, &n),
                    "i64 as int {n}"
                );
            } else {
                assert!(direct(&int, &n).is_err(), "{n} does not fit an int");
            }
        }
    }

    #[test]
    fn options_take_the_branch_apache_avro_takes_in_either_union_order() {
        for json in [r#"["null", "string"]"#, r#"["string", "null"]"#] {
            let schema = Schema::parse_str(json).unwrap();
            for value in [Some("x".to_owned()), None] {
                assert_eq!(
                    direct(&schema, &value).unwrap(),
                    apache(&schema, &value),
                    "{json} {value:?}"
                );
            }
        }
    }

    #[derive(Serialize)]
    struct Pair {
        a: String,
        b: i64,
        #[serde(skip_serializing_if = "is_zero")]
        c: i64,
    }

    fn is_zero(n: &i64) -> bool {
        *n == 0
    }

    #[derive(Serialize)]
    enum Colour {
        Red,
    }

    #[test]
    fn leaves_to_apache_avro_what_it_does_not_cover_and_the_bytes_stay_apache_avros() {
        let pair = Pair {
            a: "x".into(),
            b: 5,
            c: 9,
        };
        let skipping = Pair {
            a: "x".into(),
            b: 5,
            c: 0,
        };
        let reordered = r#"{"type": "record", "name": "Pair", "fields": [
            {"name": "b", "type": "long"}, {"name": "a", "type": "string"},
            {"name": "c", "type": "long"}]}"#;
        let in_order = r#"{"type": "record", "name": "Pair", "fields": [
            {"name": "a", "type": "string"}, {"name": "b", "type": "long"},
            {"name": "c", "type": "long", "default": 7}]}"#;
        let colour = r#"{"type": "record", "name": "Paint", "fields": [
            {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["Red"]}}]}"#;
        let many = r#"{"type": "record", "name": "Many", "fields": [
            {"name": "items", "type": {"type": "array", "items": "long"}}]}"#;

        #[derive(Serialize)]
        struct Paint {
            colour: Colour,
        }
        #[derive(Serialize)]
        struct Many {
            items: Vec<i64>,
        }
        let paint = Paint {
            colour: Colour::Red,
        };
        // apache-avro writes arrays of more than 1,024 items in several blocks.
        let many_items = Many {
            items: (0..2_500).collect(),
        };

        fn check<T: Serialize>(json: &str, value: &T) {
            let schema = Schema::parse_str(json).unwrap();
            assert!(direct(&schema, value).is_err(), "declined: {json}");
            assert_eq!(produced(json, value), apache(&schema, value), "{json}");
        }
        check(reordered, &pair);
        // A skipped field: apache-avro writes the field's default.
        check(in_order, &skipping);
        check(colour, &paint);
        check(many, &many_items);
    }

    #[test]
    fn a_value_that_does_not_fit_is_refused_with_apache_avros_reason() {
        let schema =
            r#"{"type": "record", "name": "Small", "fields": [{"name": "n", "type": "int"}]}"#;
        #[derive(Serialize)]
        struct Small {
            n: u64,
        }
        let event = EventSchema::parse(schema).unwrap();
        let ctx = SchemaContext {
            topic: "t",
            event_type: "org.example.small.v1",
            schema: &event,
            minor_version: 0,
            message_minor_version: None,
        };
        let err = encode_datum(&Small { n: u64::MAX }, &ctx, &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Serialize);
        assert!(format!("{err:?}").contains("Small"), "{err:?}");
    }

    #[test]
    fn the_producer_takes_the_direct_path_for_a_mapped_event() {
        let json = Everything::avro_schema(&mut SchemaBuilder::new()).to_string();
        let schema = Schema::parse_str(&json).unwrap();
        let value = everything(true);
        assert_eq!(produced(&json, &value), apache(&schema, &value));
    }
}
