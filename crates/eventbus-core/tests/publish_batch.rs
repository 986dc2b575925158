//! A published batch's messages share one buffer for their payloads and their own attributes:
//! each must still read back as its own event, with its own key, id and time, in every format.

use std::collections::HashSet;

use eventbus_core::serializer::decode_event;
use eventbus_core::{Bus, BusConfig, Event, EventMetadata, Message, SerializerKind};
use eventbus_testkit::memory::MemoryBroker;
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

/// A bus on a one-partition memory broker, so that the broker's log holds the messages in the
/// order they were published.
fn bus(format: SerializerKind) -> (Bus, MemoryBroker) {
    let broker = MemoryBroker::new(1);
    let bus = Bus::with_transport(broker.transport(), format, BusConfig::new());
    (bus, broker)
}

/// Every message of `topic` (the prefix is added), as the broker stored them.
fn messages(bus: &Bus, broker: &MemoryBroker, topic: &str) -> Vec<Message> {
    broker.messages(&bus.producer().settings().full_topic(topic))
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
        let (bus, broker) = bus(format);
        // Payloads of many sizes, so that the buffer's first estimate is wrong both ways.
        let sent: Vec<Note> = (0..50).map(note).collect();
        let positions = bus
            .producer()
            .send_batch("notes", &sent)
            .await
            .expect("published");
        assert_eq!(positions.len(), sent.len());
        let got = messages(&bus, &broker, "notes");
        check(&bus, "notes", &sent, &got);
    }
}

#[tokio::test]
async fn single_sends_and_an_empty_batch() {
    let (bus, broker) = bus(SerializerKind::Avro);
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
    let got = messages(&bus, &broker, "notes");
    check(&bus, "notes", &sent, &got);
}
