//! Helpers shared by this crate's integration tests.
#![allow(dead_code)] // each test file uses a different part

use eventbus::Message;
use eventbus_testkit::fixture::BrokerProcess;

/// A plain connection of the `redis` crate to the fixture's server, to look behind the backend.
pub(crate) async fn raw(server: &BrokerProcess) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{}", server.addr()))
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the fixture's redis-server")
}

/// A message with `body` as payload, no key and no headers.
pub(crate) fn message(body: &str) -> Message {
    Message {
        payload: body.as_bytes().to_vec().into(),
        ..Message::default()
    }
}
