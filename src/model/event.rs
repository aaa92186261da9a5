//! The event vocabulary every stage shares: types, states, priorities, drafts, numbered events
//! and their SPEC wire shape. Rules make drafts (`events::rules`), the processor numbers them
//! (`events::processor`), the store keeps them, the sinks and `api::push` send them.

use serde_json::{json, Value as Json};

use super::{rfc3339, Millis, Value};

/// An event's priority, in rank order: its one spelling (config, SPEC JSON, SQL, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Normal,
    High,
    Emergency,
}

impl Priority {
    /// Every priority, lowest first (the index is the rank).
    pub const ALL: [Priority; 3] = [Priority::Normal, Priority::High, Priority::Emergency];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Emergency => "emergency",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// 0, 1, 2: stored beside the name so SQL can filter and sort by it.
    pub fn rank(self) -> i64 {
        self as i64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    DeviceOnline,
    DeviceOffline,
    DeviceAbnormal,
    ThresholdExceeded,
    ThresholdCleared,
    DataPointReached,
    /// A bus whose link cannot connect or whose devices all stopped answering: one alarm for
    /// the line instead of one per device.
    BusOffline,
    BusOnline,
    /// An operator applied a config from the dashboard (an `info` event of the gateway).
    ConfigApplied,
    /// An operator shelved an alarm, a device's or a point's alarms (ISA-18.2; `info`).
    AlarmShelved,
    /// A shelving ended: taken off by an operator, or expired (`info`).
    AlarmUnshelved,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::DeviceOnline,
        EventType::DeviceOffline,
        EventType::DeviceAbnormal,
        EventType::ThresholdExceeded,
        EventType::ThresholdCleared,
        EventType::DataPointReached,
        EventType::BusOffline,
        EventType::BusOnline,
        EventType::ConfigApplied,
        EventType::AlarmShelved,
        EventType::AlarmUnshelved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::DeviceOnline => "device_online",
            EventType::DeviceOffline => "device_offline",
            EventType::DeviceAbnormal => "device_abnormal",
            EventType::ThresholdExceeded => "threshold_exceeded",
            EventType::ThresholdCleared => "threshold_cleared",
            EventType::DataPointReached => "data_point_reached",
            EventType::BusOffline => "bus_offline",
            EventType::BusOnline => "bus_online",
            EventType::ConfigApplied => "config_applied",
            EventType::AlarmShelved => "alarm_shelved",
            EventType::AlarmUnshelved => "alarm_unshelved",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Its bit in a subscription's event mask (its place in [`EventType::ALL`]).
    pub fn bit(self) -> u32 {
        1 << Self::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    Active,
    Cleared,
    Info,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Active => "active",
            EventState::Cleared => "cleared",
            EventState::Info => "info",
        }
    }
}

/// What an alarm-changing event does to the alarm it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub enum AlarmOp {
    /// Raises the alarm with this key (rule id, `offline:DEV`, `abnormal:DEV:POINT`, …).
    Raise(String),
    Clear(String),
    /// Not a change: this `info` event records that `event` (an alarm's event id) was
    /// acknowledged by `by`, so upstream copies of that alarm can be marked too.
    Acked {
        event: String,
        by: String,
    },
}

/// An event before it is numbered: what the rule engine produces.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub device: usize,
    pub point: Option<usize>,
    pub kind: EventType,
    pub priority: Priority,
    pub value: Option<Value>,
    pub message: String,
    pub state: EventState,
    pub ts: Millis,
    pub alarm: Option<AlarmOp>,
    /// When the sample behind it was read, for the processing-latency histogram.
    pub at: tokio::time::Instant,
}

/// A numbered, committed event (SPEC "Events").
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub device: usize,
    pub point: Option<usize>,
    pub kind: EventType,
    pub priority: Priority,
    pub device_seq: u64,
    pub value: Option<Value>,
    pub message: String,
    pub state: EventState,
    pub ts: Millis,
    pub alarm: Option<AlarmOp>,
    pub acked_by: Option<String>,
    pub acked_at: Option<Millis>,
    /// When the sample behind it was read (not stored): push latency is measured from here.
    pub at: tokio::time::Instant,
}

impl Event {
    /// `{gateway_id}-{seq}` (SPEC "Events").
    pub fn id(&self, gateway_id: &str) -> String {
        format!("{gateway_id}-{}", self.seq)
    }
}

/// An event in SPEC's wire shape, borrowed from wherever it lives (the processor's memory, a
/// store row, the outbox): the one place that shape is written, for WebSocket, MQTT and queries.
pub struct SpecEvent<'a> {
    pub id: &'a str,
    pub device_id: &'a str,
    pub point_id: Option<&'a str>,
    pub kind: &'a str,
    pub priority: &'a str,
    pub device_seq: i64,
    pub value: Option<&'a Value>,
    pub message: &'a str,
    pub ts: Millis,
    pub state: &'a str,
    pub acked_by: Option<&'a str>,
    pub acked_at: Option<Millis>,
}

impl SpecEvent<'_> {
    pub fn to_json(&self) -> Json {
        json!({
            "id": self.id,
            "deviceId": self.device_id,
            "pointId": self.point_id,
            "type": self.kind,
            "priority": self.priority,
            "deviceSeq": self.device_seq,
            "value": self.value.map(Value::to_json),
            "message": self.message,
            "ts": rfc3339(self.ts),
            "state": self.state,
            "ackedBy": self.acked_by,
            "ackedAt": self.acked_at.map(rfc3339),
        })
    }
}
