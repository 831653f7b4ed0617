//! A TCP fault proxy between Kafka clients and one broker: latency, a
//! bandwidth limit, refused or cut connections, a connection cut at a chosen
//! request, and corrupted response bytes.
//!
//! Every harness node has a second plaintext listener (`PROXIED`) that
//! advertises the port [`FaultProxy::start`] listens on, so a client that
//! bootstraps through the proxy gets the proxy's address back in every
//! Metadata response and stays behind it. The proxy reads whole Kafka frames
//! (a 4-byte length, then the frame) in each direction, which is what lets
//! it act on a given request or response; it never changes a frame unless
//! told to. Plain threads and blocking sockets: no runtime to share with
//! the test.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::{HarnessError, KafkaCluster};

/// When a connection is cut at a request (see [`FaultProxy::cut_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The request never reaches the broker.
    BeforeRequest,
    /// The request reaches the broker, which answers; the connection is cut
    /// in place of the answer (an ambiguous outcome: done, but not known
    /// to be).
    AfterRequest,
}

#[derive(Debug, Default)]
struct Faults {
    latency: Duration,
    bytes_per_sec: Option<u64>,
    refuse: bool,
    /// One-shot: cut the connection carrying the next request with this API key.
    cut: Option<(i16, Cut)>,
    /// Flip a byte of the next responses to this API key whose frame is
    /// at least `min_len` long, `from_end` bytes before its end; how many
    /// more times.
    corrupt: Option<(i16, usize, usize, u32)>,
}

#[derive(Debug, Default)]
struct Shared {
    faults: Mutex<Faults>,
    /// Open connections: the client and broker sockets of each, to cut.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    /// Requests forwarded, by API key.
    seen: Mutex<HashMap<i16, usize>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
    /// Connections accepted in all.
    accepted: AtomicU64,
    /// Responses corrupted in all.
    corrupted: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn cut(&self, id: u64) {
        if let Some((c, b)) = lock(&self.open).remove(&id) {
            let _ = c.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

/// A running fault proxy; it stops, and cuts what it carries, when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    shared: Arc<Shared>,
    listen: SocketAddr,
    upstream: SocketAddr,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts the proxy for node `n` (1-based) of a harness cluster, on the
    /// port that node's `PROXIED` listener advertises. Clients given
    /// [`bootstrap`](Self::bootstrap) reach that node only through the
    /// proxy. One proxy per node at a time: the port is the node's.
    pub fn start(cluster: &KafkaCluster, n: usize) -> Result<Self, HarnessError> {
        let (listen, upstream) = cluster.proxy_ports(n).ok_or(HarnessError::NotSteerable(
            "this cluster has no proxied listener (started by an older harness, or not a harness cluster)",
        ))?;
        Self::start_on(listen, SocketAddr::from(([127, 0, 0, 1], upstream))).map_err(|source| {
            HarnessError::Spawn {
                command: format!("fault proxy on 127.0.0.1:{listen}"),
                source,
            }
        })
    }

    /// Starts a proxy on `127.0.0.1:listen` that forwards to `upstream`.
    pub fn start_on(listen: u16, upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", listen))?;
        let listen = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", listen.port()))
            .spawn(move || accept_loop(&listener, upstream, &s))?;
        Ok(Self {
            shared,
            listen,
            upstream,
            acceptor: Some(acceptor),
        })
    }

    /// `host:port` of the proxy, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.listen.to_string()
    }

    /// Where the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Delays every frame, in both directions, by `d` (zero: none).
    pub fn set_latency(&self, d: Duration) {
        lock(&self.shared.faults).latency = d;
    }

    /// Limits each direction of each connection to `bytes_per_sec`
    /// (`None`: no limit).
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        lock(&self.shared.faults).bytes_per_sec = bytes_per_sec;
    }

    /// While `true`, new connections are accepted and closed at once and
    /// open ones are cut: the broker looks unreachable.
    pub fn set_refusing(&self, refuse: bool) {
        lock(&self.shared.faults).refuse = refuse;
        if refuse {
            self.cut_all();
        }
    }

    /// Cuts every open connection now.
    pub fn cut_all(&self) {
        let ids: Vec<u64> = lock(&self.shared.open).keys().copied().collect();
        for id in ids {
            self.shared.cut(id);
        }
    }

    /// Cuts the connection that carries the next request with `api_key`,
    /// before or after forwarding it. Once.
    pub fn cut_at(&self, api_key: i16, when: Cut) {
        lock(&self.shared.faults).cut = Some((api_key, when));
    }

    /// Flips every bit of one byte, `from_end` bytes before the end of the
    /// next response to `api_key` whose frame is at least `min_len` bytes
    /// long. Once. (The last bytes of a Fetch response are its tagged
    /// fields; a few more back lie in the last partition's records.)
    pub fn corrupt_response(&self, api_key: i16, min_len: usize, from_end: usize) {
        self.corrupt_responses(api_key, min_len, from_end, 1);
    }

    /// [`corrupt_response`](Self::corrupt_response) for the next `times`
    /// such responses.
    pub fn corrupt_responses(&self, api_key: i16, min_len: usize, from_end: usize, times: u32) {
        lock(&self.shared.faults).corrupt =
            (times > 0).then_some((api_key, min_len, from_end, times));
    }

    /// Responses corrupted so far.
    pub fn corrupted(&self) -> u64 {
        self.shared.corrupted.load(Ordering::Relaxed)
    }

    /// Whether a one-shot fault ([`cut_at`](Self::cut_at),
    /// [`corrupt_response`](Self::corrupt_response)) is still waiting for
    /// its request or response.
    pub fn pending(&self) -> bool {
        let f = lock(&self.shared.faults);
        f.cut.is_some() || f.corrupt.is_some()
    }

    /// Requests with `api_key` forwarded so far.
    pub fn requests(&self, api_key: i16) -> usize {
        lock(&self.shared.seen).get(&api_key).copied().unwrap_or(0)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.open).len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.listen, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        self.cut_all();
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        if lock(&shared.faults).refuse {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(broker) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = broker.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (Ok(c2), Ok(b2), Ok(c3), Ok(b3)) = (
            client.try_clone(),
            broker.try_clone(),
            client.try_clone(),
            broker.try_clone(),
        ) else {
            continue;
        };
        lock(&shared.open).insert(id, (c3, b3));
        // Correlation id -> API key of the requests this connection carried,
        // so that responses (which carry only the correlation id) are known.
        // The flag marks a request whose answer is to be replaced by a cut.
        let apis: Arc<Mutex<HashMap<i32, (i16, bool)>>> = Arc::default();
        let (s1, s2, a1, a2) = (shared.clone(), shared.clone(), apis.clone(), apis);
        let _ = std::thread::Builder::new()
            .name("fault-proxy-up".into())
            .spawn(move || {
                let _ = pump(client, broker, &s1, id, |frame, s| requests(frame, s, &a1));
                s1.cut(id);
            });
        let _ = std::thread::Builder::new()
            .name("fault-proxy-down".into())
            .spawn(move || {
                let _ = pump(b2, c2, &s2, id, |frame, s| responses(frame, s, &a2));
                s2.cut(id);
            });
    }
}

/// What to do with a frame.
enum Act {
    Forward,
    /// Cut the connection instead of forwarding it.
    Cut,
}

/// Copies whole frames from `from` to `to`, letting `inspect` act on each.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    shared: &Shared,
    id: u64,
    mut inspect: impl FnMut(&mut [u8], &Shared) -> Act,
) -> io::Result<()> {
    let mut frame = Vec::new();
    loop {
        let mut len = [0u8; 4];
        from.read_exact(&mut len)?;
        let n = i32::from_be_bytes(len);
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= 1 << 30)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad frame length"))?;
        frame.resize(4 + n, 0);
        frame[..4].copy_from_slice(&len);
        from.read_exact(&mut frame[4..])?;
        let act = inspect(&mut frame, shared);
        if matches!(act, Act::Cut) {
            shared.cut(id);
            return Ok(());
        }
        let (latency, bps) = {
            let f = lock(&shared.faults);
            (f.latency, f.bytes_per_sec)
        };
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        to.write_all(&frame)?;
        if let Some(bps) = bps.filter(|&b| b > 0) {
            std::thread::sleep(Duration::from_secs_f64(frame.len() as f64 / bps as f64));
        }
    }
}

/// A request: counted, its API remembered by correlation id, and the
/// connection cut if a cut waits for its API.
fn requests(frame: &mut [u8], shared: &Shared, apis: &Mutex<HashMap<i32, (i16, bool)>>) -> Act {
    let (Some(key), Some(corr)) = (
        frame.get(4..6).map(|b| i16::from_be_bytes([b[0], b[1]])),
        frame
            .get(8..12)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
    ) else {
        return Act::Forward;
    };
    let mut faults = lock(&shared.faults);
    let (act, cut_answer) = match faults.cut {
        Some((k, when)) if k == key => {
            faults.cut = None;
            match when {
                Cut::BeforeRequest => (Act::Cut, false),
                Cut::AfterRequest => (Act::Forward, true),
            }
        }
        _ => (Act::Forward, false),
    };
    drop(faults);
    lock(apis).insert(corr, (key, cut_answer));
    if !matches!(act, Act::Cut) {
        *lock(&shared.seen).entry(key).or_default() += 1;
    }
    act
}

/// A response: corrupted if a corruption waits for its API.
fn responses(frame: &mut [u8], shared: &Shared, apis: &Mutex<HashMap<i32, (i16, bool)>>) -> Act {
    let Some(corr) = frame
        .get(4..8)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return Act::Forward;
    };
    let Some((key, cut_answer)) = lock(apis).remove(&corr) else {
        return Act::Forward;
    };
    if cut_answer {
        return Act::Cut;
    }
    let mut faults = lock(&shared.faults);
    if let Some((k, min_len, from_end, times)) = faults.corrupt {
        if k == key && frame.len() >= min_len && from_end > 0 && from_end <= frame.len() - 8 {
            let at = frame.len() - from_end;
            frame[at] = !frame[at];
            faults.corrupt = (times > 1).then_some((k, min_len, from_end, times - 1));
            shared.corrupted.fetch_add(1, Ordering::Relaxed);
        }
    }
    Act::Forward
}
