use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::frame::{fix_frame, take_frame, Fixed, CRC32C, MAX_FRAME, RESERVE_AHEAD};
use super::PulsarFrameProxy;

const PROXY_URL: &str = "pulsar://127.0.0.1:40001";
const BROKER_URL: &str = "pulsar://127.0.0.1:6650";
/// BaseCommand { type: MESSAGE, message: { consumer_id: 1, message_id: { 5, 7 } } }.
const MESSAGE: &[u8] = &[
    0x08, 0x09, 0x4a, 0x08, 0x08, 0x01, 0x12, 0x04, 0x08, 0x05, 0x10, 0x07,
];
/// BaseCommand { type: PING, ping: {} }.
const PING: &[u8] = &[0x08, 0x12, 0x92, 0x01, 0x00];

/// Bitwise CRC32C, independent of the `crc` crate.
fn reference_crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn varint(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn frame(command: &[u8], rest: &[u8]) -> Vec<u8> {
    let total = (4 + command.len() + rest.len()) as u32;
    let size = command.len() as u32;
    [&total.to_be_bytes()[..], &size.to_be_bytes(), command, rest].concat()
}

/// `[metadataSize][MessageMetadata { producer_name: "p", sequence_id: 0, publish_time: 1 }]`
/// followed by `payload`.
fn metadata_and(payload: &[u8]) -> Vec<u8> {
    let metadata = [0x0a, 0x01, b'p', 0x10, 0x00, 0x18, 0x01];
    [&7u32.to_be_bytes()[..], &metadata, payload].concat()
}

/// A MESSAGE frame with magic and checksum, as a conforming broker sends it.
fn checksummed(rest: &[u8]) -> Vec<u8> {
    let crc = reference_crc32c(rest).to_be_bytes();
    frame(MESSAGE, &[&[0x0e, 0x01][..], &crc, rest].concat())
}

/// BaseCommand { type: LOOKUP_RESPONSE, <unknown field 200: 5>, lookupTopicResponse: {
/// brokerServiceUrl, [brokerServiceUrlTls,] response: Connect, request_id: 300,
/// authoritative: true, proxy_through_service_url: false } }.
fn lookup(url: &str, tls: Option<&str>) -> Vec<u8> {
    let mut response = [&[0x0a][..], &varint(url.len()), url.as_bytes()].concat();
    if let Some(tls) = tls {
        response.extend([&[0x12][..], &varint(tls.len()), tls.as_bytes()].concat());
    }
    response.extend([0x18, 0x01, 0x20, 0xac, 0x02, 0x28, 0x01, 0x40, 0x00]);
    let head = [0x08, 0x18, 0xc0, 0x0c, 0x05, 0xc2, 0x01];
    [&head[..], &varint(response.len()), &response].concat()
}

#[test]
fn message_without_magic_gets_magic_crc_and_size() {
    assert_eq!(reference_crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
    let rest = metadata_and(b"hello");
    let fixed = fix_frame(&frame(MESSAGE, &rest), PROXY_URL).unwrap();
    let expected = checksummed(&rest);
    assert_eq!(&expected[..4], &(expected.len() as u32 - 4).to_be_bytes());
    assert_eq!(fixed, Fixed::Checksummed(expected));
}

#[test]
fn frames_with_magic_and_other_commands_pass_unchanged() {
    let with_magic = checksummed(&metadata_and(b"hello"));
    assert_eq!(fix_frame(&with_magic, PROXY_URL).unwrap(), Fixed::Unchanged);
    // The checksum is never verified, let alone repaired.
    let mut wrong_crc = with_magic.clone();
    wrong_crc[4 + 4 + MESSAGE.len() + 2] ^= 0xff;
    assert_eq!(fix_frame(&wrong_crc, PROXY_URL).unwrap(), Fixed::Unchanged);
    assert_eq!(
        fix_frame(&frame(PING, &[]), PROXY_URL).unwrap(),
        Fixed::Unchanged
    );
    let failed_lookup = [
        0x08, 0x18, 0xc2, 0x01, 0x06, 0x18, 0x02, 0x20, 0x01, 0x30, 0x01,
    ];
    let failed_lookup = frame(&failed_lookup, &[]);
    assert_eq!(
        fix_frame(&failed_lookup, PROXY_URL).unwrap(),
        Fixed::Unchanged
    );
    let already = frame(&lookup(PROXY_URL, None), &[]);
    assert_eq!(fix_frame(&already, PROXY_URL).unwrap(), Fixed::Unchanged);
}

#[test]
fn lookup_urls_are_rewritten_and_other_fields_kept() {
    let fixed = fix_frame(&frame(&lookup(BROKER_URL, None), &[]), PROXY_URL).unwrap();
    let expected = frame(&lookup(PROXY_URL, None), &[]);
    assert_eq!(fixed, Fixed::LookupRewritten(expected));

    // A submessage whose length shrinks from a two-byte to a one-byte varint.
    let tls = format!("pulsar+ssl://{}.example.invalid:6651", "broker".repeat(16));
    let original = lookup(BROKER_URL, Some(&tls));
    let rewritten = lookup(PROXY_URL, Some(PROXY_URL));
    assert!(original.len() > 128 + 8 && rewritten.len() < 128);
    let fixed = fix_frame(&frame(&original, &[]), PROXY_URL).unwrap();
    assert_eq!(fixed, Fixed::LookupRewritten(frame(&rewritten, &[])));
}

#[test]
fn frames_split_across_reads_reassemble() {
    let big = checksummed(&metadata_and(&vec![0x5a; 6 << 20]));
    let frames = [
        frame(MESSAGE, &metadata_and(b"hello")),
        frame(PING, &[]),
        big,
        frame(&lookup(BROKER_URL, None), &[]),
    ];
    let stream = frames.concat();
    let mut buf = BytesMut::new();
    let mut taken = Vec::new();
    let (mut at, mut chunk) = (0, 1);
    while at < stream.len() {
        let end = (at + chunk).min(stream.len());
        buf.extend_from_slice(&stream[at..end]);
        while let Some(frame) = take_frame(&mut buf).unwrap() {
            taken.push(frame.to_vec());
        }
        (at, chunk) = (end, chunk * 3 + 1);
    }
    assert!(buf.is_empty());
    assert_eq!(taken, frames);
}

/// Issue 15 (fuzzing): four bytes announcing the largest frame made the proxy reserve 64 MiB
/// before any of it arrived. Room is now reserved a bounded step ahead, and the frame still
/// comes out whole once its bytes are there (`fuzz/regressions/pulsar_frame/`).
#[test]
fn an_announced_size_reserves_a_bounded_step_ahead() {
    let header = (MAX_FRAME as u32).to_be_bytes();
    let mut buf = BytesMut::from(&header[..]);
    assert!(take_frame(&mut buf).unwrap().is_none());
    assert!(buf.capacity() <= 2 * RESERVE_AHEAD, "{}", buf.capacity());

    let big = frame(PING, &vec![7; 3 * RESERVE_AHEAD]);
    let mut buf = BytesMut::new();
    let mut taken = None;
    for chunk in big.chunks(64 * 1024) {
        assert!(taken.is_none());
        buf.extend_from_slice(chunk);
        taken = take_frame(&mut buf).unwrap();
        assert!(buf.capacity() <= big.len() + 2 * RESERVE_AHEAD);
    }
    assert_eq!(taken.unwrap().as_ref(), big.as_slice());
}

#[test]
fn malformed_frames_are_errors() {
    let mut buf = BytesMut::from(&[0, 0, 0, 2, 0, 0][..]);
    assert!(take_frame(&mut buf).is_err());
    let mut buf = BytesMut::from(&0x1000_0000u32.to_be_bytes()[..]);
    assert!(take_frame(&mut buf).is_err());

    let command_too_long = [0, 0, 0, 6, 0, 0, 0, 9, 0x08, 0x09];
    let metadata_too_long = frame(MESSAGE, &[0, 0, 0, 9, 1, 2]);
    let url_not_bytes = frame(&[0x08, 0x18, 0xc2, 0x01, 0x02, 0x08, 0x01], &[]);
    let malformed = [
        command_too_long.to_vec(),
        frame(&[0x08], &[]),                         // truncated varint
        frame(&[0x10, 0x09], &[]),                   // no type
        frame(&[0x0a, 0x09], &[]),                   // type is not a varint
        frame(&[0x08, 0x09, 0x4a, 0x05], &[]),       // truncated submessage
        frame(&[0x08, 0x09, 0x0b, 0x00], &[]),       // group wire type
        frame(&[0x08, 0x18, 0xc0, 0x01, 0x05], &[]), // lookup response not bytes
        metadata_too_long,
        url_not_bytes,
    ];
    for frame in malformed {
        assert!(fix_frame(&frame, PROXY_URL).is_err(), "{frame:x?}");
    }
}

async fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf));
    read.await.unwrap().unwrap();
    buf
}

/// True if the peer closed `stream` (EOF or reset) within two seconds.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await;
    matches!(read, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn proxy_fixes_broker_frames_and_forwards_client_bytes() {
    let broker = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = PulsarFrameProxy::start(broker.local_addr().unwrap().to_string()).await;
    let proxy = proxy.unwrap();
    assert_eq!(proxy.url(), format!("pulsar://{}", proxy.addr()));
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut upstream, _) = broker.accept().await.unwrap();

    client.write_all(b"\x00\x00\x00\x02any").await.unwrap();
    assert_eq!(read_exactly(&mut upstream, 7).await, b"\x00\x00\x00\x02any");

    let rest = metadata_and(b"hello");
    let sent = [frame(MESSAGE, &rest), frame(PING, &[])].concat();
    upstream.write_all(&sent[..9]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    upstream.write_all(&sent[9..]).await.unwrap();
    let expected = [checksummed(&rest), frame(PING, &[])].concat();
    assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
    let stats = proxy.stats();
    assert_eq!((stats.connections, stats.frames_checksummed), (1, 1));

    // A malformed frame closes both sides.
    upstream.write_all(&[0, 0, 0, 1, 0]).await.unwrap();
    assert!(closed(&mut client).await);
    assert!(closed(&mut upstream).await);
}

#[tokio::test]
async fn unreachable_broker_and_drop_close_client_connections() {
    // Held, not freed: a parallel test's server might take a freed port.
    let gone = crate::fixture::RefusingPort::new().unwrap();
    let proxy = PulsarFrameProxy::start(format!("127.0.0.1:{}", gone.port()))
        .await
        .unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(closed(&mut client).await);

    let broker = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = PulsarFrameProxy::start(broker.local_addr().unwrap().to_string()).await;
    let proxy = proxy.unwrap();
    let addr = proxy.addr();
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (mut upstream, _) = broker.accept().await.unwrap();
    drop(proxy);
    assert!(closed(&mut client).await);
    assert!(closed(&mut upstream).await);
    let refused = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await;
    assert!(matches!(refused, Ok(Err(_))));
}

#[test]
fn the_readiness_probe_sends_a_connect_and_knows_connected() {
    let mut buf = BytesMut::from(&super::frame::connect_frame()[..]);
    let probe = take_frame(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty(), "one whole frame");
    assert!(
        !super::frame::is_connected(&probe),
        "CONNECT is not CONNECTED"
    );
    // BaseCommand { type: CONNECTED = 3, connected (3): { server_version (1): "x" } }
    let connected = frame(&[0x08, 3, 0x1a, 3, 0x0a, 1, b'x'], &[]);
    assert!(super::frame::is_connected(&connected));
}
