//! Connection hygiene for every listener (the auth server's HTTP and the
//! webhook's TLS): our own accept loop over hyper's HTTP/1.1 connection,
//! because `axum::serve` has none of these knobs.
//!
//! - **Header-read timeout** (`--http-header-read-timeout-seconds`, 10): from
//!   the first byte of a request to its last header. A half-sent request
//!   (slowloris) is closed then (within a quarter more), however slowly it
//!   trickles.
//! - **Idle timeout** (`--http-idle-timeout-seconds`, 90): a keep-alive
//!   connection with no request for that long (counted from its opening or
//!   its last response) is closed. Longer than the proxies' upstream
//!   keep-alive (nginx and ingress-nginx 60 s), so the proxy, not latchkey,
//!   closes an idle connection and never races a request against our close.
//! - **Connection cap** (`--http-max-connections`, 4096, never above the
//!   open-file soft limit minus a reserve; the soft limit is raised to the
//!   hard one at start): a connection over it is accepted and closed at once,
//!   before any read, so the listen queue keeps draining and nothing waits
//!   on it; the slots free up as the timeouts above close the slow ones.
//!   An accept error (out of descriptors) waits 100 ms instead of spinning.
//! - **Request heads** are at most [`MAX_HEAD_BYTES`] (hyper answers 431
//!   beyond): a header of nginx's default maximum fits, and 4096 slow
//!   connections can pin at most ~160 MiB of read buffers for at most the
//!   header-read timeout.
//! - **Graceful shutdown**: on the shutdown signal the listener closes (no new
//!   connection), idle connections close, requests in flight finish; after
//!   [`DRAIN_TIMEOUT`] whatever is left is dropped.
//!
//! The peer address is put into each request's extensions as axum's
//! `ConnectInfo<SocketAddr>` (for the per-source throttle).
//!
//! **HTTP/2** ([`Protocol::Http2`], the gRPC listener): the same cap,
//! handshake deadline, idle timeout and drain (a GOAWAY, then the streams in
//! flight finish). A connection is idle while no stream is open; bytes
//! without a stream (PINGs, SETTINGS, a HEADERS frame still arriving) do not
//! start the header-read clock (hyper calls the service only once a
//! stream's headers are complete, at most [`MAX_HEAD_BYTES`] of them), so a
//! half-sent stream is closed by the idle timeout. At most
//! [`MAX_STREAMS`] streams at once per connection; a PING every
//! [`H2_KEEPALIVE`] finds dead peers. Each write waits one scheduler turn so
//! that the answers of streams finishing together share one syscall.

use axum::Router;
use axum::extract::ConnectInfo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The largest request head (request line and headers) read.
pub const MAX_HEAD_BYTES: usize = 40 * 1024;
/// How long open connections may take to finish after the shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors kept free of connections: the API-server clients, watches,
/// the other listener, logs.
pub const FD_RESERVE: u64 = 256;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hygiene {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Hygiene {
    fn default() -> Self {
        Hygiene {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            max_connections: 4096,
        }
    }
}

/// Streams served at once on one HTTP/2 connection.
pub const MAX_STREAMS: u32 = 1024;
/// How often an HTTP/2 connection is pinged (a peer that does not answer
/// within the same time is dropped).
pub const H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// What a listener speaks after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive (the auth server, the webhook).
    Http1,
    /// HTTP/2 only (gRPC; h2c without TLS, prior knowledge).
    Http2,
}

/// The listen backlog: a burst of new connections waits in the kernel's
/// queue rather than in SYN retries (Linux caps it at `net.core.somaxconn`).
pub const BACKLOG: u32 = 4096;

/// Binds a listener on `addr` with [`BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit
/// in force afterwards (unchanged when raising fails).
pub fn raise_open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// `requested` connections, but at most the open-file soft limit minus
/// [`FD_RESERVE`] and minus `others` (the other listeners' caps); at least 1.
pub fn connection_cap(requested: usize, soft_limit: u64, others: usize) -> usize {
    connection_cap_shared(requested, soft_limit, others, 1)
}

/// [`connection_cap`] for each of `listeners` listeners with the same cap
/// (the HTTP and the gRPC one): the room is shared evenly.
pub fn connection_cap_shared(requested: usize, soft_limit: u64, others: usize, listeners: u64) -> usize {
    let room = (soft_limit.saturating_sub(FD_RESERVE + others as u64) / listeners.max(1)).max(1);
    requested.min(usize::try_from(room).unwrap_or(usize::MAX)).max(1)
}

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// Where a connection is: idle (since `since`), reading a request head
/// (since its first byte), or serving a request.
struct ConnState {
    epoch: Instant,
    phase: AtomicU8,
    since_ms: AtomicU64,
    /// Requests being served (at most one on HTTP/1.1).
    in_flight: AtomicUsize,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            epoch: Instant::now(),
            phase: AtomicU8::new(IDLE),
            since_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.enter(BUSY);
    }

    fn request_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.enter(IDLE);
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn enter(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Release);
    }

    fn bytes_arrived(&self) {
        if self.phase.load(Ordering::Acquire) == IDLE {
            self.enter(HEAD);
        }
    }

    /// When the connection is to be closed, or `None` while it serves.
    fn deadline(&self, hygiene: &Hygiene) -> Option<Instant> {
        let phase = self.phase.load(Ordering::Acquire);
        let since = self.epoch + Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        match phase {
            IDLE => Some(since + hygiene.idle_timeout),
            HEAD => Some(since + hygiene.header_read_timeout),
            _ => None,
        }
    }
}

/// An I/O stream that tells its [`ConnState`] when request bytes arrive.
struct Watched<IO> {
    inner: IO,
    state: Arc<ConnState>,
    /// Whether arriving bytes start a request head (HTTP/1.1; not HTTP/2,
    /// where they may be PINGs or frames of streams already open).
    heads: bool,
    /// HTTP/2: a write waits one turn of the scheduler first (see
    /// [`Watched::wait_a_turn`]).
    coalesce: bool,
    waited: bool,
}

impl<IO> Watched<IO> {
    /// HTTP/2 only: lets each write wait one turn of the scheduler (the
    /// connection task wakes itself and goes to the back of the run queue),
    /// so that the streams finishing meanwhile add their frames to the same
    /// write. Without it, every finished stream wakes the connection task
    /// first (tokio runs the task a task woke next) and each response is
    /// one `writev` of its own: 16 streams read in one `recvfrom`, answered
    /// with 16 syscalls, which cost gRPC more CPU per call than HTTP/1.1.
    fn wait_a_turn(&mut self, cx: &mut Context<'_>) -> bool {
        if self.coalesce && !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return true;
        }
        self.waited = false;
        false
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.heads && matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_arrived();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.wait_a_turn(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.wait_a_turn(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Counts a connection down when its task ends, however it ends.
struct OpenGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Completes when the connection has been idle or reading one request head
/// for too long. It looks at least every quarter of the header-read timeout
/// (an idle connection may start a head at any moment; waking it on every
/// request instead would cost each request a task wake-up), so a slow head
/// is closed between 1 and 1.25 times the timeout after its first byte.
async fn watchdog(state: &ConnState, hygiene: &Hygiene) {
    let step = hygiene.header_read_timeout / 4;
    loop {
        let now = Instant::now();
        match state.deadline(hygiene) {
            Some(deadline) if now >= deadline => return,
            Some(deadline) => tokio::time::sleep_until(deadline.min(now + step)).await,
            None => tokio::time::sleep(step).await,
        }
    }
}

/// Accepts connections on `listener` and serves `app` on each (`protocol`,
/// after `handshake`: TLS, or none; the one place accepted connections come
/// from) under `hygiene` until `shutdown`, then drains. `open` counts the
/// connections open; `name` goes into logs.
#[allow(clippy::too_many_arguments)]
pub async fn serve<IO, H, HF>(
    listener: TcpListener,
    protocol: Protocol,
    hygiene: Hygiene,
    open: prometheus_client::metrics::gauge::Gauge,
    handshake: H,
    app: Router,
    shutdown: impl Future<Output = ()>,
    name: &'static str,
) where
    H: Fn(TcpStream, SocketAddr) -> HF + Clone + Send + 'static,
    HF: Future<Output = Option<IO>> + Send,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(hygiene.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut refused: u64 = 0;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Over the cap: close before reading anything.
            drop(tcp);
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    listener = name,
                    max = hygiene.max_connections,
                    refused,
                    "connection cap reached; closing new connections"
                );
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let handshake = handshake.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        let open = open.clone();
        open.inc();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = OpenGuard(open);
            let state = Arc::new(ConnState::new());
            // The handshake (TLS) counts as reading the head.
            state.enter(HEAD);
            let io = tokio::select! {
                io = handshake(tcp, peer) => io,
                () = watchdog(&state, &hygiene) => None,
            };
            let Some(io) = io else { return };
            state.enter(IDLE);
            let io = hyper_util::rt::TokioIo::new(Watched {
                inner: io,
                state: state.clone(),
                heads: protocol == Protocol::Http1,
                coalesce: protocol == Protocol::Http2,
                waited: false,
            });
            let service = {
                let state = state.clone();
                hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    state.request_started();
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let mut app = app.clone();
                    let state = state.clone();
                    async move {
                        let resp = tower_service::Service::call(&mut app, req).await;
                        state.request_ended();
                        resp
                    }
                })
            };
            match protocol {
                Protocol::Http1 => {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder
                        .max_buf_size(MAX_HEAD_BYTES)
                        .header_read_timeout(None)
                        .keep_alive(true);
                    let conn = watcher.watch(builder.serve_connection(io, service));
                    drive(conn, &state, &hygiene, name, peer).await;
                }
                Protocol::Http2 => {
                    let mut builder =
                        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                    builder
                        .timer(hyper_util::rt::TokioTimer::new())
                        .max_header_list_size(MAX_HEAD_BYTES as u32)
                        .max_concurrent_streams(MAX_STREAMS)
                        .keep_alive_interval(Some(H2_KEEPALIVE))
                        .keep_alive_timeout(H2_KEEPALIVE);
                    let conn = watcher.watch(builder.serve_connection(io, service));
                    drive(conn, &state, &hygiene, name, peer).await;
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!(listener = name, "connections still open after the drain timeout; dropping them");
        }
    }
}

/// Serves one connection until it ends or the watchdog closes it.
async fn drive<E: std::fmt::Display>(
    conn: impl Future<Output = Result<(), E>>,
    state: &ConnState,
    hygiene: &Hygiene,
    name: &'static str,
    peer: SocketAddr,
) {
    tokio::select! {
        served = conn => match served {
            Ok(()) => {}
            Err(e) => tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error"),
        },
        () = watchdog(state, hygiene) => {
            tracing::debug!(listener = name, %peer, "closed an idle or slow connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_other_descriptors() {
        assert_eq!(connection_cap(4096, 1_048_576, 256), 4096);
        assert_eq!(connection_cap(4096, 1024, 256), 512);
        assert_eq!(connection_cap(4096, 100, 0), 1);
        assert_eq!(
            connection_cap_shared(4096, 1024, 256, 2),
            256,
            "two listeners share the room"
        );
        assert_eq!(connection_cap_shared(4096, 1_048_576, 256, 2), 4096);
    }

    #[test]
    fn a_connection_times_out_by_phase() {
        let h = Hygiene {
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
            max_connections: 1,
        };
        let s = ConnState::new();
        let idle = s.deadline(&h).unwrap();
        assert!(idle >= s.epoch + Duration::from_secs(5));
        s.bytes_arrived();
        let head = s.deadline(&h).unwrap();
        assert!(head < idle);
        s.request_started();
        s.request_started();
        assert_eq!(s.deadline(&h), None);
        s.request_ended();
        assert_eq!(s.deadline(&h), None, "a stream is still open");
        s.request_ended();
        assert!(s.deadline(&h).is_some(), "idle again");
        s.request_started();
        s.bytes_arrived();
        assert_eq!(s.deadline(&h), None, "bytes of a body do not start a head");
    }
}
