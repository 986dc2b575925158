//! The conformance suite against the in-memory backend.

use eventbus_testkit::conformance::{cases, Suite, Target};
use eventbus_testkit::memory::MemoryBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_passes_the_conformance_suite() {
    // One broker per case run would hide nothing here; a fresh one per suite run keeps runs apart.
    let broker = MemoryBroker::new(8);
    let target = Target::new("memory", move || {
        let broker = broker.clone();
        async move { Ok(broker.transport()) }
    });
    let report = Suite::new(target).run().await;
    println!("{report}");
    report.assert_passed();
    assert!(cases().len() >= 16, "the suite has {} cases", cases().len());
    // The memory backend declares everything but surviving a restart.
    assert_eq!(report.skipped(), 1, "{report}");
}
