//! The dashboard's API over the WebSocket at `GET /ws`: the upgrade (admitted by
//! `ws::admit`), each connection's request loop (parse, rate limit, dispatch to `services`,
//! replies by request id), sessions and logins (`auth`), what is pushed (`push`), the
//! diagnostics report, and the handlers' context (`context`, `shared`, which `/healthz` and
//! `/metrics` read too). The socket, its writer, the hub and the admission are `ws`'s.

pub mod auth;
pub mod context;
pub mod diagnostics;
pub mod push;
pub mod services;
pub mod shared;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tungstenite::{Message, Utf8Bytes};

use context::{reply, Ctx, ServiceError};
pub use shared::Shared;

use crate::metrics::Metrics;
use crate::sync::Locked;
use crate::ws::hub::{self, Client, Subscription};
use crate::ws::writer::{self, Out};
use crate::ws::{admit, socket, MAX_FRAME, READ_LIMIT};

/// A connection that has not logged in by then is closed.
pub const LOGIN_DEADLINE: Duration = Duration::from_secs(10);
/// Requests per connection: a bucket of this many, refilled at `RATE_PER_S`.
const RATE_BURST: f64 = 50.0;
const RATE_PER_S: f64 = 20.0;
/// Requests of one connection being handled at once.
const MAX_IN_FLIGHT: usize = 16;

/// `GET /ws`: a well-formed upgrade the admission lets in is answered 101, and the connection
/// runs in its own task once hyper hands over the socket.
pub async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let accept = match socket::accept_key(req.headers()) {
        Ok(k) => k,
        // RFC 6455 §4.4: a version we do not speak is answered with the one we do.
        Err(answer @ (StatusCode::UPGRADE_REQUIRED, _)) => {
            return ([("sec-websocket-version", "13")], answer).into_response()
        }
        Err(answer) => return answer.into_response(),
    };
    let admitted = match shared
        .admission
        .admit(&shared.config.http, remote.ip(), req.headers())
    {
        Ok(a) => a,
        Err(answer) => return answer.into_response(),
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "connection cannot be upgraded",
        )
            .into_response();
    };
    let connections = shared.front.connections.clone();
    connections.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(%remote, "websocket upgrade failed: {e}"),
        };
        match socket::split(upgraded, READ_LIMIT, MAX_IN_FLIGHT * 2).await {
            Ok(s) => connection(shared, s, remote, admitted).await,
            Err(why) => tracing::warn!(%remote, "websocket dropped: {why}"),
        }
    });
    socket::switching(&accept)
}

fn text(v: serde_json::Value) -> Out {
    Out::Text(Utf8Bytes::from(v.to_string()))
}

/// The close a read error calls for (RFC 6455 §7.4.1): 1009 for a frame over the limit, 1007
/// for a text frame that is not UTF-8, 1002 for a broken frame (unmasked, reserved bits set);
/// `None` for a connection that is simply gone.
fn close_for(e: &tungstenite::Error) -> Option<(u16, &'static str)> {
    match e {
        tungstenite::Error::Capacity(_) => Some((1009, "frame too large (max 64 KiB)")),
        tungstenite::Error::Utf8(_) => Some((1007, "text frame is not UTF-8")),
        tungstenite::Error::Protocol(_) => Some((1002, "protocol error")),
        _ => None,
    }
}

/// Why a connection's reader stopped.
enum Exit {
    /// The connection is over (the client closed, a fault, a limit).
    Closed,
    /// Its gateway is stopping: a reload moves it to the next one, a stop closes it.
    Stopping,
}

/// What a connection takes from a stopping gateway to the next.
struct Moving {
    session: Option<(String, auth::Session)>,
    sub: Option<(Subscription, Option<Vec<String>>)>,
}

/// One connection's reader side: what carries over when a reload moves it to the next
/// gateway (the socket, its session, its limits and deadlines).
struct Reader {
    stream: tokio_tungstenite::WebSocketStream<socket::ReadSide>,
    replies: mpsc::Sender<Out>,
    client: Arc<Client>,
    remote: SocketAddr,
    admitted: admit::Admitted,
    in_flight: JoinSet<()>,
    /// The replies of the requests in flight, by task: one cut off by a reload is answered.
    unanswered: std::collections::HashMap<tokio::task::Id, context::Later>,
    login_deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    bucket: Bucket,
    had_login: bool,
    last_heard: Arc<AtomicU64>,
    epoch: Instant,
    done: CancellationToken,
}

async fn connection(
    shared: Arc<Shared>,
    socket: socket::Socket,
    remote: SocketAddr,
    admitted: admit::Admitted,
) {
    let socket::Socket {
        stream,
        write,
        replies,
        replies_rx,
    } = socket;
    let client = open(&shared, remote);
    let last_heard = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let done = CancellationToken::new();
    let (writer_ctx, writer_ctx_rx) = tokio::sync::watch::channel(writer_context(&shared));
    let writer = tokio::spawn(writer::writer(
        write,
        client.clone(),
        replies_rx,
        writer_ctx_rx,
        last_heard.clone(),
        epoch,
        done.clone(),
    ));
    let mut r = Reader {
        stream,
        replies,
        client,
        remote,
        admitted,
        in_flight: JoinSet::new(),
        unanswered: std::collections::HashMap::new(),
        login_deadline: Box::pin(tokio::time::sleep(LOGIN_DEADLINE)),
        bucket: Bucket::new(),
        had_login: false,
        last_heard,
        epoch,
        done,
    };
    let mut shared = shared;
    while let Exit::Stopping = r.run(&shared).await {
        // Requests in progress hold the stopping gateway: they get a second to answer, then
        // go, each answered that it was cut off.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(done) = r.in_flight.join_next_with_id().await {
                r.answered(done);
            }
        })
        .await;
        r.in_flight.abort_all();
        r.cut_off();
        let sub = r.leave(&shared);
        let (front, stopped) = (shared.front.clone(), Arc::downgrade(&shared));
        // Nothing of the stopping gateway may stay here: its store closes only once every
        // handle on it is gone, and the next gateway opens it after.
        drop(shared);
        let Some(next) = front.next_after(&stopped).await else {
            offer(&r.replies, Out::Close(1001, "gateway shutting down"));
            let metrics = writer_ctx.borrow().metrics().clone();
            r.end(writer, &metrics).await;
            return;
        };
        r.join(&next, sub);
        writer_ctx.send_replace(writer_context(&next));
        shared = next;
    }
    r.in_flight.abort_all();
    shared.hub.unregister(r.client.id);
    shared.hub.close(r.client.id);
    shared.metrics.push.clients.fetch_sub(1, Relaxed);
    r.end(writer, &shared.metrics).await;
}

impl Reader {
    /// Reads and serves requests until the connection ends or its gateway stops.
    async fn run(&mut self, shared: &Arc<Shared>) -> Exit {
        let (client, replies, stop) = (self.client.clone(), self.replies.clone(), &shared.shutdown);
        loop {
            if client.login().is_some() {
                self.admitted.logged_in();
                self.had_login = true;
            } else if self.had_login {
                // The session ended (logout here or on another socket with the token): the
                // socket stays, not logged in, with a fresh deadline to log in again.
                self.had_login = false;
                self.login_deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + LOGIN_DEADLINE);
            }
            tokio::select! {
                () = self.done.cancelled() => return Exit::Closed,
                () = stop.cancelled() => return Exit::Stopping,
                // A newcomer from a quieter address took this socket's place.
                () = self.admitted.evicted.cancelled(), if client.login().is_none() => {
                    offer(&replies, Out::Close(1008, "too many connections from this address waiting to log in"));
                    return Exit::Closed;
                }
                () = &mut self.login_deadline, if client.login().is_none() => {
                    shared.admission.count(admit::Reason::AuthTimeout);
                    offer(&replies, Out::Close(1008, "login required within 10 s"));
                    return Exit::Closed;
                }
                Some(done) = self.in_flight.join_next_with_id(), if !self.in_flight.is_empty() => self.answered(done),
                msg = self.stream.next() => {
                    self.last_heard.store(self.epoch.elapsed().as_millis() as u64, Relaxed);
                    let frame = match incoming(msg, self.remote, &replies, stop).await {
                        Incoming::Text(t) => t,
                        Incoming::Skip => continue,
                        Incoming::End => return Exit::Closed,
                    };
                    // A reply the client is not reading ends it: it must not hold this loop.
                    let request = match context::parse(&frame) {
                        Ok(r) => r,
                        Err(r) => if put(&replies, stop, text(r)).await { continue } else { return Exit::Closed },
                    };
                    if !self.bucket.take(self.in_flight.len() < MAX_IN_FLIGHT) {
                        shared.admission.count(admit::Reason::Rate);
                        let r = reply(&request.request_id, Some(&request.service), Err(ServiceError::new(429, "too many requests")));
                        if put(&replies, stop, text(r)).await { continue; }
                        return Exit::Closed;
                    }
                    let later = context::Later::to(request.request_id.clone(), request.service.clone(), replies.clone());
                    let ctx = Ctx { shared: shared.clone(), client: client.clone(), remote: self.remote.ip(), params: request.params, later: later.clone() };
                    let task = self.in_flight.spawn(serve(request.service, ctx, later.clone()));
                    self.unanswered.insert(task.id(), later);
                }
            }
        }
    }

    /// A request's task ended (its handler answered, or it was aborted).
    fn answered(&mut self, done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = done.map_or_else(|e| e.id(), |(id, ())| id);
        self.unanswered.remove(&id);
    }

    /// Answers the requests a reload cut off: their client is told instead of waiting for a
    /// reply that never comes. What such a request did is unknown (a write may have reached
    /// its bus), so it is not said to be undone.
    fn cut_off(&mut self) {
        for (_, later) in self.unanswered.drain() {
            if let Some(answer) = later.take() {
                answer.offer(Err(ServiceError::new(
                    503,
                    "cut off by a config reload before it finished; its outcome is unknown",
                )));
            }
        }
    }

    /// Leaves a stopping gateway's hub; returns what the next one needs to know of the
    /// connection: its session (a login served while the reload began is in no carried list)
    /// and its subscription, its devices by id.
    fn leave(&self, shared: &Shared) -> Moving {
        let id = self.client.id;
        let session = self
            .client
            .login()
            .and_then(|l| shared.auth.resume(&l.token).map(|s| (l.token, s)));
        let sub = shared.hub.subscription(id).map(|s| {
            let ids = s.devices.as_ref().map(|ds| {
                ds.iter()
                    .filter_map(|&d| shared.config.devices.get(d).map(|x| x.id.clone()))
                    .collect()
            });
            (s, ids)
        });
        shared.hub.unregister(id);
        shared.hub.close(id);
        shared.metrics.push.clients.fetch_sub(1, Relaxed);
        Moving { session, sub }
    }

    /// Joins the next gateway after a reload: the same client in its hub, its session and its
    /// subscription (its devices found again by id) carried on. A user the reload removed or
    /// changed was told `push.session` before, and is not logged in any more.
    fn join(&self, next: &Shared, moving: Moving) {
        let client = &self.client;
        next.hub.open(client.clone());
        next.metrics.push.clients.fetch_add(1, Relaxed);
        let Some(login) = client.login() else { return };
        // Taken over only if its user is still there with the same role.
        next.auth.adopt(moving.session.into_iter().collect());
        if next.auth.resume(&login.token).is_none() {
            *client.login.locked() = None;
            return;
        }
        next.hub.register(client.clone());
        if let Some((mut s, ids)) = moving.sub {
            s.devices = ids.map(|ids| {
                ids.iter()
                    .filter_map(|id| next.config.devices.iter().position(|d| d.id == *id))
                    .collect()
            });
            next.hub.subscribe(client.id, s);
        }
        // A snapshot at once from the new config: a page sees what the reload changed (other
        // devices or points) without waiting for the next timed one.
        let frame = serde_json::json!({
            "service": "push.snapshot",
            "data": {"ts": crate::model::rfc3339(crate::model::now_ms()),
                     "devices": services::devices_json(&next.config, &next.live)},
        });
        client.offer(
            hub::Push {
                frame: Utf8Bytes::from(frame.to_string()),
                kind: crate::metrics::PushKind::Snapshot,
                since: std::time::Instant::now(),
                urgent: false,
                priority: None,
            },
            &next.metrics,
        );
    }

    /// The connection's last steps: the close echo flushed, the writer given its second.
    async fn end(mut self, writer: tokio::task::JoinHandle<()>, metrics: &Metrics) {
        // tungstenite queues the echo of a client's close (and a pong) until its next read or
        // flush; a flush hands it to the writer (it never waits), so the client's close ends
        // cleanly instead of as 1006.
        let _ = futures_util::SinkExt::flush(&mut self.stream).await;
        let client = self.client.clone();
        drop(self);
        finish(metrics, &client, writer).await;
    }
}

/// What a connection's writer needs of its gateway (none of its store or buses).
fn writer_context(shared: &Shared) -> writer::WriterCtx {
    let push = &shared.config.push;
    writer::WriterCtx::new(
        shared.metrics.clone(),
        shared.push_interval.subscribe(),
        (push.heartbeat_interval, push.heartbeat_timeout),
    )
}

/// The connection's client in the hub, counted.
fn open(shared: &Shared, remote: SocketAddr) -> Arc<Client> {
    let id = shared.front.next_client_id.fetch_add(1, Relaxed);
    let push = &shared.config.push;
    let client =
        Arc::new(Client::new(id, push.queue_capacity, push.overflow).connected_from(remote));
    shared.hub.open(client.clone());
    shared.metrics.push.clients.fetch_add(1, Relaxed);
    client
}

/// The connection's last steps: the writer gets a second to send the close frame to a
/// well-behaved client (a stuck one is cut off), then the client's queue is discarded.
async fn finish(metrics: &Metrics, client: &Client, mut writer: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(Duration::from_secs(1), &mut writer)
        .await
        .is_err()
    {
        client.kicked.cancel();
        let _ = writer.await;
    }
    client.discard(metrics);
}

/// One request, served as its own task: the reply (with the request's id) joins the
/// connection's replies, unless the handler took it to answer later.
async fn serve(service: String, ctx: Ctx, later: context::Later) {
    // A request is a use: the session's idle clock starts again.
    if let Some(login) = ctx.client.login() {
        ctx.shared.auth.touch(&login.token);
    }
    let result = services::dispatch(&service, ctx).await;
    if let Some(answer) = later.take() {
        answer.send(result).await;
    }
}

/// Queues a close frame without waiting (the connection ends either way).
fn offer(replies: &mpsc::Sender<Out>, out: Out) {
    let _ = replies.try_send(out);
}

/// How long a reply the reader makes itself may wait for room in the client's queue: a
/// burst of requests fills it for a moment, a client that does not read fills it for good.
const REPLY_WAIT: Duration = Duration::from_secs(2);

/// Queues a reply the reader makes itself (a 400, a 429), waiting at most [`REPLY_WAIT`] and
/// never past a stop or reload: a client that did not read its replies while it kept sending
/// (60,000 bad frames) held the reader on a full queue, and a reload with it, for 42 s. False
/// when it could not be queued: the client is closed.
async fn put(replies: &mpsc::Sender<Out>, stop: &CancellationToken, out: Out) -> bool {
    tokio::select! {
        biased;
        r = replies.send(out) => r.is_ok(),
        () = stop.cancelled() => false,
        () = tokio::time::sleep(REPLY_WAIT) => false,
    }
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
    msg: Option<Result<Message, tungstenite::Error>>,
    remote: SocketAddr,
    replies: &mpsc::Sender<Out>,
    stop: &CancellationToken,
) -> Incoming {
    match msg {
        Some(Ok(Message::Text(t))) if t.len() > MAX_FRAME => {
            too_large(remote, replies, request_id_of(&t));
            Incoming::End
        }
        Some(Ok(Message::Text(t))) => Incoming::Text(t),
        Some(Ok(Message::Binary(_))) => {
            let err = ServiceError::bad_request("text frames only");
            if put(
                replies,
                stop,
                text(reply(&serde_json::Value::Null, None, Err(err))),
            )
            .await
            {
                Incoming::Skip
            } else {
                Incoming::End
            }
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Incoming::Skip,
        Some(Ok(Message::Close(_))) | None => Incoming::End,
        Some(Err(e)) => {
            match close_for(&e) {
                Some((1009, _)) => too_large(remote, replies, serde_json::Value::Null),
                Some((code, reason)) => {
                    tracing::debug!(%remote, "websocket closed with {code}: {e}");
                    offer(replies, Out::Close(code, reason));
                }
                None => tracing::debug!(%remote, "websocket read error: {e}"),
            }
            Incoming::End
        }
    }
}

/// SPEC's 413 reply (naming the request when its id could be read), then close 1009.
fn too_large(remote: SocketAddr, replies: &mpsc::Sender<Out>, id: serde_json::Value) {
    if let Some(held) = crate::log_limit::per_peer(remote.ip(), "frame too large") {
        tracing::warn!(%remote, "websocket frame over {MAX_FRAME} bytes: closing with 1009{}", crate::log_limit::suppressed(held));
    }
    let err = ServiceError::new(413, "frame too large (max 64 KiB)");
    let _ = replies.try_send(text(reply(&id, None, Err(err))));
    offer(replies, Out::Close(1009, "frame too large (max 64 KiB)"));
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
