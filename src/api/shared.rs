//! The handlers' context: what the WebSocket services (and the HTTP routes beside them) share —
//! the config, the live state, and the ways into the buses (`Control`), the store and the
//! connected clients. It lives in `api` because most of it is the dashboard API's own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth;
use crate::config::Config;
use crate::control::Control;
use crate::metrics::sinks::Sinks;
use crate::metrics::Metrics;
use crate::state::SharedLive;
use crate::store::StoreHandle;
use crate::ws::{admit, hub};

/// What the HTTP side's tasks and handlers share: the config, the live state, and the ways
/// into the buses, the store and the connected clients. A starting gateway makes it last, from
/// the handles it gave its stages (`gateway::handles`).
pub struct Shared {
    pub config: Arc<Config>,
    pub live: SharedLive,
    pub metrics: Arc<Metrics>,
    pub store: StoreHandle,
    /// Writes and raw reads through the buses.
    pub control: Arc<Control>,
    pub hub: Arc<hub::Hub>,
    /// Shared with the OPC UA server: one password checker, one set of limits.
    pub auth: Arc<auth::Auth>,
    /// The snapshot push period; `push.setInterval` changes it at run time.
    pub push_interval: watch::Sender<Duration>,
    /// Who may open a WebSocket: Host/Origin checks and the connection caps (carried over a
    /// reload that keeps `push.max_clients`, with the connections it counts).
    pub admission: Arc<admit::Admission>,
    /// What outlives a reload on the WebSocket side (open connections move to the next
    /// gateway's context through it).
    pub front: Arc<Front>,
    pub started: Instant,
    /// Cancelled at shutdown: open connections close with 1001.
    pub shutdown: CancellationToken,
    /// Upstream sinks' state, for `/healthz` and `/metrics`.
    pub sinks: Sinks,
    /// Operator `info` events (acknowledgements) into the event processor; `None` without a
    /// pipeline.
    pub operator_events: Option<crate::events::processor::OperatorEvents>,
    /// The config file the `config.*` services edit; `None` without one (tests).
    pub config_file: Option<Arc<crate::config::versions::ConfigFile>>,
    /// Alarms an operator shelved (read again from `data_dir` at each start).
    pub shelves: Arc<crate::shelves::Shelves>,
}

/// What outlives a reload on the WebSocket side (SPEC "Reload": connections and their
/// sessions stay open). A reload stops the old gateway and starts a new one; an open
/// connection drops everything of the old one (so its store can close) and waits here for
/// the new one's context, then carries on in it.
pub struct Front {
    /// The context connections move to: set by each gateway as it starts. Weak, so a stopped
    /// gateway's context (its store handle) is never kept alive from here.
    current: watch::Sender<Weak<Shared>>,
    /// Set while a reload is under way: a connection whose gateway stops then waits for the
    /// next one instead of closing with 1001.
    reloading: AtomicBool,
    /// Connection ids, unique across reloads (a moved connection keeps its id).
    pub next_client_id: AtomicU64,
    /// Every connection's task, across reloads: a real stop waits for them to close.
    pub connections: TaskTracker,
}

impl Default for Front {
    fn default() -> Front {
        Front {
            current: watch::channel(Weak::new()).0,
            reloading: AtomicBool::new(false),
            next_client_id: AtomicU64::new(1),
            connections: TaskTracker::new(),
        }
    }
}

/// How long an open connection waits for the next gateway during a reload before it closes.
const RELOAD_WAIT: Duration = Duration::from_secs(30);
/// How long a real stop waits for the connections to close: each gives its requests in flight
/// a second and its writer a second to send the close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

impl Front {
    /// A real stop (no reload under way): waits for every connection to close, as they are told
    /// to (1001) once their gateway stops, at most [`CLOSE_WAIT`].
    pub async fn stopped(&self) {
        if self.reloading.load(Relaxed) {
            return;
        }
        self.connections.close();
        let _ = tokio::time::timeout(CLOSE_WAIT, self.connections.wait()).await;
    }

    /// A reload begins: connections of the stopping gateway wait for the next one.
    pub fn reload_begins(&self) {
        self.reloading.store(true, Relaxed);
    }

    /// A gateway serves: connections move to its context.
    pub fn serve(&self, shared: &Arc<Shared>) {
        self.current.send_replace(Arc::downgrade(shared));
        self.reloading.store(false, Relaxed);
    }

    /// The next gateway's context, once the current one stopped: `None` for a real stop, or
    /// when no gateway started within [`RELOAD_WAIT`] (a reload that failed).
    pub async fn next_after(&self, stopped: &Weak<Shared>) -> Option<Arc<Shared>> {
        let mut rx = self.current.subscribe();
        // The next gateway may already serve (this connection was slow to get here).
        let ready = rx
            .borrow()
            .upgrade()
            .filter(|s| !Weak::ptr_eq(&Arc::downgrade(s), stopped));
        if ready.is_some() {
            return ready;
        }
        if !self.reloading.load(Relaxed) {
            return None;
        }
        let found = tokio::time::timeout(
            RELOAD_WAIT,
            rx.wait_for(|w| !w.ptr_eq(stopped) && w.strong_count() > 0),
        )
        .await;
        match found {
            Ok(Ok(w)) => w.upgrade(),
            _ => None,
        }
    }
}
