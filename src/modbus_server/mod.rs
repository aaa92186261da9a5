//! The Modbus TCP server a PLC, HMI or older SCADA polls the gateway through: its socket and
//! connections outlive a reload; each request is answered from the gateway attached now.
//!
//! Our own framing, not tokio-modbus's server: its request decoder indexes past the data of an
//! FC 15 whose count exceeds its bytes (a panic a client can trigger, tokio-modbus #298), its
//! accept loop ends on the first accept error (too many open files ends the server), and a
//! framed but malformed request closes the connection instead of earning exception 03.

mod answer;

pub use answer::Attached;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::log_limit::{suppressed, LogLimit};
use crate::modbus::frame::mbap_frame;
use crate::modbus::request::TARGET_FAILED;

/// A connection with no request for this long is closed (a master that went away without a
/// FIN holds a place otherwise).
const IDLE: Duration = Duration::from_secs(600);
/// A frame begun must arrive whole within this, and an answer must leave within it.
const FRAME: Duration = Duration::from_secs(5);
/// How long a request waits for the next gateway during a reload.
const RELOAD_WAIT: Duration = Duration::from_secs(10);
/// The longest MBAP length field: unit id + a 253-byte PDU.
const MAX_LEN: usize = 254;

/// What every connection shares: the gateway attached now, and how many are open.
struct Inner {
    attached: watch::Sender<Option<Arc<Attached>>>,
    connections: AtomicUsize,
}

impl Inner {
    fn attached(&self) -> Option<Arc<Attached>> {
        self.attached.borrow().clone()
    }

    /// Publishes the open connections to the attached gateway's metrics.
    fn publish(&self) {
        if let Some(a) = self.attached() {
            a.metrics
                .modbus_server
                .connections
                .store(self.connections.load(Relaxed) as u64, Relaxed);
        }
    }

    fn count(&self, f: impl FnOnce(&crate::metrics::modbus_server::ModbusServer)) {
        if let Some(a) = self.attached() {
            f(&a.metrics.modbus_server);
        }
    }
}

/// An open place, given back when its connection ends.
struct Place(Arc<Inner>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Relaxed);
        self.0.publish();
    }
}

/// The running server; a reload that leaves `listen` as it was keeps it, its connections open.
pub struct Server {
    listen: SocketAddr,
    local: SocketAddr,
    inner: Arc<Inner>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// The server's socket, bound as a start opens what can fail; `None` while it is off.
pub fn bind(config: &Config) -> std::io::Result<Option<std::net::TcpListener>> {
    let s = &config.modbus_server;
    if !s.enabled {
        return Ok(None);
    }
    let listener = std::net::TcpListener::bind(s.listen)?;
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

impl Server {
    /// Serves `listener` (bound for `listen`); requests wait for [`Server::attach`].
    pub fn start(listener: std::net::TcpListener, listen: SocketAddr) -> std::io::Result<Server> {
        let local = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let inner = Arc::new(Inner {
            attached: watch::channel(None).0,
            connections: AtomicUsize::new(0),
        });
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        tasks.spawn(accept(
            listener,
            inner.clone(),
            cancel.clone(),
            tasks.clone(),
        ));
        tracing::info!("Modbus TCP server on {local}");
        Ok(Server {
            listen,
            local,
            inner,
            cancel,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Answers from `attached`'s gateway from now on.
    pub fn attach(&self, attached: Attached) {
        attached.metrics.modbus_server.enabled.store(true, Relaxed);
        self.inner.attached.send_replace(Some(Arc::new(attached)));
        self.inner.publish();
    }

    /// The server for the next gateway when it listens on the same address (requests wait for
    /// it meanwhile); else this one stops.
    pub async fn into_reload(self, new: &Config) -> Option<Server> {
        let s = &new.modbus_server;
        // Port 0 asked for any port: the one it got is the same listen too.
        if s.enabled && (s.listen == self.listen || s.listen == self.local) {
            self.inner.attached.send_replace(None);
            Some(self)
        } else {
            self.stop().await;
            None
        }
    }

    /// Closes the socket and every connection, and waits for them.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Accepts connections until cancelled; an accept error (no file descriptors left) pauses it
/// instead of ending it.
async fn accept(
    listener: tokio::net::TcpListener,
    inner: Arc<Inner>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let accept_log = LogLimit::new(Duration::from_secs(60));
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, say: pause instead of spin, one line a minute.
                if let Some(held) = accept_log.allow(()) {
                    tracing::warn!("Modbus server: cannot accept: {e}{}", suppressed(held));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(place) = admit(&inner, peer) else {
            continue;
        };
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let served = serve(stream, peer, &place.0);
            if cancel.run_until_cancelled(served).await == Some(Closed::Garbage) {
                place.0.count(|m| {
                    m.closed_garbage.fetch_add(1, Relaxed);
                });
            }
        });
    }
}

/// A place for `peer`, when the attached config lists it and a place is free; else it is
/// closed here and counted.
fn admit(inner: &Arc<Inner>, peer: SocketAddr) -> Option<Place> {
    let a = inner.attached();
    let server = a.as_ref().map(|a| &a.config.modbus_server);
    if server.is_some_and(|s| !s.allows(peer.ip())) {
        inner.count(|m| {
            m.refused_not_allowed.fetch_add(1, Relaxed);
        });
        tracing::debug!(%peer, "Modbus server: client not in allowed_clients, closed");
        return None;
    }
    // Between two gateways the previous limit holds (a reload keeps the server only for the
    // same `listen`); with none yet, the default's.
    let max = server.map_or(16, |s| s.max_connections);
    if inner.connections.fetch_add(1, Relaxed) >= max {
        inner.connections.fetch_sub(1, Relaxed);
        inner.count(|m| {
            m.refused_full.fetch_add(1, Relaxed);
        });
        tracing::debug!(%peer, "Modbus server: max_connections reached, closed");
        return None;
    }
    inner.publish();
    Some(Place(inner.clone()))
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Closed {
    /// The client closed it, went quiet past [`IDLE`], or is no longer allowed.
    Done,
    /// Not Modbus TCP: a wrong protocol id or length, half a frame left hanging.
    Garbage,
}

/// A request-rate limit: a bucket of one second's requests, refilled as time passes.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Waits until the next request may go.
    async fn take(&mut self, rate: u32) {
        let rate = f64::from(rate);
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate)
            .min(rate)
            .max(0.0);
        self.rate = rate;
        self.at = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / rate);
            tokio::time::sleep(wait).await;
            self.at = Instant::now();
            self.tokens = 1.0;
        }
        self.tokens -= 1.0;
    }
}

/// One client's requests, answered in order until it closes or misbehaves. Public for the
/// fuzz test, which feeds it any bytes over an in-memory stream.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    server: &Server,
) -> bool {
    serve(stream, peer, &server.inner).await == Closed::Done
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    inner: &Inner,
) -> Closed {
    let mut rx = inner.attached.subscribe();
    let mut stream = BufReader::with_capacity(1024, stream);
    let mut bucket = Bucket {
        rate: 1.0,
        tokens: f64::MAX,
        at: Instant::now(),
    };
    let mut frame = [0u8; 7 + MAX_LEN];
    loop {
        match timeout(IDLE, stream.fill_buf()).await {
            Ok(Ok(b)) if !b.is_empty() => {}
            _ => return Closed::Done,
        }
        let Ok(Ok(_)) = timeout(FRAME, stream.read_exact(&mut frame[..7])).await else {
            return Closed::Garbage;
        };
        let (tid, protocol) = (be16(&frame, 0), be16(&frame, 2));
        let (len, unit) = (usize::from(be16(&frame, 4)), frame[6]);
        if protocol != 0 || !(2..=MAX_LEN).contains(&len) {
            return Closed::Garbage;
        }
        let pdu = &mut frame[7..7 + len - 1];
        let Ok(Ok(_)) = timeout(FRAME, stream.read_exact(pdu)).await else {
            return Closed::Garbage;
        };
        let attached = match timeout(RELOAD_WAIT, rx.wait_for(Option::is_some)).await {
            Ok(Ok(a)) => a.clone(),
            _ => None,
        };
        let reply = match &attached {
            Some(a) if !a.config.modbus_server.allows(peer.ip()) => return Closed::Done,
            Some(a) => {
                bucket.take(a.config.modbus_server.max_requests_per_s).await;
                a.answer(unit, pdu, peer).await
            }
            None => crate::modbus::request::exception(pdu[0], TARGET_FAILED),
        };
        let out = mbap_frame(tid, unit, &reply);
        let sent = timeout(FRAME, stream.get_mut().write_all(&out)).await;
        if !matches!(sent, Ok(Ok(()))) {
            return Closed::Done;
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket lets a second's worth through at once, then one request per 1/rate.
    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_lets_a_burst_through_then_spaces_requests() {
        let mut b = Bucket {
            rate: 1.0,
            tokens: f64::MAX,
            at: Instant::now(),
        };
        let t0 = Instant::now();
        for _ in 0..10 {
            b.take(10).await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "the burst waits for nothing");
        for _ in 0..20 {
            b.take(10).await;
        }
        let spent = t0.elapsed().as_secs_f64();
        assert!((1.9..2.1).contains(&spent), "20 more at 10/s: {spent} s");
    }
}
