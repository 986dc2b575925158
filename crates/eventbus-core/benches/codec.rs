//! Encode and decode of a typical event (ten fields, one nested record, one list) in schemaless
//! Avro and JSON. Run with `cargo bench -p eventbus-core --bench codec`.
// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use eventbus_core::serializer::{decode_event, encode_event, AvroSerializer, JsonSerializer};
use eventbus_core::{AvroRecord, Event, SchemaStore, Serializer};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, AvroRecord)]
struct Address {
    street: String,
    city: String,
    country: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.bench.customer.updated.v1", key = "customer_id")]
struct CustomerUpdated {
    customer_id: Uuid,
    email: String,
    name: String,
    age: i32,
    active: bool,
    score: f64,
    updated_at: DateTime<Utc>,
    referrer: Option<String>,
    address: Address,
    tags: Vec<String>,
}

fn event() -> CustomerUpdated {
    CustomerUpdated {
        customer_id: Uuid::new_v4(),
        email: "ada@example.org".into(),
        name: "Ada Lovelace".into(),
        age: 36,
        active: true,
        score: 0.97,
        updated_at: Utc::now(),
        referrer: Some("newsletter".into()),
        address: Address {
            street: "12 St James's Square".into(),
            city: "London".into(),
            country: "GB".into(),
        },
        tags: vec!["vip".into(), "beta".into(), "newsletter".into()],
    }
}

fn bench(c: &mut Criterion, name: &str, serializer: &dyn Serializer) {
    let e = event();
    let bytes = encode_event(serializer, "t", &e).expect("encodes");
    c.bench_function(&format!("{name}/encode"), |b| {
        b.iter(|| encode_event(serializer, "t", black_box(&e)))
    });
    c.bench_function(&format!("{name}/decode"), |b| {
        b.iter(|| decode_event::<CustomerUpdated>(serializer, "t", black_box(&bytes), Some(0)))
    });
    c.bench_function(&format!("{name}/encode+decode"), |b| {
        b.iter(|| {
            let bytes = encode_event(serializer, "t", black_box(&e)).expect("encodes");
            decode_event::<CustomerUpdated>(serializer, "t", &bytes, Some(0))
        })
    });
}

fn codecs(c: &mut Criterion) {
    bench(
        c,
        "avro",
        &AvroSerializer::new(Arc::new(SchemaStore::new())),
    );
    bench(c, "json", &JsonSerializer);
}

criterion_group!(benches, codecs);
criterion_main!(benches);
