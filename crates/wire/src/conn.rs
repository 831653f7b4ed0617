//! One pipelined connection to one broker.
//!
//! Requests are framed by the caller's task and handed to a writer task that
//! coalesces whatever is queued into one socket write; a reader task splits
//! response frames and completes each caller's future by correlation id. Many
//! requests can be in flight at once (Kafka answers them in order per
//! connection, but matching by id keeps us honest).
//!
//! The transport is any `AsyncRead + AsyncWrite` stream: plain TCP, or TLS
//! (rustls) over it when `security.protocol` is SSL or SASL_SSL. SASL
//! authentication follows ApiVersions (KIP-43, KIP-152), and again on the
//! live connection before the session the broker granted runs out
//! (KIP-368): while it re-authenticates, other requests are held back so
//! that nothing is written between its SASL requests.
//!
//! # Cancel safety
//!
//! Dropping a [`Connection::call`] future before it completes is safe: the
//! request may still reach the broker, and its response is discarded.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, ProduceRequest, ProduceResponse,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::protocol::{
    api_name, encode_request, read_response_header, split_frame, BrokerVersions, ErrorCode,
};
use crate::{Error, Result};

type Reply = oneshot::Sender<Result<Bytes>>;

/// A framed request for the writer task; `written` is signalled once its
/// bytes are on the socket (for requests that get no response).
struct Outgoing {
    frame: BytesMut,
    /// The rest of a frame written in pieces (a Produce request's batches,
    /// sent from their own buffers).
    tail: Vec<Bytes>,
    written: Option<oneshot::Sender<()>>,
}

struct Pending {
    header_version: i16,
    reply: Reply,
    sent: Instant,
}

/// Requests held back while the connection re-authenticates.
#[derive(Default)]
struct Gate {
    closed: bool,
    held: Vec<Outgoing>,
}

struct Shared {
    addr: String,
    /// Present on SASL connections: closed while re-authenticating.
    gate: Option<Mutex<Gate>>,
    pending: Mutex<HashMap<i32, Pending>>,
    closed: AtomicBool,
    throttled_until: Mutex<Option<Instant>>,
    stats: Arc<crate::stats::BrokerStats>,
    /// Responses read on this connection.
    responses: std::sync::atomic::AtomicU64,
    /// `security.protocol` of this connection.
    protocol: crate::security::Protocol,
}

/// Why a connection closed, when it says more than "closed".
enum Closed {
    /// TLS failed (a broker that refused our certificate says so only
    /// after the handshake, in TLS 1.3), or the broker speaks TLS and we
    /// do not.
    Tls(String),
    /// The broker hung up on our first request after ApiVersions: its
    /// listener wants SASL and we sent none.
    NeedsSasl,
}

impl Shared {
    /// Marks the connection dead and fails every request in flight.
    fn close(&self) {
        self.close_because(None);
    }

    /// [`close`](Self::close), failing requests in flight with the error
    /// `why` names.
    fn close_because(&self, why: Option<Closed>) {
        self.closed.store(true, Ordering::Release);
        let drained: Vec<Pending> = match self.pending.lock() {
            Ok(mut p) => p.drain().map(|(_, v)| v).collect(),
            Err(_) => Vec::new(),
        };
        self.stats.abandoned(drained.len());
        for p in drained {
            let _ = p.reply.send(Err(match &why {
                Some(Closed::Tls(reason)) => Error::Tls {
                    broker: self.addr.clone(),
                    reason: reason.clone(),
                },
                Some(Closed::NeedsSasl) => Error::Authentication {
                    broker: self.addr.clone(),
                    mechanism: crate::error::NO_SASL,
                    message: format!(
                        "the broker closed the connection when sent a request without SASL authentication: its listener requires SASL (security.protocol is {:?}; set SASL_SSL or SASL_PLAINTEXT and sasl.mechanism)",
                        self.protocol
                    ),
                },
                None => Error::Disconnected {
                    broker: self.addr.clone(),
                },
            }));
        }
    }

    /// What an unexpected end of the connection means, judged by how far
    /// it got: only ApiVersions answered, on a connection without SASL, is
    /// a SASL listener refusing us.
    fn closed_by_broker(&self) -> Option<Closed> {
        let answered = self.responses.load(Ordering::Relaxed);
        (answered == 1 && !self.protocol.sasl()).then_some(Closed::NeedsSasl)
    }
}

/// A TLS record (an alert or handshake: content type 21 or 22, version
/// 3.x) where a Kafka response should start: the broker speaks TLS.
fn looks_like_tls(buf: &[u8]) -> bool {
    matches!(buf, [0x15 | 0x16, 0x03, ..])
}

/// A connection to one broker, shared by all users of that broker.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Outgoing>,
    next_id: Arc<AtomicI32>,
    versions: Arc<BrokerVersions>,
    client_id: StrBytes,
    request_timeout: Duration,
    tasks: Arc<TaskGuard>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.shared.addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Aborts the IO tasks when the last handle to a connection goes away.
#[derive(Default)]
struct TaskGuard(Mutex<Vec<tokio::task::AbortHandle>>);

impl TaskGuard {
    fn abort_all(&self) {
        if let Ok(tasks) = self.0.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.abort_all();
    }
}

/// Settings a connection needs.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// `client.id`.
    pub client_id: String,
    /// `request.timeout.ms`.
    pub request_timeout: Duration,
    /// `socket.connection.setup.timeout.ms`.
    pub connect_timeout: Duration,
    /// TLS and SASL.
    pub security: crate::security::Security,
}

impl Connection {
    /// Opens a TCP connection to `addr` (`host:port`) and negotiates API
    /// versions.
    pub async fn connect(addr: &str, opts: &ConnectionOptions) -> Result<Self> {
        let stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout {
                what: format!("connecting to {addr}"),
                after: opts.connect_timeout,
            })?
            .map_err(|source| Error::Io {
                broker: addr.to_owned(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = opts.security.tls_config() else {
            return Self::handshake(addr, stream, opts).await;
        };
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let name = crate::security::tls::server_name(host).map_err(|reason| Error::Tls {
            broker: addr.to_owned(),
            reason,
        })?;
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let stream = tokio::time::timeout(opts.connect_timeout, connector.connect(name, stream))
            .await
            .map_err(|_| Error::Timeout {
                what: format!("TLS handshake with {addr}"),
                after: opts.connect_timeout,
            })?
            .map_err(|e| tls_error(addr, e))?;
        Self::handshake(addr, stream, opts).await
    }

    /// Starts the IO tasks over an established stream and sends ApiVersions.
    pub async fn handshake<S>(addr: &str, stream: S, opts: &ConnectionOptions) -> Result<Self>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        let shared = Arc::new(Shared {
            addr: addr.to_owned(),
            gate: opts
                .security
                .sasl
                .as_ref()
                .map(|_| Mutex::new(Gate::default())),
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            throttled_until: Mutex::new(None),
            stats: crate::stats::for_broker(addr),
            responses: std::sync::atomic::AtomicU64::new(0),
            protocol: opts.security.protocol,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(wr, rx, shared.clone()));
        let reader = tokio::spawn(read_loop(rd, shared.clone()));
        let mut conn = Self {
            shared,
            tx,
            next_id: Arc::new(AtomicI32::new(0)),
            versions: Arc::new(BrokerVersions::default()),
            client_id: StrBytes::from_string(opts.client_id.clone()),
            request_timeout: opts.request_timeout,
            tasks: Arc::new(TaskGuard(Mutex::new(vec![
                writer.abort_handle(),
                reader.abort_handle(),
            ]))),
        };
        conn.versions = Arc::new(conn.api_versions().await?);
        if let Some(sasl) = &opts.security.sasl {
            let lifetime = conn.authenticate(sasl, false).await?;
            if !lifetime.is_zero() {
                // The task holds a handle without the guard, so that the
                // connection still goes away when its users drop it.
                let handle = Self {
                    tasks: Arc::new(TaskGuard::default()),
                    ..conn.clone()
                };
                let task = tokio::spawn(reauthenticate(handle, sasl.clone(), lifetime));
                if let Ok(mut tasks) = conn.tasks.0.lock() {
                    tasks.push(task.abort_handle());
                }
            }
        }
        Ok(conn)
    }

    /// SASL authentication (KIP-43, KIP-152): SaslHandshake names the
    /// mechanism, SaslAuthenticate requests carry its messages. `again`
    /// marks a KIP-368 re-authentication of a connection in use: other
    /// requests are held back until it ends. Returns the session lifetime
    /// the broker granted (zero: no limit).
    async fn authenticate(
        &self,
        sasl: &crate::security::SaslSettings,
        again: bool,
    ) -> Result<Duration> {
        if again {
            self.set_gate(true);
        }
        let res = self.sasl_exchange(sasl).await;
        if again {
            self.set_gate(false);
        }
        if res.is_ok() {
            self.shared.stats.authenticated(again);
        }
        res
    }

    async fn sasl_exchange(&self, sasl: &crate::security::SaslSettings) -> Result<Duration> {
        use crate::security::sasl::{Exchange, Step};
        let mechanism = sasl.mechanism.name();
        let refused = |message: String| Error::Authentication {
            broker: self.shared.addr.clone(),
            mechanism,
            message,
        };
        let hs =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
        let resp: SaslHandshakeResponse = self.call_direct(&hs, 1).await?;
        let code = ErrorCode(resp.error_code);
        if code == ErrorCode::UNSUPPORTED_SASL_MECHANISM {
            let enabled: Vec<&str> = resp.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(refused(format!(
                "the broker does not enable {mechanism} on this listener (it enables: {})",
                enabled.join(", ")
            )));
        }
        if !code.is_ok() {
            return Err(refused(format!("SaslHandshake: {code}")));
        }
        let (mut exchange, mut message) = Exchange::start(sasl);
        loop {
            let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(message));
            let resp: SaslAuthenticateResponse = self.call_direct(&req, 2).await?;
            let code = ErrorCode(resp.error_code);
            if !code.is_ok() {
                let mut why = resp
                    .error_message
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| code.to_string());
                if let Some(detail) = exchange.refusal() {
                    why = format!("{why} ({detail})");
                }
                return Err(refused(why));
            }
            match exchange.step(&resp.auth_bytes) {
                Ok(Step::Send(next)) => message = next,
                Ok(Step::Done) => {
                    return Ok(Duration::from_millis(
                        u64::try_from(resp.session_lifetime_ms).unwrap_or(0),
                    ))
                }
                Err(e) => return Err(refused(e.to_string())),
            }
        }
    }

    /// Sends a request past the re-authentication gate, at the negotiated
    /// version capped at `max_version`.
    async fn call_direct<R: Request>(&self, req: &R, max_version: i16) -> Result<R::Response> {
        let version = self.negotiated::<R>()?.min(max_version);
        let header_version = ApiKey::try_from(R::KEY)
            .map(|k| k.response_header_version(version))
            .unwrap_or(0);
        let rx = self.queue_frame(R::KEY, version, header_version, req, Some(true), None, true)?;
        let body = self.await_reply(R::KEY, rx).await?;
        self.decode::<R::Response>(body, R::KEY, version)
    }

    /// Closes the gate (requests are held) or opens it (held requests go
    /// out, in order).
    fn set_gate(&self, closed: bool) {
        let Some(gate) = &self.shared.gate else {
            return;
        };
        let Ok(mut g) = gate.lock() else {
            return;
        };
        g.closed = closed;
        if !closed {
            for out in g.held.drain(..) {
                if self.tx.send(out).is_err() {
                    self.shared.close();
                    break;
                }
            }
        }
    }

    /// ApiVersions: try v3; a broker that does not know it answers with
    /// UNSUPPORTED_VERSION and its own ranges, and we retry with v0.
    async fn api_versions(&self) -> Result<BrokerVersions> {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("faustus"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let mut version = 3;
        loop {
            let key = ApiKey::ApiVersions as i16;
            // ApiVersions responses always use header v0 (KIP-511).
            let body = self.send_raw(key, version, 0, &req, true).await?;
            let resp = self.decode::<ApiVersionsResponse>(body, key, version)?;
            let code = ErrorCode(resp.error_code);
            if code == ErrorCode::UNSUPPORTED_VERSION && version > 0 {
                version = 0;
                continue;
            }
            if !code.is_ok() {
                return Err(Error::server(code, None, "ApiVersions", None, None));
            }
            return Ok(BrokerVersions::new(
                resp.api_keys
                    .iter()
                    .map(|k| (k.api_key, k.min_version, k.max_version)),
            ));
        }
    }

    /// The broker's `host:port`.
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Whether the connection has failed or been closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Closes the connection, failing requests in flight.
    pub fn close(&self) {
        self.shared.close();
        self.tasks.abort_all();
    }

    /// The negotiated version for an API, if the broker and we share one.
    pub fn version_for(&self, api_key: i16) -> Option<i16> {
        self.versions.negotiate(api_key)
    }

    /// Honours a response's `throttle_time_ms` (KIP-219): requests on this
    /// connection wait until the throttle has passed.
    pub fn throttle(&self, throttle_time_ms: i32) {
        if throttle_time_ms <= 0 {
            return;
        }
        let until = Instant::now() + Duration::from_millis(throttle_time_ms as u64);
        if let Ok(mut t) = self.shared.throttled_until.lock() {
            *t = Some(t.map_or(until, |cur| cur.max(until)));
        }
    }

    /// Sends `req` with the negotiated version and waits for its response
    /// (up to `request.timeout.ms`).
    pub async fn call<R: Request>(&self, req: &R) -> Result<R::Response> {
        self.call_timeout(req, self.request_timeout).await
    }

    /// Like [`call`](Self::call), waiting up to `timeout` for the response
    /// instead of `request.timeout.ms` (JoinGroup blocks for up to the
    /// rebalance timeout).
    pub async fn call_timeout<R: Request>(
        &self,
        req: &R,
        timeout: Duration,
    ) -> Result<R::Response> {
        self.wait_throttle().await;
        let (version, rx) = self.queue_request(req)?;
        let body = self.await_reply_within(R::KEY, rx, timeout).await?;
        self.decode::<R::Response>(body, R::KEY, version)
    }

    /// Queues `req` at the negotiated version with the response header its
    /// version calls for.
    fn queue_request<R: Request>(
        &self,
        req: &R,
    ) -> Result<(i16, Option<oneshot::Receiver<Result<Bytes>>>)> {
        self.queue_request_at_most(req, i16::MAX)
    }

    fn queue_request_at_most<R: Request>(
        &self,
        req: &R,
        max_version: i16,
    ) -> Result<(i16, Option<oneshot::Receiver<Result<Bytes>>>)> {
        let version = self.negotiated::<R>()?.min(max_version);
        if self
            .versions
            .broker_range(R::KEY)
            .is_some_and(|(min, _)| version < min)
        {
            return Err(Error::UnsupportedVersion {
                api: api_name(R::KEY),
                broker: self.shared.addr.clone(),
            });
        }
        let header_version = ApiKey::try_from(R::KEY)
            .map(|k| k.response_header_version(version))
            .unwrap_or(0);
        Ok((
            version,
            self.queue(R::KEY, version, header_version, req, true)?,
        ))
    }

    /// Sends a request that gets no response (Produce with `acks=0`);
    /// returns once its bytes are written to the socket.
    pub async fn send_only<R: Request>(&self, req: &R) -> Result<()> {
        let version = self.negotiated::<R>()?;
        self.wait_throttle().await;
        let (written, done) = oneshot::channel();
        self.queue_frame(R::KEY, version, 0, req, None, Some(written), false)?;
        done.await.map_err(|_| Error::Disconnected {
            broker: self.shared.addr.clone(),
        })
    }

    fn negotiated<R: Request>(&self) -> Result<i16> {
        self.versions
            .negotiate(R::KEY)
            .ok_or_else(|| Error::UnsupportedVersion {
                api: api_name(R::KEY),
                broker: self.shared.addr.clone(),
            })
    }

    fn decode<T: Decodable>(&self, mut body: Bytes, api_key: i16, version: i16) -> Result<T> {
        let err = |reason: String| Error::Decode {
            api: api_name(api_key),
            broker: self.shared.addr.clone(),
            reason,
        };
        // A damaged count would make the decoder abort the process: the
        // Fetch response is walked first (protocol::guard), every other one
        // is decoded with its counts kept within its bytes
        // (protocol::bounded).
        if api_key == ApiKey::Fetch as i16 {
            crate::protocol::guard::fetch_response(&body, version).map_err(err)?;
            return T::decode(&mut body, version).map_err(|e| err(e.to_string()));
        }
        crate::protocol::bounded::decode(body, version).map_err(err)
    }

    /// Waits until a throttle set by [`throttle`](Self::throttle) has passed.
    pub async fn wait_throttle(&self) {
        let throttled = self.shared.throttled_until.lock().ok().and_then(|t| *t);
        if let Some(until) = throttled {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Queues `req` on the connection now, in call order, and returns a
    /// future for its response. Used where several requests must reach the
    /// broker in a known order (a partition's produce requests).
    pub fn enqueue<R: Request>(
        &self,
        req: &R,
    ) -> Result<impl Future<Output = Result<R::Response>> + Send + 'static> {
        self.enqueue_at_most(req, i16::MAX)
    }

    /// Like [`enqueue`](Self::enqueue), at version `max_version` or below
    /// (a transactional producer keeps Produce below v12, whose implicit
    /// partition registration belongs to KIP-890's transaction version 2).
    pub fn enqueue_at_most<R: Request>(
        &self,
        req: &R,
        max_version: i16,
    ) -> Result<impl Future<Output = Result<R::Response>> + Send + 'static> {
        let (version, rx) = self.queue_request_at_most(req, max_version)?;
        let this = self.clone();
        Ok(async move {
            let body = this.await_reply(R::KEY, rx).await?;
            this.decode::<R::Response>(body, R::KEY, version)
        })
    }

    /// [`enqueue_at_most`](Self::enqueue_at_most) for a Produce request:
    /// its record batches go to the socket from their own buffers, not
    /// copied into the frame ([`encode_produce`](crate::protocol::encode_produce)).
    pub fn enqueue_produce_at_most(
        &self,
        req: &ProduceRequest,
        max_version: i16,
    ) -> Result<impl Future<Output = Result<ProduceResponse>> + Send + 'static> {
        let version = self.negotiated::<ProduceRequest>()?.min(max_version);
        if self
            .versions
            .broker_range(ProduceRequest::KEY)
            .is_some_and(|(min, _)| version < min)
        {
            return Err(Error::UnsupportedVersion {
                api: api_name(ProduceRequest::KEY),
                broker: self.shared.addr.clone(),
            });
        }
        if self.is_closed() {
            return Err(Error::Disconnected {
                broker: self.shared.addr.clone(),
            });
        }
        let header_version = ApiKey::Produce.response_header_version(version);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) & i32::MAX;
        let pieces = crate::protocol::encode_produce(version, id, &self.client_id, req).map_err(
            |source| Error::Frame {
                broker: self.shared.addr.clone(),
                source,
            },
        )?;
        let rx = self.register_and_push(id, header_version, true, pieces, None, false)?;
        let this = self.clone();
        Ok(async move {
            let body = this.await_reply(ProduceRequest::KEY, rx).await?;
            this.decode::<ProduceResponse>(body, ProduceRequest::KEY, version)
        })
    }

    async fn send_raw<M: kafka_protocol::protocol::Encodable>(
        &self,
        api_key: i16,
        version: i16,
        header_version: i16,
        body: &M,
        expect_response: bool,
    ) -> Result<Bytes> {
        self.wait_throttle().await;
        let rx = self.queue(api_key, version, header_version, body, expect_response)?;
        self.await_reply(api_key, rx).await
    }

    /// Encodes and queues a request; returns the receiver for its response
    /// (none for requests that get no response).
    fn queue<M: kafka_protocol::protocol::Encodable>(
        &self,
        api_key: i16,
        version: i16,
        header_version: i16,
        body: &M,
        expect_response: bool,
    ) -> Result<Option<oneshot::Receiver<Result<Bytes>>>> {
        self.queue_frame(
            api_key,
            version,
            header_version,
            body,
            Some(expect_response),
            None,
            false,
        )
    }

    /// Encodes and queues a request. `expect_response` is `None` or
    /// `Some(false)` for requests without a response; `direct` requests
    /// pass the re-authentication gate.
    #[allow(clippy::too_many_arguments)]
    fn queue_frame<M: kafka_protocol::protocol::Encodable>(
        &self,
        api_key: i16,
        version: i16,
        header_version: i16,
        body: &M,
        expect_response: Option<bool>,
        written: Option<oneshot::Sender<()>>,
        direct: bool,
    ) -> Result<Option<oneshot::Receiver<Result<Bytes>>>> {
        let expect_response = expect_response.unwrap_or(false);
        if self.is_closed() {
            return Err(Error::Disconnected {
                broker: self.shared.addr.clone(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) & i32::MAX;
        let mut frame = BytesMut::new();
        encode_request(&mut frame, api_key, version, id, &self.client_id, body).map_err(
            |source| Error::Frame {
                broker: self.shared.addr.clone(),
                source,
            },
        )?;
        self.register_and_push(
            id,
            header_version,
            expect_response,
            crate::protocol::Pieces {
                head: frame,
                tail: Vec::new(),
            },
            written,
            direct,
        )
    }

    /// Registers request `id` for its response (when one is expected) and
    /// queues its frame for the writer.
    fn register_and_push(
        &self,
        id: i32,
        header_version: i16,
        expect_response: bool,
        frame: crate::protocol::Pieces,
        written: Option<oneshot::Sender<()>>,
        direct: bool,
    ) -> Result<Option<oneshot::Receiver<Result<Bytes>>>> {
        let rx = if expect_response {
            let (reply, rx) = oneshot::channel();
            if let Ok(mut p) = self.shared.pending.lock() {
                p.insert(
                    id,
                    Pending {
                        header_version,
                        reply,
                        sent: Instant::now(),
                    },
                );
                self.shared.stats.sent();
            }
            Some(rx)
        } else {
            None
        };
        self.push(frame, written, direct)?;
        Ok(rx)
    }

    fn push(
        &self,
        frame: crate::protocol::Pieces,
        written: Option<oneshot::Sender<()>>,
        direct: bool,
    ) -> Result<()> {
        let out = Outgoing {
            frame: frame.head,
            tail: frame.tail,
            written,
        };
        // On a SASL connection the check and the send happen under the
        // gate's lock, so a request is either out before a
        // re-authentication starts or held until it ends.
        let _gate = match (&self.shared.gate, direct) {
            (Some(gate), false) => {
                let mut g = gate.lock().map_err(|_| Error::Disconnected {
                    broker: self.shared.addr.clone(),
                })?;
                if g.closed {
                    g.held.push(out);
                    return Ok(());
                }
                Some(g)
            }
            _ => None,
        };
        if self.tx.send(out).is_err() {
            self.shared.close();
            return Err(Error::Disconnected {
                broker: self.shared.addr.clone(),
            });
        }
        Ok(())
    }

    async fn await_reply(
        &self,
        api_key: i16,
        rx: Option<oneshot::Receiver<Result<Bytes>>>,
    ) -> Result<Bytes> {
        self.await_reply_within(api_key, rx, self.request_timeout)
            .await
    }

    async fn await_reply_within(
        &self,
        api_key: i16,
        rx: Option<oneshot::Receiver<Result<Bytes>>>,
        timeout: Duration,
    ) -> Result<Bytes> {
        let Some(rx) = rx else {
            return Ok(Bytes::new());
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(Error::Disconnected {
                broker: self.shared.addr.clone(),
            }),
            Err(_) => {
                // As the Java client does: a timed-out request poisons the
                // connection, so later responses cannot be misattributed.
                self.close();
                Err(Error::Timeout {
                    what: format!("{} request to {}", api_name(api_key), self.shared.addr),
                    after: timeout,
                })
            }
        }
    }
}

/// KIP-368: re-authenticates at 85–95% of each session lifetime the broker
/// grants (the spread keeps a client's connections from doing it at once);
/// a failure closes the connection, which its users then open anew.
async fn reauthenticate(conn: Connection, sasl: crate::security::SaslSettings, first: Duration) {
    let mut lifetime = first;
    while !lifetime.is_zero() {
        let share = rand::random_range(0.85..0.95);
        tokio::time::sleep(lifetime.mul_f64(share)).await;
        if conn.is_closed() {
            return;
        }
        match conn.authenticate(&sasl, true).await {
            Ok(next) => {
                tracing::debug!(broker = %conn.addr(), lifetime = ?next, "re-authenticated");
                lifetime = next;
            }
            Err(e) => {
                tracing::warn!(broker = %conn.addr(), error = %e, "re-authentication failed, closing the connection");
                conn.shared.close();
                return;
            }
        }
    }
}

/// A failed TLS handshake: rustls' verdict as [`Error::Tls`], anything
/// else as the socket error it is.
fn tls_error(addr: &str, e: std::io::Error) -> Error {
    if is_rustls(&e) || e.kind() == std::io::ErrorKind::InvalidData {
        Error::Tls {
            broker: addr.to_owned(),
            reason: e.to_string(),
        }
    } else {
        Error::Io {
            broker: addr.to_owned(),
            source: e,
        }
    }
}

/// Whether a socket error is rustls' verdict (a refused certificate, a
/// protocol alert) rather than the socket's own.
fn is_rustls(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut written: Vec<oneshot::Sender<()>> = Vec::new();
    'frames: while let Some(first) = rx.recv().await {
        buf.clear();
        buf.unsplit(first.frame);
        written.extend(first.written);
        let mut queued = buf.len() + first.tail.iter().map(Bytes::len).sum::<usize>();
        let mut tails = vec![first.tail];
        // Coalesce what is already queued into one write, up to ~1 MiB.
        while queued < 1 << 20 {
            match rx.try_recv() {
                Ok(more) => {
                    queued += more.frame.len() + more.tail.iter().map(Bytes::len).sum::<usize>();
                    if tails.iter().all(Vec::is_empty) {
                        buf.extend_from_slice(&more.frame);
                    } else {
                        tails.push(vec![Bytes::from(more.frame)]);
                    }
                    tails.push(more.tail);
                    written.extend(more.written);
                }
                Err(_) => break,
            }
        }
        // Small pieces are gathered into `buf`; a large one (a batch) is
        // written from its own buffer once what precedes it is out.
        for piece in tails.into_iter().flatten() {
            if piece.len() < crate::protocol::SPLICE_MIN {
                buf.extend_from_slice(&piece);
                continue;
            }
            if (!buf.is_empty() && wr.write_all(&buf).await.is_err())
                || wr.write_all(&piece).await.is_err()
            {
                break 'frames;
            }
            buf.clear();
        }
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            break;
        }
        for w in written.drain(..) {
            let _ = w.send(());
        }
        buf = BytesMut::with_capacity(64 * 1024);
    }
    shared.close();
}

async fn read_loop<R: AsyncRead + Unpin>(mut rd: R, shared: Arc<Shared>) {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    loop {
        // A large frame (a fetch response) is read into a pooled buffer of
        // its own: growing `buf` for it would allocate fresh megabytes per
        // fetch, as the records of the last one are still borrowed.
        if let Some(len) = large_frame(&buf) {
            buf.advance(4);
            let mut body = crate::pool::take(len);
            body.extend_from_slice(&buf);
            buf.clear();
            while body.len() < len {
                let want = len - body.len();
                match rd.read_buf(&mut (&mut body).limit(want)).await {
                    Ok(0) | Err(_) => {
                        shared.close();
                        return;
                    }
                    Ok(_) => {}
                }
            }
            if !deliver(&shared, crate::pool::bytes(body)) {
                break;
            }
            continue;
        }
        match split_frame(&mut buf) {
            Ok(Some(frame)) => {
                if !deliver(&shared, frame.freeze()) {
                    break;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(broker = %shared.addr, error = %e, "bad response frame, closing connection");
                break;
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                shared.close_because(shared.closed_by_broker());
                return;
            }
            Err(e) => {
                shared.close_because(is_rustls(&e).then(|| Closed::Tls(e.to_string())));
                return;
            }
            Ok(_) => {}
        }
        if shared.responses.load(Ordering::Relaxed) == 0
            && !shared.protocol.tls()
            && looks_like_tls(&buf)
        {
            shared.close_because(Some(Closed::Tls(
                "the broker answered in TLS: its listener needs security.protocol=SSL or SASL_SSL"
                    .into(),
            )));
            return;
        }
    }
    shared.close();
}

/// The length of the frame `buf` begins, when it is a large one (at least
/// [`MIN_POOLED`](crate::pool::MIN_POOLED) bytes) not wholly in `buf` yet.
/// Bad lengths are left to [`split_frame`].
fn large_frame(buf: &BytesMut) -> Option<usize> {
    let head: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    let len = usize::try_from(i32::from_be_bytes(head)).ok()?;
    ((crate::pool::MIN_POOLED..=crate::protocol::MAX_FRAME).contains(&len) && buf.len() < 4 + len)
        .then_some(len)
}

/// Hands a response frame to the request waiting for it; false when the
/// frame is too short to be one (the connection is closed).
fn deliver(shared: &Shared, mut frame: Bytes) -> bool {
    if frame.len() < 4 {
        return false;
    }
    let id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let pending = shared.pending.lock().ok().and_then(|mut p| p.remove(&id));
    let Some(p) = pending else {
        // A response to a request whose caller timed out: drop it.
        return true;
    };
    shared.stats.answered(p.sent.elapsed());
    shared.responses.fetch_add(1, Ordering::Relaxed);
    let res = read_response_header(&mut frame, p.header_version)
        .map(|_| frame)
        .map_err(|source| Error::Frame {
            broker: shared.addr.clone(),
            source,
        });
    let _ = p.reply.send(res);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(len: usize, have: usize) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&i32::try_from(len).expect("len").to_be_bytes());
        b.extend_from_slice(&vec![0u8; have]);
        b
    }

    #[test]
    fn only_large_frames_not_yet_read_whole_go_to_a_pooled_buffer() {
        let big = crate::pool::MIN_POOLED;
        assert_eq!(large_frame(&framed(big, 10)), Some(big));
        assert_eq!(large_frame(&framed(big, 0)), Some(big));
        // Whole already, small, or not even a length yet: split as usual.
        assert_eq!(large_frame(&framed(big, big)), None);
        assert_eq!(large_frame(&framed(big - 1, 0)), None);
        assert_eq!(large_frame(&BytesMut::from(&[0u8, 1][..])), None);
        // A bad length is split_frame's to refuse.
        let mut bad = BytesMut::new();
        bad.extend_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(large_frame(&bad), None);
    }
}
