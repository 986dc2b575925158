//! A TCP proxy that lets the `pulsar` crate talk to the `pulsar-lite` broker.
//!
//! [`PulsarFrameProxy`] listens on a free loopback port and forwards every connection to a
//! Pulsar-protocol broker. It exists because `pulsar-lite` 0.2.0 and the `pulsar` crate 6.9
//! disagree on two points, and it changes exactly these two things:
//!
//! 1. **Checksums of delivered messages.** `pulsar-lite` sends MESSAGE frames (broker to client,
//!    `BaseCommand.Type.MESSAGE`) without the magic number `0x0e01` and the CRC32C checksum,
//!    which the protocol makes optional but the `pulsar` crate requires (it fails with "Error
//!    decoding payload frame"). The proxy inserts the magic number and the CRC32C (Castagnoli)
//!    of everything after the checksum (metadata size, metadata, payload) and corrects the
//!    frame's total size. A frame that has the magic number already passes unchanged; the
//!    checksum is added, never verified or repaired.
//! 2. **Broker URLs in lookup answers.** The broker names its own address in
//!    `CommandLookupTopicResponse.brokerServiceUrl` (and `brokerServiceUrlTls` if present). The
//!    proxy replaces both with its own `pulsar://127.0.0.1:PORT`, so that the client keeps
//!    talking through the proxy; every other field of the answer (response type,
//!    authoritative, request id, error, …) is copied byte for byte.
//!
//! Nothing else is changed, dropped, added, delayed beyond frame reassembly or reordered: bytes
//! from the client reach the broker untouched, and every other broker frame reaches the client
//! byte for byte. Anything `pulsar-lite` gets wrong beyond the two points above — lost or
//! duplicated messages, wrong redelivery, errors — therefore shows up in tests run through the
//! proxy, as it would for a client that tolerates the two differences.
//!
//! Each client connection gets its own broker connection. When the broker cannot be reached the
//! client connection is closed at once (clients reconnect); when either side closes or fails,
//! both are closed; a malformed frame from the broker is logged with `tracing::warn!` and closes
//! the pair.

mod frame;
#[cfg(test)]
mod tests;

/// For the fuzz targets of `crates/eventbus-fuzz` only (issue 15): the frame parser, which is
/// private to the proxy. Not an API; may change at any time.
#[doc(hidden)]
pub mod __fuzz {
    use bytes::BytesMut;

    use super::frame::{self, Fixed};

    /// What the proxy does with one frame.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Fix {
        /// Forwarded as it is.
        Unchanged,
        /// A MESSAGE frame given the magic number and CRC32C: the new frame.
        Checksummed(Vec<u8>),
        /// A lookup response with the proxy's URL: the new frame.
        LookupRewritten(Vec<u8>),
    }

    /// The largest `totalSize` the proxy accepts.
    pub const MAX_FRAME: usize = frame::MAX_FRAME;

    /// Removes the first complete frame from `buf`, as the proxy's read loop does.
    pub fn take_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, String> {
        frame::take_frame(buf).map_err(|e| e.to_string())
    }

    /// The proxy's two fixes, applied to one frame from [`take_frame`].
    pub fn fix_frame(frame: &[u8], proxy_url: &str) -> Result<Fix, String> {
        Ok(
            match frame::fix_frame(frame, proxy_url).map_err(|e| e.to_string())? {
                Fixed::Unchanged => Fix::Unchanged,
                Fixed::Checksummed(out) => Fix::Checksummed(out),
                Fixed::LookupRewritten(out) => Fix::LookupRewritten(out),
            },
        )
    }

    /// Whether a frame is the broker's CONNECTED answer (the readiness probe's check).
    pub fn is_connected(frame: &[u8]) -> bool {
        frame::is_connected(frame)
    }
}

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use eventbus_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use frame::{Fixed, FrameError};

use crate::fixture::{BrokerProcess, BrokerSpec};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
const READ_CHUNK: usize = 64 * 1024;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// One CONNECT through the proxy, answered with CONNECTED.
async fn handshake(proxy: SocketAddr) -> std::result::Result<(), String> {
    let mut stream = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    stream
        .write_all(&frame::connect_frame())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if let Some(answer) = frame::take_frame(&mut buf).map_err(|e| e.to_string())? {
            return if frame::is_connected(&answer) {
                Ok(())
            } else {
                Err("the broker answered CONNECT with something else".to_owned())
            };
        }
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("the connection closed before CONNECTED".to_owned());
        }
    }
}

/// A pulsar-lite broker with the frame proxy in front: what every test of a `pulsar`-crate
/// client against pulsar-lite needs. Clients connect to [`PulsarLite::url`]; restart the
/// broker through `broker`, the proxy stays.
#[derive(Debug)]
pub struct PulsarLite {
    /// The broker process ([`BrokerSpec::pulsar_lite`]).
    pub broker: BrokerProcess,
    /// The proxy clients talk through.
    pub proxy: PulsarFrameProxy,
}

impl PulsarLite {
    /// Starts pulsar-lite on a free port and the proxy in front of it.
    pub async fn start() -> Result<Self> {
        let broker = BrokerProcess::start(BrokerSpec::pulsar_lite()).await?;
        let proxy = PulsarFrameProxy::start(broker.addr()).await?;
        let lite = Self { broker, proxy };
        lite.wait_ready().await?;
        Ok(lite)
    }

    /// Waits until a client's handshake through the proxy is answered with CONNECTED (after a
    /// start or a restart of `broker`). A listening port is not enough: a client that connects
    /// a moment too early is refused for good by the `pulsar` crate ("fatal error when
    /// connecting"), which made tests fail now and then.
    pub async fn wait_ready(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let answered =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(self.proxy.addr)).await;
            let why = match answered {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(why)) => why,
                Err(_) => "no answer to CONNECT".to_owned(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("pulsar-lite did not answer a client's handshake within {READY_TIMEOUT:?}: {why}"),
                )
                .with("proxy", self.url())
                .with("broker_log", self.broker.log_path().display()));
            }
            tokio::time::sleep(ACCEPT_RETRY).await;
        }
    }

    /// `pulsar://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        self.proxy.url()
    }
}

/// What a [`PulsarFrameProxy`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted, including those whose broker could not be reached.
    pub connections: u64,
    /// MESSAGE frames that got the magic number and a CRC32C checksum.
    pub frames_checksummed: u64,
    /// Lookup answers whose broker URLs were replaced by the proxy's URL.
    pub lookups_rewritten: u64,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    proxy_url: String,
    connections: AtomicU64,
    frames_checksummed: AtomicU64,
    lookups_rewritten: AtomicU64,
}

/// A proxy between a `pulsar` client and a `pulsar-lite` broker; see the
/// [module](crate::pulsar_proxy) for exactly what it changes. Dropping it stops accepting and
/// closes every open connection.
#[derive(Debug)]
pub struct PulsarFrameProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl PulsarFrameProxy {
    /// Listens on `127.0.0.1:<free port>` and forwards every connection to `upstream`
    /// (`"127.0.0.1:PORT"`). The broker need not be running yet; it is connected to per client
    /// connection.
    pub async fn start(upstream: impl Into<String>) -> Result<Self> {
        let upstream = upstream.into();
        let bind_error = |e| {
            let error = Error::new(ErrorKind::Connection, "cannot listen for the pulsar proxy");
            error.with("upstream", &upstream).with_source(e)
        };
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await;
        let listener = listener.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let shared = Arc::new(Shared {
            upstream,
            proxy_url: format!("pulsar://{addr}"),
            connections: AtomicU64::new(0),
            frames_checksummed: AtomicU64::new(0),
            lookups_rewritten: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `pulsar://127.0.0.1:PORT`, the service URL for clients.
    pub fn url(&self) -> String {
        self.shared.proxy_url.clone()
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProxyStats {
            connections: load(&self.shared.connections),
            frames_checksummed: load(&self.shared.frames_checksummed),
            lookups_rewritten: load(&self.shared.lookups_rewritten),
        }
    }
}

impl Drop for PulsarFrameProxy {
    fn drop(&mut self) {
        // The accept task owns the listener and the set of connection tasks; dropping a
        // `JoinSet` aborts its tasks, which closes their sockets.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(serve(client, Arc::clone(&shared)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pulsar proxy: cannot accept a connection");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            // Reaps finished connections so that the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Why a connection pair ended other than by a clean close.
#[derive(Debug)]
enum Ended {
    Io(io::Error),
    Malformed(FrameError),
}

impl From<io::Error> for Ended {
    fn from(e: io::Error) -> Self {
        Ended::Io(e)
    }
}

impl From<FrameError> for Ended {
    fn from(e: FrameError) -> Self {
        Ended::Malformed(e)
    }
}

async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let upstream = &shared.upstream;
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await;
    let broker = match connect {
        Ok(Ok(broker)) => broker,
        // Returning drops, and so closes, the client connection.
        Ok(Err(e)) => {
            tracing::debug!(%upstream, error = %e, "pulsar proxy: cannot reach the broker");
            return;
        }
        Err(_) => {
            tracing::debug!(%upstream, "pulsar proxy: connecting to the broker timed out");
            return;
        }
    };
    for socket in [&client, &broker] {
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "pulsar proxy: cannot set TCP_NODELAY");
        }
    }
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = broker.into_split();
    // Client bytes are forwarded raw; the first side to finish ends both.
    let client_to_broker = tokio::io::copy(&mut client_read, &mut broker_write);
    let ended = tokio::select! {
        copied = client_to_broker => copied.map(drop).map_err(Ended::Io),
        forwarded = broker_to_client(&mut broker_read, &mut client_write, &shared) => forwarded,
    };
    match ended {
        Ok(()) => tracing::debug!(%upstream, "pulsar proxy: connection closed"),
        Err(Ended::Io(e)) => {
            tracing::debug!(%upstream, error = %e, "pulsar proxy: connection failed")
        }
        Err(Ended::Malformed(e)) => {
            tracing::warn!(%upstream, error = %e, "pulsar proxy: closing the connection")
        }
    }
}

/// Forwards broker frames to the client, fixed, until the broker closes.
async fn broker_to_client(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    shared: &Shared,
) -> std::result::Result<(), Ended> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(READ_CHUNK);
    loop {
        buf.reserve(READ_CHUNK);
        if from.read_buf(&mut buf).await? == 0 {
            if !buf.is_empty() {
                tracing::debug!(bytes = buf.len(), "pulsar proxy: broker closed mid-frame");
            }
            return Ok(());
        }
        while let Some(frame) = frame::take_frame(&mut buf)? {
            match frame::fix_frame(&frame, &shared.proxy_url)? {
                Fixed::Unchanged => out.extend_from_slice(&frame),
                Fixed::Checksummed(fixed) => {
                    shared.frames_checksummed.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(&fixed);
                }
                Fixed::LookupRewritten(fixed) => {
                    shared.lookups_rewritten.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(&fixed);
                }
            }
        }
        if !out.is_empty() {
            to.write_all(&out).await?;
            out.clear();
        }
    }
}
