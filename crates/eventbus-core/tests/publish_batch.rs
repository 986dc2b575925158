//! A published batch's messages share one buffer for their payloads and their own attributes:
//! each must still read back as its own event, with its own key, id and time, in every format.

use std::collections::HashSet;

use eventbus_core::serializer::decode_event;
use eventbus_core::transport::Subscription;
use eventbus_core::{Bus, BusConfig, Event, EventMetadata, Message, SerializerKind};
use eventbus_testkit::memory::MemoryBroker;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// A note whose text, and so whose payload, is of a different length for each `n`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(type = "org.example.batch.note.v1", key = "author")]
struct Note {
    author: String,
    text: String,
}

fn note(n: usize) -> Note {
    Note {
        author: format!("author-{}", n % 3),
        text: "x".repeat(n * 37 % 300),
    }
}

fn bus(format: SerializerKind) -> Bus {
    Bus::with_transport(MemoryBroker::new(1).transport(), format, BusConfig::new())
}

/// The first `n` messages of `topic`, as a new group reads them.
async fn messages(bus: &Bus, topic: &str, n: usize) -> Vec<Message> {
    let full = bus.producer().settings().full_topic(topic);
    let mut stream = bus
        .transport()
        .subscriber
        .subscribe(Subscription::new(&full, "readers", "reader-1"))
        .await
        .expect("subscribes");
    let mut messages = Vec::new();
    while messages.len() < n {
        let delivery = stream.next().await.expect("open").expect("a delivery");
        messages.push(delivery.message.clone());
        delivery.ack().await.expect("acknowledged");
    }
    messages
}

/// Checks that `messages` are `sent`, in order, each with its key and attributes, and that no
/// two share an id.
fn check(bus: &Bus, topic: &str, sent: &[Note], messages: &[Message]) {
    let producer = bus.producer();
    let full = producer.settings().full_topic(topic);
    let serializer = producer.serializer().as_ref();
    let mut ids = HashSet::new();
    for (note, message) in sent.iter().zip(messages) {
        let got: Note =
            decode_event(serializer, &full, &message.payload, Some(0)).expect("decodes");
        assert_eq!(&got, note);
        let key = message.key.as_deref().expect("keyed by its author");
        assert_eq!(
            serializer.decode_key(key).expect("a key"),
            note.author,
            "{serializer:?}"
        );
        let metadata = EventMetadata::from_headers(&message.headers).expect("its attributes");
        assert_eq!(&*metadata.event_type, Note::EVENT_TYPE);
        assert!(ids.insert(metadata.id), "a fresh id for each event");
        let age = chrono::Utc::now() - metadata.time;
        assert!(age >= chrono::Duration::zero() && age < chrono::Duration::minutes(1));
    }
    assert_eq!(messages.len(), sent.len());
}

#[tokio::test]
async fn each_message_of_a_batch_is_its_own_event_in_every_format() {
    for format in [SerializerKind::Avro, SerializerKind::Json] {
        let bus = bus(format);
        // Payloads of many sizes, so that the buffer's first estimate is wrong both ways.
        let sent: Vec<Note> = (0..50).map(note).collect();
        let positions = bus
            .producer()
            .send_batch("notes", &sent)
            .await
            .expect("published");
        assert_eq!(positions.len(), sent.len());
        let got = messages(&bus, "notes", sent.len()).await;
        check(&bus, "notes", &sent, &got);
    }
}

#[tokio::test]
async fn single_sends_and_an_empty_batch() {
    let bus = bus(SerializerKind::Avro);
    let producer = bus.producer();
    assert!(producer
        .send_batch::<Note>("notes", &[])
        .await
        .expect("nothing to publish")
        .is_empty());
    let sent: Vec<Note> = (1..4).map(note).collect();
    for event in &sent {
        producer.send("notes", event).await.expect("published");
    }
    let got = messages(&bus, "notes", sent.len()).await;
    check(&bus, "notes", &sent, &got);
}
