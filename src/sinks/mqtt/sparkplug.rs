//! Sparkplug B 3.0 as the MQTT sink's format: the edge node's NBIRTH and NDEATH (the will,
//! with `bdSeq`), a DBIRTH per device with every point, DDATA by alias from the outbox,
//! DDEATH and DBIRTH as devices go and come, `seq` 0…255, Rebirth, DCMD writes, and the primary
//! host's STATE holding the outbox while the host is away.
//!
//! Historical: whatever the outbox holds from before this session's NBIRTH (an outage, a host
//! that was away) is sent after the births with `is_historical`, so a host's live tags never
//! step back in time; so is a sample of a device that is dead now. Events ride on the node's
//! `Event` metric as SPEC's event JSON, each with its own timestamp.

mod commands;
pub mod payload;
mod topics;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use rumqttc::{LastWill, QoS};

use super::{Format, Inbound, Publish, Tag, MAX_COMMAND_BYTES};
use crate::config::Config;
use crate::control::{Control, Written};
use crate::log_limit::LogLimit;
use crate::modbus::bus::WriteError;
use crate::model::{now_ms, Millis, Quality};
use crate::sinks::feed::Batch;
use crate::sinks::{SinkContext, SinkStatus};
use crate::state;
use crate::store::OutboxRow;
pub use commands::Request;
use payload::{
    birth_metric, data_metric, named, DataType, Metric, MetricOf, MetricValue, Payload,
    PropertySet, PropertyValueKind,
};
pub use topics::Topics;

pub const NAMESPACE: &str = "spBv1.0";
pub const REBIRTH: &str = "Node Control/Rebirth";
pub const BD_SEQ: &str = "bdSeq";
/// The node's metrics' aliases; a device's points follow from [`FIRST_DEVICE_ALIAS`] on, in
/// config order, so an alias is unique across the node (Sparkplug's rule).
const ALIAS_REBIRTH: u64 = 1;
const ALIAS_VERSION: u64 = 2;
const ALIAS_UPTIME: u64 = 3;
const ALIAS_BACKLOG: u64 = 4;
const ALIAS_EVENT: u64 = 5;
const FIRST_DEVICE_ALIAS: u64 = 100;
/// Births at most this often: Rebirths that come sooner are carried out together once this has
/// passed, so a host repeating the command cannot make the node publish its whole birth set
/// without pause, and none is lost.
const REBIRTH_EVERY: Duration = Duration::from_secs(1);
/// How often NDATA refreshes the node's uptime and backlog.
const NODE_DATA: Duration = Duration::from_secs(30);
/// The file in the data dir that keeps the last `bdSeq`, so a restart does not reuse it.
const BD_SEQ_FILE: &str = "sparkplug-bdseq";

/// The edge node: its ids, this session's births and sequence numbers.
pub struct Node {
    config: Arc<Config>,
    control: Arc<Control>,
    status: Arc<SinkStatus>,
    topics: Topics,
    host: Option<String>,
    allow_writes: bool,
    bd_seq_file: PathBuf,
    /// This connection's `bdSeq` (the will's and the NBIRTH's).
    bd_seq: u8,
    /// The next message's `seq`.
    seq: u8,
    /// Device id → index, and per device its points by id and as metrics.
    devices: HashMap<String, usize>,
    points: Vec<HashMap<String, usize>>,
    metrics: Vec<Vec<MetricOf>>,
    /// When this session's NBIRTH went out; `None` before (the outbox is held).
    born_at: Option<Millis>,
    /// Per device: a DBIRTH and no DDEATH since, this session.
    alive: Vec<bool>,
    started: Instant,
    last_node_data: Instant,
    last_births: Option<Instant>,
    /// A Rebirth that came within [`REBIRTH_EVERY`] of the last births, due at the next tick.
    rebirth_due: bool,
    /// Commands refused, logged at most once a minute per reason.
    log: LogLimit<&'static str>,
}

impl Node {
    pub fn new(ctx: &SinkContext) -> Result<Node, String> {
        let config = ctx.config.clone();
        let mqtt = config.mqtt.as_ref().ok_or("[mqtt] is off")?;
        let sp = mqtt.sparkplug.as_ref().ok_or("format is not sparkplug_b")?;
        let bd_seq_file = config.gateway.data_dir.join(BD_SEQ_FILE);
        // The first connection takes the next number after the last run's.
        let last: Option<u8> = std::fs::read_to_string(&bd_seq_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let mut alias = FIRST_DEVICE_ALIAS;
        let metrics = config
            .devices
            .iter()
            .map(|d| {
                d.points
                    .iter()
                    .map(|p| {
                        alias += 1;
                        MetricOf {
                            alias: alias - 1,
                            datatype: DataType::of(p.format.data_type, p.format.scaled()),
                        }
                    })
                    .collect()
            })
            .collect();
        Ok(Node {
            topics: Topics {
                group: sp.group_id.clone(),
                node: sp.edge_node_id.clone(),
            },
            host: sp.primary_host_id.clone(),
            allow_writes: mqtt.allow_writes,
            bd_seq_file,
            bd_seq: last.unwrap_or(u8::MAX),
            seq: 0,
            devices: (config.devices.iter().enumerate())
                .map(|(i, d)| (d.id.clone(), i))
                .collect(),
            points: (config.devices.iter())
                .map(|d| {
                    (d.points.iter().enumerate())
                        .map(|(i, p)| (p.id.clone(), i))
                        .collect()
                })
                .collect(),
            metrics,
            born_at: None,
            alive: vec![false; config.devices.len()],
            started: crate::process_started(),
            last_node_data: Instant::now(),
            last_births: None,
            rebirth_due: false,
            log: LogLimit::new(Duration::from_secs(60)),
            control: ctx.control.clone(),
            status: ctx.status.clone(),
            config,
        })
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(s)
    }

    fn payload(&mut self, metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(now_ms() as u64),
            metrics,
            seq: Some(self.next_seq()),
            ..Payload::default()
        }
        .encode_to_vec()
    }

    /// `bdSeq`, by name only: NDEATH carries nothing else, and a host matches it to the
    /// NBIRTH's.
    fn bd_seq_metric(&self) -> Metric {
        Metric {
            name: Some(BD_SEQ.into()),
            datatype: Some(DataType::Int64 as u32),
            value: Some(MetricValue::Long(u64::from(self.bd_seq))),
            ..Metric::default()
        }
    }

    fn ndeath(&self) -> Vec<u8> {
        Payload {
            timestamp: Some(now_ms() as u64),
            metrics: vec![self.bd_seq_metric()],
            ..Payload::default()
        }
        .encode_to_vec()
    }

    /// NBIRTH (seq 0), a DBIRTH for every device with its current values, and a DDEATH for
    /// each device that is offline now: a host then knows every metric, and which devices
    /// are alive. Also a Rebirth's answer.
    fn births(&mut self, out: &mut Vec<Publish>) {
        self.seq = 0;
        let now = now_ms();
        let node = vec![
            self.bd_seq_metric(),
            named(
                REBIRTH,
                ALIAS_REBIRTH,
                DataType::Boolean,
                MetricValue::Boolean(false),
            ),
            named(
                "Node Info/Version",
                ALIAS_VERSION,
                DataType::String,
                MetricValue::String(env!("CARGO_PKG_VERSION").into()),
            ),
            self.uptime(Some("Node Info/Uptime")),
            self.backlog(Some("Node Info/Store Backlog")),
            Metric {
                is_null: Some(true),
                value: None,
                ..named(
                    "Event",
                    ALIAS_EVENT,
                    DataType::String,
                    MetricValue::Boolean(false),
                )
            },
        ];
        let payload = self.payload(node);
        out.push(Publish::own(self.topics.node("NBIRTH"), payload));
        let online: Vec<bool> = {
            let live = state::read(&self.control.live);
            live.devices.iter().map(|d| d.online).collect()
        };
        // Only a device that answers is born, with its values: a DBIRTH before the first
        // poll carried every metric null. The others are born when their status says online.
        for (d, on) in online.iter().enumerate() {
            if *on {
                out.push(self.dbirth(d, None));
            } else {
                self.alive[d] = false;
            }
        }
        self.born_at = Some(now);
        self.last_node_data = Instant::now();
        self.last_births = Some(Instant::now());
        self.rebirth_due = false;
    }

    /// A device's DBIRTH: every point with name, alias, datatype, its current value and time,
    /// and its properties (`engUnit`, `engLow`/`engHigh`, `Quality`).
    fn dbirth(&mut self, d: usize, tag: Tag) -> Publish {
        let metrics = {
            let live = state::read(&self.control.live);
            let device = &self.config.devices[d];
            device
                .points
                .iter()
                .zip(&self.metrics[d])
                .zip(&live.devices[d].points)
                .map(|((point, m), now)| birth_metric(point, m, now))
                .collect()
        };
        self.alive[d] = true;
        let topic = self.topics.device("DBIRTH", &self.config.devices[d].id);
        Publish {
            tag,
            ..Publish::own(topic, self.payload(metrics))
        }
    }

    fn ddeath(&mut self, d: usize, tag: Tag) -> Publish {
        self.alive[d] = false;
        let topic = self.topics.device("DDEATH", &self.config.devices[d].id);
        Publish {
            tag,
            ..Publish::own(topic, self.payload(Vec::new()))
        }
    }

    fn uptime(&self, name: Option<&str>) -> Metric {
        let mut props = PropertySet::default();
        props.push("engUnit", PropertyValueKind::String("s".into()));
        Metric {
            name: name.map(str::to_string),
            alias: Some(ALIAS_UPTIME),
            datatype: Some(DataType::UInt64 as u32),
            value: Some(MetricValue::Long(self.started.elapsed().as_secs())),
            properties: name.map(|_| props),
            ..Metric::default()
        }
    }

    fn backlog(&self, name: Option<&str>) -> Metric {
        Metric {
            name: name.map(str::to_string),
            alias: Some(ALIAS_BACKLOG),
            datatype: Some(DataType::Int64 as u32),
            value: Some(MetricValue::Long(
                self.status.backlog.load(Relaxed).max(0) as u64
            )),
            ..Metric::default()
        }
    }

    /// Whether a sample or event of this time is from before this session's births.
    fn historical(&self, ts: Millis) -> bool {
        self.born_at.is_none_or(|b| ts < b)
    }

    /// One outbox row as a message, or `None` when it has nothing to say now.
    fn row(&mut self, row: &OutboxRow, tag: Tag) -> Option<Publish> {
        match row {
            OutboxRow::Event(e) => {
                let metric = Metric {
                    alias: Some(ALIAS_EVENT),
                    timestamp: Some(e.ts as u64),
                    is_historical: self.historical(e.ts).then_some(true),
                    value: Some(MetricValue::String(e.spec().to_json().to_string())),
                    ..Metric::default()
                };
                let payload = self.payload(vec![metric]);
                Some(Publish {
                    tag,
                    ..Publish::own(self.topics.node("NDATA"), payload)
                })
            }
            // The births said how things stood then: an older change is history.
            OutboxRow::Status(s) if self.historical(s.ts) => None,
            OutboxRow::Status(s) => {
                let d = *self.devices.get(&s.device_id)?;
                match (s.online, self.alive[d]) {
                    (true, false) => Some(self.dbirth(d, tag)),
                    (false, true) => Some(self.ddeath(d, tag)),
                    _ => None,
                }
            }
            OutboxRow::Sample(t) => {
                let d = *self.devices.get(t.device_id())?;
                let historical = self.historical(t.ts) || !self.alive[d];
                let metrics: Vec<Metric> = t
                    .iter()
                    .filter_map(|(id, value, quality)| {
                        let m = &self.metrics[d][*self.points[d].get(id)?];
                        Some(data_metric(m, t.ts, value, quality, historical))
                    })
                    .collect();
                if metrics.is_empty() {
                    return None;
                }
                let topic = self.topics.device("DDATA", t.device_id());
                Some(Publish {
                    tag,
                    ..Publish::own(topic, self.payload(metrics))
                })
            }
        }
    }

    /// The primary host's STATE: Sparkplug 3.0's JSON `{"online":…}`, or 2.2's text.
    fn state(&mut self, payload: &[u8], out: &mut Vec<Publish>) -> Inbound<Request> {
        let online = match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(v) => v.get("online").and_then(serde_json::Value::as_bool),
            Err(_) => match payload {
                b"ONLINE" => Some(true),
                b"OFFLINE" => Some(false),
                _ => None,
            },
        };
        match (online, self.born_at) {
            (Some(true), None) => {
                tracing::info!(
                    sink = super::SINK,
                    "primary host online: births, then the held data"
                );
                self.births(out);
                Inbound::Nothing
            }
            // Sparkplug: the node dies and reconnects, and waits for the host again.
            (Some(false), Some(_)) => {
                out.push(self.ndeath_publish());
                Inbound::End(self.holding_reason())
            }
            _ => Inbound::Nothing,
        }
    }

    fn ndeath_publish(&self) -> Publish {
        Publish {
            qos: Some(QoS::AtLeastOnce),
            ..Publish::own(self.topics.node("NDEATH"), self.ndeath())
        }
    }

    fn holding_reason(&self) -> String {
        format!(
            "primary host `{}` is offline: data held in the outbox",
            self.host.as_deref().unwrap_or_default()
        )
    }
}

impl Format for Node {
    type Request = Request;
    type Reply = (usize, usize, Result<Written, WriteError>);

    fn connect(&mut self) -> (LastWill, bool) {
        self.bd_seq = self.bd_seq.wrapping_add(1);
        if let Err(e) = std::fs::write(&self.bd_seq_file, format!("{}\n", self.bd_seq)) {
            tracing::warn!(
                sink = super::SINK,
                "cannot keep bdSeq in {}: {e}",
                self.bd_seq_file.display()
            );
        }
        self.born_at = None;
        self.alive.fill(false);
        let will = LastWill::new(
            self.topics.node("NDEATH"),
            self.ndeath(),
            QoS::AtLeastOnce,
            false,
        );
        // Sparkplug: an edge node's session is clean; commands are not queued for it.
        (will, true)
    }

    fn subscriptions(&self) -> (Vec<String>, Vec<String>) {
        let mut topics = vec![self.topics.node("NCMD"), self.topics.device("DCMD", "+")];
        if let Some(h) = &self.host {
            topics.push(Topics::state(h));
        }
        (topics, Vec::new())
    }

    fn start(&mut self, out: &mut Vec<Publish>) {
        // With a primary host, births wait for its STATE (retained, so it comes at once).
        if self.host.is_none() {
            self.births(out);
        }
    }

    fn holding(&self) -> Option<String> {
        self.born_at.is_none().then(|| self.holding_reason())
    }

    fn batch(&mut self, batch: &Batch, out: &mut Vec<Publish>) -> Vec<i64> {
        let mut done = Vec::new();
        for row in &batch.rows {
            match self.row(row, Some((batch.stream, vec![row.id()]))) {
                Some(p) => out.push(p),
                None => done.push(row.id()),
            }
        }
        done
    }

    fn incoming(
        &mut self,
        topic: &str,
        payload: &[u8],
        out: &mut Vec<Publish>,
    ) -> Inbound<Request> {
        if self
            .host
            .as_deref()
            .is_some_and(|h| topic == Topics::state(h))
        {
            return self.state(payload, out);
        }
        if topic == self.topics.node("NCMD") {
            self.ncmd(payload, out);
            return Inbound::Nothing;
        }
        if let Some(device) = self.topics.dcmd_device(topic) {
            let device = device.to_string();
            return Inbound::Serve(self.dcmd(&device, payload));
        }
        Inbound::Nothing
    }

    async fn serve(control: Arc<Control>, r: Request) -> Self::Reply {
        let max_age = control
            .config
            .mqtt
            .as_ref()
            .map_or(Duration::from_secs(30), |m| m.command_max_age);
        let result = control
            .write_audited_until(
                "sparkplug",
                "sparkplug",
                r.device,
                r.point,
                r.value,
                Some((r.sent_at, max_age)),
            )
            .await;
        (r.device, r.point, result)
    }

    fn refused(r: Request) -> Self::Reply {
        (r.device, r.point, Err(WriteError::Busy))
    }

    /// The write's outcome: the value read back as DDATA, or the refusal in the log.
    fn reply(&mut self, (d, p, result): Self::Reply, out: &mut Vec<Publish>) {
        let device = &self.config.devices[d].id;
        match result {
            Ok(w) => {
                if self.born_at.is_none() || !self.alive[d] {
                    return;
                }
                let Some(v) = w.read_back else { return };
                let m = data_metric(
                    &self.metrics[d][p],
                    now_ms(),
                    Some(&v),
                    Quality::Good,
                    false,
                );
                let topic = self.topics.device("DDATA", device);
                let payload = self.payload(vec![m]);
                out.push(Publish::own(topic, payload));
            }
            Err(e) => {
                let point = &self.config.devices[d].points[p].id;
                tracing::warn!(
                    sink = super::SINK,
                    "DCMD write {device}/{point} refused: {e}"
                );
            }
        }
    }

    fn tick(&mut self, out: &mut Vec<Publish>) {
        let due = self
            .last_births
            .is_none_or(|t| t.elapsed() >= REBIRTH_EVERY);
        if self.rebirth_due && due && self.born_at.is_some() {
            tracing::info!(sink = super::SINK, "Rebirth requested: births again");
            self.births(out);
        }
        if self.born_at.is_some() && self.last_node_data.elapsed() >= NODE_DATA {
            self.last_node_data = Instant::now();
            let metrics = vec![self.uptime(None), self.backlog(None)];
            let payload = self.payload(metrics);
            out.push(Publish::own(self.topics.node("NDATA"), payload));
        }
    }

    fn stop(&mut self, out: &mut Vec<Publish>) {
        out.push(self.ndeath_publish());
    }
}
