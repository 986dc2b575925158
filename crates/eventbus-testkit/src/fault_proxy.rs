//! A TCP proxy on loopback that injects network faults between a client and its broker.
//!
//! [`FaultProxy`] forwards every connection it accepts to one upstream address, byte for byte,
//! until a test tells it to misbehave:
//!
//! - [`FaultProxy::set_latency`] delays every chunk it forwards, both ways;
//! - [`FaultProxy::reset`] aborts every open connection with a TCP reset (RST), as a crashed
//!   middlebox or a restarted load balancer does; new connections work at once;
//! - [`FaultProxy::black_hole`] stops forwarding in both directions without closing anything,
//!   and new connections are accepted but not connected upstream until it ends. That is what a
//!   network partition looks like from either end: sends succeed into the kernel's buffers and
//!   no answer comes. When it ends, what was held is forwarded (TCP would retransmit it).
//!
//! A broker that tells clients where to connect next (Kafka's advertised listeners, Pulsar's
//! lookups) must name the proxy, or the clients leave it after the first answer: start the proxy
//! on the port the broker advertises with [`FaultProxy::start_on`].

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventbus_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const READ_CHUNK: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy currently does to the traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Faults {
    latency: Duration,
    black_hole: bool,
    /// Bumped by every [`FaultProxy::reset`]; a connection opened before the bump is reset.
    resets: u64,
    /// Whether a reset closes the broker's side with a FIN rather than a RST.
    upstream_fin: bool,
}

/// Counters of what went through the proxy, for a test's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Connections aborted with a reset by [`FaultProxy::reset`].
    pub resets: u64,
    /// Bytes forwarded from clients to the upstream.
    pub bytes_up: u64,
    /// Bytes forwarded from the upstream to clients.
    pub bytes_down: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    resets: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// A fault-injecting TCP proxy; see the [module documentation](self). Stops on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    faults: watch::Sender<Faults>,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:<free port>` and forwards to `upstream` (`127.0.0.1:PORT`).
    pub async fn start(upstream: impl AsRef<str>) -> Result<Self> {
        Self::start_on(0, upstream).await
    }

    /// Listens on `127.0.0.1:port` (0 picks a free one) and forwards to `upstream`.
    pub async fn start_on(port: u16, upstream: impl AsRef<str>) -> Result<Self> {
        let upstream_text = upstream.as_ref();
        let upstream: SocketAddr = upstream_text.parse().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                "the fault proxy's upstream is no IP:PORT",
            )
            .with("upstream", upstream_text)
            .with_source(e)
        })?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .and_then(|l| l.local_addr().map(|addr| (l, addr)));
        let (listener, addr) = listener.map_err(|e| {
            Error::new(ErrorKind::Connection, "the fault proxy cannot listen")
                .with("port", port)
                .with_source(e)
        })?;
        let (faults, _) = watch::channel(Faults::default());
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            faults.clone(),
            counters.clone(),
        ));
        Ok(Self {
            addr,
            upstream,
            faults,
            counters,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address every connection is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Delays every forwarded chunk by `latency` (zero switches it off).
    pub fn set_latency(&self, latency: Duration) {
        self.faults.send_modify(|f| f.latency = latency);
    }

    /// Aborts every open connection with a TCP reset; connections made afterwards work.
    pub fn reset(&self) {
        self.faults.send_modify(|f| f.resets += 1);
    }

    /// Makes [`FaultProxy::reset`] close the broker's side of each connection with a FIN (an
    /// orderly close) while the client's side still gets a RST. For a test broker that mishandles
    /// a reset connection: pulsar-lite 0.2 keeps a consumer whose connection was reset, with
    /// the messages it had out, for as long as it runs (RELIABILITY.md, finding 4).
    pub fn close_upstream_on_reset(&self) {
        self.faults.send_modify(|f| f.upstream_fin = true);
    }

    /// Starts (`true`) or ends (`false`) a black hole: nothing is forwarded meanwhile.
    pub fn black_hole(&self, on: bool) {
        self.faults.send_modify(|f| f.black_hole = on);
    }

    /// What went through the proxy so far.
    pub fn stats(&self) -> FaultStats {
        let c = &self.counters;
        FaultStats {
            connections: c.connections.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Open connections end too: their tasks see the sender go away.
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: watch::Sender<Faults>,
    counters: Arc<Counters>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "fault proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let (faults, counters) = (faults.subscribe(), counters.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(client, upstream, faults, &counters).await {
                tracing::debug!(error = %e, "fault proxy: connection ended");
            }
        });
    }
}

/// Forwards one connection both ways until either side closes, a reset is ordered or the
/// proxy is dropped.
async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut faults: watch::Receiver<Faults>,
    counters: &Counters,
) -> io::Result<()> {
    let born = faults.borrow_and_update().resets;
    // A connection made during a black hole waits for its end before reaching the upstream.
    while faults.borrow().black_hole {
        if faults.changed().await.is_err() {
            return Ok(());
        }
    }
    if faults.borrow().resets != born {
        return abort(&client, None, counters);
    }
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await;
    let mut server = match connect {
        Ok(Ok(server)) => server,
        // The client sees its connection close, as if the broker refused it.
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "upstream connect")),
    };
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut up, mut down) = (vec![0u8; READ_CHUNK], vec![0u8; READ_CHUNK]);
    loop {
        let now = *faults.borrow_and_update();
        if now.resets != born {
            let server = (!now.upstream_fin).then_some(&server);
            return abort(&client, server, counters);
        }
        if now.black_hole {
            // Read nothing, so both peers' sends pile up in the kernel and then stall.
            if faults.changed().await.is_err() {
                return Ok(());
            }
            continue;
        }
        tokio::select! {
            changed = faults.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            read = client.read(&mut up) => {
                let n = read?;
                if n == 0 {
                    return server.shutdown().await;
                }
                tokio::time::sleep(now.latency).await;
                server.write_all(&up[..n]).await?;
                counters.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
            }
            read = server.read(&mut down) => {
                let n = read?;
                if n == 0 {
                    return client.shutdown().await;
                }
                tokio::time::sleep(now.latency).await;
                client.write_all(&down[..n]).await?;
                counters.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Closes the connection with RST instead of FIN: a linger time of zero makes the kernel reset.
fn abort(client: &TcpStream, server: Option<&TcpStream>, counters: &Counters) -> io::Result<()> {
    counters.resets.fetch_add(1, Ordering::Relaxed);
    client.set_zero_linger()?;
    if let Some(server) = server {
        server.set_zero_linger()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes what it reads.
    async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, task)
    }

    async fn roundtrip(stream: &mut TcpStream, text: &[u8]) -> io::Result<Vec<u8>> {
        stream.write_all(text).await?;
        let mut got = vec![0u8; text.len()];
        stream.read_exact(&mut got).await?;
        Ok(got)
    }

    #[tokio::test]
    async fn forwards_delays_resets_and_holds_traffic() {
        let (echo, _server) = echo_server().await;
        let proxy = FaultProxy::start(echo.to_string()).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut client, b"hello").await.unwrap(), b"hello");

        proxy.set_latency(Duration::from_millis(50));
        let started = tokio::time::Instant::now();
        assert_eq!(roundtrip(&mut client, b"slow").await.unwrap(), b"slow");
        // One delay up and one down.
        assert!(started.elapsed() >= Duration::from_millis(100));
        proxy.set_latency(Duration::ZERO);

        proxy.black_hole(true);
        client.write_all(b"held").await.unwrap();
        let mut buf = [0u8; 4];
        let waited =
            tokio::time::timeout(Duration::from_millis(300), client.read_exact(&mut buf)).await;
        assert!(waited.is_err(), "nothing comes back through a black hole");
        proxy.black_hole(false);
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"held", "held bytes are forwarded when it ends");

        proxy.reset();
        let after = client.read(&mut buf).await;
        let reset = after
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset);
        assert!(reset, "the open connection is reset, got {after:?}");
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut fresh, b"again").await.unwrap(), b"again");

        let stats = proxy.stats();
        assert_eq!((stats.connections, stats.resets), (2, 1));
        assert_eq!(stats.bytes_up, stats.bytes_down);
    }
}
