//! The CloudEvents header target.

use eventbus_core::{EventMetadata, Headers};

/// CloudEvents attributes read from message headers, as every backend's consumer reads them.
///
/// The input is cut into headers at each `0x00` byte, and each header into name and value at its
/// first `0x01` byte (a header without one has an empty value); names are read as lossy UTF-8,
/// values are kept as bytes. When the attributes read, writing them and reading them back must
/// be stable: the second read equals the first after one write.
pub fn cloudevents_headers(data: &[u8]) {
    let mut headers = Headers::new();
    for part in crate::split(data, 0) {
        let (name, value) = match part.iter().position(|b| *b == 1) {
            Some(at) => (&part[..at], &part[at + 1..]),
            None => (part, &[][..]),
        };
        headers.append(String::from_utf8_lossy(name).into_owned(), value);
    }
    let Ok(read) = EventMetadata::from_headers(&headers) else {
        return;
    };
    let first = rewritten(&read);
    let second = rewritten(&first);
    assert_eq!(first, second, "metadata reads back as it was written");
}

/// `meta` written into headers and read back.
fn rewritten(meta: &EventMetadata) -> EventMetadata {
    let mut headers = Headers::new();
    meta.write_headers(&mut headers);
    match EventMetadata::from_headers(&headers) {
        Ok(back) => back,
        Err(e) => panic!("metadata that was read does not read back after writing: {e}; {meta:?}"),
    }
}
