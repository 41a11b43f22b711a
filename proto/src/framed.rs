//! A lean transport for the gRPC calls between sealfs processes when TLS is off. Each call is one
//! length-prefixed frame on a shared TCP connection (call id, method path, headers, body) and
//! one frame back (id, HTTP status, headers, trailers, body). The frames carry tonic's own
//! encoded requests and responses, so every service, interceptor and error mapping is the one
//! gRPC over HTTP/2 uses; what goes is HTTP/2 and the task hops of tonic's channel (a buffer
//! worker and a connection task on each side, each a thread wake-up on a busy machine): a caller
//! writes its frame to the socket itself, one reader task per connection hands replies back, and
//! a server runs each call as one task that writes its own reply.
//!
//! Servers tell the two protocols apart by the first eight bytes of a connection ([`MAGIC`]);
//! HTTP/2 clients and TLS handshakes never start with them.
//!
//! Frame layout (integers little-endian):
//!
//! | frame | fields |
//! |---|---|
//! | request | `u32` length of the rest, `u64` id, path (`u16` length + bytes), headers, body |
//! | reply | `u32` length of the rest, `u64` id, `u16` HTTP status, headers, trailers, body |
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

/// The first bytes of every framed connection (the format's version is in them).
pub const MAGIC: &[u8; 8] = b"SEALRPC1";
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

/// Read the `len` bytes of a frame after its length prefix.
async fn read_body<R: AsyncRead + Unpin>(rd: &mut R, len: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let want = len - buf.len();
        let n = (&mut *rd).take(want as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.freeze())
}

/// A frame's head (length prefix filled in for `body_len` more bytes) and its body, written as
/// one buffer when the body is small.
fn finish_frame(mut head: BytesMut, body: Bytes) -> Result<(Bytes, Bytes), Status> {
    let total = head.len() - 4 + body.len();
    if total > MAX_FRAME {
        return Err(Status::resource_exhausted(format!(
            "frame of {total} bytes is too large"
        )));
    }
    head[..4].copy_from_slice(&(total as u32).to_le_bytes());
    if body.len() <= COALESCE {
        head.put_slice(&body);
        return Ok((head.freeze(), Bytes::new()));
    }
    Ok((head.freeze(), body))
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    w.write_all(head).await?;
    if !body.is_empty() {
        w.write_all(body).await?;
    }
    Ok(())
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
        let stream = tokio::time::timeout(self.inner.connect_timeout, TcpStream::connect(addr.as_str()))
            .await
            .map_err(|_| Status::unavailable(format!("connecting to {addr} timed out")))?
            .map_err(|e| Status::unavailable(format!("cannot connect to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        keepalive(&stream);
        let (rd, mut wr) = stream.into_split();
        wr.write_all(MAGIC)
            .await
            .map_err(|e| Status::unavailable(format!("cannot write to {addr}: {e}")))?;
        let conn = Arc::new(Conn {
            writer: tokio::sync::Mutex::new(wr),
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

    async fn send(self, req: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map_err(|s| Box::new(s) as BoxError)?.to_bytes();
        let conn = self.connection().await?;
        let id = conn.next.fetch_add(1, Ordering::Relaxed);
        let mut head = BytesMut::with_capacity(256 + body.len().min(COALESCE));
        head.put_u32_le(0);
        head.put_u64_le(id);
        put_bytes(&mut head, parts.uri.path().as_bytes())?;
        put_headers(&mut head, &parts.headers)?;
        let (head, body) = finish_frame(head, body)?;
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let addr = &self.inner.addr;
        let sent = async {
            let mut w = conn.writer.lock().await;
            if conn.closed.load(Ordering::SeqCst) {
                return Err(Status::unavailable(format!("connection to {addr} closed")));
            }
            let mut guard = CloseOnDrop(Some(&conn));
            let r = write_frame(&mut *w, &head, &body).await;
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
        decode_reply(&mut frame).map_err(|e| {
            conn.close();
            Status::unavailable(format!("{addr}: {e}")).into()
        })
    }
}

/// Decode a reply frame (after its call id).
pub fn decode_reply(frame: &mut Bytes) -> Result<http::Response<Body>, FrameError> {
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

/// Whether the connection speaks this protocol: its first bytes are [`MAGIC`] (which are then
/// consumed). None when the peer closed (or sent nothing) before telling.
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
        if buf[..n] != MAGIC[..n] {
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
        let (id, req) = match decode_request(&mut frame) {
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
            let reply = encode_status(id, Status::unimplemented("a streaming call: use HTTP/2"));
            let Ok((head, body)) = reply else { break };
            if write_frame(&mut *writer.lock().await, &head, &body).await.is_err() {
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
                    Ok(resp) => encode_reply(id, resp).await,
                    Err(e) => encode_status(id, Status::from_error(e.into())),
                },
                Err(e) => encode_status(id, Status::from_error(e.into())),
            };
            // A reply that cannot be framed (too large) still gets an answer: its error.
            let reply = reply.or_else(|s| encode_status(id, s));
            let Ok((head, body)) = reply else { return };
            let mut w = writer.lock().await;
            if let Err(e) = write_frame(&mut *w, &head, &body).await {
                debug!(?peer, "cannot send a reply: {e}");
                let _ = w.shutdown().await;
            }
        });
    }
}

/// Decode a request frame (after its length prefix): its call id and the request.
pub fn decode_request(frame: &mut Bytes) -> Result<(u64, http::Request<Body>), FrameError> {
    if frame.remaining() < 8 {
        return Err(FrameError("truncated call id"));
    }
    let id = frame.get_u64_le();
    let path = get_bytes(frame)?;
    let uri = http::Uri::from_maybe_shared(path).map_err(|_| FrameError("bad path"))?;
    let headers = get_headers(frame)?;
    let body = std::mem::take(frame);
    let mut req = http::Request::new(Body::new(FrameBody::new(body, None)));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    *req.headers_mut() = headers;
    Ok((id, req))
}

fn reply_head(
    id: u64,
    status: http::StatusCode,
    headers: &HeaderMap,
    trailers: &HeaderMap,
) -> Result<BytesMut, Status> {
    let mut head = BytesMut::with_capacity(256);
    head.put_u32_le(0);
    head.put_u64_le(id);
    head.put_u16_le(status.as_u16());
    put_headers(&mut head, headers)?;
    put_headers(&mut head, trailers)?;
    Ok(head)
}

async fn encode_reply<B>(id: u64, resp: http::Response<B>) -> Result<(Bytes, Bytes), Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = resp.into_parts();
    let collected = match http_body_util::Limited::new(body, MAX_FRAME).collect().await {
        Ok(c) => c,
        Err(e) => return encode_status(id, Status::internal(format!("reply not sent: {e}"))),
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let data = collected.to_bytes();
    let head = reply_head(id, parts.status, &parts.headers, &trailers)?;
    finish_frame(head, data)
}

fn encode_status(id: u64, s: Status) -> Result<(Bytes, Bytes), Status> {
    let resp: http::Response<()> = s.into_http();
    let head = reply_head(id, resp.status(), resp.headers(), &HeaderMap::new())?;
    finish_frame(head, Bytes::new())
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

    #[tokio::test]
    async fn a_large_body_reaches_tonic_head_first_and_decodes_whole() {
        use prost::Message;
        let msg = crate::pb::ChunkWrite {
            offset: 3,
            data: Bytes::from(vec![0x5a; 1 << 20]),
            stable: false,
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
