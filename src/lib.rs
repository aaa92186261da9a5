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
//! - [`store`]: SQLite schema and migrations, the writer thread with group commits, compact
//!   history (one row per device sample), restore at start, retention, the size cap, a bounded
//!   WAL, and the outbox the sinks read as typed rows.
//! - [`events`]: the rule engine (thresholds, rate, stale, abnormal, online/offline), and the
//!   processor that orders events by priority, limits storms, numbers, commits and pushes them.
//! - [`sinks`]: upstream store-and-forward: the MySQL sink reads the SQLite outbox after its
//!   cursor and advances it only after MySQL committed.
//! - [`ws`]: the WebSocket service: admission (Host/Origin, connection caps), sessions and
//!   logins, roles, services, client hub and pushes.
//! - [`http`]: `/ws`, `/healthz`, `/metrics` and the dashboard page.
//! - [`log_limit`]: log lines outside parties can trigger, at most one per source per period.
//! - [`metrics`]: counters kept by every stage, rendered for Prometheus.
//! - [`cli`]: the commissioning commands `read` and `write`, and `demo`.

pub mod assets;
pub mod cli;
pub mod config;
pub mod events;
pub mod http;
pub mod log_limit;
pub mod metrics;
pub mod modbus;
pub mod model;
pub mod service;
pub mod sinks;
pub mod state;
pub mod store;
pub mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::Config;
use metrics::Metrics;
use modbus::bus::{BusRequest, BusTask, WriteCommand, WriteError};
use model::{now_ms, Value};
use state::SharedLive;
use store::{StoreCmd, StoreHandle};

/// How often the store writer is made to take its write lock even with nothing to write, so
/// `/healthz` knows within seconds that a quiet gateway's store cannot write.
const STORE_PROBE_EVERY: Duration = Duration::from_secs(1);

/// What every task and handler shares: the config, the live state, and the ways into the
/// buses, the store and the connected clients.
pub struct Shared {
    pub config: Arc<Config>,
    pub live: SharedLive,
    pub metrics: Arc<Metrics>,
    pub store: StoreHandle,
    /// One per bus, in config order: writes jump that bus's poll queue.
    /// Per bus: operator requests (writes, raw reads) that go ahead of its polls.
    pub writes: Vec<mpsc::Sender<BusRequest>>,
    pub hub: ws::hub::Hub,
    pub auth: ws::auth::Auth,
    /// The snapshot push period; `push.setInterval` changes it at run time.
    pub push_interval: watch::Sender<Duration>,
    /// Who may open a WebSocket: Host/Origin checks and the connection caps.
    pub admission: ws::admit::Admission,
    pub next_client_id: AtomicU64,
    pub started: Instant,
    /// Cancelled at shutdown: open connections close with 1001.
    pub shutdown: CancellationToken,
    /// Upstream sinks' state, for `/healthz` and `/metrics`.
    pub sinks: Sinks,
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

impl Shared {
    /// Writes a point through its bus, ahead of the polls; returns the value it had before once
    /// the device confirmed. Every attempt is recorded in the audit table.
    pub async fn write_audited(
        &self,
        user: &str,
        source: &str,
        device: usize,
        point: usize,
        value: Value,
    ) -> Result<Option<Value>, WriteError> {
        let old = state::read(&self.live).devices[device].points[point]
            .value
            .clone();
        let (tx, rx) = oneshot::channel();
        let cmd = WriteCommand {
            device,
            point,
            value: value.clone(),
            reply: tx,
        };
        let bus = self.config.devices[device].bus;
        let result = match self.writes[bus].send(BusRequest::Write(cmd)).await {
            Ok(()) => rx.await.unwrap_or(Err(WriteError::BusGone)),
            Err(_) => Err(WriteError::BusGone),
        };
        let dev = &self.config.devices[device];
        tracing::info!(
            user,
            source,
            device = %dev.id,
            point = %dev.points[point].id,
            "write {value} (was {}): {}",
            old.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "unknown".into()),
            match &result {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            }
        );
        self.store
            .send(StoreCmd::Audit(store::Audit {
                ts: now_ms(),
                user: user.to_string(),
                source: source.to_string(),
                device,
                point,
                old: old.clone(),
                new: value,
                result: match &result {
                    Ok(()) => "ok".to_string(),
                    Err(e) => e.to_string(),
                },
            }))
            .await;
        result.map(|()| old)
    }

    /// Reads raw registers or bits of a device in its bus's turn (the register inspector).
    pub async fn read_raw(
        &self,
        device: usize,
        table: modbus::codec::Table,
        address: u16,
        count: u16,
    ) -> modbus::link::Reply<modbus::link::Data> {
        let (reply, rx) = oneshot::channel();
        let req = BusRequest::Read(modbus::bus::RawRead {
            device,
            table,
            address,
            count,
            reply,
        });
        let gone = || {
            Err(modbus::link::LinkError::Transport(
                "the bus is not running".into(),
            ))
        };
        match self.writes[self.config.devices[device].bus].send(req).await {
            Ok(()) => rx.await.unwrap_or_else(|_| gone()),
            Err(_) => gone(),
        }
    }
}

/// Caps glibc's malloc at two arenas. By default it makes up to eight per core, one per thread
/// that ever allocates, and every one keeps its freed pages: with a connection's buffers
/// allocated and freed on whichever worker ran it, that cost 18 MB of RSS at 1,000 WebSocket
/// clients (65.6 → 47.5 MB in `cargo bench --bench ws`).
///
/// It also fixes the threshold above which a block is its own mapping, returned to the kernel
/// when freed (4 MiB). glibc raises that threshold to the size of any such block freed (up to
/// 32 MiB), so after the second login argon2id's 19 MiB working memory came from the heap and
/// stayed resident for good (ws bench 47 → 22 MB, MQTT catch-up 55.6 → 21.3 MB). A fixed
/// threshold also stops the trim threshold following it, so that is set too: a 256 KiB
/// threshold with the default 128 KiB trim cost 10–15 % of catch-up throughput, 4 MiB with an
/// 8 MiB trim nothing measurable.
///
/// Call first thing, before any thread exists. Other C libraries (musl) are left as they are.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
    }
}

/// Raises the soft limit on open files to the hard one: every connection, link and the store
/// take a descriptor, and the common soft default (1,024) ran out under 1,100 idle connections.
/// Under the systemd unit both are 8,192 already and nothing is called.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                tracing::warn!(
                    "could not raise the open-file limit from {}: {}",
                    lim.rlim_cur,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// What a live reload carries from the running gateway into the next one.
#[derive(Default)]
struct Carry {
    /// Handed-over bus tasks, by bus name.
    buses: HashMap<String, BusTask>,
    /// Live state of the devices on those buses, by device id.
    live: HashMap<String, state::DeviceLive>,
    /// Logged-in sessions (token, session).
    sessions: Vec<(String, ws::auth::Session)>,
    /// The listening socket and the `http.listen` it was bound for: kept open across the
    /// reload, so a client that connects meanwhile waits in its backlog instead of being
    /// refused.
    listener: Option<(String, std::net::TcpListener)>,
}

/// What a reload did with each bus, by name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReloadSummary {
    /// Unchanged: handed over with their links and state.
    pub kept: Vec<String>,
    /// Changed (settings or devices): started fresh.
    pub restarted: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// A bus is unchanged when its settings and its devices (in order, every setting and point)
/// are, wherever it sits in the list.
fn same_bus(old: &Config, ob: usize, new: &Config, nb: usize) -> bool {
    let devices = |c: &Config, b: usize| -> Vec<config::Device> {
        c.devices
            .iter()
            .filter(|d| d.bus == b)
            .map(|d| config::Device {
                bus: 0,
                ..d.clone()
            })
            .collect()
    };
    old.buses[ob] == new.buses[nb] && devices(old, ob) == devices(new, nb)
}

/// A running gateway: what tests and `demo` hold on to.
pub struct Gateway {
    pub shared: Arc<Shared>,
    pub config: Arc<Config>,
    pub http_addr: SocketAddr,
    pub live: SharedLive,
    pub metrics: Arc<Metrics>,
    pub store: StoreHandle,
    cancel: CancellationToken,
    tasks: TaskTracker,
    store_thread: Option<std::thread::JoinHandle<()>>,
    /// The HTTP socket (a second handle to the one being served), for a reload to carry over.
    listener: Option<std::net::TcpListener>,
    /// Another way into the pipeline, as a bus would feed it (replay, tests); dropped at
    /// shutdown so the pipeline can drain and end.
    bus_events: Option<mpsc::Sender<modbus::bus::BusEvent>>,
    /// Another way into the event processor, as the rule engine would feed it.
    event_queues: Option<events::processor::Queues>,
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
        Self::start_with(config, Carry::default()).await
    }

    async fn start_with(config: Config, mut carry: Carry) -> Result<Gateway, StartError> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new(
            config.devices.iter().map(|d| d.id.clone()).collect(),
            config.buses.iter().map(|b| b.name.clone()).collect(),
        ));
        let (store, restored, store_thread) =
            store::open(config.clone(), metrics.clone(), sinks::configured(&config))?;
        let mut restored_live = state::Live::restored(&config, &restored);
        // A reload keeps the live state of the devices whose bus carries on: not stale, not
        // offline, just as they were a moment ago.
        for (d, dev) in config.devices.iter().enumerate() {
            if let Some(l) = carry.live.remove(&dev.id) {
                restored_live.devices[d] = l;
            }
        }
        let live: SharedLive = Arc::new(RwLock::new(restored_live));
        let listen_err = |source| StartError::Listen {
            addr: config.http.listen.clone(),
            source,
        };
        let kept = match carry.listener.take() {
            Some((listen, l)) if listen == config.http.listen => l,
            _ => http::bind(&config.http.listen).map_err(listen_err)?,
        };
        let http_addr = kept.local_addr().map_err(listen_err)?;
        let listener = kept
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(listen_err)?;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();

        let mut writes = Vec::new();
        let mut write_rxs = Vec::new();
        for _ in &config.buses {
            let (wtx, wrx) = mpsc::channel(16);
            writes.push(wtx);
            write_rxs.push(wrx);
        }
        let shared = Arc::new(Shared {
            config: config.clone(),
            live: live.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            writes,
            hub: ws::hub::Hub::new(config.devices.len(), metrics.clone()),
            auth: ws::auth::Auth::new(config.users.clone()),
            push_interval: watch::channel(config.push.interval).0,
            admission: ws::admit::Admission::new(config.push.max_clients),
            next_client_id: AtomicU64::new(1),
            started: Instant::now(),
            shutdown: cancel.child_token(),
            sinks: Sinks::default(),
        });

        shared.auth.adopt(std::mem::take(&mut carry.sessions));

        // Bounded: a slow store slows the buses down instead of growing memory.
        let (events_tx, events_rx) = mpsc::channel(256);
        for (b, wrx) in write_rxs.into_iter().enumerate() {
            let task = match carry.buses.remove(&config.buses[b].name) {
                Some(mut task) => {
                    let cfg = config.clone();
                    task.retarget(
                        b,
                        config.clone(),
                        events_tx.clone(),
                        wrx,
                        metrics.clone(),
                        move |id| cfg.devices.iter().position(|d| d.id == id),
                    );
                    task
                }
                None => BusTask::new(b, config.clone(), events_tx.clone(), wrx, metrics.clone()),
            };
            tasks.spawn(task.run(cancel.child_token()));
        }
        let bus_events = Some(events_tx);
        let engine = events::rules::Engine::new(
            &config,
            &restored.active_alarms,
            tokio::time::Instant::now(),
        );
        let (queues, queue_rx) = events::processor::queues();
        let event_queues = Some(queues.clone());
        tasks.spawn(state::run(shared.clone(), events_rx, engine, queues));
        let processor = events::processor::Processor::new(
            shared.clone(),
            restored.last_seq,
            restored.device_seq.clone(),
        );
        tasks.spawn(processor.run(queue_rx));
        tasks.spawn(ws::snapshot_ticker(shared.clone(), cancel.child_token()));
        tasks.spawn(store.clone().probe(STORE_PROBE_EVERY, cancel.child_token()));
        if config.mysql.is_some() {
            tasks.spawn(sinks::mysql::run(shared.clone(), cancel.child_token()));
        }
        if config.mqtt.is_some() {
            tasks.spawn(sinks::mqtt::run(shared.clone(), cancel.child_token()));
        }
        tasks.spawn(http::serve(listener, shared.clone(), cancel.child_token()));
        tasks.close();
        Ok(Gateway {
            shared,
            config,
            http_addr,
            live,
            metrics,
            store,
            cancel,
            tasks,
            store_thread: Some(store_thread),
            listener: Some(kept),
            bus_events,
            event_queues,
        })
    }

    /// Feeds one bus event into the pipeline, exactly as a bus task would.
    pub async fn inject(&self, ev: modbus::bus::BusEvent) {
        if let Some(tx) = &self.bus_events {
            let _ = tx.send(ev).await;
        }
    }

    /// Feeds one event draft to the processor, exactly as the rule engine would.
    pub async fn inject_draft(&self, d: events::Draft) {
        if let Some(q) = &self.event_queues {
            q.send(d).await;
        }
    }

    /// Writes a point by ids (as the local operator "gateway"); see [`Shared::write_audited`].
    pub async fn write(&self, device: &str, point: &str, value: Value) -> Result<(), WriteError> {
        let (d, p) = self.find(device, point).ok_or(WriteError::NotWritable)?;
        self.shared
            .write_audited("gateway", "api", d, p, value)
            .await
            .map(|_| ())
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

    /// Live reload (SIGHUP): applies a new, valid config as a difference. A bus whose settings
    /// and devices are unchanged is handed over whole (its open link, schedule, backoffs) and
    /// its devices keep their live state; changed and new buses start fresh, removed ones stop.
    /// Everything else (pipeline, rules, users, sinks, HTTP) is rebuilt from the new config;
    /// logged-in sessions of users that still exist with the same role carry over.
    pub async fn reload(mut self, new: Config) -> Result<(Gateway, ReloadSummary), StartError> {
        let old = self.config.clone();
        let mut carry = Carry::default();
        let mut summary = ReloadSummary::default();
        for (b, bus) in old.buses.iter().enumerate() {
            let same = new
                .buses
                .iter()
                .position(|n| n.name == bus.name)
                .is_some_and(|nb| same_bus(&old, b, &new, nb));
            if !same {
                if new.buses.iter().any(|n| n.name == bus.name) {
                    summary.restarted.push(bus.name.clone());
                } else {
                    summary.removed.push(bus.name.clone());
                }
                continue;
            }
            let (tx, rx) = oneshot::channel();
            let handed = match self.shared.writes[b].send(BusRequest::Handover(tx)).await {
                // A bus finishes the request it is in (bounded by its deadline) first.
                Ok(()) => tokio::time::timeout(Duration::from_secs(30), rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            match handed {
                Some(mut task) => {
                    // Its sender into the old pipeline must go, or the old pipeline never ends.
                    task.detach();
                    let live = state::read(&self.live);
                    for (d, dev) in old.devices.iter().enumerate().filter(|(_, d)| d.bus == b) {
                        carry.live.insert(dev.id.clone(), live.devices[d].clone());
                    }
                    carry.buses.insert(bus.name.clone(), task);
                    summary.kept.push(bus.name.clone());
                }
                None => summary.restarted.push(bus.name.clone()),
            }
        }
        summary.added = new
            .buses
            .iter()
            .filter(|n| !old.buses.iter().any(|o| o.name == n.name))
            .map(|n| n.name.clone())
            .collect();
        carry.sessions = self.shared.auth.sessions();
        carry.listener = self.listener.take().map(|l| (old.http.listen.clone(), l));
        self.shutdown().await;
        let gw = Gateway::start_with(new, carry).await?;
        Ok((gw, summary))
    }

    /// Stops the buses, lets the pipeline drain into the store, and waits for the store to
    /// commit everything: the store flushes last.
    pub async fn shutdown(mut self) {
        self.bus_events.take();
        self.event_queues.take();
        self.cancel.cancel();
        self.tasks.wait().await;
        self.store.flush().await;
        let thread = self.store_thread.take();
        drop(self.store);
        drop(self.shared);
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// The daemon: runs until `shutdown` is cancelled, then stops cleanly. With the config's path,
/// SIGHUP re-reads it: an invalid file is logged and the running config stays; a valid one is
/// applied as a difference ([`Gateway::reload`]).
pub async fn run(
    config: Config,
    path: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let mut gw = Gateway::start(config).await?;
    let status = |gw: &Gateway| {
        format!(
            "{} buses, {} devices, http on {}",
            gw.config.buses.len(),
            gw.config.devices.len(),
            gw.http_addr
        )
    };
    tracing::info!("gateway running: {}", status(&gw));
    // Config valid, store open, HTTP bound: ready.
    service::ready(&status(&gw));
    let mut hup = sighup();
    loop {
        let watchdog_stop = shutdown.child_token();
        let watchdog = tokio::spawn(service::watchdog(gw.shared.clone(), watchdog_stop.clone()));
        let reload = tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = hup.recv() => true,
        };
        watchdog_stop.cancel();
        let _ = watchdog.await;
        if !reload {
            break;
        }
        let Some(path) = &path else { continue };
        service::reloading();
        let loaded = match config::load(path) {
            Ok(l) => l,
            Err(config::ConfigError::Invalid(problems)) => {
                for p in &problems {
                    tracing::error!(
                        "reload refused, the running config stays: {}: {p}",
                        path.display()
                    );
                }
                service::ready(&status(&gw));
                continue;
            }
            Err(e) => {
                tracing::error!("reload refused, the running config stays: {e}");
                service::ready(&status(&gw));
                continue;
            }
        };
        let previous = (*gw.config).clone();
        match gw.reload(loaded.config).await {
            Ok((next, summary)) => {
                tracing::info!(
                    kept = ?summary.kept,
                    restarted = ?summary.restarted,
                    added = ?summary.added,
                    removed = ?summary.removed,
                    "config reloaded: {}",
                    status(&next)
                );
                gw = next;
            }
            Err(e) => {
                // The new config could not start (its HTTP address is taken, say): back to the
                // one that ran.
                tracing::error!("reload failed ({e}); restarting with the previous config");
                gw = Gateway::start(previous).await?;
            }
        }
        service::ready(&status(&gw));
    }
    tracing::info!("shutting down");
    service::stopping();
    gw.shutdown().await;
    Ok(())
}

/// SIGHUP as a stream; never fires where there is no such signal.
fn sighup() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut s) = signal(SignalKind::hangup()) else {
            return;
        };
        while s.recv().await.is_some() {
            let _ = tx.try_send(());
        }
    });
    #[cfg(not(unix))]
    drop(tx);
    rx
}
