//! The built-in alarms, which need no rule: a device offline and online again, a line fault
//! (`link:<kind>`), and abnormal data (exceptions, decode errors, values outside `min`/`max`).

use tokio::time::Instant;

use super::{abnormal_key, bus_key, link_key, offline_key, Engine, LINK_CLEAR_AFTER};
use crate::config::Priority;
use crate::events::{AlarmOp, Draft, EventState, EventType};
use crate::modbus::bus::PointError;
use crate::model::{Millis, Value};

impl Engine {
    /// A device came online or went offline. Under a dead bus (`bus_down`) its offline is an
    /// `info` event naming the bus, not an alarm of its own: the bus has the one alarm.
    #[allow(
        clippy::too_many_arguments,
        reason = "one event's fields, as the bus sent them"
    )]
    pub fn on_status(
        &mut self,
        device: usize,
        online: bool,
        reason: &str,
        bus_down: bool,
        ts: Millis,
        now: Instant,
        out: &mut Vec<Draft>,
    ) {
        let key = offline_key(&self.device_ids[device]);
        let was = self.online[device].replace(online);
        let draft = |kind, priority, state, message: String, alarm| Draft {
            device,
            point: None,
            kind,
            priority,
            value: None,
            message,
            state,
            ts,
            alarm,
            at: now,
        };
        let bus = &self.bus_names[self.device_bus[device]];
        let with_bus = std::mem::replace(&mut self.offline_with_bus[device], !online && bus_down);
        if online {
            if self.raised.remove(&key) {
                out.push(draft(
                    EventType::DeviceOnline,
                    Priority::Normal,
                    EventState::Cleared,
                    "device answering again".into(),
                    Some(AlarmOp::Clear(key)),
                ));
            } else if was != Some(true) {
                let message = match (was, with_bus) {
                    (None, _) => "device online".to_string(),
                    (_, true) => format!("device answering again: bus {bus} is back"),
                    _ => "device answering again".to_string(),
                };
                out.push(draft(
                    EventType::DeviceOnline,
                    Priority::Normal,
                    EventState::Info,
                    message,
                    None,
                ));
            }
        } else if bus_down {
            out.push(draft(
                EventType::DeviceOffline,
                Priority::Normal,
                EventState::Info,
                format!("device offline: bus {bus} is down ({reason})"),
                None,
            ));
        } else if self.raised.insert(key.clone()) {
            out.push(draft(
                EventType::DeviceOffline,
                Priority::High,
                EventState::Active,
                format!("device offline: {reason}"),
                Some(AlarmOp::Raise(key)),
            ));
        }
    }

    /// The bus went down or came back: one alarm for the line, with the cause. (When it comes
    /// back, the bus task probes its offline devices at once; one still silent is announced
    /// offline again, now with an alarm of its own.)
    pub fn on_bus(
        &mut self,
        bus: usize,
        online: bool,
        cause: &str,
        ts: Millis,
        now: Instant,
        out: &mut Vec<Draft>,
    ) {
        let name = self.bus_names[bus].clone();
        let key = bus_key(&name);
        let source = self.device_ids.len() + bus;
        let draft = |kind, priority, state, message: String, alarm| Draft {
            device: source,
            point: None,
            kind,
            priority,
            value: None,
            message,
            state,
            ts,
            alarm,
            at: now,
        };
        if !online {
            if self.raised.insert(key.clone()) {
                let n = self.device_bus.iter().filter(|&&b| b == bus).count();
                out.push(draft(
                    EventType::BusOffline,
                    Priority::High,
                    EventState::Active,
                    format!(
                        "bus {name} offline: {cause} ({n} device{})",
                        if n == 1 { "" } else { "s" }
                    ),
                    Some(AlarmOp::Raise(key)),
                ));
            }
            return;
        }
        if self.raised.remove(&key) {
            out.push(draft(
                EventType::BusOnline,
                Priority::Normal,
                EventState::Cleared,
                format!("bus {name} answering again"),
                Some(AlarmOp::Clear(key)),
            ));
        }
    }

    /// A device's whole poll, before its points: an answer that was wrong rather than missing
    /// (garbage, another request's ids, another function, a short answer, a reset mid-answer)
    /// raises `device_abnormal` with reason `link:<kind>` once per episode; three good polls in
    /// a row clear it. Timeouts and refused connections are the offline alarm's.
    pub fn on_poll(
        &mut self,
        device: usize,
        results: &[(usize, Result<Value, PointError>)],
        ts: Millis,
        now: Instant,
        out: &mut Vec<Draft>,
    ) {
        let fault = results.iter().find_map(|(_, r)| match r {
            Err(PointError::Link(e)) => e.line_fault().map(|kind| (kind, e)),
            _ => None,
        });
        let good = !results
            .iter()
            .any(|(_, r)| matches!(r, Err(PointError::Link(_))));
        let draft = |state, priority, message, alarm| Draft {
            device,
            point: None,
            kind: EventType::DeviceAbnormal,
            priority,
            value: None,
            message,
            state,
            ts,
            alarm: Some(alarm),
            at: now,
        };
        if let Some((kind, e)) = fault {
            self.link_good[device] = 0;
            if !self.link_raised[device] {
                self.link_raised[device] = true;
                let key = link_key(&self.device_ids[device]);
                self.raised.insert(key.clone());
                let message = format!("link:{kind}: {e}");
                out.push(draft(
                    EventState::Active,
                    Priority::High,
                    message,
                    AlarmOp::Raise(key),
                ));
            }
        } else if !good {
            self.link_good[device] = 0;
        } else if self.link_raised[device] {
            self.link_good[device] += 1;
            if self.link_good[device] >= LINK_CLEAR_AFTER {
                self.link_raised[device] = false;
                let key = link_key(&self.device_ids[device]);
                self.raised.remove(&key);
                let message = format!("link good again ({LINK_CLEAR_AFTER} good polls in a row)");
                out.push(draft(
                    EventState::Cleared,
                    Priority::High,
                    message,
                    AlarmOp::Clear(key),
                ));
            }
        }
    }

    pub(super) fn builtin_abnormal(
        &mut self,
        device: usize,
        point: usize,
        result: &Result<Value, PointError>,
        ts: Millis,
        now: Instant,
        out: &mut Vec<Draft>,
    ) {
        let problem = match result {
            Err(PointError::Exception(_) | PointError::Decode(_)) => {
                Some(result.as_ref().unwrap_err().to_string())
            }
            // A link fault is the device's, not the point's: the offline alarm covers it.
            Err(PointError::Link(_)) => return,
            Ok(v) => {
                let (min, max) = self.min_max[device][point];
                match v.as_f64() {
                    Some(x) if min.is_some_and(|m| x < m) || max.is_some_and(|m| x > m) => {
                        Some(format!(
                            "value {x} outside the valid range {}..{}",
                            min.map(|m| m.to_string()).unwrap_or_default(),
                            max.map(|m| m.to_string()).unwrap_or_default()
                        ))
                    }
                    _ => None,
                }
            }
        };
        let raised = self.abnormal[device][point];
        if problem.is_some() == raised {
            return;
        }
        self.abnormal[device][point] = !raised;
        let key = abnormal_key(&self.device_ids[device], &self.point_ids[device][point]);
        let value = result.as_ref().ok().cloned();
        match problem {
            Some(msg) if self.raised.insert(key.clone()) => out.push(Draft {
                device,
                point: Some(point),
                kind: EventType::DeviceAbnormal,
                priority: Priority::High,
                value,
                message: msg,
                state: EventState::Active,
                ts,
                alarm: Some(AlarmOp::Raise(key)),
                at: now,
            }),
            None if self.raised.remove(&key) => out.push(Draft {
                device,
                point: Some(point),
                kind: EventType::DeviceAbnormal,
                priority: Priority::Normal,
                value,
                message: "value good again".into(),
                state: EventState::Cleared,
                ts,
                alarm: Some(AlarmOp::Clear(key)),
                at: now,
            }),
            _ => {}
        }
    }
}
