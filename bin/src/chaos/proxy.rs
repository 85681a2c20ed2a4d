//! Loopback TCP fault proxy for the chaos harness.
//!
//! A [`Proxy`] sits between a service and one of its dependencies (the NATS
//! broker, an HTTP simulator) and injects one of three faults on command:
//! [`Mode::Latency`] (every chunk delivered late), [`Mode::Reset`] (connections
//! torn down with RST) and [`Mode::BlackHole`] (connections stay open, nothing
//! gets through). It listens on 127.0.0.1 only.
//!
//! Written on tokio: the Rust toxiproxy crates are clients of a separate server, and `noxious` (the in-process port) has had no release since 2021.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::debug;

/// Largest chunk read from one side before it is passed on.
const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks read but not yet written, per direction; beyond this the reader waits.
const CHUNKS_IN_FLIGHT: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Bytes pass both ways unchanged.
    Pass,
    /// Each chunk read from either side is delivered this long after it was
    /// read (order kept; throughput not limited beyond that).
    Latency(Duration),
    /// Every open connection is reset now (RST), and new connections are
    /// accepted and reset at once while this mode holds.
    Reset,
    /// Nothing is forwarded either way; connections stay open and new ones are
    /// accepted and hang. Back in `Pass`, live connections resume.
    BlackHole,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProxyStats {
    /// Connections accepted since start.
    pub connections: u64,
    /// Connections torn down with RST because of [`Mode::Reset`].
    pub resets: u64,
}

/// What every connection watches. `reset_orders` counts calls to `set(Reset)`,
/// so a connection is reset even if the mode moves on before it looks.
#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    reset_orders: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    resets: AtomicU64,
}

pub struct Proxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    counters: Arc<Counters>,
    accept_task: JoinHandle<()>,
}

impl Proxy {
    /// Listen on 127.0.0.1 (a free port) and forward every connection to `upstream`.
    pub async fn start(name: &str, upstream: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (state, state_rx) = watch::channel(State {
            mode: Mode::Pass,
            reset_orders: 0,
        });
        let counters = Arc::new(Counters::default());
        let accept_task = tokio::spawn(accept_loop(
            name.to_owned(),
            listener,
            upstream,
            state_rx,
            counters.clone(),
        ));
        Ok(Proxy {
            addr,
            state,
            counters,
            accept_task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes effect at once on live connections.
    pub fn set(&self, mode: Mode) {
        self.state.send_modify(|state| {
            state.mode = mode;
            if mode == Mode::Reset {
                state.reset_orders += 1;
            }
        });
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            connections: self.counters.connections.load(Ordering::Relaxed),
            resets: self.counters.resets.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    /// Stops accepting and closes every connection: the accept task owns the
    /// listener and the connection tasks, so aborting it drops them all.
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(
    name: String,
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Receiver<State>,
    counters: Arc<Counters>,
) {
    // Dropped with this task, which aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                debug!(proxy = %name, %error, "accept failed");
                // Errors such as EMFILE would otherwise spin this loop.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        connections.spawn(serve(
            name.clone(),
            client,
            upstream,
            state.clone(),
            counters.clone(),
        ));
    }
}

async fn serve(
    name: String,
    mut client: TcpStream,
    upstream: SocketAddr,
    mut state: watch::Receiver<State>,
    counters: Arc<Counters>,
) {
    let reset_orders_at_accept = state.borrow().reset_orders;
    // A new connection hangs while black-holed: don't even dial upstream yet.
    let Ok(now) = state
        .wait_for(|s| s.mode != Mode::BlackHole || s.reset_orders != reset_orders_at_accept)
        .await
        .map(|s| *s)
    else {
        return; // the proxy is gone
    };
    if now.mode == Mode::Reset || now.reset_orders != reset_orders_at_accept {
        reset(&name, &counters, [&client]);
        return;
    }
    let mut upstream_conn = match TcpStream::connect(upstream).await {
        Ok(conn) => conn,
        Err(error) => {
            debug!(proxy = %name, %upstream, %error, "upstream connect failed");
            return;
        }
    };
    // Forward each write at once, as the ends do: with Nagle's algorithm a small write waits
    // for the last one's ACK, which the other side delays (about 40 ms per hop of the saga).
    for conn in [&client, &upstream_conn] {
        if let Err(error) = conn.set_nodelay(true) {
            debug!(proxy = %name, %error, "TCP_NODELAY not set");
        }
    }

    let (to_upstream_state, to_client_state) = (state.clone(), state.clone());
    let reset_ordered = {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream_conn.split();
        let relay = async {
            tokio::try_join!(
                forward(&mut client_read, &mut upstream_write, to_upstream_state),
                forward(&mut upstream_read, &mut client_write, to_client_state),
            )
        };
        tokio::select! {
            biased;
            ordered = state.wait_for(|s| s.reset_orders != reset_orders_at_accept) => ordered.is_ok(),
            relayed = relay => {
                if let Err(error) = relayed {
                    debug!(proxy = %name, %error, "connection closed");
                }
                false
            }
        }
    };
    if reset_ordered {
        reset(&name, &counters, [&client, &upstream_conn]);
    }
}

/// Makes the coming close send RST instead of FIN.
fn reset<const N: usize>(name: &str, counters: &Counters, streams: [&TcpStream; N]) {
    for stream in streams {
        if let Err(error) = stream.set_zero_linger() {
            debug!(proxy = %name, %error, "set_zero_linger failed");
        }
    }
    counters.resets.fetch_add(1, Ordering::Relaxed);
}

/// Copies one direction. The reader stamps each chunk with its delivery time
/// and the writer waits for it, so latency does not limit throughput.
async fn forward(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    state: watch::Receiver<State>,
) -> io::Result<()> {
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let mut reader_state = state.clone();
    let mut writer_state = state;
    let read = async move {
        let mut buf = vec![0; CHUNK_BYTES];
        loop {
            // Black hole: leave the bytes in the kernel buffer.
            unblocked(&mut reader_state).await?;
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(()); // drops chunks_tx: the writer drains, then half-closes
            }
            let due = match reader_state.borrow().mode {
                Mode::Latency(latency) => Instant::now() + latency,
                _ => Instant::now(),
            };
            if chunks_tx.send((due, buf[..n].to_vec())).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = chunks_rx.recv().await {
            tokio::time::sleep_until(due).await;
            // Black hole: hold what was already read until the mode changes.
            unblocked(&mut writer_state).await?;
            to.write_all(&chunk).await?;
        }
        // Pass the EOF on, so request/response peers see the end.
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Waits while the proxy is black-holed; fails once the proxy is gone.
async fn unblocked(state: &mut watch::Receiver<State>) -> io::Result<()> {
    state
        .wait_for(|s| s.mode != Mode::BlackHole)
        .await
        .map(|_| ())
        .map_err(|_| io::Error::other("proxy stopped"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::timeout;

    /// Long enough never to trip on a slow machine; only bounds a hang.
    const PATIENCE: Duration = Duration::from_secs(5);

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind echo server");
        let addr = listener.local_addr().expect("echo server addr");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = conn.split();
                    if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                        let _ = write.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    async fn proxy_to_echo() -> Proxy {
        Proxy::start("echo", echo_server().await)
            .await
            .expect("start proxy")
    }

    async fn round_trip(conn: &mut TcpStream, bytes: &[u8]) {
        conn.write_all(bytes).await.expect("write");
        expect_back(conn, bytes).await;
    }

    async fn expect_back(conn: &mut TcpStream, bytes: &[u8]) {
        let mut buf = vec![0; bytes.len()];
        timeout(PATIENCE, conn.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .expect("read echo");
        assert_eq!(buf, bytes);
    }

    /// Ok(0) for EOF, Err for a reset; panics if the connection stays open.
    async fn read_end(conn: &mut TcpStream) -> io::Result<usize> {
        let mut buf = [0; 64];
        timeout(PATIENCE, conn.read(&mut buf))
            .await
            .expect("connection closed in time")
    }

    #[tokio::test]
    async fn pass_echoes_bytes_and_passes_eof_on() {
        let proxy = proxy_to_echo().await;
        let mut conn = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut conn, b"hello").await;

        conn.shutdown().await.expect("half-close");
        assert_eq!(read_end(&mut conn).await.expect("EOF, not error"), 0);
        assert_eq!(
            proxy.stats(),
            ProxyStats {
                connections: 1,
                resets: 0
            }
        );
    }

    #[tokio::test]
    async fn latency_delays_each_direction_of_a_live_connection() {
        let proxy = proxy_to_echo().await;
        let mut conn = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut conn, b"warm").await;

        let latency = Duration::from_millis(150);
        proxy.set(Mode::Latency(latency));
        let started = Instant::now();
        round_trip(&mut conn, b"ping").await;
        // Once on the way up and once on the way back.
        assert!(started.elapsed() >= 2 * latency, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn reset_tears_down_live_and_new_connections() {
        let proxy = proxy_to_echo().await;
        let mut live = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut live, b"before").await;

        proxy.set(Mode::Reset);
        let error = read_end(&mut live).await.expect_err("reset, not EOF");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(proxy.stats().resets, 1);

        let mut new = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(matches!(read_end(&mut new).await, Ok(0) | Err(_)));
        assert_eq!(
            proxy.stats(),
            ProxyStats {
                connections: 2,
                resets: 2
            }
        );

        proxy.set(Mode::Pass);
        let mut after = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut after, b"after").await;
    }

    #[tokio::test]
    async fn black_hole_holds_bytes_until_pass() {
        let proxy = proxy_to_echo().await;
        let mut live = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut live, b"before").await;

        proxy.set(Mode::BlackHole);
        live.write_all(b"held").await.expect("write");
        let mut new = TcpStream::connect(proxy.addr()).await.expect("connect");
        new.write_all(b"new").await.expect("write");
        let quiet = Duration::from_millis(300);
        let (mut live_buf, mut new_buf) = ([0; 8], [0; 8]);
        let (live_read, new_read) = tokio::join!(
            timeout(quiet, live.read(&mut live_buf)),
            timeout(quiet, new.read(&mut new_buf)),
        );
        assert!(live_read.is_err(), "live connection got {live_read:?}");
        assert!(new_read.is_err(), "new connection got {new_read:?}");

        proxy.set(Mode::Pass);
        expect_back(&mut live, b"held").await;
        expect_back(&mut new, b"new").await;
        assert_eq!(proxy.stats().resets, 0);
    }

    #[tokio::test]
    async fn drop_closes_connections_and_listener() {
        let proxy = proxy_to_echo().await;
        let addr = proxy.addr();
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        round_trip(&mut conn, b"hello").await;

        drop(proxy);
        assert!(matches!(read_end(&mut conn).await, Ok(0) | Err(_)));
        // The listener went with the same task, before the connection closed.
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
