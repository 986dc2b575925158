//! The Redis stream reply target.

use eventbus_redis::__fuzz::{autoclaim_reply, claim_reply, read_reply};

/// Replies of a Redis server (or of anything that answers on its port) to the Redis backend's
/// reads: the input is parsed as RESP (2 or 3) by the `redis` crate's parser, and the value goes
/// through the backend's `XREADGROUP`, `XCLAIM` and `XAUTOCLAIM` reply parsers and from there
/// into messages, as the reader turns entries into deliveries. Errors are fine; an entry never
/// fails to become a message.
pub fn redis_reply(data: &[u8]) {
    let Ok(value) = redis::parse_redis_value(data) else {
        return;
    };
    let _ = read_reply(value.clone());
    let _ = claim_reply("fuzz", value.clone());
    let _ = autoclaim_reply("fuzz", value);
}
