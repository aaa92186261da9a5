//! A connection's outgoing side: one task owns the socket's write half and frames what it sends
//! itself, each push written straight from the hub's shared buffer (no copy per client).
//!
//! Why not tungstenite's writer: it formats every message into the connection's own buffer
//! and keeps that buffer at the largest message sent, so a 178 KB snapshot to 1,000 clients is
//! 178 MB copied per snapshot and 178 MB kept. Server frames are unmasked, so a frame is a
//! header of 2 to 10 bytes in front of bytes the hub already holds.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::socket::WriteIo;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::{Bytes, Utf8Bytes};

use super::hub::Client;
use super::MIN_SNAPSHOT_PERIOD;

/// What the connection's other tasks hand the writer.
pub enum Out {
    /// A reply to a request, or an error for a frame that could not be served.
    Text(Utf8Bytes),
    /// The close frame with this code and reason; the writer stops after it.
    Close(u16, &'static str),
    /// Whole frames tungstenite wrote while reading: a pong for a ping, the echo of a close.
    Raw(Bytes),
}

/// A payload up to this size is copied into the writer's buffer to go out with its neighbours
/// in one write; a larger one (a snapshot, a long reply) is written from its own buffer.
const INLINE: usize = 16 * 1024;

/// The socket's write half and the frames gathered for its next write.
struct Frames {
    socket: WriteIo,
    buf: Vec<u8>,
    /// How long one write may wait for the client to take bytes (the heartbeat timeout).
    limit: Duration,
    /// A write was cut off, possibly inside a frame: nothing more can be framed after it.
    broken: bool,
}

impl Frames {
    /// Adds one frame, writing what is gathered once it passes [`INLINE`] or before a large
    /// payload. False when the socket failed or the write was cut off.
    async fn put(&mut self, opcode: OpCode, payload: &[u8], kicked: &CancellationToken) -> bool {
        if self.broken {
            return false;
        }
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        if header.format(payload.len() as u64, &mut self.buf).is_err() {
            return false;
        }
        if payload.len() <= INLINE {
            self.buf.extend_from_slice(payload);
            return self.buf.len() < INLINE || self.flush(kicked).await;
        }
        self.flush(kicked).await && self.write(payload, kicked).await
    }

    /// Whole frames already encoded (tungstenite's pongs and close echoes).
    fn put_raw(&mut self, frames: &[u8]) {
        self.buf.extend_from_slice(frames);
    }

    /// Writes what is gathered.
    async fn flush(&mut self, kicked: &CancellationToken) -> bool {
        if self.broken {
            return false;
        }
        if self.buf.is_empty() {
            return true;
        }
        let buf = std::mem::take(&mut self.buf);
        let ok = self.write(&buf, kicked).await;
        self.buf = buf;
        self.buf.clear();
        ok
    }

    async fn write(&mut self, bytes: &[u8], kicked: &CancellationToken) -> bool {
        let ok = bounded(self.socket.write_all(bytes), self.limit, kicked).await;
        self.broken |= !ok;
        ok
    }

    /// One frame, written at once.
    async fn send(&mut self, opcode: OpCode, payload: &[u8], kicked: &CancellationToken) -> bool {
        self.put(opcode, payload, kicked).await && self.flush(kicked).await
    }
}

const TEXT: OpCode = OpCode::Data(Data::Text);
const CLOSE: OpCode = OpCode::Control(Control::Close);
const PING: OpCode = OpCode::Control(Control::Ping);

/// A close frame's payload: the code, then the reason (RFC 6455 §5.5.1).
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// Everything queued for the client goes into as few writes as it takes: under load a slow
/// client catches up in few writes instead of one per push. Counts each push sent (with its
/// latency) or dropped; returns false when the write failed or was cut off.
async fn write_queued(
    frames: &mut Frames,
    client: &Client,
    batch: &mut Vec<Written>,
    metrics: &crate::metrics::Metrics,
) -> bool {
    batch.clear();
    let mut ok = true;
    while let Some(p) = client.next() {
        batch.push((p.kind, p.priority, p.since));
        if !frames.put(TEXT, p.frame.as_bytes(), &client.kicked).await {
            ok = false;
            break;
        }
    }
    ok = ok && frames.flush(&client.kicked).await;
    for &(kind, priority, since) in batch.iter() {
        if ok {
            metrics.push.sent(kind);
            metrics.push.latency.observe(since.elapsed());
        } else {
            metrics.push.dropped(kind);
            if let Some(p) = priority {
                metrics.push.dropped_event(p);
            }
        }
    }
    let n = batch.len() as u64;
    if ok {
        client.sent.fetch_add(n, Relaxed);
        if client.queued() == 0 {
            client.caught_up();
        }
    } else {
        client.dropped.fetch_add(n, Relaxed);
    }
    ok
}

/// What one write handed to the socket, for the counters after its flush.
type Written = (
    crate::metrics::PushKind,
    Option<crate::config::Priority>,
    Instant,
);

/// Runs one write, giving up after `limit` or when the client is kicked: a client that cannot
/// take a frame in a heartbeat timeout is as good as gone, and must not hold its task forever.
/// Almost every write completes at its first poll, which is tried on its own first, so the
/// common case arms no timer and registers no cancellation waiter (both showed up as a quarter
/// of the writer's CPU in the fan-out profile).
async fn bounded<E>(
    op: impl Future<Output = Result<(), E>>,
    limit: Duration,
    kicked: &CancellationToken,
) -> bool {
    let mut op = pin!(op);
    let first = std::future::poll_fn(|cx| Poll::Ready(op.as_mut().poll(cx))).await;
    if let Poll::Ready(r) = first {
        return r.is_ok();
    }
    tokio::select! {
        biased;
        () = kicked.cancelled() => false,
        r = tokio::time::timeout(limit, op) => matches!(r, Ok(Ok(()))),
    }
}

/// The close frame for a client the `disconnect` policy dropped. Its socket is likely full: the
/// frame is tried briefly (not bounded by the kick that brought us here), then the connection
/// is let go.
async fn too_slow(frames: &mut Frames) {
    let payload = close_payload(1008, "too slow: push queue overflowed");
    let patient = CancellationToken::new();
    let _ = tokio::time::timeout(
        Duration::from_millis(100),
        frames.send(CLOSE, &payload, &patient),
    )
    .await;
}

/// Sleeps until `at`; never returns for `None` (its select branch is disabled then anyway).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the writer needs of its gateway: none of its store or buses, so a writer never holds a
/// stopping gateway open; sent again when a reload moves the connection to the next one.
#[derive(Clone)]
pub struct WriterCtx {
    metrics: Arc<crate::metrics::Metrics>,
    push_interval: watch::Receiver<Duration>,
    heartbeat: (Duration, Duration),
}

impl WriterCtx {
    /// `heartbeat`: the ping interval and how long a client may stay silent.
    pub fn new(
        metrics: Arc<crate::metrics::Metrics>,
        push_interval: watch::Receiver<Duration>,
        heartbeat: (Duration, Duration),
    ) -> WriterCtx {
        WriterCtx {
            metrics,
            push_interval,
            heartbeat,
        }
    }

    /// Takes the next gateway's context once a reload moved the connection.
    fn refresh(&mut self, rx: &mut watch::Receiver<WriterCtx>) {
        if rx.has_changed().unwrap_or(false) {
            *self = rx.borrow_and_update().clone();
        }
    }

    /// The gateway's counters, for the connection's last count.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }
}

/// The writer task: replies first, then queued pushes; pings on the heartbeat and drops a
/// client that went silent past the timeout or cannot take a frame within it.
pub async fn writer(
    socket: WriteIo,
    client: Arc<Client>,
    mut replies: mpsc::Receiver<Out>,
    mut ctx: watch::Receiver<WriterCtx>,
    last_heard: Arc<AtomicU64>,
    epoch: Instant,
    done: CancellationToken,
) {
    let mut cx = ctx.borrow_and_update().clone();
    // The heartbeat is the connection's from its start (a reload's new values apply to new
    // connections).
    let (hb, hb_timeout) = cx.heartbeat;
    let mut frames = Frames {
        socket,
        buf: Vec::new(),
        limit: hb_timeout,
        broken: false,
    };
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + hb, hb);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The stop signals' waiters are made once, not on every wake-up of the loop.
    let stopped = done.cancelled();
    let kicked = client.kicked.cancelled();
    tokio::pin!(stopped, kicked);
    // What the last batch wrote, for the counters after its flush; kept to reuse its memory.
    let mut batch: Vec<Written> = Vec::new();
    loop {
        cx.refresh(&mut ctx);
        // Normal events waiting for `batchMs` go out together when their batch is due.
        let batch_due = client.batch_due();
        tokio::select! {
            biased;
            // Replies first, so a close the reader queued goes out before the writer stops;
            // pushes before the stop signals, so a wake-up for a push does not poll (and lock)
            // them; the push branch checks the kick itself.
            r = replies.recv() => {
                let Some(out) = r else { break };
                let closing = matches!(out, Out::Close(..));
                let ok = match out {
                    Out::Text(t) => frames.send(TEXT, t.as_bytes(), &client.kicked).await,
                    Out::Close(code, reason) => {
                        frames.send(CLOSE, &close_payload(code, reason), &client.kicked).await
                    }
                    Out::Raw(b) => {
                        frames.put_raw(&b);
                        frames.flush(&client.kicked).await
                    }
                };
                if !ok || closing {
                    break;
                }
            }
            () = client.notify.notified() => {
                // The `disconnect` policy fired: the client goes, even if its socket has room
                // again by now (the pushes keep this branch ready ahead of `kicked`).
                if client.kicked.is_cancelled() {
                    too_slow(&mut frames).await;
                    break;
                }
                let began = Instant::now();
                let ok = write_queued(&mut frames, &client, &mut batch, &cx.metrics).await;
                // A write slower than the snapshot period: this client's snapshots slow down.
                let took = began.elapsed();
                if took > MIN_SNAPSHOT_PERIOD / 2 && took > *cx.push_interval.borrow() {
                    client.slow_write.store(true, Relaxed);
                }
                if !ok {
                    if client.kicked.is_cancelled() {
                        too_slow(&mut frames).await;
                    }
                    break;
                }
            }
            () = sleep_until(batch_due), if batch_due.is_some() => {
                client.flush_batch(&cx.metrics);
            }
            () = &mut stopped => break,
            () = &mut kicked => {
                too_slow(&mut frames).await;
                break;
            }
            _ = ping.tick() => {
                let heard = Duration::from_millis(last_heard.load(Relaxed));
                if epoch.elapsed().saturating_sub(heard) > hb_timeout {
                    tracing::info!(client = client.id, "no pong within {hb_timeout:?}: dropping the client");
                    let payload = close_payload(1001, "heartbeat timeout");
                    let _ = frames.send(CLOSE, &payload, &client.kicked).await;
                    break;
                }
                if !frames.send(PING, &[], &client.kicked).await {
                    break;
                }
            }
        }
    }
    done.cancel();
    // The FIN after the last frame: bounded, for a client that stopped reading.
    let _ = tokio::time::timeout(Duration::from_secs(1), frames.socket.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames this writer makes are the ones tungstenite reads: a text frame of each
    /// length class (7-bit, 16-bit and 64-bit lengths), a ping, and a close with its code.
    #[tokio::test]
    async fn frames_read_back_through_tungstenite() {
        use futures_util::StreamExt;
        use tungstenite::protocol::Role;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut ws =
                tokio_tungstenite::WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
            let mut got = Vec::new();
            while let Some(Ok(m)) = ws.next().await {
                got.push(m);
            }
            got
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let (read, socket) = tcp.into_split();
        let mut frames = Frames {
            socket: WriteIo::Tcp(socket),
            buf: Vec::new(),
            limit: Duration::from_secs(5),
            broken: false,
        };
        let never = CancellationToken::new();
        let texts: Vec<String> = [5, 200, 70_000]
            .iter()
            .map(|&n| "é".repeat(n / 2))
            .collect();
        for t in &texts {
            assert!(frames.put(TEXT, t.as_bytes(), &never).await);
        }
        assert!(frames.put(PING, &[], &never).await);
        assert!(
            frames
                .send(CLOSE, &close_payload(1009, "too large"), &never)
                .await
        );
        // The client's stream ends when the server closes the connection.
        drop((frames, read));
        let got = client.await.unwrap();
        assert_eq!(got.len(), 5, "{got:?}");
        for (m, t) in got.iter().zip(&texts) {
            assert_eq!(m.to_text().unwrap(), t);
        }
        assert!(got[3].is_ping());
        match &got[4] {
            tungstenite::Message::Close(Some(c)) => {
                assert_eq!(u16::from(c.code), 1009);
                assert_eq!(c.reason.as_str(), "too large");
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }
}
