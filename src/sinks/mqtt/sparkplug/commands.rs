//! What the edge node takes from a host: NCMD (Rebirth) and DCMD writes, read strictly (size,
//! datatype, the metric's point, writes allowed), and the commands it ignores, counted.

use std::sync::atomic::Ordering::Relaxed;

use prost::Message as _;

use super::payload::{self, MetricValue, Payload};
use super::{Node, Publish, ALIAS_REBIRTH, MAX_COMMAND_BYTES, REBIRTH, REBIRTH_EVERY};
use crate::model::{now_ms, Millis, Value};

/// A DCMD write: device and point by index, and the value.
pub struct Request {
    pub(super) device: usize,
    pub(super) point: usize,
    pub(super) value: Value,
    /// The DCMD's own timestamp, else when it came in: its age is judged from this.
    pub(super) sent_at: Millis,
}

impl Node {
    /// A command not carried out: counted, and logged at most once a minute per reason.
    pub(super) fn ignore(&self, why: &'static str, detail: &str) {
        self.status.commands_ignored.fetch_add(1, Relaxed);
        if let Some(held) = self.log.allow(why) {
            tracing::warn!(
                sink = super::super::SINK,
                held_back = held,
                "{why}: {detail}"
            );
        }
    }

    pub(super) fn ncmd(&mut self, payload: &[u8], out: &mut Vec<Publish>) {
        if payload.len() > MAX_COMMAND_BYTES {
            return self.ignore("NCMD too large, refused unread", "");
        }
        let Ok(p) = Payload::decode(payload) else {
            return self.ignore("NCMD payload does not decode", "");
        };
        for m in &p.metrics {
            let rebirth = m.name.as_deref() == Some(REBIRTH) || m.alias == Some(ALIAS_REBIRTH);
            if rebirth && m.value == Some(MetricValue::Boolean(true)) {
                if self
                    .last_births
                    .is_some_and(|t| t.elapsed() < REBIRTH_EVERY)
                {
                    self.rebirth_due = true;
                } else if self.born_at.is_some() {
                    tracing::info!(sink = super::super::SINK, "Rebirth requested: births again");
                    self.births(out);
                }
            } else {
                let name = m.name.clone().unwrap_or_default();
                self.ignore("NCMD metric not known", &name);
            }
        }
    }

    pub(super) fn dcmd(&mut self, device: &str, payload: &[u8]) -> Vec<Request> {
        let Some(&d) = self.devices.get(device) else {
            self.ignore("DCMD for an unknown device", device);
            return Vec::new();
        };
        if payload.len() > MAX_COMMAND_BYTES {
            self.ignore("DCMD too large, refused unread", device);
            return Vec::new();
        }
        let Ok(p) = Payload::decode(payload) else {
            self.ignore("DCMD payload does not decode", device);
            return Vec::new();
        };
        // Sparkplug's payload timestamp: when the host sent the command.
        let p_ts = p.timestamp.and_then(|t| Millis::try_from(t).ok());
        let mut requests = Vec::new();
        for m in &p.metrics {
            let point = match (m.name.as_deref(), m.alias) {
                (Some(name), _) => self.points[d].get(name).copied(),
                (None, Some(a)) => self.metrics[d].iter().position(|x| x.alias == a),
                (None, None) => None,
            };
            let label = || format!("{device}/{}", m.name.clone().unwrap_or_default());
            let Some(p) = point else {
                self.ignore("DCMD on an unknown metric", &label());
                continue;
            };
            if !self.allow_writes {
                self.ignore("DCMD while [mqtt] allow_writes is off", &label());
                continue;
            }
            if !self.config.devices[d].points[p].writable {
                self.ignore("DCMD on a read-only metric", &label());
                continue;
            }
            let datatype = m.datatype.or(Some(self.metrics[d][p].datatype as u32));
            let Some(v) = m.value.as_ref() else {
                self.ignore("DCMD without a value", &label());
                continue;
            };
            let value = match payload::decode(datatype, v) {
                Ok(value) => value,
                Err(why) => {
                    self.ignore("DCMD value refused", &format!("{}: {why}", label()));
                    continue;
                }
            };
            // One write per point, the last value given: a command cannot queue more writes
            // than the device has points.
            requests.retain(|r: &Request| r.point != p);
            requests.push(Request {
                device: d,
                point: p,
                value,
                sent_at: p_ts.unwrap_or_else(now_ms),
            });
        }
        requests
    }
}
