//! ONC RPC servers over TCP (record marking, RFC 5531 section 11) and UDP. Records are bounded
//! (a larger one closes the connection before anything is allocated for it), calls of one
//! connection run concurrently up to a bound, and replies go back as they finish, matched by xid:
//! each call writes its own reply, encoded behind room left for its record mark, so a reply is
//! neither handed to another task nor copied again on its way out.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::portmap_handlers::PortMap;
use crate::rpc::*;
use crate::vfs::{Caller, NfsBackend};
use crate::xdr::*;

/// Largest RPC record accepted: a maximal WRITE (1 MiB of data) plus headers, with margin.
pub const MAX_RECORD: usize = (2 << 20) + (64 << 10);
/// Calls of one connection being answered at once; more wait (TCP backpressure).
pub const MAX_IN_FLIGHT: usize = 64;
/// Connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 4096;
/// The uid and gid of calls without AUTH_SYS credentials.
pub const NOBODY: u32 = 65534;

/// The programs one listener answers.
#[derive(Clone)]
pub struct RpcServer {
    /// NFS v3 and MOUNT v3 over this backend.
    pub nfs: Option<Arc<dyn NfsBackend>>,
    /// A portmapper.
    pub portmap: Option<PortMap>,
}

fn auth_error(xid: u32, stat: auth_stat) -> rpc_msg {
    rpc_msg {
        xid,
        body: rpc_body::REPLY(reply_body::MSG_DENIED(rejected_reply::AUTH_ERROR(stat))),
    }
}

fn rpc_mismatch(xid: u32) -> rpc_msg {
    rpc_msg {
        xid,
        body: rpc_body::REPLY(reply_body::MSG_DENIED(rejected_reply::RPC_MISMATCH(mismatch_info {
            low: 2,
            high: 2,
        }))),
    }
}

impl RpcServer {
    /// Decode the header of an RPC record: (xid, call, where the arguments start). None for
    /// anything that is not a well-formed call.
    pub fn parse_call(record: &[u8], peer: SocketAddr) -> Option<(u32, call_body, u64)> {
        let mut input = Cursor::new(record);
        let mut msg = rpc_msg::default();
        if let Err(e) = msg.deserialize(&mut input) {
            debug!(%peer, "undecodable RPC record: {e}");
            return None;
        }
        match msg.body {
            rpc_body::CALL(call) => Some((msg.xid, call, input.position())),
            rpc_body::REPLY(_) => {
                debug!(%peer, "an RPC reply where a call was expected");
                None
            }
        }
    }

    /// Answer one RPC record from `peer`. None: nothing to send (not a well-formed call).
    pub async fn handle_record(&self, record: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
        let (xid, call, pos) = Self::parse_call(record, peer)?;
        self.answer(record, pos, xid, &call, peer, false).await
    }

    /// The reply to a call; with `marked`, behind the TCP record mark that frames it as one
    /// whole record.
    async fn answer(
        &self,
        record: &[u8],
        pos: u64,
        xid: u32,
        call: &call_body,
        peer: SocketAddr,
        marked: bool,
    ) -> Option<Vec<u8>> {
        let mut input = Cursor::new(record);
        input.set_position(pos);
        let mark = if marked { 4 } else { 0 };
        let mut out = Vec::with_capacity(256);
        out.resize(mark, 0);
        match self.dispatch(xid, call, &mut input, peer, &mut out).await {
            Ok(()) if marked => {
                let len = u32::try_from(out.len() - mark).ok().filter(|n| *n < 1 << 31)?;
                out[..mark].copy_from_slice(&(len | (1 << 31)).to_be_bytes());
                Some(out)
            }
            Ok(()) => Some(out),
            Err(e) => {
                warn!(%peer, xid, "cannot encode a reply: {e}");
                None
            }
        }
    }

    async fn dispatch(
        &self,
        xid: u32,
        call: &call_body,
        input: &mut Cursor<&[u8]>,
        peer: SocketAddr,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        if call.rpcvers != 2 {
            return rpc_mismatch(xid).serialize(out);
        }
        let mut caller = Caller {
            uid: NOBODY,
            gid: NOBODY,
            gids: Vec::new(),
            addr: peer,
        };
        match call.cred.flavor {
            auth_flavor::AUTH_UNIX => {
                let mut a = auth_unix::default();
                if a.deserialize(&mut Cursor::new(&call.cred.body)).is_err() || a.gids.len() > 16 {
                    return auth_error(xid, auth_stat::AUTH_BADCRED).serialize(out);
                }
                caller.uid = a.uid;
                caller.gid = a.gid;
                caller.gids = a.gids;
            }
            auth_flavor::AUTH_NULL => {}
            _ => return auth_error(xid, auth_stat::AUTH_TOOWEAK).serialize(out),
        }
        match (call.prog, &self.nfs, &self.portmap) {
            (crate::nfs::PROGRAM, Some(backend), _) => {
                if call.vers != crate::nfs::VERSION {
                    return prog_mismatch_reply_message(xid, crate::nfs::VERSION).serialize(out);
                }
                if call.proc != 0 && !backend.client_allowed(&peer) {
                    debug!(%peer, "NFS call refused: client not allowed");
                    return auth_error(xid, auth_stat::AUTH_TOOWEAK).serialize(out);
                }
                debug!(xid, proc = call.proc, uid = caller.uid, gid = caller.gid, gids = ?caller.gids, "NFS call");
                crate::nfs_handlers::handle(backend.as_ref(), &caller, xid, call.proc, input, out).await
            }
            (crate::mount::PROGRAM, Some(backend), _) => {
                crate::mount_handlers::handle(backend.as_ref(), &caller, xid, call.vers, call.proc, input, out).await
            }
            (crate::portmap::PROGRAM, _, Some(map)) => {
                crate::portmap_handlers::handle(map, xid, call.vers, call.proc, input, out)
            }
            _ => prog_unavail_reply_message(xid).serialize(out),
        }
    }

    /// Serve RPC over TCP on `listener` until `cancel` fires.
    /// Serve RPC over TCP on `listener`: at most MAX_CONNECTIONS at once, and at most
    /// `max_per_client` from one address (more are closed at once, and logged).
    pub async fn serve_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        max_per_client: u32,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let per_client: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>> = Default::default();
        let mut last_warn: Option<std::time::Instant> = None;
        loop {
            let (sock, peer) = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: wait a little instead of spinning.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = conns.clone().try_acquire_owned() else {
                warn!(%peer, "too many connections; closing this one");
                continue;
            };
            {
                let mut open = per_client.lock().unwrap_or_else(|e| e.into_inner());
                let n = open.entry(peer.ip()).or_insert(0);
                if *n >= max_per_client.max(1) {
                    if last_warn.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
                        warn!(%peer, limit = max_per_client, "too many connections from this address; closing this one");
                        last_warn = Some(std::time::Instant::now());
                    }
                    continue;
                }
                *n += 1;
            }
            let server = self.clone();
            let cancel = cancel.clone();
            let per_client = per_client.clone();
            tokio::spawn(async move {
                debug!(%peer, "connection");
                let _ = sock.set_nodelay(true);
                if let Err(e) = server.connection(sock, peer, cancel).await {
                    debug!(%peer, "connection closed: {e}");
                }
                drop(permit);
                let mut open = per_client.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = open.get_mut(&peer.ip()) {
                    *n -= 1;
                    if *n == 0 {
                        open.remove(&peer.ip());
                    }
                }
            });
        }
    }

    async fn connection(
        self: Arc<Self>,
        sock: TcpStream,
        peer: SocketAddr,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let (mut rd, wr) = sock.into_split();
        // The write half, shared by the calls in flight; None once a write failed.
        let writer = Arc::new(Mutex::new(Some(wr)));
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let result = loop {
            let record = tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                r = read_record(&mut rd) => r,
            };
            let record = match record {
                Ok(Some(r)) => r,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            // A record that is not a well-formed call ends the connection: there is no xid to
            // answer, and the stream may be out of step.
            let Some((xid, call, pos)) = Self::parse_call(&record, peer) else {
                break Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not an RPC call"));
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break Ok(());
            };
            let server = self.clone();
            let writer = writer.clone();
            tokio::spawn(async move {
                if let Some(reply) = server.answer(&record, pos, xid, &call, peer, true).await {
                    let mut w = writer.lock().await;
                    if let Some(s) = w.as_mut() {
                        if let Err(e) = s.write_all(&reply).await {
                            debug!(%peer, "cannot send a reply: {e}");
                            *w = None;
                        }
                    }
                }
                drop(permit);
            });
        };
        // Calls already taken still send their replies before the connection is let go.
        let _ = in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
        result
    }

    /// Serve RPC over UDP on `socket` until `cancel` fires (one datagram, one call).
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket, cancel: CancellationToken) -> std::io::Result<()> {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, peer) = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        debug!("udp receive failed: {e}");
                        continue;
                    }
                },
            };
            if let Some(reply) = self.handle_record(&buf[..n], peer).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    }
}

/// Read one record (all its fragments). Ok(None) at a clean end of stream; an error for a record
/// past MAX_RECORD, a truncated record, or a read error.
pub async fn read_record(rd: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Option<Vec<u8>>> {
    let mut record = Vec::new();
    loop {
        let mut head = [0u8; 4];
        match rd.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && record.is_empty() => return Ok(None),
            Err(e) => return Err(e),
        }
        let h = u32::from_be_bytes(head);
        let last = h & (1 << 31) != 0;
        let len = (h & 0x7fff_ffff) as usize;
        if record.len() + len > MAX_RECORD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("RPC record of more than {MAX_RECORD} bytes"),
            ));
        }
        let start = record.len();
        record.resize(start + len, 0);
        rd.read_exact(&mut record[start..]).await?;
        if last {
            return Ok(Some(record));
        }
    }
}

/// Bind and serve NFS + MOUNT on `nfs` and a portmapper on `portmap` (TCP and UDP), until
/// `cancel` fires.
pub async fn run(
    backend: Arc<dyn NfsBackend>,
    nfs: TcpListener,
    portmap: Option<(TcpListener, UdpSocket)>,
    advertised_port: u16,
    max_per_client: u32,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let nfs_server = Arc::new(RpcServer {
        nfs: Some(backend),
        portmap: Some(PortMap::nfs_on(advertised_port)),
    });
    info!(addr = %nfs.local_addr()?, "NFSv3 and MOUNT serving");
    let mut tasks = vec![tokio::spawn(nfs_server.serve_tcp(nfs, max_per_client, cancel.clone()))];
    if let Some((tcp, udp)) = portmap {
        info!(addr = %tcp.local_addr()?, "portmapper serving (TCP and UDP)");
        let pm = Arc::new(RpcServer {
            nfs: None,
            portmap: Some(PortMap::nfs_on(advertised_port)),
        });
        tasks.push(tokio::spawn(pm.clone().serve_tcp(tcp, max_per_client, cancel.clone())));
        tasks.push(tokio::spawn(pm.serve_udp(udp, cancel.clone())));
    }
    for t in tasks {
        t.await.map_err(std::io::Error::other)??;
    }
    Ok(())
}
