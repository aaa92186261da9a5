//! The OPC UA server (`[opcua]`): the config's devices and points as an address space a
//! plant's SCADA browses, reads, subscribes to and (as an admin) writes, its values fed from
//! the pipeline's reports (no extra Modbus reads), its users those of `[[users]]`.
//!
//! Built on async-opcua (RustCrypto, no OpenSSL).

mod nodes;
mod server;
mod sessions;
mod space;
mod users;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use ua::server::node_manager::memory::InMemoryNodeManager;
use ua::server::SubscriptionCache;

use ua::server::address_space::BaseEventType;
use ua::types::{
    AttributeId, ByteString, DataValue, DateTime, LocalizedText, NodeId, NumericRange, ObjectId,
    ObjectTypeId, Variant,
};

use crate::config::{Config, Priority};
use crate::model::event::Event;
use crate::model::Report;
use crate::state::{SharedLive, Telemetry};
use crate::sync::Locked as _;

pub use server::Server;
pub use space::namespace_uri;

/// How often the devices' `Online` variables are compared with the live state.
const ONLINE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Reports waiting for the server's task. When full, a report is left out and its device
/// marked: its next turn (its next report, or the tick) brings every point of it from the live
/// state, so the newest value still arrives and nothing older after it. The field thread
/// never waits for the server: the library's locks are held by its publish tick (which walks
/// every monitored item) and by clients creating items. (Public for the test that overflows it.)
pub const FEED_QUEUE: usize = 256;

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum OpcuaError {
    #[error("cannot listen on {addr} (opcua.listen): {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the OPC UA server cannot be built: {0}")]
    Build(String),
}

/// Where the pipeline's reports reach the server's variables: made on the field thread,
/// handed to the server's task (`serve`).
pub struct Feed {
    manager: Arc<InMemoryNodeManager<nodes::GatewayNodes>>,
    subscriptions: Arc<SubscriptionCache>,
    space: Arc<space::Space>,
    queue: mpsc::Sender<Changes>,
    /// Each device's `Online` as last served: an offline device's points are
    /// `Bad_NoCommunication`.
    online: Vec<AtomicBool>,
    /// Each device with a report left out (`FEED_QUEUE`), or not sent since the feed began,
    /// until its points are sent whole.
    behind: Vec<AtomicBool>,
    /// Each device's sendings whole by the tick, from the live state: a report made before
    /// its device's last one is older than what that sent, and is left out.
    turns: Vec<AtomicU64>,
    /// Reports left out, logged once a minute at most.
    behind_log: crate::log_limit::LogLimit<()>,
    /// The server's own state (its diagnostics count the sessions).
    info: Arc<ua::server::ServerInfo>,
    /// The gateway's live state, for each device's `online`.
    live: SharedLive,
    metrics: Arc<crate::metrics::Metrics>,
    /// Taken before each turn of the server's task: held, the task stands still
    /// ([`Server::hold_feed`]).
    held: Arc<tokio::sync::Mutex<()>>,
}

/// What a report or the online tick changes, by place (it crosses to the server's task):
/// `Online` variables by device (seldom changed, kept in the address space) and points'
/// values by node (only notified: 15,000 a second are not written into the address space for
/// the odd read, which brings its points up to the live state itself).
#[derive(Default)]
struct Changes {
    /// A report's device and its turn (`Feed::turns`) when the report was made.
    from: Option<(usize, u64)>,
    online: Vec<(usize, DataValue)>,
    points: Vec<(usize, DataValue)>,
}

impl Feed {
    /// When device `d`'s `online` differs from what was served, or a report of it was left
    /// out: its `Online` and every point (`Bad_NoCommunication` while offline), into `changes`.
    /// True when it did.
    fn device_changes(
        &self,
        d: usize,
        dev: &crate::state::DeviceLive,
        changes: &mut Changes,
    ) -> bool {
        let (Some(shown), Some(behind)) = (self.online.get(d), self.behind.get(d)) else {
            return false;
        };
        let turned = shown.swap(dev.online, Relaxed) != dev.online;
        if !(turned | behind.swap(false, Relaxed)) {
            return false;
        }
        changes.online.push((d, DataValue::new_now(dev.online)));
        for (p, l) in dev.points.iter().enumerate() {
            let v = self
                .space
                .value(d, p, l.value.as_ref(), l.quality, l.ts, dev.online);
            changes.points.extend(v);
        }
        true
    }

    /// New values to their subscribers; `Online` into the address space as well. On the
    /// server's task: it takes the library's locks.
    fn set(&self, changes: Changes) {
        if let Some((d, turn)) = changes.from {
            if self.turns.get(d).is_some_and(|t| t.load(Relaxed) > turn) {
                return;
            }
        }
        if !changes.online.is_empty() {
            let online = changes
                .online
                .into_iter()
                .filter_map(|(d, v)| Some((self.space.online(d)?, None, v)));
            let _ = self.manager.set_values(&self.subscriptions, online);
        }
        if changes.points.is_empty() {
            return;
        }
        let mut notifier = self.subscriptions.data_notifier();
        for (slot, value) in changes.points {
            let Some(id) = self.space.node(slot) else {
                continue;
            };
            let Some(mut batch) = notifier.notify_for(id, AttributeId::Value) else {
                continue;
            };
            for (handle, item) in batch.entries() {
                let v = if item.index_range == NumericRange::None {
                    value.clone()
                } else {
                    ranged(&value, &item.index_range)
                };
                batch.data_value_to_item(v, handle);
            }
        }
    }
}

/// A value as an item monitoring an index range of it gets it (as the library's own read
/// gives it: a point is a scalar, so a range finds no data).
fn ranged(value: &DataValue, range: &NumericRange) -> DataValue {
    let mut out = value.clone();
    if let Some(v) = &value.value {
        match v.range_of(range) {
            Ok(r) => out.value = Some(r),
            Err(status) => {
                out.value = None;
                out.status = Some(status);
            }
        }
    }
    out
}

/// Severity of an alarm's events (SPEC: emergency 1000, high 700, normal 300).
fn severity(p: Priority) -> u16 {
    match p {
        Priority::Emergency => 1000,
        Priority::High => 700,
        Priority::Normal => 300,
    }
}

impl Feed {
    /// Committed alarm events (raised, cleared, acknowledged) as OPC UA events, on the Server
    /// object and on their device's folder; other events are not alarms and stay out.
    pub fn events(&self, gateway_id: &str, events: &[Event]) {
        let server: NodeId = ObjectId::Server.into();
        let made: Vec<(BaseEventType, Option<&NodeId>)> = events
            .iter()
            .filter(|e| e.alarm.is_some())
            .map(|e| {
                let at = chrono::DateTime::from_timestamp_millis(e.ts)
                    .map_or_else(DateTime::now, DateTime::from);
                let device = self.space.device(e.device);
                let source = self.space.source_name(e.device).unwrap_or(gateway_id);
                let evt = BaseEventType::new(
                    ObjectTypeId::BaseEventType,
                    ByteString::from(e.id(gateway_id).into_bytes()),
                    LocalizedText::new("", &e.message),
                    at,
                )
                .set_source_node(device.cloned().unwrap_or_else(|| server.clone()))
                .set_source_name(source.into())
                .set_severity(severity(e.priority));
                (evt, device)
            })
            .collect();
        if made.is_empty() {
            return;
        }
        let on_server = made
            .iter()
            .map(|(e, _)| (e as &dyn ua::server::address_space::Event, &server));
        let on_device = made
            .iter()
            .filter_map(|(e, d)| Some((e as &dyn ua::server::address_space::Event, (*d)?)));
        self.subscriptions.notify_events(on_server.chain(on_device));
    }
}

impl Telemetry for Feed {
    /// A device's reported changes, as the WebSocket push gets them: each point's value,
    /// status and source timestamp, subscribers notified.
    fn report(&self, report: &Report, _: std::time::Instant) {
        let Report { device, ts, rows } = report;
        let (device, ts) = (*device, *ts);
        let turn = self.turns.get(device).map_or(0, |t| t.load(Relaxed));
        let mut changes = Changes {
            from: Some((device, turn)),
            ..Changes::default()
        };
        // A device that has just come online (or gone offline) turns now, not at the tick.
        if let Some(dev) = crate::state::read(&self.live).devices.get(device) {
            self.device_changes(device, dev, &mut changes);
        }
        let online = self.online.get(device).is_some_and(|o| o.load(Relaxed));
        changes.points.extend(rows.iter().filter_map(|r| {
            self.space
                .value(device, r.point, r.value.as_ref(), r.quality, ts, online)
        }));
        if changes.points.is_empty() && changes.online.is_empty() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(changes) {
            if let Some(behind) = self.behind.get(device) {
                behind.store(true, Relaxed);
            }
            if let Some(held) = self.behind_log.allow(()) {
                tracing::warn!(
                    "OPC UA: the server is {FEED_QUEUE} reports behind the field; left out and sent again whole from the live state{}",
                    crate::log_limit::suppressed(held)
                );
            }
        }
    }
}

/// What the server takes from the gateway: the password checker, the way to the buses, the
/// counters.
pub struct Parts {
    pub auth: Arc<crate::api::auth::Auth>,
    pub control: Arc<crate::control::Control>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The server's socket when `[opcua]` is enabled, bound before anything else starts: a
/// taken port is a start error naming the key.
pub fn bind(config: &Config) -> Result<Option<std::net::TcpListener>, OpcuaError> {
    let o = &config.opcua;
    if !o.enabled {
        return Ok(None);
    }
    let listen_err = |source| OpcuaError::Listen {
        addr: o.listen.clone(),
        source,
    };
    let addr: SocketAddr = o
        .listen
        .parse()
        .map_err(|e| listen_err(std::io::Error::other(e)))?;
    let listener = std::net::TcpListener::bind(addr).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    Ok(Some(listener))
}

impl Feed {
    /// The server's own counts (sessions, refused requests) and the open sessions into the
    /// gateway's metrics.
    fn count_from_diagnostics(&self) {
        use ua::types::VariableId::{
            Server_ServerDiagnostics_ServerDiagnosticsSummary_CurrentSessionCount as Sessions,
            Server_ServerDiagnostics_ServerDiagnosticsSummary_RejectedRequestsCount as Rejected,
            Server_ServerDiagnostics_ServerDiagnosticsSummary_SecurityRejectedRequestsCount as Security,
        };
        let m = &self.metrics.opcua;
        let rows = self.manager.inner().sessions.rows();
        // Items live as long as their sessions, across reloads: counted from the sessions.
        let items = rows.iter().map(|r| r.monitored_items).sum();
        m.monitored_items.store(items, Relaxed);
        *m.session_rows.locked() = rows;
        for (id, to) in [
            (Sessions, &m.sessions),
            (Rejected, &m.rejected),
            (Security, &m.security_rejected),
        ] {
            if let Some(Variant::UInt32(n)) = self.info.diagnostics.get(id).and_then(|v| v.value) {
                to.store(u64::from(n), Relaxed);
            }
        }
    }
}

/// The server's side of the feed, until `stop`: the field's changes to their subscribers as
/// they come; every `ONLINE_EVERY` the counts, and each device whose `online` turned (a device
/// going offline reports nothing) or whose report was left out, from the live state.
async fn serve(feed: Arc<Feed>, mut queue: mpsc::Receiver<Changes>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(ONLINE_EVERY);
    loop {
        // Uncontended but for a test holding the task (a few atomics a turn).
        tokio::select! {
            () = stop.cancelled() => return,
            _ = feed.held.lock() => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            Some(changes) = queue.recv() => feed.set(changes),
            _ = tick.tick() => {
                // What was queued before this tick goes first (a report queued after the
                // live state is read below is older than it, and left out by its turn).
                for _ in 0..queue.len() {
                    let Ok(changes) = queue.try_recv() else { break };
                    feed.set(changes);
                }
                feed.count_from_diagnostics();
                let mut changes = Changes::default();
                {
                    // Under the live state's lock: a report made after it counts this turn.
                    let live = crate::state::read(&feed.live);
                    for (d, dev) in live.devices.iter().enumerate() {
                        let sent = feed.device_changes(d, dev, &mut changes);
                        if let Some(turn) = feed.turns.get(d).filter(|_| sent) {
                            turn.fetch_add(1, Relaxed);
                        }
                    }
                }
                feed.set(changes);
            }
        }
    }
}
