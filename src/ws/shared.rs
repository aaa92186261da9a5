//! The handlers' context: what the WebSocket services (and the HTTP routes beside them) share —
//! the config, the live state, and the ways into the buses (`Control`), the store and the
//! connected clients. It lives in `ws` because most of it is the WebSocket service's own.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{admit, auth, hub};
use crate::config::Config;
use crate::control::Control;
use crate::metrics::Metrics;
use crate::sinks;
use crate::state::SharedLive;
use crate::store::StoreHandle;

/// What every task and handler shares: the config, the live state, and the ways into the
/// buses, the store and the connected clients.
pub struct Shared {
    pub config: Arc<Config>,
    pub live: SharedLive,
    pub metrics: Arc<Metrics>,
    pub store: StoreHandle,
    /// Writes and raw reads through the buses.
    pub control: Arc<Control>,
    pub hub: Arc<hub::Hub>,
    pub auth: auth::Auth,
    /// The snapshot push period; `push.setInterval` changes it at run time.
    pub push_interval: watch::Sender<Duration>,
    /// Who may open a WebSocket: Host/Origin checks and the connection caps.
    pub admission: admit::Admission,
    pub next_client_id: AtomicU64,
    pub started: Instant,
    /// Cancelled at shutdown: open connections close with 1001.
    pub shutdown: CancellationToken,
    /// Upstream sinks' state, for `/healthz` and `/metrics`.
    pub sinks: Sinks,
    /// Operator `info` events (acknowledgements) into the event processor; set once the
    /// pipeline runs.
    pub operator_events: std::sync::OnceLock<crate::events::processor::OperatorEvents>,
    /// The config file the `config.*` services edit; `None` without one (tests).
    pub config_file: Option<Arc<crate::config::versions::ConfigFile>>,
}

impl Shared {
    /// The handlers' context for a gateway starting: config, live state and store are the
    /// ones `control` reaches the buses with; no client, session or sink state yet.
    pub fn new(control: Control, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Shared {
        let config = control.config.clone();
        Shared {
            live: control.live.clone(),
            store: control.store.clone(),
            hub: Arc::new(hub::Hub::new(config.devices.len(), metrics.clone())),
            auth: auth::Auth::new(config.users.clone()),
            push_interval: watch::channel(config.push.interval).0,
            admission: admit::Admission::new(config.push.max_clients),
            next_client_id: AtomicU64::new(1),
            started: Instant::now(),
            shutdown,
            sinks: Sinks::default(),
            config_file: None,
            operator_events: std::sync::OnceLock::new(),
            control: Arc::new(control),
            metrics,
            config,
        }
    }
}

/// The state of each upstream sink (shown only for the sinks that are configured).
#[derive(Default)]
pub struct Sinks {
    pub mysql: Arc<sinks::SinkStatus>,
    pub mqtt: Arc<sinks::SinkStatus>,
}

impl Sinks {
    /// The sinks the config turns on, by name.
    pub fn configured<'a>(&'a self, config: &Config) -> Vec<(&'static str, &'a sinks::SinkStatus)> {
        sinks::configured(config)
            .into_iter()
            .map(|name| {
                let status = if name == sinks::mqtt::SINK {
                    &*self.mqtt
                } else {
                    &*self.mysql
                };
                (name, status)
            })
            .collect()
    }
}
