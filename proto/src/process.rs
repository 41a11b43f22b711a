//! Process plumbing every sealfs server binary shares: logging set-up, the shutdown signal, and
//! the address file that tells a parent process (`sealfs up`, the tests) where a server listens,
//! and the accept loop with its per-client connection limit.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tracing::warn;

/// Log to stderr with the filter in `SEALFS_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEALFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: logs usually go to files, where escape codes get in the way
    // of grep and of key=value parsing (NO_COLOR turns them off on a terminal too).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    // A second init (tests that start several servers in one process) keeps the first one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the process can still be killed; never resolve.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Write `addr` to `path` atomically (write a temporary file, then rename), so a reader never
/// sees half an address.
pub fn write_addr_file(path: &Path, addr: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{addr}\n"))
        .map_err(|e| anyhow::anyhow!("cannot write address file {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("cannot write address file {}: {e}", path.display()))?;
    Ok(())
}

/// Finish `main`: print an error as one readable chain (no backtrace noise) and exit 1.
pub fn exit_on_error(r: anyhow::Result<()>) {
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Lets a repeated log line through at most once per period, so a flood of bad input is one line
/// each period rather than one per event.
#[derive(Debug, Default)]
pub struct LogGate {
    last: AtomicU64,
}

impl LogGate {
    /// A gate that has not let anything through yet.
    pub const fn new() -> LogGate {
        LogGate {
            last: AtomicU64::new(0),
        }
    }

    /// Whether a line may go out now, at most once every `every_secs` seconds.
    pub fn open(&self, every_secs: u64) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last.load(Ordering::Relaxed);
        now.saturating_sub(last) >= every_secs
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The connections a server accepts on `listener`: Nagle's algorithm off (a gRPC reply is several
/// small writes, and Nagle plus the peer's delayed ACK would hold each reply ~40 ms; tonic's own
/// `tcp_nodelay` applies only to listeners it binds itself), at most `max_per_client` open at
/// once from one address (more are closed at once, and logged), and accept errors (such as
/// running out of file descriptors) logged and ridden out instead of ending the server.
pub fn incoming(listener: tokio::net::TcpListener, max_per_client: u32) -> Incoming {
    Incoming {
        listener,
        limits: Arc::new(ConnLimits::new(max_per_client)),
        pause: None,
    }
}

/// Stream of accepted connections; see [`incoming`].
pub struct Incoming {
    listener: tokio::net::TcpListener,
    limits: Arc<ConnLimits>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl tokio_stream::Stream for Incoming {
    type Item = std::io::Result<LimitedConn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(p) = self.pause.as_mut() {
                std::task::ready!(p.as_mut().poll(cx));
                self.pause = None;
            }
            match std::task::ready!(self.listener.poll_accept(cx)) {
                Ok((stream, peer)) => match self.limits.acquire(peer.ip()) {
                    Some(guard) => {
                        let _ = stream.set_nodelay(true);
                        return Poll::Ready(Some(Ok(LimitedConn { stream, _guard: guard })));
                    }
                    None => {
                        self.limits.note_refused(peer);
                        drop(stream);
                    }
                },
                Err(e) => {
                    warn!("accepting a connection failed: {e}; pausing 100 ms");
                    self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                }
            }
        }
    }
}

/// Open connections per client address, with a cap.
pub struct ConnLimits {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
    refused: AtomicU64,
    warn: LogGate,
}

impl ConnLimits {
    /// At most `max` connections per address.
    pub fn new(max: u32) -> ConnLimits {
        ConnLimits {
            max: max.max(1),
            open: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            warn: LogGate::new(),
        }
    }

    /// Take a slot for `ip`, or None when it has all it may have.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnGuard> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnGuard {
            limits: self.clone(),
            ip,
        })
    }

    /// Count (and log, at most every 10 s) a connection refused for being over the limit.
    pub fn note_refused(&self, peer: SocketAddr) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if self.warn.open(10) {
            warn!(%peer, refused_total = n, limit = self.max, "closed a connection: too many from this address");
        }
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// A slot of [`ConnLimits`], given back on drop.
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// An accepted TCP connection holding its slot.
pub struct LimitedConn {
    stream: tokio::net::TcpStream,
    _guard: ConnGuard,
}

impl LimitedConn {
    /// The TCP stream underneath (to peek at the protocol).
    pub fn stream(&self) -> &tokio::net::TcpStream {
        &self.stream
    }

    /// The stream, and the slot it holds (keep it for as long as the connection is served).
    pub fn into_parts(self) -> (tokio::net::TcpStream, ConnGuard) {
        (self.stream, self._guard)
    }
}

impl tonic::transport::server::Connected for LimitedConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LimitedConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address() {
        let l = Arc::new(ConnLimits::new(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = l.acquire(a).unwrap();
        let _g2 = l.acquire(a).unwrap();
        assert!(l.acquire(a).is_none());
        let _g3 = l.acquire(b).unwrap();
        drop(g1);
        assert!(l.acquire(a).is_some());
    }
}
