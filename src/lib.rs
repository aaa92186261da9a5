//! edge-gateway: polls Modbus devices, keeps their state in SQLite and serves it on the LAN.
//!
//! # Layout
//!
//! Data flows one way: bus poller → state (report on change) → store (SQLite) → sinks.
//!
//! - [`config`]: TOML → raw types → validated domain types, problems with key path and line.
//! - [`model`]: values, quality and timestamps shared by every stage.
//! - [`modbus`]: codec (types, byte/word order, scale), read planner, bus scheduler (one task per
//!   link), the client link with deadlines and backoff, server framing, and the simulator.
//! - [`state`]: the live state of every point and the report-on-change decision.
//! - [`store`]: SQLite schema, migrations, the writer thread, restore at start, retention.
//! - [`http`]: `/healthz`, `/metrics` and the dashboard page.
//! - [`metrics`]: counters kept by every stage, rendered for Prometheus.
//! - [`cli`]: the commissioning commands `read` and `write`, and `demo`.

pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod modbus;
pub mod model;
pub mod state;
pub mod store;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::Config;
use metrics::Metrics;
use modbus::bus::{BusTask, WriteCommand, WriteError};
use model::Value;
use state::SharedLive;
use store::StoreHandle;

/// A running gateway: what tests and `demo` hold on to.
pub struct Gateway {
    pub config: Arc<Config>,
    pub http_addr: SocketAddr,
    pub live: SharedLive,
    pub metrics: Arc<Metrics>,
    pub store: StoreHandle,
    writes: Vec<mpsc::Sender<WriteCommand>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    store_thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

impl Gateway {
    /// Opens the store, binds HTTP and starts one task per bus. The config is already valid.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new(
            config.devices.iter().map(|d| d.id.clone()).collect(),
            config.buses.iter().map(|b| b.name.clone()).collect(),
        ));
        let (store, restored, store_thread) = store::open(config.clone(), metrics.clone())?;
        let live: SharedLive = Arc::new(RwLock::new(state::Live::restored(&config, &restored)));
        let listener =
            http::bind(&config.http.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.http.listen.clone(),
                    source,
                })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.http.listen.clone(),
            source,
        })?;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();

        // Bounded: a slow store slows the buses down instead of growing memory.
        let (events_tx, events_rx) = mpsc::channel(256);
        let mut writes = Vec::new();
        for b in 0..config.buses.len() {
            let (wtx, wrx) = mpsc::channel(16);
            writes.push(wtx);
            let task = BusTask::new(b, config.clone(), events_tx.clone(), wrx, metrics.clone());
            tasks.spawn(task.run(cancel.child_token()));
        }
        drop(events_tx);
        tasks.spawn(state::run(
            config.clone(),
            live.clone(),
            events_rx,
            store.clone(),
        ));
        let app = http::AppState {
            live: live.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
        };
        tasks.spawn(http::serve(listener, app, cancel.child_token()));
        tasks.close();
        Ok(Gateway {
            config,
            http_addr,
            live,
            metrics,
            store,
            writes,
            cancel,
            tasks,
            store_thread: Some(store_thread),
        })
    }

    /// Writes a point through its bus, ahead of the polls; returns once the device confirmed.
    pub async fn write(&self, device: &str, point: &str, value: Value) -> Result<(), WriteError> {
        let (d, p) = self.find(device, point).ok_or(WriteError::NotWritable)?;
        let (tx, rx) = oneshot::channel();
        let cmd = WriteCommand {
            device: d,
            point: p,
            value,
            reply: tx,
        };
        self.writes[self.config.devices[d].bus]
            .send(cmd)
            .await
            .map_err(|_| WriteError::BusGone)?;
        rx.await.map_err(|_| WriteError::BusGone)?
    }

    /// Device and point indexes by id.
    pub fn find(&self, device: &str, point: &str) -> Option<(usize, usize)> {
        let d = self.config.devices.iter().position(|x| x.id == device)?;
        let p = self.config.devices[d]
            .points
            .iter()
            .position(|x| x.id == point)?;
        Some((d, p))
    }

    /// Stops the buses, lets the pipeline drain into the store, and waits for the store to
    /// commit everything: the store flushes last.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.tasks.wait().await;
        self.store.flush().await;
        let thread = self.store_thread.take();
        drop(self.store);
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// The daemon: runs until `shutdown` is cancelled, then stops cleanly.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    warn_unbuilt(&config);
    let gw = Gateway::start(config).await?;
    tracing::info!(
        "gateway running: {} buses, {} devices, http on {}",
        gw.config.buses.len(),
        gw.config.devices.len(),
        gw.http_addr
    );
    shutdown.cancelled().await;
    tracing::info!("shutting down");
    gw.shutdown().await;
    Ok(())
}

/// Configured features this build does not act on yet: said loudly, never silently ignored.
fn warn_unbuilt(config: &Config) {
    let mut missing = Vec::new();
    if config.mysql.is_some() {
        missing.push("[mysql] (upstream sync)");
    }
    if config.mqtt.is_some() {
        missing.push("[mqtt] (upstream publishing)");
    }
    if !config.rules.is_empty() {
        missing.push("[[rules]] (alarm evaluation)");
    }
    if !config.users.is_empty() {
        missing.push("[[users]] (WebSocket logins)");
    }
    for m in missing {
        tracing::warn!("{m} is configured but not implemented in this build yet; it is validated and otherwise ignored");
    }
}
