//! What the HTTP and WebSocket handlers share (and the MQTT sink's writes, for now): the
//! config, the live state, and the ways into the buses, the store and the connected clients.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::modbus::bus::{BusRequest, WriteCommand, WriteError};
use crate::model::{now_ms, Value};
use crate::state::{self, SharedLive};
use crate::store::{self, StoreCmd, StoreHandle};
use crate::{modbus, sinks, ws};

/// What every task and handler shares: the config, the live state, and the ways into the
/// buses, the store and the connected clients.
pub struct Shared {
    pub config: Arc<Config>,
    pub live: SharedLive,
    pub metrics: Arc<Metrics>,
    pub store: StoreHandle,
    /// One per bus, in config order: writes jump that bus's poll queue.
    /// Per bus: operator requests (writes, raw reads) that go ahead of its polls.
    pub writes: Vec<tokio::sync::mpsc::Sender<BusRequest>>,
    pub hub: Arc<ws::hub::Hub>,
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
            old.as_ref().map_or_else(|| "unknown".into(), std::string::ToString::to_string),
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
