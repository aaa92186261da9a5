//! Operator requests to the buses, from the dashboard, MQTT or the API: audited writes, the
//! register inspector's raw reads and unit scans, each served in its bus's turn.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::modbus;
use crate::modbus::bus::{BusRequest, WriteCommand, WriteError};
use crate::model::{now_ms, Millis, Value};
use crate::state::{self, SharedLive};
use crate::store::{self, StoreCmd, StoreHandle};

/// The ways into the buses for an operator, and what a write is audited against.
/// Operator requests (writes, the inspector's reads, a reload's handover) waiting for one bus,
/// served ahead of its polls; past it a caller waits for a place (a queued MQTT or Sparkplug
/// write that cannot wait is answered busy by its sink).
pub const REQUESTS_PER_BUS: usize = 16;

pub struct Control {
    pub config: Arc<Config>,
    pub live: SharedLive,
    pub store: StoreHandle,
    /// Per bus, in config order: operator requests (writes, raw reads, a reload's handover)
    /// that go ahead of its polls.
    pub buses: Vec<mpsc::Sender<BusRequest>>,
}

/// A write the device confirmed.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The point's value before, as last polled.
    pub old: Option<Value>,
    /// What the device holds after the write, read back (`None` when that read failed).
    pub read_back: Option<Value>,
}

impl Control {
    /// Writes a point through its bus, ahead of the polls; once the device confirmed, returns
    /// the value it had before and the one it holds now. Every attempt is recorded in the
    /// audit table.
    pub async fn write_audited(
        &self,
        user: &str,
        source: &str,
        device: usize,
        point: usize,
        value: Value,
    ) -> Result<Written, WriteError> {
        self.write_audited_until(user, source, device, point, value, None)
            .await
    }

    /// [`Control::write_audited`] for a command that must not run late: past `expiry`
    /// (`(sent_at, max_age)`) it is refused and audited as such, never sent to the bus.
    pub async fn write_audited_until(
        &self,
        user: &str,
        source: &str,
        device: usize,
        point: usize,
        value: Value,
        expiry: Option<(Millis, Duration)>,
    ) -> Result<Written, WriteError> {
        let old = state::read(&self.live).devices[device].points[point]
            .value
            .clone();
        let age_ms = expiry.map(|(sent, _)| now_ms() - sent);
        let result = match (expiry, age_ms) {
            (Some((_, max)), Some(age)) if age > max.as_millis() as i64 => {
                Err(WriteError::TooOld {
                    age_s: age as f64 / 1000.0,
                    max_s: max.as_secs(),
                })
            }
            _ => {
                let (tx, rx) = oneshot::channel();
                let cmd = WriteCommand {
                    device,
                    point,
                    value: value.clone(),
                    reply: tx,
                };
                let bus = self.config.devices[device].bus;
                match self.buses[bus].send(BusRequest::Write(cmd)).await {
                    Ok(()) => rx.await.unwrap_or(Err(WriteError::BusGone)),
                    Err(_) => Err(WriteError::BusGone),
                }
            }
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
                Ok(Some(back)) => format!("ok, reads back {back}"),
                Ok(None) => "ok".to_string(),
                Err(e) => e.to_string(),
            }
        );
        self.store
            .send(StoreCmd::Audit(store::Audit {
                ts: now_ms(),
                user: user.to_string(),
                source: source.to_string(),
                device_id: dev.id.clone(),
                point_id: dev.points[point].id.clone(),
                old: old.clone(),
                new: value,
                result: match &result {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.to_string(),
                },
            }))
            .await;
        result.map(|read_back| Written { old, read_back })
    }

    /// Reads raw registers or bits of a device in its bus's turn (the register inspector).
    pub async fn read_raw(
        &self,
        bus: usize,
        unit: u8,
        table: modbus::codec::Table,
        address: u16,
        count: u16,
    ) -> modbus::reply::Reply<modbus::reply::Data> {
        let (reply, rx) = oneshot::channel();
        let req = BusRequest::Read(modbus::bus::RawRead {
            unit,
            table,
            address,
            count,
            reply,
        });
        let gone = || {
            Err(modbus::reply::LinkError::Transport(
                "the bus is not running".into(),
            ))
        };
        match self.buses[bus].send(req).await {
            Ok(()) => rx.await.unwrap_or_else(|_| gone()),
            Err(_) => gone(),
        }
    }

    /// Starts a scan of unit ids on a bus (`bus.scan`); progress comes on the request's
    /// channel, the result on its reply.
    pub async fn scan(&self, bus: usize, req: modbus::bus::ScanRequest) -> Result<(), String> {
        self.buses[bus]
            .send(BusRequest::Scan(req))
            .await
            .map_err(|_| "the bus is not running".to_string())
    }

    /// Ends the scan running on a bus, if any, after its probe in progress.
    pub async fn scan_cancel(&self, bus: usize) {
        let _ = self.buses[bus].send(BusRequest::ScanCancel).await;
    }
}
