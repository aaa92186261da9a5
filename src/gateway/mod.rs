//! A running gateway: starts every stage from a valid config (store, buses, pipeline, event
//! processor, pushes, sinks, HTTP), reloads it as a difference, and stops it with the store
//! flushed last.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod handles;
mod north;
mod open;
mod stages;
mod upstream;

use crate::api::Shared;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::modbus::bus::{same_device, BusRequest, BusTask, WriteError};
use crate::model::Value;
use crate::state::{self, SharedLive};
use crate::store::{self, StoreHandle};
use crate::{api, events, modbus, ws};
use handles::Handles;
use north::{start_modbus_server, start_opcua};
use open::{bus_task, open, Opened};
use stages::{spawn_housekeeping, spawn_http_side, spawn_pipeline};
use upstream::spawn_sinks;

/// What a live reload carries from the running gateway into the next one.
#[derive(Default)]
pub(crate) struct Carry {
    /// Handed-over bus tasks, by bus name.
    buses: HashMap<String, BusTask>,
    /// Live state of the devices on those buses, by device id.
    live: HashMap<String, state::DeviceLive>,
    /// Their raw words a Modbus server mirrors, by device id.
    images: HashMap<String, Arc<modbus::image::Image>>,
    /// Logged-in sessions (token, session).
    sessions: Vec<(String, api::auth::Session)>,
    /// The listening socket and the `http.listen` it was bound for: kept open across the
    /// reload, so a client that connects meanwhile waits in its backlog instead of being
    /// refused.
    listener: Option<(String, std::net::TcpListener)>,
    /// The config file the dashboard edits, when the gateway runs from one.
    config_file: Option<Arc<crate::config::versions::ConfigFile>>,
    /// Where open WebSocket connections wait for the next gateway, and the admission that
    /// counts them (when `push.max_clients` is unchanged).
    front: Option<Arc<api::shared::Front>>,
    admission: Option<Arc<ws::admit::Admission>>,
    /// The OPC UA server, when `[opcua]` and the gateway id are unchanged: its clients keep
    /// their sessions.
    opcua: Option<crate::opcua::Server>,
    /// The Modbus TCP server, when its `listen` is unchanged: its connections stay open.
    modbus_server: Option<crate::modbus_server::Server>,
    /// A remote config under way or on trial, which the next gateway carries on.
    fleet: Option<Arc<crate::fleet::apply::Trial>>,
    /// Where the buses and the pipeline run (see [`Field`]).
    field: Field,
}

impl Carry {
    /// The live state as restored from the store, but for the devices whose bus carries on:
    /// those keep theirs (not stale, not offline, just as they were a moment ago).
    fn live_for(&mut self, config: &Config, restored: &store::Restored) -> SharedLive {
        let mut live = state::Live::restored(config, restored);
        for (d, dev) in config.devices.iter().enumerate() {
            if let Some(l) = self.live.remove(&dev.id) {
                live.devices[d] = l.carried(std::mem::take(&mut live.devices[d]), dev);
            }
        }
        Arc::new(RwLock::new(live))
    }

    /// A first start from a config file (the daemon; tests that edit the config).
    pub fn with_config_file(file: Arc<crate::config::versions::ConfigFile>) -> Carry {
        Carry {
            config_file: Some(file),
            ..Carry::default()
        }
    }

    /// The buses and the pipeline on a thread of their own, for this gateway and every one a
    /// reload starts after it (the daemon).
    pub fn on_field_thread(mut self) -> Carry {
        self.field = Field::own_thread();
        self
    }
}

/// Where the field side runs — the bus tasks and the pipeline they feed: the runtime of
/// whoever starts the gateway (tests, with their paused clocks), or in the daemon one thread of
/// its own. There a Modbus answer and its trip through the pipeline wake one thread, which
/// sleeps in the kernel's event wait and shares its run queue with no one: on the 10 × 50 × 30
/// load the work-stealing pool's wake-ups (a parked worker woken to steal a second ready task)
/// were the largest cost after the kernel's TCP work. A TLS handshake or an OPC UA session's
/// RSA on the pool never holds up a poll either, nor the OPC UA library's locks (the feed hands
/// its changes to the server's task).
#[derive(Clone, Default)]
pub(crate) struct Field(Option<tokio::runtime::Handle>);

impl Field {
    /// A current-thread runtime on a thread named `field`, alive for the process; the caller's
    /// runtime (logged) if it cannot start.
    fn own_thread() -> Field {
        let built = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .and_then(|rt| {
                let handle = rt.handle().clone();
                std::thread::Builder::new()
                    .name("field".into())
                    .spawn(move || rt.block_on(std::future::pending::<()>()))?;
                Ok(handle)
            });
        match built {
            Ok(handle) => Field(Some(handle)),
            Err(e) => {
                tracing::warn!("the buses run on the shared pool: no thread of their own ({e})");
                Field(None)
            }
        }
    }

    fn spawn<F>(&self, tasks: &TaskTracker, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match &self.0 {
            Some(handle) => drop(tasks.spawn_on(task, handle)),
            None => drop(tasks.spawn(task)),
        }
    }
}

/// What a reload did with each bus, by name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReloadSummary {
    /// Their own settings unchanged: handed over with their links (and the state of each
    /// device that is unchanged too).
    pub kept: Vec<String>,
    /// Their own settings changed: started fresh, reconnected.
    pub restarted: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// A bus keeps its link when its own settings are unchanged, wherever it sits in the list;
/// its devices are matched one by one ([`BusTask::retarget`]).
fn same_bus(old: &Config, ob: usize, new: &Config, nb: usize) -> bool {
    old.buses[ob] == new.buses[nb]
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
    /// The OPC UA server this gateway is attached to, for a reload to carry over.
    opcua: Option<crate::opcua::Server>,
    /// The Modbus TCP server this gateway answers through, likewise.
    modbus_server: Option<crate::modbus_server::Server>,
    /// The raw words the server mirrors, kept for devices a reload leaves unchanged.
    images: Arc<modbus::image::Images>,
    fleet: Arc<crate::fleet::apply::Trial>,
    field: Field,
    /// Another way into the pipeline, as a bus would feed it (replay, tests); dropped at
    /// shutdown so the pipeline can drain and end.
    bus_events: Option<mpsc::Sender<modbus::bus::BusEvent>>,
    /// Another way into the event processor, as the rule engine would feed it.
    event_queues: Option<events::processor::Queues>,
    /// Barriers through the pipeline and the event processor ([`Gateway::settle`]).
    settle: mpsc::Sender<oneshot::Sender<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Opcua(#[from] crate::opcua::OpcuaError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("https: {0}")]
    Tls(#[from] crate::tls::server::TlsError),
}

/// A start that failed, and what it carried.
struct Failed {
    error: StartError,
    carry: Carry,
}

/// A reload whose config could not start: why, and the previous config started again (or why
/// that failed too).
pub struct ReloadError {
    pub error: StartError,
    pub running: Result<Gateway, StartError>,
}

impl std::fmt::Debug for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.running {
            Ok(_) => write!(f, "{}; the previous config runs again", self.error),
            Err(e) => write!(f, "{}; the previous config failed too: {e}", self.error),
        }
    }
}

impl Gateway {
    /// Opens the store, binds HTTP and starts one task per bus. The config is already valid.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Self::start_with(config, Carry::default()).await
    }

    pub(crate) async fn start_with(config: Config, carry: Carry) -> Result<Gateway, StartError> {
        Self::try_start(config, carry).await.map_err(|f| f.error)
    }

    /// A start that, when it fails, gives back what it was carrying: a reload whose config
    /// cannot start goes back to the previous one with the same connections, sessions and
    /// handed-over buses. What can fail (the listener, the store) comes before anything is
    /// taken from the carry.
    async fn try_start(config: Config, mut carry: Carry) -> Result<Gateway, Box<Failed>> {
        let config = Arc::new(config);
        let Opened {
            opcua,
            modbus_server,
            kept,
            http_addr,
            listener,
            metrics,
            store,
            restored,
            store_thread,
            tls,
        } = match open(&config, &mut carry) {
            Ok(o) => o,
            Err(error) => return Err(Box::new(Failed { error, carry })),
        };
        let live = carry.live_for(&config, &restored);
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();

        // The stages' handles first; each stage takes the few it uses.
        let (h, requests) = Handles::new(&config, &live, &metrics, &store, &restored, &mut carry);
        let (events_tx, events_rx) = mpsc::channel(modbus::bus::EVENTS_CAPACITY);
        let images = modbus::image::Images::for_config(&config, &mut carry.images);
        for (b, wrx) in requests.into_iter().enumerate() {
            let task = bus_task(&mut carry, b, &config, &events_tx, wrx, &metrics, &images);
            carry.field.spawn(&tasks, task.run(cancel.child_token()));
        }
        let modbus_server =
            start_modbus_server(&h, carry.modbus_server.take(), modbus_server, &images);
        let bus_events = Some(events_tx);
        let opcua = start_opcua(&h, carry.opcua.take(), opcua);
        let (queues, settle) = spawn_pipeline(
            &h,
            &restored,
            events_rx,
            opcua.as_ref(),
            (&tasks, &carry.field),
            &cancel,
        );
        let operator = Some(queues.operator());
        spawn_housekeeping(&h, &tasks, &cancel);
        let fleet = carry
            .fleet
            .take()
            .unwrap_or_else(|| crate::fleet::apply::Trial::load(&config.gateway.data_dir));
        let (port, fleet_channels) = crate::fleet::remote::port(&config);
        let file = carry.config_file.clone();
        spawn_sinks(&h, operator.as_ref(), (port, file), &tasks, &cancel);

        // Last, the HTTP side's context, from the same handles.
        let shared = h.into_shared(&mut carry, operator, cancel.child_token());
        let http = (listener, tls);
        spawn_http_side(&shared, http, (&fleet, fleet_channels), &tasks, &cancel);
        tasks.close();
        let event_queues = Some(queues);
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
            opcua,
            modbus_server,
            images,
            fleet,
            field: carry.field.clone(),
            bus_events,
            event_queues,
            settle,
        })
    }

    /// Where the Modbus TCP server listens (its port when `listen` asked for port 0).
    pub fn modbus_server_addr(&self) -> Option<SocketAddr> {
        self.modbus_server
            .as_ref()
            .map(crate::modbus_server::Server::local_addr)
    }

    /// The Modbus TCP server this gateway answers through (the fuzz test feeds it streams).
    pub fn modbus_server(&self) -> Option<&crate::modbus_server::Server> {
        self.modbus_server.as_ref()
    }

    /// Feeds one bus event into the pipeline, exactly as a bus task would.
    pub async fn inject(&self, ev: modbus::bus::BusEvent) {
        if let Some(tx) = &self.bus_events {
            let _ = tx.send(ev).await;
        }
    }

    /// Waits until everything fed in before (bus events, drafts) went through the pipeline
    /// and the event processor and is committed: a signal to wait for instead of a sleep.
    pub async fn settle(&self) {
        let (done, settled) = oneshot::channel();
        if self.settle.send(done).await.is_ok() {
            let _ = settled.await;
        }
        if let Some(q) = &self.event_queues {
            let (done, settled) = oneshot::channel();
            q.settle(done).await;
            let _ = settled.await;
        }
        // Waited for on a blocking thread: while one runs, a test's paused clock does not jump
        // ahead, as it would while the runtime idles waiting for the store's own thread.
        let store = self.store.clone();
        let handle = tokio::runtime::Handle::current();
        let _ = tokio::task::spawn_blocking(move || handle.block_on(store.flush())).await;
    }

    /// Feeds one event draft to the processor, exactly as the rule engine would.
    pub async fn inject_draft(&self, d: events::Draft) {
        if let Some(q) = &self.event_queues {
            q.send(d).await;
        }
    }

    /// Holds the OPC UA server's feed still until the guard is dropped (`None` without the
    /// server): what a server too busy to keep up looks like to the field, for tests.
    pub async fn hold_opcua_feed(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.opcua {
            Some(server) => Some(server.hold_feed().await),
            None => None,
        }
    }

    /// Writes a point by ids (as the local operator "gateway"); see [`Control::write_audited`].
    pub async fn write(&self, device: &str, point: &str, value: Value) -> Result<(), WriteError> {
        let (d, p) = self.find(device, point).ok_or(WriteError::NotWritable)?;
        self.shared
            .control
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
    ///
    /// A config that cannot start (its port is taken, its store will not open) gives way to
    /// the previous one, started again with everything the reload carried.
    pub async fn reload(mut self, new: Config) -> Result<(Gateway, ReloadSummary), ReloadError> {
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
            let handed = match self.shared.control.buses[b]
                .send(BusRequest::Handover(tx))
                .await
            {
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
                    self.carry_devices(&mut carry, b, &new);
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
        tell_changed_users(&self.shared, &old, &new).await;
        carry.sessions = self.shared.auth.sessions();
        carry.config_file = self.shared.config_file.clone();
        carry.fleet = Some(self.fleet.clone());
        carry.field = self.field.clone();
        carry.listener = self.listener.take().map(|l| (old.http.listen.clone(), l));
        // Open WebSocket connections wait for the new gateway instead of closing (SPEC
        // "Reload": nobody else notices).
        self.shared.front.reload_begins();
        carry.front = Some(self.shared.front.clone());
        if old.push.max_clients == new.push.max_clients {
            carry.admission = Some(self.shared.admission.clone());
        }
        if let Some(s) = self.opcua.take() {
            carry.opcua = s.into_reload(&new).await;
        }
        if let Some(s) = self.modbus_server.take() {
            carry.modbus_server = s.into_reload(&new).await;
        }
        self.shutdown().await;
        match Gateway::try_start(new, carry).await {
            Ok(gw) => Ok((gw, summary)),
            Err(failed) => {
                let Failed { error, carry } = *failed;
                let running = Gateway::start_with((*old).clone(), carry).await;
                Err(ReloadError { error, running })
            }
        }
    }

    /// The live state (and mirrored raw words) of bus `b`'s devices that carry on unchanged;
    /// an added or changed one starts as a new device does.
    fn carry_devices(&self, carry: &mut Carry, b: usize, new: &Config) {
        let old = &self.config;
        let live = state::read(&self.live);
        for (d, dev) in old.devices.iter().enumerate().filter(|(_, d)| d.bus == b) {
            if new
                .devices
                .iter()
                .any(|n| n.id == dev.id && same_device(dev, n))
            {
                carry.live.insert(dev.id.clone(), live.devices[d].clone());
                if let Some(image) = self.images.device(d) {
                    carry.images.insert(dev.id.clone(), image.clone());
                }
            }
        }
    }

    /// Stops the buses, lets the pipeline drain into the store, and waits for the store to
    /// commit everything: the store flushes last.
    pub async fn shutdown(mut self) {
        self.bus_events.take();
        self.event_queues.take();
        self.cancel.cancel();
        self.tasks.wait().await;
        self.shared.front.stopped().await;
        if let Some(s) = self.opcua.take() {
            s.stop().await;
        }
        if let Some(s) = self.modbus_server.take() {
            s.stop().await;
        }
        self.store.flush().await;
        let thread = self.store_thread.take();
        drop(self.store);
        drop(self.shared);
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// A reload that removes a user, changes a role or a password ends that user's sessions:
/// every socket of theirs is told `push.session` `{"reason":"user changed"}` before the old
/// gateway closes them (waited for up to a second), and their tokens are not carried over.
async fn tell_changed_users(shared: &Shared, old: &Config, new: &Config) {
    let mut told = Vec::new();
    for u in &old.users {
        if !new
            .users
            .iter()
            .any(|n| n.name == u.name && n.role == u.role && n.password_hash.0 == u.password_hash.0)
        {
            told.extend(shared.hub.end_user_sessions(&u.name, "user changed"));
            shared.auth.forget_user(&u.name);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while told.iter().any(|c| c.queued() > 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
