//! What a start opens that can fail (the OPC UA, Modbus and HTTP sockets, the store), and the bus
//! tasks it takes over from a reload.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Carry, StartError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::modbus::bus::{BusRequest, BusTask};
use crate::store::{self, StoreHandle};
use crate::{http, modbus, sinks};

/// What a start opens that can fail, in an order that leaves the carry whole when it does.
pub(super) struct Opened {
    pub(super) opcua: Option<std::net::TcpListener>,
    pub(super) modbus_server: Option<std::net::TcpListener>,
    pub(super) kept: std::net::TcpListener,
    pub(super) http_addr: SocketAddr,
    pub(super) listener: tokio::net::TcpListener,
    pub(super) metrics: Arc<Metrics>,
    pub(super) store: StoreHandle,
    pub(super) restored: store::Restored,
    pub(super) store_thread: std::thread::JoinHandle<()>,
    /// The dashboard's HTTPS, read (or made) at each start.
    pub(super) tls: Option<Arc<crate::tls::server::ServerTls>>,
}

/// The OPC UA and HTTP sockets, then the store. On failure the carry keeps the HTTP socket it
/// came with, for the config that starts instead.
pub(super) fn open(config: &Arc<Config>, carry: &mut Carry) -> Result<Opened, StartError> {
    // First: a certificate that cannot be read takes nothing from the carry.
    let tls = crate::tls::server::load(config)?.map(Arc::new);
    // A carried server that serves this config keeps its socket.
    let opcua = if carry.opcua.is_some() {
        None
    } else {
        crate::opcua::bind(config)?
    };
    let modbus_server = if carry.modbus_server.is_some() {
        None
    } else {
        crate::modbus_server::bind(config).map_err(|source| StartError::Listen {
            addr: config.modbus_server.listen.to_string(),
            source: crate::service::low_port_hint(source, config.modbus_server.listen.port()),
        })?
    };
    let reused = (carry.listener.as_ref()).is_some_and(|(l, _)| *l == config.http.listen);
    let (kept, http_addr, listener) = listen(config, &mut carry.listener)?;
    let metrics = Arc::new(Metrics::new(
        config.devices.iter().map(|d| d.id.clone()).collect(),
        config.buses.iter().map(|b| b.name.clone()).collect(),
    ));
    let (store, restored, store_thread) =
        match store::open(config.clone(), metrics.clone(), sinks::configured(config)) {
            Ok(s) => s,
            Err(e) => {
                if reused {
                    carry.listener = Some((config.http.listen.clone(), kept));
                }
                return Err(e.into());
            }
        };
    Ok(Opened {
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
    })
}

/// Bus `b`'s task: the one a reload handed over (its link kept), aimed at the new config, or
/// a new one.
pub(super) fn bus_task(
    carry: &mut Carry,
    b: usize,
    config: &Arc<Config>,
    events: &mpsc::Sender<modbus::bus::BusEvent>,
    writes: mpsc::Receiver<BusRequest>,
    metrics: &Arc<Metrics>,
    images: &Arc<modbus::image::Images>,
) -> BusTask {
    let (config, events, metrics) = (config.clone(), events.clone(), metrics.clone());
    let images = images.clone();
    match carry.buses.remove(&config.buses[b].name) {
        Some(mut task) => {
            task.retarget(b, config, events, writes, metrics, images);
            task
        }
        None => BusTask::new(b, config, events, writes, metrics, images),
    }
}

/// The HTTP listener: the one a reload carried over when `http.listen` is unchanged (the port
/// never closes), else a new one (the carried one stays in the carry, should this start fail).
/// Returns it (kept for the next reload), its address, and a tokio listener on the same socket.
fn listen(
    config: &Config,
    carried: &mut Option<(String, std::net::TcpListener)>,
) -> Result<(std::net::TcpListener, SocketAddr, tokio::net::TcpListener), StartError> {
    let listen_err = |source| StartError::Listen {
        addr: config.http.listen.clone(),
        source,
    };
    let kept = match carried.take() {
        Some((listen, l)) if listen == config.http.listen => l,
        other => {
            *carried = other;
            http::bind(&config.http.listen).map_err(listen_err)?
        }
    };
    let http_addr = kept.local_addr().map_err(listen_err)?;
    let listener = kept
        .try_clone()
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(listen_err)?;
    Ok((kept, http_addr, listener))
}
