//! A lean transport for the gRPC calls between sealfs processes when TLS is off. Each call is one
//! length-prefixed frame on a shared TCP connection (call id, method path, headers, body) and
//! one frame back (id, HTTP status, headers, trailers, body). The frames carry tonic's own
//! encoded requests and responses, so every service, interceptor and error mapping is the one
//! gRPC over HTTP/2 uses; what goes is HTTP/2 and the task hops of tonic's channel (a buffer
//! worker and a connection task on each side, each a thread wake-up on a busy machine): a caller
//! writes its frame to the socket itself, one reader task per connection hands replies back, and
//! a server runs each call as one task that writes its own reply.
//!
//! Servers tell the two protocols apart by the first eight bytes of a connection ([`MAGIC`] or
//! [`MAGIC_V2`]); HTTP/2 clients and TLS handshakes never start with them. Version 2 adds an
//! attachment to every frame: bytes carried beside the message instead of inside it
//! ([`crate::attach`]), so a chunk's data is neither copied into an encoded message nor out of
//! a received one. A version 2 server answers the magic with its own; a client that gets
//! anything else (a version 1 server hands the connection to HTTP/2, which closes it) connects
//! again with version 1 and inlines attachments into their messages.
//!
//! Frame layout (integers little-endian; `[a]`: version 2 only):
//!
//! | frame | fields |
//! |---|---|
//! | request | `u32` length of the rest, `u64` id, [`u32` attachment length], path (`u16` length + bytes), headers, body, [attachment] |
//! | reply | `u32` length of the rest, `u64` id, [`u32` attachment length], `u16` HTTP status, headers, trailers, body, [attachment] |
//! | headers | `u16` count, then per header name and value, each `u16` length + bytes |

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;
use tonic::Status;
use tracing::debug;

use crate::attach::{Attached, Attachment, RepliesTakeAttachments};

/// The first bytes of a framed connection of version 1 (the format's version is in them).
pub const MAGIC: &[u8; 8] = b"SEALRPC1";
/// The first bytes of a version 2 connection (frames carry attachments), which a version 2
/// server sends back.
pub const MAGIC_V2: &[u8; 8] = b"SEALRPC2";
/// The largest frame taken either way: the largest gRPC message plus room for headers.
const MAX_FRAME: usize = sealfs_core::config::MAX_MESSAGE_SIZE + (64 << 10);
/// Calls one server connection runs at once; past that the server stops reading from it.
const MAX_IN_FLIGHT: usize = 256;
/// Request bytes (in KiB) one server connection holds at once, read and not yet answered: past
/// that it stops reading, as an HTTP/2 connection window would (without it a fast writer fills
/// the node's memory with requests waiting for the disk).
const MAX_IN_FLIGHT_KIB: usize = 32 << 10;
/// Bodies up to this size are copied behind the frame's head to go out in one write.
const COALESCE: usize = 16 << 10;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn put_bytes(out: &mut BytesMut, b: &[u8]) -> Result<(), Status> {
    let n = u16::try_from(b.len()).map_err(|_| Status::internal("header too long for a frame"))?;
    out.put_u16_le(n);
    out.put_slice(b);
    Ok(())
}

fn put_headers(out: &mut BytesMut, h: &HeaderMap) -> Result<(), Status> {
    let n = u16::try_from(h.len()).map_err(|_| Status::internal("too many headers for a frame"))?;
    out.put_u16_le(n);
    for (k, v) in h {
        put_bytes(out, k.as_str().as_bytes())?;
        put_bytes(out, v.as_bytes())?;
    }
    Ok(())
}

/// A frame that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("malformed frame: {0}")]
pub struct FrameError(&'static str);

fn get_bytes(buf: &mut Bytes) -> Result<Bytes, FrameError> {
    if buf.remaining() < 2 {
        return Err(FrameError("truncated length"));
    }
    let n = buf.get_u16_le() as usize;
    if buf.remaining() < n {
        return Err(FrameError("truncated field"));
    }
    Ok(buf.split_to(n))
}

fn get_headers(buf: &mut Bytes) -> Result<HeaderMap, FrameError> {
    if buf.remaining() < 2 {
        return Err(FrameError("truncated header count"));
    }
    let n = buf.get_u16_le() as usize;
    let mut map = HeaderMap::with_capacity(n.min(64));
    for _ in 0..n {
        let k = get_bytes(buf)?;
        let v = get_bytes(buf)?;
        let k = HeaderName::from_bytes(&k).map_err(|_| FrameError("bad header name"))?;
        let v = HeaderValue::from_maybe_shared(v).map_err(|_| FrameError("bad header value"))?;
        map.append(k, v);
    }
    Ok(map)
}

/// Read one frame (without its length prefix); None at a clean end of the stream.
async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> std::io::Result<Option<Bytes>> {
    match read_len(rd).await? {
        Some(len) => read_body(rd, len).await.map(Some),
        None => Ok(None),
    }
}

/// Read a frame's length prefix; None at a clean end of the stream.
async fn read_len<R: AsyncRead + Unpin>(rd: &mut R) -> std::io::Result<Option<usize>> {
    let len = match rd.read_u32_le().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if !(8..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes refused"),
        ));
    }
    Ok(Some(len))
}

/// Frames at least this long are read into memory so that they end on an [`END_ALIGN`]
/// boundary: their attachment (a chunk's data) is their last bytes, so data of a multiple of
/// that length also starts on one, and a node writes it with `O_DIRECT` from where it is
/// instead of copying it into an aligned buffer first.
const ALIGN_FROM: usize = 64 << 10;
/// See [`ALIGN_FROM`]: the block size of direct I/O.
const END_ALIGN: usize = 4096;

/// Read the `len` bytes of a frame after its length prefix.
async fn read_body<R: AsyncRead + Unpin>(rd: &mut R, len: usize) -> std::io::Result<Bytes> {
    let room = if len >= ALIGN_FROM { END_ALIGN } else { 0 };
    let mut buf = BytesMut::with_capacity(len + room);
    if room > 0 {
        let end = buf.as_ptr() as usize + len;
        buf.put_bytes(0, (END_ALIGN - end % END_ALIGN) % END_ALIGN);
    }
    let start = buf.len();
    while buf.len() - start < len {
        let want = len - (buf.len() - start);
        let n = (&mut *rd).take(want as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let mut frame = buf.freeze();
    frame.advance(start);
    Ok(frame)
}

/// A frame ready to go out: its head, then its body and attachment (each empty when it was
/// small enough to be copied into the head, so the frame goes out in one write).
struct Frame {
    head: Bytes,
    body: Bytes,
    attachment: Bytes,
}

/// A frame of `head` (its length prefix filled in here), `body` and `attachment` (whose length
/// the head holds on version 2 connections; always empty on version 1).
fn finish_frame(mut head: BytesMut, mut body: Bytes, mut attachment: Bytes) -> Result<Frame, Status> {
    let total = head.len() - 4 + body.len() + attachment.len();
    if total > MAX_FRAME {
        return Err(Status::resource_exhausted(format!(
            "frame of {total} bytes is too large"
        )));
    }
    head[..4].copy_from_slice(&(total as u32).to_le_bytes());
    if body.len() <= COALESCE {
        head.put_slice(&std::mem::take(&mut body));
        if attachment.len() <= COALESCE {
            head.put_slice(&std::mem::take(&mut attachment));
        }
    }
    Ok(Frame {
        head: head.freeze(),
        body,
        attachment,
    })
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
    w.write_all(&f.head).await?;
    for piece in [&f.body, &f.attachment] {
        if !piece.is_empty() {
            w.write_all(piece).await?;
        }
    }
    Ok(())
}

/// A version 2 frame's attachment: its length (read from `frame`) and its bytes, the frame's
/// last (split off `frame`).
fn get_attachment(frame: &mut Bytes) -> Result<Bytes, FrameError> {
    if frame.remaining() < 4 {
        return Err(FrameError("truncated attachment length"));
    }
    let n = frame.get_u32_le() as usize;
    if frame.remaining() < n {
        return Err(FrameError("attachment longer than the frame"));
    }
    Ok(frame.split_off(frame.len() - n))
}

/// A body handed to tonic: the data, then the trailers (where gRPC puts a reply's status).
///
/// Data longer than [`SPLIT_BODY`] goes in two pieces, its 5-byte gRPC message header first:
/// tonic reserves room for the whole message when it reads a header, so a message that came in
/// one piece was copied twice (into tonic's buffer, then again into the room it reserved).
struct FrameBody {
    data: Option<Bytes>,
    head_sent: bool,
    trailers: Option<HeaderMap>,
}

/// Bodies longer than this reach tonic in two pieces (see [`FrameBody`]).
const SPLIT_BODY: usize = 8 << 10;
/// A gRPC message header: compression flag and `u32` length.
const GRPC_HEADER: usize = 5;

impl FrameBody {
    fn new(data: Bytes, trailers: Option<HeaderMap>) -> FrameBody {
        FrameBody {
            data: Some(data),
            head_sent: false,
            trailers,
        }
    }
}

impl http_body::Body for FrameBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(d) = this.data.as_mut().filter(|d| !d.is_empty()) {
            let piece = if !this.head_sent && d.len() > SPLIT_BODY {
                d.split_to(GRPC_HEADER)
            } else {
                std::mem::take(d)
            };
            this.head_sent = true;
            return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(http_body::Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.as_ref().is_none_or(|d| d.is_empty()) && self.trailers.is_none()
    }
}

// ---------------------------------------------------------------------------------------------
// Client

/// One connection to a server, shared by every call to it.
struct Conn {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Whether the server speaks version 2 (frames carry attachments).
    v2: bool,
    pending: Mutex<HashMap<u64, oneshot::Sender<Bytes>>>,
    next: AtomicU64,
    closed: AtomicBool,
    reader: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Conn {
    /// Stop using the connection: calls waiting on it fail at once (their reply senders are
    /// dropped) and the next call connects afresh.
    fn close(&self) {
        if let Some(r) = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r.abort();
        }
        self.fail_calls();
    }

    /// Mark the connection unusable and fail the calls waiting on it.
    fn fail_calls(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Marks the connection broken unless disarmed: a write that stopped half-way (its caller gave
/// up) leaves the stream mid-frame.
struct CloseOnDrop<'a>(Option<&'a Conn>);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.close();
        }
    }
}

struct ChannelInner {
    addr: String,
    timeout: Duration,
    connect_timeout: Duration,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        if let Some(c) = self.conn.get_mut().take() {
            c.close();
        }
    }
}

/// A client transport for tonic's generated clients over framed connections: connects lazily,
/// reconnects after a failure, and fails calls that get no reply within its timeout.
#[derive(Clone)]
pub struct FramedChannel {
    inner: Arc<ChannelInner>,
}

impl FramedChannel {
    /// A channel to `addr` (host:port); nothing is connected until the first call.
    pub fn new(addr: &str, timeout: Duration, connect_timeout: Duration) -> FramedChannel {
        FramedChannel {
            inner: Arc::new(ChannelInner {
                addr: addr.to_string(),
                timeout,
                connect_timeout,
                conn: tokio::sync::Mutex::new(None),
            }),
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>, Status> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.closed.load(Ordering::SeqCst)) {
            return Ok(c.clone());
        }
        let addr = &self.inner.addr;
        // Each new connection asks for version 2 first: a server upgraded since speaks it.
        let (rd, wr, v2) = match self.connect(true).await? {
            (rd, wr, true) => (rd, wr, true),
            _ => {
                debug!("{addr} does not take framed version 2: using version 1");
                let (rd, wr, _) = self.connect(false).await?;
                (rd, wr, false)
            }
        };
        let conn = Arc::new(Conn {
            writer: tokio::sync::Mutex::new(wr),
            v2,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            reader: Mutex::new(None),
        });
        let task = tokio::spawn(read_replies(conn.clone(), rd, addr.clone()));
        *conn.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Open a connection and send the magic of version 2 (`v2`) or 1. The flag returned is false
    /// when version 2 was asked and the server did not answer it (a version 1 server).
    async fn connect(&self, v2: bool) -> Result<(OwnedReadHalf, OwnedWriteHalf, bool), Status> {
        let addr = &self.inner.addr;
        let limit = self.inner.connect_timeout;
        let stream = tokio::time::timeout(limit, TcpStream::connect(addr.as_str()))
            .await
            .map_err(|_| Status::unavailable(format!("connecting to {addr} timed out")))?
            .map_err(|e| Status::unavailable(format!("cannot connect to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        keepalive(&stream);
        let (mut rd, mut wr) = stream.into_split();
        wr.write_all(if v2 { MAGIC_V2 } else { MAGIC })
            .await
            .map_err(|e| Status::unavailable(format!("cannot write to {addr}: {e}")))?;
        if !v2 {
            return Ok((rd, wr, true));
        }
        let mut answer = [0u8; 8];
        match tokio::time::timeout(limit, rd.read_exact(&mut answer)).await {
            Err(_) => Err(Status::unavailable(format!("{addr} did not answer within {limit:?}"))),
            Ok(Ok(_)) if &answer == MAGIC_V2 => Ok((rd, wr, true)),
            // Another answer, or the connection closed: HTTP/2 turned the magic down.
            Ok(Ok(_)) => Ok((rd, wr, false)),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok((rd, wr, false))
            }
            Ok(Err(e)) => Err(Status::unavailable(format!("cannot read from {addr}: {e}"))),
        }
    }

    async fn send(self, req: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let (mut parts, body) = req.into_parts();
        let body = body.collect().await.map_err(|s| Box::new(s) as BoxError)?.to_bytes();
        let attachment = parts.extensions.remove::<Attachment>();
        let conn = self.connection().await?;
        let id = conn.next.fetch_add(1, Ordering::Relaxed);
        let mut head = BytesMut::with_capacity(256 + body.len().min(COALESCE));
        head.put_u32_le(0);
        head.put_u64_le(id);
        let (body, attachment) = crate::attach::place(body, attachment, conn.v2)?;
        if conn.v2 {
            head.put_u32_le(attachment.len() as u32);
        }
        put_bytes(&mut head, parts.uri.path().as_bytes())?;
        put_headers(&mut head, &parts.headers)?;
        let frame = finish_frame(head, body, attachment)?;
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let addr = &self.inner.addr;
        let sent = async {
            let mut w = conn.writer.lock().await;
            if conn.closed.load(Ordering::SeqCst) {
                return Err(Status::unavailable(format!("connection to {addr} closed")));
            }
            let mut guard = CloseOnDrop(Some(&conn));
            let r = write_frame(&mut *w, &frame).await;
            if r.is_ok() {
                guard.0 = None;
            }
            r.map_err(|e| Status::unavailable(format!("cannot send to {addr}: {e}")))
        };
        let reply = tokio::time::timeout(self.inner.timeout, async {
            sent.await?;
            rx.await
                .map_err(|_| Status::unavailable(format!("connection to {addr} lost")))
        })
        .await;
        let mut frame = match reply {
            Ok(Ok(f)) => f,
            Ok(Err(s)) => {
                conn.close();
                return Err(s.into());
            }
            Err(_) => {
                conn.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                return Err(
                    Status::deadline_exceeded(format!("no reply from {addr} within {:?}", self.inner.timeout)).into(),
                );
            }
        };
        decode_reply(&mut frame, conn.v2).map_err(|e| {
            conn.close();
            Status::unavailable(format!("{addr}: {e}")).into()
        })
    }
}

/// Decode a reply frame (after its call id) of a version 2 (`v2`) or 1 connection.
pub fn decode_reply(frame: &mut Bytes, v2: bool) -> Result<http::Response<Body>, FrameError> {
    let attachment = if v2 { Some(get_attachment(frame)?) } else { None };
    if frame.remaining() < 2 {
        return Err(FrameError("truncated status"));
    }
    let status = http::StatusCode::from_u16(frame.get_u16_le()).map_err(|_| FrameError("bad status"))?;
    let headers = get_headers(frame)?;
    let trailers = get_headers(frame)?;
    let body = FrameBody::new(std::mem::take(frame), (!trailers.is_empty()).then_some(trailers));
    let mut resp = http::Response::new(Body::new(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    if let Some(a) = attachment.filter(|a| !a.is_empty()) {
        resp.extensions_mut().insert(Attached(a));
    }
    Ok(resp)
}

/// Hand each reply to the call waiting for it, until the connection ends.
async fn read_replies(conn: Arc<Conn>, rd: OwnedReadHalf, addr: String) {
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    loop {
        match read_frame(&mut rd).await {
            Ok(Some(mut f)) => {
                let id = f.get_u64_le();
                let waiting = conn.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                if let Some(tx) = waiting {
                    let _ = tx.send(f);
                }
            }
            Ok(None) => {
                debug!("framed connection to {addr} closed by the server");
                break;
            }
            Err(e) => {
                debug!("framed connection to {addr} failed: {e}");
                break;
            }
        }
    }
    conn.fail_calls();
}

/// TCP keepalive, so a peer that vanished without closing (a cut network) is noticed on an idle
/// connection too, as HTTP/2 pings would.
fn keepalive(stream: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2))
        .with_retries(2);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&ka);
}

impl tower_service::Service<http::Request<Body>> for FramedChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.clone().send(req))
    }
}

// ---------------------------------------------------------------------------------------------
// Server

/// Whether the connection speaks this protocol: its first bytes are [`MAGIC`] or [`MAGIC_V2`]
/// (left for [`serve`] to read). None when the peer closed (or sent nothing) before telling.
pub async fn is_framed(stream: &TcpStream) -> Option<bool> {
    let mut buf = [0u8; 8];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != MAGIC[..n] && buf[..n] != MAGIC_V2[..n] {
            return Some(false);
        }
        if n == MAGIC.len() {
            return Some(true);
        }
        // The magic arrived in pieces: wait for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

/// Serve framed calls from `stream` (whose magic [`is_framed`] saw) with `svc` until the peer
/// closes, sends a malformed frame, or `cancel` fires. Each call runs as its own task, spawned
/// on `tasks`, so a server that stops can wait for the calls it took to finish. Calls are unary:
/// the methods in `streaming` are refused (they need HTTP/2), and a reply larger than a frame
/// is an error.
pub async fn serve<S, B>(
    stream: TcpStream,
    svc: S,
    streaming: &'static [&'static str],
    tasks: TaskTracker,
    cancel: CancellationToken,
) where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let info = TcpConnectInfo {
        local_addr: stream.local_addr().ok(),
        remote_addr: stream.peer_addr().ok(),
    };
    let peer = info.remote_addr;
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let mut magic = [0u8; 8];
    if rd.read_exact(&mut magic).await.is_err() {
        return;
    }
    let v2 = &magic == MAGIC_V2;
    let mut wr = wr;
    if v2 && wr.write_all(MAGIC_V2).await.is_err() {
        return;
    }
    let writer = Arc::new(tokio::sync::Mutex::new(wr));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let bytes = Arc::new(Semaphore::new(MAX_IN_FLIGHT_KIB));
    loop {
        let len = tokio::select! {
            l = read_len(&mut rd) => l,
            _ = cancel.cancelled() => break,
        };
        let len = match len {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                debug!(?peer, "framed connection closed: {e}");
                break;
            }
        };
        let kib = len.div_ceil(1024).clamp(1, MAX_IN_FLIGHT_KIB) as u32;
        let Ok(held) = bytes.clone().acquire_many_owned(kib).await else {
            break;
        };
        let mut frame = match read_body(&mut rd, len).await {
            Ok(f) => f,
            Err(e) => {
                debug!(?peer, "framed connection closed: {e}");
                break;
            }
        };
        let (id, req) = match decode_request(&mut frame, v2) {
            Ok((id, mut req)) => {
                req.extensions_mut().insert(info.clone());
                (id, req)
            }
            Err(e) => {
                debug!(?peer, "framed connection closed: {e}");
                break;
            }
        };
        if streaming.contains(&req.uri().path()) {
            let reply = encode_status(id, Status::unimplemented("a streaming call: use HTTP/2"), v2);
            let Ok(reply) = reply else { break };
            if write_frame(&mut *writer.lock().await, &reply).await.is_err() {
                break;
            }
            continue;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut svc = svc.clone();
        let writer = writer.clone();
        tasks.spawn(async move {
            let _slot = (slot, held);
            let reply = match std::future::poll_fn(|cx| svc.poll_ready(cx)).await {
                Ok(()) => match svc.call(req).await {
                    Ok(resp) => encode_reply(id, resp, v2).await,
                    Err(e) => encode_status(id, Status::from_error(e.into()), v2),
                },
                Err(e) => encode_status(id, Status::from_error(e.into()), v2),
            };
            // A reply that cannot be framed (too large) still gets an answer: its error.
            let reply = reply.or_else(|s| encode_status(id, s, v2));
            let Ok(reply) = reply else { return };
            let mut w = writer.lock().await;
            if let Err(e) = write_frame(&mut *w, &reply).await {
                debug!(?peer, "cannot send a reply: {e}");
                let _ = w.shutdown().await;
            }
        });
    }
}

/// Decode a request frame (after its length prefix) of a version 2 (`v2`) or 1 connection: its
/// call id and the request.
pub fn decode_request(frame: &mut Bytes, v2: bool) -> Result<(u64, http::Request<Body>), FrameError> {
    if frame.remaining() < 8 {
        return Err(FrameError("truncated call id"));
    }
    let id = frame.get_u64_le();
    let attachment = if v2 { Some(get_attachment(frame)?) } else { None };
    let path = get_bytes(frame)?;
    let uri = http::Uri::from_maybe_shared(path).map_err(|_| FrameError("bad path"))?;
    let headers = get_headers(frame)?;
    let body = std::mem::take(frame);
    let mut req = http::Request::new(Body::new(FrameBody::new(body, None)));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    *req.headers_mut() = headers;
    if let Some(a) = attachment {
        req.extensions_mut().insert(RepliesTakeAttachments);
        if !a.is_empty() {
            req.extensions_mut().insert(Attached(a));
        }
    }
    Ok((id, req))
}

/// A reply's head; `attachment` is its attachment's length on a version 2 connection.
fn reply_head(
    id: u64,
    attachment: Option<usize>,
    status: http::StatusCode,
    headers: &HeaderMap,
    trailers: &HeaderMap,
) -> Result<BytesMut, Status> {
    let mut head = BytesMut::with_capacity(256);
    head.put_u32_le(0);
    head.put_u64_le(id);
    if let Some(n) = attachment {
        head.put_u32_le(n as u32);
    }
    head.put_u16_le(status.as_u16());
    put_headers(&mut head, headers)?;
    put_headers(&mut head, trailers)?;
    Ok(head)
}

async fn encode_reply<B>(id: u64, resp: http::Response<B>, v2: bool) -> Result<Frame, Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = resp.into_parts();
    let collected = match http_body_util::Limited::new(body, MAX_FRAME).collect().await {
        Ok(c) => c,
        Err(e) => return encode_status(id, Status::internal(format!("reply not sent: {e}")), v2),
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    // A handler attaches only where the request said the connection takes it; inlining keeps
    // any other reply whole all the same.
    let (data, attachment) = crate::attach::place(collected.to_bytes(), parts.extensions.remove::<Attachment>(), v2)?;
    let head = reply_head(
        id,
        v2.then_some(attachment.len()),
        parts.status,
        &parts.headers,
        &trailers,
    )?;
    finish_frame(head, data, attachment)
}

fn encode_status(id: u64, s: Status, v2: bool) -> Result<Frame, Status> {
    let resp: http::Response<()> = s.into_http();
    let head = reply_head(id, v2.then_some(0), resp.status(), resp.headers(), &HeaderMap::new())?;
    finish_frame(head, Bytes::new(), Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let mut out = BytesMut::new();
        put_headers(&mut out, &h).unwrap();
        let mut b = out.freeze();
        let back = get_headers(&mut b).unwrap();
        assert_eq!(back, h);
        assert!(b.is_empty());
    }

    #[test]
    fn truncated_fields_are_errors_not_panics() {
        let mut h = HeaderMap::new();
        h.insert("x-sealfs-auth", HeaderValue::from_static("v1.1.abc"));
        let mut out = BytesMut::new();
        put_headers(&mut out, &h).unwrap();
        let full = out.freeze();
        for cut in 0..full.len() {
            let mut b = full.slice(..cut);
            assert!(get_headers(&mut b).is_err(), "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn oversized_and_short_frames_are_refused() {
        let mut big: &[u8] = &((MAX_FRAME as u32) + 1).to_le_bytes();
        assert!(read_frame(&mut big).await.is_err());
        let mut tiny: &[u8] = &3u32.to_le_bytes();
        assert!(read_frame(&mut tiny).await.is_err());
        let mut cut: &[u8] = &[20, 0, 0, 0, 1, 2, 3];
        assert!(read_frame(&mut cut).await.is_err());
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty).await.unwrap().is_none());
    }

    /// What [`Echo`] saw of each call: its body, the data attached to it, and whether its
    /// connection takes an attachment on the reply.
    type Seen = Arc<Mutex<Vec<(Bytes, Option<Bytes>, bool)>>>;

    /// A service that records each call and answers with an empty `ReadChunkReply` and, beside
    /// it, the data the call came with (or had inlined).
    #[derive(Clone)]
    struct Echo(Seen);

    impl tower_service::Service<http::Request<Body>> for Echo {
        type Response = http::Response<http_body_util::Full<Bytes>>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<Body>) -> Self::Future {
            let seen = self.0.clone();
            Box::pin(async move {
                use prost::Message;
                let (mut parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let attached = crate::attach::take(&mut parts.extensions);
                let takes = parts.extensions.get::<RepliesTakeAttachments>().is_some();
                let data = match &attached {
                    Some(d) => d.clone(),
                    None => crate::pb::WriteChunkRequest::decode(&body[GRPC_HEADER..]).unwrap().data,
                };
                seen.lock().unwrap().push((body, attached, takes));
                let reply = Bytes::from_static(&[0, 0, 0, 0, 0]);
                let mut resp = http::Response::new(http_body_util::Full::new(reply));
                resp.extensions_mut()
                    .insert(Attachment::new(crate::attach::READ_CHUNK_DATA, data));
                Ok(resp)
            })
        }
    }

    /// Serve [`Echo`] on a port; with `v1_only`, connections that open with [`MAGIC_V2`] are
    /// closed, as a version 1 server's HTTP/2 side closes them.
    async fn echo_server(v1_only: bool) -> (String, Seen, CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Seen::default();
        let cancel = CancellationToken::new();
        let (svc, stop) = (Echo(seen.clone()), cancel.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let mut magic = [0u8; 8];
                if stream.peek(&mut magic).await.is_err() || (v1_only && &magic == MAGIC_V2) {
                    continue;
                }
                tokio::spawn(serve(stream, svc.clone(), &[], TaskTracker::new(), stop.clone()));
            }
        });
        (addr, seen, cancel)
    }

    #[tokio::test]
    async fn attachments_travel_beside_on_version_2_and_inside_on_version_1() {
        use prost::Message;
        let data = Bytes::from((0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let msg = crate::pb::WriteChunkRequest {
            offset: 7,
            chunk_size: 4 << 20,
            ..Default::default()
        };
        let mut body = BytesMut::new();
        body.put_u8(0);
        body.put_u32(msg.encoded_len() as u32);
        msg.encode(&mut body).unwrap();
        let body = body.freeze();
        for v1_only in [false, true] {
            let (addr, seen, cancel) = echo_server(v1_only).await;
            let chan = FramedChannel::new(&addr, Duration::from_secs(10), Duration::from_secs(2));
            for _ in 0..2 {
                let mut req = http::Request::new(Body::new(http_body_util::Full::new(body.clone())));
                *req.uri_mut() = http::Uri::from_static("/sealfs.v1.Node/WriteChunk");
                req.extensions_mut()
                    .insert(Attachment::new(crate::attach::WRITE_CHUNK_DATA, data.clone()));
                let resp = chan.clone().send(req).await.unwrap();
                let (mut parts, reply) = resp.into_parts();
                let reply = reply.collect().await.unwrap().to_bytes();
                let got = crate::pb::ReadChunkReply::decode(&reply[GRPC_HEADER..]).unwrap().data;
                match crate::attach::take(&mut parts.extensions) {
                    // Version 2: beside the reply, which stayed as the server encoded it.
                    Some(beside) => {
                        assert!(!v1_only);
                        assert!(got.is_empty());
                        assert_eq!(beside, data);
                    }
                    None => {
                        assert!(v1_only, "version 2 replies carry the data beside");
                        assert_eq!(got, data);
                    }
                }
            }
            let seen = seen.lock().unwrap().clone();
            assert_eq!(seen.len(), 2);
            for (got_body, attached, takes) in seen {
                if v1_only {
                    // Inlined: the message decodes with its data field.
                    assert!(attached.is_none() && !takes);
                    let m = crate::pb::WriteChunkRequest::decode(&got_body[GRPC_HEADER..]).unwrap();
                    assert_eq!(
                        m,
                        crate::pb::WriteChunkRequest {
                            data: data.clone(),
                            ..msg.clone()
                        }
                    );
                } else {
                    assert!(takes);
                    assert_eq!(got_body, body);
                    assert_eq!(attached.as_ref(), Some(&data));
                }
            }
            cancel.cancel();
        }
    }

    #[tokio::test]
    async fn large_frames_end_aligned_in_memory() {
        for len in [ALIGN_FROM, ALIGN_FROM + 1, (1 << 20) + 4096 + 77] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let mut wire = (len as u32).to_le_bytes().to_vec();
            wire.extend_from_slice(&bytes);
            let frame = read_frame(&mut wire.as_slice()).await.unwrap().unwrap();
            assert_eq!(frame, bytes);
            assert_eq!((frame.as_ptr() as usize + len) % END_ALIGN, 0, "{len}");
            // Its last 64 KiB (an attachment) start aligned.
            assert_eq!(frame.slice(len - (1 << 16)..).as_ptr() as usize % END_ALIGN, 0);
        }
    }

    #[test]
    fn version_2_frames_with_bad_attachment_lengths_are_refused() {
        let mut head = BytesMut::new();
        head.put_u64_le(1);
        head.put_u32_le(1000);
        put_bytes(&mut head, b"/x").unwrap();
        put_headers(&mut head, &HeaderMap::new()).unwrap();
        let frame = head.freeze();
        assert!(decode_request(&mut frame.clone(), true).is_err());
        // The same bytes on version 1 read the length as part of the path: refused too.
        assert!(decode_request(&mut frame.clone(), false).is_err());
        let mut ok = BytesMut::new();
        ok.put_u64_le(1);
        ok.put_u32_le(3);
        put_bytes(&mut ok, b"/x").unwrap();
        put_headers(&mut ok, &HeaderMap::new()).unwrap();
        ok.put_slice(b"abc");
        let (id, req) = decode_request(&mut ok.freeze(), true).unwrap();
        assert_eq!(id, 1);
        assert_eq!(
            req.extensions().get::<Attached>().unwrap().0,
            Bytes::from_static(b"abc")
        );
        let mut reply = BytesMut::new();
        reply.put_u32_le(u32::MAX);
        reply.put_u16_le(200);
        assert!(decode_reply(&mut reply.freeze(), true).is_err());
    }

    #[tokio::test]
    async fn a_large_body_reaches_tonic_head_first_and_decodes_whole() {
        use prost::Message;
        let msg = crate::pb::ChunkWrite {
            offset: 3,
            data: Bytes::from(vec![0x5a; 1 << 20]),
            stable: false,
            pieces: Vec::new(),
        };
        let mut wire = BytesMut::new();
        wire.put_u8(0);
        wire.put_u32(msg.encoded_len() as u32);
        msg.encode(&mut wire).unwrap();
        let wire = wire.freeze();
        let mut pieces = Vec::new();
        let mut body = FrameBody::new(wire.clone(), None);
        while let Some(f) = body.frame().await {
            pieces.push(f.unwrap().into_data().unwrap());
        }
        assert_eq!(
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [GRPC_HEADER, wire.len() - GRPC_HEADER]
        );
        let small = Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]);
        let mut body = FrameBody::new(small.clone(), None);
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), small);
        assert!(body.frame().await.is_none());

        let mut stream = tonic::Streaming::new_request(
            tonic_prost::ProstDecoder::<crate::pb::ChunkWrite>::default(),
            Body::new(FrameBody::new(wire, None)),
            None,
            Some(sealfs_core::config::MAX_MESSAGE_SIZE),
        );
        assert_eq!(stream.message().await.unwrap(), Some(msg));
        assert_eq!(stream.message().await.unwrap(), None);
    }
}
