//! Process plumbing every sealfs server binary shares: logging set-up, the shutdown signal, and
//! the address file that tells a parent process (`sealfs up`, the tests) where a server listens.

use std::path::Path;

/// Log to stderr with the filter in `SEALFS_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEALFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests that start several servers in one process) keeps the first one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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

/// The connections a server accepts on `listener`, with Nagle's algorithm off: a gRPC reply is
/// several small writes, and Nagle plus the peer's delayed ACK would hold each reply ~40 ms.
/// (tonic's own `tcp_nodelay` applies only to listeners it binds itself.)
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}
