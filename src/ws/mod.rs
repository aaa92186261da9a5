//! The WebSocket service at `GET /ws`: the upgrade (admission by `admit`, frame limits), one
//! reader and one writer task per connection, and heartbeats. What is pushed is `push`'s.

pub mod admit;
pub mod auth;
pub mod client;
pub mod context;
pub mod diagnostics;
pub mod hub;
pub mod push;
pub mod services;
pub mod shared;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use context::{reply, Ctx, ServiceError};
use hub::Client;
pub use shared::{Shared, Sinks};

/// The largest frame accepted (SPEC: 413 / close 1009 beyond it).
pub const MAX_FRAME: usize = 64 * 1024;
/// The largest frame read at all: one between this and [`MAX_FRAME`] is read so that its 413
/// can name its `requestId`; past this the socket refuses it unread (413 without one). The
/// cost is this much buffer, briefly, per connection that sends one.
const READ_LIMIT: usize = 256 * 1024;
/// A connection that has not logged in by then is closed.
pub const LOGIN_DEADLINE: Duration = Duration::from_secs(10);
/// Requests per connection: a bucket of this many, refilled at `RATE_PER_S`.
const RATE_BURST: f64 = 50.0;
const RATE_PER_S: f64 = 20.0;
/// The shortest `push.interval_ms` the config takes: a write shorter than half of it cannot be
/// slower than the snapshot period, so the period is not even looked at.
const MIN_SNAPSHOT_PERIOD: Duration = Duration::from_millis(500);
/// Requests of one connection being handled at once.
const MAX_IN_FLIGHT: usize = 16;

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let admitted = match shared
        .admission
        .admit(&shared.config.http, remote.ip(), &headers)
    {
        Ok(a) => a,
        Err(answer) => return answer.into_response(),
    };
    // tungstenite's defaults (128 KiB read and write buffers per connection) would cost a
    // quarter of a gigabyte at 1,000 clients; pushes are small and each is flushed whole. The
    // write buffer's cap is only a cap: it grows to the largest message a client was sent (a
    // snapshot of 200 devices × 30 points is ~0.5 MB), which must fit whole.
    ws.max_message_size(READ_LIMIT)
        .max_frame_size(READ_LIMIT)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(MAX_OUTGOING)
        .on_upgrade(move |socket| connection(shared, socket, remote, admitted))
}

/// The largest reply or push a client can be sent: a snapshot of a big installation.
const MAX_OUTGOING: usize = 16 * 1024 * 1024;

fn text(v: serde_json::Value) -> Message {
    Message::Text(Utf8Bytes::from(v.to_string()))
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// The close a read error calls for (RFC 6455 §7.4.1): 1009 for a frame over the limit, 1007
/// for a text frame that is not UTF-8, 1002 for a broken frame (unmasked, reserved bits set);
/// `None` for a connection that is simply gone.
fn close_for(e: &axum::Error) -> Option<(u16, &'static str)> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        match s.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Capacity(_)) => {
                return Some((1009, "frame too large (max 64 KiB)"))
            }
            Some(tungstenite::Error::Utf8(_)) => return Some((1007, "text frame is not UTF-8")),
            Some(tungstenite::Error::Protocol(_)) => return Some((1002, "protocol error")),
            Some(_) => return None,
            None => src = s.source(),
        }
    }
    None
}

async fn connection(
    shared: Arc<Shared>,
    socket: WebSocket,
    remote: SocketAddr,
    mut admitted: admit::Admitted,
) {
    let id = shared.next_client_id.fetch_add(1, Relaxed);
    let push = &shared.config.push;
    let client =
        Arc::new(Client::new(id, push.queue_capacity, push.overflow).connected_from(remote));
    shared.hub.open(client.clone());
    shared.metrics.push.clients.fetch_add(1, Relaxed);
    let (sink, mut stream) = socket.split();
    let (replies, replies_rx) = mpsc::channel::<Message>(MAX_IN_FLIGHT * 2);
    let last_heard = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let done = CancellationToken::new();
    let writer = tokio::spawn(writer(
        sink,
        client.clone(),
        replies_rx,
        shared.clone(),
        last_heard.clone(),
        epoch,
        done.clone(),
    ));
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let login_deadline = tokio::time::sleep(LOGIN_DEADLINE);
    tokio::pin!(login_deadline);
    let mut bucket = Bucket::new();
    let mut had_login = false;
    loop {
        if client.login().is_some() {
            admitted.logged_in();
            had_login = true;
        } else if had_login {
            // The session ended (logout here or on another socket with the token): the socket
            // stays, not logged in, with a fresh deadline to log in again.
            had_login = false;
            login_deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + LOGIN_DEADLINE);
        }
        tokio::select! {
            () = done.cancelled() => break,
            () = shared.shutdown.cancelled() => {
                let _ = replies.send(close(1001, "gateway shutting down")).await;
                break;
            }
            () = &mut login_deadline, if client.login().is_none() => {
                shared.admission.count(admit::Reason::AuthTimeout);
                let _ = replies.send(close(1008, "login required within 10 s")).await;
                break;
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            msg = stream.next() => {
                last_heard.store(epoch.elapsed().as_millis() as u64, Relaxed);
                let frame = match incoming(msg, remote, &replies).await {
                    Incoming::Text(t) => t,
                    Incoming::Skip => continue,
                    Incoming::End => break,
                };
                let request = match context::parse(&frame) {
                    Ok(r) => r,
                    Err(r) => {
                        let _ = replies.send(text(r)).await;
                        continue;
                    }
                };
                if !bucket.take(in_flight.len() < MAX_IN_FLIGHT) {
                    shared.admission.count(admit::Reason::Rate);
                    let r = reply(&request.request_id, Some(&request.service), Err(ServiceError::new(429, "too many requests")));
                    let _ = replies.send(text(r)).await;
                    continue;
                }
                let ctx = Ctx { shared: shared.clone(), client: client.clone(), remote: remote.ip(), params: request.params };
                in_flight.spawn(serve(request.request_id, request.service, ctx, replies.clone()));
            }
        }
    }
    in_flight.abort_all();
    shared.hub.unregister(id);
    shared.hub.close(id);
    drop(replies);
    done.cancel();
    finish(&shared, &client, writer).await;
}

/// The connection's last steps: the writer gets a second to send the close frame to a
/// well-behaved client (a stuck one is cut off), then the client's queue is discarded.
async fn finish(shared: &Shared, client: &Client, mut writer: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(Duration::from_secs(1), &mut writer)
        .await
        .is_err()
    {
        client.kicked.cancel();
        let _ = writer.await;
    }
    client.discard(&shared.metrics);
    shared.metrics.push.clients.fetch_sub(1, Relaxed);
}

/// One request, served as its own task: the reply (with the request's id) joins the
/// connection's replies.
async fn serve(
    request_id: serde_json::Value,
    service: String,
    ctx: Ctx,
    replies: mpsc::Sender<Message>,
) {
    let result = services::dispatch(&service, ctx).await;
    let r = reply(&request_id, Some(&service), result);
    let _ = replies.send(text(r)).await;
}

/// What a read off the socket means for the connection.
enum Incoming {
    /// A request to parse and serve.
    Text(Utf8Bytes),
    /// Nothing to serve (a ping, a pong, a binary frame already answered with 400).
    Skip,
    /// The client closed, or the connection failed (its close frame already queued).
    End,
}

/// Sorts a read: binary frames get a 400 and the connection lives on; an over-long frame gets
/// SPEC's 413 reply, then close 1009; other protocol errors their close code.
async fn incoming(
    msg: Option<Result<Message, axum::Error>>,
    remote: SocketAddr,
    replies: &mpsc::Sender<Message>,
) -> Incoming {
    match msg {
        Some(Ok(Message::Text(t))) if t.len() > MAX_FRAME => {
            too_large(remote, replies, request_id_of(&t)).await;
            Incoming::End
        }
        Some(Ok(Message::Text(t))) => Incoming::Text(t),
        Some(Ok(Message::Binary(_))) => {
            let err = ServiceError::bad_request("text frames only");
            let _ = replies
                .send(text(reply(&serde_json::Value::Null, None, Err(err))))
                .await;
            Incoming::Skip
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Skip,
        Some(Ok(Message::Close(_))) | None => Incoming::End,
        Some(Err(e)) => {
            match close_for(&e) {
                Some((1009, _)) => too_large(remote, replies, serde_json::Value::Null).await,
                Some((code, reason)) => {
                    tracing::debug!(%remote, "websocket closed with {code}: {e}");
                    let _ = replies.send(close(code, reason)).await;
                }
                None => tracing::debug!(%remote, "websocket read error: {e}"),
            }
            Incoming::End
        }
    }
}

/// SPEC's 413 reply (naming the request when its id could be read), then close 1009.
async fn too_large(remote: SocketAddr, replies: &mpsc::Sender<Message>, id: serde_json::Value) {
    if let Some(held) = crate::log_limit::per_peer(remote.ip(), "frame too large") {
        tracing::warn!(%remote, "websocket frame over {MAX_FRAME} bytes: closing with 1009{}", crate::log_limit::suppressed(held));
    }
    let err = ServiceError::new(413, "frame too large (max 64 KiB)");
    let _ = replies.send(text(reply(&id, None, Err(err)))).await;
    let _ = replies
        .send(close(1009, "frame too large (max 64 KiB)"))
        .await;
}

/// The `requestId` of an over-long frame, when its first KiB names one (a string or a number,
/// as requests carry it): `"requestId": "r-7"`. Anything else is null.
fn request_id_of(frame: &str) -> serde_json::Value {
    let head = &frame.as_bytes()[..frame.len().min(1024)];
    let key = b"\"requestId\"";
    let Some(at) = head.windows(key.len()).position(|w| w == key) else {
        return serde_json::Value::Null;
    };
    let rest = &head[at + key.len()..];
    let rest = rest.trim_ascii_start();
    let Some(rest) = rest.strip_prefix(b":") else {
        return serde_json::Value::Null;
    };
    // One JSON value from here: the stream stops after it, whatever follows.
    let mut values = serde_json::Deserializer::from_slice(rest.trim_ascii_start())
        .into_iter::<serde_json::Value>();
    match values.next() {
        Some(Ok(v @ (serde_json::Value::String(_) | serde_json::Value::Number(_)))) => v,
        _ => serde_json::Value::Null,
    }
}

/// A connection's requests: a token bucket of [`RATE_BURST`], refilled at [`RATE_PER_S`].
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            tokens: RATE_BURST,
            refilled: Instant::now(),
        }
    }

    /// Refills for the time passed, then takes a token if there is one and `room` (the
    /// connection may run one more request) says so.
    fn take(&mut self, room: bool) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * RATE_PER_S;
        self.tokens = (self.tokens + earned).min(RATE_BURST);
        self.refilled = now;
        if self.tokens < 1.0 || !room {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;

/// Sleeps until `at`; never returns for `None` (its select branch is disabled then anyway).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Everything queued for the client goes into one buffer and out in one flush: under load a
/// slow client catches up in few writes instead of one per push. Counts each push sent (with
/// its latency) or dropped; returns false when the write failed or was cut off.
async fn write_queued(
    sink: &mut Sink,
    client: &Client,
    batch: &mut Vec<Written>,
    limit: Duration,
    metrics: &crate::metrics::Metrics,
) -> bool {
    batch.clear();
    let mut ok = true;
    while let Some(p) = client.next() {
        let written = (p.kind, p.priority, p.since);
        if !bounded(sink.feed(Message::Text(p.frame)), limit, &client.kicked).await {
            batch.push(written);
            ok = false;
            break;
        }
        batch.push(written);
    }
    ok = ok && bounded(sink.flush(), limit, &client.kicked).await;
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

/// Runs one sink operation, giving up after `limit` or when the client is kicked: a client that
/// cannot take a frame in a heartbeat timeout is as good as gone, and must not hold its task
/// forever. Almost every operation completes at its first poll, which is tried on its own first,
/// so the common case arms no timer and registers no cancellation waiter (both showed up as a
/// quarter of the writer's CPU in the fan-out profile).
async fn bounded(
    op: impl Future<Output = Result<(), axum::Error>>,
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

/// Sends one frame and flushes it, bounded as [`bounded`].
async fn send(sink: &mut Sink, limit: Duration, kicked: &CancellationToken, m: Message) -> bool {
    bounded(sink.send(m), limit, kicked).await
}

/// The close frame for a client the `disconnect` policy dropped. Its socket is likely full: the
/// frame is tried briefly, then the connection is let go.
async fn too_slow(sink: &mut Sink) {
    let m = close(1008, "too slow: push queue overflowed");
    let _ = tokio::time::timeout(Duration::from_millis(100), sink.send(m)).await;
}

/// Sends replies first, then queued pushes; pings on the heartbeat and drops a client that went
/// silent past the timeout or cannot take a frame within it.
async fn writer(
    mut sink: Sink,
    client: Arc<Client>,
    mut replies: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
    last_heard: Arc<AtomicU64>,
    epoch: Instant,
    done: CancellationToken,
) {
    let hb = shared.config.push.heartbeat_interval;
    let hb_timeout = shared.config.push.heartbeat_timeout;
    let metrics = &shared.metrics;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + hb, hb);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The stop signals' waiters are made once, not on every wake-up of the loop.
    let stopped = done.cancelled();
    let kicked = client.kicked.cancelled();
    tokio::pin!(stopped, kicked);
    // What the last batch wrote, for the counters after its flush; kept to reuse its memory.
    let mut batch: Vec<Written> = Vec::new();
    loop {
        // Normal events waiting for `batchMs` go out together when their batch is due.
        let batch_due = client.batch_due();
        tokio::select! {
            biased;
            // Replies first, so a close the reader queued goes out before the writer stops;
            // pushes before the stop signals, so a wake-up for a push does not poll (and lock)
            // them; the push branch checks the kick itself.
            r = replies.recv() => match r {
                Some(m) => {
                    let closing = matches!(m, Message::Close(_));
                    if !send(&mut sink, hb_timeout, &client.kicked, m).await || closing {
                        break;
                    }
                }
                None => break,
            },
            () = client.notify.notified() => {
                // The `disconnect` policy fired: the client goes, even if its socket has room
                // again by now (the pushes keep this branch ready ahead of `kicked`).
                if client.kicked.is_cancelled() {
                    too_slow(&mut sink).await;
                    break;
                }
                let began = Instant::now();
                let ok = write_queued(&mut sink, &client, &mut batch, hb_timeout, metrics).await;
                // A write slower than the snapshot period: this client's snapshots slow down.
                let took = began.elapsed();
                if took > MIN_SNAPSHOT_PERIOD / 2 && took > *shared.push_interval.borrow() {
                    client.slow_write.store(true, Relaxed);
                }
                if !ok {
                    if client.kicked.is_cancelled() {
                        too_slow(&mut sink).await;
                    }
                    break;
                }
            }
            () = sleep_until(batch_due), if batch_due.is_some() => {
                client.flush_batch(metrics);
            }
            () = &mut stopped => break,
            () = &mut kicked => {
                too_slow(&mut sink).await;
                break;
            }
            _ = ping.tick() => {
                let heard = Duration::from_millis(last_heard.load(Relaxed));
                if epoch.elapsed().saturating_sub(heard) > hb_timeout {
                    tracing::info!(client = client.id, "no pong within {hb_timeout:?}: dropping the client");
                    let _ = send(&mut sink, hb_timeout, &client.kicked, close(1001, "heartbeat timeout")).await;
                    break;
                }
                if !send(&mut sink, hb_timeout, &client.kicked, Message::Ping(axum::body::Bytes::new())).await {
                    break;
                }
            }
        }
    }
    done.cancel();
    // Closing flushes: bounded, for a client that stopped reading.
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

#[cfg(test)]
mod tests {
    use super::request_id_of;
    use serde_json::json;

    #[test]
    fn the_request_id_of_an_over_long_frame_is_read_from_its_start() {
        let pad = "x".repeat(100_000);
        for (frame, id) in [
            (
                format!(r#"{{"requestId":"r-7","service":"s","pad":"{pad}"}}"#),
                json!("r-7"),
            ),
            (
                format!(r#"{{ "requestId" : 42, "pad":"{pad}"}}"#),
                json!(42),
            ),
            (
                format!(r#"{{"service":"s","requestId":"q","pad":"{pad}"}}"#),
                json!("q"),
            ),
            (
                format!(r#"{{"pad":"{pad}","requestId":"late"}}"#),
                json!(null),
            ),
            (
                format!(r#"{{"requestId":{{"a":1}},"pad":"{pad}"}}"#),
                json!(null),
            ),
            (format!(r#"{{"requestId":"unterminated{pad}"#), json!(null)),
        ] {
            assert_eq!(request_id_of(&frame), id, "{}", &frame[..40]);
        }
    }
}
