//! The running OPC UA server, which outlives a gateway: a reload that leaves `[opcua]` and the
//! gateway's id as they were attaches the next gateway (its address space rebuilt, its users,
//! writes and counters) to the same server, so clients keep their sessions and subscriptions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use ua::server::node_manager::memory::InMemoryNodeManager;
use ua::server::{ServerBuilder, ServerEndpoint, SubscriptionCache};
use ua::types::NodeId;

use super::{namespace_uri, nodes, space, users, Feed, OpcuaError, Parts};
use crate::config::{Config, Opcua, OpcuaSecurity};
use crate::state::SharedLive;
use crate::sync::Locked as _;

pub struct Server {
    /// What it was built for: another `[opcua]` or gateway id needs a new server.
    opcua: Opcua,
    gateway_id: String,
    /// Monitored items allowed per subscription, fixed at build: a config that outgrows it
    /// needs a new server.
    max_items: usize,
    manager: Arc<InMemoryNodeManager<nodes::GatewayNodes>>,
    subscriptions: Arc<SubscriptionCache>,
    info: Arc<ua::server::ServerInfo>,
    users: Arc<users::Users>,
    ns: u16,
    /// The nodes of the gateway attached last.
    built: Mutex<Vec<NodeId>>,
    stop: CancellationToken,
    run: tokio::task::JoinHandle<()>,
    /// Shared with each attached gateway's feed ([`Server::hold_feed`]).
    held: Arc<tokio::sync::Mutex<()>>,
}

/// Monitored items one subscription may hold for `config`: a SCADA monitors every point in one
/// subscription (the library's 1,000 would refuse the rest of a large config), with room for
/// points added by later reloads.
fn items_for(config: &Config) -> usize {
    let items: usize = config.devices.iter().map(|d| d.points.len() + 1).sum();
    (items + items / 2).max(1000)
}

impl Server {
    /// Builds the server for `config` and runs it on `listener` until stopped.
    pub fn start(
        config: &Config,
        listener: std::net::TcpListener,
        parts: &Parts,
    ) -> Result<Server, OpcuaError> {
        let addr = listener
            .local_addr()
            .map_err(|e| OpcuaError::Build(e.to_string()))?;
        let max_items = items_for(config);
        let users = Arc::new(users::Users::new(
            parts.auth.clone(),
            config,
            config.opcua.anonymous,
        ));
        let stop = CancellationToken::new();
        let builder = builder(config, addr, users.clone(), max_items).token(stop.clone());
        let (server, handle) = builder.build().map_err(OpcuaError::Build)?;
        let manager = handle
            .node_managers()
            .get_of_type::<InMemoryNodeManager<nodes::GatewayNodes>>()
            .ok_or_else(|| OpcuaError::Build("no node manager".into()))?;
        let ns = handle
            .get_namespace_index(&namespace_uri(&config.gateway.id))
            .ok_or_else(|| OpcuaError::Build("no namespace".into()))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| OpcuaError::Build(e.to_string()))?;
        let run = tokio::spawn(async move {
            if let Err(e) = server.run_with(listener).await {
                tracing::error!("OPC UA server stopped: {e}");
            }
        });
        tracing::info!(
            "OPC UA server on opc.tcp://{addr}/ ({} endpoints)",
            config.opcua.security.len()
        );
        Ok(Server {
            opcua: config.opcua.clone(),
            gateway_id: config.gateway.id.clone(),
            max_items,
            manager,
            subscriptions: handle.subscriptions().clone(),
            info: handle.info().clone(),
            users,
            ns,
            built: Mutex::new(Vec::new()),
            stop,
            run,
            held: Arc::default(),
        })
    }

    /// Whether this server can carry on under `config`.
    pub fn serves(&self, config: &Config) -> bool {
        config.opcua == self.opcua
            && config.gateway.id == self.gateway_id
            && items_for(config) <= self.max_items
    }

    /// Attaches a starting gateway: its address space replaces the last one's, its users,
    /// writes and counters are the server's now, and the feed its pipeline reports to keeps
    /// the values (and `Online`) current until `cancel`.
    pub fn attach(
        &self,
        config: &Arc<Config>,
        parts: Parts,
        live: &SharedLive,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Arc<Feed> {
        let (space, online) = {
            let live = crate::state::read(live);
            let mut built = self.built.locked();
            space::Space::remove(self.manager.address_space(), &built);
            let space = Arc::new(space::Space::build(
                config,
                self.ns,
                self.manager.address_space(),
                &live,
            ));
            *built = space.created().to_vec();
            let online: Vec<AtomicBool> = live
                .devices
                .iter()
                .map(|d| AtomicBool::new(d.online))
                .collect();
            (space, online)
        };
        self.users.attach(parts.auth.clone(), config);
        self.manager.inner().attach(Some(nodes::Attached {
            control: parts.control.clone(),
            metrics: parts.metrics.clone(),
            admins: nodes::Attached::admins(config),
            space: space.clone(),
            live: live.clone(),
        }));
        parts.metrics.opcua.enabled.store(true, Relaxed);
        let (queue, reports) = tokio::sync::mpsc::channel(super::FEED_QUEUE);
        let feed = Arc::new(Feed {
            manager: self.manager.clone(),
            subscriptions: self.subscriptions.clone(),
            space,
            queue,
            // Every device sent whole at the first tick: the monitored items of sessions a
            // reload kept get the carried live state, whatever the stopping gateway's feed had
            // queued and not yet sent when it was cancelled.
            behind: online.iter().map(|_| AtomicBool::new(true)).collect(),
            turns: online.iter().map(|_| AtomicU64::new(0)).collect(),
            behind_log: crate::log_limit::LogLimit::new(std::time::Duration::from_secs(60)),
            online,
            info: self.info.clone(),
            live: live.clone(),
            metrics: parts.metrics,
            held: self.held.clone(),
        });
        tasks.spawn(super::serve(feed.clone(), reports, cancel.child_token()));
        feed
    }

    /// At a reload to `config`: the server carries on when `config` can keep it (its clients
    /// keep their sessions), let go of the stopping gateway; else it stops now, giving its
    /// port back for the new one.
    pub async fn into_reload(self, config: &Config) -> Option<Server> {
        if self.serves(config) {
            self.detach();
            Some(self)
        } else {
            self.stop().await;
            None
        }
    }

    /// Lets go of the stopping gateway (its store must close); the next start attaches again.
    pub fn detach(&self) {
        self.manager.inner().attach(None);
    }

    /// Holds the feed's task still until the guard is dropped: the field's reports queue up
    /// (and past [`super::FEED_QUEUE`] are left out), as under a server too busy to take them.
    /// For tests of that path; a stop does not wait for the guard.
    pub async fn hold_feed(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.held.clone().lock_owned().await
    }

    /// Stops the server (its sessions end) and waits for it.
    pub async fn stop(self) {
        self.detach();
        self.stop.cancel();
        let _ = self.run.await;
    }
}

/// The server as the config describes it: its names, certificate, endpoints, users, limits.
fn builder(
    config: &Config,
    addr: SocketAddr,
    users: Arc<users::Users>,
    max_items: usize,
) -> ServerBuilder {
    let o = &config.opcua;
    let host = if addr.ip().is_unspecified() {
        crate::host::name().unwrap_or_else(|| "localhost".into())
    } else {
        addr.ip().to_string()
    };
    let mut builder = ServerBuilder::new()
        .application_name(format!("edge-gateway {}", config.gateway.id))
        .application_uri(format!("urn:edge-gateway:{}:server", config.gateway.id))
        .product_uri("urn:edge-gateway")
        .create_sample_keypair(true)
        .certificate_path("own/cert.der")
        .private_key_path("private/private.pem")
        .pki_dir(&o.pki_dir)
        .trust_client_certs(o.trust_client_certs)
        .host(host)
        .port(addr.port())
        .max_sessions(o.max_sessions)
        .discovery_urls(vec!["/".to_owned()])
        .with_authenticator(users)
        .with_node_manager(nodes::GatewayNodes::builder(namespace_uri(
            &config.gateway.id,
        )))
        // For the current session count (`edge_opcua_sessions`).
        .diagnostics_enabled(true);
    builder
        .limits_mut()
        .subscriptions
        .max_monitored_items_per_sub = max_items;
    for (id, endpoint) in endpoints(&o.security) {
        builder = builder.add_endpoint(id, endpoint);
    }
    builder
}

/// The endpoints `security` lists: each secured one with SignAndEncrypt.
fn endpoints(security: &[OpcuaSecurity]) -> Vec<(&'static str, ServerEndpoint)> {
    // Identities are the authenticator's (`users`): no token ids of the library's own.
    let tokens: &[String] = &[];
    security
        .iter()
        .map(|s| match s {
            OpcuaSecurity::None => ("none", ServerEndpoint::new_none("/", tokens)),
            OpcuaSecurity::Basic256Sha256 => (
                "basic256sha256",
                ServerEndpoint::new_basic256sha256_sign_encrypt("/", tokens),
            ),
            OpcuaSecurity::Aes256Sha256RsaPss => (
                "aes256sha256rsapss",
                ServerEndpoint::new_aes256_sha256_rsapss_sign_encrypt("/", tokens),
            ),
        })
        .collect()
}
