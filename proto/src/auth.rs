//! Cluster authentication and TLS for every gRPC hop (manager, nodes, gateways, FUSE clients,
//! the CLI). A caller proves it holds the cluster secret by sending, on each call,
//! `x-sealfs-auth: v1.<unix seconds>.<hex HMAC-SHA256(secret, "sealfs-v1|" + seconds)>`; the
//! secret itself never crosses the wire and is never logged. Servers refuse calls without a valid
//! proof (`Unauthenticated`), count them and log why. TLS (rustls, mutual, one cluster CA) is
//! optional and, when on, also hides the proofs from anyone on the wire.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sealfs_core::config::SecurityConfig;
use sha2::Sha256;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};
use tracing::warn;

use crate::framed::FramedChannel;
use crate::process::LogGate;

/// The metadata key carrying the proof.
pub const AUTH_HEADER: &str = "x-sealfs-auth";
/// How far a proof's time may be from the server's clock (clocks of a cluster must agree this
/// well).
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// The shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;
/// Environment variable holding the secret itself (when no secret file is configured).
pub const SECRET_ENV: &str = "SEALFS_SECRET";
const DEFAULT_DOMAIN: &str = "sealfs";
/// Seconds between two log lines about refused calls (a flood of bad calls is one line each
/// period, with the running count).
const WARN_EVERY_SECS: u64 = 10;

/// Why the security settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(
        "no cluster secret: set secret_file (--secret-file, SEALFS_SECRET_FILE) or SEALFS_SECRET, or run with --insecure"
    )]
    NoSecret,
    #[error("cannot read the secret file {path}: {source}")]
    ReadSecret { path: String, source: std::io::Error },
    #[error("the cluster secret is too short: at least {MIN_SECRET_LEN} characters")]
    ShortSecret,
    #[error("cannot read TLS file {path}: {source}")]
    ReadTls { path: String, source: std::io::Error },
    #[error("TLS set-up failed: {0}")]
    Tls(String),
    #[error("invalid security settings: {0}")]
    Config(String),
}

/// The cluster secret. Its Debug output is redacted, so it cannot end up in a log by accident.
#[derive(Clone)]
pub struct Secret(Arc<Vec<u8>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A secret from text (surrounding whitespace, such as a file's final newline, is dropped).
    pub fn new(text: &str) -> Result<Secret, SecurityError> {
        let t = text.trim();
        if t.len() < MIN_SECRET_LEN {
            return Err(SecurityError::ShortSecret);
        }
        Ok(Secret(Arc::new(t.as_bytes().to_vec())))
    }

    /// A new random secret: 32 random bytes as 64 hex characters.
    pub fn generate() -> String {
        let bytes: [u8; 32] = rand::random();
        hex::encode(bytes)
    }

    fn mac(&self, secs: u64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(format!("sealfs-v1|{secs}").as_bytes());
        mac
    }

    /// The proof for time `secs`.
    pub fn token(&self, secs: u64) -> String {
        format!("v1.{secs}.{}", hex::encode(self.mac(secs).finalize().into_bytes()))
    }

    /// Check a proof against this secret at server time `now`; the error says what is wrong.
    pub fn verify(&self, token: &str, now: u64) -> Result<(), &'static str> {
        let mut parts = token.splitn(3, '.');
        let (Some("v1"), Some(secs), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("malformed cluster credentials");
        };
        let secs: u64 = secs.parse().map_err(|_| "malformed cluster credentials")?;
        if secs.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
            return Err("cluster credentials out of date: clocks differ by more than 300 s");
        }
        let mac = hex::decode(mac).map_err(|_| "malformed cluster credentials")?;
        // verify_slice compares in constant time.
        self.mac(secs).verify_slice(&mac).map_err(|_| "wrong cluster secret")
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Clone)]
struct Tls {
    identity: Identity,
    ca: Certificate,
    domain: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls {{ domain: {:?} }}", self.domain)
    }
}

/// A process's security settings, loaded: the secret (if any), TLS material (if any), and the
/// count of calls its servers refused.
#[derive(Clone, Debug)]
pub struct Security {
    secret: Option<Secret>,
    tls: Option<Arc<Tls>>,
    refused: Arc<AtomicU64>,
    warn: Arc<LogGate>,
}

fn read_tls(path: &str) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::ReadTls {
        path: path.to_string(),
        source,
    })
}

impl Security {
    /// Load the settings: the secret from `secret_file`, else from `SEALFS_SECRET`; TLS files.
    /// Without a secret this fails unless `insecure` is set.
    pub fn load(cfg: &SecurityConfig) -> Result<Security, SecurityError> {
        cfg.validate().map_err(|e| SecurityError::Config(e.to_string()))?;
        let secret = if cfg.insecure {
            None
        } else if let Some(path) = &cfg.secret_file {
            let text = std::fs::read_to_string(Path::new(path)).map_err(|source| SecurityError::ReadSecret {
                path: path.clone(),
                source,
            })?;
            Some(Secret::new(&text)?)
        } else if let Ok(text) = std::env::var(SECRET_ENV) {
            Some(Secret::new(&text)?)
        } else {
            return Err(SecurityError::NoSecret);
        };
        let tls = match (&cfg.tls_cert, &cfg.tls_key, &cfg.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                let identity = Identity::from_pem(read_tls(cert)?, read_tls(key)?);
                let ca = Certificate::from_pem(read_tls(ca)?);
                let domain = if cfg.tls_domain.is_empty() {
                    DEFAULT_DOMAIN.to_string()
                } else {
                    cfg.tls_domain.clone()
                };
                Some(Arc::new(Tls { identity, ca, domain }))
            }
            _ => None,
        };
        Ok(Security {
            secret,
            tls,
            refused: Arc::new(AtomicU64::new(0)),
            warn: Arc::new(LogGate::new()),
        })
    }

    /// No secret and no TLS: for tests of other things and trusted single-machine set-ups.
    pub fn insecure() -> Security {
        Security {
            secret: None,
            tls: None,
            refused: Arc::new(AtomicU64::new(0)),
            warn: Arc::new(LogGate::new()),
        }
    }

    /// Whether calls are signed and checked.
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Calls this process's servers refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// An endpoint for `addr` (host:port, or a URI), over TLS when configured.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, SecurityError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("{scheme}://{addr}")
        };
        let ep = Endpoint::from_shared(uri).map_err(|e| SecurityError::Config(format!("bad address {addr}: {e}")))?;
        match &self.tls {
            None => Ok(ep),
            Some(t) => ep
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(t.ca.clone())
                        .identity(t.identity.clone())
                        .domain_name(t.domain.clone()),
                )
                .map_err(|e| SecurityError::Tls(format!("{e}"))),
        }
    }

    /// A channel to `addr` that signs every call (connects lazily), over HTTP/2.
    pub fn channel(&self, endpoint: Endpoint) -> AuthChannel {
        InterceptedService::new(Transport::Http2(endpoint.connect_lazy()), self.client_auth())
    }

    /// A channel for the calls to a storage node at `addr`: over the framed transport
    /// ([`crate::framed`]) unless TLS is on or `SEALFS_TRANSPORT=http2` asks for HTTP/2 (then
    /// `endpoint` is used), signed either way.
    pub fn node_channel(&self, addr: &str, endpoint: Endpoint, timeout: Duration) -> AuthChannel {
        if self.tls.is_some() || !framed_allowed() {
            return self.channel(endpoint);
        }
        let ch = FramedChannel::new(addr, timeout, Duration::from_secs(2));
        InterceptedService::new(Transport::Framed(ch), self.client_auth())
    }

    /// Whether this process's servers take framed connections (never with TLS: the framed
    /// transport has no encryption).
    pub fn serves_framed(&self) -> bool {
        self.tls.is_none()
    }

    /// The interceptor that signs outgoing calls.
    pub fn client_auth(&self) -> ClientAuth {
        ClientAuth {
            secret: self.secret.clone(),
            cached: Arc::new(Mutex::new(None)),
        }
    }

    /// A server builder, with TLS when configured (mutual: clients need a certificate the
    /// cluster CA signed).
    pub fn server(&self) -> Result<Server, SecurityError> {
        let builder = Server::builder();
        match &self.tls {
            None => Ok(builder),
            Some(t) => builder
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(t.identity.clone())
                        .client_ca_root(t.ca.clone())
                        .timeout(Duration::from_secs(10)),
                )
                .map_err(|e| SecurityError::Tls(format!("{e}"))),
        }
    }

    /// The interceptor that checks incoming calls.
    pub fn server_auth(&self) -> ServerAuth {
        ServerAuth {
            secret: self.secret.clone(),
            refused: self.refused.clone(),
            warn: self.warn.clone(),
        }
    }
}

/// A gRPC channel whose calls carry the cluster proof.
pub type AuthChannel = InterceptedService<Transport, ClientAuth>;

/// Environment variable choosing the transport of node calls: `http2` turns the framed
/// transport off (to compare the two, or to rule it out).
pub const TRANSPORT_ENV: &str = "SEALFS_TRANSPORT";

fn framed_allowed() -> bool {
    std::env::var(TRANSPORT_ENV).map(|v| v != "http2").unwrap_or(true)
}

/// How a channel carries calls: HTTP/2 (tonic's channel; always with TLS) or framed.
#[derive(Clone)]
pub enum Transport {
    /// tonic's HTTP/2 channel.
    Http2(Channel),
    /// The framed transport of [`crate::framed`].
    Framed(FramedChannel),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Request<tonic::body::Body>> for Transport {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<http::Response<tonic::body::Body>, BoxError>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        match self {
            Transport::Http2(c) => c.poll_ready(cx).map_err(Into::into),
            Transport::Framed(f) => f.poll_ready(cx),
        }
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        match self {
            Transport::Http2(c) => {
                if req.extensions().get::<crate::attach::Attachment>().is_some() {
                    // HTTP/2 carries no attachment: it goes into the message it stands for.
                    // A clone has no slot of its own in the channel's buffer until it is ready.
                    let mut c = c.clone();
                    return Box::pin(async move {
                        let req = inline_attachment(req).await?;
                        std::future::poll_fn(|cx| c.poll_ready(cx)).await?;
                        c.call(req).await.map_err(Into::into)
                    });
                }
                let fut = c.call(req);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
            Transport::Framed(f) => f.call(req),
        }
    }
}

/// `req` with the [`crate::attach::Attachment`] in its extensions appended to its body as the
/// field it stands for.
async fn inline_attachment(
    req: http::Request<tonic::body::Body>,
) -> Result<http::Request<tonic::body::Body>, BoxError> {
    use http_body_util::BodyExt;
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let (body, _) = crate::attach::place(body, parts.extensions.remove::<crate::attach::Attachment>(), false)?;
    Ok(http::Request::from_parts(
        parts,
        tonic::body::Body::new(http_body_util::Full::new(body)),
    ))
}

/// The metadata key naming the calling process (a random id each process draws), so a node can
/// leave a caller's own changes out of the change stream it sends that caller.
pub const CLIENT_HEADER: &str = "x-sealfs-client";

tokio::task_local! {
    /// The process whose request is being served on this task (from its `x-sealfs-client`
    /// header). Calls a node makes while serving it carry it on.
    pub static ORIGIN: u64;
}

/// This process's client id (random, drawn once, never 0).
pub fn process_client_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| rand::random::<u64>() | 1)
}

/// The process whose request this task serves, if it serves one.
pub fn current_origin() -> Option<u64> {
    ORIGIN.try_with(|o| *o).ok()
}

/// A server's service whose calls each run in the scope of their caller's [`ORIGIN`].
#[derive(Clone)]
pub struct WithOrigin<S>(pub S);

impl<S, B> tower_service::Service<http::Request<B>> for WithOrigin<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let origin = req
            .headers()
            .get(CLIENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Box::pin(ORIGIN.scope(origin, self.0.call(req)))
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for WithOrigin<S> {
    const NAME: &'static str = S::NAME;
}

/// Adds the caller's id and the proof to each outgoing call (the proof recomputed once a second,
/// not per call).
#[derive(Clone)]
pub struct ClientAuth {
    secret: Option<Secret>,
    cached: Arc<Mutex<Option<CachedToken>>>,
}

/// The proof of one second: (unix seconds, header value).
type CachedToken = (u64, MetadataValue<Ascii>);

impl Interceptor for ClientAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let origin = current_origin().unwrap_or_else(process_client_id);
        req.metadata_mut().insert(CLIENT_HEADER, MetadataValue::from(origin));
        let Some(secret) = &self.secret else {
            return Ok(req);
        };
        let now = now_secs();
        let value = {
            let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
            match &*c {
                Some((t, v)) if *t == now => v.clone(),
                _ => {
                    let v: MetadataValue<Ascii> = secret.token(now).parse().expect("token is ASCII");
                    *c = Some((now, v.clone()));
                    v
                }
            }
        };
        req.metadata_mut().insert(AUTH_HEADER, value);
        Ok(req)
    }
}

/// Refuses incoming calls that lack a valid proof, counting them and logging why (at most one
/// line per 10 s).
#[derive(Clone)]
pub struct ServerAuth {
    secret: Option<Secret>,
    refused: Arc<AtomicU64>,
    warn: Arc<LogGate>,
}

impl Interceptor for ServerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(secret) = &self.secret else {
            return Ok(req);
        };
        let now = now_secs();
        let why = match req.metadata().get(AUTH_HEADER).map(|v| v.to_str()) {
            None => "no cluster credentials",
            Some(Err(_)) => "malformed cluster credentials",
            Some(Ok(token)) => match secret.verify(token, now) {
                Ok(()) => return Ok(req),
                Err(why) => why,
            },
        };
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if self.warn.open(WARN_EVERY_SECS) {
            let peer = req
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unknown".into());
            warn!(%peer, refused_total = n, "refused a call: {why}");
        }
        Err(Status::unauthenticated(format!("refused: {why}")))
    }
}

/// Log (at most once per 10 s per process) that the cluster refused this process's calls, so a
/// misconfigured client says why it cannot work.
pub fn note_refused(s: &Status) {
    static GATE: LogGate = LogGate::new();
    if GATE.open(WARN_EVERY_SECS) {
        warn!(
            "the cluster refused this process's call ({}): check the cluster secret (secret_file / SEALFS_SECRET)",
            s.message()
        );
    }
}

/// Security flags every sealfs binary takes (each also an environment variable).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecurityArgs {
    /// File holding the cluster secret (or put the secret itself in SEALFS_SECRET).
    #[arg(long, env = "SEALFS_SECRET_FILE", global = true)]
    pub secret_file: Option<String>,
    /// Run without a cluster secret (calls are neither signed nor checked).
    #[arg(long, env = "SEALFS_INSECURE", global = true)]
    pub insecure: bool,
    /// This process's TLS certificate (PEM); with --tls-key and --tls-ca turns TLS on.
    #[arg(long, env = "SEALFS_TLS_CERT", global = true)]
    pub tls_cert: Option<String>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SEALFS_TLS_KEY", global = true)]
    pub tls_key: Option<String>,
    /// The cluster CA certificate (PEM).
    #[arg(long, env = "SEALFS_TLS_CA", global = true)]
    pub tls_ca: Option<String>,
    /// The name cluster certificates carry (default "sealfs").
    #[arg(long, env = "SEALFS_TLS_DOMAIN", global = true)]
    pub tls_domain: Option<String>,
}

impl SecurityArgs {
    /// Overlay the flags that were given on `cfg`.
    pub fn apply(self, cfg: &mut SecurityConfig) {
        if let Some(v) = self.secret_file {
            cfg.secret_file = Some(v);
        }
        cfg.insecure |= self.insecure;
        if let Some(v) = self.tls_cert {
            cfg.tls_cert = Some(v);
        }
        if let Some(v) = self.tls_key {
            cfg.tls_key = Some(v);
        }
        if let Some(v) = self.tls_ca {
            cfg.tls_ca = Some(v);
        }
        if let Some(v) = self.tls_domain {
            cfg.tls_domain = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_refusals() {
        let s = Secret::new("0123456789abcdef-cluster").unwrap();
        let t = s.token(1000);
        assert!(t.starts_with("v1.1000."));
        assert_eq!(s.verify(&t, 1000), Ok(()));
        assert_eq!(s.verify(&t, 1000 + MAX_CLOCK_SKEW_SECS), Ok(()));
        assert!(s
            .verify(&t, 1001 + MAX_CLOCK_SKEW_SECS)
            .unwrap_err()
            .contains("out of date"));
        let other = Secret::new("another secret of the cluster").unwrap();
        assert_eq!(other.verify(&t, 1000), Err("wrong cluster secret"));
        // A proof for one second does not pass for another.
        let forged = t.replace("v1.1000.", "v1.1001.");
        assert_eq!(s.verify(&forged, 1000), Err("wrong cluster secret"));
        for bad in [
            "",
            "v1",
            "v1.x.y",
            "v2.1000.00",
            "v1.1000.zz",
            "v1.99999999999999999999.00",
        ] {
            assert!(s.verify(bad, 1000).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn secrets_are_checked_and_redacted() {
        assert!(matches!(Secret::new(" short \n"), Err(SecurityError::ShortSecret)));
        let s = Secret::new("0123456789abcdef\n").unwrap();
        assert_eq!(s.verify(&Secret::new("0123456789abcdef").unwrap().token(5), 5), Ok(()));
        assert!(!format!("{s:?}").contains("0123"));
        let g = Secret::generate();
        assert_eq!(g.len(), 64);
        assert_ne!(g, Secret::generate());
    }

    #[test]
    fn server_refuses_and_counts() {
        let sec = Security {
            secret: Some(Secret::new("0123456789abcdef").unwrap()),
            ..Security::insecure()
        };
        let mut server = sec.server_auth();
        assert!(server.call(Request::new(())).is_err());
        let mut wrong = Security {
            secret: Some(Secret::new("fedcba9876543210").unwrap()),
            ..Security::insecure()
        }
        .client_auth();
        let e = server.call(wrong.call(Request::new(())).unwrap()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("wrong cluster secret"));
        let mut right = sec.client_auth();
        server.call(right.call(Request::new(())).unwrap()).unwrap();
        assert_eq!(sec.refused(), 2);
        // An insecure server takes anything.
        Security::insecure().server_auth().call(Request::new(())).unwrap();
    }
}
