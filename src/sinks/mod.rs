//! Upstream sinks: each forwards the SQLite outbox (events, device status, telemetry) after its
//! own persisted cursor, and moves the cursor only after the upstream confirmed. What every
//! sink shares lives here: the run loop (sessions, backoff, the cursor kept across failures),
//! its errors and its status.

pub mod feed;
pub mod mqtt;
pub mod mysql;

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Config;
pub use crate::metrics::sinks::{configured, SinkStatus};
use crate::store::StoreHandle;
use feed::Feed;

/// Reconnects to an upstream: 0.5 s after a failure, doubling to 30 s.
const RECONNECT: Backoff = Backoff::new(
    std::time::Duration::from_millis(500),
    std::time::Duration::from_secs(30),
);

/// What a sink is given: narrow handles, none of the HTTP side.
pub struct SinkContext {
    pub config: std::sync::Arc<Config>,
    pub store: StoreHandle,
    pub status: std::sync::Arc<SinkStatus>,
    /// Writes from upstream (MQTT `devices/+/write`), audited as any other.
    pub control: std::sync::Arc<crate::control::Control>,
    /// The fleet's retained `state` message, newest first (MQTT publishes it whatever its
    /// format); `None` until the first is made.
    pub fleet_state: tokio::sync::watch::Receiver<Option<std::sync::Arc<str>>>,
    /// Signed fleet messages in and their answers out, when `[fleet] public_keys` lists a key.
    pub fleet: Option<std::sync::Arc<FleetPort>>,
    /// Operator events in (acknowledgements from upstream); `None` without a pipeline.
    pub operator: Option<crate::events::processor::OperatorEvents>,
    /// The gateway's tasks: what a sink starts besides itself (the MQTT session's write
    /// worker) goes here, so a stop waits for a write under way as for every stage.
    pub tasks: tokio_util::task::TaskTracker,
}

/// The MQTT session's side of the fleet: the topics it subscribes to for the fleet, what
/// arrives on them handed in (dropped when 16 wait: a flood costs nothing), the answers to
/// publish (QoS 1) handed out.
pub struct FleetPort {
    pub topics: Vec<String>,
    pub inbound: tokio::sync::mpsc::Sender<(String, Vec<u8>)>,
    /// Held by the session connected now.
    pub outbound: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<(String, Vec<u8>)>>,
}

/// A MySQL error once: the client says "Input/output error: " for its error and again for the
/// socket's inside it.
fn mysql_text(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => {
            format!("cannot reach the server: {io}")
        }
        other => other.to_string(),
    }
}

/// Why a sink's session with its upstream ended.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("reading the outbox: {0}")]
    Outbox(#[from] rusqlite::Error),
    #[error("{}", mysql_text(.0))]
    Mysql(#[from] mysql_async::Error),
    /// Boxed: the MQTT client's error is large, and every `Result` would carry its size.
    #[error(transparent)]
    Mqtt(Box<rumqttc::ConnectionError>),
    #[error("the MQTT client's queue is closed")]
    QueueClosed,
    #[error("broker refused the connection: {0}")]
    Refused(String),
    #[error("unexpected first packet {0}")]
    Unexpected(String),
    #[error("no {what} within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// The upstream is reachable but data is held back (Sparkplug: the primary host is away).
    #[error("{0}")]
    Held(String),
}

impl From<rumqttc::ConnectionError> for SinkError {
    fn from(e: rumqttc::ConnectionError) -> SinkError {
        SinkError::Mqtt(Box::new(e))
    }
}

/// What differs between sinks: one session with the upstream.
pub trait Upstream {
    /// Sends what `feed` gives until the upstream fails (an error) or `cancel` fires (`Ok`).
    /// Sets `reached` once the upstream answered, so the next failure backs off from the start.
    fn session(
        &mut self,
        feed: &mut Feed,
        reached: &mut bool,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// How long a session may take to end once a stop asked (MQTT's goodbye takes 2 s at most).
pub const STOP_GRACE: Duration = Duration::from_millis(2500);

/// Runs a sink until cancelled: a session after another, the feed's confirmed cursors
/// persisted after each, and a backoff between them (0.5 s doubling to 30 s, with jitter)
/// that starts over once a session reached its upstream.
pub async fn run(
    name: &'static str,
    status: &SinkStatus,
    store: &StoreHandle,
    mut feed: Feed,
    mut upstream: impl Upstream,
    cancel: CancellationToken,
) {
    let mut backoff = RECONNECT;
    while !cancel.is_cancelled() {
        let mut reached = false;
        let result = {
            let session = upstream.session(&mut feed, &mut reached, &cancel);
            tokio::pin!(session);
            tokio::select! {
                r = &mut session => r,
                // A session sees the stop itself and says goodbye (a batch commits, MQTT's
                // last messages go); one stuck on a peer that never answers (a connect into a
                // black hole waits 10 s) is dropped after the grace: a stop must end within
                // 5 s. What it had not confirmed is sent again next time.
                () = cancel.cancelled() => tokio::time::timeout(STOP_GRACE, &mut session)
                    .await
                    .unwrap_or(Ok(())),
            }
        };
        // Whatever was confirmed before a failure keeps its place.
        feed.persist(store).await;
        if let Ok(b) = feed.backlog().await {
            status
                .backlog
                .store(b, std::sync::atomic::Ordering::Relaxed);
        }
        match result {
            Ok(()) => break,
            Err(e) => status.set_error(name, Some(e.to_string())),
        }
        if reached {
            backoff.reset();
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(backoff.fail()) => {}
        }
    }
}

#[cfg(test)]
mod mysql_error_tests {
    #[test]
    fn a_socket_error_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = super::SinkError::Mysql(mysql_async::Error::Io(mysql_async::IoError::Io(io)));
        let text = e.to_string();
        assert!(text.starts_with("cannot reach the server: "), "{text}");
        assert!(!text.contains("Input/output error"), "{text}");
    }
}
