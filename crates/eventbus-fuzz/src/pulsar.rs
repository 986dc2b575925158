//! The Pulsar frame target.

use bytes::BytesMut;
use eventbus_testkit::pulsar_proxy::__fuzz::{fix_frame, is_connected, take_frame, Fix, MAX_FRAME};

/// The proxy URL the lookup rewrite writes.
const PROXY_URL: &str = "pulsar://127.0.0.1:6650";

/// The testkit's Pulsar proxy reading a broker's byte stream: frames are cut from the input as
/// the proxy's read loop cuts them, and each gets the proxy's fixes. A fixed frame must be one
/// frame again, whose fixes change nothing more.
pub fn pulsar_frame(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = take_frame(&mut buf) {
        assert!(
            frame.len() <= 4 + MAX_FRAME,
            "a frame is at most its maximum"
        );
        is_connected(&frame);
        match fix_frame(&frame, PROXY_URL) {
            Ok(Fix::Unchanged) | Err(_) => {}
            Ok(Fix::Checksummed(fixed) | Fix::LookupRewritten(fixed)) => settled(&fixed),
        }
    }
}

/// A frame the proxy produced: exactly one whole frame, which the proxy leaves as it is.
fn settled(fixed: &[u8]) {
    let mut buf = BytesMut::from(fixed);
    let frame = match take_frame(&mut buf) {
        Ok(Some(frame)) => frame,
        other => panic!("a fixed frame is not a frame: {other:?}"),
    };
    assert!(buf.is_empty(), "a fixed frame is one frame");
    match fix_frame(&frame, PROXY_URL) {
        Ok(Fix::Unchanged) => {}
        other => panic!("a fixed frame is changed again: {other:?}"),
    }
}
